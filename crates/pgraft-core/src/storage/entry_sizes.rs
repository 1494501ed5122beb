//! The size of every log entry, in memory, as running totals: how many bytes of log a
//! lagging follower is missing, and how large the log is, without reading it.
//!
//! ```text
//!   entries      101   102   103   104        base = 101
//!   encoded      120    80  4096    64
//!   totals       120   200  4296  4360        bytes of (101, 103] = 4296 - 120
//! ```
//!
//! Eight bytes per entry in the log; the log is compacted every few thousand entries.

use std::collections::VecDeque;

/// Running totals of the encoded size of the entries after the compacted index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct EntrySizes {
    /// The index of the entry whose total is `totals[0]`.
    base: u64,
    /// The total before `base` (of entries since compacted).
    prior: u64,
    /// `totals[i]`: `prior` plus the bytes of the entries `base ..= base + i`.
    totals: VecDeque<u64>,
}

impl EntrySizes {
    /// Records entries appended at `(index, bytes)` in index order; an append that starts
    /// inside the log first drops what it replaces. One that leaves a gap after the
    /// entries known starts afresh from it.
    pub fn append(&mut self, entries: impl IntoIterator<Item = (u64, u64)>) {
        for (index, bytes) in entries {
            let next = self.base + self.totals.len() as u64;
            if self.totals.is_empty() || index < self.base || index > next {
                self.base = index;
                self.prior = 0;
                self.totals.clear();
            } else if index < next {
                self.totals.truncate((index - self.base) as usize);
            }
            let before = self.totals.back().copied().unwrap_or(self.prior);
            self.totals.push_back(before + bytes);
        }
    }

    /// Forgets entries up to and including `index` (compacted).
    pub fn compact_to(&mut self, index: u64) {
        while self.base <= index {
            match self.totals.pop_front() {
                Some(total) => {
                    self.prior = total;
                    self.base += 1;
                }
                None => {
                    self.base = index + 1;
                    self.prior = 0;
                }
            }
        }
    }

    /// Forgets everything (a snapshot replaced the log).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The running total up to and including `index`, which is in the log or is the
    /// entry just before it.
    fn total(&self, index: u64) -> Option<u64> {
        if index + 1 == self.base {
            return Some(self.prior);
        }
        self.totals.get(index.checked_sub(self.base)? as usize).copied()
    }

    /// The bytes of the entries in `(after, upto]`; 0 for an empty range, `None` if part of
    /// it is not in the log.
    pub fn bytes(&self, after: u64, upto: u64) -> Option<u64> {
        if upto <= after {
            return Some(0);
        }
        Some(self.total(upto)? - self.total(after)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_an_appended_truncated_and_compacted_log() {
        let mut s = EntrySizes::default();
        assert_eq!(s.bytes(0, 0), Some(0));
        assert_eq!(s.bytes(0, 1), None);
        s.append([(101, 120), (102, 80), (103, 4096), (104, 64)]);
        assert_eq!(s.bytes(100, 104), Some(4360));
        assert_eq!(s.bytes(101, 103), Some(4176));
        assert_eq!(s.bytes(104, 104), Some(0));
        assert_eq!(s.bytes(99, 104), None, "100 is not in the log");
        assert_eq!(s.bytes(100, 105), None);
        // A new leader overwrote 103 onwards.
        s.append([(103, 10), (104, 20), (105, 30)]);
        assert_eq!(s.bytes(100, 105), Some(260));
        s.compact_to(102);
        assert_eq!(s.bytes(102, 105), Some(60));
        assert_eq!(s.bytes(101, 105), None);
        s.compact_to(200);
        assert_eq!(s.bytes(200, 200), Some(0));
        s.append([(201, 5)]);
        assert_eq!(s.bytes(200, 201), Some(5));
        // A snapshot replaced the log, then entries after it.
        s.clear();
        s.append([(500, 7), (501, 8)]);
        assert_eq!(s.bytes(499, 501), Some(15));
    }
}
