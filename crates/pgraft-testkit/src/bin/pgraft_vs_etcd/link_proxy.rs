//! A TCP forwarder that can be cut: how the failover comparison takes a Patroni node off
//! the network (its links to etcd, its PostgreSQL's replication port, its REST API), the way
//! the test kit's partition proxy does it for pgraft's Raft and replication links.
//!
//! ```text
//!   client ──▶ 127.0.0.1:<front> ──copy both ways──▶ 127.0.0.1:<target>
//! ```
//!
//! `cut` closes every open connection and refuses new ones (accepted, then closed at once)
//! until `heal`; it never inspects the bytes. Both systems therefore see the same kind of
//! partition: connections that end, not ones that hang.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use pgraft_testkit::free_port;

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    next: AtomicU64,
    /// Each forwarded connection's two sockets, until its copiers end.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

/// One forwarded port; stops forwarding (and closes what it forwards) when dropped.
pub struct LinkProxy {
    /// The port clients dial.
    pub front: u16,
    shared: Arc<Shared>,
}

impl LinkProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target` there.
    pub fn start(target: u16) -> Result<Self> {
        let front = free_port()?;
        let listener =
            TcpListener::bind(("127.0.0.1", front)).with_context(|| format!("bind 127.0.0.1:{front}"))?;
        listener.set_nonblocking(true).context("a non-blocking listener")?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, target, s));
        Ok(Self { front, shared })
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for (c, s) in self.shared.open.lock().expect("proxy lock").drain().map(|(_, v)| v) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, target: u16, s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        if s.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
            (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
        else {
            continue;
        };
        let id = s.next.fetch_add(1, Ordering::Relaxed);
        s.open.lock().expect("proxy lock").insert(id, (c3, s3));
        if s.cut.load(Ordering::SeqCst) {
            // Cut while this one was being connected: it must not outlive the cut.
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        let shared = Arc::clone(&s);
        std::thread::spawn(move || {
            copy(client, server);
            shared.open.lock().expect("proxy lock").remove(&id);
        });
        std::thread::spawn(move || copy(s2, c2));
    }
}

/// Copies `from` to `to` until either ends, then shuts both down.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
