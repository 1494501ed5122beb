//! Cost at rest and under load: CPU per idle member, resident memory, disk per write
//! before and after compaction, and pgbench on PostgreSQL with and without pgraft.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgraft_testkit::{processes_in, wait_until, LocalCluster};

use crate::clients::EtcdClient;
use crate::etcd::EtcdCluster;
use crate::procstat::{cmdline_contains, cpu_seconds, disk_bytes, machine_cpu, rss_bytes};

/// CPU used by one idle member, in percent of one core.
#[derive(Clone, Debug)]
pub struct IdleCpu {
    pub pgraft_server: Vec<f64>,
    pub pgraft_worker: Vec<f64>,
    pub etcd: Vec<f64>,
    /// What everything else on the machine used over the same window, in percent of one
    /// core (the machine is shared: this says how quiet it was).
    pub others: f64,
    pub seconds: f64,
}

/// The pgraft worker's process id on member `id`.
pub fn worker_pid(cluster: &LocalCluster, id: u64) -> Result<i32> {
    let node = cluster.node(id)?;
    processes_in(&node.data_dir)
        .into_iter()
        .find(|p| cmdline_contains(*p, "pgraft worker"))
        .with_context(|| format!("no pgraft worker process on node {id}"))
}

/// Measures CPU of both idle clusters over the same `window`.
pub fn idle_cpu(pgraft: &LocalCluster, etcd: &EtcdCluster, window: Duration) -> Result<IdleCpu> {
    let servers: Vec<Vec<i32>> = pgraft.nodes().iter().map(|n| processes_in(&n.data_dir)).collect();
    let workers: Vec<i32> =
        pgraft.nodes().iter().map(|n| worker_pid(pgraft, n.node_id)).collect::<Result<_>>()?;
    let etcds: Vec<i32> = (0..etcd.client_urls.len()).filter_map(|i| etcd.pid(i)).map(|p| p as i32).collect();
    let sum = |pids: &[i32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let before_servers: Vec<f64> = servers.iter().map(|p| sum(p)).collect();
    let before_workers: Vec<f64> = workers.iter().map(|p| cpu_seconds(*p)).collect();
    let before_etcd: Vec<f64> = etcds.iter().map(|p| cpu_seconds(*p)).collect();
    let (busy0, _) = machine_cpu();
    let me0 = cpu_seconds(std::process::id() as i32);
    let t = std::time::Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    let (busy1, _) = machine_cpu();
    let me1 = cpu_seconds(std::process::id() as i32);
    let pct = |d: f64| 100.0 * d / secs;
    let pgraft_server: Vec<f64> = servers.iter().zip(&before_servers).map(|(p, b)| pct(sum(p) - b)).collect();
    let pgraft_worker: Vec<f64> =
        workers.iter().zip(&before_workers).map(|(p, b)| pct(cpu_seconds(*p) - b)).collect();
    let etcd_pct: Vec<f64> = etcds.iter().zip(&before_etcd).map(|(p, b)| pct(cpu_seconds(*p) - b)).collect();
    let ours: f64 = pgraft_server.iter().sum::<f64>() + etcd_pct.iter().sum::<f64>() + pct(me1 - me0);
    Ok(IdleCpu {
        others: (pct(busy1 - busy0) - ours).max(0.0),
        pgraft_server,
        pgraft_worker,
        etcd: etcd_pct,
        seconds: secs,
    })
}

/// Resident memory, bytes: per pgraft worker (all, private) and per etcd process.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub pgraft_worker: Vec<(u64, u64)>,
    pub etcd: Vec<u64>,
}

pub fn memory(pgraft: &LocalCluster, etcd: &EtcdCluster) -> Result<Memory> {
    let mut m = Memory::default();
    for n in pgraft.nodes() {
        m.pgraft_worker.push(rss_bytes(worker_pid(pgraft, n.node_id)?));
    }
    for i in 0..etcd.client_urls.len() {
        if let Some(p) = etcd.pid(i) {
            m.etcd.push(rss_bytes(p as i32).0);
        }
    }
    Ok(m)
}

/// Disk used by one system's members (mean per member, bytes) at three moments.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub writes: u64,
    /// Writes that failed (timed out) and were sent again.
    pub retried: u64,
    pub before: u64,
    pub after_writes: u64,
    pub after_compaction: u64,
    /// The largest files of member 1 after the writes and after compaction.
    pub files_after_writes: Vec<(String, u64)>,
    pub files_after_compaction: Vec<(String, u64)>,
}

impl Disk {
    /// Growth per million writes, extrapolated from `writes`.
    pub fn per_million(&self, after: u64) -> f64 {
        (after as f64 - self.before as f64) * 1e6 / self.writes.max(1) as f64
    }
}

fn mean_disk(dirs: &[PathBuf]) -> u64 {
    dirs.iter().map(|d| disk_bytes(d)).sum::<u64>() / dirs.len().max(1) as u64
}

/// Waits until the disk use under `dirs` stops changing for a second (15 s at most).
pub fn settled_disk(dirs: &[PathBuf]) -> u64 {
    let mut last = mean_disk(dirs);
    let mut stable = 0;
    let r = wait_until("disk use to settle", Duration::from_secs(15), Duration::from_millis(250), || {
        let now = mean_disk(dirs);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        Ok((stable >= 4).then_some(now))
    });
    r.unwrap_or(last)
}

pub fn pgraft_dirs(c: &LocalCluster) -> Vec<PathBuf> {
    c.nodes().iter().map(|n| n.raft_data_dir.clone()).collect()
}

/// `pgraft_kv_compact()` on every member (each compacts its own log behind a snapshot).
pub fn pgraft_compact(c: &LocalCluster) -> Result<()> {
    for n in c.nodes() {
        let mut conn = c.connect(n.node_id)?;
        conn.query_one("SELECT pgraft_kv_compact()", &[])
            .with_context(|| format!("pgraft_kv_compact() on node {}", n.node_id))?;
    }
    Ok(())
}

/// etcd's compaction to the current revision (physical), then a defragmentation of every
/// member, which is what gives the space back to the filesystem.
pub fn etcd_compact(e: &EtcdCluster) -> Result<()> {
    let mut c = EtcdClient::connect(&e.client_urls[0], Some(Duration::from_secs(60)))?;
    let rev = c
        .block(|mut c| async move { c.get("compaction-probe", None).await })?
        .header()
        .map(|h| h.revision())
        .context("a get without a header")?;
    c.block(|mut c| async move {
        c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await
    })
    .context("etcd compact")?;
    for url in &e.client_urls {
        let mut m = EtcdClient::connect(url, Some(Duration::from_secs(120)))?;
        m.block(|mut c| async move { c.defragment().await }).with_context(|| format!("defragment {url}"))?;
    }
    Ok(())
}

/// pgbench TPS, median over rounds, on the server with pgraft and on the one without.
#[derive(Clone, Debug)]
pub struct Pgbench {
    pub mode: &'static str,
    pub clients: u32,
    pub with_pgraft: Vec<f64>,
    pub without: Vec<f64>,
}

/// Runs pgbench's two built-in scripts against both servers in alternating rounds.
pub fn pgbench(
    pgbench: &Path,
    with_port: u16,
    without_port: u16,
    rounds: usize,
    seconds: u64,
    clients: u32,
) -> Result<Vec<Pgbench>> {
    for port in [with_port, without_port] {
        run_pgbench(pgbench, port, &["-i", "-q", "-s", "10"])
            .with_context(|| format!("pgbench -i on port {port}"))?;
    }
    let mut out = Vec::new();
    for (mode, flags) in [("tpcb-like (writes, fsync)", &[][..]), ("select-only", &["-S"][..])] {
        let mut r = Pgbench { mode, clients, with_pgraft: Vec::new(), without: Vec::new() };
        for round in 0..rounds {
            // Alternate which server goes first, so drift on a shared machine hits both.
            let order = if round % 2 == 0 { [with_port, without_port] } else { [without_port, with_port] };
            for port in order {
                let c = clients.to_string();
                let t = seconds.to_string();
                let mut args = vec!["-n", "-M", "prepared", "-c", &c, "-j", "2", "-T", &t];
                args.extend_from_slice(flags);
                let text = run_pgbench(pgbench, port, &args)?;
                let tps = parse_tps(&text).with_context(|| format!("no tps in pgbench's output: {text}"))?;
                if port == with_port {
                    r.with_pgraft.push(tps);
                } else {
                    r.without.push(tps);
                }
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn run_pgbench(pgbench: &Path, port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new(pgbench)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .output()
        .with_context(|| format!("run {}", pgbench.display()))?;
    if !out.status.success() {
        bail!("pgbench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The median of a set of figures.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}
