//! The seeded fault schedule: which fault, how long it holds, how long the cluster then
//! runs undisturbed.
//!
//! The schedule is a pure function of the seed and the enabled fault kinds, so a failing
//! run's schedule is replayed by running again with the same seed. Targets that depend on
//! the cluster's state at that moment ("the leader", "a follower") are resolved when the
//! fault is injected, from the random number `pick` drawn here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::seeded_rng::SeededRng;

/// A kind of fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 a member's postmaster, then start it again.
    Kill,
    /// kill -9 a member's pgraft background worker alone (PostgreSQL crash-restarts).
    KillWorker,
    /// Cut one member off from every other member.
    Isolate,
    /// Put the leader in a minority (alone in 3 members, with one follower in 5).
    LeaderMinority,
    /// A bridge: two halves that only one member in the middle connects.
    Bridge,
    /// A ring: every member sees only its two neighbours (4 members or more).
    Ring,
    /// SIGSTOP every process of a member, then SIGCONT.
    Pause,
    /// Ask the leader to hand leadership to another member.
    Transfer,
    /// Remove a member, wipe its Raft data, start it empty and add it back.
    RemoveAdd,
    /// HA clusters: cut every replication link of a server (mostly the primary's); its
    /// Raft links stay up.
    ReplIsolate,
    /// HA clusters: cut a server (mostly the primary) off from everything, Raft and
    /// replication links alike.
    IsolateAll,
    /// HA clusters: `pgraft_set_config('failover_enabled', 'false')`, then on again.
    FailoverToggle,
    /// HA clusters: cut the primary's replication links to every standby but one, then
    /// kill that one, the only synchronous standby left.
    SyncStandbyKill,
}

impl FaultKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Kill,
        FaultKind::KillWorker,
        FaultKind::Isolate,
        FaultKind::LeaderMinority,
        FaultKind::Bridge,
        FaultKind::Ring,
        FaultKind::Pause,
        FaultKind::Transfer,
        FaultKind::RemoveAdd,
        FaultKind::ReplIsolate,
        FaultKind::IsolateAll,
        FaultKind::FailoverToggle,
        FaultKind::SyncStandbyKill,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::Isolate => "isolate",
            FaultKind::LeaderMinority => "leader-minority",
            FaultKind::Bridge => "bridge",
            FaultKind::Ring => "ring",
            FaultKind::Pause => "pause",
            FaultKind::Transfer => "transfer",
            FaultKind::RemoveAdd => "remove-add",
            FaultKind::ReplIsolate => "repl-isolate",
            FaultKind::IsolateAll => "isolate-all",
            FaultKind::FailoverToggle => "failover-toggle",
            FaultKind::SyncStandbyKill => "sync-standby-kill",
        }
    }

    /// Whether this kind means anything in a cluster of `nodes` members, with PostgreSQL
    /// failover (`ha`: the database torture) or without (the KV torture).
    pub fn applies_to(self, nodes: u64, ha: bool) -> bool {
        match self {
            FaultKind::ReplIsolate | FaultKind::IsolateAll | FaultKind::FailoverToggle => ha,
            FaultKind::SyncStandbyKill => ha && nodes >= 3,
            FaultKind::Ring => nodes >= 4,
            FaultKind::RemoveAdd | FaultKind::Bridge | FaultKind::Transfer => nodes >= 3,
            FaultKind::LeaderMinority | FaultKind::Isolate => nodes >= 2,
            FaultKind::Kill | FaultKind::KillWorker | FaultKind::Pause => true,
        }
    }

    /// Parses a comma-separated list (`all` for every kind).
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>> {
        if text.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut out: Vec<FaultKind> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_>>()?;
        out.sort();
        out.dedup();
        if out.is_empty() {
            bail!("no fault kinds given");
        }
        Ok(out)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Self::ALL.iter().find(|k| k.name() == s) {
            Some(k) => Ok(*k),
            None => {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                bail!("unknown fault kind {s:?}; known: {}, or all", names.join(", "))
            }
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFault {
    /// Its position in the schedule (0, 1, ...).
    pub seq: u64,
    /// What to inject.
    pub kind: FaultKind,
    /// Random bits that choose the targets when the fault is injected.
    pub pick: u64,
    /// How long the fault holds before it is healed.
    pub hold: Duration,
    /// How long the cluster runs undisturbed before this fault.
    pub quiet: Duration,
}

/// An endless, seeded sequence of faults.
#[derive(Debug, Clone)]
pub struct FaultSchedule {
    rng: SeededRng,
    /// Seeds the shuffle of each round of kinds.
    round_seed: u64,
    kinds: Vec<FaultKind>,
    seq: u64,
    hold: (u64, u64),
    quiet: (u64, u64),
}

impl FaultSchedule {
    /// The schedule of `seed` over the kinds that apply to `nodes` members (`ha`: see
    /// [`FaultKind::applies_to`]). Holds last
    /// 2 to 6 s and quiet periods 1 to 3 s: long enough for elections (1 s timeout) to
    /// happen inside a fault, short enough for many faults in a two-minute run.
    pub fn new(seed: u64, kinds: &[FaultKind], nodes: u64, ha: bool) -> Result<Self> {
        let kinds: Vec<FaultKind> = kinds.iter().copied().filter(|k| k.applies_to(nodes, ha)).collect();
        if kinds.is_empty() {
            bail!("none of the fault kinds applies to a cluster of {nodes} members");
        }
        Ok(Self {
            rng: SeededRng::derive(seed, 0x5C4E_D01E),
            round_seed: SeededRng::derive(seed, 0x20_0D).next_u64(),
            kinds,
            seq: 0,
            hold: (2_000, 6_000),
            quiet: (1_000, 3_000),
        })
    }

    /// The kinds this schedule draws from.
    pub fn kinds(&self) -> &[FaultKind] {
        &self.kinds
    }
}

impl Iterator for FaultSchedule {
    type Item = PlannedFault;

    fn next(&mut self) -> Option<PlannedFault> {
        // Cycle through a shuffled round of every kind, so short runs see each kind once
        // before any repeats.
        let round = self.seq as usize / self.kinds.len();
        let pos = self.seq as usize % self.kinds.len();
        let mut order = self.kinds.clone();
        SeededRng::derive(self.round_seed, round as u64).shuffle(&mut order);
        let kind = order[pos];
        let pick = self.rng.next_u64();
        let hold = Duration::from_millis(self.rng.between(self.hold.0, self.hold.1));
        let quiet = Duration::from_millis(self.rng.between(self.quiet.0, self.quiet.1));
        let f = PlannedFault { seq: self.seq, kind, pick, hold, quiet };
        self.seq += 1;
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule() {
        let a: Vec<_> =
            FaultSchedule::new(42, &FaultKind::ALL, 3, false).expect("schedule").take(30).collect();
        let b: Vec<_> =
            FaultSchedule::new(42, &FaultKind::ALL, 3, false).expect("schedule").take(30).collect();
        assert_eq!(a, b);
        let c: Vec<_> =
            FaultSchedule::new(43, &FaultKind::ALL, 3, false).expect("schedule").take(30).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn every_kind_comes_once_per_round_and_ring_needs_four_members() {
        let s = FaultSchedule::new(1, &FaultKind::ALL, 3, false).expect("schedule");
        let n = s.kinds().len();
        assert_eq!(n, 8, "ring and the HA kinds do not apply to 3 KV members");
        let ha = FaultSchedule::new(1, &FaultKind::ALL, 3, true).expect("schedule");
        assert_eq!(ha.kinds().len(), 12, "ring does not apply to 3 HA members");
        let mut first: Vec<FaultKind> = s.take(n).map(|f| f.kind).collect();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), n);
        let five = FaultSchedule::new(1, &FaultKind::ALL, 5, false).expect("schedule");
        assert!(five.kinds().contains(&FaultKind::Ring));
    }

    #[test]
    fn parses_lists() {
        assert_eq!(
            FaultKind::parse_list("pause, kill,kill").expect("list"),
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        assert_eq!(FaultKind::parse_list("all").expect("all").len(), 13);
        assert!(FaultKind::parse_list("meteor").is_err());
        assert!(FaultKind::parse_list("").is_err());
    }
}
