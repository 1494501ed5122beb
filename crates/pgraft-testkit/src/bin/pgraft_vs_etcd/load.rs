//! Closed-loop load: N clients, each with its own connection, each sending one request at
//! a time for a fixed duration (or until a shared key counter runs out); every request's
//! latency kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One client's connection to the system under test.
pub trait Client: Send {
    /// Stores `value` under `key`; returns once the system acknowledged it.
    fn put(&mut self, key: &str, value: &str) -> Result<()>;
    /// Reads `key` linearizably.
    fn get(&mut self, key: &str) -> Result<()>;
    /// Replicates `payload` as one log entry (pgraft only).
    fn replicate(&mut self, payload: &str) -> Result<()> {
        let _ = payload;
        anyhow::bail!("this system has no replicate call")
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes.
    Put,
    /// Linearizable reads of keys written before.
    Get,
    /// `pgraft_replicate_entry`.
    Replicate,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Replicate => "replicate",
        }
    }
}

/// Throughput and latency of one case.
#[derive(Clone, Debug)]
pub struct Figures {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// Every request's latency in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Requests that failed (timed out) and were sent again (`fill` only).
    pub retried: u64,
    /// Latencies (µs, sorted) by the member the clients talk to, client i on member
    /// i mod [`MEMBERS`] (`run` only).
    pub by_member: Vec<Vec<u32>>,
}

/// Members of the clusters the KV cases spread their clients over.
pub const MEMBERS: usize = 3;

/// The latency at quantile `q` of sorted latencies in µs.
pub fn quantile(sorted: &[u32], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_micros(u64::from(sorted[i]))
}

impl Figures {
    /// Figures of `all` latencies (µs) over `elapsed`.
    pub fn from(mut all: Vec<u32>, elapsed: Duration) -> Self {
        all.sort_unstable();
        Figures {
            per_second: all.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50: quantile(&all, 0.50),
            p99: quantile(&all, 0.99),
            p999: quantile(&all, 0.999),
            latencies_us: all,
            retried: 0,
            by_member: Vec::new(),
        }
    }
}

/// The key a client uses for its `i`-th request: `keys` keys per client, reused.
pub fn key(client: usize, i: usize, keys: usize) -> String {
    format!("bench/{client:03}/{:06}", i % keys)
}

/// Runs `clients` (already connected) for `duration`, all starting together.
pub fn run(
    clients: &mut [Box<dyn Client>],
    op: Op,
    duration: Duration,
    keys: usize,
    value: &str,
) -> Result<Figures> {
    let barrier = Barrier::new(clients.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(id, c)| {
                let barrier = &barrier;
                s.spawn(move || -> Result<Vec<u32>> {
                    let mut lat = Vec::with_capacity(4096);
                    barrier.wait();
                    let end = Instant::now() + duration;
                    let mut i = 0;
                    while Instant::now() < end {
                        let k = key(id, i, keys);
                        let t = Instant::now();
                        match op {
                            Op::Put => c.put(&k, value),
                            Op::Get => c.get(&k),
                            Op::Replicate => c.replicate(value),
                        }
                        .with_context(|| format!("client {id}, request {i}"))?;
                        lat.push(micros(t.elapsed()));
                        i += 1;
                    }
                    Ok(lat)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut all = Vec::new();
        let mut by_member = vec![Vec::new(); MEMBERS];
        for (id, h) in handles.into_iter().enumerate() {
            let lat = h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            by_member[id % MEMBERS].extend_from_slice(&lat);
            all.extend(lat);
        }
        let mut f = Figures::from(all, started.elapsed());
        by_member.iter_mut().for_each(|l| l.sort_unstable());
        f.by_member = by_member;
        Ok(f)
    })
}

/// Writes keys `key_of(n)` for every `n` in `from..to`, the clients taking the next index
/// from a shared counter until it runs out. A write that fails (a server-side timeout
/// under sustained load) is counted and sent again, up to three times; its latency counts
/// from the first attempt.
pub fn fill(
    clients: &mut [Box<dyn Client>],
    from: u64,
    to: u64,
    key_of: &(dyn Fn(u64) -> String + Sync),
    value: &str,
) -> Result<Figures> {
    let next = AtomicU64::new(from);
    let retried = AtomicU64::new(0);
    let started = Instant::now();
    let all = std::thread::scope(|s| -> Result<Vec<u32>> {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|c| {
                let (next, retried) = (&next, &retried);
                s.spawn(move || -> Result<Vec<u32>> {
                    let mut lat = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= to {
                            return Ok(lat);
                        }
                        let t = Instant::now();
                        let mut attempt = 0;
                        while let Err(e) = c.put(&key_of(n), value) {
                            attempt += 1;
                            if attempt > 3 {
                                return Err(e)
                                    .with_context(|| format!("write key number {n}, attempt {attempt}"));
                            }
                            eprintln!("  write {n} failed, sending it again: {e:#}");
                            retried.fetch_add(1, Ordering::Relaxed);
                        }
                        lat.push(micros(t.elapsed()));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("a writer thread panicked"))??);
        }
        Ok(all)
    })?;
    let mut f = Figures::from(all, started.elapsed());
    f.retried = retried.into_inner();
    Ok(f)
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}
