//! A simulated network: delays, drops, duplicates, reordering and partitions.

use std::collections::BTreeSet;

use raft::prelude::Message;

use super::rng::Rng;

/// How unreliable the network is.
#[derive(Debug, Clone, Copy)]
pub struct NetworkFaults {
    /// Chance a message is lost.
    pub drop: f64,
    /// Chance a message is delivered twice.
    pub duplicate: f64,
    /// Longest delay in ticks; delays vary, so messages overtake each other.
    pub max_delay: u64,
}

struct InFlight {
    deliver_at: u64,
    seq: u64,
    msg: Message,
}

/// Messages between members.
pub struct Network {
    faults: NetworkFaults,
    in_flight: Vec<InFlight>,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
    seq: u64,
    /// Messages delivered, dropped and duplicated, for the report.
    pub delivered: u64,
    /// Messages lost.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Snapshots lost on the way, as (from, to, false): the sender must hear of it, as a
    /// real transport tells raft when a snapshot stream fails. (Delivery is reported by
    /// the simulation, which knows whether the target was up.)
    pub snapshot_reports: Vec<(u64, u64, bool)>,
}

impl Network {
    /// A network with these faults.
    pub fn new(faults: NetworkFaults) -> Self {
        Self {
            faults,
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            seq: 0,
            delivered: 0,
            dropped: 0,
            duplicated: 0,
            snapshot_reports: Vec::new(),
        }
    }

    /// Sends a message at time `now`.
    pub fn send(&mut self, rng: &mut Rng, now: u64, msg: Message) {
        if self.cut.contains(&(msg.from, msg.to)) || rng.chance(self.faults.drop) {
            self.lose(&msg);
            return;
        }
        let copies = if rng.chance(self.faults.duplicate) { 2 } else { 1 };
        self.duplicated += copies - 1;
        for _ in 0..copies {
            self.seq += 1;
            let deliver_at = now + rng.range(0, self.faults.max_delay + 1);
            self.in_flight.push(InFlight { deliver_at, seq: self.seq, msg: msg.clone() });
        }
    }

    /// The messages due at `now`, in a deterministic order; links cut meanwhile drop theirs.
    pub fn due(&mut self, now: u64) -> Vec<Message> {
        let mut due: Vec<InFlight> = Vec::new();
        let mut keep = Vec::new();
        for m in self.in_flight.drain(..) {
            if m.deliver_at <= now {
                due.push(m);
            } else {
                keep.push(m);
            }
        }
        self.in_flight = keep;
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        let mut out = Vec::new();
        for m in due {
            if self.cut.contains(&(m.msg.from, m.msg.to)) {
                self.lose(&m.msg);
            } else {
                self.delivered += 1;
                out.push(m.msg);
            }
        }
        out
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Drops every message to or from `id` (it crashed: its sockets are gone).
    pub fn forget(&mut self, id: u64) {
        let (lost, keep): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.drain(..).partition(|m| m.msg.to == id || m.msg.from == id);
        self.in_flight = keep;
        for m in lost {
            self.lose(&m.msg);
        }
    }

    fn lose(&mut self, msg: &Message) {
        self.dropped += 1;
        if msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
            self.snapshot_reports.push((msg.from, msg.to, false));
        }
    }
}
