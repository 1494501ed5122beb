//! One torture run from start to verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::checks::{self, Anomaly, FinalValues, LogRecord};
use super::client::Workload;
use super::fault_schedule::{FaultKind, FaultSchedule};
use super::history::History;
use super::leader_monitor::LeaderMonitor;
use super::nemesis::{FaultRecord, Nemesis};
use super::report::{self, CheckResult, Report};
use super::session::connect_blocking;
use crate::local_cluster::{LocalCluster, UpOptions};
use crate::pg_install::PgInstall;
use crate::wait::wait_until;

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct TortureOptions {
    /// Members (3 or 5 are the interesting sizes).
    pub nodes: u64,
    /// How long clients run while faults are injected.
    pub duration: Duration,
    /// The seed of the fault schedule and of the clients' choices.
    pub seed: u64,
    /// Clients per member.
    pub clients_per_member: u64,
    /// The fault kinds to draw from.
    pub faults: Vec<FaultKind>,
    /// Where the run's cluster, logs, history and report live.
    pub dir: PathBuf,
    /// The PostgreSQL installation with the extension.
    pub pg_config: PathBuf,
    /// The program that serves `local proxy --dir DIR` (the torture binary itself).
    pub proxy_exe: PathBuf,
    /// A heal must be followed by an accepted write within this.
    pub recovery_bound: Duration,
    /// Serve reads from local state without ReadIndex: a deliberately broken store.
    pub broken_local_reads: bool,
    /// Keep the directory even when the run passes.
    pub keep: bool,
    /// Mutual TLS between members (`pgraftctl local up --tls`).
    pub tls: bool,
    /// The database workload: SQL transactions on an HA cluster (`pgraftctl local up
    /// --ha`) instead of the KV store's functions.
    pub db: bool,
    /// `pgraft.synchronous_mode` of the database workload: `on`, `strict` or `off`.
    pub synchronous_mode: String,
    /// The database workload's deliberately broken cluster: a primary cut off from
    /// everything neither fences nor waits for standbys.
    pub broken_no_fencing: bool,
}

impl TortureOptions {
    /// The options of a run with this seed and length, everything else at its default.
    pub fn new(seed: u64, duration: Duration, dir: PathBuf, proxy_exe: PathBuf) -> Self {
        Self {
            nodes: 3,
            duration,
            seed,
            clients_per_member: 2,
            faults: FaultKind::ALL.to_vec(),
            dir,
            pg_config: PathBuf::from(PgInstall::DEFAULT_PG_CONFIG),
            proxy_exe,
            recovery_bound: Duration::from_secs(30),
            broken_local_reads: false,
            keep: false,
            tls: false,
            db: false,
            synchronous_mode: "on".into(),
            broken_no_fencing: false,
        }
    }

    /// The command line that replays this run's schedule.
    pub fn replay_command(&self) -> String {
        let kinds: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
        let mut cmd = format!(
            "pgraft-torture --seed {} --nodes {} --duration {}s --clients {} --faults {} --pg-config {}",
            self.seed,
            self.nodes,
            self.duration.as_secs(),
            self.clients_per_member,
            kinds.join(","),
            self.pg_config.display(),
        );
        if self.db {
            cmd += &format!(" --workload db --synchronous-mode {}", self.synchronous_mode);
        }
        for (on, flag) in [
            (self.broken_local_reads, " --broken-local-reads"),
            (self.broken_no_fencing, " --broken-no-fencing"),
            (self.tls, " --tls"),
        ] {
            if on {
                cmd += flag;
            }
        }
        cmd
    }
}

/// Runs the whole torture: cluster up, workload and faults, heal, convergence, checks,
/// report. The cluster is always taken down; its directory is kept when the run fails
/// (or with `keep`).
pub fn run(opts: &TortureOptions) -> Result<Report> {
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
    // The servers may run as another account, which must enter the directory.
    std::fs::set_permissions(&opts.dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", opts.dir.display()))?;
    let cluster_dir = opts.dir.join("cluster");
    progress(&format!("seed {}: starting {} members in {}", opts.seed, opts.nodes, cluster_dir.display()));
    let up = UpOptions {
        nodes: opts.nodes,
        dir: cluster_dir.clone(),
        raft_port: None,
        pg_port: None,
        no_init: false,
        pg_config: opts.pg_config.clone(),
        proxy_exe: opts.proxy_exe.clone(),
        tls: opts.tls,
        cluster_secret: false,
        direct_peers: false,
        ha: opts.db,
        http: false,
    };
    let cluster = match LocalCluster::up(&up) {
        Ok(c) => c,
        Err(e) => {
            if let Ok(c) = LocalCluster::open(&cluster_dir) {
                let _ = c.down();
            }
            return Err(e.context("start the cluster"));
        }
    };
    let outcome = if opts.db { super::db_run::drive(opts, &cluster) } else { drive(opts, &cluster) };
    if let Err(e) = cluster.down() {
        progress(&format!("taking the cluster down: {e:#}"));
    }
    let report = outcome?;
    let text = serde_json::to_string_pretty(&report).context("serialise the report")?;
    std::fs::write(opts.dir.join("report.json"), text + "\n").context("write report.json")?;
    if report.passed() && !opts.keep {
        std::fs::remove_dir_all(&opts.dir).with_context(|| format!("remove {}", opts.dir.display()))?;
    }
    Ok(report)
}

pub(super) fn progress(msg: &str) {
    eprintln!("pgraft-torture: {msg}");
}

fn drive(opts: &TortureOptions, cluster: &LocalCluster) -> Result<Report> {
    let start = Instant::now();
    let workload = Arc::new(Workload {
        members: cluster.nodes().iter().map(|n| (n.node_id, n.conninfo.clone())).collect(),
        clients_per_member: opts.clients_per_member,
        seed: opts.seed,
        keys: 8,
        key_period: Duration::from_secs(5),
        op_timeout: Duration::from_secs(8),
        statement_timeout: Duration::from_secs(5),
        broken_local_reads: opts.broken_local_reads,
        start,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the clients' runtime")?;
    let history = History::default();
    let monitor = LeaderMonitor::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = workload.spawn(&rt, &history, &stop);
    tasks.extend(monitor.spawn(&rt, &workload, &stop));

    // The nemesis runs here until the duration is used up.
    let nemesis = Nemesis::new(cluster, start, opts.recovery_bound);
    let schedule = FaultSchedule::new(opts.seed, &opts.faults, opts.nodes, false)?;
    let (faults, run_us, history) =
        run_workload(opts, &nemesis, schedule, start, rt, tasks, &stop, &history, "operations")?;

    // Heal everything and converge.
    let mut anomalies: Vec<Anomaly> = Vec::new();
    let final_recovery_ms = heal_and_probe(&nemesis, &mut anomalies);
    progress("waiting for every member to hold the same state");
    let hashes = converge(cluster).unwrap_or_else(|(e, last)| {
        anomalies.push(Anomaly { check: "convergence".into(), detail: format!("{e:#}") });
        last
    });

    // Read the final state and logs.
    let keys: BTreeSet<String> = history.iter().filter_map(|o| o.call.key().map(str::to_string)).collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let mut finals: FinalValues = BTreeMap::new();
    let mut logs: BTreeMap<u64, Vec<LogRecord>> = BTreeMap::new();
    for n in cluster.nodes() {
        match final_values(cluster, n.node_id, &keys) {
            Ok(v) => {
                finals.insert(n.node_id, v);
            }
            Err(e) => anomalies.push(Anomaly { check: "final reads".into(), detail: format!("{e:#}") }),
        }
        match applied_log(cluster, n.node_id) {
            Ok(l) => {
                logs.insert(n.node_id, l);
            }
            Err(e) => anomalies.push(Anomaly { check: "log read".into(), detail: format!("{e:#}") }),
        }
    }

    // Everything is collected: free the machine for the checker.
    progress("state collected; taking the cluster down and checking");
    if let Err(e) = cluster.down() {
        progress(&format!("taking the cluster down: {e:#}"));
    }

    // The checks.
    let mut results = Vec::new();
    let mut check = |name: &str, scope: String, found: Vec<Anomaly>| {
        results.push(CheckResult { name: name.into(), passed: found.is_empty(), scope });
        anomalies.extend(found);
    };
    let kv_ops = history.iter().filter(|o| o.to_checker().is_some()).count();
    check(
        "linearizable per key",
        format!("{kv_ops} KV operations on {} keys, plus {} final reads per member", keys.len(), keys.len()),
        checks::linearizable(&history, &finals),
    );
    check("no acknowledged write lost", format!("{} keys on {} members", keys.len(), finals.len()), {
        checks::lost_writes(&history, &finals)
    });
    check(
        "same KV state on every member",
        format!("hashes {hashes:?}"),
        checks::same_state(&hashes, &finals),
    );
    let records: usize = logs.values().map(Vec::len).sum();
    check("same applied log on every member", format!("{records} applied entries"), checks::same_log(&logs));
    let (found, checked) = checks::appends_present(&history, &logs);
    check("acknowledged appends on every member", format!("{checked} (append, member) pairs"), found);
    let sightings = monitor.sightings();
    check(
        "at most one leader per term",
        format!("{} terms", sightings.len()),
        checks::one_leader_per_term(&sightings),
    );
    check(
        "writes accepted again after every heal",
        format!("{} heals, bound {:?}", faults.len(), opts.recovery_bound),
        slow_heals(&faults, opts.recovery_bound),
    );

    let verdict = if anomalies.is_empty() { "pass" } else { "fail" };
    let report = Report {
        seed: opts.seed,
        nodes: opts.nodes,
        clients: opts.nodes * opts.clients_per_member,
        duration_s: run_us as f64 / 1e6,
        fault_kinds: opts
            .faults
            .iter()
            .filter(|k| k.applies_to(opts.nodes, false))
            .map(|k| k.name().to_string())
            .collect(),
        broken_local_reads: opts.broken_local_reads,
        ops: report::count_ops(&history),
        throughput_per_5s: report::throughput(&history, run_us),
        longest_unavailability: report::longest_gap(&history, run_us),
        longest_recovery_ms: faults.iter().filter_map(|f| f.recovery_ms).max(),
        faults,
        final_recovery_ms,
        terms_seen: sightings.len() as u64,
        checks: results,
        anomalies,
        verdict: verdict.into(),
        replay: opts.replay_command(),
        dir: opts.dir.display().to_string(),
        workload: "kv".into(),
        synchronous_mode: String::new(),
        lost_acknowledged: 0,
        primaries: 0,
    };
    Ok(report)
}

/// The run itself, for either workload: the fault schedule while the clients work, then
/// the clients stopped and their history saved (`history.jsonl`). Returns the faults, how
/// long the workload ran (µs) and the history; `unit` names its items in progress lines.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_workload<T: Clone + serde::Serialize>(
    opts: &TortureOptions,
    nemesis: &Nemesis<'_>,
    schedule: FaultSchedule,
    start: Instant,
    rt: tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    history: &History<T>,
    unit: &str,
) -> Result<(Vec<FaultRecord>, u64, Vec<T>)> {
    let faults = run_schedule(opts, nemesis, schedule, start, || format!("{} {unit}", history.len()));
    let run_us = start.elapsed().as_micros() as u64;
    stop_clients(rt, tasks, stop);
    let items = history.snapshot();
    write_jsonl(&opts.dir.join("history.jsonl"), &items)?;
    progress(&format!(
        "workload stopped after {:.1} s with {} {unit}; healing",
        run_us as f64 / 1e6,
        items.len()
    ));
    Ok((faults, run_us, items))
}

/// The nemesis's part of a run, on this thread: every planned fault that fits in the
/// duration, each reported as it ends (`done` says how much the clients did so far), then
/// the rest of the duration.
pub(super) fn run_schedule(
    opts: &TortureOptions,
    nemesis: &Nemesis<'_>,
    schedule: FaultSchedule,
    start: Instant,
    done: impl Fn() -> String,
) -> Vec<FaultRecord> {
    let mut faults = Vec::new();
    for planned in schedule {
        if start.elapsed() + planned.quiet + planned.hold >= opts.duration {
            break;
        }
        std::thread::sleep(planned.quiet);
        let rec = nemesis.run(&planned);
        progress(&format!(
            "{:>6.1}s fault {} {}: {} · writes again after {} · {} so far{}",
            rec.start_us as f64 / 1e6,
            rec.seq,
            rec.kind,
            rec.detail,
            rec.recovery_ms.map_or("NOT within the bound".into(), |m| format!("{m} ms")),
            done(),
            rec.error.as_deref().map(|e| format!(" [{e}]")).unwrap_or_default()
        ));
        faults.push(rec);
    }
    if let Some(rest) = opts.duration.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    faults
}

/// Stops the clients and the monitor: each finishes (or gives up on) what it has in
/// flight.
pub(super) fn stop_clients(
    rt: tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
) {
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Lifts every fault and waits for an accepted write: how long that took, or `None`
/// with the anomaly recorded.
pub(super) fn heal_and_probe(nemesis: &Nemesis<'_>, anomalies: &mut Vec<Anomaly>) -> Option<u64> {
    if let Err(e) = nemesis.heal_everything() {
        anomalies.push(Anomaly { check: "heal".into(), detail: format!("{e:#}") });
    }
    match nemesis.probe_write() {
        Ok(d) => Some(d.as_millis() as u64),
        Err(e) => {
            anomalies
                .push(Anomaly { check: "writes accepted after healing".into(), detail: format!("{e:#}") });
            None
        }
    }
}

/// The faults after whose heal no write was accepted within `bound`.
pub(super) fn slow_heals(faults: &[FaultRecord], bound: Duration) -> Vec<Anomaly> {
    faults
        .iter()
        .filter(|f| f.recovery_ms.is_none())
        .map(|f| Anomaly {
            check: "writes accepted after healing".into(),
            detail: format!(
                "no write accepted within {bound:?} after healing fault {} ({}: {})",
                f.seq, f.kind, f.detail
            ),
        })
        .collect()
}

/// Writes `items` as JSON lines (the run's `history.jsonl`).
pub(super) fn write_jsonl<T: serde::Serialize>(path: &std::path::Path, items: &[T]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    for item in items {
        serde_json::to_writer(&mut f, item).with_context(|| format!("write {}", path.display()))?;
        f.write_all(b"\n").with_context(|| format!("write {}", path.display()))?;
    }
    f.flush().with_context(|| format!("write {}", path.display()))
}

fn connect(cluster: &LocalCluster, id: u64) -> Result<postgres::Client> {
    connect_blocking(&cluster.node(id)?.conninfo, Duration::from_secs(5), Some(Duration::from_secs(30)))
        .with_context(|| format!("node {id}"))
}

type Hashes = BTreeMap<u64, (i64, i64)>;

/// Waits until every member has applied the same index and holds the same KV hash.
fn converge(cluster: &LocalCluster) -> std::result::Result<Hashes, (anyhow::Error, Hashes)> {
    let mut last = Hashes::new();
    let r = wait_until(
        "every member to hold the same state",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            let mut hashes = Hashes::new();
            let mut applied = BTreeSet::new();
            for n in cluster.nodes() {
                let mut c = connect(cluster, n.node_id)?;
                let row = c
                .query_one(
                    "SELECT h.hash, h.hash_revision, s.last_applied FROM pgraft_kv_hash() h, pgraft_shared_state() s",
                    &[],
                )
                .with_context(|| format!("kv hash of node {}", n.node_id))?;
                hashes.insert(n.node_id, (row.get(0), row.get(1)));
                applied.insert(row.get::<_, i64>(2));
            }
            last = hashes.clone();
            let distinct: BTreeSet<_> = hashes.values().collect();
            Ok((distinct.len() == 1 && applied.len() == 1).then_some(hashes))
        },
    );
    r.map_err(|e| (e, last))
}

fn final_values(
    cluster: &LocalCluster,
    id: u64,
    keys: &[String],
) -> Result<BTreeMap<String, Option<String>>> {
    let mut c = connect(cluster, id)?;
    let rows = c
        .query("SELECT k, pgraft_kv_get_serializable(k) FROM unnest($1::text[]) k", &[&keys])
        .with_context(|| format!("final reads on node {id}"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn applied_log(cluster: &LocalCluster, id: u64) -> Result<Vec<LogRecord>> {
    let mut c = connect(cluster, id)?;
    let rows = c
        .query(
            "SELECT m.raft_index, a.raft_term, m.operation_type, coalesce(m.target_table, ''), \
                    coalesce(m.operation_data::text, ''), \
                    coalesce((extract(epoch FROM a.applied_at) * 1000)::bigint, 0) \
               FROM pgraft.log_index_mapping m JOIN pgraft.applied_entries a USING (raft_index)",
            &[],
        )
        .with_context(|| format!("applied entries of node {id}"))?;
    Ok(rows
        .iter()
        .map(|r| LogRecord {
            index: r.get::<_, i64>(0) as u64,
            term: r.get::<_, i64>(1) as u64,
            operation: r.get(2),
            target: r.get(3),
            data: r.get(4),
            applied_ms: r.get::<_, i64>(5) as u64,
        })
        .collect())
}
