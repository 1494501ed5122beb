//! `pgraft-bench`: throughput and latency of the consensus core on loopback TCP, fsync on.
//!
//! ```text
//! pgraft-bench [--members 3] [--clients 16] [--seconds 5] [--value-bytes 100] [--keys 1000]
//!              [--warnings]
//! ```
//!
//! Starts the members in this process (each with its own redb file and TCP listener on
//! 127.0.0.1), then runs puts, linearizable gets and compare-and-swaps from concurrent
//! clients spread over all members, and prints throughput and latency percentiles per
//! operation, and the process's resident memory divided by the members.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgraft_core::command::Body;
use pgraft_core::config::Timing;
use pgraft_core::kv::{Compare, KvOp, TxnAction};
use pgraft_core::{Bootstrap, Consistency, MemberConfig, Node, NodeConfig, Read, Request, Role};

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Clone, Copy)]
enum Kind {
    Put,
    Get,
    Cas,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Put => "put",
        Kind::Get => "get",
        Kind::Cas => "compare-and-swap",
    }
}

/// Prints the members' warnings (a slow Raft-thread pass, a lost peer) to stderr.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--warnings") {
        let _ = log::set_logger(&Stderr).map(|()| log::set_max_level(log::LevelFilter::Warn));
    }
    let members = arg(&args, "--members", 3);
    let clients = arg(&args, "--clients", 16);
    let seconds = arg(&args, "--seconds", 5);
    let value_bytes = arg(&args, "--value-bytes", 100) as usize;
    let keys = arg(&args, "--keys", 1000);
    let root = std::env::temp_dir().join(format!("pgraft-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let listeners: Vec<std::net::TcpListener> =
        (0..members).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("bound")).collect();
    drop(listeners);
    let list: Vec<(u64, String)> = (1..=members).map(|i| (i, addrs[(i - 1) as usize].to_string())).collect();
    let rss_before = rss_kib();
    let nodes: Vec<Node> = (1..=members)
        .map(|i| {
            Node::start(NodeConfig {
                member: MemberConfig::new(i, "bench", 1),
                data_dir: root.join(format!("n{i}")),
                listen: addrs[(i - 1) as usize],
                advertise: addrs[(i - 1) as usize].to_string(),
                source_ip: None,
                tls: None,
                secret: None,
                timing: Timing::default(),
                bootstrap: Bootstrap::Static(list.clone()),
            })
            .expect("member starts")
        })
        .collect();
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    let start = Instant::now();
    while !handles.iter().any(|h| h.status().is_some_and(|s| s.role == Role::Leader)) {
        assert!(start.elapsed() < Duration::from_secs(20), "no leader after 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let value = vec![b'x'; value_bytes];
    println!(
        "pgraft-bench: {members} members on loopback TCP, fsync on, {clients} clients, {value_bytes}-byte values, {keys} keys, {seconds} s per operation"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "operation", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for (name, kind) in
        [("put", Kind::Put), ("get (linearizable)", Kind::Get), ("compare-and-swap", Kind::Cas)]
    {
        let stop = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new(Vec::<Duration>::new()));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let h = handles[(c % members) as usize].clone();
                let (stop, lat, errors, value) =
                    (Arc::clone(&stop), Arc::clone(&lat), Arc::clone(&errors), value.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = format!("key-{}", (c * 7919 + n) % keys);
                        let req = match kind {
                            Kind::Put => Request::Propose(Body::Kv(KvOp::Put {
                                key,
                                value: value.clone(),
                                time_ms: 0,
                            })),
                            Kind::Get => {
                                Request::Read(Read::Get { key, revision: None }, Consistency::Linearizable)
                            }
                            Kind::Cas => Request::Propose(Body::Kv(KvOp::CompareAndSwap {
                                key,
                                compare: Compare::Value(Some(value.clone())),
                                action: TxnAction::Put(value.clone()),
                                time_ms: 0,
                            })),
                        };
                        let t = Instant::now();
                        match h.call_blocking(req, Duration::from_secs(10)) {
                            Ok(_) => mine.push(t.elapsed()),
                            Err(e) => {
                                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("first {} error: {e}", kind_name(kind));
                                }
                            }
                        }
                    }
                    lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
                })
            })
            .collect();
        let began = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let elapsed = began.elapsed().as_secs_f64();
        let mut l = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        l.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<22} {:>10.0} {:>10.2} {:>10.2} {:>10.2} {:>8}",
            name,
            l.len() as f64 / elapsed,
            ms(percentile(&l, 0.50)),
            ms(percentile(&l, 0.99)),
            ms(percentile(&l, 0.999)),
            errors.load(Ordering::Relaxed)
        );
    }
    let rss = rss_kib();
    println!(
        "memory: process RSS {} MiB with {members} members, about {:.1} MiB per member ({} MiB before they started)",
        rss / 1024,
        rss.saturating_sub(rss_before) as f64 / 1024.0 / members as f64,
        rss_before / 1024
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}
