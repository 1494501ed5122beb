//! `GET /metrics`: the member's figures in Prometheus's text format. Raft (`pgraft_raft_*`),
//! storage (`pgraft_storage_*`, `pgraft_snapshot*`), the KV store and requests
//! (`pgraft_kv_*`, `pgraft_request*`), failover (`pgraft_ha_*`), the endpoint itself
//! (`pgraft_http_*`) and the worker process (`process_*`, Prometheus's standard names).
//! Every figure is copied from what the member already published; rendering a page reads
//! `/proc/self` and the size of the member's directory, nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::health_report::HealthReport;
use super::server::HttpStats;
use crate::member::{message_type_name, MemberStatus, MESSAGE_TYPES};
use crate::metrics::{Exposition, Histogram, Kind, OpFigures};
use crate::node::KvGauges;
use crate::transport::TransportStats;

/// What a page is made of.
pub struct MetricsSources<'a> {
    /// Now, ms since the Unix epoch.
    pub now_ms: i64,
    /// The member's last published status, and when it was published.
    pub status: Option<(&'a MemberStatus, i64)>,
    /// The election timeout in force, for peer reachability.
    pub election_timeout_ms: u64,
    /// The transport's counters.
    pub transport: Option<&'a TransportStats>,
    /// The storage's commit latencies.
    pub syncs: &'a Histogram,
    /// Bytes in the member's directory (log, state, snapshots).
    pub storage_bytes: u64,
    /// The KV store's sizes.
    pub kv: KvGauges,
    /// Requests answered, by kind.
    pub ops: &'a BTreeMap<&'static str, OpFigures>,
    /// The health report the status endpoints answer from.
    pub report: &'a HealthReport,
    /// Promotions this member's worker carried out since it started.
    pub local_promotions: u64,
    /// The HTTP endpoint's own counters.
    pub http: Option<&'a HttpStats>,
}

/// The page.
pub fn render(s: &MetricsSources<'_>) -> String {
    let mut e = Exposition::new();
    raft(&mut e, s);
    storage(&mut e, s);
    kv(&mut e, s);
    ha(&mut e, s.report, s.now_ms);
    e.single(
        "pgraft_ha_local_promotions_total",
        Kind::Counter,
        "Promotions of this server carried out by this worker since it started.",
        s.local_promotions as f64,
    );
    if let Some(h) = s.http {
        e.single(
            "pgraft_http_requests_answered_total",
            Kind::Counter,
            "HTTP requests answered by an endpoint.",
            h.answered.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "pgraft_http_requests_refused_total",
            Kind::Counter,
            "HTTP requests refused: bad heads, wrong credentials, methods not served, timeouts, overload.",
            h.refused.load(Ordering::Relaxed) as f64,
        );
    }
    process(&mut e);
    e.finish()
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn raft(e: &mut Exposition, s: &MetricsSources<'_>) {
    let Some((st, at_ms)) = s.status else { return };
    let g = |e: &mut Exposition, name: &str, help: &str, v: u64| {
        e.single(name, Kind::Gauge, help, v as f64);
    };
    g(e, "pgraft_raft_term", "The member's current Raft term.", st.term);
    g(e, "pgraft_raft_leader_id", "The leader this member knows of (0: none).", st.leader_id);
    e.single("pgraft_raft_is_leader", Kind::Gauge, "1 if this member leads.", flag(st.leader_id == st.id));
    e.family("pgraft_raft_role", Kind::Gauge, "The member's Raft role: 1 for the one it has.");
    for role in ["Leader", "Follower", "Candidate", "PreCandidate"] {
        e.sample("pgraft_raft_role", &[("role", &role.to_ascii_lowercase())], flag(st.role.as_str() == role));
    }
    g(e, "pgraft_raft_commit_index", "The highest log index known committed.", st.commit);
    g(e, "pgraft_raft_applied_index", "The highest log index applied to the state machine here.", st.applied);
    g(
        e,
        "pgraft_raft_first_index",
        "The first index still in the log (compaction removes the ones before).",
        st.first_index,
    );
    g(e, "pgraft_raft_last_index", "The last index in the log.", st.last_index);
    g(e, "pgraft_raft_voters", "Voting members in the configuration.", st.voters.len() as u64);
    g(e, "pgraft_raft_learners", "Learners in the configuration.", st.learners.len() as u64);
    e.single(
        "pgraft_raft_quorum_active",
        Kind::Gauge,
        "1 if a majority of voters is reachable.",
        flag(st.quorum_active),
    );
    g(e, "pgraft_raft_pending_requests", "Requests waiting in the member.", st.pending as u64);
    e.single(
        "pgraft_raft_status_age_seconds",
        Kind::Gauge,
        "Seconds since the Raft thread last published its status (a stuck thread makes it grow).",
        ((s.now_ms - at_ms).max(0)) as f64 / 1000.0,
    );
    let c = &st.counters;
    let counter = |e: &mut Exposition, name: &str, help: &str, v: u64| {
        e.single(name, Kind::Counter, help, v as f64);
    };
    counter(
        e,
        "pgraft_raft_leader_changes_total",
        "Times the leader known here changed to another member.",
        c.leader_changes,
    );
    counter(e, "pgraft_raft_elections_total", "Elections this member started.", c.elections);
    counter(e, "pgraft_raft_proposals_total", "Proposals handed to Raft here.", c.proposals);
    counter(
        e,
        "pgraft_raft_proposals_resent_total",
        "Proposals sent again because they seemed lost.",
        c.proposals_resent,
    );
    counter(
        e,
        "pgraft_raft_applied_entries_total",
        "Entries applied to the state machine here.",
        c.applied_entries,
    );
    counter(
        e,
        "pgraft_raft_votes_withheld_total",
        "Vote requests left unanswered because this member's log was empty.",
        c.votes_withheld,
    );
    counter(
        e,
        "pgraft_raft_messages_dropped_total",
        "Peer messages dropped before raft-rs because it could not have taken them (malformed).",
        c.messages_dropped,
    );
    e.family("pgraft_raft_messages_sent_total", Kind::Counter, "Raft messages produced for peers, by type.");
    for t in 0..MESSAGE_TYPES {
        if c.sent_by_type[t] > 0 {
            e.sample(
                "pgraft_raft_messages_sent_total",
                &[("type", message_type_name(t))],
                c.sent_by_type[t] as f64,
            );
        }
    }
    e.family(
        "pgraft_raft_messages_received_total",
        Kind::Counter,
        "Raft messages stepped from peers, by type.",
    );
    for t in 0..MESSAGE_TYPES {
        if c.received_by_type[t] > 0 {
            let v = c.received_by_type[t] as f64;
            e.sample("pgraft_raft_messages_received_total", &[("type", message_type_name(t))], v);
        }
    }
    if let Some(t) = s.transport {
        counter(
            e,
            "pgraft_transport_messages_dropped_total",
            "Messages dropped before sending (peer queue full, no address).",
            t.dropped.load(Ordering::Relaxed),
        );
        counter(
            e,
            "pgraft_transport_connections_refused_total",
            "Peer connections refused at the handshake or by TLS.",
            t.refused.load(Ordering::Relaxed),
        );
    }
    let peers: Vec<u64> =
        st.voters.iter().chain(st.learners.iter()).copied().filter(|p| *p != st.id).collect();
    e.family(
        "pgraft_raft_peer_reachable",
        Kind::Gauge,
        "1 if this member heard from the peer within the election timeout.",
    );
    for p in &peers {
        let heard = st.last_heard_ms.get(p).is_some_and(|t| s.now_ms - t <= s.election_timeout_ms as i64);
        e.sample("pgraft_raft_peer_reachable", &[("peer", &p.to_string())], flag(heard));
    }
    e.family(
        "pgraft_raft_peer_last_heard_seconds",
        Kind::Gauge,
        "Seconds since this member last heard from the peer.",
    );
    for p in &peers {
        if let Some(t) = st.last_heard_ms.get(p) {
            let v = (s.now_ms - t).max(0) as f64 / 1000.0;
            e.sample("pgraft_raft_peer_last_heard_seconds", &[("peer", &p.to_string())], v);
        }
    }
    if !st.progress.is_empty() {
        e.family(
            "pgraft_raft_peer_match_index",
            Kind::Gauge,
            "The highest index known replicated on the peer (leader only).",
        );
        for pr in st.progress.iter().filter(|pr| pr.id != st.id) {
            e.sample("pgraft_raft_peer_match_index", &[("peer", &pr.id.to_string())], pr.matched as f64);
        }
    }
}

fn storage(e: &mut Exposition, s: &MetricsSources<'_>) {
    e.single(
        "pgraft_storage_bytes",
        Kind::Gauge,
        "Bytes in the member's directory: log, state and snapshots.",
        s.storage_bytes as f64,
    );
    e.family(
        "pgraft_storage_sync_duration_seconds",
        Kind::Histogram,
        "Time of each durable commit of the log store (fsync included).",
    )
    .histogram("pgraft_storage_sync_duration_seconds", &[], s.syncs);
    if let Some((st, _)) = s.status {
        let c = &st.counters;
        e.single(
            "pgraft_raft_thread_longest_pass_seconds",
            Kind::Gauge,
            "The longest pass of the Raft thread since start (a stall longer than the election timeout is an election).",
            c.longest_pass_ms as f64 / 1000.0,
        );
        e.single(
            "pgraft_snapshots_taken_total",
            Kind::Counter,
            "Snapshots taken here.",
            c.snapshots_taken as f64,
        );
        e.single(
            "pgraft_snapshots_installed_total",
            Kind::Counter,
            "Snapshots received from a leader and installed.",
            c.snapshots_installed as f64,
        );
        e.single(
            "pgraft_snapshot_duration_seconds_total",
            Kind::Counter,
            "Time spent encoding and writing snapshots (off the Raft thread).",
            c.snapshot_total_ms as f64 / 1000.0,
        );
        e.single(
            "pgraft_snapshot_duration_max_seconds",
            Kind::Gauge,
            "The longest a snapshot took to encode and write.",
            c.snapshot_max_ms as f64 / 1000.0,
        );
    }
}

fn kv(e: &mut Exposition, s: &MetricsSources<'_>) {
    e.single("pgraft_kv_revision", Kind::Gauge, "The KV store's revision.", s.kv.revision as f64);
    e.single(
        "pgraft_kv_compact_revision",
        Kind::Gauge,
        "The revision the KV store is compacted up to.",
        s.kv.compact_revision as f64,
    );
    e.single(
        "pgraft_kv_keys",
        Kind::Gauge,
        "Keys the KV store holds a revision of (deleted ones until compaction).",
        s.kv.keys_held as f64,
    );
    e.family(
        "pgraft_requests_total",
        Kind::Counter,
        "Requests answered by this member, by operation and result.",
    );
    for (op, f) in s.ops {
        e.sample("pgraft_requests_total", &[("op", op), ("result", "ok")], f.ok as f64);
        e.sample("pgraft_requests_total", &[("op", op), ("result", "failed")], f.failed as f64);
    }
    e.family(
        "pgraft_request_duration_seconds",
        Kind::Histogram,
        "Time from a request to its answer, as the session saw it, by operation.",
    );
    for (op, f) in s.ops {
        e.histogram("pgraft_request_duration_seconds", &[("op", op)], &f.latency);
    }
}

fn ha(e: &mut Exposition, r: &HealthReport, now_ms: i64) {
    e.single(
        "pgraft_ha_failover_enabled",
        Kind::Gauge,
        "1 if automatic failover may act.",
        flag(r.ha.failover_enabled),
    );
    e.single(
        "pgraft_ha_primary_member",
        Kind::Gauge,
        "The member whose server is the primary on record (0: none).",
        r.ha.primary.unwrap_or(0) as f64,
    );
    e.single(
        "pgraft_ha_promotions_total",
        Kind::Counter,
        "Primary decisions applied in the cluster (the first one included).",
        r.ha.promotions as f64,
    );
    e.single(
        "pgraft_ha_is_primary",
        Kind::Gauge,
        "1 if this server is the writable primary (what GET /primary answers 200 for).",
        flag(r.primary_problem(now_ms).is_none()),
    );
    e.single(
        "pgraft_ha_fenced",
        Kind::Gauge,
        "1 if this server's sessions are fenced.",
        flag(r.ha.gate == "fenced"),
    );
    let Some(srv) = &r.server else { return };
    e.family("pgraft_ha_server_role", Kind::Gauge, "This server's role: 1 for the one it has.");
    for role in ["primary", "standby", "recovering"] {
        e.sample("pgraft_ha_server_role", &[("role", role)], flag(srv.role == role));
    }
    e.single(
        "pgraft_ha_server_healthy",
        Kind::Gauge,
        "1 if this server can serve.",
        flag(srv.problem.is_none()),
    );
    e.single("pgraft_ha_timeline", Kind::Gauge, "This server's timeline.", f64::from(srv.timeline));
    e.single(
        "pgraft_ha_received_lsn_bytes",
        Kind::Gauge,
        "WAL received and flushed here (a primary: flushed), as a byte position.",
        srv.received_lsn as f64,
    );
    e.single(
        "pgraft_ha_replayed_lsn_bytes",
        Kind::Gauge,
        "WAL replayed here (a primary: flushed), as a byte position.",
        srv.replayed_lsn as f64,
    );
    if let Some(lag) = srv.lag_bytes() {
        e.single(
            "pgraft_ha_replay_lag_bytes",
            Kind::Gauge,
            "On a standby: the primary's end of WAL minus what this standby replayed.",
            lag as f64,
        );
    }
    let standbys: Vec<_> = r.members.iter().filter_map(|m| m.standby.as_ref().map(|s| (m.id, s))).collect();
    if !standbys.is_empty() {
        e.family(
            "pgraft_ha_replication_lag_bytes",
            Kind::Gauge,
            "On the primary: its flushed WAL minus what each standby flushed.",
        );
        for (id, s) in &standbys {
            e.sample("pgraft_ha_replication_lag_bytes", &[("standby", &id.to_string())], s.lag_bytes as f64);
        }
    }
}

/// The worker process's figures from `/proc/self` (Linux); nothing elsewhere.
fn process(e: &mut Exposition) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads system constants.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    // /proc/PID/stat numbering: utime 14, stime 15, num_threads 20, starttime 22, vsize 23,
    // rss 24; `rest` starts at field 3.
    e.single(
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time spent in seconds.",
        (num(11) + num(12)) / ticks,
    );
    e.single(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
        num(21) * page.max(1) as f64,
    );
    e.single("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size in bytes.", num(20));
    e.single("pgraft_process_threads", Kind::Gauge, "Threads of the worker process.", num(17));
    if let Some(boot) = boot_time() {
        e.single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            boot + num(19) / ticks,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        e.single("process_open_fds", Kind::Gauge, "Number of open file descriptors.", fds.count() as f64);
    }
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HaReport, RaftReport, ServerReport};
    use crate::member::{Counters, PeerProgress, Role};
    use std::time::Duration;

    #[test]
    fn a_page_has_every_family_once_with_its_samples() {
        let mut counters = Counters { elections: 2, leader_changes: 3, ..Default::default() };
        counters.sent_by_type[3] = 7;
        counters.received_by_type[4] = 6;
        let st = MemberStatus {
            apply_blocked: None,
            entry_formats: vec![(1, 2, true)],
            durable_term: 0,
            durable_vote: 0,
            id: 1,
            role: Role::Leader,
            term: 5,
            vote: 1,
            leader_id: 1,
            commit: 10,
            applied: 10,
            first_index: 1,
            last_index: 10,
            log_bytes: 400,
            voters: vec![1, 2, 3],
            learners: vec![],
            progress: vec![PeerProgress {
                id: 2,
                matched: 9,
                next: 10,
                state: "replicate".into(),
                recent_active: true,
                learner: false,
                lag_bytes: Some(40),
            }],
            counters,
            pending: 0,
            quorum_active: true,
            last_heard_ms: [(2, 9_900), (3, 5_000)].into_iter().collect(),
            links_closed_ms: Default::default(),
            unreachable: vec![3],
        };
        let mut syncs = Histogram::default();
        syncs.observe(Duration::from_millis(2));
        let mut ops = BTreeMap::new();
        let mut put = OpFigures { ok: 4, failed: 1, ..Default::default() };
        put.latency.observe(Duration::from_millis(3));
        ops.insert("kv_put", put);
        let report = HealthReport {
            member: 1,
            at_ms: 10_000,
            raft: RaftReport { role: "leader".into(), lease_until_ms: Some(10_500), ..Default::default() },
            server: Some(ServerReport { role: "primary".into(), timeline: 3, ..Default::default() }),
            ha: HaReport {
                failover_enabled: true,
                primary: Some(1),
                gate: "open".into(),
                promotions: 2,
                ..Default::default()
            },
            members: vec![],
        };
        let page = render(&MetricsSources {
            now_ms: 10_000,
            status: Some((&st, 9_990)),
            election_timeout_ms: 1000,
            transport: None,
            syncs: &syncs,
            storage_bytes: 4096,
            kv: KvGauges { revision: 8, compact_revision: 2, keys_held: 5 },
            ops: &ops,
            report: &report,
            local_promotions: 1,
            http: None,
        });
        for want in [
            "pgraft_raft_term 5\n",
            "pgraft_raft_role{role=\"leader\"} 1\n",
            "pgraft_raft_role{role=\"follower\"} 0\n",
            "pgraft_raft_leader_changes_total 3\n",
            "pgraft_raft_messages_sent_total{type=\"append\"} 7\n",
            "pgraft_raft_messages_received_total{type=\"append_response\"} 6\n",
            "pgraft_raft_peer_reachable{peer=\"2\"} 1\n",
            "pgraft_raft_peer_reachable{peer=\"3\"} 0\n",
            "pgraft_raft_peer_match_index{peer=\"2\"} 9\n",
            "pgraft_storage_sync_duration_seconds_count 1\n",
            "pgraft_kv_revision 8\n",
            "pgraft_requests_total{op=\"kv_put\",result=\"failed\"} 1\n",
            "pgraft_request_duration_seconds_bucket{op=\"kv_put\",le=\"+Inf\"} 1\n",
            "pgraft_ha_is_primary 1\n",
            "pgraft_ha_server_role{role=\"primary\"} 1\n",
            "pgraft_ha_timeline 3\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(seen.insert(line.to_string()), "announced twice: {line}");
        }
    }
}
