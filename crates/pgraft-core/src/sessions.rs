//! Exactly-once application of proposals that were sent more than once.
//!
//! A member re-proposes a request whose entry it has not seen applied when the term changes
//! or when a forwarded proposal seems lost (a link still reconnecting, a leader that
//! dropped it while transferring leadership). Both copies may then reach the log. The state
//! machine applies the first and skips the rest, as the Raft thesis (section 6.3) has
//! client sessions do: each proposer incarnation is a session, each proposal carries its
//! sequence number and the lowest sequence number its proposer still waits for (`low`).
//! Every number below `low` is settled (applied, or given up by its client) and is never
//! applied again, so a session remembers only the numbers at or above it.
//!
//! Everything here is decided by the log alone, so every member keeps the same table and
//! snapshots carry it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::Origin;

/// Sessions kept at most. The least recently used goes first: those are incarnations of
/// members that restarted long ago, whose proposals are settled.
pub const SESSION_LIMIT: usize = 1024;

/// One proposer incarnation's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Every sequence number below this is settled.
    low: u64,
    /// Sequence numbers at or above `low` that were applied.
    applied: BTreeSet<u64>,
    /// The index of the last entry of this session (for eviction).
    last_index: u64,
}

/// The table of sessions, keyed by (member, incarnation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    sessions: BTreeMap<(u64, u64), Session>,
}

impl Sessions {
    /// Records that the entry at `index` carries the proposal `origin` with watermark
    /// `low`; returns whether it must be applied (false: a copy of a settled proposal).
    pub fn admit(&mut self, origin: Origin, low: u64, index: u64) -> bool {
        let key = (origin.node, origin.incarnation);
        if !self.sessions.contains_key(&key) && self.sessions.len() >= SESSION_LIMIT {
            if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_index).map(|(k, _)| *k) {
                self.sessions.remove(&oldest);
            }
        }
        let s = self.sessions.entry(key).or_default();
        s.last_index = index;
        if low > s.low {
            s.low = low;
            s.applied = s.applied.split_off(&low);
        }
        if origin.seq < s.low || s.applied.contains(&origin.seq) {
            return false;
        }
        s.applied.insert(origin.seq);
        true
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(node: u64, incarnation: u64, seq: u64) -> Origin {
        Origin { node, incarnation, seq }
    }

    #[test]
    fn a_second_copy_is_skipped_and_others_apply() {
        let mut t = Sessions::default();
        assert!(t.admit(o(1, 1, 1), 1, 10));
        assert!(t.admit(o(1, 1, 3), 1, 11), "out of order is fine");
        assert!(!t.admit(o(1, 1, 1), 1, 12), "a copy of 1");
        assert!(t.admit(o(1, 1, 2), 1, 13));
        assert!(t.admit(o(1, 2, 1), 1, 14), "another incarnation is another session");
        assert!(t.admit(o(2, 1, 1), 1, 15), "another member too");
        assert!(!t.admit(o(1, 1, 3), 1, 16));
    }

    #[test]
    fn numbers_below_the_watermark_are_settled_and_forgotten() {
        let mut t = Sessions::default();
        for seq in 1..=100 {
            assert!(t.admit(o(1, 1, seq), seq, seq));
        }
        // The proposer waits for nothing below 101: the set holds at most what is open.
        let s = &t.sessions[&(1, 1)];
        assert_eq!(s.low, 100);
        assert_eq!(s.applied.len(), 1);
        assert!(!t.admit(o(1, 1, 50), 101, 101), "a late copy of a settled proposal");
        assert!(!t.admit(o(1, 1, 7), 1, 102), "an old watermark does not move it back");
        assert!(t.admit(o(1, 1, 101), 101, 103));
    }

    #[test]
    fn the_least_recently_used_session_goes_first() {
        let mut t = Sessions::default();
        for inc in 0..SESSION_LIMIT as u64 {
            t.admit(o(1, inc, 1), 1, inc + 1);
        }
        t.admit(o(1, 0, 2), 1, 5000); // incarnation 0 used again: now the newest
        t.admit(o(2, 1, 1), 1, 5001);
        assert_eq!(t.len(), SESSION_LIMIT);
        assert!(t.sessions.contains_key(&(1, 0)));
        assert!(!t.sessions.contains_key(&(1, 1)), "the oldest went");
    }
}
