//! The term of every log entry, in memory, as runs of equal terms.
//!
//! raft-rs asks a store for an entry's term all the time: a follower checks every entry
//! of an append against its log, a leader looks up the term before each append it sends
//! and at each commit. Read from the database, each lookup is a read transaction and the
//! decoding of a whole entry; a follower handed the same append of 4,000 entries again
//! and again (a leader probing it on every heartbeat answer) spent seconds on them. Terms
//! change only at elections, so one pair per term covers the whole log.

/// Runs `(first index, term)` covering the entries after the compacted index, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TermRuns {
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    /// Records entries appended at `(index, term)` in index order; an append that starts
    /// inside the log first drops what it replaces.
    pub fn append(&mut self, entries: impl IntoIterator<Item = (u64, u64)>) {
        let mut first = true;
        for (index, term) in entries {
            if first {
                self.truncate_from(index);
                first = false;
            }
            if self.runs.last().is_none_or(|(_, t)| *t != term) {
                self.runs.push((index, term));
            }
        }
    }

    /// Forgets entries at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        while self.runs.last().is_some_and(|(first, _)| *first >= index) {
            self.runs.pop();
        }
    }

    /// Forgets entries up to and including `index` (compacted).
    pub fn compact_to(&mut self, index: u64) {
        let keep = self.runs.partition_point(|(first, _)| *first <= index);
        // The run holding `index` goes on after it, from `index + 1`.
        let start = keep.saturating_sub(1);
        self.runs.drain(..start);
        if let Some(run) = self.runs.first_mut() {
            run.0 = run.0.max(index + 1);
        }
    }

    /// Forgets everything (a snapshot replaced the log).
    pub fn clear(&mut self) {
        self.runs.clear();
    }

    /// The term of the entry at `index`, which the caller knows is in the log.
    pub fn term(&self, index: u64) -> Option<u64> {
        let i = self.runs.partition_point(|(first, _)| *first <= index);
        i.checked_sub(1).map(|i| self.runs[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_follow_appends_truncations_and_compaction() {
        let mut t = TermRuns::default();
        t.append((1..=5).map(|i| (i, 1)));
        t.append((6..=9).map(|i| (i, 2)));
        assert_eq!((t.term(1), t.term(5), t.term(6), t.term(9)), (Some(1), Some(1), Some(2), Some(2)));
        // A new leader's log replaces 5.. with term 3.
        t.append((5..=7).map(|i| (i, 3)));
        assert_eq!((t.term(4), t.term(5), t.term(7)), (Some(1), Some(3), Some(3)));
        assert_eq!(t.runs, vec![(1, 1), (5, 3)], "the replaced term-2 run is gone");
        t.compact_to(3);
        assert_eq!(t.runs, vec![(4, 1), (5, 3)]);
        assert_eq!(t.term(3), None, "compacted");
        t.compact_to(6);
        assert_eq!(t.runs, vec![(7, 3)]);
        assert_eq!(t.term(7), Some(3));
        t.append([(8, 3), (9, 4)]);
        assert_eq!(t.runs, vec![(7, 3), (9, 4)], "same term, same run");
        t.clear();
        assert_eq!(t.term(9), None);
    }
}
