//! The partition proxy: a TCP forwarder in front of every member's Raft port.
//!
//! ```text
//!            front (advertised)              backend (member listens)
//!   peer ──▶ 127.0.0.1:<raft_port>  ──copy──▶ 127.0.1.<id>:<raft_port>
//!   (source 127.0.1.<from>)
//! ```
//!
//! The proxy knows the target of each link from the front port it accepted on, and the
//! source from the peer's address (members dial from their listen address). `partition N`
//! closes every open link whose source or target is N and refuses new ones until `heal`.
//! `cut A B` does the same for the one link between A and B (both directions), which is
//! how bridge, ring and leader-in-the-minority partitions are made:
//!
//! ```text
//!   bridge of 5:  1 ─ 2        cut 1 4, cut 1 5, cut 2 4, cut 2 5
//!                  \ /
//!                   3          member 3 sees everyone; {1,2} and {4,5} see only 3
//!                  / \
//!                 4 ─ 5
//! ```
//!
//! It never inspects the bytes, so it works the same with TLS between members.
//!
//! It is controlled through a Unix socket with one-line requests: `partition N`,
//! `cut A B`, `repl-partition N`, `repl-cut A B`, `heal [N]`, `status`, `stop`; each is
//! answered with one line (`ok ...` or `error ...`). `heal` lifts every cut; `heal N`
//! lifts N's partitions and its cut links.
//!
//! Replication links (PostgreSQL's streaming replication, in an HA cluster) go through it
//! too, on a plane of their own, so Raft and replication can be cut separately. A
//! standby names its own link in `primary_conninfo`: the proxy listens on
//! `127.2.<hi>.<lo>:<primary's port>` for the standby whose id is `hi * 256 + lo` and
//! forwards to the primary's server on 127.0.0.1, so the address it accepted on says who
//! dials and the port whom.
//!
//! ```text
//!   standby 2 ──▶ 127.2.0.2:<pg port of 1> ──copy──▶ 127.0.0.1:<pg port of 1>
//! ```

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::node::Node;

/// Which traffic a link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Raft,
    Replication,
}

/// One forwarded route: the advertised port of a member and where the member listens.
#[derive(Debug, Clone)]
struct Route {
    node_id: u64,
    front: SocketAddrV4,
    backend: SocketAddrV4,
    plane: Plane,
    /// The member that dials this front (replication routes: one front per pair).
    from: Option<u64>,
}

/// An open forwarded connection.
struct Link {
    from: Option<u64>,
    to: u64,
    plane: Plane,
    client: TcpStream,
    server: TcpStream,
}

impl Link {
    fn close(&self) {
        // Errors mean the socket is already closed, which is what we want.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    /// Members cut off from everyone (Raft).
    cut: BTreeSet<u64>,
    /// Single links cut, as (smaller id, larger id) (Raft).
    cut_links: BTreeSet<(u64, u64)>,
    /// Members whose replication links are all cut.
    repl_cut: BTreeSet<u64>,
    /// Single replication links cut, as (smaller id, larger id).
    repl_cut_links: BTreeSet<(u64, u64)>,
    links: HashMap<u64, Link>,
}

impl State {
    fn is_cut(&self, plane: Plane, from: Option<u64>, to: u64) -> bool {
        let (cut, links) = match plane {
            Plane::Raft => (&self.cut, &self.cut_links),
            Plane::Replication => (&self.repl_cut, &self.repl_cut_links),
        };
        cut.contains(&to) || from.is_some_and(|f| cut.contains(&f) || links.contains(&link_key(f, to)))
    }
}

/// The address a member dials its peers' PostgreSQL servers from, through the proxy
/// (`127.2.<hi>.<lo>` for id `hi * 256 + lo`; ids are capped like the Raft addresses).
pub fn replication_ip(node_id: u64) -> std::net::Ipv4Addr {
    let n = node_id.min(65_279);
    std::net::Ipv4Addr::new(127, 2, (n / 256) as u8, (n % 256) as u8)
}

/// The key of the undirected link between `a` and `b`.
fn link_key(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

/// The proxy of one local cluster.
pub struct PartitionProxy {
    routes: Vec<Route>,
    state: Arc<Mutex<State>>,
    next_link: Arc<AtomicU64>,
}

impl PartitionProxy {
    /// A proxy for these members.
    pub fn new(nodes: &[Node]) -> Self {
        let mut routes: Vec<Route> = nodes
            .iter()
            .map(|n| Route {
                node_id: n.node_id,
                front: n.advertised_socket(),
                backend: n.listen_socket(),
                plane: Plane::Raft,
                from: None,
            })
            .collect();
        // A replication front per ordered pair of members with a PostgreSQL server.
        for to in nodes.iter().filter(|n| n.pg_port != 0) {
            for from in nodes.iter().filter(|n| n.node_id != to.node_id) {
                routes.push(Route {
                    node_id: to.node_id,
                    front: SocketAddrV4::new(replication_ip(from.node_id), to.pg_port),
                    backend: SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, to.pg_port),
                    plane: Plane::Replication,
                    from: Some(from.node_id),
                });
            }
        }
        Self { routes, state: Arc::default(), next_link: Arc::default() }
    }

    /// Binds every front port and the control socket, then serves until told to stop.
    /// Requests the proxy does not know go to `extra`, which answers `None` for "unknown"
    /// (the cluster supervisor adds `start N` this way). Each control connection is served
    /// on its own thread, so a slow request does not hold up a partition.
    pub fn run<F>(self, control: &Path, extra: F) -> Result<()>
    where
        F: Fn(&[&str]) -> Option<Result<String>> + Send + Sync + 'static,
    {
        let mut listeners = Vec::new();
        for r in &self.routes {
            let l = TcpListener::bind(r.front).with_context(|| match r.plane {
                Plane::Raft => format!("bind the Raft port of node {} at {}", r.node_id, r.front),
                Plane::Replication => format!(
                    "bind the replication front of node {} for node {} at {}",
                    r.node_id,
                    r.from.unwrap_or(0),
                    r.front
                ),
            })?;
            listeners.push((r.clone(), l));
        }
        let _ = std::fs::remove_file(control);
        let ctl = UnixListener::bind(control)
            .with_context(|| format!("bind the proxy control socket {}", control.display()))?;
        let sources: HashMap<IpAddr, u64> =
            self.routes.iter().map(|r| (IpAddr::V4(*r.backend.ip()), r.node_id)).collect();
        let sources = Arc::new(sources);
        for (route, listener) in listeners {
            let state = Arc::clone(&self.state);
            let ids = Arc::clone(&self.next_link);
            let sources = Arc::clone(&sources);
            std::thread::Builder::new()
                .name(format!("proxy-{}", route.node_id))
                .spawn(move || accept_loop(route, listener, state, ids, sources))
                .context("spawn a proxy accept thread")?;
        }
        let me = Arc::new(self);
        let extra = Arc::new(extra);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("proxy-control".into())
            .spawn(move || {
                for conn in ctl.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (me, extra, stop_tx) = (Arc::clone(&me), Arc::clone(&extra), stop_tx.clone());
                    let _ = std::thread::Builder::new().name("proxy-request".into()).spawn(move || match me
                        .serve_control(conn, extra.as_ref())
                    {
                        Ok(true) => {
                            let _ = stop_tx.send(());
                        }
                        Ok(false) => {}
                        Err(e) => eprintln!("proxy: control request failed: {e:#}"),
                    });
                }
            })
            .context("spawn the control thread")?;
        // Returns when a `stop` request was answered.
        let _ = stop_rx.recv();
        Ok(())
    }

    /// Answers one control request; returns true when told to stop.
    fn serve_control(
        &self,
        conn: UnixStream,
        extra: &(dyn Fn(&[&str]) -> Option<Result<String>> + Send + Sync),
    ) -> Result<bool> {
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).context("read a control request")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (reply, stop) = match words.as_slice() {
            ["partition", n] => match self.node_arg(n) {
                Ok(id) => {
                    let closed = self.partition(id);
                    (format!("ok cut node {id}, closed {closed} links"), false)
                }
                Err(e) => (format!("error {e}"), false),
            },
            ["cut", a, b] => match (self.node_arg(a), self.node_arg(b)) {
                (Ok(a), Ok(b)) if a != b => {
                    let closed = self.cut_link(a, b);
                    (format!("ok cut link {a}-{b}, closed {closed} links"), false)
                }
                (Ok(a), Ok(_)) => (format!("error a link joins two members, not {a} and itself"), false),
                (Err(e), _) | (_, Err(e)) => (format!("error {e}"), false),
            },
            ["repl-partition", n] => match self.node_arg(n) {
                Ok(id) => {
                    let closed = self.cut_plane(
                        Plane::Replication,
                        |l| l.to == id || l.from == Some(id),
                        |st| {
                            st.repl_cut.insert(id);
                        },
                    );
                    (format!("ok cut the replication links of node {id}, closed {closed} links"), false)
                }
                Err(e) => (format!("error {e}"), false),
            },
            ["repl-cut", a, b] => match (self.node_arg(a), self.node_arg(b)) {
                (Ok(a), Ok(b)) if a != b => {
                    let key = link_key(a, b);
                    let closed = self.cut_plane(
                        Plane::Replication,
                        |l| l.from.is_some_and(|f| link_key(f, l.to) == key),
                        |st| {
                            st.repl_cut_links.insert(key);
                        },
                    );
                    (format!("ok cut replication link {a}-{b}, closed {closed} links"), false)
                }
                (Ok(a), Ok(_)) => (format!("error a link joins two members, not {a} and itself"), false),
                (Err(e), _) | (_, Err(e)) => (format!("error {e}"), false),
            },
            ["heal"] => {
                let mut st = self.lock();
                st.cut.clear();
                st.cut_links.clear();
                st.repl_cut.clear();
                st.repl_cut_links.clear();
                ("ok healed".to_string(), false)
            }
            ["heal", n] => match self.node_arg(n) {
                Ok(id) => {
                    let mut st = self.lock();
                    st.cut.remove(&id);
                    st.cut_links.retain(|&(a, b)| a != id && b != id);
                    st.repl_cut.remove(&id);
                    st.repl_cut_links.retain(|&(a, b)| a != id && b != id);
                    (format!("ok healed node {id}"), false)
                }
                Err(e) => (format!("error {e}"), false),
            },
            ["status"] => {
                let st = self.lock();
                let cut: Vec<String> = st.cut.iter().map(|n| n.to_string()).collect();
                let links: Vec<String> = st.cut_links.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                let repl: Vec<String> = st.repl_cut.iter().map(|n| n.to_string()).collect();
                let repl_links: Vec<String> =
                    st.repl_cut_links.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                (
                    format!(
                        "ok cut={} cut_links={} repl_cut={} repl_cut_links={} links={}",
                        cut.join(","),
                        links.join(","),
                        repl.join(","),
                        repl_links.join(","),
                        st.links.len()
                    ),
                    false,
                )
            }
            ["stop"] => ("ok stopping".to_string(), true),
            _ => match extra(&words) {
                Some(Ok(answer)) => (format!("ok {answer}"), false),
                Some(Err(e)) => (format!("error {}", format!("{e:#}").replace('\n', " ")), false),
                None => (format!("error unknown request {:?}", line.trim()), false),
            },
        };
        let mut w = &conn;
        writeln!(w, "{reply}").context("answer a control request")?;
        Ok(stop)
    }

    fn node_arg(&self, word: &str) -> Result<u64> {
        let id: u64 = word.parse().with_context(|| format!("{word:?} is not a node id"))?;
        if !self.routes.iter().any(|r| r.node_id == id) {
            bail!("node {id} is not a member of this local cluster");
        }
        Ok(id)
    }

    /// Cuts `id` off and closes its open links; returns how many were closed.
    fn partition(&self, id: u64) -> usize {
        self.cut_plane(
            Plane::Raft,
            |l| l.to == id || l.from == Some(id),
            |st| {
                st.cut.insert(id);
            },
        )
    }

    /// Cuts the link between `a` and `b` and closes it if open; returns how many were closed.
    fn cut_link(&self, a: u64, b: u64) -> usize {
        let key = link_key(a, b);
        self.cut_plane(
            Plane::Raft,
            |l| l.from.is_some_and(|f| link_key(f, l.to) == key),
            |st| {
                st.cut_links.insert(key);
            },
        )
    }

    /// Records a cut (`mark`) and closes the open links of `plane` that `doomed` picks, under
    /// one lock; returns how many were closed.
    fn cut_plane(
        &self,
        plane: Plane,
        doomed: impl Fn(&Link) -> bool,
        mark: impl FnOnce(&mut State),
    ) -> usize {
        let mut st = self.lock();
        mark(&mut st);
        let keys: Vec<u64> =
            st.links.iter().filter(|(_, l)| l.plane == plane && doomed(l)).map(|(k, _)| *k).collect();
        for k in &keys {
            if let Some(l) = st.links.remove(k) {
                l.close();
            }
        }
        keys.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panicking copy thread cannot leave the state inconsistent (every update is one
    // insert or remove), so a poisoned lock is still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(
    route: Route,
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    ids: Arc<AtomicU64>,
    sources: Arc<HashMap<IpAddr, u64>>,
) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let from = match route.plane {
            Plane::Raft => client.peer_addr().ok().and_then(|a: SocketAddr| sources.get(&a.ip()).copied()),
            Plane::Replication => route.from,
        };
        if lock(&state).is_cut(route.plane, from, route.node_id) {
            continue; // dropping the stream closes it: the link is cut
        }
        let server = match TcpStream::connect_timeout(&SocketAddr::V4(route.backend), Duration::from_secs(2))
        {
            Ok(s) => s,
            Err(_) => continue, // the member is down: the peer sees a closed connection
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
            (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
        else {
            continue;
        };
        {
            let mut st = lock(&state);
            // Re-check under the lock: a partition may have started while we connected.
            if st.is_cut(route.plane, from, route.node_id) {
                continue;
            }
            st.links.insert(id, Link { from, to: route.node_id, plane: route.plane, client, server });
        }
        for (mut r, mut w) in [(c2, s2), (s3, c3)] {
            let shared = Arc::clone(&state);
            let spawned = std::thread::Builder::new().name("proxy-copy".into()).spawn(move || {
                let _ = std::io::copy(&mut r, &mut w);
                if let Some(l) = lock(&shared).links.remove(&id) {
                    l.close();
                }
                let _ = r.shutdown(Shutdown::Both);
                let _ = w.shutdown(Shutdown::Both);
            });
            if spawned.is_err() {
                if let Some(l) = lock(&state).links.remove(&id) {
                    l.close();
                }
            }
        }
    }
}

/// Talks to a running proxy through its control socket.
pub struct ProxyClient {
    control: PathBuf,
}

impl ProxyClient {
    /// A client of the proxy listening on `control`.
    pub fn new(control: impl Into<PathBuf>) -> Self {
        Self { control: control.into() }
    }

    /// Sends one request and returns the answer after `ok`, or fails with the proxy's error.
    pub fn request(&self, req: &str) -> Result<String> {
        self.request_within(req, Duration::from_secs(10))
    }

    /// [`ProxyClient::request`] with a longer wait for slow requests (starting a server).
    pub fn request_within(&self, req: &str, timeout: Duration) -> Result<String> {
        let mut s = UnixStream::connect(&self.control)
            .with_context(|| format!("connect to the partition proxy at {}", self.control.display()))?;
        s.set_read_timeout(Some(timeout)).context("set a read timeout")?;
        writeln!(s, "{req}").context("send a request to the partition proxy")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).context("read the partition proxy's answer")?;
        let line = line.trim();
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => bail!("partition proxy: {}", line.strip_prefix("error ").unwrap_or(line)),
        }
    }

    /// The ids of the members currently cut off.
    pub fn cut(&self) -> Result<BTreeSet<u64>> {
        let answer = self.request("status")?;
        let list = answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix("cut="))
            .context("malformed status answer from the partition proxy")?;
        list.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().with_context(|| format!("bad node id {s:?} in proxy status")))
            .collect()
    }

    /// The single links currently cut, as (smaller id, larger id).
    pub fn cut_links(&self) -> Result<BTreeSet<(u64, u64)>> {
        let answer = self.request("status")?;
        let list = answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix("cut_links="))
            .context("malformed status answer from the partition proxy")?;
        list.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (a, b) = s.split_once('-').with_context(|| format!("bad link {s:?} in proxy status"))?;
                let a = a.parse::<u64>().with_context(|| format!("bad node id in link {s:?}"))?;
                let b = b.parse::<u64>().with_context(|| format!("bad node id in link {s:?}"))?;
                Ok((a, b))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::free_port;
    use std::io::Read;

    /// An echo server standing in for a member's Raft listener.
    fn echo(backend: SocketAddrV4) -> TcpListener {
        let l = TcpListener::bind(backend).expect("bind the stand-in member");
        let l2 = l.try_clone().expect("clone the listener");
        std::thread::spawn(move || {
            for s in l2.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().expect("clone");
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        l
    }

    /// Dials `to` from member `from`'s listen address, as a member does, and checks that
    /// an echo comes back through the proxy.
    fn round_trip(from: &Node, to: &Node) -> std::io::Result<TcpStream> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(*from.listen_socket().ip(), 0)).into())?;
        sock.connect(&SocketAddr::V4(to.advertised_socket()).into())?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        (&s).write_all(b"ping")?;
        let mut buf = [0u8; 4];
        (&s).read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping");
        Ok(s)
    }

    #[test]
    fn partition_cuts_both_directions_and_heal_restores() {
        let dir = std::env::temp_dir().join(format!("pgraft-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node::new(i, 0, free_port().expect("free port"), PathBuf::from(format!("/x/n{i}"))))
            .collect();
        let _members: Vec<TcpListener> = nodes.iter().map(|n| echo(n.listen_socket())).collect();
        let control = dir.join("proxy.sock");
        let proxy = PartitionProxy::new(&nodes);
        let ctl_path = control.clone();
        std::thread::spawn(move || proxy.run(&ctl_path, |_| None).expect("proxy runs"));
        let client = ProxyClient::new(control.clone());
        crate::wait::wait_until(
            "proxy control socket",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || Ok(client.request("status").ok()),
        )
        .expect("proxy starts");

        let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
        let open_12 = round_trip(n1, n2).expect("1 -> 2 before the partition");
        let open_21 = round_trip(n2, n1).expect("2 -> 1 before the partition");
        round_trip(n1, n3).expect("1 -> 3 before the partition");

        client.request("partition 2").expect("partition 2");
        assert_eq!(client.cut().expect("status"), BTreeSet::from([2]));
        // Open links of node 2, both directions, are closed...
        for s in [&open_12, &open_21] {
            let mut buf = [0u8; 1];
            let n = (&*s).read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "a link of node 2 stayed open");
        }
        // ...new ones are refused, and the others are untouched.
        assert!(round_trip(n1, n2).is_err());
        assert!(round_trip(n2, n3).is_err());
        round_trip(n1, n3).expect("1 -> 3 during the partition of 2");
        round_trip(n3, n1).expect("3 -> 1 during the partition of 2");

        assert!(client.request("partition 9").is_err(), "an unknown node is refused");
        client.request("heal").expect("heal");
        assert!(client.cut().expect("status").is_empty());
        round_trip(n1, n2).expect("1 -> 2 after healing");
        round_trip(n2, n3).expect("2 -> 3 after healing");

        // One link cut: 1 and 3 no longer talk, both still talk to 2 (a bridge).
        let open_13 = round_trip(n1, n3).expect("1 -> 3 before the cut");
        client.request("cut 3 1").expect("cut 3 1");
        assert_eq!(client.cut_links().expect("status"), BTreeSet::from([(1, 3)]));
        let mut buf = [0u8; 1];
        assert_eq!((&open_13).read(&mut buf).unwrap_or(0), 0, "the open 1-3 link stayed open");
        assert!(round_trip(n1, n3).is_err());
        assert!(round_trip(n3, n1).is_err());
        round_trip(n1, n2).expect("1 -> 2 across the bridge");
        round_trip(n3, n2).expect("3 -> 2 across the bridge");
        round_trip(n2, n1).expect("2 -> 1 across the bridge");
        assert!(client.request("cut 2 2").is_err(), "a link needs two members");
        client.request("heal 3").expect("heal 3 lifts its links");
        assert!(client.cut_links().expect("status").is_empty());
        round_trip(n1, n3).expect("1 -> 3 after healing");
        client.request("stop").expect("stop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
