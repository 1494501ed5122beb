//! `pgraft-vs-etcd`: KV writes and linearizable reads on a three-member pgraft cluster
//! (through SQL over libpq) and a three-member etcd cluster (through its gRPC API), side
//! by side on this machine, both on loopback, both fsyncing, same key and value sizes,
//! same client counts and the same heartbeat and election timeout. Prints throughput,
//! p50/p99/p99.9 latency and pgraft's ratio to etcd for every case.
//!
//! ```text
//!  client threads ──libpq──▶ pgraft member i%3 (followers forward to the leader)
//!  client threads ──gRPC───▶ etcd member i%3   (followers forward to the leader)
//! ```
//!
//! The first step of issue 8's benchmarks: leader loss, resource cost, scaling and
//! plots are not measured yet.

mod etcd;
mod load;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use load::{Client, Figures, Op};
use pgraft_testkit::{LocalCluster, UpOptions};

/// KV throughput and latency of pgraft next to etcd.
#[derive(Parser)]
#[command(name = "pgraft-vs-etcd")]
struct Args {
    /// Client counts, one case each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// How long each case runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys per client (reads cycle over keys written by the write case).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// The PostgreSQL install into which the extension was installed.
    #[arg(long, default_value = pgraft_testkit::PgInstall::DEFAULT_PG_CONFIG)]
    pg_config: PathBuf,
    /// The etcd binary (Debian's `etcd-server`).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// pgraftctl, which serves the local cluster's proxy (default: beside this binary).
    #[arg(long)]
    pgraftctl: Option<PathBuf>,
    /// Where both clusters live while the benchmark runs (removed afterwards).
    #[arg(long, default_value = "/tmp/pgraft-vs-etcd")]
    dir: PathBuf,
}

/// pgraft's defaults (pgraft.heartbeat_interval, pgraft.election_timeout), given to etcd.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: u64 = 1000;

struct PgraftClient(postgres::Client, postgres::Statement, postgres::Statement);

impl Client for PgraftClient {
    fn put(&mut self, key: &str, value: &str) -> Result<()> {
        let ok: bool = self.0.query_one(&self.1, &[&key, &value]).context("pgraft_kv_put")?.get(0);
        anyhow::ensure!(ok, "pgraft_kv_put answered false");
        Ok(())
    }
    fn get(&mut self, key: &str) -> Result<()> {
        let v: Option<String> = self.0.query_one(&self.2, &[&key]).context("pgraft_kv_get")?.get(0);
        anyhow::ensure!(v.is_some(), "{key} is missing");
        Ok(())
    }
}

struct EtcdClient(tokio::runtime::Runtime, etcd_client::Client);

impl Client for EtcdClient {
    fn put(&mut self, key: &str, value: &str) -> Result<()> {
        self.0.block_on(self.1.put(key, value, None)).context("etcd put")?;
        Ok(())
    }
    fn get(&mut self, key: &str) -> Result<()> {
        let r = self.0.block_on(self.1.get(key, None)).context("etcd get")?;
        anyhow::ensure!(!r.kvs().is_empty(), "{key} is missing");
        Ok(())
    }
}

fn pgraft_clients(cluster: &LocalCluster, n: usize) -> Result<Vec<Box<dyn Client>>> {
    let nodes = cluster.nodes();
    (0..n)
        .map(|i| {
            let conninfo = &nodes[i % nodes.len()].conninfo;
            let mut c = postgres::Client::connect(conninfo, postgres::NoTls)
                .with_context(|| format!("connect client {i} to {conninfo}"))?;
            let put = c.prepare("SELECT pgraft_kv_put($1::text, $2::text)").context("prepare the put")?;
            let get = c.prepare("SELECT pgraft_kv_get($1)").context("prepare the get")?;
            Ok(Box::new(PgraftClient(c, put, get)) as Box<dyn Client>)
        })
        .collect()
}

fn etcd_clients(urls: &[String], n: usize) -> Result<Vec<Box<dyn Client>>> {
    (0..n)
        .map(|i| {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
            let url = &urls[i % urls.len()];
            let c = rt
                .block_on(etcd_client::Client::connect([url.as_str()], None))
                .with_context(|| format!("connect client {i} to {url}"))?;
            Ok(Box::new(EtcdClient(rt, c)) as Box<dyn Client>)
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
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
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.dir, std::fs::Permissions::from_mode(0o755)).context("chmod 755")?;
    }
    let value: String = (0..args.value_size).map(|i| (b'a' + (i % 26) as u8) as char).collect();

    eprintln!("starting 3 etcd members and 3 pgraft members under {}", args.dir.display());
    let etcd = etcd::EtcdCluster::start(&args.etcd, &args.dir, 3, HEARTBEAT_MS, ELECTION_MS)?;
    let opts = UpOptions {
        nodes: 3,
        dir: args.dir.join("pgraft"),
        pg_config: args.pg_config.clone(),
        proxy_exe: pgraftctl,
        ..UpOptions::default()
    };
    let pgraft = LocalCluster::up(&opts)?;
    let result = run_cases(&args, &pgraft, &etcd, &value);
    let down = pgraft.down();
    drop(etcd);
    let rows = result?;
    down?;
    let _ = std::fs::remove_dir_all(&args.dir);

    println!(
        "{} s per case, {}-byte values, {} keys per client; pgraft through SQL (libpq), etcd through gRPC",
        args.seconds, args.value_size, args.keys
    );
    println!(
        "{:<4} {:>7}  {:>10} {:>8} {:>8} {:>9}  {:>10} {:>8} {:>8} {:>9}  {:>8} {:>8}",
        "op",
        "clients",
        "pgraft/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "etcd/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "tput x",
        "p99 x"
    );
    for (op, n, p, e) in &rows {
        println!(
            "{:<4} {:>7}  {:>10.0} {:>8} {:>8} {:>9}  {:>10.0} {:>8} {:>8} {:>9}  {:>8.2} {:>8.2}",
            if *op == Op::Put { "put" } else { "get" },
            n,
            p.per_second,
            ms(p.p50),
            ms(p.p99),
            ms(p.p999),
            e.per_second,
            ms(e.p50),
            ms(e.p99),
            ms(e.p999),
            p.per_second / e.per_second,
            p.p99.as_secs_f64() / e.p99.as_secs_f64().max(1e-6),
        );
    }
    println!("tput x: pgraft's throughput over etcd's; p99 x: pgraft's p99 latency over etcd's");
    Ok(())
}

fn run_cases(
    args: &Args,
    pgraft: &LocalCluster,
    etcd: &etcd::EtcdCluster,
    value: &str,
) -> Result<Vec<(Op, usize, Figures, Figures)>> {
    let duration = Duration::from_secs(args.seconds);
    let max = args.clients.iter().copied().max().unwrap_or(1);
    // Every key a read case asks for exists: written once beforehand by as many clients
    // as the largest case has.
    for (name, clients) in
        [("pgraft", pgraft_clients(pgraft, 16)?), ("etcd", etcd_clients(&etcd.client_urls, 16)?)]
    {
        eprintln!("{name}: writing {} keys for the read cases", max * args.keys);
        let per = max.div_ceil(16);
        let mut handles = Vec::new();
        for (t, mut c) in clients.into_iter().enumerate() {
            let (keys, value) = (args.keys, value.to_string());
            handles.push(std::thread::spawn(move || -> Result<()> {
                for client in (t * per..(t + 1) * per).filter(|c| *c < max) {
                    for i in 0..keys {
                        c.put(&load::key(client, i, keys), &value)?;
                    }
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a loader panicked"))??;
        }
    }
    let mut rows = Vec::new();
    for op in [Op::Put, Op::Get] {
        for &n in &args.clients {
            eprintln!("{op:?} with {n} clients: pgraft");
            let p = load::run(pgraft_clients(pgraft, n)?, op, duration, args.keys, value)?;
            eprintln!("{op:?} with {n} clients: etcd");
            let e = load::run(etcd_clients(&etcd.client_urls, n)?, op, duration, args.keys, value)?;
            rows.push((op, n, p, e));
        }
    }
    Ok(rows)
}
