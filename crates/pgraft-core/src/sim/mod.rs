//! A deterministic simulation of a cluster: many members in one process, a seeded random
//! network that drops, delays, duplicates and reorders messages, partitions that come and
//! go, members that crash and restart, membership changes, and clients that run
//! concurrent puts, gets, deletes and compare-and-swaps throughout.
//!
//! Every run checks, one invariant per check:
//! - at most one leader per term (Raft paper, section 5.2, Election Safety);
//! - an applied entry never changes (section 5.4, State Machine Safety);
//! - the client history is linearizable, which also means no acknowledged write is lost;
//! - after the faults heal, a leader is elected and a write succeeds within a bound;
//! - in the end every member holds the same KV state (same hash);
//! - no member drops a message as malformed (honest peers send none).
//!
//! The seed derives everything; a failure names the seed and the command that replays it.

mod network;
mod rng;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::command::Body;
use crate::kv::{Compare, KvOp, KvResult, TxnAction};
use crate::linearizability::{self, Call, Operation, Ret, Verdict};
use crate::member::{Member, MemberConfig, Role, Token};
use crate::request::{Consistency, Read, Request, Response};
use crate::snapshot_job::SnapshotJob;
use crate::state_machine::Outcome;
use crate::storage::MemStore;

pub use network::{Network, NetworkFaults};
pub use rng::Rng;

/// An empty store whose writes are durable only when the simulation says (see
/// [`MemStore::deferred`]).
fn new_store(opts: &SimOptions) -> MemStore {
    match opts.broken_early_durability {
        true => MemStore::acking_early(),
        false => MemStore::deferred(),
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Members (3 or 5 make sense).
    pub members: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Distinct keys the clients use.
    pub keys: u64,
    /// Ticks of the faulty phase.
    pub fault_ticks: u64,
    /// Ticks after healing within which a write must succeed.
    pub recovery_bound: u64,
    /// Network faults.
    pub network: NetworkFaults,
    /// Snapshot every this many entries (small, so snapshots are exercised).
    pub snapshot_count: u64,
    /// A deliberate bug for testing the checks: client reads are served from the local
    /// state without ReadIndex. Runs with it must fail for some seeds.
    pub broken_local_reads: bool,
    /// A deliberate bug for testing the checks: the log reports writes durable as soon as
    /// they are started, so members acknowledge entries and votes that a crash then
    /// loses. Runs with it must fail for some seeds.
    pub broken_early_durability: bool,
    /// Print snapshot and probe events to stderr.
    pub trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            members: 3,
            clients: 4,
            keys: 3,
            fault_ticks: 600,
            recovery_bound: 300,
            network: NetworkFaults { drop: 0.02, duplicate: 0.01, max_delay: 3 },
            snapshot_count: 40,
            broken_local_reads: false,
            broken_early_durability: false,
            trace: false,
        }
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Client operations that completed.
    pub completed: u64,
    /// Client operations whose outcome is unknown (timeouts, crashes).
    pub unknown: u64,
    /// Faults injected.
    pub faults: Vec<String>,
    /// The highest term reached.
    pub max_term: u64,
    /// Ticks from healing until a write succeeded.
    pub recovery_ticks: u64,
    /// Proposals members sent again because they seemed lost (summed at the end).
    pub resent: u64,
    /// Copies of proposals the state machine skipped (applied entries marked duplicate,
    /// among those the members still remember).
    pub duplicates: u64,
    /// Crashes that lost log writes not yet durable.
    pub lost_writes: u64,
}

/// A failed run: which invariant broke, and how to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The members of the run.
    pub members: u64,
    /// What went wrong.
    pub what: String,
    /// The faults injected until then.
    pub faults: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation seed {} failed: {}\nreplay: cargo run -p pgraft-core --bin pgraft-sim -- --seed {} --members {}",
            self.seed, self.what, self.seed, self.members
        )
    }
}

struct Node {
    id: u64,
    member: Option<Member<MemStore>>,
    /// The store as it was at the crash, while the member is down.
    saved: Option<MemStore>,
    incarnation: u64,
    checked_index: u64,
    election: usize,
    restart_at: Option<u64>,
    /// What its messages promised the others: the last vote granted (term, candidate)
    /// and the last log position acknowledged (term, index). Its store after a crash must
    /// still hold both (see [`Sim::crash`]).
    vote_given: (u64, u64),
    log_acked: (u64, u64),
}

struct Pending {
    op: Option<Operation>,
    node: u64,
    deadline: u64,
    purpose: Purpose,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Client(u64),
    Remove(u64),
    Add(u64),
    Probe,
}

struct Sim {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    net: Network,
    nodes: Vec<Node>,
    pending: BTreeMap<Token, Pending>,
    history: Vec<Operation>,
    next_token: Token,
    busy_clients: BTreeSet<u64>,
    values: u64,
    leaders: BTreeMap<u64, u64>,
    applied: BTreeMap<u64, (u64, String, Option<String>, String)>,
    /// Removed members waiting to be added back: id -> earliest tick.
    readd: BTreeMap<u64, u64>,
    membership_busy: bool,
    partition_until: Option<u64>,
    probe_ok: bool,
    report: SimReport,
    logger: slog::Logger,
    /// Snapshot jobs being "written": (due tick, node index, incarnation, job). They
    /// finish a few ticks after they start, as on the snapshot thread, so members go on
    /// applying meanwhile; a crash loses them.
    snapshot_jobs: Vec<(u64, usize, u64, SnapshotJob)>,
    /// A crashed member's store lost what its messages had promised.
    broken_promise: Option<String>,
}

/// Runs one seed.
pub fn run(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(seed, opts.clone());
    let r = sim.run();
    r.map_err(|what| SimFailure { seed, members: opts.members, what, faults: sim.report.faults.clone() })
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Self {
        let mut rng = Rng::new(seed);
        let n = opts.members;
        // A distinct, fixed election timeout per member (raft-rs would draw it from the
        // thread's RNG, which no seed controls); distinct values also end split votes.
        let mut slots: Vec<u64> = (0..n).collect();
        for i in (1..slots.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            slots.swap(i, j);
        }
        let members: Vec<(u64, String)> = (1..=n).map(|id| (id, format!("sim:{id}"))).collect();
        let nodes = (1..=n)
            .map(|id| {
                // Writes durable later, as on the log's I/O thread (see `step`).
                let mut store = new_store(&opts);
                Member::bootstrap(&mut store, &members).expect("bootstrap of an empty memory store");
                Node {
                    id,
                    member: None,
                    saved: Some(store),
                    incarnation: 0,
                    checked_index: 0,
                    election: 10 + 2 * slots[(id - 1) as usize] as usize,
                    restart_at: None,
                    vote_given: (0, 0),
                    log_acked: (0, 0),
                }
            })
            .collect();
        let net = Network::new(opts.network);
        let mut sim = Self {
            opts,
            rng,
            now: 0,
            net,
            nodes,
            pending: BTreeMap::new(),
            history: Vec::new(),
            next_token: 1,
            busy_clients: BTreeSet::new(),
            values: 0,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            readd: BTreeMap::new(),
            membership_busy: false,
            partition_until: None,
            probe_ok: false,
            report: SimReport { seed, ..Default::default() },
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            snapshot_jobs: Vec::new(),
            broken_promise: None,
        };
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(store) = node.saved.take() else { return };
        node.incarnation += 1;
        let mut cfg = MemberConfig::new(node.id, "sim", node.incarnation);
        cfg.election_tick = 10;
        cfg.election_range = Some((node.election, node.election + 1));
        cfg.snapshot_count = self.opts.snapshot_count;
        cfg.snapshot_catchup = self.opts.snapshot_count / 2;
        let mut member = Member::new(cfg, store, &self.logger).expect("a member starts on its own store");
        // The simulation's clock advances 100 ms per tick.
        member.set_election_timeout_ms(100 * node.election as u64);
        node.checked_index = node.checked_index.min(member.state().applied_index);
        node.member = Some(member);
        node.restart_at = None;
    }

    fn crash(&mut self, i: usize, restart_at: u64) {
        let id = self.nodes[i].id;
        if let Some(m) = self.nodes[i].member.take() {
            if m.store().writes_out() {
                self.report.lost_writes += 1;
            }
            let after = m.store().crashed();
            self.check_promises(i, &after);
            self.nodes[i].saved = Some(after);
        }
        self.nodes[i].restart_at = Some(restart_at);
        self.net.forget(id);
        self.snapshot_jobs.retain(|(_, node, _, _)| *node != i);
        // Requests waiting in the crashed member: their outcome is unknown.
        let lost: Vec<Token> = self.pending.iter().filter(|(_, p)| p.node == id).map(|(t, _)| *t).collect();
        for t in lost {
            self.finish(t, None);
        }
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].member.is_some()).collect()
    }

    fn run(&mut self) -> Result<SimReport, String> {
        let fault_end = self.opts.fault_ticks;
        while self.now < fault_end {
            self.inject_faults();
            self.issue_client_ops(0.3);
            self.step()?;
        }
        // Heal: restore links, restart everyone, finish membership changes.
        self.net.heal();
        self.partition_until = None;
        for i in 0..self.nodes.len() {
            if self.nodes[i].member.is_none() {
                self.start(i);
            }
        }
        let healed = self.now;
        let bound = healed + self.opts.recovery_bound;
        while !self.probe_ok {
            if self.now >= bound {
                return Err(format!(
                    "no write succeeded within {} ticks after healing: {}",
                    self.opts.recovery_bound,
                    self.describe()
                ));
            }
            self.readd_members(true);
            if !self.pending.values().any(|p| p.purpose == Purpose::Probe) {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                let key = "recovery-probe".to_string();
                self.submit(
                    i,
                    Request::Propose(Body::Kv(KvOp::Put { key, value: b"ok".to_vec(), time_ms: 0 })),
                    None,
                    Purpose::Probe,
                );
            }
            self.issue_client_ops(0.2);
            self.step()?;
        }
        self.report.recovery_ticks = self.now - healed;
        // Let everything in flight finish, every removed member come back, and converge.
        let settle = self.now + 400;
        loop {
            self.readd_members(true);
            self.step()?;
            if self.pending.is_empty() && self.readd.is_empty() && self.converged() {
                break;
            }
            if self.now >= settle {
                return Err(format!(
                    "members did not converge within 400 ticks after recovery: {}; pending {}, to re-add {:?}",
                    self.describe(),
                    self.pending.len(),
                    self.readd
                ));
            }
        }
        // Final linearizable reads of every key on every member: a lost acknowledged write
        // shows up as a read the history cannot explain.
        for i in 0..self.nodes.len() {
            for k in 0..self.opts.keys {
                let client = 1000 + i as u64;
                let key = format!("k{k}");
                let op = Operation {
                    client,
                    key: key.clone(),
                    call: Call::Get,
                    ret: Ret::Unknown,
                    invoke: self.now,
                    complete: None,
                };
                self.submit(
                    i,
                    Request::Read(Read::Get { key, revision: None }, Consistency::Linearizable),
                    Some(op),
                    Purpose::Client(client),
                );
            }
        }
        let end = self.now + 200;
        while !self.pending.is_empty() {
            if self.now >= end {
                return Err("final reads did not complete within 200 ticks".into());
            }
            self.step()?;
        }
        let hashes: BTreeSet<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.member.as_ref())
            .map(|m| m.state().kv.hash(None).unwrap_or(0))
            .collect();
        if hashes.len() != 1 {
            return Err(format!("members hold different KV states after converging: hashes {hashes:?}"));
        }
        if let Verdict::Violation { key, ops } = linearizability::check(&self.history) {
            let lines: Vec<String> = ops.iter().map(|o| format!("  {o:?}")).collect();
            return Err(format!("history of key {key} is not linearizable:\n{}", lines.join("\n")));
        }
        self.report.max_term = self.leaders.keys().max().copied().unwrap_or(0);
        for m in self.nodes.iter().filter_map(|n| n.member.as_ref()) {
            self.report.resent += m.status().counters.proposals_resent;
        }
        self.report.duplicates = self
            .nodes
            .iter()
            .filter_map(|n| n.member.as_ref())
            .map(|m| m.state().history.iter().filter(|r| r.operation == "duplicate").count() as u64)
            .max()
            .unwrap_or(0);
        Ok(std::mem::take(&mut self.report))
    }

    /// Every member's state, for failure reports.
    fn describe(&self) -> String {
        let detail: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.member.as_ref())
            .map(|m| {
                let st = m.status();
                format!(
                    "node {} {} t{} applied {} commit {} first {} last {} voters {:?} progress {:?}",
                    st.id,
                    st.role.as_str(),
                    st.term,
                    st.applied,
                    st.commit,
                    st.first_index,
                    st.last_index,
                    st.voters,
                    st.progress
                )
            })
            .collect();
        detail.join("; ")
    }

    fn converged(&self) -> bool {
        let alive: Vec<&Member<MemStore>> = self.nodes.iter().filter_map(|n| n.member.as_ref()).collect();
        if alive.len() != self.nodes.len() {
            return false;
        }
        let applied: BTreeSet<u64> = alive.iter().map(|m| m.state().applied_index).collect();
        let voters: BTreeSet<usize> = alive.iter().map(|m| m.status().voters.len()).collect();
        applied.len() == 1
            && voters == BTreeSet::from([self.nodes.len()])
            && alive.iter().any(|m| m.role() == Role::Leader)
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len() as u64;
        // Partitions: one member isolated, or a random minority cut from the majority.
        match self.partition_until {
            Some(t) if self.now >= t => {
                self.net.heal();
                self.partition_until = None;
            }
            None if self.rng.chance(0.01) => {
                let ids: Vec<u64> = (1..=n).collect();
                let k = 1 + self.rng.below(n / 2);
                let mut side: Vec<u64> = Vec::new();
                while (side.len() as u64) < k {
                    let id = *self.rng.pick(&ids);
                    if !side.contains(&id) {
                        side.push(id);
                    }
                }
                let rest: Vec<u64> = ids.iter().copied().filter(|i| !side.contains(i)).collect();
                self.net.partition(&side, &rest);
                let until = self.now + self.rng.range(20, 150);
                self.partition_until = Some(until);
                self.report
                    .faults
                    .push(format!("t{}: partition {side:?} | {rest:?} until t{until}", self.now));
            }
            _ => {}
        }
        // Crashes: at most a minority down at once.
        let down = self.nodes.iter().filter(|x| x.member.is_none()).count() as u64;
        if down < (n - 1) / 2 && self.rng.chance(0.006) {
            let alive = self.alive();
            let i = *self.rng.pick(&alive);
            let until = self.now + self.rng.range(10, 100);
            self.report.faults.push(format!("t{}: crash node {} until t{until}", self.now, self.nodes[i].id));
            self.crash(i, until);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_at.is_some_and(|t| self.now >= t) {
                self.report.faults.push(format!("t{}: restart node {}", self.now, self.nodes[i].id));
                self.start(i);
            }
        }
        // Membership: remove a follower, add it back later.
        if !self.membership_busy && self.readd.is_empty() && down == 0 && self.rng.chance(0.003) {
            if let Some(leader) = self.leader_index() {
                let followers: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|x| x.member.is_some() && x.id != self.nodes[leader].id)
                    .map(|x| x.id)
                    .collect();
                if !followers.is_empty() {
                    let id = *self.rng.pick(&followers);
                    self.report.faults.push(format!("t{}: remove node {id}", self.now));
                    self.membership_busy = true;
                    self.submit(leader, Request::RemoveMember { id }, None, Purpose::Remove(id));
                }
            }
        }
        self.readd_members(false);
    }

    fn readd_members(&mut self, now: bool) {
        if self.membership_busy {
            return;
        }
        if let Some(leader) = self.leader_index().and_then(|i| self.nodes[i].member.as_ref()) {
            let voters = leader.status().voters;
            if now {
                // After healing every member must be back, whatever was planned.
                for n in &self.nodes {
                    if !voters.contains(&n.id) {
                        self.readd.entry(n.id).or_insert(0);
                    }
                }
            }
            self.readd.retain(|id, _| !voters.contains(id));
        }
        let due: Option<u64> = self.readd.iter().find(|(_, t)| now || self.now >= **t).map(|(id, _)| *id);
        if let (Some(id), Some(leader)) = (due, self.leader_index()) {
            // Half the time the operator also wiped the member's Raft data (a new disk, a
            // broken store): it comes back empty, remembering neither its log nor its votes.
            let member = self.nodes[leader].member.as_ref().map(|m| m.status());
            let absent = member.is_some_and(|st| !st.voters.contains(&id) && !st.learners.contains(&id));
            if absent && self.rng.chance(0.5) {
                if let Some(i) = self.nodes.iter().position(|n| n.id == id) {
                    self.report.faults.push(format!("t{}: wipe node {id}", self.now));
                    self.crash(i, self.now);
                    self.nodes[i].saved = Some(new_store(&self.opts));
                    // A wiped member starts over: it promised nothing yet.
                    self.nodes[i].vote_given = (0, 0);
                    self.nodes[i].log_acked = (0, 0);
                    self.start(i);
                }
            }
            let Some(leader) = self.leader_index() else { return };
            self.membership_busy = true;
            self.submit(
                leader,
                Request::AddMember { id, address: format!("sim:{id}"), learner: false },
                None,
                Purpose::Add(id),
            );
        }
    }

    fn leader_index(&self) -> Option<usize> {
        self.nodes.iter().position(|x| x.member.as_ref().is_some_and(|m| m.role() == Role::Leader))
    }

    fn issue_client_ops(&mut self, rate: f64) {
        for client in 0..self.opts.clients {
            if self.busy_clients.contains(&client) || !self.rng.chance(rate) {
                continue;
            }
            let alive = self.alive();
            if alive.is_empty() {
                return;
            }
            let i = *self.rng.pick(&alive);
            let key = format!("k{}", self.rng.below(self.opts.keys));
            self.values += 1;
            let value = format!("c{client}v{}", self.values);
            let dice = self.rng.below(100);
            let (call, req) = if dice < 40 {
                let op = KvOp::Put { key: key.clone(), value: value.clone().into_bytes(), time_ms: 0 };
                (Call::Put(value), Request::Propose(Body::Kv(op)))
            } else if dice < 75 {
                let consistency = if self.opts.broken_local_reads {
                    Consistency::Serializable
                } else {
                    Consistency::Linearizable
                };
                (Call::Get, Request::Read(Read::Get { key: key.clone(), revision: None }, consistency))
            } else if dice < 85 {
                (Call::Delete, Request::Propose(Body::Kv(KvOp::Delete { key: key.clone(), time_ms: 0 })))
            } else {
                // Compare against the last value some client wrote, or absence.
                let expect = if self.rng.chance(0.3) || self.values < 2 {
                    None
                } else {
                    Some(format!("c{}v{}", self.rng.below(self.opts.clients), self.rng.range(1, self.values)))
                };
                let op = KvOp::CompareAndSwap {
                    key: key.clone(),
                    compare: Compare::Value(expect.clone().map(String::into_bytes)),
                    action: TxnAction::Put(value.clone().into_bytes()),
                    time_ms: 0,
                };
                (Call::Cas { expect, new: Some(value) }, Request::Propose(Body::Kv(op)))
            };
            let op = Operation { client, key, call, ret: Ret::Unknown, invoke: self.now, complete: None };
            self.busy_clients.insert(client);
            self.submit(i, req, Some(op), Purpose::Client(client));
        }
    }

    fn submit(&mut self, i: usize, req: Request, op: Option<Operation>, purpose: Purpose) {
        let token = self.next_token;
        self.next_token += 1;
        let node = self.nodes[i].id;
        let Some(m) = self.nodes[i].member.as_mut() else { return };
        self.pending.insert(token, Pending { op, node, deadline: self.now + 60, purpose });
        m.submit(token, req);
        self.collect(i);
    }

    /// Records the end of a request: `Some` answer, or `None` for an unknown outcome.
    fn finish(&mut self, token: Token, answer: Option<crate::Result<Response>>) {
        let Some(p) = self.pending.remove(&token) else { return };
        match p.purpose {
            Purpose::Client(c) => {
                self.busy_clients.remove(&c);
            }
            Purpose::Remove(id) => {
                // Whatever the answer (a timeout may still have removed it), plan to add
                // it back; `readd_members` skips members that are voters.
                self.membership_busy = false;
                let at = self.now + self.rng.range(20, 80);
                self.readd.insert(id, at);
            }
            Purpose::Add(id) => {
                self.membership_busy = false;
                if matches!(answer, Some(Ok(_))) {
                    self.readd.remove(&id);
                    self.report.faults.push(format!("t{}: node {id} added back", self.now));
                }
            }
            Purpose::Probe => {
                if self.opts.trace {
                    eprintln!("t{} probe on node {}: {answer:?}", self.now, p.node);
                }
                self.probe_ok = matches!(answer, Some(Ok(_)))
            }
        }
        let Some(mut op) = p.op else { return };
        let ret = match answer {
            None => Ret::Unknown,
            Some(Err(_)) => {
                // A refusal before proposing: the operation did not happen. Reads that
                // failed say nothing either way.
                self.report.unknown += 1;
                return;
            }
            Some(Ok(r)) => match (&op.call, r) {
                (Call::Get, Response::Kvs(kvs)) => {
                    Ret::Value(kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
                }
                (
                    Call::Cas { .. },
                    Response::Applied {
                        outcome: Outcome::Kv(KvResult::CompareAndSwap { succeeded, .. }),
                        ..
                    },
                ) => Ret::Cas(succeeded),
                (Call::Put(_) | Call::Delete, Response::Applied { .. }) => Ret::Ok,
                (call, r) => {
                    self.report.faults.push(format!("unexpected answer {r:?} to {call:?}"));
                    Ret::Unknown
                }
            },
        };
        if ret == Ret::Unknown {
            self.report.unknown += 1;
        } else {
            self.report.completed += 1;
            op.complete = Some(self.now);
        }
        op.ret = ret;
        self.history.push(op);
    }

    fn collect(&mut self, i: usize) {
        let answers = match self.nodes[i].member.as_mut() {
            Some(m) => m.take_answers(),
            None => return,
        };
        for (token, r) in answers {
            self.finish(token, Some(r));
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        let now_ms = 1_700_000_000_000 + self.now as i64 * 100;
        for node in self.nodes.iter_mut() {
            if let Some(m) = node.member.as_mut() {
                m.set_time(now_ms);
                m.tick();
            }
        }
        for msg in self.net.due(self.now) {
            let (from, to) = (msg.from, msg.to);
            let snapshot = msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot;
            match self.nodes.iter_mut().find(|x| x.id == to).and_then(|x| x.member.as_mut()) {
                Some(m) => {
                    m.step(msg).map_err(|e| format!("node {to} refused a message: {e}"))?;
                    if snapshot {
                        self.net.snapshot_reports.push((from, to, true));
                    }
                }
                // The target is down: like a refused connection, the sender learns that
                // its snapshot did not arrive.
                None if snapshot => {
                    if let Some(s) =
                        self.nodes.iter_mut().find(|x| x.id == from).and_then(|x| x.member.as_mut())
                    {
                        s.report_snapshot(to, false);
                    }
                }
                None => {}
            }
        }
        // Snapshot jobs that are due finish now.
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.snapshot_jobs).into_iter().partition(|(t, _, _, _)| *t <= self.now);
        self.snapshot_jobs = later;
        for (_, i, incarnation, job) in due {
            let node = &mut self.nodes[i];
            let Some(m) = node.member.as_mut() else { continue };
            if node.incarnation == incarnation {
                m.snapshot_done(job.run()).map_err(|e| format!("node {} failed: {e}", node.id))?;
            }
        }
        // The log's writes finish at random, about one step after they were made (a sync
        // takes about as long as a message): a crash before loses them, and the messages
        // that promised them have not left.
        for node in self.nodes.iter_mut() {
            if let Some(m) = node.member.as_mut() {
                if self.rng.below(2) == 0 {
                    m.store_mut().finish_writes();
                }
            }
        }
        // Process until quiet: a ready can produce another (e.g. after a write is durable).
        for _ in 0..6 {
            let mut any = false;
            for i in 0..self.nodes.len() {
                let (id, incarnation) = (self.nodes[i].id, self.nodes[i].incarnation);
                let Some(m) = self.nodes[i].member.as_mut() else { continue };
                let out = m.process_ready().map_err(|e| format!("node {id} failed: {e}"))?;
                any |= !out.is_empty() || m.has_ready();
                if let Some(job) = m.take_snapshot_job() {
                    let due = self.now + self.rng.range(1, 6);
                    self.snapshot_jobs.push((due, i, incarnation, job));
                }
                for msg in out {
                    self.note_promise(i, &msg);
                    if self.opts.trace && msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                        eprintln!(
                            "t{} snapshot {} -> {} idx {}",
                            self.now,
                            msg.from,
                            msg.to,
                            msg.get_snapshot().get_metadata().index
                        );
                    }
                    self.net.send(&mut self.rng, self.now, msg);
                }
                self.collect(i);
            }
            if !any {
                break;
            }
        }
        for (from, to, delivered) in std::mem::take(&mut self.net.snapshot_reports) {
            if self.opts.trace {
                eprintln!("t{} report {} -> {} delivered {}", self.now, from, to, delivered);
            }
            if let Some(m) = self.nodes.iter_mut().find(|x| x.id == from).and_then(|x| x.member.as_mut()) {
                m.report_snapshot(to, delivered);
            }
        }
        // Deadlines: the outcome is unknown.
        let expired: Vec<(Token, u64)> =
            self.pending.iter().filter(|(_, p)| p.deadline <= self.now).map(|(t, p)| (*t, p.node)).collect();
        for (t, node) in expired {
            if let Some(m) = self.nodes.iter_mut().find(|x| x.id == node).and_then(|x| x.member.as_mut()) {
                m.cancel(t);
            }
            self.finish(t, None);
        }
        self.check_invariants()
    }

    /// Notes what a message `i` sends promises: a vote, or that its log holds an index.
    fn note_promise(&mut self, i: usize, msg: &raft::prelude::Message) {
        use raft::prelude::MessageType::{MsgAppendResponse, MsgRequestVoteResponse};
        let node = &mut self.nodes[i];
        match msg.get_msg_type() {
            MsgRequestVoteResponse if !msg.reject => {
                node.vote_given = node.vote_given.max((msg.term, msg.to))
            }
            MsgAppendResponse if !msg.reject => node.log_acked = node.log_acked.max((msg.term, msg.index)),
            _ => {}
        }
    }

    /// A crashed member's store still holds what its messages promised: the vote it gave
    /// (unless it has since moved to a later term) and the log position it acknowledged
    /// (unless a later term's leader may have replaced it).
    fn check_promises(&mut self, i: usize, after: &MemStore) {
        use crate::storage::LogStore as _;
        use raft::Storage as _;
        let node = &self.nodes[i];
        let hs = after.hard_state();
        let (term, vote) = node.vote_given;
        if term > 0 && (hs.term < term || (hs.term == term && hs.vote != vote)) {
            self.broken_promise.get_or_insert(format!(
                "node {} voted for {vote} in term {term}, and after a crash its store holds term {} vote {}",
                node.id, hs.term, hs.vote
            ));
        }
        let (term, index) = node.log_acked;
        let last = after.last_index().unwrap_or(0);
        if term > 0 && hs.term <= term && last < index {
            self.broken_promise.get_or_insert(format!(
                "node {} acknowledged its log up to {index} in term {term}, and after a crash its store ends at {last} (term {})",
                node.id, hs.term
            ));
        }
    }

    fn check_invariants(&mut self) -> Result<(), String> {
        if let Some(why) = self.broken_promise.take() {
            return Err(why);
        }
        for node in &mut self.nodes {
            let Some(m) = node.member.as_ref() else { continue };
            if let (n @ 1.., last) = m.messages_dropped() {
                // Reordered, duplicated and stale messages are the network's, not forgeries:
                // the checks on peer messages must let every one of them through.
                return Err(format!(
                    "node {} dropped {n} messages of honest peers, the last {last}",
                    node.id
                ));
            }
            if m.role() == Role::Leader {
                let term = m.term();
                match self.leaders.get(&term) {
                    Some(other) if *other != node.id => {
                        return Err(format!("two leaders in term {term}: nodes {other} and {}", node.id));
                    }
                    _ => {
                        self.leaders.insert(term, node.id);
                    }
                }
            }
            for rec in m.state().history.iter().filter(|r| r.index > node.checked_index) {
                let seen = (rec.term, rec.operation.clone(), rec.target.clone(), rec.data.clone());
                match self.applied.get(&rec.index) {
                    Some(first) if *first != seen => {
                        return Err(format!(
                            "entry {} applied differently: first {:?}, then on node {} {:?}",
                            rec.index, first, node.id, seen
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.applied.insert(rec.index, seen);
                    }
                }
            }
            node.checked_index = node.checked_index.max(m.state().applied_index);
        }
        Ok(())
    }
}
