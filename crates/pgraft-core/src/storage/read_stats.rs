//! What raft's reads of a durable store cost, for the member thread's slow-pass warning.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Log reads since the last [`ReadStats::take`].
#[derive(Debug, Default)]
pub struct ReadStats {
    /// `entries` calls.
    pub calls: AtomicU64,
    /// Entries returned by them.
    pub entries: AtomicU64,
    /// `term` lookups that read an entry.
    pub terms: AtomicU64,
    /// Time spent in both, in microseconds.
    pub micros: AtomicU64,
}

impl ReadStats {
    /// Counts one `entries` call that returned `entries` entries (0 and `terms` 1: a term
    /// lookup) and took `took`.
    pub(crate) fn count(&self, entries: u64, terms: u64, took: Duration) {
        if terms == 0 {
            self.calls.fetch_add(1, Relaxed);
        }
        self.entries.fetch_add(entries, Relaxed);
        self.terms.fetch_add(terms, Relaxed);
        self.micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// The figures so far; counting starts again from zero.
    pub fn take(&self) -> ReadStats {
        let take = |a: &AtomicU64| AtomicU64::new(a.swap(0, Relaxed));
        ReadStats {
            calls: take(&self.calls),
            entries: take(&self.entries),
            terms: take(&self.terms),
            micros: take(&self.micros),
        }
    }
}

impl std::fmt::Display for ReadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log reads: {} calls for {} entries and {} term lookups in {} ms",
            self.calls.load(Relaxed),
            self.entries.load(Relaxed),
            self.terms.load(Relaxed),
            self.micros.load(Relaxed) / 1000
        )
    }
}
