//! `pgraftctl endpoint status|health`: every endpoint at once, like `etcdctl endpoint`.
//!
//! Each endpoint is asked on its own thread, so an unreachable one costs one
//! `--dial-timeout`, not one per endpoint. An endpoint that cannot answer gets a row with
//! its error, a warning on stderr, and a non-zero exit status. `--watch` asks again every
//! `--interval`, redrawing the table in place on a terminal (one table, or one JSON line,
//! per round otherwise).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cluster_args::{parse_duration, sql_error, ClusterArgs, Endpoint};
use crate::server::Output;
use crate::table::{cell, Table};

#[derive(Args)]
pub struct EndpointArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: EndpointCommand,
}

/// Repeating a command.
#[derive(Args, Clone, Copy)]
struct Watch {
    /// Ask again every --interval, redrawing in place on a terminal, until interrupted.
    #[arg(long)]
    watch: bool,
    /// Time between rounds of --watch.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Stop --watch after this many rounds (default: until interrupted).
    #[arg(long, requires = "watch")]
    count: Option<u64>,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Each endpoint's member: id, version, log size, leadership, term, indexes, errors.
    Status {
        #[command(flatten)]
        watch: Watch,
    },
    /// Each endpoint's health: worker running, leader known, quorum met, and a
    /// linearizable read answered in time.
    Health {
        #[command(flatten)]
        watch: Watch,
    },
}

/// Asks every endpoint once.
type RoundFn = fn(&ClusterArgs, &[Endpoint]) -> Round;

/// What one round found: rows for the output, and whether every endpoint was fine.
struct Round {
    json: Value,
    table: Table,
    failures: Vec<String>,
}

pub fn run(args: EndpointArgs) -> Result<()> {
    let c = &args.cluster;
    let eps = c.endpoint_list()?;
    let (watch, round): (Watch, RoundFn) = match args.command {
        EndpointCommand::Status { watch } => (watch, status_round),
        EndpointCommand::Health { watch } => (watch, health_round),
    };
    if !watch.watch {
        let r = round(c, &eps);
        emit(c.output, &r, false)?;
        return finish(&r);
    }
    let tty = std::io::stdout().is_terminal();
    let mut n = 0u64;
    loop {
        let started = Instant::now();
        let r = round(c, &eps);
        n += 1;
        if tty && c.output == Output::Table {
            // The screen cleared once, then each round: cursor home, each line cleared to
            // its end, the rest of the screen cleared; redrawn in place without flicker.
            let mut screen = format!(
                "{}\x1b[HEvery {:?}: pgraftctl endpoint, round {n}, {} UTC\x1b[K\n\x1b[K\n",
                if n == 1 { "\x1b[2J" } else { "" },
                watch.interval,
                pgraft_server_api::format_utc(SystemTime::now())
            );
            for l in r.table.lines() {
                screen.push_str(&l);
                screen.push_str("\x1b[K\n");
            }
            for f in &r.failures {
                screen.push_str(&format!("error: {f}\x1b[K\n"));
            }
            screen.push_str("\x1b[J");
            let mut out = std::io::stdout().lock();
            out.write_all(screen.as_bytes()).context("write to the terminal")?;
            out.flush().context("flush the terminal")?;
        } else {
            emit(c.output, &r, true)?;
        }
        if watch.count.is_some_and(|max| n >= max) {
            return finish(&r);
        }
        std::thread::sleep(watch.interval.saturating_sub(started.elapsed()));
    }
}

fn emit(out: Output, r: &Round, watching: bool) -> Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string(&r.json).context("serialise")?),
        Output::Table => {
            r.table.print();
            if watching {
                println!();
            }
        }
    }
    std::io::stdout().flush().context("flush stdout")
}

fn finish(r: &Round) -> Result<()> {
    match r.failures.len() {
        0 => Ok(()),
        1 => bail!("{}", r.failures[0]),
        n => bail!("{n} endpoints failed: {}", r.failures.join("; ")),
    }
}

/// Runs `f` for every endpoint at once and keeps the answers in endpoint order.
fn each<T: Send>(eps: &[Endpoint], f: impl Fn(&Endpoint) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = eps.iter().map(|ep| scope.spawn(|| f(ep))).collect();
        handles.into_iter().map(|h| h.join().expect("an endpoint thread does not panic")).collect()
    })
}

const STATUS_COLUMNS: [(&str, &str); 12] = [
    ("ENDPOINT", "endpoint"),
    ("ID", "id"),
    ("RAFT ADDR", "raft_addr"),
    ("VERSION", "version"),
    ("DB SIZE", "db_size"),
    ("IS LEADER", "is_leader"),
    ("IS LEARNER", "is_learner"),
    ("LEADER", "leader"),
    ("RAFT TERM", "raft_term"),
    ("RAFT INDEX", "raft_index"),
    ("RAFT APPLIED INDEX", "raft_applied_index"),
    ("ERRORS", "errors"),
];

fn status_round(c: &ClusterArgs, eps: &[Endpoint]) -> Round {
    let answers = each(eps, |ep| -> Result<Value> {
        let mut s = c.connect(ep)?;
        let r = s
            .client
            .query_one(
                "SELECT e.id::bigint, e.endpoint, e.version, e.db_size::bigint, e.\"isLeader\", \
                        e.\"isLearner\", e.\"raftTerm\"::bigint, e.\"raftIndex\"::bigint, \
                        e.\"raftAppliedIndex\"::bigint, e.errors, pgraft_get_leader() \
                   FROM pgraft.endpoint_status e",
                &[],
            )
            .map_err(sql_error)
            .with_context(|| format!("status of {ep}"))?;
        Ok(json!({
            "endpoint": ep.to_string(),
            "id": r.get::<_, i64>(0),
            "raft_addr": r.get::<_, String>(1),
            "version": r.get::<_, String>(2),
            "db_size": r.get::<_, i64>(3),
            "is_leader": r.get::<_, bool>(4),
            "is_learner": r.get::<_, bool>(5),
            "leader": r.get::<_, i32>(10),
            "raft_term": r.get::<_, i64>(6),
            "raft_index": r.get::<_, i64>(7),
            "raft_applied_index": r.get::<_, i64>(8),
            "errors": r.get::<_, Option<String>>(9),
        }))
    });
    rows_round("endpoints", &STATUS_COLUMNS, eps, answers, json!({}))
}

const HEALTH_COLUMNS: [(&str, &str); 4] =
    [("ENDPOINT", "endpoint"), ("HEALTH", "health"), ("TOOK", "took"), ("ERROR", "error")];

fn health_round(c: &ClusterArgs, eps: &[Endpoint]) -> Round {
    let answers = each(eps, |ep| -> Result<Value> {
        let started = Instant::now();
        let mut s = c.connect(ep)?;
        let r = s
            .client
            .query_one("SELECT health, error FROM pgraft.endpoint_health", &[])
            .map_err(sql_error)
            .with_context(|| format!("health of {ep}"))?;
        let (mut healthy, mut error): (bool, Option<String>) =
            (r.get::<_, Option<bool>>(0).unwrap_or(false), r.get(1));
        // etcd's health check is a linearizable read; so is this one: it needs the leader
        // and a majority to answer within --command-timeout.
        if let Err(e) = s.client.query_one("SELECT pgraft_kv_get('health')", &[]) {
            healthy = false;
            let e = format!("linearizable read failed: {:#}", sql_error(e));
            error = Some(error.map(|x| format!("{x}; {e}")).unwrap_or(e));
        }
        if !healthy && error.is_none() {
            error = Some("unhealthy (worker, leader or quorum)".into());
        }
        Ok(json!({
            "endpoint": ep.to_string(),
            "health": healthy,
            "took": format!("{:.3}ms", started.elapsed().as_secs_f64() * 1000.0),
            "error": error,
        }))
    });
    let mut r = rows_round("endpoints", &HEALTH_COLUMNS, eps, answers, json!({ "health": false }));
    if let Some(rows) = r.json["endpoints"].as_array() {
        for row in rows {
            if row["health"] == json!(false) && row["reachable"] == json!(true) {
                r.failures.push(format!("{} is unhealthy: {}", cell(&row["endpoint"]), cell(&row["error"])));
            }
        }
    }
    r
}

/// One row per endpoint, in a table and a JSON object `{key: [...]}`; an endpoint that
/// failed gets `failed`'s fields, its error in the last column, and a line in `failures`.
fn rows_round(
    key: &str,
    columns: &[(&str, &str)],
    eps: &[Endpoint],
    answers: Vec<Result<Value>>,
    failed: Value,
) -> Round {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let mut table = Table::new(&headers);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let error_field = columns.last().expect("an error column").1;
    for (ep, a) in eps.iter().zip(answers) {
        let row = match a {
            Ok(mut v) => {
                v["reachable"] = json!(true);
                v
            }
            Err(e) => {
                let msg = format!("{e:#}");
                failures.push(format!("{ep} failed: {msg}"));
                let mut v = failed.clone();
                v["endpoint"] = json!(ep.to_string());
                v["reachable"] = json!(false);
                v[error_field] = json!(msg);
                v
            }
        };
        table.row(columns.iter().map(|(_, k)| cell(&row[*k])).collect());
        rows.push(row);
    }
    Round { json: json!({ key: rows }), table, failures }
}
