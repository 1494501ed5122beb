//! Members on a hand-driven network: every message is delivered (or held back) by the
//! caller, and time moves only when it ticks. For tests that need an exact interleaving,
//! and for the fuzz target that steps forged messages into a member of a live cluster.

use std::collections::BTreeMap;

use raft::prelude::Message;

use super::{Member, MemberConfig};
use crate::storage::MemStore;

/// Three members on memory stores, bootstrapped together.
pub struct HandNet {
    members: BTreeMap<u64, Member<MemStore>>,
    /// Messages not delivered yet.
    queue: Vec<Message>,
}

impl HandNet {
    /// Three members; node 1's election timeout is the shortest, so it campaigns first.
    pub fn three() -> Self {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let addresses: Vec<(u64, String)> = (1..=3).map(|id| (id, format!("t:{id}"))).collect();
        let members = (1..=3)
            .map(|id| {
                let mut store = MemStore::new();
                Member::bootstrap(&mut store, &addresses).expect("bootstrap a memory store");
                let mut cfg = MemberConfig::new(id, "t", 1);
                cfg.election_tick = 10;
                let timeout = if id == 1 { 10 } else { 30 };
                cfg.election_range = Some((timeout, timeout + 1));
                let mut m = Member::new(cfg, store, &logger).expect("a member on a memory store");
                m.set_election_timeout_ms(1_000);
                m.set_time(1_700_000_000_000);
                (id, m)
            })
            .collect();
        HandNet { members, queue: Vec::new() }
    }

    /// Member `id` (1 to 3).
    pub fn member(&mut self, id: u64) -> &mut Member<MemStore> {
        self.members.get_mut(&id).expect("members are 1 to 3")
    }

    /// Processes every member's Ready and delivers messages until none is left, except
    /// those `hold` keeps back (returned).
    pub fn pump(&mut self, hold: impl Fn(&Message) -> bool) -> Vec<Message> {
        self.pump_rounds(usize::MAX, hold)
    }

    /// [`HandNet::pump`], for at most `rounds` rounds of deliveries (what is left waits for
    /// the next call): members fed forged messages may talk without end.
    pub fn pump_rounds(&mut self, rounds: usize, hold: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut held = Vec::new();
        for _ in 0..rounds {
            for m in self.members.values_mut() {
                while m.has_ready() {
                    self.queue.extend(m.process_ready().expect("a memory store does not fail"));
                }
            }
            if self.queue.is_empty() {
                return held;
            }
            for msg in std::mem::take(&mut self.queue) {
                if hold(&msg) {
                    held.push(msg);
                } else if let Some(to) = self.members.get_mut(&msg.to) {
                    // A member's own error is the caller's to look at through its state.
                    let _ = to.step(msg);
                }
            }
        }
        held
    }

    /// One tick on every member.
    pub fn tick_all(&mut self) {
        for m in self.members.values_mut() {
            m.tick();
        }
    }

    /// Ticks and delivers everything until node 1 leads and both others follow it.
    pub fn elect_one(&mut self) {
        for _ in 0..100 {
            self.tick_all();
            self.pump(|_| false);
            if self.member(1).role() == crate::Role::Leader
                && self.member(2).leader_id() == 1
                && self.member(3).leader_id() == 1
            {
                return;
            }
        }
        panic!("node 1 did not become the leader on a hand-driven network");
    }
}
