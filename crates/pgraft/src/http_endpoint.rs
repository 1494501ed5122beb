//! The worker's HTTP endpoints (`pgraft_core::http`): health checks for load balancers
//! (`/primary`, `/replica`, `/health`, ...), `/cluster`, and Prometheus's `/metrics`.
//!
//! Served on the worker's session runtime from what the main loop published last: each
//! pass (every 50 ms) the loop builds a [`HealthReport`] from the member's published status,
//! the replicated HA state, the server's shared memory and the failover loop's judgement,
//! and swaps it in. A request copies it; none waits for the Raft thread or PostgreSQL.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pgraft_core::http::{
    render_metrics, HaReport, HealthReport, HttpConfig, HttpRequest, HttpResponse, HttpServer, HttpStats,
    MemberReport, MetricsSources, RaftReport, ServerReport, StandbyReport,
};
use pgraft_core::metrics::OpMetrics;
use pgraft_core::{HaView, MemberStatus, NodeHandle};

use crate::gucs;
use crate::ha::server_probe::ServerFacts;
use crate::shmem::{GateState, WorkerShared};

/// What the handler reads; the main loop writes the report and figures.
struct Shared {
    report: Mutex<HealthReport>,
    node: Arc<Mutex<Option<NodeHandle>>>,
    ops: Arc<OpMetrics>,
    raft_dir: PathBuf,
    promotions: AtomicU64,
    election_timeout_ms: AtomicU64,
    stats: Mutex<Option<Arc<HttpStats>>>,
}

/// A running endpoint.
pub struct HttpEndpoint {
    shared: Arc<Shared>,
    _server: HttpServer,
    /// The address bound.
    pub local_addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HttpEndpoint {
    /// Starts the endpoint on `rt` if `pgraft.http_port` is set.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        node: Arc<Mutex<Option<NodeHandle>>>,
        ops: Arc<OpMetrics>,
        raft_dir: PathBuf,
    ) -> Result<Option<HttpEndpoint>, String> {
        let port = gucs::HTTP_PORT.get();
        if port == 0 {
            return Ok(None);
        }
        let host = match gucs::string(&gucs::HTTP_ADDRESS) {
            h if h.is_empty() => gucs::string(&gucs::ADDRESS),
            h => h,
        };
        let listen = (host.as_str(), port as u16)
            .to_socket_addrs()
            .map_err(|e| format!("pgraft.http_address {host:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("pgraft.http_address {host:?} resolves to no address"))?;
        let tls = if gucs::HTTP_TLS.get() {
            let (cert, key) = (gucs::string(&gucs::SSL_CERT_FILE), gucs::string(&gucs::SSL_KEY_FILE));
            if cert.is_empty() || key.is_empty() {
                return Err("pgraft.http_tls is on, but pgraft.ssl_cert_file and pgraft.ssl_key_file are not both set".into());
            }
            Some((cert.into(), key.into()))
        } else {
            None
        };
        let basic_auth = match gucs::string(&gucs::HTTP_AUTH) {
            a if a.is_empty() => None,
            a if !a.contains(':') => return Err("pgraft.http_auth must be user:password".into()),
            a => Some(a),
        };
        let shared = Arc::new(Shared {
            report: Mutex::new(HealthReport::default()),
            node,
            ops,
            raft_dir,
            promotions: AtomicU64::new(0),
            election_timeout_ms: AtomicU64::new(1000),
            stats: Mutex::new(None),
        });
        let handler_shared = Arc::clone(&shared);
        let handler = Arc::new(move |req: &HttpRequest| answer(&handler_shared, req));
        let server = HttpServer::start(HttpConfig { listen, tls, basic_auth }, handler, rt.handle())?;
        *lock(&shared.stats) = Some(Arc::clone(&server.stats));
        let local_addr = server.local_addr;
        Ok(Some(HttpEndpoint { shared, _server: server, local_addr }))
    }

    /// Swaps in the main loop's newest report and figures.
    pub fn publish(&self, report: HealthReport, promotions: u64, election_timeout_ms: u64) {
        *lock(&self.shared.report) = report;
        self.shared.promotions.store(promotions, Ordering::Relaxed);
        self.shared.election_timeout_ms.store(election_timeout_ms, Ordering::Relaxed);
    }
}

fn answer(s: &Shared, req: &HttpRequest) -> HttpResponse {
    let now = crate::worker::now_ms();
    let report = lock(&s.report).clone();
    if req.path != "/metrics" {
        return report.answer(now, req);
    }
    let node = lock(&s.node).clone();
    let status = node.as_ref().and_then(|n| n.status().map(|st| (st, n.status_ms())));
    let transport = node.as_ref().and_then(NodeHandle::transport_stats);
    let syncs = node.as_ref().map(NodeHandle::sync_latency).unwrap_or_default();
    let ops = s.ops.snapshot();
    let stats = lock(&s.stats).clone();
    let page = render_metrics(&MetricsSources {
        now_ms: now,
        status: status.as_ref().map(|(st, at)| (st, *at)),
        election_timeout_ms: s.election_timeout_ms.load(Ordering::Relaxed),
        transport: transport.as_deref(),
        syncs: &syncs,
        storage_bytes: crate::worker::dir_size(&s.raft_dir, 3),
        kv: node.as_ref().map(NodeHandle::kv_gauges).unwrap_or_default(),
        ops: &ops,
        report: &report,
        local_promotions: s.promotions.load(Ordering::Relaxed),
        http: stats.as_deref(),
    });
    HttpResponse { status: 200, content_type: "text/plain; version=0.0.4; charset=utf-8", body: page }
}

/// What the main loop knows this pass, for [`build_report`].
pub struct ReportInputs<'a> {
    /// The member's published status.
    pub status: &'a MemberStatus,
    /// The replicated HA state and settings.
    pub view: &'a HaView,
    /// The server, as read from shared memory.
    pub facts: &'a ServerFacts,
    /// The worker's shared facts (gate, note, the keeper's standbys).
    pub shared: &'a WorkerShared,
    /// Why the server cannot serve, as the failover loop judged it.
    pub problem: Option<&'a str>,
    /// Raft addresses by member.
    pub addresses: &'a BTreeMap<u64, String>,
    /// The election timeout in force.
    pub election_timeout_ms: u64,
    /// Now, ms since the Unix epoch.
    pub now_ms: i64,
}

/// How long the keeper's reading of `pg_stat_replication` counts (it reads every second).
const STANDBYS_FRESH_MS: i64 = 5_000;

/// The report the endpoints answer from until the next pass.
pub fn build_report(i: &ReportInputs<'_>) -> HealthReport {
    let st = i.status;
    let f = i.facts;
    let ha = &i.view.ha;
    let role = if f.is_starting_primary() {
        "recovering"
    } else if f.in_recovery {
        "standby"
    } else {
        "primary"
    };
    let server = ServerReport {
        role: role.into(),
        timeline: f.timeline,
        received_lsn: f.received,
        replayed_lsn: f.replayed,
        streaming: f.receiver_streaming,
        upstream_lsn: (f.in_recovery && f.receiver_streaming && f.upstream_end > 0).then_some(f.upstream_end),
        problem: i.problem.map(str::to_string),
    };
    let gate = match i.shared.gate {
        GateState::Open => "open",
        GateState::Fenced => "fenced",
        GateState::Unknown => "unknown",
    };
    let max_lag = match gucs::MAXIMUM_LAG_ON_FAILOVER.get().max(0) as u64 {
        0 => u64::MAX,
        kb => kb * 1024,
    };
    let standbys = if !f.in_recovery && i.now_ms - i.shared.standbys.written_ms < STANDBYS_FRESH_MS {
        i.shared.standbys.rows().iter().map(|r| (r.member, *r)).collect()
    } else {
        BTreeMap::new()
    };
    let mut ids: Vec<u64> = st.voters.iter().chain(st.learners.iter()).copied().collect();
    ids.sort_unstable();
    let members = ids
        .into_iter()
        .map(|id| MemberReport {
            id,
            raft_state: if id == st.id {
                st.role.as_str().to_ascii_lowercase()
            } else if id == st.leader_id {
                "leader".into()
            } else if st.learners.contains(&id) {
                "learner".into()
            } else {
                "follower".into()
            },
            raft_address: i.addresses.get(&id).cloned(),
            server: ha.servers.get(&id).map(|s| format!("{}:{}", s.host, s.port)),
            role: match (&ha.primary, ha.servers.contains_key(&id)) {
                (Some(p), _) if p.node == id => Some("primary".into()),
                (_, true) => Some("standby".into()),
                _ => None,
            },
            problem: ha.unhealthy.get(&id).cloned(),
            position_lsn: ha.positions.get(&id).copied(),
            standby: standbys.get(&id).map(|r: &crate::shmem::StandbyRow| StandbyReport {
                state: r.state().into(),
                flushed_lsn: r.flushed,
                replayed_lsn: r.replayed,
                lag_bytes: f.replayed.saturating_sub(r.flushed),
                sync_state: r.sync_state().into(),
            }),
            last_heard_ms_ago: (id != st.id)
                .then(|| st.last_heard_ms.get(&id).map(|t| (i.now_ms - t).max(0)))
                .flatten(),
        })
        .collect();
    HealthReport {
        member: st.id,
        at_ms: i.now_ms,
        raft: RaftReport {
            role: st.role.as_str().to_ascii_lowercase(),
            term: st.term,
            leader: st.leader_id,
            commit: st.commit,
            applied: st.applied,
            quorum: st.quorum_active,
            lease_until_ms: crate::ha::reconciler::lease_until(st, i.election_timeout_ms, i.now_ms, true),
        },
        server: Some(server),
        ha: HaReport {
            failover_enabled: gucs::effective_failover(&i.view.config),
            primary: ha.primary.as_ref().map(|p| p.node),
            primary_term: ha.primary.as_ref().map(|p| p.term),
            gate: gate.into(),
            note: Some(i.shared.ha_note.as_str().to_string()).filter(|n| !n.is_empty()),
            max_lag_bytes: max_lag,
            synchronous_mode: gucs::string(&gucs::SYNCHRONOUS_MODE),
            promotions: ha.promotions,
        },
        members,
    }
}
