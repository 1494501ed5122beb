//! Leader loss: kill -9 of the leader, then the time until a surviving member names a new
//! leader and until a write through a survivor succeeds again.
//!
//! ```text
//!  t0 ── kill -9 leader ──▶ poll survivors every 10 ms ──▶ a new leader is named  (elected)
//!        writer on a survivor: put, fail or time out (250 ms), retry ─▶ first success (write)
//!  then: restart the killed member, wait until a write through it succeeds (next trial)
//! ```
//!
//! pgraft's member is a whole PostgreSQL server: every process of its data directory
//! (postmaster, backends, the pgraft worker) gets SIGKILL at once, as one etcd process does.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgraft_testkit::{processes_in, wait_until, LocalCluster};

use crate::clients::{EtcdClient, PgraftClient};
use crate::etcd::EtcdCluster;
use crate::load::Client;

/// One trial's two durations since the kill.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    pub elected: Duration,
    pub write: Duration,
}

const POLL: Duration = Duration::from_millis(10);
const WRITE_TIMEOUT: Duration = Duration::from_millis(250);
const GIVE_UP: Duration = Duration::from_secs(30);

/// Runs the writer side of a trial: retries `put` until one succeeds; returns when.
fn first_write(mut put: impl FnMut(u64) -> Result<()>, barrier: &Barrier) -> Result<Instant> {
    barrier.wait();
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let t = Instant::now();
        if put(n).is_ok() {
            return Ok(Instant::now());
        }
        if start.elapsed() > GIVE_UP {
            bail!("no write succeeded within {GIVE_UP:?} of the kill");
        }
        // A quick refusal (no leader yet) is retried after one poll interval.
        if let Some(rest) = POLL.checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn pgraft_leader(cluster: &LocalCluster) -> Result<u64> {
    wait_until("a pgraft leader", Duration::from_secs(30), Duration::from_millis(50), || {
        for n in cluster.nodes() {
            if let Ok(mut c) = cluster.connect(n.node_id) {
                if c.query_one("SELECT pgraft_is_leader()", &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false)
                {
                    return Ok(Some(n.node_id));
                }
            }
        }
        Ok(None)
    })
}

/// One pgraft trial.
pub fn pgraft_trial(cluster: &LocalCluster, trial: usize) -> Result<Trial> {
    let leader = pgraft_leader(cluster)?;
    let survivors: Vec<u64> = cluster.nodes().iter().map(|n| n.node_id).filter(|id| *id != leader).collect();
    let mut probes: Vec<postgres::Client> =
        survivors.iter().map(|id| cluster.connect(*id)).collect::<Result<_>>()?;
    let writer_conninfo = format!(
        "{} options='-c statement_timeout={}'",
        cluster.node(survivors[0])?.conninfo,
        WRITE_TIMEOUT.as_millis()
    );
    let mut writer = PgraftClient::connect(&writer_conninfo)?;
    let data_dir = cluster.node(leader)?.data_dir.clone();
    let barrier = Barrier::new(2);
    let (t0, elected, written) = std::thread::scope(|s| -> Result<(Instant, Instant, Instant)> {
        let w = s.spawn(|| first_write(|n| writer.put(&format!("failover/{trial}/{n}"), "x"), &barrier));
        let pids = processes_in(&data_dir);
        barrier.wait();
        let t0 = Instant::now();
        for p in &pids {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        let elected = wait_until("a survivor to name a new leader", GIVE_UP, POLL, || {
            for c in &mut probes {
                let l: i32 =
                    c.query_one("SELECT pgraft_get_leader()", &[]).context("pgraft_get_leader")?.get(0);
                if l != 0 && l as u64 != leader {
                    return Ok(Some(Instant::now()));
                }
            }
            Ok(None)
        })?;
        let written = w.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
        Ok((t0, elected, written))
    })?;
    // Back to three members before the next trial: the killed one restarts and a write
    // through it succeeds.
    cluster.start(leader).with_context(|| format!("restart node {leader}"))?;
    let conninfo = cluster.node(leader)?.conninfo.clone();
    wait_until(
        "the restarted member to take a write",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || Ok(PgraftClient::connect(&conninfo).and_then(|mut c| c.put("failover/rejoined", "x")).ok()),
    )?;
    Ok(Trial { elected: elected - t0, write: written - t0 })
}

/// One etcd trial.
pub fn etcd_trial(cluster: &mut EtcdCluster, trial: usize) -> Result<Trial> {
    let leader = wait_until("an etcd leader", Duration::from_secs(30), Duration::from_millis(50), || {
        Ok(cluster.leader_seen_by(0, Duration::from_secs(1)).ok().flatten())
    })?;
    let survivors: Vec<usize> = (0..cluster.client_urls.len()).filter(|i| *i != leader).collect();
    let mut probes: Vec<EtcdClient> = survivors
        .iter()
        .map(|i| EtcdClient::connect(&cluster.client_urls[*i], Some(Duration::from_millis(200))))
        .collect::<Result<_>>()?;
    let mut writer = EtcdClient::connect(&cluster.client_urls[survivors[0]], Some(WRITE_TIMEOUT))?;
    let ids = cluster.member_ids.clone();
    let barrier = Barrier::new(2);
    let (t0, elected, written) = std::thread::scope(|s| -> Result<(Instant, Instant, Instant)> {
        let w = s.spawn(|| first_write(|n| writer.put(&format!("failover/{trial}/{n}"), "x"), &barrier));
        barrier.wait();
        let t0 = Instant::now();
        cluster.kill(leader)?;
        let elected = wait_until("a survivor to name a new leader", GIVE_UP, POLL, || {
            for c in &mut probes {
                if let Ok(st) = c.block(|mut c| async move { c.status().await }) {
                    if st.leader() != 0 && st.leader() != ids[leader] {
                        return Ok(Some(Instant::now()));
                    }
                }
            }
            Ok(None)
        })?;
        let written = w.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
        Ok((t0, elected, written))
    })?;
    cluster.restart(leader)?;
    let url = cluster.client_urls[leader].clone();
    wait_until(
        "the restarted member to take a write",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            Ok(EtcdClient::connect(&url, Some(Duration::from_secs(2)))
                .and_then(|mut c| c.put("failover/rejoined", "x"))
                .ok())
        },
    )?;
    Ok(Trial { elected: elected - t0, write: written - t0 })
}

/// Median and worst of a set of durations.
pub fn median_worst(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (v[v.len() / 2], v[v.len() - 1])
}
