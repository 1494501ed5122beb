//! How fast the health and metrics endpoints answer while the cluster takes writes: what a
//! load balancer's check and a Prometheus scrape see on a busy member. pgraft's worker
//! answers `/leader` and `/metrics` from what its loop published; etcd's `/health` reads
//! through Raft, and its `/metrics` renders its registry.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::load::Figures;

/// One path's answers during a load.
#[derive(Clone, Debug)]
pub struct PathFigures {
    /// The path asked.
    pub path: &'static str,
    /// Latencies of the answered requests.
    pub figures: Figures,
    /// Requests with no answer within the probe's timeout.
    pub failed: u64,
    /// Answered requests that took longer than 50 ms.
    pub over_50ms: usize,
}

/// One system's row: its paths, and the write load they were asked under.
#[derive(Clone, Debug)]
pub struct HealthRow {
    pub system: &'static str,
    pub paths: Vec<PathFigures>,
    pub load: Figures,
}

/// How often each path is asked.
pub const PROBE_EVERY: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `GET path` on 127.0.0.1:`port` answers 200.
pub fn answers_200(port: u16, path: &str) -> bool {
    status(port, path) == Some(200)
}

fn status(port: u16, path: &str) -> Option<u16> {
    request(port, "GET", path, "", PROBE_TIMEOUT).map(|(code, _)| code)
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a connection of its own, answered within
/// `timeout`: the status code and the body (`None`: no answer).
pub fn request(port: u16, method: &str, path: &str, body: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    let _ = c.set_read_timeout(Some(timeout));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let code = std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()?;
    let text = String::from_utf8_lossy(&out);
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Asks each of `paths` on `port` every [`PROBE_EVERY`] while `load` runs.
pub fn probe_during(
    system: &'static str,
    port: u16,
    paths: &[&'static str],
    load: impl FnOnce() -> Result<Figures>,
) -> Result<HealthRow> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let mut seen: Vec<(Vec<u32>, u64)> = vec![(Vec::new(), 0); paths.len()];
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for (i, path) in paths.iter().enumerate() {
                    let t = Instant::now();
                    if status(port, path).is_some() {
                        seen[i].0.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    } else {
                        seen[i].1 += 1;
                    }
                }
                std::thread::sleep(PROBE_EVERY);
            }
            (seen, started.elapsed())
        });
        let load = load();
        stop.store(true, Ordering::Relaxed);
        let (seen, elapsed) = probe.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
        let paths = paths
            .iter()
            .zip(seen)
            .map(|(path, (lat, failed))| {
                let over_50ms = lat.iter().filter(|us| **us > 50_000).count();
                PathFigures { path, figures: Figures::from(lat, elapsed), failed, over_50ms }
            })
            .collect();
        Ok(HealthRow { system, paths, load: load? })
    })
}
