//! The nemesis: injects each planned fault into a real local cluster, holds it, heals it,
//! and measures how long the cluster then takes to accept a write again.
//!
//! ```text
//!   quiet ──▶ inject ──▶ hold ──▶ heal ──▶ probe writes until one succeeds (≤ bound)
//!                                            └─ recovery time, or an anomaly
//! ```

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::fault_schedule::{FaultKind, PlannedFault};
use super::seeded_rng::SeededRng;
use super::session::connect_blocking;
use crate::local_cluster::LocalCluster;
use crate::wait::wait_until;

/// What happened to one fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Its position in the schedule.
    pub seq: u64,
    /// The kind.
    pub kind: FaultKind,
    /// The targets as resolved at run time ("node 2", "cut {1} from {2,3}", ...).
    pub detail: String,
    /// When it was injected, in microseconds since the run started.
    pub start_us: u64,
    /// When it was healed.
    pub healed_us: u64,
    /// How long after healing the cluster accepted a write; `None` if it did not within
    /// the bound.
    pub recovery_ms: Option<u64>,
    /// What went wrong injecting or healing it, if anything (not an anomaly by itself:
    /// a leadership transfer may be refused during an election).
    pub error: Option<String>,
}

/// What must be undone to heal an injected fault.
enum Undo {
    Start(u64),
    WorkerBack(u64),
    HealLinks,
    Resume(u64),
    AddBack(u64),
    FailoverOn,
    HealAndStart(u64),
    Repair(u64),
    Nothing,
}

/// Injects faults into one cluster.
pub struct Nemesis<'a> {
    cluster: &'a LocalCluster,
    start: Instant,
    recovery_bound: Duration,
    /// An HA cluster's read-write conninfo: the probe writes a row through it, and faults
    /// aimed at one member hit the primary more often than the others.
    ha: Option<String>,
    /// The deliberately broken HA cluster: a primary cut off from everything neither
    /// fences itself nor waits for its standbys. The checks must catch it.
    broken_no_fencing: bool,
}

impl<'a> Nemesis<'a> {
    /// A nemesis for `cluster`; times are measured from `start`; a cluster that does not
    /// accept a write within `recovery_bound` after a heal is an anomaly.
    pub fn new(cluster: &'a LocalCluster, start: Instant, recovery_bound: Duration) -> Self {
        Self { cluster, start, recovery_bound, ha: None, broken_no_fencing: false }
    }

    /// The nemesis of an HA cluster whose applications connect with `read_write`.
    pub fn for_ha(mut self, read_write: String, broken_no_fencing: bool) -> Self {
        self.ha = Some(read_write);
        self.broken_no_fencing = broken_no_fencing;
        self
    }

    /// Breaks (or repairs) fencing on member `id`: its worker no longer acts
    /// (`pgraft.failover_enabled` off there) and its commits no longer wait for standbys
    /// (`synchronous_commit = local`), as a careless operator could set them.
    fn break_fencing(&self, id: u64, broken: bool) -> Result<()> {
        let statements = if broken {
            ["ALTER SYSTEM SET pgraft.failover_enabled = off", "ALTER SYSTEM SET synchronous_commit = local"]
        } else {
            ["ALTER SYSTEM RESET pgraft.failover_enabled", "ALTER SYSTEM RESET synchronous_commit"]
        };
        let mut c = self.connect(id)?;
        // One statement each: ALTER SYSTEM refuses to run in a multi-statement query.
        for sql in statements.iter().chain(&["SELECT pg_reload_conf()"]) {
            c.batch_execute(sql).with_context(|| format!("{sql} on node {id}"))?;
        }
        Ok(())
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Injects, holds and heals one fault, then waits for the cluster to accept writes.
    pub fn run(&self, f: &PlannedFault) -> FaultRecord {
        let start_us = self.now_us();
        let mut rng = SeededRng::new(f.pick);
        let mut error = None;
        // A member an earlier remove-add could not add back would turn every later fault
        // into a fault on a four-member cluster, and the probe would keep asking it first.
        if let Err(e) = self.rejoin_missing() {
            error = Some(format!("before injecting: {e:#}"));
        }
        let (detail, undo) = match self.inject(f.kind, &mut rng) {
            Ok(x) => x,
            Err(e) => {
                error = Some(format!("inject: {e:#}"));
                (String::from("not injected"), Undo::Nothing)
            }
        };
        std::thread::sleep(f.hold);
        if let Err(e) = self.undo(undo) {
            let msg = format!("heal: {e:#}");
            error = Some(error.map_or(msg.clone(), |a| format!("{a}; {msg}")));
            // Whatever is left broken, repair it so the run can go on.
            if let Err(e) = self.heal_everything() {
                error = error.map(|a| format!("{a}; heal everything: {e:#}"));
            }
        }
        let healed_us = self.now_us();
        let recovery_ms = self.probe_write().ok().map(|d| d.as_millis() as u64);
        FaultRecord { seq: f.seq, kind: f.kind, detail, start_us, healed_us, recovery_ms, error }
    }

    /// Lifts every fault that can be lifted: cuts, pauses, stopped members.
    pub fn heal_everything(&self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.cluster.heal(None) {
            errors.push(format!("heal links: {e:#}"));
        }
        for n in self.cluster.nodes() {
            if let Err(e) = self.cluster.resume(n.node_id) {
                errors.push(format!("resume node {}: {e:#}", n.node_id));
            }
        }
        if let Err(e) = self.cluster.start_all() {
            errors.push(format!("start: {e:#}"));
        }
        if let Err(e) = self.rejoin_missing() {
            errors.push(format!("add back removed members: {e:#}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    /// Writes through any member (or, in an HA cluster, through the read-write conninfo)
    /// until one write succeeds; returns how long that took.
    pub fn probe_write(&self) -> Result<Duration> {
        let began = Instant::now();
        if let Some(rw) = &self.ha {
            return wait_until(
                "the primary to accept a write",
                self.recovery_bound,
                Duration::from_millis(50),
                || {
                    let mut c = connect_blocking(rw, Duration::from_secs(2), None).context("the primary")?;
                    c.execute("INSERT INTO torture_probe VALUES ($1)", &[&(self.now_us() as i64)])
                        .context("probe write")?;
                    Ok(Some(began.elapsed()))
                },
            );
        }
        let ids: Vec<u64> = self.cluster.nodes().iter().map(|n| n.node_id).collect();
        let mut turn = 0usize;
        wait_until("the cluster to accept a write", self.recovery_bound, Duration::from_millis(50), || {
            let id = ids[turn % ids.len()];
            turn += 1;
            let mut c = self.connect(id)?;
            let ok: bool = c
                .query_one(
                    "SELECT pgraft_kv_put('torture/probe', $1::text)",
                    &[&format!("{}", self.now_us())],
                )
                .with_context(|| format!("probe write on node {id}"))?
                .get(0);
            Ok(ok.then(|| began.elapsed()))
        })
    }

    fn connect(&self, id: u64) -> Result<postgres::Client> {
        let n = self.cluster.node(id)?;
        connect_blocking(&n.conninfo, Duration::from_secs(3), Some(Duration::from_secs(5)))
            .with_context(|| format!("node {id}"))
    }

    /// The leader that the members agree on in the highest term any of them reports.
    pub fn find_leader(&self) -> Result<u64> {
        wait_until("a leader", Duration::from_secs(60), Duration::from_millis(100), || {
            let mut best: Option<(i64, u64)> = None;
            for n in self.cluster.nodes() {
                let Ok(mut c) = self.connect(n.node_id) else { continue };
                let Ok(row) = c.query_one("SELECT is_leader, term FROM pgraft_shared_state()", &[]) else {
                    continue;
                };
                let (leads, term): (bool, i64) = (row.get(0), row.get(1));
                if leads && best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, n.node_id));
                }
            }
            Ok(best.map(|(_, id)| id))
        })
    }

    fn voters(&self) -> Vec<u64> {
        self.cluster.nodes().iter().map(|n| n.node_id).collect()
    }

    /// The members of the cluster's configuration, as the leader reports them.
    fn configured_members(&self) -> Result<Vec<u64>> {
        let mut members = Vec::new();
        self.on_leader("pgraft_get_nodes()", |c| {
            members = c
                .query("SELECT node_id FROM pgraft_get_nodes()", &[])?
                .iter()
                .map(|r| r.get::<_, i32>(0) as u64)
                .collect();
            Ok(())
        })?;
        Ok(members)
    }

    /// Adds back, with a wiped Raft directory, every member of the local cluster that the
    /// configuration no longer holds (a remove-add whose add step failed).
    fn rejoin_missing(&self) -> Result<()> {
        let members = self.configured_members()?;
        for id in self.voters() {
            if !members.contains(&id) {
                self.add_back(id).with_context(|| format!("add node {id} back"))?;
            }
        }
        Ok(())
    }

    fn inject(&self, kind: FaultKind, rng: &mut SeededRng) -> Result<(String, Undo)> {
        let ids = self.voters();
        let mut any = *rng.pick(&ids);
        // In an HA cluster the primary is what matters: three faults in five hit it.
        if self.ha.is_some() && rng.below(5) < 3 {
            any = self.find_leader()?;
        }
        match kind {
            FaultKind::Kill => {
                self.cluster.kill(any)?;
                Ok((format!("kill -9 the postmaster of node {any}"), Undo::Start(any)))
            }
            FaultKind::KillWorker => {
                let pid = self.cluster.kill_worker(any)?;
                Ok((format!("kill -9 the worker of node {any} (pid {pid})"), Undo::WorkerBack(any)))
            }
            FaultKind::Isolate => {
                self.cluster.partition(any)?;
                Ok((format!("isolate node {any}"), Undo::HealLinks))
            }
            FaultKind::LeaderMinority => {
                let leader = self.find_leader()?;
                let mut others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
                rng.shuffle(&mut others);
                // The largest minority that contains the leader.
                let minority_size = (ids.len() - 1) / 2;
                let mut minority = vec![leader];
                minority.extend(others.iter().take(minority_size.saturating_sub(1)));
                let majority: Vec<u64> = ids.iter().copied().filter(|i| !minority.contains(i)).collect();
                self.cut_between(&minority, &majority)?;
                Ok((
                    format!("leader {leader} in minority {minority:?} against {majority:?}"),
                    Undo::HealLinks,
                ))
            }
            FaultKind::Bridge => {
                let mut order = ids.clone();
                rng.shuffle(&mut order);
                let mid = order.len() / 2;
                let (left, bridge, right) = (&order[..mid], order[mid], &order[mid + 1..]);
                self.cut_between(left, right)?;
                Ok((
                    format!("bridge: {left:?} and {right:?} meet only through node {bridge}"),
                    Undo::HealLinks,
                ))
            }
            FaultKind::Ring => {
                let mut order = ids.clone();
                rng.shuffle(&mut order);
                let n = order.len();
                let mut cuts = Vec::new();
                for i in 0..n {
                    for j in i + 1..n {
                        let adjacent = j == i + 1 || (i == 0 && j == n - 1);
                        if !adjacent {
                            self.cluster.cut(order[i], order[j])?;
                            cuts.push((order[i], order[j]));
                        }
                    }
                }
                Ok((format!("ring {order:?} (cut {cuts:?})"), Undo::HealLinks))
            }
            FaultKind::Pause => {
                let n = self.cluster.pause(any)?;
                Ok((format!("SIGSTOP node {any} ({n} processes)"), Undo::Resume(any)))
            }
            FaultKind::Transfer => {
                let leader = self.find_leader()?;
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
                let to = *rng.pick(&others);
                let mut c = self.connect(leader)?;
                match c.query_one("SELECT pgraft_transfer_leadership($1)", &[&(to as i32)]) {
                    Ok(_) => Ok((format!("transfer leadership from {leader} to {to}"), Undo::Nothing)),
                    // In an HA cluster the switchover fences the old primary, whose fast
                    // shutdown may end this session before the function returns.
                    Err(e) if self.ha.is_some() && ended_by_server(&e) => Ok((
                        format!("switchover from {leader} to {to} (the fence ended the asking session)"),
                        Undo::Nothing,
                    )),
                    Err(e) => {
                        Err(anyhow!(e).context(format!("pgraft_transfer_leadership({to}) on node {leader}")))
                    }
                }
            }
            FaultKind::RemoveAdd => {
                // The primary's member cannot be removed (switch over first: `transfer`
                // does that): in an HA cluster a standby's member is.
                let leader = if self.ha.is_some() { self.find_leader()? } else { 0 };
                if any == leader {
                    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
                    any = *rng.pick(&others);
                }
                // A removal whose answer was lost (leader change, timeout) may still have
                // taken effect; a retry then finds the member gone, which is success.
                let mut attempts = 0;
                self.on_leader(&format!("pgraft_remove_node({any})"), |c| {
                    attempts += 1;
                    match c.query_one("SELECT pgraft_remove_node($1)", &[&(any as i32)]) {
                        Err(e) if attempts > 1 && is_not_a_member(&e) => Ok(()),
                        other => other.map(|_| ()),
                    }
                })?;
                Ok((format!("remove node {any}, wipe its Raft data, add it back"), Undo::AddBack(any)))
            }
            FaultKind::ReplIsolate => {
                self.cluster.repl_partition(any)?;
                Ok((format!("cut every replication link of node {any}"), Undo::HealLinks))
            }
            FaultKind::IsolateAll if self.broken_no_fencing => {
                let primary = self.find_leader()?;
                self.break_fencing(primary, true)?;
                self.cluster.partition(primary)?;
                self.cluster.repl_partition(primary)?;
                Ok((
                    format!("cut node {primary} off from everything, its fencing BROKEN"),
                    Undo::Repair(primary),
                ))
            }
            FaultKind::IsolateAll => {
                self.cluster.partition(any)?;
                self.cluster.repl_partition(any)?;
                Ok((format!("cut node {any} off from everything"), Undo::HealLinks))
            }
            FaultKind::FailoverToggle => {
                self.set_failover(false)?;
                Ok(("failover_enabled off".into(), Undo::FailoverOn))
            }
            FaultKind::SyncStandbyKill => {
                let primary = self.find_leader()?;
                let standbys: Vec<u64> = ids.iter().copied().filter(|i| *i != primary).collect();
                // The one left streaming is one that streams now (an earlier fault may still
                // keep another down or rejoining).
                let streaming = self.streaming_standbys(primary)?;
                let last = *rng.pick(if streaming.is_empty() { &standbys } else { &streaming });
                for s in standbys.iter().filter(|s| **s != last) {
                    self.cluster.repl_cut(primary, *s)?;
                }
                // Until the primary has noticed the others gone, `last` is not the only one.
                self.wait_streaming_only(primary, last)?;
                self.cluster.kill(last)?;
                Ok((
                    format!("primary {primary} streams to node {last} alone; kill -9 node {last}"),
                    Undo::HealAndStart(last),
                ))
            }
        }
    }

    /// `pgraft_set_config('failover_enabled', ...)` on the leader.
    fn set_failover(&self, on: bool) -> Result<()> {
        let value = if on { "true" } else { "false" };
        self.on_leader(&format!("pgraft_set_config('failover_enabled', '{value}')"), |c| {
            c.query_one("SELECT pgraft_set_config('failover_enabled', $1)", &[&value]).map(|_| ())
        })
    }

    /// The members whose standbys stream from `primary` now.
    fn streaming_standbys(&self, primary: u64) -> Result<Vec<u64>> {
        let mut c = self.connect(primary)?;
        let rows = c.query(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
            &[],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .filter_map(|name| pgraft_core::ha::member_of(&name))
            .collect())
    }

    /// Waits until no standby but `last`'s streams from `primary`.
    fn wait_streaming_only(&self, primary: u64, last: u64) -> Result<()> {
        wait_until(
            &format!("node {primary} to stream to node {last} alone"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || Ok(self.streaming_standbys(primary)?.iter().all(|s| *s == last).then_some(())),
        )
    }

    fn cut_between(&self, a: &[u64], b: &[u64]) -> Result<()> {
        for x in a {
            for y in b {
                self.cluster.cut(*x, *y)?;
            }
        }
        Ok(())
    }

    /// Runs a leader-only statement, following leadership changes until it succeeds.
    fn on_leader(
        &self,
        what: &str,
        mut f: impl FnMut(&mut postgres::Client) -> std::result::Result<(), postgres::Error>,
    ) -> Result<()> {
        wait_until(what, Duration::from_secs(60), Duration::from_millis(200), || {
            let leader = self.find_leader()?;
            let mut c = self.connect(leader)?;
            f(&mut c).with_context(|| format!("{what} on node {leader}"))?;
            Ok(Some(()))
        })
    }

    fn undo(&self, undo: Undo) -> Result<()> {
        match undo {
            Undo::Nothing => Ok(()),
            Undo::Start(id) => self.cluster.start(id),
            Undo::HealLinks => self.cluster.heal(None),
            Undo::Resume(id) => self.cluster.resume(id),
            Undo::WorkerBack(id) => self.wait_worker(id),
            Undo::AddBack(id) => self.add_back(id),
            Undo::FailoverOn => self.set_failover(true),
            Undo::Repair(id) => {
                self.cluster.heal(None)?;
                self.break_fencing(id, false)
            }
            Undo::HealAndStart(id) => {
                self.cluster.heal(None)?;
                self.cluster.start(id)
            }
        }
    }

    /// Stops a removed member, wipes its Raft data, starts it, adds it back on the leader
    /// and waits until it follows a leader.
    fn add_back(&self, id: u64) -> Result<()> {
        if self.ha.is_some() {
            // A removed member's primary is fenced, and its rejoin helper rewinds it and
            // starts it as a standby of the new primary, keeping its state beside the Raft
            // data: wait for that before the wipe, so a server that was the primary never
            // starts again as one under an empty member.
            wait_until(
                &format!("node {id}'s server to be a standby, or down, with no rejoin helper at work"),
                Duration::from_secs(400),
                Duration::from_millis(100),
                || {
                    if self.cluster.rejoining(id)? {
                        return Ok(None);
                    }
                    if self.cluster.postmaster_pid(id)?.is_none() {
                        let standby = self.cluster.node(id)?.data_dir.join("standby.signal").exists();
                        return Ok(standby.then_some(()));
                    }
                    let standby_signal = self.cluster.node(id)?.data_dir.join("standby.signal").exists();
                    let mut c = match self.connect(id) {
                        Ok(c) => c,
                        // Up in standby mode but not accepting connections: a server whose
                        // WAL went past the new primary's waits for a rewind, which its
                        // member, removed without hearing of it, will not start until it is
                        // added back (the 30-minute asynchronous run sat 400 s here).
                        Err(_) if standby_signal => return Ok(Some(())),
                        Err(e) => return Err(e),
                    };
                    let standby: bool = c.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
                    Ok(standby.then_some(()))
                },
            )
            .map_err(|e| anyhow!("{e:#}"))?;
        }
        self.cluster.stop(id)?;
        let raft = self.cluster.node(id)?.raft_data_dir.clone();
        if raft.exists() {
            std::fs::remove_dir_all(&raft).with_context(|| format!("wipe {}", raft.display()))?;
        }
        self.cluster.start(id)?;
        self.wait_worker(id)?;
        let port = i32::from(self.cluster.node(id)?.raft_port);
        let mut attempts = 0;
        self.on_leader(&format!("pgraft_add_node({id})"), |c| {
            attempts += 1;
            match c.query_one("SELECT pgraft_add_node($1, '127.0.0.1', $2)", &[&(id as i32), &port]) {
                Err(e) if attempts > 1 && is_already_a_member(&e) => Ok(()),
                other => other.map(|_| ()),
            }
        })?;
        wait_until(
            &format!("node {id} to follow a leader again"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let mut c = self.connect(id)?;
                let leader: i64 = c.query_one("SELECT leader_id FROM pgraft_shared_state()", &[])?.get(0);
                Ok((leader > 0).then_some(()))
            },
        )
    }

    fn wait_worker(&self, id: u64) -> Result<()> {
        wait_until(
            &format!("the worker of node {id} to run again"),
            // A crash restart of a primary that lost its role meanwhile is fenced, and
            // runs again once its rejoin helper has rewound it.
            Duration::from_secs(180),
            Duration::from_millis(100),
            || {
                let mut c = self.connect(id)?;
                let state: String = c.query_one("SELECT pgraft_get_worker_state()", &[])?.get(0);
                Ok((state == "running").then_some(()))
            },
        )
        .map_err(|e| anyhow!("{e:#}"))
    }
}

/// Whether the server ended the session: the fence's fast shutdown (57P01) or a closed
/// connection.
fn ended_by_server(e: &postgres::Error) -> bool {
    e.is_closed() || e.as_db_error().is_some_and(|d| d.code().code() == "57P01")
}

fn is_not_a_member(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.message().contains("is not a member"))
}

fn is_already_a_member(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.message().contains("already"))
}
