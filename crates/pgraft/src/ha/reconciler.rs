//! The failover control loop of one member: each tick of the worker's main thread it
//! observes the server (shared memory) and the member (its published status and HA state,
//! never a round trip to the Raft thread), asks `pgraft_core::ha::plan` what to do, and
//! does it: the gate, `primary_conninfo`, `synchronous_standby_names`, promotion, fencing.
//! Proposals and leadership transfers go to the session runtime, so a slow cluster never
//! holds the loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgraft_core::command::Body;
use pgraft_core::ha::{
    self, HaCommand, HaState, Observation, Plan, RaftView, Receiving, ServerRecord, ServerView, SyncMode,
};
use pgraft_core::{MemberStatus, NodeHandle, Request, Role};

use super::connection_probe::{self, ConnectionProbe};
use super::server_probe::{self, ServerFacts};
use super::{auto_conf, rejoin};
use crate::gucs;
use crate::shmem::{self, GateState, SlotList};

/// How long an HA proposal may wait for the cluster.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time between two leadership transfers.
const TRANSFER_PAUSE: Duration = Duration::from_secs(2);
/// What the slot keeper last saw counts only this long (it looks every second).
const SLOTS_SEEN_FRESH_MS: i64 = 10_000;

/// How long no standby must have streamed, since one last did or since this server was a
/// standby itself, before `synchronous_mode = on` counts them gone. Right after a
/// promotion the standbys are still reconnecting (a WAL receiver retries every
/// `wal_retrieve_retry_interval`, 5 s): counted gone at once, `on` recorded `k = 0`, and a
/// primary lost in those seconds could not be replaced by anyone (t18 caught it).
const NO_STANDBY_GRACE_MS: i64 = 6_000;
/// The least time between two writes of the same settings (a reload takes a moment to
/// reach every process).
const REWRITE_PAUSE: Duration = Duration::from_millis(500);
/// How often a standby looks for a newer timeline it cannot follow (a stat of one or two
/// files): soon after its WAL receiver fetched the history file, because a crash in
/// between leaves a server PostgreSQL refuses to start.
const DIVERGENCE_CHECK: Duration = Duration::from_millis(200);
/// The least time between two rejoin helpers started for a standby that runs.
const STANDBY_RESPAWN: Duration = Duration::from_secs(30);
/// How long a standby's position must stand still while the primary lacks the WAL it
/// needs (see `pgraft_core::ha::wal_gone`) before it is re-cloned: several times the
/// primary's publishing pause, so that a slot's position on record is current.
const WAL_GONE_AFTER: Duration = Duration::from_secs(20);

/// The control loop's memory between ticks.
pub struct Reconciler {
    pgdata: PathBuf,
    raft_dir: PathBuf,
    /// Whether the HA proposal in flight, if any, has finished.
    in_flight: Option<Arc<AtomicBool>>,
    leader_since: Option<(u64, Instant)>,
    last_transfer: Option<Instant>,
    last_write: Option<(Vec<(String, String)>, Instant)>,
    promoted_in_term: Option<u64>,
    /// The replayed position last seen and since when (ms) it has stood there.
    replay_seen: Option<(ha::Lsn, i64)>,
    fenced: bool,
    last_waiting: Option<String>,
    /// When this member last proposed its slots.
    slots_published: Option<Instant>,
    /// The connection probe of the server's health.
    connection: ConnectionProbe,
    last_health: Option<String>,
    /// `synchronous_standby_names` as last seen, and since when.
    sync_seen: Option<(String, i64, Option<ha::Lsn>)>,
    /// When a standby was last seen streaming from this server, or this server was last
    /// not a primary (ms since the Unix epoch).
    standby_seen_ms: i64,
    /// When this standby last looked for a timeline it cannot follow.
    divergence_checked: Option<Instant>,
    /// When a rejoin helper was last started for this standby while it runs.
    standby_rejoin: Option<Instant>,
    /// The position this standby held when the primary was first seen to lack the WAL
    /// after it, and since when.
    wal_gone_since: Option<(ha::Lsn, Instant)>,
    /// Promotions carried out.
    promotions: u64,
    /// The kind of the HA command proposed last.
    last_proposed: Option<&'static str>,
    /// The server as the last pass observed it.
    last_facts: Option<ServerFacts>,
    /// The switchover (its request time) for which the slot keeper was woken.
    keeper_woken_for: Option<i64>,
}

impl Reconciler {
    /// A loop for the server in `pgdata`.
    pub fn new(pgdata: PathBuf, raft_dir: PathBuf) -> Self {
        Reconciler {
            pgdata,
            raft_dir,
            in_flight: None,
            leader_since: None,
            last_transfer: None,
            last_write: None,
            promoted_in_term: None,
            replay_seen: None,
            fenced: false,
            last_waiting: None,
            slots_published: None,
            connection: ConnectionProbe::default(),
            last_health: None,
            sync_seen: None,
            standby_seen_ms: crate::worker::now_ms(),
            divergence_checked: None,
            standby_rejoin: None,
            wal_gone_since: None,
            promotions: 0,
            last_proposed: None,
            last_facts: None,
            keeper_woken_for: None,
        }
    }

    /// One pass. `rt` runs proposals.
    pub fn tick(&mut self, node: &NodeHandle, status: &MemberStatus, rt: &tokio::runtime::Runtime) {
        let Some(view) = node.ha_view() else { return };
        let failover = gucs::effective_failover(&view.config);
        let facts = server_probe::observe();
        let now_ms = crate::worker::now_ms();
        // One copy of the shared facts for the whole pass (the keeper's counts, probes
        // and slots), so the pass decides on one consistent reading.
        let shared = shmem::read();
        // Judged in every cluster: the HTTP endpoints report it too.
        let health = self.health(&facts, &shared, now_ms, rt);
        self.last_facts = Some(facts.clone());
        if !failover && view.ha.primary.is_none() {
            // Not an HA cluster (yet): nothing to guard.
            set_gate(GateState::Open);
            node.hold_campaigns(false);
            return;
        }
        // A member whose server cannot serve lets the others win elections (it still
        // votes); paused failover changes nothing about who leads.
        node.hold_campaigns(failover && health.is_some());
        if facts.is_starting_primary() {
            // A primary replaying after a crash: not open yet, and not a standby.
            set_gate(GateState::Unknown);
            return;
        }
        let election_timeout_ms = gucs::effective_timing(&view.config).election_timeout_ms;
        let raft = self.raft_view(status, election_timeout_ms);
        let sync = SyncMode::parse(&gucs::string(&gucs::SYNCHRONOUS_MODE)).unwrap_or(SyncMode::On);
        let mut server = server_view(&facts, &view.ha, status.id);
        server.promoting = facts.in_recovery && self.promoted_in_term.is_some();
        server.stood_down = self.stood_down(facts.in_recovery);
        server.sync_in_use = self.sync_in_use(now_ms, server.replayed);
        match self.replay_seen {
            Some((lsn, since)) if lsn == server.replayed => {
                server.replay_still_ms = u64::try_from(now_ms - since).unwrap_or(0);
            }
            _ => self.replay_seen = Some((server.replayed, now_ms)),
        }
        let max_lag = gucs::MAXIMUM_LAG_ON_FAILOVER.get().max(0) as u64 * 1024;
        let seen = shared.standbys.written_ms;
        if let Some(sw) = view.ha.switchover.as_ref().filter(|sw| sw.from == status.id && seen < sw.time_ms) {
            self.wake_keeper(sw.time_ms, shared.keeper_pid);
        }
        let streaming: Option<Vec<u64>> = (seen > 0 && now_ms - seen < SLOTS_SEEN_FRESH_MS).then(|| {
            shared.standbys.rows().iter().filter(|r| r.state() == "streaming").map(|r| r.member).collect()
        });
        if facts.in_recovery || streaming.as_ref().is_some_and(|s| !s.is_empty()) {
            self.standby_seen_ms = now_ms;
        }
        // None streaming, but not for long: not known yet rather than gone.
        let streaming =
            streaming.filter(|s| !s.is_empty() || now_ms - self.standby_seen_ms >= NO_STANDBY_GRACE_MS);
        let flushed = shared.standbys.rows().iter().map(|r| (r.member, r.flushed)).collect();
        let o = Observation {
            ha: &view.ha,
            failover,
            sync,
            raft,
            server,
            now_ms,
            health,
            max_lag,
            streaming,
            streaming_ms: seen,
            flushed,
        };
        let mut plan = ha::plan(&o);
        if let Some(publish) = self.keep_slots(&o, &shared) {
            plan.propose.push(publish);
        }
        self.carry_out(&plan, &o, node, rt);
        if failover && !o.server.promoting {
            self.rewind_if_diverged(&facts, &o);
            self.reclone_if_wal_gone(&o);
        }
    }

    /// A standby that replayed WAL the newest timeline does not hold (see
    /// `pgraft_core::ha::divergence`) can never follow the primary: it gets the rejoin
    /// helper, which stops it once the Raft majority can spare its member and rewinds it.
    /// Caught here, while the server runs: once restarted, PostgreSQL would refuse to
    /// start it at all, and with no postmaster there is no worker to start a helper.
    fn rewind_if_diverged(&mut self, facts: &ServerFacts, o: &Observation<'_>) {
        if !facts.in_recovery || facts.crash_recovery {
            return;
        }
        if self.divergence_checked.is_some_and(|t| t.elapsed() < DIVERGENCE_CHECK) {
            return;
        }
        self.divergence_checked = Some(Instant::now());
        let Some(why) = divergence(&self.pgdata, facts.replay_timeline, facts.replayed) else { return };
        if self.may_start_standby_rejoin() {
            log::warn!(
                "failover: this standby cannot follow the primary: {why}; starting the rejoin helper to rewind it"
            );
            self.standby_rejoin = Some(Instant::now());
            self.start_rejoin(o, Some(why), false);
        }
    }

    /// A standby whose WAL the primary no longer keeps (see `pgraft_core::ha::wal_gone`),
    /// and whose position has stood still for [`WAL_GONE_AFTER`], gets the rejoin helper,
    /// which re-clones it once the Raft majority can spare its member.
    fn reclone_if_wal_gone(&mut self, o: &Observation<'_>) {
        // SAFETY: set by the postmaster at start, read-only afterwards.
        let segment = u64::try_from(unsafe { pgrx::pg_sys::wal_segment_size }).unwrap_or(0);
        let Some(why) = ha::wal_gone(o, segment) else {
            self.wal_gone_since = None;
            return;
        };
        let have = o.server.held();
        match self.wal_gone_since {
            Some((at, since)) if at == have && since.elapsed() >= WAL_GONE_AFTER => {}
            Some((at, _)) if at == have => return,
            _ => {
                if self.wal_gone_since.is_none() {
                    log::info!(
                        "failover: {why}; re-cloning this standby unless its position moves within {} s",
                        WAL_GONE_AFTER.as_secs()
                    );
                }
                self.wal_gone_since = Some((have, Instant::now()));
                return;
            }
        }
        if self.may_start_standby_rejoin() {
            log::warn!("failover: this standby cannot get the WAL it needs: {why}; starting the rejoin helper to re-clone it");
            self.standby_rejoin = Some(Instant::now());
            self.start_rejoin(o, Some(why), true);
        }
    }

    /// Asks the slot keeper for a pass now (once per switchover request): a switchover
    /// waits for a reading of the standbys taken after it was asked for, which would
    /// otherwise come within the keeper's second.
    fn wake_keeper(&mut self, request_ms: i64, pid: i32) {
        if pid <= 0 || self.keeper_woken_for == Some(request_ms) {
            return;
        }
        self.keeper_woken_for = Some(request_ms);
        // A keeper that exited leaves its pid behind, and the pid may be another process's
        // by now: signal it only while its title says it is the keeper.
        let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&title).contains(super::slot_keeper::TITLE) {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            log::debug!("failover: could not wake the slot keeper (pid {pid})");
        }
    }

    /// No helper runs for this member, and none was started for its running standby lately.
    fn may_start_standby_rejoin(&self) -> bool {
        self.standby_rejoin.is_none_or(|t| t.elapsed() >= STANDBY_RESPAWN)
            && !rejoin::helper_running(&self.raft_dir)
    }

    /// Why the server cannot serve, if it cannot: recovering from a crash, a standby not
    /// consistent yet, or a probe (a new connection; a commit on a primary) waiting past
    /// `pgraft.health_check_timeout`.
    fn health(
        &mut self,
        facts: &ServerFacts,
        shared: &shmem::WorkerShared,
        now_ms: i64,
        rt: &tokio::runtime::Runtime,
    ) -> Option<String> {
        let bound = gucs::HEALTH_CHECK_TIMEOUT.get().max(0) as u64;
        let problem = if facts.is_starting_primary() {
            Some("the server is replaying WAL after a crash".to_string())
        } else if facts.is_inconsistent_standby() {
            Some("the standby has not reached a consistent state (it cannot open or be promoted)".to_string())
        } else if bound == 0 {
            None
        } else {
            let target = connection_probe::target(&gucs::string(&gucs::ADDRESS), facts.port);
            self.connection.maybe_start(target, now_ms, rt);
            let commit = ha::Probe {
                ok_ms: (shared.commit_ok_ms > 0).then_some(shared.commit_ok_ms),
                pending_since_ms: (shared.commit_pending_since_ms > 0)
                    .then_some(shared.commit_pending_since_ms),
            };
            ha::judge_health(now_ms, bound, facts.in_recovery, self.connection.state(), commit)
        };
        if problem.is_some() != self.last_health.is_some() {
            match &problem {
                Some(why) => log::warn!("failover: this server cannot serve: {why}"),
                None => log::warn!("failover: this server serves again"),
            }
        }
        self.last_health = problem.clone();
        problem
    }

    fn raft_view(&mut self, st: &MemberStatus, election_timeout_ms: u64) -> RaftView {
        let leader = st.role == Role::Leader;
        if !leader {
            self.leader_since = None;
        } else if self.leader_since.is_none_or(|(t, _)| t != st.term) {
            self.leader_since = Some((st.term, Instant::now()));
        }
        RaftView {
            me: st.id,
            leader,
            term: st.term,
            leader_id: st.leader_id,
            voters: st.voters.clone(),
            removed: !st.voters.is_empty() && !st.voters.contains(&st.id) && !st.learners.contains(&st.id),
            lease: lease(st, election_timeout_ms, crate::worker::now_ms()),
            led_ms: self.leader_since.map_or(0, |(_, at)| at.elapsed().as_millis() as u64),
            election_timeout_ms,
        }
    }

    /// The server as the last pass observed it (None before the first).
    pub fn last_facts(&self) -> Option<&ServerFacts> {
        self.last_facts.as_ref()
    }

    /// Why this server could not serve at the last pass, if it could not.
    pub fn last_health(&self) -> Option<&str> {
        self.last_health.as_deref()
    }

    /// Promotions this loop carried out since the worker started.
    pub fn promotions(&self) -> u64 {
        self.promotions
    }

    fn carry_out(
        &mut self,
        plan: &Plan,
        o: &Observation<'_>,
        node: &NodeHandle,
        rt: &tokio::runtime::Runtime,
    ) {
        set_gate(plan.gate.into());
        if plan.waiting != self.last_waiting {
            if let Some(w) = &plan.waiting {
                log::info!("failover: {w}");
            }
            let note = shmem::ErrorText::new(plan.waiting.as_deref().unwrap_or(""));
            shmem::update(|s| s.ha_note = note);
            self.last_waiting = plan.waiting.clone();
        }
        if let Some(why) = &plan.fence {
            self.fence(why, o);
            return;
        }
        let mut settings: Vec<(&str, String)> = Vec::new();
        if let Some(upstream) = plan.upstream {
            let slot = upstream.and_then(|n| ha::slot_on(o, n, o.raft.me)).unwrap_or_default();
            if o.server.in_recovery && !self.streams_from(o.ha, upstream, &slot) {
                let conninfo = upstream.and_then(|n| conninfo_for(o.ha, n, o.raft.me)).unwrap_or_default();
                settings.push(("primary_conninfo", conninfo));
                // Through its slot where the upstream holds one (see `pgraft_core::ha::slots`).
                settings.push(("primary_slot_name", slot));
            }
        }
        if let Some(names) = &plan.sync_names {
            settings.push(("synchronous_standby_names", names.clone()));
        }
        self.write_settings(&settings);
        if plan.promote && self.promoted_in_term != Some(o.raft.term) {
            let rec = o.ha.primary.as_ref();
            log::warn!(
                "failover: promoting this server: node {} is primary from term {} (timeline {}, {})",
                o.raft.me,
                o.raft.term,
                rec.map_or(0, |r| r.timeline),
                rec.map_or("", |r| r.reason.as_str())
            );
            match auto_conf::promote(&self.pgdata) {
                Ok(()) => {
                    self.promoted_in_term = Some(o.raft.term);
                    self.promotions += 1;
                }
                Err(e) => log::warn!("failover: promotion failed: {e}"),
            }
        }
        if let Some(to) = plan.transfer {
            if self.last_transfer.is_none_or(|t| t.elapsed() >= TRANSFER_PAUSE) {
                self.last_transfer = Some(Instant::now());
                log::info!("failover: handing Raft leadership to node {to}");
                let node = node.clone();
                rt.spawn(async move {
                    if let Err(e) = node.call(Request::TransferLeader { to }, PROPOSAL_TIMEOUT).await {
                        log::info!("failover: leadership transfer to node {to}: {e}");
                    }
                });
            }
        }
        self.propose(plan, node, rt);
    }

    /// Hands the slot keeper its plan (see [`super::slot_keeper`]); returns the `ha_slots`
    /// entry to propose, if what the keeper holds should be published.
    fn keep_slots(&mut self, o: &Observation<'_>, shared: &shmem::WorkerShared) -> Option<HaCommand> {
        let held = shared.slots_held;
        let fresh = held.valid && o.now_ms - held.written_ms < SLOTS_SEEN_FRESH_MS;
        let since = self.slots_published.map_or(u64::MAX, |t| t.elapsed().as_millis() as u64);
        let plan = ha::plan_slots(o, fresh.then(|| held.entries()).as_ref(), since);
        let wanted = plan.as_ref().map(|p| p.wanted.clone());
        if wanted.as_ref() != shared.slots_wanted.valid.then(|| shared.slots_wanted.entries()).as_ref() {
            let list = wanted.map_or_else(SlotList::default, |w| SlotList::new(&w, o.now_ms));
            shmem::update(|s| s.slots_wanted = list);
        }
        plan.and_then(|p| p.publish)
    }

    /// The configuration of `synchronous_standby_names` as this process last loaded it,
    /// since when it has been that, and the server's flushed position (`flushed`, on a
    /// primary) once it had been that for [`ha::RAISE_AFTER_MS`] (`None`: a list not of
    /// the form the worker writes).
    fn sync_in_use(&mut self, now_ms: i64, flushed: ha::Lsn) -> Option<ha::InUse> {
        // SAFETY: a GUC string of this process, read on its main thread.
        let text = unsafe { gucs::c_string(pgrx::pg_sys::SyncRepStandbyNames) };
        let cfg = ha::SyncConfig::parse(&text);
        match self.sync_seen.as_mut() {
            Some((t, since, settled)) if *t == text => {
                if settled.is_none() && now_ms - *since >= ha::RAISE_AFTER_MS {
                    *settled = Some(flushed);
                }
            }
            _ => self.sync_seen = Some((text, now_ms, None)),
        }
        let (_, since_ms, settled_at) = self.sync_seen.as_ref()?;
        cfg.map(|cfg| ha::InUse { cfg, since_ms: *since_ms, settled_at: *settled_at })
    }

    /// The rejoin helper's record that it started this server as a standby after a clean
    /// shutdown as a primary (see [`rejoin::STOOD_DOWN`]); removed once the server is a
    /// primary again, so it never outlives the start it describes.
    fn stood_down(&self, in_recovery: bool) -> Option<(u32, ha::Lsn)> {
        let path = self.raft_dir.join(rejoin::STOOD_DOWN);
        if !in_recovery {
            if path.exists() {
                if let Err(e) = std::fs::remove_file(&path) {
                    log::warn!("failover: could not remove {}: {e}", path.display());
                }
            }
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let parsed = rejoin::parse_stood_down(&text);
        if parsed.is_none() {
            log::warn!("failover: ignoring {}: cannot read {text:?}", path.display());
        }
        parsed
    }

    /// Whether `primary_conninfo` already names `upstream`'s server (or none for `None`),
    /// through `slot`; other keywords are left as they are.
    fn streams_from(&self, ha: &HaState, upstream: Option<u64>, slot: &str) -> bool {
        let text = std::fs::read_to_string(self.pgdata.join(auto_conf::AUTO_CONF)).unwrap_or_default();
        let current = auto_conf::get(&text, "primary_conninfo").unwrap_or_default();
        // Until the upstream's slots are on record, the slot set (by the clone, or before)
        // stays.
        let slots_known = upstream.is_some_and(|n| ha.slots.contains_key(&n));
        if slots_known && auto_conf::get(&text, "primary_slot_name").unwrap_or_default() != slot {
            return false;
        }
        match upstream {
            None => current.trim().is_empty(),
            Some(n) => {
                let Some(s) = ha.servers.get(&n) else { return true };
                let (host, port) = dial(s);
                server_probe::host_port(&current) == (Some(host), Some(port))
            }
        }
    }

    /// Shuts a primary that must not take writes down, once.
    fn fence(&mut self, why: &str, o: &Observation<'_>) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        log::warn!(
            "failover: fencing this primary (fast shutdown; it starts again only as a standby): {why}"
        );
        // Point it at the leader's server, so a start streams from there when it can.
        let leader =
            o.ha.primary
                .as_ref()
                .map(|p| p.node)
                .filter(|n| *n != o.raft.me)
                .or((o.raft.leader_id != 0 && o.raft.leader_id != o.raft.me).then_some(o.raft.leader_id));
        if let Some((n, conninfo)) = leader.and_then(|n| conninfo_for(o.ha, n, o.raft.me).map(|c| (n, c))) {
            let slot = ha::slot_on(o, n, o.raft.me).unwrap_or_default();
            if let Err(e) =
                auto_conf::set(&self.pgdata, &[("primary_conninfo", &conninfo), ("primary_slot_name", &slot)])
            {
                log::warn!("failover: could not point the fenced server at node {leader:?}: {e}");
            }
        }
        self.start_rejoin(o, None, false);
        if let Err(e) = auto_conf::shut_down_as_standby(&self.pgdata) {
            // The gate still refuses every client session.
            log::warn!("failover: could not shut the fenced server down: {e}");
            self.fenced = false;
        }
    }

    /// Starts the helper that rewinds (or, with `reclone`, re-clones) the server and starts
    /// it again as a standby (see [`super::rejoin`]): once it has stopped (a fenced
    /// primary), or after stopping it itself (a standby with the `problem` given).
    fn start_rejoin(&self, o: &Observation<'_>, problem: Option<String>, reclone: bool) {
        if self.raft_dir.starts_with(&self.pgdata) {
            log::warn!(
                "failover: this server will not rejoin by itself: pgraft.data_dir ({}) is inside the data directory, \
                 which pg_rewind and pg_basebackup overwrite; rewind it by hand and start it as a standby",
                self.raft_dir.display()
            );
            return;
        }
        let Some(bindir) = rejoin::bindir() else {
            log::warn!("failover: this server will not rejoin by itself: the postgres program's directory is unknown");
            return;
        };
        let extra = gucs::string(&gucs::REPLICATION_CONNINFO);
        let sources: Vec<String> = o
            .ha
            .servers
            .iter()
            .filter(|(n, _)| **n != o.raft.me)
            .map(|(_, s)| {
                let (host, port) = dial(s);
                let c = format!(
                    "host={host} port={port} dbname=postgres target_session_attrs=read-write connect_timeout=3 {}",
                    extra.trim()
                );
                c.trim().to_string()
            })
            .collect();
        if sources.is_empty() {
            return;
        }
        let r = rejoin::Rejoin {
            node: o.raft.me,
            standby_after_s: rejoin::standby_after_s(o.raft.election_timeout_ms),
            pgdata: self.pgdata.clone(),
            raft_dir: self.raft_dir.clone(),
            bindir,
            // SAFETY: set by the postmaster before any worker starts.
            postmaster_pid: unsafe { pgrx::pg_sys::PostmasterPid },
            server_log: rejoin::server_log().unwrap_or_else(|| self.raft_dir.join("server.log")),
            sources,
            local_extra: extra.trim().to_string(),
            start_command: gucs::string(&gucs::SERVER_START_COMMAND).trim().to_string(),
            stop_command: gucs::string(&gucs::SERVER_STOP_COMMAND).trim().to_string(),
            problem,
            reclone,
        };
        match r.spawn() {
            Ok(()) => log::warn!(
                "failover: started the rejoin helper ({}); its steps are in {}",
                self.raft_dir.join(rejoin::SCRIPT).display(),
                self.raft_dir.join(rejoin::STATE).display()
            ),
            Err(e) => log::warn!("failover: could not start the rejoin helper: {e}"),
        }
    }

    fn write_settings(&mut self, settings: &[(&str, String)]) {
        if settings.is_empty() {
            return;
        }
        let owned: Vec<(String, String)> = settings.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        if self.last_write.as_ref().is_some_and(|(w, at)| *w == owned && at.elapsed() < REWRITE_PAUSE) {
            return;
        }
        let pairs: Vec<(&str, &str)> = settings.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match auto_conf::set(&self.pgdata, &pairs) {
            Ok(true) => {
                log::info!(
                    "failover: set {}",
                    pairs.iter().map(|(n, v)| format!("{n} = '{v}'")).collect::<Vec<_>>().join(", ")
                );
                if let Err(e) = auto_conf::reload() {
                    log::warn!("failover: reload after changing settings: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("failover: could not write {}: {e}", auto_conf::AUTO_CONF),
        }
        self.last_write = Some((owned, Instant::now()));
    }

    fn propose(&mut self, plan: &Plan, node: &NodeHandle, rt: &tokio::runtime::Runtime) {
        if self.in_flight.as_ref().is_some_and(|done| !done.load(Ordering::Acquire)) {
            return;
        }
        self.in_flight = None;
        // One at a time. A primary decision goes first; otherwise a kind other than the one
        // proposed last, so that a command the plan keeps asking for (a health note, a sync
        // record) never starves the others (a slot publish a standby's re-clone waits for).
        let Some(cmd) = plan
            .propose
            .iter()
            .find(|c| matches!(c, HaCommand::Primary(_)))
            .or_else(|| plan.propose.iter().find(|c| Some(c.name()) != self.last_proposed))
            .or(plan.propose.first())
            .cloned()
        else {
            return;
        };
        self.last_proposed = Some(cmd.name());
        let done = Arc::new(AtomicBool::new(false));
        self.in_flight = Some(Arc::clone(&done));
        if matches!(cmd, HaCommand::Slots { .. }) {
            self.slots_published = Some(Instant::now());
        }
        let req = match &cmd {
            // Only the leader of the decision's term may get it into the log.
            HaCommand::Primary(rec) => Request::ProposeInTerm { term: rec.term, body: Body::Ha(cmd.clone()) },
            _ => Request::Propose(Body::Ha(cmd.clone())),
        };
        if let HaCommand::Primary(rec) = &cmd {
            log::warn!(
                "failover: proposing node {} as primary from term {} ({})",
                rec.node,
                rec.term,
                rec.reason
            );
        }
        let node = node.clone();
        rt.spawn(async move {
            match node.call(req, PROPOSAL_TIMEOUT).await {
                Ok(pgraft_core::Response::Applied {
                    outcome: pgraft_core::state_machine::Outcome::Ha(Some(why)),
                    ..
                }) => {
                    log::info!("failover: {} refused: {why}", cmd.name())
                }
                Ok(_) => {}
                Err(e) => log::info!("failover: proposing {}: {e}", cmd.name()),
            }
            done.store(true, Ordering::Release);
        });
    }
}

fn set_gate(gate: GateState) {
    if shmem::read().gate != gate {
        shmem::update(|s| {
            s.gate = gate;
            s.was_open |= gate == GateState::Open;
        });
    }
}

/// When the lease of a leader ends: the moment fewer than a majority of voters will have
/// been heard from within the election timeout, by this thread's clock, from what the Raft
/// thread last published (`None`: not a leader, or no majority heard at all). A Raft
/// thread that stopped publishing stops renewing it. With `closed_links_end_it`, a peer
/// whose connection to this member ended after it was last heard from does not count: it
/// has taken that as the end of this leader's lease and may vote for another at once (see
/// `Member::peer_closed`); the HTTP endpoints judge `/primary` so, while fencing keeps to
/// the election timeout, so that a short break of the links does not shut the primary down.
pub fn lease_until(
    st: &MemberStatus,
    election_timeout_ms: u64,
    now_ms: i64,
    closed_links_end_it: bool,
) -> Option<i64> {
    if st.role != Role::Leader {
        return None;
    }
    let mut heard: Vec<i64> = st
        .voters
        .iter()
        .filter_map(|v| {
            if *v == st.id {
                return Some(now_ms);
            }
            let t = *st.last_heard_ms.get(v)?;
            let closed = closed_links_end_it && st.links_closed_ms.get(v).is_some_and(|c| *c >= t);
            (!closed).then_some(t)
        })
        .collect();
    heard.sort_unstable_by(|a, b| b.cmp(a));
    let majority = st.voters.len() / 2 + 1;
    heard.get(majority - 1).map(|t| t + election_timeout_ms as i64)
}

/// Whether a leader holds its lease now (see [`lease_until`]).
pub fn lease(st: &MemberStatus, election_timeout_ms: u64, now_ms: i64) -> bool {
    lease_until(st, election_timeout_ms, now_ms, false).is_some_and(|until| until >= now_ms)
}

fn server_view(f: &ServerFacts, ha: &HaState, me: u64) -> ServerView {
    let receiving = if !f.in_recovery || !f.receiver_active {
        Receiving::Nothing
    } else {
        let (host, port) = server_probe::host_port(&f.receiver_conninfo);
        ha.servers
            .iter()
            .filter(|(n, _)| **n != me)
            .find(|(_, s)| {
                let (h, p) = dial(s);
                Some(p) == port && host.as_deref() == Some(h.as_str())
            })
            .map_or(Receiving::Unknown, |(n, _)| Receiving::From(*n))
    };
    ServerView {
        in_recovery: f.in_recovery,
        timeline: f.timeline,
        received: f.received,
        replayed: f.replayed,
        replay_still_ms: 0,
        receiving,
        opened: shmem::read().was_open,
        promoting: false,
        stood_down: None,
        sync_in_use: None,
        record: ServerRecord {
            host: gucs::string(&gucs::ADDRESS),
            port: f.port,
            system_id: f.system_id,
            primary: !f.in_recovery,
        },
    }
}

/// Why a standby replaying `timeline` up to `replayed` cannot follow the newest timeline
/// whose history file is in `pg_wal` (found as PostgreSQL finds it: the next timeline's
/// file, then the next, until one is missing), or `None` if it can or there is none.
fn divergence(pgdata: &std::path::Path, timeline: u32, replayed: ha::Lsn) -> Option<String> {
    let wal = pgdata.join("pg_wal");
    let mut newest = None;
    let mut probe = timeline;
    while let Some(next) = probe.checked_add(1) {
        if !wal.join(ha::history_file_name(next)).exists() {
            break;
        }
        newest = Some(next);
        probe = next;
    }
    let newest = newest?;
    let path = wal.join(ha::history_file_name(newest));
    let history =
        match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| ha::parse_history(&t)) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("failover: cannot read {}: {e}", path.display());
                return None;
            }
        };
    ha::divergence(&history, newest, timeline, replayed)
}

/// Where this member's standby dials `s`.
fn dial(s: &ServerRecord) -> (String, u16) {
    match gucs::string(&gucs::REPLICATION_HOST) {
        h if h.is_empty() => (s.host.clone(), s.port),
        h => (h, s.port),
    }
}

/// The `primary_conninfo` that streams from member `node`'s server.
fn conninfo_for(ha: &HaState, node: u64, me: u64) -> Option<String> {
    let s = ha.servers.get(&node)?;
    let (host, port) = dial(s);
    let extra = gucs::string(&gucs::REPLICATION_CONNINFO);
    let mut c = format!("host={host} port={port} application_name={}", ha::application_name(me));
    if !extra.trim().is_empty() {
        c.push(' ');
        c.push_str(extra.trim());
    }
    Some(c)
}
