//! What one member does about its PostgreSQL server, decided from the replicated HA state
//! and what it observes: a pure function, so every rule of failover is tested here without
//! a server, and the worker only carries the plan out.
//!
//! ```text
//!  leader's server          recorded primary      plan
//!  ───────────────────────  ────────────────────  ──────────────────────────────────────
//!  primary, lease held      none                  record it (bootstrap)
//!  primary, lease held      itself                open for writes; manage sync standbys
//!  primary, not leader      itself or another     fence: refuse connections, shut down
//!  standby                  P, P leads            stream from P
//!  standby                  P, Q ≠ P leads        detach from P (stream from Q), report
//!  standby, leads           P ≠ itself            once enough reports: the most advanced
//!                                                 gets leadership, or record itself and
//!                                                 promote after replaying what it has
//! ```
//!
//! Safety in synchronous mode comes from the reports: the primary's commits need the
//! acknowledgement of `k = floor(n/2)` of its `n - 1` standbys, so once `ceil(n/2)`
//! standbys have detached (a set that meets every acknowledging set) the old primary can
//! no longer get a commit acknowledged, and the most advanced of them holds every commit
//! it did acknowledge. In asynchronous mode the candidate also waits out the fencing bound
//! ([`fencing_bound_ms`]) so a cut-off primary has shut itself down first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::candidate;
#[cfg(test)]
use super::ha_state::SwitchoverRecord;
use super::ha_state::{DetachReport, HaCommand, HaState, Lsn, PrimaryRecord, ServerRecord};
use super::sync_set::{self, SyncConfig};

/// `pgraft.synchronous_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMode {
    /// Asynchronous replication: a failover may lose what the standbys had not received.
    Off,
    /// The primary waits for `floor(n/2)` standbys (a majority with itself).
    On,
    /// As `On`; never falls back to asynchronous commits.
    Strict,
}

impl SyncMode {
    /// Parses the setting.
    pub fn parse(s: &str) -> Option<SyncMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "0" => Some(SyncMode::Off),
            "on" | "true" | "1" => Some(SyncMode::On),
            "strict" => Some(SyncMode::Strict),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Strict => "strict",
        }
    }
}

/// Which server a standby's WAL receiver is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiving {
    /// No connection (no WAL receiver, or one waiting for a new start).
    Nothing,
    /// The server of this member.
    From(u64),
    /// A connection to a server not identified (it might be the primary).
    Unknown,
}

/// The local PostgreSQL server, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// In recovery (a standby).
    pub in_recovery: bool,
    /// Its timeline (the insert timeline of a primary, the replay timeline of a standby).
    pub timeline: u32,
    /// A standby's last received and flushed position (0: nothing received since start).
    pub received: Lsn,
    /// A standby's last replayed position; a primary's flushed position.
    pub replayed: Lsn,
    /// How long `replayed` has stood still, in ms (0 while it moves or is not known).
    pub replay_still_ms: u64,
    /// What its WAL receiver is connected to.
    pub receiving: Receiving,
    /// Clients may hold sessions from an earlier open gate (since the server last started).
    pub opened: bool,
    /// A promotion was asked for since the server started and it is still in recovery.
    pub promoting: bool,
    /// The configuration its `synchronous_standby_names` has had since when (ms since the
    /// Unix epoch), as this process last loaded it (`None`: not a list the worker writes).
    pub sync_in_use: Option<InUse>,
    /// This server was a primary, shut down cleanly (fenced), and was started again as a
    /// standby by the rejoin helper while no other server was the primary: the (timeline,
    /// LSN) of its shutdown checkpoint, which every commit it ever acknowledged precedes.
    pub stood_down: Option<(u32, Lsn)>,
    /// The record it registers.
    pub record: ServerRecord,
}

impl ServerView {
    /// The end of the WAL the server holds: what it received or replayed, whichever is
    /// further.
    pub fn held(&self) -> Lsn {
        self.received.max(self.replayed)
    }
}

/// A synchronous configuration a primary uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// The configuration.
    pub cfg: SyncConfig,
    /// Since when this process has used it, ms since the Unix epoch.
    pub since_ms: i64,
    /// The server's flushed position once every process had used it for
    /// `RAISE_AFTER_MS` (`None`: not yet): a commit acknowledged under the
    /// configuration before lies below it.
    pub settled_at: Option<Lsn>,
}

/// This member's Raft view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftView {
    /// This member.
    pub me: u64,
    /// Whether it leads.
    pub leader: bool,
    /// Current term.
    pub term: u64,
    /// The known leader (0: none).
    pub leader_id: u64,
    /// The voters.
    pub voters: Vec<u64>,
    /// This member applied a configuration without it: it was removed from the cluster and
    /// learns nothing more until it is added back.
    pub removed: bool,
    /// A leader that heard from a majority within the election timeout.
    pub lease: bool,
    /// How long it has led in this term, ms.
    pub led_ms: u64,
    /// The election timeout, ms.
    pub election_timeout_ms: u64,
}

/// Everything a plan is made from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The replicated HA state.
    pub ha: &'a HaState,
    /// Whether automatic failover may act (`failover_enabled`).
    pub failover: bool,
    /// Synchronous replication.
    pub sync: SyncMode,
    /// Raft.
    pub raft: RaftView,
    /// The server.
    pub server: ServerView,
    /// Now, ms since the Unix epoch.
    pub now_ms: i64,
    /// Why this member's server cannot serve, if it cannot (see `health.rs`).
    pub health: Option<String>,
    /// `pgraft.maximum_lag_on_failover` in bytes (0: no limit): in asynchronous mode, no
    /// server further behind the primary's last published position is promoted.
    pub max_lag: u64,
    /// On a primary: the members whose standbys stream from it (`None`: not known lately),
    /// as read at `streaming_ms` (ms since the Unix epoch).
    pub streaming: Option<Vec<u64>>,
    pub streaming_ms: i64,
    /// On a primary: how far each member's standby has flushed, as last read.
    pub flushed: BTreeMap<u64, Lsn>,
}

/// Whether clients may open sessions on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gate {
    /// Not decided yet: a primary refuses clients (replication connections pass).
    #[default]
    Unknown,
    /// Clients may connect.
    Open,
    /// This server must not take writes: a primary refuses clients and shuts down.
    Fenced,
}

/// What to do now. Every field is idempotent: the worker compares it with the server and
/// acts only on a difference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Client sessions.
    pub gate: Gate,
    /// The member whose server to stream from (`Some(None)`: from none); `None` leaves
    /// `primary_conninfo` alone.
    pub upstream: Option<Option<u64>>,
    /// `synchronous_standby_names` to set (a primary, or a standby about to be promoted).
    pub sync_names: Option<String>,
    /// HA commands to propose.
    pub propose: Vec<HaCommand>,
    /// Promote the server.
    pub promote: bool,
    /// Shut the server down, for this reason.
    pub fence: Option<String>,
    /// Hand Raft leadership to this member.
    pub transfer: Option<u64>,
    /// What the plan waits for, if anything.
    pub waiting: Option<String>,
}

/// The application name a member's server streams under (and is named by in
/// `synchronous_standby_names`).
pub fn application_name(node: u64) -> String {
    format!("pgraft_node_{node}")
}

/// The member an application (or slot) name `pgraft_node_N` stands for, if it is one.
pub fn member_of(name: &str) -> Option<u64> {
    name.strip_prefix("pgraft_node_")
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
}

/// How many standbys acknowledge each commit in synchronous mode, for `voters` members.
pub fn sync_count(voters: usize) -> usize {
    voters / 2
}

/// How many standbys must have detached from the old primary before a promotion: enough to
/// meet every set of [`sync_count`] standbys among the `voters - 1`.
pub fn detach_quorum(voters: usize) -> usize {
    voters - voters / 2
}

/// The longest a primary cut off from the majority keeps accepting writes: its leader
/// steps down after at most two election timeouts without a majority (check-quorum runs
/// once per timeout), its worker notices within a tick, and a fast shutdown ends every
/// session. A candidate in asynchronous mode waits this long after winning before it
/// promotes; the followers themselves waited at least one election timeout to elect it.
pub fn fencing_bound_ms(election_timeout_ms: u64) -> u64 {
    2 * election_timeout_ms + FENCE_MARGIN_MS
}

/// How long a planned switchover may take: the old primary refuses sessions until its
/// member hands leadership over, and the standbys keep receiving from it until it has shut
/// down. Past this the old primary takes sessions again (the transfer did not happen), or
/// the standbys let go of it as in a failover.
pub const SWITCHOVER_TIMEOUT_MS: i64 = 10_000;

/// The worker's tick, the time a fast shutdown takes to end sessions, and clock slack.
pub const FENCE_MARGIN_MS: u64 = 500;

/// `synchronous_standby_names` for a primary on member `me`.
pub fn sync_standby_names(sync: SyncMode, me: u64, voters: &[u64]) -> String {
    let others: Vec<u64> = voters.iter().copied().filter(|v| *v != me).collect();
    let k = if sync == SyncMode::Off { 0 } else { sync_count(voters.len()) };
    sync_set::SyncConfig::new(k, &others).names()
}

/// The plan for this member now.
pub fn plan(o: &Observation<'_>) -> Plan {
    let mut p = Plan::default();
    if !o.failover {
        // Paused: nothing is fenced, promoted or re-pointed (the playbook's rolling restart).
        p.gate = Gate::Open;
        p.waiting = Some("automatic failover is off (failover_enabled)".into());
        return p;
    }
    let me = o.raft.me;
    // A removed member's proposals could only be refused.
    if !o.raft.removed && o.ha.servers.get(&me) != Some(&o.server.record) {
        p.propose.push(HaCommand::Server { node: me, server: o.server.record.clone() });
    }
    if !o.raft.removed && o.ha.unhealthy.get(&me) != o.health.as_ref() {
        p.propose.push(HaCommand::Health { node: me, problem: o.health.clone() });
    }
    let cluster = cluster_system_id(o);
    if cluster != o.server.record.system_id {
        // Not a copy of the primary's data directory (a member over an unrelated server):
        // failover neither fences nor promotes it.
        p.gate = Gate::Open;
        p.waiting = Some(format!(
            "this server (system identifier {}) is not part of the primary's cluster ({cluster}); failover leaves it alone",
            o.server.record.system_id
        ));
        return p;
    }
    if ha_voters(o).len() < FAILOVER_VOTERS {
        // No other voter runs a copy of this cluster (a plain cluster where failover was
        // switched on, or standbys not registered yet): there is nothing to fail over to,
        // so nothing is recorded, fenced or promoted.
        p.gate = Gate::Open;
        p.waiting = Some("no other voting member runs a standby of this server's cluster".into());
        return p;
    }
    if o.raft.removed {
        // Its HA state is frozen at the removal, and the others fail over without it: a
        // primary must stop taking writes; a standby is left as it is until the member is
        // added back (and then follows the primary of the day).
        if o.server.in_recovery {
            p.gate = Gate::Open;
        } else {
            p.gate = Gate::Fenced;
            p.fence =
                Some("this member was removed from the cluster; its server must not take writes".into());
        }
        p.waiting =
            Some("this member was removed from the cluster: failover leaves its server alone until it is added back".into());
        return p;
    }
    match o.ha.primary.clone() {
        None => plan_unnamed(o, &mut p),
        Some(rec) if o.server.in_recovery => plan_standby(o, &rec, &mut p),
        Some(rec) => plan_primary(o, &rec, &mut p),
    }
    p
}

/// The system identifier of the HA cluster's servers: the recorded primary's, else this
/// server's own.
fn cluster_system_id(o: &Observation<'_>) -> u64 {
    o.ha.primary_system_id().unwrap_or(o.server.record.system_id)
}

/// Failover acts only where at least this many voters run servers of one cluster: with
/// fewer there is nothing to fail over to.
pub const FAILOVER_VOTERS: usize = 2;

/// The voters whose servers belong to the HA cluster (registered with its system
/// identifier): the ones that stream, acknowledge, report and may be promoted.
pub(super) fn ha_voters(o: &Observation<'_>) -> Vec<u64> {
    let cluster = cluster_system_id(o);
    o.raft
        .voters
        .iter()
        .copied()
        .filter(|v| *v == o.raft.me && o.server.record.system_id == cluster || o.ha.runs_cluster(*v, cluster))
        .collect()
}

/// No primary on record yet: the first leader whose server is a primary names it.
fn plan_unnamed(o: &Observation<'_>, p: &mut Plan) {
    p.gate = Gate::Open;
    let r = &o.raft;
    if !r.leader {
        return;
    }
    if !o.server.in_recovery {
        if r.lease {
            p.propose.push(HaCommand::Primary(PrimaryRecord {
                node: r.me,
                term: r.term,
                timeline: o.server.timeline,
                lsn: o.server.replayed,
                reason: "bootstrap: the first leader's server is the primary".into(),
                time_ms: o.now_ms,
            }));
        }
        return;
    }
    // A standby leads before any primary was named: hand leadership to a member that
    // registered a primary.
    match o.ha.servers.iter().find(|(n, s)| s.primary && **n != r.me) {
        Some((n, _)) => p.transfer = Some(*n),
        None => p.waiting = Some("no member has registered a primary server yet".into()),
    }
}

fn plan_primary(o: &Observation<'_>, rec: &PrimaryRecord, p: &mut Plan) {
    let r = &o.raft;
    if rec.node != r.me {
        p.gate = Gate::Fenced;
        p.fence = Some(format!(
            "node {} has been the primary since term {}; this server must not take writes",
            rec.node, rec.term
        ));
        return;
    }
    if !r.leader && r.leader_id == 0 && !o.server.opened {
        // Started (or restarted) and not leading yet, with no session open: refuse new
        // ones and wait; if this member wins the election it stays the primary, and if
        // another does, this server is fenced then.
        p.gate = Gate::Unknown;
        p.waiting = Some("this primary's member does not lead yet; sessions wait".into());
        return;
    }
    if !r.leader || !r.lease {
        p.gate = Gate::Fenced;
        p.fence = Some(if r.leader {
            "this member leads but has not heard from a majority within the election timeout".into()
        } else {
            format!("this member is no longer the Raft leader (term {}, leader {})", r.term, r.leader_id)
        });
        return;
    }
    let standbys: Vec<u64> = ha_voters(o).into_iter().filter(|v| *v != r.me).collect();
    let (names, record) = sync_set::plan_primary_sync(o, rec, &standbys);
    p.sync_names = Some(names);
    p.propose.extend(record);
    if let Some(why) = &o.health {
        // It still takes writes, if it can, until another member leads; then it is fenced.
        match healthy_successor(o) {
            Some(to) => {
                p.transfer = Some(to);
                p.waiting =
                    Some(format!("this server cannot serve ({why}): handing leadership to node {to}"));
            }
            None => {
                p.waiting =
                    Some(format!("this server cannot serve ({why}), and no other member's server is healthy"))
            }
        }
    }
    if let Some(sw) = o.ha.switchover.as_ref().filter(|sw| sw.from == r.me && sw.term == r.term) {
        if o.now_ms - sw.time_ms >= SWITCHOVER_TIMEOUT_MS {
            p.waiting =
                Some(format!("switchover to node {} did not happen; this server takes writes again", sw.to));
        } else if o.streaming_ms < sw.time_ms {
            // Who streams is read once a second: judge on a reading taken after the request
            // (a link may have been cut a moment before it).
            p.waiting = Some(format!(
                "switchover to node {}: checking that its standby streams from this primary",
                sw.to
            ));
        } else if !o.streaming.as_ref().is_some_and(|s| s.contains(&sw.to)) {
            // A target that does not stream from this primary cannot receive what it wrote
            // before it stops: handing over would be a failover, which in asynchronous
            // mode may lose acknowledged commits. The switchover times out unperformed.
            p.waiting = Some(format!(
                "switchover to node {} refused: its standby does not stream from this primary",
                sw.to
            ));
        } else {
            // Writes stop here; the sessions still open end with the shutdown that follows
            // the transfer, and what they committed reaches the standbys first.
            p.gate = Gate::Fenced;
            p.transfer = Some(sw.to);
            p.waiting = Some(format!("switchover: handing the primary role to node {}", sw.to));
            return;
        }
    }
    p.gate = Gate::Open;
}

/// The member to hand leadership to when this primary's server cannot serve: a voter whose
/// server is a standby of the cluster and healthy (the lowest id; the failover that follows
/// hands leadership on to the most advanced standby if it is another).
fn healthy_successor(o: &Observation<'_>) -> Option<u64> {
    ha_voters(o).into_iter().find(|n| {
        *n != o.raft.me && !o.ha.unhealthy.contains_key(n) && o.ha.servers.get(n).is_some_and(|s| !s.primary)
    })
}

/// A planned switchover from the recorded primary to the current leader is under way:
/// the old primary shuts down cleanly and its standbys should receive all it has first.
fn switching_over(o: &Observation<'_>, rec: &PrimaryRecord) -> bool {
    o.ha.switchover.as_ref().is_some_and(|sw| {
        sw.from == rec.node
            && sw.to == o.raft.leader_id
            && sw.term < o.raft.term
            && o.now_ms - sw.time_ms < SWITCHOVER_TIMEOUT_MS
    })
}

fn plan_standby(o: &Observation<'_>, rec: &PrimaryRecord, p: &mut Plan) {
    p.gate = Gate::Open;
    let r = &o.raft;
    if rec.node == r.me {
        if r.term != rec.term {
            candidate::plan_former_primary(o, rec, p);
        } else if r.leader && r.lease {
            // Named primary, not promoted yet: only the leader of the decision's term
            // promotes.
            p.upstream = Some(None);
            p.sync_names = Some(sync_set::at_promotion_names(o, rec));
            p.promote = true;
        } else {
            p.waiting = Some(format!("named primary in term {}, but not the leader of that term", rec.term));
        }
        return;
    }
    if r.leader_id == 0 {
        p.waiting = Some("no Raft leader".into());
        return;
    }
    if r.leader_id == rec.node {
        p.upstream = Some(Some(rec.node));
        return;
    }
    if switching_over(o, rec) && o.server.receiving != Receiving::Nothing {
        p.waiting = Some(format!("switchover: receiving node {}'s last WAL before it stops", rec.node));
        return;
    }
    // A leader that is not the primary's member: a failover. Let go of the old primary
    // (stream from the leader's server, cascading, so no WAL is missed if it wins), and
    // say where this server stands once the WAL receiver has let go.
    p.upstream = Some(if r.leader { None } else { Some(r.leader_id) });
    let detached = !matches!(o.server.receiving, Receiving::From(n) if n == rec.node)
        && o.server.receiving != Receiving::Unknown;
    if !detached {
        p.waiting = Some(format!("letting go of node {}'s server", rec.node));
        return;
    }
    let report = DetachReport {
        term: r.term,
        from: rec.node,
        timeline: o.server.timeline,
        received: o.server.received,
        replayed: o.server.replayed,
    };
    candidate::report(o, report, p);
    if r.leader {
        candidate::plan_candidate(o, rec, p);
    }
}

#[cfg(test)]
pub(in crate::ha) mod tests {
    use super::*;

    pub(in crate::ha) fn server(in_recovery: bool, lsn: Lsn, receiving: Receiving) -> ServerView {
        ServerView {
            in_recovery,
            timeline: 1,
            received: lsn,
            replayed: lsn,
            replay_still_ms: 0,
            receiving,
            opened: true,
            promoting: false,
            stood_down: None,
            sync_in_use: None,
            record: ServerRecord {
                host: "127.0.0.1".into(),
                port: 5432,
                system_id: 7,
                primary: !in_recovery,
            },
        }
    }

    #[test]
    fn application_names_name_their_members() {
        assert_eq!(member_of(&application_name(12)), Some(12));
        for other in [
            "pgraft_node_",
            "pgraft_node_+1",
            "pgraft_node_1x",
            "walreceiver",
            "pgraft_node_99999999999999999999",
        ] {
            assert_eq!(member_of(other), None, "{other}");
        }
        let s = server(true, 100, Receiving::Nothing);
        assert_eq!(ServerView { received: 150, ..s.clone() }.held(), 150);
        assert_eq!(ServerView { received: 0, ..s }.held(), 100);
    }

    pub(in crate::ha) fn raft(me: u64, leader_id: u64, term: u64) -> RaftView {
        RaftView {
            me,
            leader: me == leader_id,
            term,
            leader_id,
            voters: vec![1, 2, 3],
            removed: false,
            lease: me == leader_id,
            led_ms: 10_000,
            election_timeout_ms: 1000,
        }
    }

    pub(in crate::ha) fn ha_with_primary(node: u64, term: u64) -> HaState {
        let mut ha = HaState::default();
        for n in 1..=3 {
            let rec = ServerRecord { host: "127.0.0.1".into(), port: 5432, system_id: 7, primary: n == node };
            ha.apply(&HaCommand::Server { node: n, server: rec }, term).expect("server");
        }
        let rec = PrimaryRecord { node, term, timeline: 1, lsn: 0, reason: "t".into(), time_ms: 0 };
        ha.apply(&HaCommand::Primary(rec), term).expect("primary");
        ha
    }

    pub(in crate::ha) fn obs<'a>(ha: &'a HaState, raft: RaftView, server: ServerView) -> Observation<'a> {
        Observation {
            ha,
            failover: true,
            sync: SyncMode::On,
            raft,
            server,
            now_ms: 1,
            health: None,
            max_lag: 0,
            streaming: None,
            streaming_ms: 0,
            flushed: BTreeMap::new(),
        }
    }

    /// What a plan proposes but registrations and synchronous records.
    pub(in crate::ha) fn decisions(p: &Plan) -> Vec<&HaCommand> {
        p.propose.iter().filter(|c| !matches!(c, HaCommand::Server { .. } | HaCommand::SyncSet(_))).collect()
    }

    #[test]
    fn the_first_leader_names_its_own_server() {
        // Alone (no standby of its cluster registered), nothing is recorded.
        let ha = HaState::default();
        let p = plan(&obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing)));
        assert_eq!(p.gate, Gate::Open);
        assert!(decisions(&p).is_empty());
        let mut ha = HaState::default();
        let standby = ServerRecord { host: "h".into(), port: 2, system_id: 7, primary: false };
        ha.apply(&HaCommand::Server { node: 2, server: standby }, 1).expect("server");
        let p = plan(&obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing)));
        assert_eq!(p.gate, Gate::Open);
        assert!(matches!(decisions(&p)[..], [HaCommand::Primary(PrimaryRecord { node: 1, term: 2, .. })]));
        // A standby that leads hands leadership to the registered primary.
        let mut ha = HaState::default();
        let rec = ServerRecord { host: "h".into(), port: 1, system_id: 7, primary: true };
        ha.apply(&HaCommand::Server { node: 3, server: ServerRecord { primary: false, ..rec.clone() } }, 1)
            .expect("server");
        ha.apply(&HaCommand::Server { node: 1, server: rec }, 1).expect("server");
        let p = plan(&obs(&ha, raft(2, 2, 2), server(true, 100, Receiving::From(1))));
        assert_eq!(p.transfer, Some(1));
        assert!(decisions(&p).is_empty());
    }

    #[test]
    fn the_primary_is_open_only_while_it_leads_with_a_lease() {
        let ha = ha_with_primary(1, 2);
        let p = plan(&obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing)));
        assert_eq!(p.gate, Gate::Open);
        assert_eq!(p.sync_names.as_deref(), Some("ANY 1 (pgraft_node_2, pgraft_node_3)"));
        assert_eq!(p.fence, None);
        // Re-elected in a later term: still the primary.
        assert_eq!(plan(&obs(&ha, raft(1, 1, 5), server(false, 100, Receiving::Nothing))).gate, Gate::Open);
        // Deposed, or without a lease: fenced at once.
        for r in [raft(1, 2, 3), raft(1, 0, 3), RaftView { lease: false, ..raft(1, 1, 2) }] {
            let p = plan(&obs(&ha, r, server(false, 100, Receiving::Nothing)));
            assert_eq!(p.gate, Gate::Fenced);
            assert!(p.fence.is_some());
        }
        // Just started, never opened, no leader known yet: refuse sessions and wait.
        let fresh = ServerView { opened: false, ..server(false, 100, Receiving::Nothing) };
        let p = plan(&obs(&ha, raft(1, 0, 3), fresh.clone()));
        assert_eq!((p.gate, p.fence.is_none()), (Gate::Unknown, true));
        // Another leader is known: fenced.
        assert_eq!(plan(&obs(&ha, raft(1, 2, 3), fresh)).gate, Gate::Fenced);
        // Another member's server is the primary on record: fenced even while leading.
        let ha = ha_with_primary(3, 4);
        let p = plan(&obs(&ha, raft(1, 1, 5), server(false, 100, Receiving::Nothing)));
        assert_eq!(p.gate, Gate::Fenced);
    }

    #[test]
    fn standbys_follow_the_primary_while_it_leads() {
        let ha = ha_with_primary(1, 2);
        let p = plan(&obs(&ha, raft(2, 1, 2), server(true, 100, Receiving::From(1))));
        assert_eq!(p.upstream, Some(Some(1)));
        assert!(decisions(&p).is_empty());
        assert_eq!(p.gate, Gate::Open);
    }

    #[test]
    fn a_standby_reports_only_once_it_let_go_of_the_old_primary() {
        let ha = ha_with_primary(1, 2);
        // Node 3 leads term 3; node 2 still receives from node 1.
        let p = plan(&obs(&ha, raft(2, 3, 3), server(true, 100, Receiving::From(1))));
        assert_eq!(p.upstream, Some(Some(3)), "cascade from the new leader's server");
        assert!(decisions(&p).is_empty(), "no report while receiving from node 1");
        let p = plan(&obs(&ha, raft(2, 3, 3), server(true, 100, Receiving::Unknown)));
        assert!(decisions(&p).is_empty(), "an unidentified upstream may be node 1");
        let p = plan(&obs(&ha, raft(2, 3, 3), server(true, 100, Receiving::From(3))));
        assert!(matches!(
            decisions(&p)[..],
            [HaCommand::Detached { node: 2, report: DetachReport { term: 3, from: 1, received: 100, .. } }]
        ));
    }

    #[test]
    fn servers_of_another_cluster_are_left_alone() {
        // Node 1's server is the primary on record; node 2 runs over an unrelated server
        // that is a primary too (a plain local cluster with failover switched on).
        let ha = ha_with_primary(1, 2);
        let other = ServerView {
            record: ServerRecord { system_id: 99, ..server(false, 1, Receiving::Nothing).record },
            ..server(false, 1, Receiving::Nothing)
        };
        let p = plan(&obs(&ha, raft(2, 2, 3), other));
        assert_eq!(p.gate, Gate::Open);
        assert!(p.fence.is_none() && !p.promote && decisions(&p).is_empty());
        // The primary names only the standbys of its own cluster as synchronous.
        let mut ha = ha_with_primary(1, 2);
        let rec = ServerRecord { host: "h".into(), port: 1, system_id: 99, primary: true };
        ha.apply(&HaCommand::Server { node: 3, server: rec }, 2).expect("server");
        let p = plan(&obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing)));
        assert_eq!(p.sync_names.as_deref(), Some("ANY 1 (pgraft_node_2)"));
        // A lone HA server among unrelated ones waits for no standby.
        let mut ha = HaState::default();
        for n in [2, 3] {
            let rec = ServerRecord { host: "h".into(), port: 1, system_id: 90 + n, primary: true };
            ha.apply(&HaCommand::Server { node: n, server: rec }, 2).expect("server");
        }
        let rec = PrimaryRecord { node: 1, term: 2, timeline: 1, lsn: 0, reason: "t".into(), time_ms: 0 };
        ha.apply(&HaCommand::Primary(rec), 2).expect("primary");
        let p = plan(&obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing)));
        assert_eq!((p.gate, p.sync_names.as_deref(), p.fence.is_none()), (Gate::Open, None, true));
        // Even when it no longer leads: nothing to fail over to, nothing fenced.
        let p = plan(&obs(&ha, raft(1, 2, 3), server(false, 100, Receiving::Nothing)));
        assert_eq!((p.gate, p.fence.is_none()), (Gate::Open, true));
    }

    #[test]
    fn a_switchover_stops_writes_then_lets_the_standbys_drain_the_old_primary() {
        let mut ha = ha_with_primary(1, 2);
        let sw = SwitchoverRecord { from: 1, to: 3, term: 2, time_ms: 1 };
        ha.apply(&HaCommand::Switchover(sw.clone()), 2).expect("switchover");
        // The old primary refuses sessions and hands leadership to node 3, which streams
        // from it.
        let mut o = obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing));
        o.streaming = Some(vec![2, 3]);
        // Read before the request: it waits for a reading taken after.
        let p = plan(&o);
        assert_eq!((p.gate, p.transfer), (Gate::Open, None));
        o.streaming_ms = 2;
        let p = plan(&o);
        assert_eq!((p.gate, p.transfer, p.fence.is_none()), (Gate::Fenced, Some(3), true));
        // Not while node 3 does not stream (or nobody knows whether it does): writes go on,
        // and the switchover times out unperformed.
        for streaming in [Some(vec![2]), None] {
            o.streaming = streaming;
            let p = plan(&o);
            assert_eq!((p.gate, p.transfer), (Gate::Open, None));
            assert!(p.waiting.as_deref().is_some_and(|w| w.contains("refused")), "{p:?}");
        }
        // Past the timeout it takes writes again.
        let mut o = obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing));
        o.now_ms = SWITCHOVER_TIMEOUT_MS + 2;
        assert_eq!(plan(&o).gate, Gate::Open);
        // Node 3 leads term 3: the standbys keep streaming from node 1 until it stops.
        for me in [2, 3] {
            let p = plan(&obs(&ha, raft(me, 3, 3), server(true, 100, Receiving::From(1))));
            assert!(p.upstream.is_none() && decisions(&p).is_empty(), "{p:?}");
            let p = plan(&obs(&ha, raft(me, 3, 3), server(true, 120, Receiving::Nothing)));
            assert!(matches!(decisions(&p)[..], [HaCommand::Detached { .. }]), "{p:?}");
        }
        // A switchover from a member that is not the primary is refused.
        let stale = SwitchoverRecord { from: 2, to: 3, term: 2, time_ms: 1 };
        assert!(ha.apply(&HaCommand::Switchover(stale), 2).is_err());
    }

    #[test]
    fn paused_failover_touches_nothing() {
        let ha = ha_with_primary(1, 2);
        let mut o = obs(&ha, raft(1, 2, 3), server(false, 100, Receiving::Nothing));
        o.failover = false;
        let p = plan(&o);
        assert_eq!(p.gate, Gate::Open);
        assert!(p.fence.is_none() && p.propose.is_empty() && p.upstream.is_none());
    }

    #[test]
    fn quorums_meet_every_acknowledging_set() {
        for n in 1..=9usize {
            let standbys = n - 1;
            // Detached ∪ acknowledging > standbys: the sets always share a member.
            if sync_count(n) > 0 {
                assert!(detach_quorum(n) + sync_count(n) > standbys, "n = {n}");
            }
            // With itself, the primary's acknowledging set is a majority.
            assert!(sync_count(n) + 1 > n / 2, "n = {n}");
        }
        assert_eq!(
            sync_standby_names(SyncMode::On, 1, &[1, 2, 3, 4, 5]),
            "ANY 2 (pgraft_node_2, pgraft_node_3, pgraft_node_4, pgraft_node_5)"
        );
        assert_eq!(sync_standby_names(SyncMode::Off, 1, &[1, 2, 3]), "");
        assert_eq!(sync_standby_names(SyncMode::On, 1, &[1]), "");
    }

    #[test]
    fn a_primary_that_cannot_serve_hands_leadership_to_a_healthy_standby() {
        let mut ha = ha_with_primary(1, 2);
        let sick = |ha: &HaState| {
            let mut o = obs(ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing));
            o.health = Some("stuck".into());
            plan(&o)
        };
        let p = sick(&ha);
        assert_eq!((p.transfer, p.gate), (Some(2), Gate::Open), "{p:?}");
        assert!(matches!(decisions(&p)[..], [HaCommand::Health { node: 1, problem: Some(_) }]));
        // Node 2's server cannot serve either: node 3.
        ha.apply(&HaCommand::Health { node: 2, problem: Some("full disk".into()) }, 2).expect("health");
        assert_eq!(sick(&ha).transfer, Some(3));
        ha.apply(&HaCommand::Health { node: 3, problem: Some("full disk".into()) }, 2).expect("health");
        let p = sick(&ha);
        assert_eq!(p.transfer, None);
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("no other member")), "{p:?}");
        // Healthy again: said once.
        ha.apply(&HaCommand::Health { node: 1, problem: Some("stuck".into()) }, 2).expect("health");
        let p = plan(&obs(&ha, raft(1, 1, 2), server(false, 100, Receiving::Nothing)));
        assert!(matches!(decisions(&p)[..], [HaCommand::Health { node: 1, problem: None }]), "{p:?}");
        assert_eq!(p.transfer, None);
    }
}
