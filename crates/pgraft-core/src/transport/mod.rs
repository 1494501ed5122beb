//! TCP (optionally TLS) between members.
//!
//! ```text
//!  member thread ──send(msg)──▶ per-peer bounded queue ──▶ peer task: dial, handshake,
//!                                 (full: dropped,            write frames (snapshots in
//!                                  peer reported unreachable) chunks), reconnect w/ backoff
//!
//!  listener task ◀── accept ── TLS? ── hello/ack ── frames ──▶ reassembly ──▶ Inbound
//! ```
//!
//! Connections are one-way: each member dials every peer it sends to, and reads on the
//! connections peers dial to it. Nothing here blocks the Raft loop: sends are `try_send`
//! into a bounded queue. Peers are checked (TLS, then cluster id and node ids) before any
//! Raft message is decoded, and every frame is size-capped.

mod frame;
mod handshake;
mod peer;
mod peer_auth;
mod tls;

pub use frame::{
    read_frame, write_frame, Frame, FrameError, Reassembly, DEFAULT_FRAME_CAP, DEFAULT_SNAPSHOT_CAP,
};
pub use handshake::{Ack, AckStatus, HandshakeError, Hello, PROTOCOL_VERSION, PROTOCOL_VERSION_SECRET};
pub use peer_auth::{certificate_names, node_name, Challenge, ClusterSecret, Proof, MIN_SECRET_LEN};
pub use tls::{server_only as tls_server_only, Tls, TlsError, TlsFiles};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the transport hands to the member thread.
#[derive(Debug)]
pub enum Inbound {
    /// A message from a peer (boxed: messages are large, the other events small).
    Message(Box<Message>),
    /// A snapshot was written to `to` completely (`ok`) or failed.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether it was written completely.
        ok: bool,
    },
    /// A message to `to` could not be sent.
    Unreachable(u64),
    /// The connection peer `id` had opened to this member ended: it closed it or its
    /// process died (a network that only drops packets ends nothing).
    PeerClosed(u64),
    /// A peer introduced itself: member `id` can be reached at `address`.
    PeerAddress {
        /// The peer.
        id: u64,
        /// Its `host:port`.
        address: String,
    },
}

/// Where inbound events go: the member thread's input.
pub type InboundSink = Arc<dyn Fn(Inbound) + Send + Sync>;

/// How the transport is set up.
#[derive(Clone)]
pub struct TransportConfig {
    /// This member.
    pub node_id: u64,
    /// Its cluster.
    pub cluster_id: String,
    /// Where peers reach this member (`host:port`), told to them in the handshake.
    pub advertise: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The source address of outgoing connections (the listen address, so peers and
    /// proxies see who is calling); `None`: chosen by the OS.
    pub source_ip: Option<IpAddr>,
    /// Mutual TLS, when on; each certificate must name its member's node id.
    pub tls: Option<Tls>,
    /// The cluster secret both ends of every connection must prove, when set.
    pub secret: Option<ClusterSecret>,
    /// Largest frame.
    pub frame_cap: u32,
    /// Largest snapshot.
    pub snapshot_cap: u64,
    /// Messages queued per peer before new ones are dropped.
    pub queue_len: usize,
}

impl TransportConfig {
    /// Defaults for everything but identity and address.
    pub fn new(node_id: u64, cluster_id: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            node_id,
            cluster_id: cluster_id.into(),
            advertise: listen.to_string(),
            listen,
            source_ip: None,
            tls: None,
            secret: None,
            frame_cap: DEFAULT_FRAME_CAP,
            snapshot_cap: DEFAULT_SNAPSHOT_CAP,
            queue_len: 4096,
        }
    }
}

/// Counters, for status views.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages handed to peer queues.
    pub sent: AtomicU64,
    /// Messages dropped (queue full, no address).
    pub dropped: AtomicU64,
    /// Messages received.
    pub received: AtomicU64,
    /// Connections refused at the handshake or by TLS.
    pub refused: AtomicU64,
}

struct PeerHandle {
    address: String,
    tx: tokio::sync::mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

/// The transport of one member.
pub struct Transport {
    cfg: TransportConfig,
    sink: InboundSink,
    peers: Mutex<HashMap<u64, PeerHandle>>,
    rt: tokio::runtime::Handle,
    listener_task: tokio::task::JoinHandle<()>,
    /// Counters.
    pub stats: Arc<TransportStats>,
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
}

impl Transport {
    /// Binds the listener on `rt` and starts accepting peers.
    pub fn start(
        cfg: TransportConfig,
        sink: InboundSink,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Transport> {
        let std_listener = std::net::TcpListener::bind(cfg.listen)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let stats = Arc::new(TransportStats::default());
        let listener_task = {
            let _guard = rt.enter();
            let listener = TcpListener::from_std(std_listener)?;
            let (cfg, sink, stats) = (cfg.clone(), Arc::clone(&sink), Arc::clone(&stats));
            rt.spawn(accept_loop(listener, cfg, sink, stats))
        };
        Ok(Transport { cfg, sink, peers: Mutex::new(HashMap::new()), rt, listener_task, stats, local_addr })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PeerHandle>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the peers to talk to (id -> `host:port`); starts, restarts (address changed)
    /// or stops peer tasks to match.
    pub fn set_peers(&self, addrs: &BTreeMap<u64, String>) {
        let mut peers = self.peers();
        peers.retain(|id, p| {
            let keep = addrs.get(id) == Some(&p.address);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (id, address) in addrs {
            if *id == self.cfg.node_id || peers.contains_key(id) || address.is_empty() {
                continue;
            }
            let (tx, rx) = tokio::sync::mpsc::channel(self.cfg.queue_len);
            let task =
                self.rt.spawn(peer::run(self.cfg.clone(), *id, address.clone(), rx, Arc::clone(&self.sink)));
            peers.insert(*id, PeerHandle { address: address.clone(), tx, task });
        }
    }

    /// Queues a message; never blocks. A full queue or an unknown peer drops it and
    /// reports the peer unreachable (raft then slows down to probing).
    pub fn send(&self, m: Message) {
        let to = m.to;
        let ok = match self.peers().get(&to) {
            Some(p) => p.tx.try_send(m).is_ok(),
            None => false,
        };
        if ok {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            (self.sink)(Inbound::Unreachable(to));
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.listener_task.abort();
        for (_, p) in self.peers().drain() {
            p.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    cfg: TransportConfig,
    sink: InboundSink,
    stats: Arc<TransportStats>,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("accepting a peer connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (cfg, sink, stats) = (cfg.clone(), Arc::clone(&sink), Arc::clone(&stats));
        tokio::spawn(async move {
            let r = match cfg.tls.clone() {
                Some(tls) => {
                    match tokio::time::timeout(Duration::from_secs(10), tls.acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                            serve_peer(s, addr, cert, &cfg, &sink, &stats).await
                        }
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
                None => serve_peer(stream, addr, None, &cfg, &sink, &stats).await,
            };
            if let Err(e) = r {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!("refused peer connection from {addr}: {e}");
            }
        });
    }
}

/// Handshake, then frames until the connection ends. Returns an error only for a refusal
/// (bad handshake, bad frame); a peer hanging up is normal. `cert` is the dialer's TLS
/// certificate.
async fn serve_peer<S>(
    mut s: S,
    addr: SocketAddr,
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    cfg: &TransportConfig,
    sink: &InboundSink,
    stats: &TransportStats,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = match tokio::time::timeout(Duration::from_secs(10), Hello::read(&mut s)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no handshake within 10 s".into()),
    };
    let mut status = hello.judge(&cfg.cluster_id, cfg.node_id);
    let mut why = None;
    if status == AckStatus::Accepted {
        if let Err(e) = authenticate_dialer(&mut s, &hello, cert.as_ref(), cfg).await {
            status = AckStatus::NotAuthenticated;
            why = Some(e);
        }
    }
    let ack = Ack { version: PROTOCOL_VERSION, status, node: cfg.node_id };
    let _ = s.write_all(&ack.encode()).await;
    let _ = s.flush().await;
    if status != AckStatus::Accepted {
        return Err(format!(
            "{}{} (it says it is node {} of cluster {:?}, calling node {}; this is node {} of cluster {:?})",
            status.describe(),
            why.map(|w| format!(": {w}")).unwrap_or_default(),
            hello.from,
            hello.cluster_id,
            hello.to,
            cfg.node_id,
            cfg.cluster_id
        ));
    }
    log::debug!("peer {} connected from {addr}", hello.from);
    if !hello.address.is_empty() {
        sink(Inbound::PeerAddress { id: hello.from, address: hello.address.clone() });
    }
    let mut reassembly = Reassembly::default();
    loop {
        let frame = match read_frame(&mut s, cfg.frame_cap).await {
            Ok(f) => f,
            Err(FrameError::Io(_)) => {
                sink(Inbound::PeerClosed(hello.from));
                return Ok(());
            }
            Err(e) => return Err(format!("from node {}: {e}", hello.from)),
        };
        match reassembly.feed(frame, cfg.snapshot_cap) {
            Ok(Some(m)) => {
                // A follower forwards a leadership transfer with `from` set to the
                // transferee (raft's convention): the one message whose sender is not its
                // author.
                let forwarded_transfer = m.get_msg_type() == MessageType::MsgTransferLeader;
                if (m.from != hello.from && !forwarded_transfer) || m.to != cfg.node_id {
                    return Err(format!(
                        "node {} sent a message from {} to {} on its connection",
                        hello.from, m.from, m.to
                    ));
                }
                stats.received.fetch_add(1, Ordering::Relaxed);
                sink(Inbound::Message(Box::new(m)));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("from node {}: {e}", hello.from)),
        }
    }
}

/// Checks that the dialer is the node its hello names: its certificate names that node id
/// (with TLS), and it proves the cluster secret (when this member has one), by challenge
/// and response. `Err` says why not.
async fn authenticate_dialer<S>(
    s: &mut S,
    hello: &Hello,
    cert: Option<&rustls::pki_types::CertificateDer<'static>>,
    cfg: &TransportConfig,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if cfg.tls.is_some() && !cert.is_some_and(|c| certificate_names(c, hello.from)) {
        return Err(format!("its certificate does not name {}", node_name(hello.from)));
    }
    match (&cfg.secret, hello.nonce) {
        (None, None) => Ok(()),
        (Some(_), None) => Err("it offers no proof of the cluster secret".into()),
        (None, Some(_)) => Err("it offers a proof of a cluster secret, and this member has none".into()),
        (Some(secret), Some(_)) => {
            let bytes = hello.encode();
            let challenge = secret.challenge(&bytes).map_err(|e| e.to_string())?;
            s.write_all(&challenge.encode()).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let proof = tokio::time::timeout(Duration::from_secs(10), Proof::read(s))
                .await
                .map_err(|_| "no proof of the cluster secret within 10 s".to_string())?
                .map_err(|e| e.to_string())?;
            if secret.dialer_proved(&bytes, &challenge, &proof) {
                Ok(())
            } else {
                Err("its proof of the cluster secret is wrong".into())
            }
        }
    }
}

/// Dials `address` from `source_ip` (bind before connect).
async fn dial(address: &str, source_ip: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let mut last = None;
    for sa in tokio::net::lookup_host(address).await? {
        let sock =
            if sa.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        if let Some(ip) = source_ip {
            if ip.is_ipv4() == sa.is_ipv4() {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
        }
        match tokio::time::timeout(Duration::from_secs(3), sock.connect(sa)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{address} resolves to nothing"))
    }))
}
