//! A member's own proposals that are not applied yet, and when to send one again.
//!
//! raft-rs gives no promise that a proposal reaches the log: a follower forwards it to the
//! leader as a message, which a link that is reconnecting loses, a leader that is
//! transferring leadership or has just stepped down drops without a word, and a new
//! leader's log can overwrite. Left alone, the client would wait out its whole timeout
//! (30 s) for an entry that will never come. So a proposal is sent again
//! - at once when the term changed since it was last sent (whatever was in flight may be
//!   gone), and
//! - after an election timeout, then 2, 4, 8, 16 of them, while it was forwarded and is
//!   not applied (a loss that no term change reveals).
//!
//! A proposal sent as leader in the current term is in the leader's own log: it commits,
//! or the term changes. Copies that all reach the log are applied once
//! ([`crate::sessions`]). Membership changes are never sent twice (raft applies every
//! copy of a membership change): they are only retried when raft refused them outright.

use std::collections::BTreeMap;

use crate::member::Token;

/// The longest wait between two sends, as a power of two of the election timeout.
const MAX_BACKOFF_SHIFT: u32 = 4;

#[derive(Debug)]
struct Outstanding {
    token: Token,
    /// The entry data, to send again; `None` for membership changes.
    data: Option<Vec<u8>>,
    /// The term in which it was last handed to raft (0: raft refused it; not in any log).
    term: u64,
    /// The tick at which it was last handed to raft.
    at_tick: u64,
    /// Whether this member was leader then.
    as_leader: bool,
    /// How often it was sent again.
    resent: u32,
}

/// The member's proposals not yet applied, by sequence number.
#[derive(Debug, Default)]
pub(crate) struct Proposals {
    open: BTreeMap<u64, Outstanding>,
    last_seq: u64,
    /// Proposals sent again since the start.
    pub resent: u64,
}

impl Proposals {
    /// Draws the next sequence number and returns it with the watermark the proposal
    /// carries: the lowest number still open, counting this one.
    pub fn next(&mut self) -> (u64, u64) {
        self.last_seq += 1;
        let seq = self.last_seq;
        let low = self.open.keys().next().copied().unwrap_or(seq).min(seq);
        (seq, low)
    }

    /// Registers a proposal handed to raft (`term` 0: raft refused it for now).
    pub fn open(
        &mut self,
        seq: u64,
        token: Token,
        data: Option<Vec<u8>>,
        term: u64,
        tick: u64,
        leader: bool,
    ) {
        self.open.insert(seq, Outstanding { token, data, term, at_tick: tick, as_leader: leader, resent: 0 });
    }

    /// Closes the proposal `seq` (applied, or failed): the token waiting for it, if any.
    pub fn close(&mut self, seq: u64) -> Option<Token> {
        self.open.remove(&seq).map(|o| o.token)
    }

    /// Forgets the proposal `token` waits for (its client gave up or it failed).
    pub fn forget_token(&mut self, token: Token) {
        self.open.retain(|_, o| o.token != token);
    }

    /// Normal proposals to send again now, in sequence order.
    pub fn due(&self, term: u64, tick: u64, election_ticks: u64) -> Vec<(u64, Vec<u8>)> {
        self.open
            .iter()
            .filter_map(|(seq, o)| {
                let data = o.data.as_ref()?;
                let wait = election_ticks << o.resent.min(MAX_BACKOFF_SHIFT);
                let due = o.term != term || (!o.as_leader && tick.saturating_sub(o.at_tick) >= wait);
                due.then(|| (*seq, data.clone()))
            })
            .collect()
    }

    /// Records that `seq` was handed to raft again (`term` 0: refused for now).
    pub fn sent_again(&mut self, seq: u64, term: u64, tick: u64, leader: bool) {
        if let Some(o) = self.open.get_mut(&seq) {
            if term != 0 {
                o.resent += 1;
                self.resent += 1;
            }
            o.term = term;
            o.at_tick = tick;
            o.as_leader = leader;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_lowest_open_number() {
        let mut p = Proposals::default();
        let (s1, low1) = p.next();
        assert_eq!((s1, low1), (1, 1));
        p.open(s1, 10, Some(vec![1]), 2, 0, false);
        let (s2, low2) = p.next();
        assert_eq!((s2, low2), (2, 1));
        p.open(s2, 11, Some(vec![2]), 2, 0, false);
        assert_eq!(p.close(s1), Some(10));
        assert_eq!(p.next(), (3, 2));
        p.forget_token(11);
        assert_eq!(p.next(), (4, 4), "nothing open: the new proposal is the lowest");
    }

    #[test]
    fn forwarded_proposals_back_off_and_a_new_term_sends_everything() {
        let mut p = Proposals::default();
        p.open(1, 1, Some(vec![1]), 5, 0, false);
        p.open(2, 2, Some(vec![2]), 5, 0, true);
        p.open(3, 3, None, 5, 0, false);
        assert!(p.due(5, 9, 10).is_empty());
        assert_eq!(
            p.due(5, 10, 10).iter().map(|d| d.0).collect::<Vec<_>>(),
            [1],
            "forwarded, not the leader's"
        );
        p.sent_again(1, 5, 10, false);
        assert!(p.due(5, 29, 10).is_empty(), "twice the wait after one resend");
        assert_eq!(p.due(5, 30, 10).len(), 1);
        let all: Vec<u64> = p.due(6, 30, 10).iter().map(|d| d.0).collect();
        assert_eq!(all, [1, 2], "a new term: every normal proposal, never a membership change");
        assert_eq!(p.resent, 1);
    }
}
