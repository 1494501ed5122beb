//! The runtime of one member: a thread that owns the [`Member`] and drives it with a real
//! clock, and a small tokio runtime for the transport.
//!
//! ```text
//!   NodeHandle::call ──┐                       ┌──▶ Transport::send (non-blocking)
//!   transport inbound ─┼─▶ input channel ──▶ member thread: tick / step / submit /
//!   set_timing ────────┤                     process_ready ──▶ replies (oneshot)
//!   snapshot done ─────┘                          └──▶ snapshot thread: encode, write
//! ```
//!
//! The snapshot thread encodes and writes state machine images, so a snapshot never
//! stops the member thread for longer than it takes to clone the state (persistent
//! structures: constant time) and to record the written image.
//!
//! One tick source: the member thread. A leader ticks every heartbeat interval; anyone
//! else every election timeout / election_tick, so both timeouts follow the configured
//! milliseconds and can change at run time without restarting raft.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft::prelude::Message;

use crate::config::Timing;
use crate::error::{Error, Result};
use crate::member::{Member, MemberConfig, MemberStatus, Role, Token};
use crate::metrics::Histogram;
use crate::request::{Request, Response};
use crate::snapshot_job::{SnapshotDone, SnapshotJob};
use crate::storage::SegmentStore;
use crate::transport::{ClusterSecret, Inbound, Tls, TlsFiles, Transport, TransportConfig};

/// How a new member's storage is initialised on its first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Start empty and wait to be added by a leader (never campaigns until then).
    Join,
    /// Found a one-member cluster of this member, at `address`.
    Single {
        /// This member's advertised `host:port`.
        address: String,
    },
    /// Found a cluster of these members (etcd's initial-cluster); every member must be
    /// given the same list.
    Static(Vec<(u64, String)>),
}

/// Everything a node needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The member's identity and raft settings.
    pub member: MemberConfig,
    /// Where its storage lives.
    pub data_dir: PathBuf,
    /// Where the Raft listener binds.
    pub listen: SocketAddr,
    /// Where peers reach this member (`host:port`); may differ from `listen` behind NAT
    /// or a proxy.
    pub advertise: String,
    /// The source address of outgoing peer connections.
    pub source_ip: Option<IpAddr>,
    /// Mutual TLS files, when TLS is on.
    pub tls: Option<TlsFiles>,
    /// The cluster secret every connection proves both ways (see
    /// `transport/peer_auth.rs`), when set.
    pub secret: Option<ClusterSecret>,
    /// Election timeout and heartbeat interval.
    pub timing: Timing,
    /// First-start initialisation.
    pub bootstrap: Bootstrap,
}

type Reply = tokio::sync::oneshot::Sender<Result<Response>>;
type Inspector = Box<dyn FnOnce(&mut Member<SegmentStore>) + Send>;

enum Input {
    Net(Inbound),
    Call {
        req: Request,
        deadline: Instant,
        reply: Reply,
    },
    Timing(Timing),
    Inspect(Inspector),
    SnapshotDone(SnapshotDone),
    /// The log's I/O thread made a write durable.
    Persisted,
    Stop,
}

/// State shared with callers without a round trip to the member thread.
#[derive(Default)]
pub struct Shared {
    status: Mutex<Option<MemberStatus>>,
    fatal: Mutex<Option<String>>,
    running: AtomicBool,
    /// The host says its server cannot serve: campaigns wait (see `Member::hold_campaigns`).
    campaign_held: AtomicBool,
    addresses: Mutex<BTreeMap<u64, String>>,
    transport: Mutex<Option<Arc<crate::transport::TransportStats>>>,
    ha: Mutex<Option<HaView>>,
    /// When the status was last published, ms since the Unix epoch.
    status_ms: AtomicI64,
    /// The storage's commit latencies.
    syncs: Mutex<Option<Arc<Mutex<Histogram>>>>,
    /// The KV store's sizes as of the last publish.
    kv: Mutex<KvGauges>,
}

/// The KV store's figures that cost nothing to read, as of the last applied entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvGauges {
    /// The revision of the last change.
    pub revision: u64,
    /// The revision compacted up to.
    pub compact_revision: u64,
    /// Keys with any revision held (see `KvStore::keys_held`).
    pub keys_held: u64,
}

/// The replicated state failover acts on, as of the last applied entry: the HA state and
/// the cluster-wide settings. Published with the status, so the worker reads it without
/// waiting for the member thread (which may be the thing that is stuck).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaView {
    /// The HA state.
    pub ha: crate::ha::HaState,
    /// Settings changed with `pgraft_set_config`, name -> value.
    pub config: BTreeMap<String, String>,
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Input>,
    shared: Arc<Shared>,
}

/// A running node. Dropping it stops it.
pub struct Node {
    handle: NodeHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The address the listener actually bound.
    pub local_addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs `f` with every signal blocked in this thread, so that threads it spawns start
/// with all signals blocked and the host process's handlers (PostgreSQL's latch, SIGTERM,
/// SIGHUP) only ever run on its own main thread.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigfillset/pthread_sigmask on properly sized, initialised sigset_t values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

impl Node {
    /// Opens the storage, initialises it on first start, binds the listener and starts the
    /// member thread.
    pub fn start(cfg: NodeConfig) -> Result<Node> {
        cfg.timing.validate().map_err(|e| Error::InvalidArgument(e.0))?;
        let mut store = SegmentStore::open(&cfg.data_dir)?;
        let syncs = store.sync_latency();
        match &cfg.bootstrap {
            Bootstrap::Join => {}
            Bootstrap::Single { address } => {
                Member::bootstrap(&mut store, &[(cfg.member.id, address.clone())])?;
            }
            Bootstrap::Static(list) => {
                if !list.iter().any(|(id, _)| *id == cfg.member.id) {
                    return Err(Error::InvalidArgument(format!(
                        "the initial member list does not contain this member (node {})",
                        cfg.member.id
                    )));
                }
                Member::bootstrap(&mut store, list)?;
            }
        }
        let tls = match &cfg.tls {
            Some(files) => Some(Tls::load(files).map_err(|e| Error::InvalidArgument(e.to_string()))?),
            None => None,
        };
        let (tx, rx) = channel::<Input>();
        let mut member = Member::new(cfg.member.clone(), store, &crate::logger::raft_logger())?;
        // When a write became durable, the log's I/O thread sends the answers that waited
        // for it (once the transport is up, below) and wakes the Raft thread.
        let held = member.held_messages();
        let waker_held = Arc::clone(&held);
        let waker_tx = Mutex::new(tx.clone());
        member.set_log_waker(Arc::new(move |durable| {
            if let Some(n) = durable {
                waker_held.durable(n);
            }
            let _ = lock(&waker_tx).send(Input::Persisted);
        }));
        let shared = Arc::new(Shared::default());
        *lock(&shared.syncs) = Some(syncs);
        let handle = NodeHandle { tx: tx.clone(), shared: Arc::clone(&shared) };
        let (runtime, thread, local_addr) = with_signals_blocked(|| -> Result<_> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("pgraft-net")
                .on_thread_start(|| {
                    crate::thread_slice::ask_for_short_slices();
                })
                .enable_all()
                .build()
                .map_err(|e| Error::Storage(format!("start the network runtime: {e}")))?;
            let sink_tx = std::sync::Mutex::new(tx.clone());
            let sink: crate::transport::InboundSink = Arc::new(move |ev| {
                let _ = lock(&sink_tx).send(Input::Net(ev));
            });
            let mut tcfg = TransportConfig::new(cfg.member.id, cfg.member.cluster_id.clone(), cfg.listen);
            tcfg.source_ip = cfg.source_ip;
            tcfg.advertise = cfg.advertise.clone();
            tcfg.tls = tls;
            tcfg.secret = cfg.secret.clone();
            let transport = Transport::start(tcfg, sink, runtime.handle().clone())
                .map_err(|e| Error::InvalidArgument(format!("listen on {}: {e}", cfg.listen)))?;
            let transport = Arc::new(transport);
            let theirs = Arc::clone(&transport);
            held.set_sender(Arc::new(move |m| theirs.send(m)));
            let local_addr = transport.local_addr;
            *lock(&shared.transport) = Some(Arc::clone(&transport.stats));
            let timing = cfg.timing;
            let shared2 = Arc::clone(&shared);
            let snapshots = start_snapshot_thread(tx.clone())?;
            shared.running.store(true, Ordering::SeqCst);
            let thread = std::thread::Builder::new()
                .name("pgraft-raft".into())
                .spawn(move || {
                    if !crate::thread_slice::ask_for_short_slices() {
                        log::debug!("the scheduler did not take a short slice for the Raft thread");
                    }
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_loop(member, transport, rx, timing, &shared2, &snapshots)
                    }));
                    let fatal = match result {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(p) => Some(format!(
                            "the Raft thread panicked: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default()
                        )),
                    };
                    if let Some(f) = &fatal {
                        log::error!("{f}");
                    }
                    *lock(&shared2.fatal) = fatal;
                    shared2.running.store(false, Ordering::SeqCst);
                })
                .map_err(|e| Error::Storage(format!("start the Raft thread: {e}")))?;
            Ok((runtime, thread, local_addr))
        })?;
        Ok(Node { handle, thread: Some(thread), runtime: Some(runtime), local_addr })
    }

    /// A handle for requests.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the member thread and the network, and waits for both.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.handle.tx.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl NodeHandle {
    /// Holds this member's election campaigns back while `hold` (its server cannot serve),
    /// so members whose servers can win first; see `Member::hold_campaigns`.
    pub fn hold_campaigns(&self, hold: bool) {
        self.shared.campaign_held.store(hold, Ordering::Relaxed);
    }

    /// Whether the member thread runs.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Why the member stopped, if it failed.
    pub fn fatal_error(&self) -> Option<String> {
        lock(&self.shared.fatal).clone()
    }

    /// The member's latest status (refreshed by the member thread every few ms).
    pub fn status(&self) -> Option<MemberStatus> {
        lock(&self.shared.status).clone()
    }

    /// The replicated HA state and settings as last published (none before the member
    /// first reported).
    pub fn ha_view(&self) -> Option<HaView> {
        lock(&self.shared.ha).clone()
    }

    /// Peer connections refused (TLS, handshake or frame errors) since the start.
    pub fn refused_connections(&self) -> u64 {
        lock(&self.shared.transport).as_ref().map_or(0, |s| s.refused.load(Ordering::Relaxed))
    }

    /// The members' addresses as replicated.
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        lock(&self.shared.addresses).clone()
    }

    /// When the status was last published (ms since the Unix epoch; 0: never): a Raft
    /// thread that stopped stops moving it.
    pub fn status_ms(&self) -> i64 {
        self.shared.status_ms.load(Ordering::Relaxed)
    }

    /// The storage's commit latencies so far.
    pub fn sync_latency(&self) -> Histogram {
        lock(&self.shared.syncs).as_ref().map(|h| *lock(h)).unwrap_or_default()
    }

    /// The KV store's sizes as of the last publish.
    pub fn kv_gauges(&self) -> KvGauges {
        *lock(&self.shared.kv)
    }

    /// The transport's message counters (None before it started).
    pub fn transport_stats(&self) -> Option<Arc<crate::transport::TransportStats>> {
        lock(&self.shared.transport).clone()
    }

    fn stopped(&self) -> Error {
        match self.fatal_error() {
            Some(f) => Error::Storage(f),
            None => Error::Stopped,
        }
    }

    /// Queues a request for the member thread; the receiver gets its answer.
    fn send_call(
        &self,
        req: Request,
        timeout: Duration,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Response>>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.tx.send(Input::Call { req, deadline, reply }).map_err(|_| self.stopped())?;
        Ok(rx)
    }

    /// Sends a request and waits for its answer, at most `timeout`.
    pub async fn call(&self, req: Request, timeout: Duration) -> Result<Response> {
        let rx = self.send_call(req, timeout)?;
        // The member thread answers every request by its deadline; the margin covers a
        // member thread that died meanwhile.
        match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// [`NodeHandle::call`] for threads outside any async runtime.
    pub fn call_blocking(&self, req: Request, timeout: Duration) -> Result<Response> {
        self.send_call(req, timeout)?.blocking_recv().map_err(|_| self.stopped())?
    }

    /// Queues `f` for the member thread; the receiver gets its result.
    fn send_inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Member<SegmentStore>) -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Inspector = Box::new(move |m| {
            let _ = tx.send(f(m));
        });
        self.tx.send(Input::Inspect(job)).map_err(|_| self.stopped())?;
        Ok(rx)
    }

    /// Runs `f` on the member thread with the member, and returns its result.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Member<SegmentStore>) -> T + Send + 'static,
    ) -> Result<T> {
        self.send_inspect(f)?.await.map_err(|_| self.stopped())
    }

    /// [`NodeHandle::inspect`] for threads outside any async runtime.
    pub fn inspect_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Member<SegmentStore>) -> T + Send + 'static,
    ) -> Result<T> {
        self.send_inspect(f)?.blocking_recv().map_err(|_| self.stopped())
    }

    /// Changes the election timeout and heartbeat interval of this member now.
    pub fn set_timing(&self, t: Timing) -> Result<()> {
        t.validate().map_err(|e| Error::InvalidArgument(e.0))?;
        self.tx.send(Input::Timing(t)).map_err(|_| self.stopped())
    }
}

/// Starts the thread that runs snapshot jobs and hands their results back to the member
/// thread. It ends when the member thread drops the job sender.
fn start_snapshot_thread(done: Sender<Input>) -> Result<Sender<SnapshotJob>> {
    let (tx, rx) = channel::<SnapshotJob>();
    std::thread::Builder::new()
        .name("pgraft-snapshot".into())
        .spawn(move || {
            for job in rx {
                let result = job.run();
                log::info!(
                    "snapshot at index {}: {} bytes written in {} ms",
                    result.index(),
                    result.len(),
                    result.elapsed.as_millis()
                );
                if done.send(Input::SnapshotDone(result)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Storage(format!("start the snapshot thread: {e}")))?;
    Ok(tx)
}

/// A pass of the member thread longer than this is logged.
const SLOW_PASS: Duration = Duration::from_millis(100);

/// Where one pass of the member thread spent its time, for the slow-pass warning.
#[derive(Default)]
struct PassTimes {
    inputs: usize,
    /// Peer messages, calls, inspections, finished snapshots, other inputs.
    by_kind: [Duration; 5],
    tick: Duration,
    ready: Duration,
    sent: usize,
    /// Of them, a leader's sent before its own sync.
    sent_early: usize,
    send: Duration,
    ready_detail: crate::member::ReadyTimes,
    /// Peer messages by (type, sender, reject).
    received: BTreeMap<(i32, u64, bool), usize>,
    /// Messages sent by (type, peer): (messages, entries).
    sent_by: BTreeMap<(i32, u64), (usize, usize)>,
}

impl std::fmt::Display for PassTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_millis();
        let k = &self.by_kind;
        write!(
            f,
            "{} inputs (peer messages {} ms, calls {} ms, inspections {} ms, snapshots done {} ms, other {} ms), \
             tick {} ms, ready {} ms, {} messages sent ({} before the sync) in {} ms",
            self.inputs,
            ms(k[0]),
            ms(k[1]),
            ms(k[2]),
            ms(k[3]),
            ms(k[4]),
            ms(self.tick),
            ms(self.ready),
            self.sent,
            self.sent_early,
            ms(self.send)
        )?;
        write!(
            f,
            "; received (type, from, reject): {:?}; sent (type, to): (messages, entries): {:?}; {}",
            self.received, self.sent_by, self.ready_detail
        )
    }
}

impl PassTimes {
    fn count_sent(&mut self, m: &Message) {
        self.sent += 1;
        let e = self.sent_by.entry((m.get_msg_type() as i32, m.to)).or_default();
        e.0 += 1;
        e.1 += m.entries.len();
    }
}

fn tick_interval(role: Role, t: &Timing, election_tick: usize) -> Duration {
    match role {
        Role::Leader => Duration::from_millis(t.heartbeat_interval_ms.max(1)),
        _ => Duration::from_millis((t.election_timeout_ms / election_tick.max(1) as u64).max(1)),
    }
}

fn run_loop(
    mut member: Member<SegmentStore>,
    transport: Arc<Transport>,
    rx: Receiver<Input>,
    mut timing: Timing,
    shared: &Shared,
    snapshots: &Sender<SnapshotJob>,
) -> Result<()> {
    let election_tick = 10;
    // The locally configured timing; settings replicated through the log override it.
    let mut base_timing = timing;
    let mut replies: HashMap<Token, (Reply, Instant)> = HashMap::new();
    let mut next_token: Token = 1;
    let mut next_tick = Instant::now() + tick_interval(member.role(), &timing, election_tick);
    member.set_election_timeout_ms(timing.election_timeout_ms);
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut addresses = BTreeMap::new();
    // Addresses peers told us in their handshakes; the replicated membership wins, these
    // fill in until it arrives (a member just added answers its leader this way).
    let mut learned: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        // More ready (a write that became durable let raft commit): no waiting.
        let wait = match member.has_ready() {
            true => Duration::ZERO,
            false => next_tick.saturating_duration_since(Instant::now()),
        };
        let first = match rx.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        member.set_time(now_ms());
        let busy_since = Instant::now();
        let _ = member.store().take_read_stats();
        // Take what is queued (bounded, so ticks are never starved).
        let mut inputs: Vec<Input> = first.into_iter().collect();
        while inputs.len() < 1024 {
            match rx.try_recv() {
                Ok(i) => inputs.push(i),
                Err(_) => break,
            }
        }
        let mut pass = PassTimes { inputs: inputs.len(), ..PassTimes::default() };
        for input in inputs {
            let started = Instant::now();
            let kind = match &input {
                Input::Net(Inbound::Message(m)) => {
                    *pass.received.entry((m.get_msg_type() as i32, m.from, m.reject)).or_default() += 1;
                    0
                }
                Input::Call { .. } => 1,
                Input::Inspect(_) => 2,
                Input::SnapshotDone(_) => 3,
                _ => 4,
            };
            match input {
                Input::Net(Inbound::Message(m)) => member.step(*m).unwrap_or_else(|e| log::debug!("{e}")),
                Input::Net(Inbound::SnapshotSent { to, ok }) => member.report_snapshot(to, ok),
                Input::Net(Inbound::Unreachable(to)) => member.report_unreachable(to),
                Input::Net(Inbound::PeerClosed(id)) => member.peer_closed(id),
                Input::Net(Inbound::PeerAddress { id, address }) => {
                    learned.insert(id, address);
                }
                Input::Call { req, deadline, reply } => {
                    let token = next_token;
                    next_token += 1;
                    replies.insert(token, (reply, deadline));
                    member.submit(token, req);
                }
                Input::Timing(t) => {
                    base_timing = t;
                    timing = t;
                    next_tick = Instant::now() + tick_interval(member.role(), &timing, election_tick);
                }
                Input::Inspect(f) => f(&mut member),
                Input::SnapshotDone(done) => member.snapshot_done(done)?,
                // `process_ready` below takes what the store made durable.
                Input::Persisted => {}
                Input::Stop => return Ok(()),
            }
            pass.by_kind[kind] += started.elapsed();
        }
        let now = Instant::now();
        if now >= next_tick {
            member.hold_campaigns(shared.campaign_held.load(Ordering::Relaxed));
            member.tick();
            next_tick = now + tick_interval(member.role(), &timing, election_tick);
        }
        pass.tick = now.elapsed();
        let started = Instant::now();
        // A leader's appends leave before its own sync (see `process_ready_sending`).
        let mut send_now = |m: Message| {
            pass.sent_early += 1;
            pass.count_sent(&m);
            transport.send(m);
        };
        let mut out = member.process_ready_sending(&mut send_now)?;
        // A read round a one-member cluster answered at once is ready again right away, and
        // a write a store made durable at once lets raft commit.
        for _ in 0..4 {
            if !member.has_ready() {
                break;
            }
            out.extend(member.process_ready_sending(&mut send_now)?);
        }
        pass.ready = started.elapsed();
        pass.ready_detail = member.ready_times();
        let started = Instant::now();
        for m in out {
            pass.count_sent(&m);
            transport.send(m);
        }
        pass.send = started.elapsed();
        if let Some(job) = member.take_snapshot_job() {
            snapshots.send(job).map_err(|_| Error::Storage("the snapshot thread is gone".into()))?;
        }
        let answers = member.take_answers();
        // Publish the state before answering, so a caller that heard "done" never reads an
        // older status (a membership change it made, the commit it waited for). Reads
        // changed nothing: a pass that only answers reads (most of them, under a read
        // load) leaves it to the periodic publish.
        let reads_only = |r: &Result<Response>| {
            matches!(
                r,
                Ok(Response::Kvs(_)
                    | Response::Changes { .. }
                    | Response::Hash { .. }
                    | Response::KvFigures(_))
            )
        };
        if answers.iter().any(|(_, r)| !reads_only(r)) {
            publish(&member, &learned, &mut addresses, &transport, shared);
            last_status = Instant::now();
        }
        for (token, r) in answers {
            if let Some((reply, _)) = replies.remove(&token) {
                let _ = reply.send(r);
            }
        }
        // With failover on, a member thread held past the election timeout is a failover:
        // say so whenever one pass takes long.
        let busy = busy_since.elapsed();
        member.record_pass(busy);
        if busy >= SLOW_PASS {
            log::warn!(
                "the Raft thread was busy for {} ms in one pass (election timeout {} ms): {}; {}",
                busy.as_millis(),
                timing.election_timeout_ms,
                pass,
                member.store().take_read_stats()
            );
        }
        // Deadlines: say why nothing happened.
        let now = Instant::now();
        let expired: Vec<Token> = replies.iter().filter(|(_, (_, d))| *d <= now).map(|(t, _)| *t).collect();
        for token in expired {
            member.cancel(token);
            if let Some((reply, _)) = replies.remove(&token) {
                let e = if member.leader_id() == 0 {
                    Error::NoLeader
                } else if member.role() == Role::Leader && !member.quorum_active() {
                    Error::NoQuorum
                } else {
                    Error::Timeout
                };
                let _ = reply.send(Err(e));
            }
        }
        // Cluster-wide timing set through the log (`pgraft_set_config`) applies here too.
        let cfg = &member.state().config;
        let cluster_timing = Timing {
            election_timeout_ms: cfg
                .get("election_timeout")
                .and_then(|v| crate::config::parse_duration_ms(v).ok())
                .unwrap_or(base_timing.election_timeout_ms),
            heartbeat_interval_ms: cfg
                .get("heartbeat_interval")
                .and_then(|v| crate::config::parse_duration_ms(v).ok())
                .unwrap_or(base_timing.heartbeat_interval_ms),
        };
        if cluster_timing != timing && cluster_timing.validate().is_ok() {
            log::info!(
                "timing now election_timeout {}ms, heartbeat_interval {}ms",
                cluster_timing.election_timeout_ms,
                cluster_timing.heartbeat_interval_ms
            );
            timing = cluster_timing;
        }
        member.set_election_timeout_ms(timing.election_timeout_ms);
        if now.duration_since(last_status) >= Duration::from_millis(5) {
            publish(&member, &learned, &mut addresses, &transport, shared);
            last_status = now;
        }
    }
}

/// Copies the member's status and addresses to the shared state, and points the transport
/// at the current peers.
fn publish(
    member: &Member<SegmentStore>,
    learned: &BTreeMap<u64, String>,
    addresses: &mut BTreeMap<u64, String>,
    transport: &Transport,
    shared: &Shared,
) {
    let mut a = member.addresses();
    for (id, addr) in learned {
        a.entry(*id).or_insert_with(|| addr.clone());
    }
    if a != *addresses {
        transport.set_peers(&a);
        *addresses = a;
    }
    *lock(&shared.addresses) = member.addresses();
    *lock(&shared.status) = Some(member.status());
    shared.status_ms.store(now_ms(), Ordering::Relaxed);
    let sm = member.state();
    *lock(&shared.kv) = KvGauges {
        revision: sm.kv.revision(),
        compact_revision: sm.kv.compact_revision(),
        keys_held: sm.kv.keys_held() as u64,
    };
    let mut ha = lock(&shared.ha);
    if ha.as_ref().is_none_or(|v| v.ha != sm.ha || v.config != sm.config) {
        *ha = Some(HaView { ha: sm.ha.clone(), config: sm.config.clone() });
    }
}
