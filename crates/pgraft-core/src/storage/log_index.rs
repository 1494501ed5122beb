//! Where every live log entry of a [`super::SegmentStore`] is, and the newest ones decoded.
//!
//! ```text
//!   base = compacted index          last
//!   │ locs:  (segment, offset, length) per entry, base+1 ..= last      (16 bytes each)
//!   │ cache: decoded entries, cache_from ..= last, at most CACHE_BYTES of them
//!   │        but never one at or after `pinned_from` (not yet durable on disk)
//! ```
//!
//! Followers mostly need the newest entries, which the cache answers without a read; one
//! further behind is served from its segment file at the recorded place.

use std::collections::VecDeque;

use prost::Message as _;
use raft::prelude::Entry;

use super::entry_sizes::EntrySizes;
use super::term_runs::TermRuns;

/// Where one entry's encoding lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    /// The place of an entry staged but not yet given one (segments are numbered from 1).
    pub const UNWRITTEN: Loc = Loc { segment: 0, offset: 0, len: 0 };
}

/// Bytes of decoded entries kept in memory.
pub(crate) const CACHE_BYTES: u64 = 32 << 20;

/// The live entries after the compacted index.
#[derive(Debug, Default)]
pub(crate) struct LogIndex {
    /// The index before the first live entry (the compacted index).
    base: u64,
    locs: VecDeque<Loc>,
    /// Decoded entries `cache_from ..= last`.
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    cache_cap: u64,
    /// Entries from this index on stay cached whatever the cap (0: none pinned).
    pinned_from: u64,
    pub terms: TermRuns,
    pub sizes: EntrySizes,
}

impl LogIndex {
    /// An empty log after `base`, caching up to `cache_cap` bytes of entries.
    pub fn new(base: u64, cache_cap: u64) -> Self {
        let mut sizes = EntrySizes::default();
        sizes.compact_to(base);
        Self { base, cache_cap, sizes, pinned_from: u64::MAX, ..Self::default() }
    }

    /// The compacted index.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The last index (the base when empty).
    pub fn last(&self) -> u64 {
        self.base + self.locs.len() as u64
    }

    fn cache_from(&self) -> u64 {
        self.last() + 1 - self.cache.len() as u64
    }

    /// Records entries written at `locs`; the first replaces that index and every later
    /// one. Its index must be at most `last() + 1` and above the base.
    pub fn append(&mut self, entries: Vec<Entry>, locs: Vec<Loc>) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        self.truncate_from(first);
        self.terms.append(entries.iter().map(|e| (e.index, e.term)));
        self.sizes.append(entries.iter().map(|e| (e.index, e.encoded_len() as u64)));
        self.locs.extend(locs);
        for e in entries {
            self.cache_bytes += e.encoded_len() as u64;
            self.cache.push_back(e);
        }
        self.evict();
    }

    /// Drops the oldest cached entries while over the cap, but none that is pinned.
    fn evict(&mut self) {
        while self.cache_bytes > self.cache_cap
            && self.cache.len() > 1
            && self.cache.front().is_some_and(|e| e.index < self.pinned_from)
        {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.encoded_len() as u64;
            }
        }
    }

    /// Keeps the entries from `index` on cached (`u64::MAX`: none): their places on disk
    /// are not readable yet.
    pub fn pin_from(&mut self, index: u64) {
        self.pinned_from = index;
        self.evict();
    }

    /// Records where the entries from `first` on were written (they were appended with
    /// [`Loc::UNWRITTEN`]); places past the last entry are ignored.
    pub fn set_locs(&mut self, first: u64, locs: impl IntoIterator<Item = Loc>) {
        let Some(start) = first.checked_sub(self.base + 1) else { return };
        for (slot, loc) in self.locs.iter_mut().skip(start as usize).zip(locs) {
            *slot = loc;
        }
    }

    /// Forgets entries at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.base + 1) as usize;
        self.locs.truncate(keep);
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.encoded_len() as u64;
            }
        }
    }

    /// Forgets entries up to and including `index`; past the last one, the log is empty
    /// after `index`.
    pub fn compact_to(&mut self, index: u64) {
        if index >= self.last() {
            self.clear_to(index);
            return;
        }
        if index <= self.base {
            return;
        }
        self.locs.drain(..(index - self.base) as usize);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.encoded_len() as u64;
            }
        }
        self.base = index;
        self.terms.compact_to(index);
        self.sizes.compact_to(index);
    }

    /// Empties the log, which starts again after `index`.
    pub fn clear_to(&mut self, index: u64) {
        let pinned_from = self.pinned_from;
        *self = Self::new(index, self.cache_cap);
        self.pinned_from = pinned_from;
    }

    /// Where the entry at `index` (in the log) lies.
    pub fn loc(&self, index: u64) -> Option<Loc> {
        self.locs.get(index.checked_sub(self.base + 1)? as usize).copied()
    }

    /// The entry at `index` if it is cached.
    pub fn cached(&self, index: u64) -> Option<&Entry> {
        self.cache.get(index.checked_sub(self.cache_from())? as usize)
    }

    /// The highest entry index living in `segment` (0: none).
    pub fn newest_in(&self, segment: u64) -> u64 {
        self.locs.iter().rposition(|l| l.segment == segment).map_or(0, |i| self.base + 1 + i as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![0; 100], ..Default::default() }
    }

    fn at(index: u64) -> Loc {
        Loc { segment: index / 10, offset: index * 1000, len: 100 }
    }

    fn add(ix: &mut LogIndex, range: std::ops::RangeInclusive<u64>, term: u64) {
        ix.append(range.clone().map(|i| e(i, term)).collect(), range.map(at).collect());
    }

    #[test]
    fn appends_overwrites_compactions_and_the_cache_agree() {
        let one = e(1, 1).encoded_len() as u64;
        let mut ix = LogIndex::new(0, one * 5);
        add(&mut ix, 1..=10, 1);
        assert_eq!(ix.last(), 10);
        assert_eq!(ix.loc(3), Some(at(3)));
        assert!(ix.cached(5).is_none(), "only the newest five are cached");
        assert_eq!(ix.cached(6).map(|e| e.index), Some(6));
        add(&mut ix, 8..=9, 2);
        assert_eq!(ix.last(), 9);
        assert_eq!(ix.cached(8).map(|e| e.term), Some(2));
        assert_eq!(ix.terms.term(9), Some(2));
        assert_eq!(ix.terms.term(7), Some(1));
        assert!(ix.loc(10).is_none());
        ix.compact_to(4);
        assert_eq!(ix.base(), 4);
        assert!(ix.loc(4).is_none());
        assert_eq!(ix.loc(5), Some(at(5)));
        assert_eq!(ix.sizes.bytes(4, 9), Some(one * 5));
        assert_eq!(ix.newest_in(0), 9);
        ix.compact_to(20);
        assert_eq!((ix.base(), ix.last()), (20, 20));
        assert!(ix.cached(20).is_none());
        add(&mut ix, 21..=21, 3);
        assert_eq!(ix.loc(21), Some(at(21)));
        assert_eq!(ix.newest_in(2), 21);
        assert_eq!(ix.newest_in(0), 0);
    }

    #[test]
    fn pinned_entries_stay_cached_until_written() {
        let one = e(1, 1).encoded_len() as u64;
        let mut ix = LogIndex::new(0, one * 2);
        ix.pin_from(1);
        ix.append((1..=5).map(|i| e(i, 1)).collect(), vec![Loc::UNWRITTEN; 5]);
        assert!((1..=5).all(|i| ix.cached(i).is_some()), "nothing pinned is dropped, whatever the cap");
        ix.set_locs(1, (1..=5).map(at));
        assert_eq!(ix.loc(4), Some(at(4)));
        ix.pin_from(u64::MAX);
        assert!(ix.cached(3).is_none() && ix.cached(5).is_some(), "back under the cap once written");
    }
}
