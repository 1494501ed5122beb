//! Closed-loop load: N clients, each with its own connection, each sending one request at
//! a time for a fixed duration; every request's latency kept.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One client's connection to the system under test.
pub trait Client: Send {
    /// Stores `value` under `key`; returns once the system acknowledged it.
    fn put(&mut self, key: &str, value: &str) -> Result<()>;
    /// Reads `key` linearizably.
    fn get(&mut self, key: &str) -> Result<()>;
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes.
    Put,
    /// Linearizable reads of keys written before.
    Get,
}

/// Throughput and latency of one case.
pub struct Figures {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
}

/// The key a client uses for its `i`-th request: `keys` keys per client, reused.
pub fn key(client: usize, i: usize, keys: usize) -> String {
    format!("bench/{client:03}/{:06}", i % keys)
}

/// Runs `clients` (already connected) for `duration`, all starting together.
pub fn run(
    clients: Vec<Box<dyn Client>>,
    op: Op,
    duration: Duration,
    keys: usize,
    value: &str,
) -> Result<Figures> {
    let barrier = Arc::new(Barrier::new(clients.len() + 1));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, mut c)| {
            let barrier = barrier.clone();
            let value = value.to_string();
            std::thread::spawn(move || -> Result<Vec<u32>> {
                let mut lat = Vec::with_capacity(4096);
                barrier.wait();
                let end = Instant::now() + duration;
                let mut i = 0;
                while Instant::now() < end {
                    let k = key(id, i, keys);
                    let t = Instant::now();
                    match op {
                        Op::Put => c.put(&k, &value),
                        Op::Get => c.get(&k),
                    }
                    .with_context(|| format!("client {id}, request {i}"))?;
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    i += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            return Duration::ZERO;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        Duration::from_micros(all[i] as u64)
    };
    Ok(Figures {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
    })
}
