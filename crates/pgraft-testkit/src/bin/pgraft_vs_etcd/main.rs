//! `pgraft-vs-etcd`: pgraft next to etcd on one machine, in one run, and the report.
//!
//! Both systems run three members on loopback (127.0.0.0/8), both fsync, both get the
//! same heartbeat and election timeout, the same key and value sizes and the same client
//! counts. pgraft is driven through SQL over libpq, etcd (Debian's `etcd-server`) through
//! its gRPC API.
//!
//! ```text
//!  client threads ──libpq──▶ pgraft member i%N (followers forward to the leader)
//!  client threads ──gRPC───▶ etcd member i%N   (followers forward to the leader)
//! ```
//!
//! Sections, in the order they run: idle CPU and memory, pgbench with and without the
//! extension, KV puts and linearizable gets, `pgraft_replicate_entry`, leader loss,
//! disk per write before and after compaction, throughput as the store grows,
//! throughput at 3, 5 and 7 members, and PostgreSQL failover next to Patroni with etcd
//! (`ha`, on clusters of its own). The figures go to stdout and, with `--report`, to
//! a Markdown file with PNG plots beside it.

mod clients;
mod cost;
mod etcd;
mod failover;
mod ha_cases;
mod ha_report;
mod ha_section;
mod ha_writer;
mod health;
mod link_proxy;
mod load;
mod machine;
mod patroni;
mod plot;
mod procstat;
mod profile;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use clients::{etcd_clients, pgraft_clients};
use load::{Client, Op};
use pgraft_testkit::{LocalCluster, PlainOptions, PlainServer, UpOptions};
use report::{KvRow, Report};

/// pgraft next to etcd: KV throughput and latency, leader loss, cost, scaling, overhead.
#[derive(Parser, Clone, Debug)]
#[command(name = "pgraft-vs-etcd")]
pub struct Args {
    /// A smoke run of a couple of minutes: short cases, few trials, small stores.
    #[arg(long)]
    quick: bool,
    /// Client counts of the KV and replicate cases.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// How long each throughput case runs, in seconds [default: 10, quick 2].
    #[arg(long)]
    seconds: Option<u64>,
    /// Value size in bytes (keys are 17 bytes).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys per client (reads cycle over keys written beforehand).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Leader-loss trials per system [default: 20, quick 3].
    #[arg(long)]
    trials: Option<usize>,
    /// Member counts of the scaling case [default: 3,5,7, quick 3,5].
    #[arg(long, value_delimiter = ',')]
    members: Option<Vec<usize>>,
    /// Keys the store grows to [default: 1000000, quick 20000].
    #[arg(long)]
    grow_to: Option<u64>,
    /// Time allowed per system for growing the store, in seconds; the report says how far
    /// it got [default: 240, quick 30].
    #[arg(long)]
    grow_budget: Option<u64>,
    /// Writes of the disk case (overwrites of 1,000 keys) [default: 200000, quick 10000].
    #[arg(long)]
    disk_writes: Option<u64>,
    /// Clients of the disk, growth and scaling cases.
    #[arg(long, default_value_t = 64)]
    load_clients: usize,
    /// Length of the idle CPU window, in seconds [default: 10, quick 3].
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// pgbench rounds per server and script [default: 10, quick 1].
    #[arg(long)]
    pgbench_rounds: Option<usize>,
    /// Length of one pgbench run, in seconds [default: 10, quick 3].
    #[arg(long)]
    pgbench_seconds: Option<u64>,
    /// Sections to run (idle,pgbench,kv,replicate,health,failover,disk,growth,members,ha);
    /// all by default.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// The PostgreSQL install into which the extension was installed.
    #[arg(long, default_value = pgraft_testkit::PgInstall::DEFAULT_PG_CONFIG)]
    pg_config: PathBuf,
    /// Trials per case and configuration of the failover comparison with Patroni
    /// [default: 10, quick 2].
    #[arg(long)]
    ha_trials: Option<usize>,
    /// The Patroni program (Debian's `patroni`), for the failover comparison.
    #[arg(long, default_value = "/usr/bin/patroni")]
    patroni: PathBuf,
    /// perf (Debian's `linux-perf`): the leader is profiled during the put case at
    /// `--load-clients` clients; without it the report says so.
    #[arg(long, default_value = "/usr/bin/perf")]
    perf: PathBuf,
    /// The etcd binary (Debian's `etcd-server`).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// pgraftctl, which serves the local cluster's supervisor (default: beside this binary).
    #[arg(long)]
    pgraftctl: Option<PathBuf>,
    /// Where the clusters live while the benchmark runs (removed afterwards).
    #[arg(long, default_value = "/tmp/pgraft-vs-etcd")]
    dir: PathBuf,
    /// Write the report (Markdown) here, and its plots into a directory beside it named
    /// after it without `.md`.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The command line to print in the report (what `make bench` ran).
    #[arg(long)]
    command: Option<String>,
    /// Free text about how the extension was built, for the report.
    #[arg(long, default_value = "")]
    build: String,
}

/// pgraft's defaults (pgraft.heartbeat_interval, pgraft.election_timeout), given to etcd.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;

/// The settings after `--quick` has filled in what was not given.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seconds: u64,
    pub trials: usize,
    pub members: Vec<usize>,
    pub grow_to: u64,
    pub grow_budget: u64,
    pub disk_writes: u64,
    pub idle_seconds: u64,
    pub pgbench_rounds: usize,
    pub pgbench_seconds: u64,
    pub ha_trials: usize,
}

impl Plan {
    fn from(a: &Args) -> Self {
        let q = a.quick;
        Plan {
            seconds: a.seconds.unwrap_or(if q { 2 } else { 10 }),
            trials: a.trials.unwrap_or(if q { 3 } else { 20 }),
            members: a.members.clone().unwrap_or(if q { vec![3, 5] } else { vec![3, 5, 7] }),
            grow_to: a.grow_to.unwrap_or(if q { 20_000 } else { 1_000_000 }),
            grow_budget: a.grow_budget.unwrap_or(if q { 30 } else { 240 }),
            disk_writes: a.disk_writes.unwrap_or(if q { 10_000 } else { 200_000 }),
            idle_seconds: a.idle_seconds.unwrap_or(if q { 3 } else { 10 }),
            pgbench_rounds: a.pgbench_rounds.unwrap_or(if q { 1 } else { 10 }),
            pgbench_seconds: a.pgbench_seconds.unwrap_or(if q { 3 } else { 10 }),
            ha_trials: a.ha_trials.unwrap_or(if q { 2 } else { 10 }),
        }
    }
}

/// Everything a section needs.
struct Ctx {
    args: Args,
    plan: Plan,
    pgraftctl: PathBuf,
    value: String,
}

impl Ctx {
    fn wants(&self, section: &str) -> bool {
        self.args.only.as_ref().is_none_or(|o| o.iter().any(|s| s == section))
    }

    fn up_pgraft(&self, name: &str, nodes: u64) -> Result<LocalCluster> {
        let opts = UpOptions {
            nodes,
            dir: self.args.dir.join(name),
            pg_config: self.args.pg_config.clone(),
            proxy_exe: self.pgraftctl.clone(),
            direct_peers: true,
            http: true,
            ..UpOptions::default()
        };
        LocalCluster::up(&opts).with_context(|| format!("start {nodes} pgraft members"))
    }

    fn up_etcd(&self, name: &str, n: usize) -> Result<etcd::EtcdCluster> {
        etcd::EtcdCluster::start(&self.args.etcd, &self.args.dir.join(name), n, HEARTBEAT_MS, ELECTION_MS)
            .with_context(|| format!("start {n} etcd members"))
    }
}

fn conninfos(c: &LocalCluster) -> Vec<String> {
    c.nodes().iter().map(|n| n.conninfo.clone()).collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.etcd.exists() {
        bail!(
            "{} not found: install Debian's etcd-server (apt-get install -y etcd-server)",
            args.etcd.display()
        );
    }
    let pgraftctl = match &args.pgraftctl {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locate this binary")?.with_file_name("pgraftctl"),
    };
    if !pgraftctl.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p pgraftctl) or pass --pgraftctl",
            pgraftctl.display()
        );
    }
    if args.report.is_some() {
        plot::init_font()?;
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.dir, std::fs::Permissions::from_mode(0o755)).context("chmod 755")?;
    }
    let plan = Plan::from(&args);
    let value: String = (0..args.value_size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let ctx = Ctx { args: args.clone(), plan: plan.clone(), pgraftctl, value };

    let started = Instant::now();
    let mut rep = Report::new(&args, &plan);
    rep.machine = machine::Machine::describe(&args.dir)?;
    rep.loadavg_start = procstat::loadavg();
    rep.versions = versions(&args);
    eprintln!(
        "machine: {} x {}, fsync p50 {} us",
        rep.machine.cpus, rep.machine.cpu_model, rep.machine.fsync_p50_us
    );

    const ON_MAIN_CLUSTERS: [&str; 8] =
        ["idle", "pgbench", "kv", "replicate", "health", "failover", "disk", "growth"];
    if ON_MAIN_CLUSTERS.iter().any(|s| ctx.wants(s)) {
        if let Err(e) = main_clusters(&ctx, &mut rep) {
            rep.errors.push(format!("three-member run: {e:#}"));
        }
    }
    if ctx.wants("members") {
        if let Err(e) = members_case(&ctx, &mut rep) {
            rep.errors.push(format!("members: {e:#}"));
        }
    }
    if ctx.wants("ha") {
        if let Err(e) = ha_section::run(&ctx, &mut rep) {
            rep.errors.push(format!("ha: {e:#}"));
        }
    }
    rep.loadavg_end = procstat::loadavg();
    rep.wall = started.elapsed();
    let _ = std::fs::remove_dir_all(&args.dir);

    print!("{}", rep.text());
    if let Some(path) = &args.report {
        rep.write(path)?;
        eprintln!("wrote {}", path.display());
    }
    if !rep.errors.is_empty() {
        bail!("{} section(s) failed: {}", rep.errors.len(), rep.errors.join("; "));
    }
    Ok(())
}

fn versions(args: &Args) -> Vec<(String, String)> {
    let first_line = |cmd: &Path, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    let pg = pgraft_testkit::PgInstall::from_pg_config(&args.pg_config)
        .map(|i| first_line(&i.bin("postgres"), "--version"))
        .unwrap_or_default();
    vec![("etcd".into(), first_line(&args.etcd, "--version")), ("PostgreSQL".into(), pg)]
}

/// The sections that run on one three-member cluster of each system.
fn main_clusters(ctx: &Ctx, rep: &mut Report) -> Result<()> {
    eprintln!("starting 3 etcd members and 3 pgraft members under {}", ctx.args.dir.display());
    let mut etcd = ctx.up_etcd("etcd", 3)?;
    let pgraft = ctx.up_pgraft("pgraft", 3)?;
    let r = sections(ctx, rep, &pgraft, &mut etcd);
    let down = pgraft.down();
    drop(etcd);
    r?;
    down
}

fn section(rep: &mut Report, name: &str, r: Result<()>) {
    if let Err(e) = r {
        eprintln!("{name} failed: {e:#}");
        rep.errors.push(format!("{name}: {e:#}"));
    }
}

fn sections(ctx: &Ctx, rep: &mut Report, pgraft: &LocalCluster, etcd: &mut etcd::EtcdCluster) -> Result<()> {
    let plan = &ctx.plan;
    if ctx.wants("idle") {
        eprintln!("idle: CPU over {} s", plan.idle_seconds);
        let r = (|| {
            rep.idle = Some(cost::idle_cpu(pgraft, etcd, Duration::from_secs(plan.idle_seconds))?);
            rep.memory_idle = Some(cost::memory(pgraft, etcd)?);
            Ok(())
        })();
        section(rep, "idle", r);
    }
    if ctx.wants("pgbench") {
        eprintln!("pgbench: with and without pgraft");
        let r = pgbench_case(ctx, rep, pgraft);
        section(rep, "pgbench", r);
    }
    if ctx.wants("kv") || ctx.wants("replicate") {
        let r = kv_cases(ctx, rep, pgraft, etcd);
        section(rep, "kv", r);
        let r = cost::memory(pgraft, etcd).map(|m| rep.memory_load = Some(m));
        section(rep, "memory", r);
    }
    if ctx.wants("health") {
        let r = health_case(ctx, rep, pgraft, etcd);
        section(rep, "health", r);
    }
    if ctx.wants("failover") {
        let r = failover_case(ctx, rep, pgraft, etcd);
        section(rep, "failover", r);
    }
    if ctx.wants("disk") {
        let r = disk_case(ctx, rep, pgraft, etcd);
        section(rep, "disk", r);
    }
    if ctx.wants("growth") {
        let r = growth_case(ctx, rep, pgraft, etcd);
        section(rep, "growth", r);
        let r = cost::memory(pgraft, etcd).map(|m| rep.memory_grown = Some(m));
        section(rep, "memory", r);
    }
    Ok(())
}

fn pgbench_case(ctx: &Ctx, rep: &mut Report, pgraft: &LocalCluster) -> Result<()> {
    let plain = PlainServer::init(
        &ctx.args.pg_config,
        &ctx.args.dir.join("plain"),
        &PlainOptions {
            // The settings `pgraftctl local` gives its members, without the extension.
            extra_conf: vec![
                "max_connections = 100".into(),
                "shared_buffers = 32MB".into(),
                "fsync = on".into(),
            ],
            ..PlainOptions::default()
        },
    )?;
    let bin = plain.install.bin("pgbench");
    let with_port = pgraft.node(1)?.pg_port;
    let r = cost::pgbench(&bin, with_port, plain.port, ctx.plan.pgbench_rounds, ctx.plan.pgbench_seconds, 8);
    let _ = plain.stop();
    rep.pgbench = r?;
    Ok(())
}

fn kv_cases(ctx: &Ctx, rep: &mut Report, pgraft: &LocalCluster, etcd: &etcd::EtcdCluster) -> Result<()> {
    let args = &ctx.args;
    let duration = Duration::from_secs(ctx.plan.seconds);
    let max = args.clients.iter().copied().max().unwrap_or(1);
    let pg = conninfos(pgraft);
    if ctx.wants("kv") {
        // Every key a read case asks for exists: written once beforehand.
        for (name, mut clients) in
            [("pgraft", pgraft_clients(&pg, 16)?), ("etcd", etcd_clients(&etcd.client_urls, 16)?)]
        {
            eprintln!("{name}: writing {} keys for the read cases", max * args.keys);
            let keys = args.keys as u64;
            let key_of = move |n: u64| load::key((n / keys) as usize, n as usize, keys as usize);
            load::fill(&mut clients, 0, max as u64 * keys, &key_of, &ctx.value)?;
        }
        for op in [Op::Put, Op::Get] {
            for &n in &args.clients {
                eprintln!("{} with {n} clients: pgraft", op.name());
                let mut clients = pgraft_clients(&pg, n)?;
                let profiled = matches!(op, Op::Put) && n == args.load_clients && args.perf.exists();
                let recording = if profiled {
                    // A profile that cannot be taken costs the report its section, not the case.
                    match profile::leader_worker_pid(&pg)
                        .and_then(|pid| profile::start(&args.perf, pid, &args.dir))
                    {
                        Ok(r) => Some(r),
                        Err(e) => {
                            rep.errors.push(format!("profile: {e:#}"));
                            None
                        }
                    }
                } else {
                    None
                };
                let pgraft_leader = profile::leader_index(&pg).ok();
                let p = load::run(&mut clients, op, duration, args.keys, &ctx.value)?;
                if let Some(r) = recording {
                    match r.finish(&args.perf, &format!("{} with {n} clients", op.name()), 25) {
                        Ok(profile) => rep.profiles.push(profile),
                        Err(e) => rep.errors.push(format!("profile: {e:#}")),
                    }
                }
                eprintln!("{} with {n} clients: etcd", op.name());
                let etcd_leader = etcd.leader_seen_by(0, Duration::from_secs(5)).ok().flatten();
                let e =
                    load::run(&mut etcd_clients(&etcd.client_urls, n)?, op, duration, args.keys, &ctx.value)?;
                rep.kv.push(KvRow {
                    op,
                    clients: n,
                    pgraft: p,
                    etcd: e,
                    leaders: (pgraft_leader, etcd_leader),
                });
            }
        }
    }
    if ctx.wants("replicate") {
        for &n in &args.clients {
            eprintln!("pgraft_replicate_entry with {n} clients");
            let p = load::run(&mut pgraft_clients(&pg, n)?, Op::Replicate, duration, args.keys, &ctx.value)?;
            rep.replicate.push((n, p));
        }
    }
    Ok(())
}

/// The health and metrics endpoints asked every 20 ms on a busy member, while
/// `load_clients` clients write for the case's seconds: pgraft's leader (`/leader`,
/// `/metrics`) and etcd's first member (`/health`, `/metrics`).
fn health_case(ctx: &Ctx, rep: &mut Report, pgraft: &LocalCluster, etcd: &etcd::EtcdCluster) -> Result<()> {
    let duration = Duration::from_secs(ctx.plan.seconds);
    let (n, keys, value) = (ctx.args.load_clients, ctx.args.keys, &ctx.value);
    let leader = pgraft
        .nodes()
        .iter()
        .find(|m| m.http_port.is_some_and(|p| health::answers_200(p, "/leader")))
        .context("no pgraft member answers 200 on /leader")?;
    let port = leader.http_port.context("the leader serves no HTTP")?;
    let pg = conninfos(pgraft);
    eprintln!("health: pgraft's /leader and /metrics under {n} writing clients");
    let mut clients = pgraft_clients(&pg, n)?;
    let row = health::probe_during("pgraft", port, &["/leader", "/metrics"], || {
        load::run(&mut clients, Op::Put, duration, keys, value)
    })?;
    rep.health.push(row);
    let url = etcd.client_urls.first().context("no etcd member")?;
    let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).context("etcd's client port")?;
    eprintln!("health: etcd's /health and /metrics under {n} writing clients");
    let mut clients = etcd_clients(&etcd.client_urls, n)?;
    let row = health::probe_during("etcd", port, &["/health", "/metrics"], || {
        load::run(&mut clients, Op::Put, duration, keys, value)
    })?;
    rep.health.push(row);
    Ok(())
}

fn failover_case(
    ctx: &Ctx,
    rep: &mut Report,
    pgraft: &LocalCluster,
    etcd: &mut etcd::EtcdCluster,
) -> Result<()> {
    for t in 0..ctx.plan.trials {
        eprintln!("leader loss, trial {}/{}: pgraft", t + 1, ctx.plan.trials);
        rep.failover_pgraft.push(failover::pgraft_trial(pgraft, t)?);
        eprintln!("leader loss, trial {}/{}: etcd", t + 1, ctx.plan.trials);
        rep.failover_etcd.push(failover::etcd_trial(etcd, t)?);
    }
    Ok(())
}

fn disk_case(ctx: &Ctx, rep: &mut Report, pgraft: &LocalCluster, etcd: &etcd::EtcdCluster) -> Result<()> {
    let w = ctx.plan.disk_writes;
    let key_of = |n: u64| format!("disk/{:06}", n % 1000);
    let n = ctx.args.load_clients;
    // pgraft
    let dirs = cost::pgraft_dirs(pgraft);
    let mut d = cost::Disk { writes: w, before: cost::settled_disk(&dirs), ..Default::default() };
    eprintln!("disk: {w} writes to pgraft");
    d.retried = load::fill(&mut pgraft_clients(&conninfos(pgraft), n)?, 0, w, &key_of, &ctx.value)?.retried;
    d.after_writes = cost::settled_disk(&dirs);
    d.files_after_writes = procstat::largest_files(&dirs[0], 4);
    cost::pgraft_compact(pgraft)?;
    d.after_compaction = cost::settled_disk(&dirs);
    d.files_after_compaction = procstat::largest_files(&dirs[0], 4);
    rep.disk_pgraft = Some(d);
    // etcd
    let dirs = etcd.data_dirs.clone();
    let mut d = cost::Disk { writes: w, before: cost::settled_disk(&dirs), ..Default::default() };
    eprintln!("disk: {w} writes to etcd");
    d.retried = load::fill(&mut etcd_clients(&etcd.client_urls, n)?, 0, w, &key_of, &ctx.value)?.retried;
    d.after_writes = cost::settled_disk(&dirs);
    d.files_after_writes = procstat::largest_files(&dirs[0], 4);
    cost::etcd_compact(etcd)?;
    d.after_compaction = cost::settled_disk(&dirs);
    d.files_after_compaction = procstat::largest_files(&dirs[0], 4);
    rep.disk_etcd = Some(d);
    Ok(())
}

/// Writes fresh keys in steps of a tenth of the target, timing each step, until the
/// target or the time budget is reached.
fn grow(
    mut clients: Vec<Box<dyn Client>>,
    to: u64,
    budget: Duration,
    value: &str,
) -> Result<Vec<(u64, f64, u64)>> {
    let step = (to / 10).max(1);
    let key_of = |n: u64| format!("grow/{n:09}");
    let started = Instant::now();
    let mut out = Vec::new();
    let mut at = 0;
    while at < to && started.elapsed() < budget {
        let next = (at + step).min(to);
        let f = load::fill(&mut clients, at, next, &key_of, value)?;
        at = next;
        eprintln!("  {at} keys: {:.0} writes/s, {} retried", f.per_second, f.retried);
        out.push((at, f.per_second, f.retried));
    }
    Ok(out)
}

fn growth_case(ctx: &Ctx, rep: &mut Report, pgraft: &LocalCluster, etcd: &etcd::EtcdCluster) -> Result<()> {
    let budget = Duration::from_secs(ctx.plan.grow_budget);
    let n = ctx.args.load_clients;
    // The machine's disk is shared: the store may take at most 30% of the free space, at
    // the cost per write the disk case measured (8 KiB per member when it did not run).
    let per_write = rep
        .disk_pgraft
        .as_ref()
        .map(|d| d.after_writes.saturating_sub(d.before) / d.writes.max(1))
        .unwrap_or(8192)
        .max(1);
    let free = procstat::free_bytes(&ctx.args.dir);
    let fits = free / 10 * 3 / (per_write * pgraft.nodes().len() as u64);
    let mut to = ctx.plan.grow_to;
    if fits < to {
        to = (fits / 10_000 * 10_000).max(10_000);
        rep.growth_note = Some(format!(
            "capped at {to} keys instead of {}: at {per_write} bytes per write and member, more would have taken over 30% \
             of the {:.1} GiB free on the disk",
            ctx.plan.grow_to,
            free as f64 / (1u64 << 30) as f64
        ));
    }
    eprintln!("growth: pgraft to {to} keys");
    rep.growth_pgraft = grow(pgraft_clients(&conninfos(pgraft), n)?, to, budget, &ctx.value)?;
    rep.growth_longest_pass_ms = Some(longest_pass_ms(pgraft)?);
    eprintln!("growth: etcd to {to} keys");
    rep.growth_etcd = grow(etcd_clients(&etcd.client_urls, n)?, to, budget, &ctx.value)?;
    rep.growth_target = to;
    Ok(())
}

/// The longest pass of any member's Raft thread since the members started
/// (`pgraft_health_check()`'s `raft_thread_longest_pass_ms`).
fn longest_pass_ms(pgraft: &LocalCluster) -> Result<u64> {
    let mut longest = 0;
    for conninfo in conninfos(pgraft) {
        let mut c =
            postgres::Client::connect(&conninfo, postgres::NoTls).context("connect for the health check")?;
        let row = c
            .query_one(
                "SELECT value FROM pgraft_health_check() WHERE metric = 'raft_thread_longest_pass_ms'",
                &[],
            )
            .context("pgraft_health_check()")?;
        let v: String = row.get(0);
        longest = longest.max(v.parse::<u64>().context("raft_thread_longest_pass_ms")?);
    }
    Ok(longest)
}

fn members_case(ctx: &Ctx, rep: &mut Report) -> Result<()> {
    let duration = Duration::from_secs(ctx.plan.seconds);
    let n = ctx.args.load_clients;
    for &m in &ctx.plan.members {
        eprintln!("members: {m} of each");
        let name = format!("m{m}");
        let etcd = ctx.up_etcd(&format!("{name}-etcd"), m)?;
        let pgraft = ctx.up_pgraft(&format!("{name}-pgraft"), m as u64)?;
        let r = (|| -> Result<(load::Figures, load::Figures)> {
            let p = load::run(
                &mut pgraft_clients(&conninfos(&pgraft), n)?,
                Op::Put,
                duration,
                ctx.args.keys,
                &ctx.value,
            )?;
            let e = load::run(
                &mut etcd_clients(&etcd.client_urls, n)?,
                Op::Put,
                duration,
                ctx.args.keys,
                &ctx.value,
            )?;
            Ok((p, e))
        })();
        let down = pgraft.down();
        drop(etcd);
        let (p, e) = r?;
        down?;
        let _ = std::fs::remove_dir_all(ctx.args.dir.join(format!("{name}-pgraft")));
        let _ = std::fs::remove_dir_all(ctx.args.dir.join(format!("{name}-etcd")));
        rep.members.push((m, p, e));
    }
    Ok(())
}
