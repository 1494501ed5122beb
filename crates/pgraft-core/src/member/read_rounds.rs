//! Linearizable reads share ReadIndex rounds.
//!
//! Each ReadIndex request makes the leader send a heartbeat round and wait for a quorum of
//! answers, and raft-rs answers each heartbeat reply from a follower that lags behind with
//! another append of up to `max_size_per_msg` read from the log. With one request per
//! read, a few hundred reads a second and one follower behind, a leader's member thread
//! spent seconds in a single pass (a torture run: 860 peer messages in one pass, 3.5
//! million entries read from the log, 5 s without a heartbeat: an election). Like etcd's
//! `linearizableReadLoop`, one round is out at a time; reads that arrive meanwhile wait for
//! the next one, and one read index answers them all.
//!
//! A read only joins a round asked after it arrived: the read index must be taken after
//! the read began, or a write acknowledged just before it could be missed.
//!
//! A new leader knows the commit index only once it has committed an entry of its own term
//! (Raft thesis 6.4), and raft-rs drops a ReadIndex request until then, its own and its
//! followers', which left those reads to be asked again an election timeout later. Like
//! etcd, the leader holds them instead (its own rounds are not asked, its followers'
//! requests are kept) and asks raft as soon as it has committed in its term.

use raft::prelude::Message;

use super::Token;

/// The most follower ReadIndex requests a new leader keeps while it has not committed in
/// its term; more are dropped (their members ask again after an election timeout).
const HELD_LIMIT: usize = 4096;

/// The round out: its number, its reads, and the tick it was last asked at.
#[derive(Debug)]
struct Round {
    id: u64,
    reads: Vec<Token>,
    asked: u64,
}

/// Reads waiting for a read index, grouped into rounds.
#[derive(Debug, Default)]
pub(crate) struct ReadRounds {
    /// Reads that arrived after the round out was asked.
    queued: Vec<Token>,
    out: Option<Round>,
    last_id: u64,
    /// Followers' ReadIndex requests a new leader holds until it has committed in its term.
    held: Vec<Message>,
}

impl ReadRounds {
    /// A read arrived; it waits for the next round.
    pub fn queue(&mut self, token: Token) {
        self.queued.push(token);
    }

    /// Starts a round for the queued reads when none is out: its number, to ask raft with.
    pub fn start(&mut self, tick: u64) -> Option<u64> {
        if self.out.is_some() || self.queued.is_empty() {
            return None;
        }
        self.last_id += 1;
        let reads = std::mem::take(&mut self.queued);
        self.out = Some(Round { id: self.last_id, reads, asked: tick });
        Some(self.last_id)
    }

    /// The reads a read state for round `id` answers (none if that round is already
    /// answered: a round asked twice can come back twice). Ends the round.
    pub fn finish(&mut self, id: u64) -> Vec<Token> {
        match self.out.take() {
            Some(r) if r.id == id => r.reads,
            other => {
                self.out = other;
                Vec::new()
            }
        }
    }

    /// Keeps a follower's ReadIndex request until this leader has committed in its term;
    /// false when too many wait already (the request is dropped, as raft-rs would).
    pub fn hold(&mut self, m: Message) -> bool {
        if self.held.len() >= HELD_LIMIT {
            return false;
        }
        self.held.push(m);
        true
    }

    /// The held requests, to step now.
    pub fn take_held(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.held)
    }

    /// The round to ask again, when it has been out for `wait` ticks without an answer
    /// (raft-rs drops a request while no leader is known, and a new leader forgets its
    /// predecessor's).
    pub fn overdue(&mut self, tick: u64, wait: u64) -> Option<u64> {
        let r = self.out.as_mut()?;
        if tick.saturating_sub(r.asked) < wait {
            return None;
        }
        r.asked = tick;
        Some(r.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_that_arrive_while_a_round_is_out_wait_for_the_next() {
        let mut r = ReadRounds::default();
        assert_eq!(r.start(0), None, "nothing queued, no round");
        r.queue(1);
        r.queue(2);
        let first = r.start(0).expect("a round for two reads");
        r.queue(3);
        assert_eq!(r.start(1), None, "one round out at a time");
        assert_eq!(r.finish(first), vec![1, 2], "read 3 arrived after the round was asked");
        assert_eq!(r.finish(first), Vec::<Token>::new(), "a second answer to the same round");
        let second = r.start(2).expect("the next round");
        assert_ne!(first, second);
        assert_eq!(r.finish(second), vec![3]);
        assert_eq!(r.start(3), None, "all answered");
    }

    #[test]
    fn an_unanswered_round_is_asked_again_after_the_wait() {
        let mut r = ReadRounds::default();
        r.queue(7);
        let id = r.start(10).expect("a round");
        assert_eq!(r.overdue(15, 10), None);
        assert_eq!(r.overdue(20, 10), Some(id));
        assert_eq!(r.overdue(25, 10), None, "the wait starts again");
        assert_eq!(r.finish(id + 1), Vec::<Token>::new(), "another round's answer ends nothing");
        assert_eq!(r.finish(id), vec![7]);
    }
}
