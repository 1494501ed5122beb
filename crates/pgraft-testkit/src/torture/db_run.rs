//! One database torture run: an HA cluster, SQL clients through the read-write conninfo,
//! the nemesis, then heal, convergence and the checks.
//!
//! ```text
//!   pgraftctl local up --ha ─▶ synchronous_mode ─▶ tables ─▶ clients + leader monitor
//!        nemesis: faults aimed at the primary 3 times in 5, replication and Raft links
//!                 cut apart, switchovers, failover_enabled off and on, the last sync
//!                 standby killed
//!   heal ─▶ a write accepted ─▶ one primary, every standby replayed its last LSN
//!   checks: list-append (Elle: strict serializable) · bank · no acknowledged commit
//!           lost (synchronous; asynchronous: only just before a failover) · one writer
//!           at a time · same timeline and tables everywhere · one leader per term ·
//!           writes after heals
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::checks::{self, Anomaly};
use super::client::Workload;
use super::db_checks::{self, FinalBank, LossBound, ServerEnd};
use super::db_history::{DbHistory, Txn};
use super::db_workload::{DbWorkload, SCHEMA};
use super::fault_schedule::FaultSchedule;
use super::leader_monitor::LeaderMonitor;
use super::list_append::{self, FinalLists};
use super::nemesis::Nemesis;
use super::report::{self, CheckResult, OpCounts, Report};
use super::session::connect_blocking;
use super::timelines::{HistoryFiles, Timelines};
use super::torture_run::{heal_and_probe, progress, run_workload, slow_heals, TortureOptions};
use crate::local_cluster::LocalCluster;
use crate::wait::wait_until;
use pgraft_core::ha::fencing_bound_ms;

/// Runs the workload and the faults on `cluster` (an HA cluster), then checks.
pub(super) fn drive(opts: &TortureOptions, cluster: &LocalCluster) -> Result<Report> {
    let rw = cluster.read_write_conninfo();
    set_synchronous_mode(cluster, &opts.synchronous_mode)?;
    let mut c = connect(&rw)?;
    let workload = Arc::new(DbWorkload {
        conninfo: rw.clone(),
        ports: cluster.nodes().iter().map(|n| (n.pg_port, n.node_id)).collect(),
        clients: opts.nodes * opts.clients_per_member,
        seed: opts.seed,
        keys: 8,
        key_period: Duration::from_secs(10),
        accounts: 8,
        op_timeout: Duration::from_secs(8),
        start: Instant::now(),
        histories: Arc::default(),
    });
    let bound = loss_bound_of(&mut c)?;
    c.batch_execute(SCHEMA).context("create the tables")?;
    c.batch_execute(&workload.seed_sql()).context("open the accounts")?;
    drop(c);

    let start = workload.start;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the clients' runtime")?;
    let history = DbHistory::default();
    let monitor = LeaderMonitor::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = workload.spawn(&rt, &history, &stop);
    let watch = Arc::new(Workload::watching(
        cluster.nodes().iter().map(|n| (n.node_id, n.conninfo.clone())).collect(),
        start,
    ));
    tasks.extend(monitor.spawn(&rt, &watch, &stop));

    let nemesis =
        Nemesis::new(cluster, start, opts.recovery_bound).for_ha(rw.clone(), opts.broken_no_fencing);
    let schedule = FaultSchedule::new(opts.seed, &opts.faults, opts.nodes, true)?;
    let (faults, run_us, txns) =
        run_workload(opts, &nemesis, schedule, start, rt, tasks, &stop, &history, "transactions")?;

    let mut anomalies: Vec<Anomaly> = Vec::new();
    let final_recovery_ms = heal_and_probe(&nemesis, &mut anomalies);
    progress("waiting for every standby to replay the primary's last write");
    let ends = match converge(cluster) {
        Ok(e) => e,
        Err(e) => {
            anomalies.push(Anomaly { check: "convergence".into(), detail: format!("{e:#}") });
            BTreeMap::new()
        }
    };
    let (lists, bank, last_timeline) = match read_finals(&rw, &workload.ports, &workload.histories) {
        Ok(x) => x,
        Err(e) => {
            anomalies.push(Anomaly { check: "final reads".into(), detail: format!("{e:#}") });
            (FinalLists::new(), FinalBank::default(), 0)
        }
    };
    progress("state collected; taking the cluster down and checking");
    if let Err(e) = cluster.down() {
        progress(&format!("taking the cluster down: {e:#}"));
    }

    let synchronous = opts.synchronous_mode != "off";
    let mut results = Vec::new();
    let mut check = |name: &str, scope: String, found: Vec<Anomaly>| {
        results.push(CheckResult { name: name.into(), passed: found.is_empty(), scope });
        anomalies.extend(found);
    };
    // Asynchronous mode may lose what a replaced primary acknowledged last: those
    // transactions, and whatever read from them, are left out of the order checks (the
    // loss is judged by the window check instead).
    let first = list_append::check(&txns, &lists, true, &BTreeSet::new());
    let la = if synchronous || first.lost.is_empty() {
        first
    } else {
        let excused = list_append::excused_by_loss(&txns, &first.lost);
        list_append::ListAppendFindings {
            lost: first.lost,
            ..list_append::check(&txns, &lists, true, &excused)
        }
    };
    check(
        "list-append strict serializable",
        format!("{} committed transactions, {} dependencies, {} keys", la.committed, la.edges, lists.len()),
        la.anomalies,
    );
    let (bank_found, lost_transfers) =
        db_checks::bank(&txns, &bank, workload.accounts, DbWorkload::INITIAL_BALANCE);
    check("bank", format!("{} ledger rows, {} accounts", bank.ledger.len(), bank.balances.len()), bank_found);
    let lost_txns: BTreeSet<usize> = la.lost.iter().map(|(_, _, i)| *i).chain(lost_transfers).collect();
    let lost: Vec<Anomaly> = lost_txns
        .iter()
        .take(20)
        .map(|i| {
            let t = &txns[*i];
            Anomaly {
                check: "no acknowledged commit lost".into(),
                detail: format!(
                    "transaction {i} ({}, client {}, {}-{} µs) acknowledged by node {} on timeline {} is gone",
                    t.call.name(),
                    t.client,
                    t.invoke_us,
                    t.complete_us,
                    t.server.node,
                    t.server.timeline
                ),
            }
        })
        .chain((lost_txns.len() > 20).then(|| Anomaly {
            check: "no acknowledged commit lost".into(),
            detail: format!("... and {} more acknowledged transactions gone", lost_txns.len() - 20),
        }))
        .collect();
    let acknowledged = txns.iter().filter(|t| t.is_ok() && t.call.writes()).count();
    if synchronous {
        check("no acknowledged commit lost", format!("{acknowledged} acknowledged writes"), lost);
    } else {
        let histories = workload.histories.lock().map(|h| h.clone()).unwrap_or_default();
        let (timelines, problems) = Timelines::from_histories(&histories);
        let mut found: Vec<Anomaly> = problems
            .into_iter()
            .map(|detail| Anomaly { check: "lost only within the asynchronous bound".into(), detail })
            .collect();
        let (bound_found, furthest) =
            db_checks::loss_bound(&txns, &lost_txns, &timelines, last_timeline, bound);
        found.extend(bound_found);
        check(
            "lost only within the asynchronous bound",
            format!(
                "{} of {acknowledged} acknowledged writes lost, the furthest {furthest} bytes past its \
                 timeline's divergence (bound {} bytes, then {} ms)",
                lost_txns.len(),
                bound.bytes,
                bound.span_us / 1_000
            ),
            found,
        );
    }
    check(
        "one server acknowledges commits at a time",
        format!("{} (server, timeline) pairs", servers(&txns).len()),
        db_checks::one_writer_at_a_time(&txns),
    );
    check(
        "same timeline and tables on every server",
        format!("{} servers", ends.len()),
        db_checks::same_tables(&ends),
    );
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
    Ok(Report {
        seed: opts.seed,
        nodes: opts.nodes,
        clients: workload.clients,
        duration_s: run_us as f64 / 1e6,
        fault_kinds: opts
            .faults
            .iter()
            .filter(|k| k.applies_to(opts.nodes, true))
            .map(|k| k.name().to_string())
            .collect(),
        broken_local_reads: opts.broken_no_fencing,
        ops: count(&txns),
        throughput_per_5s: report::throughput_of(
            txns.iter().filter(|t| t.is_ok()).map(|t| t.complete_us),
            run_us,
        ),
        longest_unavailability: report::longest_gap_of(
            txns.iter().filter(|t| t.is_ok() && t.call.writes()).map(|t| t.complete_us),
            run_us,
        ),
        longest_recovery_ms: faults.iter().filter_map(|f| f.recovery_ms).max(),
        faults,
        final_recovery_ms,
        terms_seen: sightings.len() as u64,
        checks: results,
        anomalies,
        verdict: verdict.into(),
        replay: opts.replay_command(),
        dir: opts.dir.display().to_string(),
        workload: "db".into(),
        synchronous_mode: opts.synchronous_mode.clone(),
        lost_acknowledged: lost_txns.len() as u64,
        primaries: servers(&txns).len() as u64,
    })
}

/// Every (server, timeline) that acknowledged a write.
fn servers(txns: &[Txn]) -> BTreeSet<(u64, u32)> {
    txns.iter().filter(|t| t.is_ok() && t.call.writes()).map(|t| (t.server.node, t.server.timeline)).collect()
}

fn count(txns: &[Txn]) -> BTreeMap<String, OpCounts> {
    let mut out: BTreeMap<String, OpCounts> = BTreeMap::new();
    for t in txns {
        let c = out.entry(t.call.name().to_string()).or_default();
        match t.outcome {
            super::db_history::TxnOutcome::Ok => c.ok += 1,
            super::db_history::TxnOutcome::Failed { .. } => c.failed += 1,
            super::db_history::TxnOutcome::Unknown { .. } => c.unknown += 1,
        }
    }
    out
}

/// Sets `pgraft.synchronous_mode` on every server (ALTER SYSTEM works on hot standbys
/// too) and waits until the primary's `synchronous_standby_names` follows.
pub fn set_synchronous_mode(cluster: &LocalCluster, mode: &str) -> Result<()> {
    if !["on", "off", "strict"].contains(&mode) {
        bail!("synchronous mode {mode:?}: use on, off or strict");
    }
    for n in cluster.nodes() {
        let mut c = cluster.connect(n.node_id)?;
        // One statement each: ALTER SYSTEM refuses to run in the implicit transaction of
        // a multi-statement query.
        for sql in
            [&format!("ALTER SYSTEM SET pgraft.synchronous_mode = '{mode}'"), "SELECT pg_reload_conf()"]
        {
            c.batch_execute(sql).with_context(|| format!("{sql} on node {}", n.node_id))?;
        }
    }
    let want_empty = mode == "off";
    wait_until(
        &format!("the primary's synchronous_standby_names to follow synchronous_mode = {mode}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let mut c = connect(&cluster.read_write_conninfo())?;
            let names: String = c.query_one("SHOW synchronous_standby_names", &[])?.get(0);
            Ok((names.is_empty() == want_empty).then_some(()))
        },
    )
}

fn connect(conninfo: &str) -> Result<postgres::Client> {
    connect_blocking(conninfo, Duration::from_secs(5), Some(Duration::from_secs(30)))
}

/// Waits until one server is the primary and every other one has replayed the primary's
/// WAL up to a point after the last write; then reads each server's timeline and tables.
fn converge(cluster: &LocalCluster) -> Result<BTreeMap<u64, ServerEnd>> {
    let rw = cluster.read_write_conninfo();
    let target: String = wait_until(
        "the primary's WAL position",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || Ok(Some(connect(&rw)?.query_one("SELECT pg_current_wal_lsn()::text", &[])?.get::<_, String>(0))),
    )?;
    wait_until(
        "one primary and every standby replayed to its last write",
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            let mut primaries = 0;
            for n in cluster.nodes() {
                let mut c = cluster.connect(n.node_id)?;
                let row = c.query_one(
                    "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&target],
                )?;
                let (standby, replayed): (bool, bool) = (row.get(0), row.get(1));
                if !standby {
                    primaries += 1;
                } else if !replayed {
                    return Ok(None);
                }
            }
            Ok((primaries == 1).then_some(()))
        },
    )?;
    let mut ends = BTreeMap::new();
    for n in cluster.nodes() {
        let mut c = cluster.connect(n.node_id)?;
        let timeline: i32 = c
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery() \
                   THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
                &[],
            )
            .with_context(|| format!("timeline of node {}", n.node_id))?
            .get::<_, Option<i32>>(0)
            .unwrap_or(0);
        let mut tables = BTreeMap::new();
        for (table, key) in [("torture_lists", "k"), ("torture_accounts", "id"), ("torture_transfers", "id")]
        {
            let sum: String = c
                .query_one(
                    &format!(
                        "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY {key}), '')) FROM {table} t"
                    ),
                    &[],
                )
                .with_context(|| format!("checksum of {table} on node {}", n.node_id))?
                .get(0);
            tables.insert(table.to_string(), sum);
        }
        ends.insert(n.node_id, ServerEnd { timeline: timeline as u32, tables });
    }
    Ok(ends)
}

/// What asynchronous mode may lose with the cluster's settings (read on the primary, in
/// their base units: kB and ms).
fn loss_bound_of(c: &mut postgres::Client) -> Result<LossBound> {
    let row = c
        .query_one(
            "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'pgraft.maximum_lag_on_failover'), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'pgraft.election_timeout')",
            &[],
        )
        .context("read maximum_lag_on_failover and election_timeout")?;
    let (lag_kb, election_ms): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    let lag_kb = lag_kb.context("pgraft.maximum_lag_on_failover is not set")?;
    let election_ms = election_ms.context("pgraft.election_timeout is not set")?;
    Ok(LossBound::new(lag_kb.max(0) as u64 * 1024, fencing_bound_ms(election_ms.max(0) as u64)))
}

/// The final lists and bank, read on the primary, and its timeline (whose history joins
/// `histories`).
fn read_finals(
    rw: &str,
    ports: &[(u16, u64)],
    histories: &Mutex<HistoryFiles>,
) -> Result<(FinalLists, FinalBank, u32)> {
    let mut c = connect(rw)?;
    let row = c
        .query_one(
            "SELECT substr(w, 1, 8), pg_read_file('pg_wal/' || substr(w, 1, 8) || '.history', 0, 1048576, true), inet_server_port() \
             FROM pg_walfile_name(pg_current_wal_lsn()) w",
            &[],
        )
        .context("read the final primary's timeline history")?;
    let (hex, history, port): (String, Option<String>, i32) = (row.get(0), row.get(1), row.get(2));
    let timeline = u32::from_str_radix(&hex, 16).with_context(|| format!("timeline {hex:?}"))?;
    let node = ports.iter().find(|(p, _)| i32::from(*p) == port).map_or(0, |(_, n)| *n);
    if let Ok(mut h) = histories.lock() {
        h.insert((timeline, node), history);
    }
    let lists = c
        .query("SELECT k, v FROM torture_lists", &[])
        .context("read the final lists")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let balances = c
        .query("SELECT id, balance FROM torture_accounts", &[])
        .context("read the final balances")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ledger = c
        .query("SELECT id, src, dst, amount FROM torture_transfers", &[])
        .context("read the ledger")?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    Ok((lists, FinalBank { balances, ledger }, timeline))
}
