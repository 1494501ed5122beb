//! The background worker: it hosts the Raft member, serves sessions on `pg_stat_tmp/pgraft.sock`, and
//! publishes cheap facts in shared memory.
//!
//! ```text
//!  postmaster ── starts ──▶ worker main thread (PostgreSQL's): latch loop every 50 ms
//!                            │  publishes status to shared memory, reloads on SIGHUP,
//!                            │  logs for the other threads, runs pgraft_init's bootstrap
//!                            ├─▶ pgraft-core Node: Raft thread + network threads
//!                            └─▶ IPC runtime: pg_stat_tmp/pgraft.sock ▶ NodeHandle
//! ```
//!
//! Only the main thread calls into PostgreSQL. Every other thread starts with all signals
//! blocked and talks to the main thread through channels.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgraft_core::config::{parse_initial_cluster, Timing};
use pgraft_core::ipc::{read_message, write_message, SOCKET_PATH};
use pgraft_core::metrics::OpMetrics;
use pgraft_core::request::{Request, Response};
use pgraft_core::transport::{ClusterSecret, TlsFiles};
use pgraft_core::{Bootstrap, MemberConfig, Node, NodeConfig, NodeHandle, Role};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::gucs;
use crate::http_endpoint::{build_report, HttpEndpoint, ReportInputs};
use crate::protocol::{EntryView, IpcRequest, IpcResponse, StatusReport};
use crate::shmem::{self, WorkerShared, WorkerState};

type InitReply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// Log records from the worker's threads, emitted by the main thread.
struct ChannelLogger {
    tx: Mutex<Sender<(log::Level, String)>>,
}

impl log::Log for ChannelLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = self.tx.lock().map(|tx| tx.send((r.level(), format!("{}", r.args()))));
        }
    }

    fn flush(&self) {}
}

/// `pgraft.log_level` as a `log` filter.
pub fn level_filter(name: &str) -> log::LevelFilter {
    match name.to_ascii_lowercase().as_str() {
        "debug" => log::LevelFilter::Debug,
        "notice" | "info" => log::LevelFilter::Info,
        "warning" => log::LevelFilter::Warn,
        "error" => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    }
}

/// The settings the node is started with, read from the GUCs.
struct Settings {
    node: NodeConfig,
    advertised: String,
    bootstrap_node: u64,
    static_cluster: bool,
}

fn data_directory() -> PathBuf {
    // SAFETY: DataDir is set by the postmaster before any worker starts and never freed.
    let dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(dir.to_string_lossy().into_owned())
}

/// `pgraft.data_dir`, or `PGDATA/pgraft` when it is not set: the member's own files (the
/// rejoin helper's among them).
pub(crate) fn raft_dir() -> PathBuf {
    match gucs::string(&gucs::DATA_DIR) {
        s if s.is_empty() => data_directory().join("pgraft"),
        s => PathBuf::from(s),
    }
}

fn settings() -> Result<Settings, String> {
    let cluster_id = gucs::string(&gucs::CLUSTER_ID);
    let node_id =
        u64::try_from(gucs::NODE_ID.get()).map_err(|_| "pgraft.node_id must be positive".to_string())?;
    let address = gucs::string(&gucs::ADDRESS);
    let port = u16::try_from(gucs::PORT.get()).map_err(|_| "pgraft.port is out of range".to_string())?;
    let listen_host = listen_host();
    let listen: SocketAddr = (listen_host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("pgraft.listen_address/pgraft.address {listen_host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{listen_host:?} resolves to no address"))?;
    let data_dir = raft_dir();
    let tls = if gucs::SSL_ENABLED.get() {
        let (cert, key, ca) = (
            gucs::string(&gucs::SSL_CERT_FILE),
            gucs::string(&gucs::SSL_KEY_FILE),
            gucs::string(&gucs::SSL_CA_FILE),
        );
        if cert.is_empty() || key.is_empty() || ca.is_empty() {
            return Err("pgraft.ssl_enabled is on, but pgraft.ssl_cert_file, ssl_key_file and ssl_ca_file are not all set".into());
        }
        Some(TlsFiles { cert: cert.into(), key: key.into(), ca: ca.into() })
    } else {
        None
    };
    let secret = cluster_secret()?;
    if peer_authentication().1 {
        log::warn!(
            "peers are not authenticated: this member listens on {listen} beyond loopback with neither \
             pgraft.ssl_enabled nor pgraft.cluster_secret; anyone who reaches the port can speak as a member"
        );
    }
    let initial = parse_initial_cluster(&gucs::string(&gucs::INITIAL_CLUSTER)).map_err(|e| e.0)?;
    let static_cluster = !initial.is_empty();
    let bootstrap = if static_cluster {
        Bootstrap::Static(initial.iter().map(|m| (m.node_id, host_port(&m.host, m.port))).collect())
    } else {
        Bootstrap::Join
    };
    let timing = Timing {
        election_timeout_ms: gucs::ELECTION_TIMEOUT.get() as u64,
        heartbeat_interval_ms: gucs::HEARTBEAT_INTERVAL.get() as u64,
    };
    timing.validate().map_err(|e| e.0)?;
    // Settings saved with pgraft_save_config() override postgresql.conf from the start.
    let saved = load_saved_config(&data_dir)?;
    let ms = |name: &str, d: u64| {
        saved.get(name).and_then(|v| pgraft_core::config::parse_duration_ms(v).ok()).unwrap_or(d)
    };
    let saved_timing = Timing {
        election_timeout_ms: ms("election_timeout", timing.election_timeout_ms),
        heartbeat_interval_ms: ms("heartbeat_interval", timing.heartbeat_interval_ms),
    };
    let timing = if saved_timing.validate().is_ok() { saved_timing } else { timing };
    if let Some(level) = saved.get("log_level") {
        log::set_max_level(level_filter(level));
    }
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id());
    let source_ip: Option<IpAddr> = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
    let advertised = host_port(&address, port);
    Ok(Settings {
        node: NodeConfig {
            member: MemberConfig::new(node_id, cluster_id, incarnation),
            data_dir,
            listen,
            advertise: advertised.clone(),
            source_ip,
            tls,
            secret,
            timing,
            bootstrap,
        },
        advertised,
        bootstrap_node: gucs::BOOTSTRAP_NODE.get() as u64,
        static_cluster,
    })
}

/// The cluster secret, from `pgraft.cluster_secret_file` (its first line) or
/// `pgraft.cluster_secret`; `None` when neither is set. Never printed.
fn cluster_secret() -> Result<Option<ClusterSecret>, String> {
    let file = gucs::string(&gucs::CLUSTER_SECRET_FILE);
    let text = if file.is_empty() {
        gucs::string(&gucs::CLUSTER_SECRET)
    } else {
        let all =
            std::fs::read_to_string(&file).map_err(|e| format!("pgraft.cluster_secret_file {file}: {e}"))?;
        let line = all.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(format!("pgraft.cluster_secret_file {file}: its first line is empty"));
        }
        line
    };
    if text.is_empty() {
        return Ok(None);
    }
    ClusterSecret::new(text.as_bytes()).map(Some).map_err(|e| format!("pgraft.cluster_secret: {e}"))
}

/// How peers prove who they are to this member, for `pgraft_health_check()` and
/// `pgraft.auth_status`: `tls` (certificates naming node ids), `cluster secret`, both, or
/// `none`; and whether that is a risk (none, beyond loopback).
pub fn peer_authentication() -> (String, bool) {
    let tls = gucs::SSL_ENABLED.get();
    let secret = !gucs::string(&gucs::CLUSTER_SECRET_FILE).is_empty()
        || !gucs::string(&gucs::CLUSTER_SECRET).is_empty();
    let method = match (tls, secret) {
        (true, true) => "tls and cluster secret",
        (true, false) => "tls",
        (false, true) => "cluster secret",
        (false, false) => "none",
    };
    let loopback = (listen_host().as_str(), 0)
        .to_socket_addrs()
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    (method.to_string(), method == "none" && !loopback)
}

/// Where this member listens for peers: `pgraft.listen_address`, else `pgraft.address`.
fn listen_host() -> String {
    match gucs::string(&gucs::LISTEN_ADDRESS) {
        s if s.is_empty() => gucs::string(&gucs::ADDRESS),
        s => s,
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The worker's entry point, registered in `_PG_init`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgraft_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    shmem::update(|s| {
        *s = WorkerShared {
            state: WorkerState::Initializing,
            pid: std::process::id() as i32,
            // Sessions a previous worker let in may still be open.
            was_open: s.was_open,
            ..Default::default()
        }
    });
    let (log_tx, log_rx) = channel();
    if log::set_boxed_logger(Box::new(ChannelLogger { tx: Mutex::new(log_tx) })).is_ok() {
        log::set_max_level(level_filter(&gucs::string(&gucs::LOG_LEVEL)));
    }
    let mut worker = match Worker::start() {
        Ok(w) => w,
        Err(e) => {
            let reason = format!("the worker cannot start: {e}");
            shmem::update(|s| {
                s.state = WorkerState::Error;
                s.error = shmem::ErrorText::new(&reason);
            });
            pgrx::warning!("pgraft: {reason}");
            // Stay up and idle, so the postmaster does not restart us in a loop; the
            // reason is in the log and pgraft_get_worker_state() says "error".
            while BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
                drain_logs(&log_rx);
            }
            return;
        }
    };
    pgrx::log!(
        "pgraft: node {} of cluster {:?} listening on {}",
        worker.settings.node.member.id,
        worker.settings.node.member.cluster_id,
        worker.settings.node.listen
    );
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(50))) {
        drain_logs(&log_rx);
        if BackgroundWorker::sighup_received() {
            worker.reload();
        }
        worker.serve_inits();
        if let Some(fatal) = worker.publish() {
            let reason = format!("the Raft member stopped: {fatal}");
            shmem::update(|s| {
                s.state = WorkerState::Error;
                s.error = shmem::ErrorText::new(&reason);
            });
            drain_logs(&log_rx);
            // Exit non-zero: the postmaster restarts the worker, which recovers from disk.
            pgrx::warning!("pgraft: the Raft member stopped: {fatal}; the worker restarts");
            std::process::exit(1);
        }
    }
    worker.stop();
    drain_logs(&log_rx);
    shmem::update(|s| *s = WorkerShared::default());
    pgrx::log!("pgraft: worker stopped");
}

fn drain_logs(rx: &Receiver<(log::Level, String)>) {
    while let Ok((level, msg)) = rx.try_recv() {
        match level {
            log::Level::Error | log::Level::Warn => pgrx::warning!("pgraft: {msg}"),
            log::Level::Info => pgrx::log!("pgraft: {msg}"),
            log::Level::Debug | log::Level::Trace => pgrx::debug1!("pgraft: {msg}"),
        }
    }
}

struct Worker {
    settings: Settings,
    last_config_check: std::time::Instant,
    node: Option<Node>,
    current: Arc<Mutex<Option<NodeHandle>>>,
    inits: Receiver<InitReply>,
    ipc: Option<tokio::runtime::Runtime>,
    failover: crate::ha::reconciler::Reconciler,
    /// The HTTP endpoints, when `pgraft.http_port` is set.
    http: Option<HttpEndpoint>,
}

impl Worker {
    fn start() -> Result<Worker, String> {
        let settings = settings()?;
        let node = Node::start(settings.node.clone()).map_err(|e| e.to_string())?;
        let current = Arc::new(Mutex::new(Some(node.handle())));
        let (init_tx, inits) = channel();
        let socket = data_directory().join(SOCKET_PATH);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&socket);
        // An older release listened in the data directory itself.
        let _ = std::fs::remove_file(data_directory().join(pgraft_core::ipc::SOCKET_NAME));
        let runtime = pgraft_core::node::with_signals_blocked(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("pgraft-ipc")
                .on_thread_start(|| {
                    pgraft_core::thread_slice::ask_for_short_slices();
                })
                .enable_all()
                .build()
        })
        .map_err(|e| format!("start the session runtime: {e}"))?;
        let listener = {
            let _g = runtime.enter();
            tokio::net::UnixListener::bind(&socket)
                .map_err(|e| format!("listen on {}: {e}", socket.display()))?
        };
        let ops = Arc::new(OpMetrics::default());
        let ctx = Arc::new(Ctx {
            current: Arc::clone(&current),
            inits: Mutex::new(init_tx),
            data_dir: settings.node.data_dir.clone(),
            ops: Arc::clone(&ops),
        });
        runtime.spawn(serve_sessions(listener, ctx));
        // A bad HTTP setting (or a port in use) costs the endpoints, not the member: a load
        // balancer that cannot reach them counts this server as down, which is safe.
        let http =
            match HttpEndpoint::start(&runtime, Arc::clone(&current), ops, settings.node.data_dir.clone()) {
                Ok(Some(h)) => {
                    log::info!("HTTP endpoints on {}", h.local_addr);
                    Some(h)
                }
                Ok(None) => None,
                Err(e) => {
                    log::warn!("the HTTP endpoints are not served: {e}");
                    None
                }
            };
        shmem::update(|s| s.state = WorkerState::Running);
        let failover =
            crate::ha::reconciler::Reconciler::new(data_directory(), settings.node.data_dir.clone());
        Ok(Worker {
            settings,
            last_config_check: std::time::Instant::now(),
            node: Some(node),
            current,
            inits,
            ipc: Some(runtime),
            failover,
            http,
        })
    }

    fn handle(&self) -> Option<NodeHandle> {
        self.node.as_ref().map(Node::handle)
    }

    /// SIGHUP: re-read the configuration; timing and log level apply at once.
    fn reload(&mut self) {
        // SAFETY: called on the main thread of a background worker, as PostgreSQL does.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        log::set_max_level(level_filter(&gucs::string(&gucs::LOG_LEVEL)));
        let t = Timing {
            election_timeout_ms: gucs::ELECTION_TIMEOUT.get() as u64,
            heartbeat_interval_ms: gucs::HEARTBEAT_INTERVAL.get() as u64,
        };
        match self.handle().map(|h| h.set_timing(t)) {
            Some(Err(e)) => pgrx::warning!("pgraft: new timing not applied: {e}"),
            _ => pgrx::log!("pgraft: configuration reloaded"),
        }
    }

    /// Runs pending `pgraft_init()` requests (they may restart the node).
    fn serve_inits(&mut self) {
        while let Ok(reply) = self.inits.try_recv() {
            let r = self.init();
            let _ = reply.send(r);
        }
    }

    fn init(&mut self) -> Result<String, String> {
        let id = self.settings.node.member.id;
        if self.settings.static_cluster {
            return Ok(format!("node {id} was started from pgraft.initial_cluster"));
        }
        let status = self.handle().and_then(|h| h.status());
        let members = status.as_ref().map_or(0, |s| s.voters.len() + s.learners.len());
        if members > 0 {
            return Ok(format!("node {id} is already a member of a cluster of {members}"));
        }
        if id != self.settings.bootstrap_node {
            return Ok(format!("node {id} is ready; add it on the leader with pgraft_add_node({id}, ...)"));
        }
        // Found the one-member cluster: restart the node on a bootstrapped store.
        if let Some(n) = self.node.take() {
            n.stop();
        }
        let mut cfg = self.settings.node.clone();
        cfg.bootstrap = Bootstrap::Single { address: self.settings.advertised.clone() };
        let node = Node::start(cfg).map_err(|e| e.to_string())?;
        *self.current.lock().map_err(|_| "lock poisoned".to_string())? = Some(node.handle());
        self.node = Some(node);
        Ok(format!("node {id} founded a one-member cluster at {}", self.settings.advertised))
    }

    /// Copies the member's status to shared memory; returns the member's fatal error if it
    /// stopped.
    fn publish(&mut self) -> Option<String> {
        let h = self.handle()?;
        if self.last_config_check.elapsed() >= Duration::from_secs(1) {
            self.last_config_check = std::time::Instant::now();
            if let Ok(Some(level)) = h.inspect_blocking(|m| m.state().config.get("log_level").cloned()) {
                log::set_max_level(level_filter(&level));
            }
        }
        if !h.is_running() {
            return Some(h.fatal_error().unwrap_or_else(|| "stopped".into()));
        }
        let st = h.status()?;
        if let Some(rt) = &self.ipc {
            self.failover.tick(&h, &st, rt);
        }
        // The report reads the server as the failover loop read it in this pass.
        if let (Some(http), Some(view), Some(facts)) = (&self.http, h.ha_view(), self.failover.last_facts()) {
            let timing = gucs::effective_timing(&view.config);
            let report = build_report(&ReportInputs {
                status: &st,
                view: &view,
                facts,
                shared: &shmem::read(),
                problem: self.failover.last_health(),
                addresses: &h.addresses(),
                election_timeout_ms: timing.election_timeout_ms,
                now_ms: now_ms(),
            });
            http.publish(report, self.failover.promotions(), timing.election_timeout_ms);
        }
        shmem::update(|s| {
            s.state = WorkerState::Running;
            s.is_leader = st.role == Role::Leader;
            s.term = st.term;
            s.leader_id = st.leader_id;
            s.commit = st.commit;
            s.applied = st.applied;
            s.last_index = st.last_index;
            s.voters = st.voters.len() as u32;
            s.quorum = st.quorum_active;
            s.updated_ms = now_ms();
        });
        None
    }

    fn stop(&mut self) {
        self.http = None;
        if let Some(rt) = self.ipc.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        if let Some(n) = self.node.take() {
            n.stop();
        }
        let _ = std::fs::remove_file(data_directory().join(SOCKET_PATH));
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Ctx {
    current: Arc<Mutex<Option<NodeHandle>>>,
    inits: Mutex<Sender<InitReply>>,
    data_dir: PathBuf,
    /// Requests answered, by kind, for `/metrics`.
    ops: Arc<OpMetrics>,
}

impl Ctx {
    fn node(&self) -> Option<NodeHandle> {
        self.current.lock().ok().and_then(|g| g.clone())
    }
}

async fn serve_sessions(listener: tokio::net::UnixListener, ctx: Arc<Ctx>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            while let Ok(Some(req)) = read_message::<IpcRequest, _>(&mut s).await {
                let resp = answer(req, &ctx).await;
                if write_message(&mut s, &resp).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn answer(req: IpcRequest, ctx: &Ctx) -> IpcResponse {
    let Some(node) = ctx.node() else { return IpcResponse::Failed("the Raft member is restarting".into()) };
    match req {
        IpcRequest::Call { req, timeout_ms } => {
            let (kind, started) = (req.kind(), std::time::Instant::now());
            let r = node.call(req, Duration::from_millis(timeout_ms)).await;
            ctx.ops.record(kind, r.is_ok(), started.elapsed());
            IpcResponse::Raft(r)
        }
        IpcRequest::Init => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if ctx.inits.lock().map(|s| s.send(tx)).is_err() {
                return IpcResponse::Failed("the worker's main loop is gone".into());
            }
            match rx.await {
                Ok(r) => IpcResponse::Init(r),
                Err(_) => IpcResponse::Failed("the worker's main loop is gone".into()),
            }
        }
        IpcRequest::Status => {
            let Some(member) = node.status() else {
                return IpcResponse::Failed("the Raft member has not reported yet".into());
            };
            let cluster_config = node.inspect(|m| m.state().config.clone()).await.unwrap_or_default();
            let disk_bytes = dir_size(&ctx.data_dir, 1);
            let log_disk_bytes = dir_size(&ctx.data_dir.join(pgraft_core::storage::LOG_DIR), 0);
            IpcResponse::Status(Box::new(StatusReport {
                member,
                addresses: node.addresses(),
                refused_connections: node.refused_connections(),
                disk_bytes,
                log_disk_bytes,
                cluster_config,
                ha: node.ha_view().map(|v| v.ha).unwrap_or_default(),
                now_ms: now_ms(),
            }))
        }
        IpcRequest::History { limit } => {
            match node
                .inspect(move |m| m.state().history.iter().rev().take(limit as usize).cloned().collect())
                .await
            {
                Ok(h) => IpcResponse::History(h),
                Err(e) => IpcResponse::Failed(e.to_string()),
            }
        }
        IpcRequest::Entry { index } => match node.inspect(move |m| m.entry(index)).await {
            Ok(Ok(e)) => IpcResponse::Entry(e.map(|e| EntryView {
                index: e.index,
                term: e.term,
                text: describe_entry(&e),
            })),
            Ok(Err(e)) => IpcResponse::Failed(e.to_string()),
            Err(e) => IpcResponse::Failed(e.to_string()),
        },
        // The snapshot is encoded and written on the member's snapshot thread; the answer
        // comes once it is durable and the log is compacted behind it.
        IpcRequest::CompactLog => match node.call(Request::CompactLog, COMPACT_TIMEOUT).await {
            Ok(Response::Reached(i)) => IpcResponse::Compacted(i),
            Ok(other) => IpcResponse::Failed(format!("unexpected answer to a compaction: {other:?}")),
            Err(e) => IpcResponse::Failed(e.to_string()),
        },
        IpcRequest::SetLogLevel(level) => {
            log::set_max_level(level_filter(&level));
            IpcResponse::Done
        }
        IpcRequest::SaveConfig => match node.inspect(|m| m.state().config.clone()).await {
            Ok(cfg) => match save_config(&ctx.data_dir, &cfg) {
                Ok(()) => IpcResponse::Done,
                Err(e) => IpcResponse::Failed(format!("saving the settings failed: {e}")),
            },
            Err(e) => IpcResponse::Failed(e.to_string()),
        },
        IpcRequest::SavedConfig => IpcResponse::Config(load_saved_config(&ctx.data_dir).unwrap_or_default()),
    }
}

const SAVED_CONFIG: &str = "saved_config.json";

/// How long `pgraft_kv_compact()` waits for its snapshot to be written (the session's
/// statement_timeout and cancel end it sooner).
const COMPACT_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes the settings crash-safely: a temporary file, fsync, rename, fsync the directory.
fn save_config(
    dir: &std::path::Path,
    cfg: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{SAVED_CONFIG}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(cfg).map_err(std::io::Error::other)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SAVED_CONFIG))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The settings saved by `pgraft_save_config()`, if any.
pub fn load_saved_config(
    dir: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    match std::fs::read_to_string(dir.join(SAVED_CONFIG)) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", dir.join(SAVED_CONFIG).display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// A replicated entry's data as text; any other entry as a JSON description.
fn describe_entry(e: &raft::prelude::Entry) -> String {
    use pgraft_core::command::{Body, Proposal};
    if e.get_entry_type() != raft::prelude::EntryType::EntryNormal {
        return serde_json::json!({ "type": "membership change" }).to_string();
    }
    if e.data.is_empty() {
        return serde_json::json!({ "type": "leader no-op" }).to_string();
    }
    match Proposal::decode(&e.data) {
        Ok(Proposal { body: Body::Raw(bytes), .. }) => String::from_utf8_lossy(&bytes).into_owned(),
        // What and where, not the value (which may be megabytes).
        Ok(Proposal { body: Body::Kv(op), .. }) => {
            serde_json::json!({ "type": op.name(), "key": op.target() }).to_string()
        }
        Ok(Proposal { body: Body::SetConfig { name, value }, .. }) => {
            serde_json::json!({ "type": "set_config", "name": name, "value": value }).to_string()
        }
        Ok(p) => serde_json::json!({ "type": p.body.name() }).to_string(),
        Err(err) => serde_json::json!({ "type": "undecodable", "error": err.to_string() }).to_string(),
    }
}

/// Bytes of the files under `dir`, `depth` directory levels down (0: its own files).
pub(crate) fn dir_size(dir: &std::path::Path, depth: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() && depth > 0 => dir_size(&e.path(), depth - 1),
            _ => 0,
        })
        .sum()
}
