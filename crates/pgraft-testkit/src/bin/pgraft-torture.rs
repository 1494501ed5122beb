//! `pgraft-torture`: a Jepsen-style torture run of a local pgraft cluster.
//!
//! Starts a cluster with `pgraftctl local`'s library, runs concurrent libpq clients on every
//! member while a seeded nemesis kills, partitions, pauses and reconfigures it, then heals
//! it and checks the history. Exits 0 when every check passed, 1 when a check failed
//! (the run's directory is kept and the replay command printed), 2 when the run itself
//! could not be carried out.
//!
//! ```text
//! pgraft-torture --duration 2m --nodes 3
//! pgraft-torture --duration 30m --nodes 5 --faults all --seed 7
//! pgraft-torture --workload db --duration 2m --nodes 3 --synchronous-mode on
//! ```
//!
//! `--workload db` runs SQL transactions (list-append and bank) on an HA cluster's
//! primary through its read-write conninfo while failover moves it, and checks that no
//! acknowledged commit is lost and no two servers take writes at once.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use pgraft_testkit::torture::{self, FaultKind, TortureOptions};
use pgraft_testkit::{LocalCluster, PgInstall};

/// Torture a local pgraft cluster and check every client history.
#[derive(Parser)]
#[command(name = "pgraft-torture", version)]
struct Cli {
    /// Members of the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// How long the workload and the faults run (e.g. 90s, 2m, 30m, 1h).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    duration: Duration,
    /// The seed of the fault schedule and the clients' choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Clients per member.
    #[arg(long, default_value_t = 2)]
    clients: u64,
    /// Fault kinds, comma separated: kill, kill-worker, isolate, leader-minority, bridge,
    /// ring, pause, transfer, remove-add; with `--workload db` also repl-isolate,
    /// isolate-all, failover-toggle, sync-standby-kill; or all (what applies).
    #[arg(long, default_value = "all")]
    faults: String,
    /// The run's directory (default: /tmp/pgraft-torture-SEED).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The PostgreSQL installation into which the extension was installed.
    #[arg(long, env = "PGRAFT_PG_CONFIG", default_value = PgInstall::DEFAULT_PG_CONFIG)]
    pg_config: PathBuf,
    /// After each heal the cluster must accept a write within this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    recovery_bound: Duration,
    /// A deliberately broken store: reads are served from the member's own state without
    /// ReadIndex (pgraft_kv_get_serializable). The checks must fail.
    #[arg(long)]
    broken_local_reads: bool,
    /// Keep the run's directory even when it passes.
    #[arg(long)]
    keep: bool,
    /// Write the report as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Mutual TLS between members (a CA and a certificate per member, pgraft.ssl_*).
    #[arg(long)]
    tls: bool,
    /// `kv`: the store's functions on every member; `db`: SQL transactions on an HA
    /// cluster (pgraftctl local up --ha) with PostgreSQL failover.
    #[arg(long, default_value = "kv", value_parser = ["kv", "db"])]
    workload: String,
    /// pgraft.synchronous_mode of the db workload: on, strict or off.
    #[arg(long, default_value = "on", value_parser = ["on", "strict", "off"])]
    synchronous_mode: String,
    /// With `--workload db`: a deliberately broken cluster, whose primary cut off from
    /// everything (isolate-all) neither fences itself nor waits for its standbys. The
    /// checks must fail.
    #[arg(long)]
    broken_no_fencing: bool,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("{s:?} is not a duration such as 90s, 2m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s:?}: unknown unit {unit:?} (use s, m or h)"),
    };
    Ok(Duration::from_secs(secs))
}

fn main() {
    // The cluster's supervisor (partition proxy, server starts) is this same program:
    // `LocalCluster` starts `<exe> local proxy --dir DIR`.
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "local" && args[2] == "proxy" && args[3] == "--dir" {
        if let Err(e) = LocalCluster::serve(std::path::Path::new(&args[4])) {
            eprintln!("pgraft-torture proxy: {e:#}");
            std::process::exit(2);
        }
        return;
    }
    match run(Cli::parse()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("pgraft-torture: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    if cli.nodes < 3 {
        bail!("--nodes must be at least 3 (a member must be able to fail)");
    }
    let seed = cli.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 1_000_000_000).unwrap_or(1)
    });
    let dir = cli.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("pgraft-torture-{seed}")));
    let exe = std::env::current_exe().context("locate the pgraft-torture binary")?;
    let opts = TortureOptions {
        nodes: cli.nodes,
        duration: cli.duration,
        seed,
        clients_per_member: cli.clients,
        faults: FaultKind::parse_list(&cli.faults)?,
        dir,
        pg_config: cli.pg_config,
        proxy_exe: exe,
        recovery_bound: cli.recovery_bound,
        broken_local_reads: cli.broken_local_reads,
        keep: cli.keep,
        tls: cli.tls,
        db: cli.workload == "db",
        synchronous_mode: cli.synchronous_mode,
        broken_no_fencing: cli.broken_no_fencing,
    };
    let report = torture::run(&opts)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialise the report")?);
    } else {
        print!("{}", report.render());
    }
    Ok(report.passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").expect("90"), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").expect("2m"), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").expect("1h"), Duration::from_secs(3600));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("m").is_err());
    }
}
