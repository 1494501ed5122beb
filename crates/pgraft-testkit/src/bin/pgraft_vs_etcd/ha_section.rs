//! The `ha` section: pgraft's failover in synchronous and asynchronous mode at the default
//! (1000/100 ms) and low-latency (500/50 ms) timers, then Patroni with etcd at its fastest
//! timers and at its defaults, each on clusters of its own over the same PostgreSQL.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pgraft_testkit::{LocalCluster, PgInstall, UpOptions};

use crate::ha_cases::{create_table, run_cases, HaRun, PgraftHa};
use crate::patroni::{PatroniCluster, PatroniTimers};
use crate::report::Report;
use crate::{Ctx, ELECTION_MS, HEARTBEAT_MS};

/// pgraft's timer settings of the comparison: (label, election timeout, heartbeat).
const PGRAFT_TIMERS: [(&str, &str, &str); 2] =
    [("1000/100 ms", "1000ms", "100ms"), ("500/50 ms", "500ms", "50ms")];

pub fn run(ctx: &Ctx, rep: &mut Report) -> Result<()> {
    if !ctx.args.patroni.exists() {
        bail!(
            "{} not found: install Debian's patroni and python3-etcd (scripts/bench.sh does)",
            ctx.args.patroni.display()
        );
    }
    rep.versions.push(("Patroni".into(), PatroniCluster::version(&ctx.args.patroni)));
    let trials = ctx.plan.ha_trials;
    let ids = Arc::new(AtomicI64::new(1));
    let r = pgraft_runs(ctx, rep, trials, &ids);
    crate::section(rep, "ha (pgraft)", r);
    let r = patroni_runs(ctx, rep, trials, &ids);
    crate::section(rep, "ha (Patroni)", r);
    Ok(())
}

fn pgraft_runs(ctx: &Ctx, rep: &mut Report, trials: usize, ids: &Arc<AtomicI64>) -> Result<()> {
    let opts = UpOptions {
        nodes: 3,
        dir: ctx.args.dir.join("ha-pgraft"),
        pg_config: ctx.args.pg_config.clone(),
        proxy_exe: ctx.pgraftctl.clone(),
        ha: true,
        ..UpOptions::default()
    };
    eprintln!("ha: starting a 3-member pgraft HA cluster");
    let cluster = LocalCluster::up(&opts).context("start a 3-member pgraft HA cluster")?;
    let r = (|| -> Result<()> {
        create_table(&PgraftHa { cluster: &cluster })?;
        for mode in ["on", "off"] {
            pgraft_testkit::torture::set_synchronous_mode(&cluster, mode)?;
            for (label, election, heartbeat) in PGRAFT_TIMERS {
                set_pgraft_timers(&cluster, election, heartbeat)?;
                let mut run = HaRun {
                    system: "pgraft",
                    config: format!("synchronous_mode {mode}, {label}"),
                    trials: Vec::new(),
                    errors: Vec::new(),
                };
                run_cases(&mut PgraftHa { cluster: &cluster }, &mut run, trials, ids);
                rep.ha.push(run);
            }
        }
        Ok(())
    })();
    let down = cluster.down();
    r?;
    down
}

fn set_pgraft_timers(cluster: &LocalCluster, election: &str, heartbeat: &str) -> Result<()> {
    let mut c = postgres::Client::connect(&cluster.read_write_conninfo(), postgres::NoTls)
        .context("connect to the primary")?;
    c.query_one("SELECT pgraft_set_config('election_timeout', $1)", &[&election])
        .context("election_timeout")?;
    c.query_one("SELECT pgraft_set_config('heartbeat_interval', $1)", &[&heartbeat])
        .context("heartbeat_interval")?;
    Ok(())
}

fn patroni_runs(ctx: &Ctx, rep: &mut Report, trials: usize, ids: &Arc<AtomicI64>) -> Result<()> {
    let install = PgInstall::from_pg_config(&ctx.args.pg_config)?;
    eprintln!("ha: starting 3 etcd members and 3 Patroni nodes");
    let mut cluster = PatroniCluster::start(
        &ctx.args.patroni,
        &ctx.args.etcd,
        &ctx.args.dir.join("ha-patroni"),
        &install.bindir,
        PatroniTimers::FASTEST,
        (HEARTBEAT_MS, ELECTION_MS),
    )?;
    create_table(&cluster)?;
    // The fastest first: nodes that loop every second take the defaults at once, while
    // nodes at the defaults would take up to 10 s to take the fastest.
    let mut current = PatroniTimers::FASTEST;
    for timers in [PatroniTimers::FASTEST, PatroniTimers::DEFAULTS] {
        if timers != current {
            cluster.set_timers(timers, current)?;
            current = timers;
        }
        let mut run =
            HaRun { system: "Patroni", config: timers.label(), trials: Vec::new(), errors: Vec::new() };
        run_cases(&mut cluster, &mut run, trials, ids);
        rep.ha.push(run);
    }
    Ok(())
}
