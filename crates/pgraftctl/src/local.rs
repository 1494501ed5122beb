//! `pgraftctl local`: local clusters for trying, testing and benchmarking.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pgraft_testkit::{LocalCluster, UpOptions};

#[derive(Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    command: LocalCommand,
}

#[derive(Subcommand)]
enum LocalCommand {
    /// initdb, configure and start N servers on 127.0.0.1 and bootstrap the Raft cluster;
    /// prints one JSON line per member.
    Up {
        /// How many members.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// The cluster directory (created; must not hold a cluster yet).
        #[arg(long)]
        dir: PathBuf,
        /// First Raft port; members get P, P+1, ... (default: free ports).
        #[arg(long)]
        raft_port: Option<u16>,
        /// First PostgreSQL port; members get P, P+1, ... (default: free ports).
        #[arg(long)]
        pg_port: Option<u16>,
        /// Start the servers with the extension preloaded, but run no CREATE EXTENSION,
        /// pgraft_init or pgraft_add_node.
        #[arg(long)]
        no_init: bool,
        /// The PostgreSQL installation to run, into which the extension was installed.
        #[arg(long, env = "PGRAFT_PG_CONFIG", default_value = pgraft_testkit::PgInstall::DEFAULT_PG_CONFIG)]
        pg_config: PathBuf,
        /// Mutual TLS between members: a CA and a certificate per member under DIR/tls,
        /// set in pgraft.ssl_enabled / ssl_cert_file / ssl_key_file / ssl_ca_file.
        #[arg(long)]
        tls: bool,
        /// Members prove a random cluster secret to each other at every connection
        /// (pgraft.cluster_secret), instead of or beside TLS.
        #[arg(long)]
        cluster_secret: bool,
        /// One PostgreSQL cluster: node 1 the primary, the others its streaming standbys
        /// (a physical slot each); each JSON line says the member's `role`, and a last line
        /// gives the `read_write_conninfo` of the whole cluster.
        #[arg(long)]
        ha: bool,
        /// Each member serves its HTTP endpoints (health checks, /metrics) on a free port of
        /// 127.0.0.1; each JSON line gives its `http_port`.
        #[arg(long)]
        http: bool,
    },
    /// Write and start an HAProxy configuration in front of an HA cluster started with
    /// `--http`: a read-write port routed to the server answering `GET /primary` with 200,
    /// a read-only port balanced over the ones answering `GET /replica`; prints them as
    /// JSON, with a libpq conninfo for each. `down` stops it.
    Haproxy {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
        /// The read-write port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        read_write_port: Option<u16>,
        /// The read-only port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        read_only_port: Option<u16>,
    },
    /// One JSON line per member: running, pid, partitioned, role, extension.
    Status {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// kill -9 the postmaster of member N.
    Kill {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start member N again; without N, every member that is not running.
    Start {
        /// The member's node id.
        node: Option<u64>,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop member N cleanly (fast shutdown).
    Stop {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Cut member N off from the other members on the Raft ports (SQL still answers).
    Partition {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Cut the one link between members A and B (both directions); several cuts make a
    /// bridge, a ring or a minority. `heal` undoes them.
    Cut {
        /// One end of the link.
        a: u64,
        /// The other end.
        b: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Cut every replication link of member N (HA clusters); its Raft links stay up.
    ReplPartition {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Cut the replication link between members A and B; Raft links stay up.
    ReplCut {
        /// One end of the link.
        a: u64,
        /// The other end.
        b: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// kill -9 the pgraft background worker of member N alone (PostgreSQL then restarts
    /// every backend and the worker: a crash restart).
    KillWorker {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Freeze every process of member N (SIGSTOP) until `resume`.
    Pause {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Thaw member N after `pause` (SIGCONT).
    Resume {
        /// The member's node id.
        node: u64,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Undo `partition` and `cut` for member N, or every cut.
    Heal {
        /// The member's node id (default: all).
        node: Option<u64>,
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every server and the proxy; no process of the directory is left.
    Down {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serve a cluster's supervisor: partition proxy, server starts, reaping (started by
    /// `up` and `start`).
    #[command(hide = true)]
    Proxy {
        /// The cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

pub fn run(args: LocalArgs) -> Result<()> {
    match args.command {
        LocalCommand::Up {
            nodes,
            dir,
            raft_port,
            pg_port,
            no_init,
            pg_config,
            tls,
            cluster_secret,
            ha,
            http,
        } => {
            let opts = UpOptions {
                nodes,
                dir,
                raft_port,
                pg_port,
                no_init,
                pg_config,
                proxy_exe: std::env::current_exe().context("locate the pgraftctl binary")?,
                tls,
                cluster_secret,
                direct_peers: false,
                ha,
                http,
            };
            let cluster = LocalCluster::up(&opts)?;
            for n in cluster.nodes() {
                let mut line = serde_json::to_value(n).context("serialise a node")?;
                line["role"] = cluster.role(n.node_id)?.into();
                println!("{line}");
            }
            if ha {
                println!("{}", serde_json::json!({ "read_write_conninfo": cluster.read_write_conninfo() }));
            }
        }
        LocalCommand::Haproxy { dir, read_write_port, read_only_port } => {
            let h = LocalCluster::open(&dir)?.haproxy(read_write_port, read_only_port)?;
            let conninfo = |p: u16| format!("host=127.0.0.1 port={p} user=postgres dbname=postgres");
            let mut line = serde_json::to_value(&h).context("serialise haproxy")?;
            line["read_write_conninfo"] = conninfo(h.read_write_port).into();
            line["read_only_conninfo"] = conninfo(h.read_only_port).into();
            println!("{line}");
        }
        LocalCommand::Status { dir } => {
            for s in LocalCluster::open(&dir)?.status()? {
                println!("{}", serde_json::to_string(&s).context("serialise a status")?);
            }
        }
        LocalCommand::Kill { node, dir } => LocalCluster::open(&dir)?.kill(node)?,
        LocalCommand::Start { node: Some(node), dir } => LocalCluster::open(&dir)?.start(node)?,
        LocalCommand::Start { node: None, dir } => LocalCluster::open(&dir)?.start_all()?,
        LocalCommand::Stop { node, dir } => LocalCluster::open(&dir)?.stop(node)?,
        LocalCommand::Partition { node, dir } => LocalCluster::open(&dir)?.partition(node)?,
        LocalCommand::Cut { a, b, dir } => LocalCluster::open(&dir)?.cut(a, b)?,
        LocalCommand::ReplPartition { node, dir } => LocalCluster::open(&dir)?.repl_partition(node)?,
        LocalCommand::ReplCut { a, b, dir } => LocalCluster::open(&dir)?.repl_cut(a, b)?,
        LocalCommand::KillWorker { node, dir } => {
            let pid = LocalCluster::open(&dir)?.kill_worker(node)?;
            println!("killed the worker of node {node} (pid {pid})");
        }
        LocalCommand::Pause { node, dir } => {
            let n = LocalCluster::open(&dir)?.pause(node)?;
            println!("paused node {node} ({n} processes)");
        }
        LocalCommand::Resume { node, dir } => LocalCluster::open(&dir)?.resume(node)?,
        LocalCommand::Heal { node, dir } => LocalCluster::open(&dir)?.heal(node)?,
        LocalCommand::Down { dir } => LocalCluster::open(&dir)?.down()?,
        LocalCommand::Proxy { dir } => LocalCluster::serve(&dir)?,
    }
    Ok(())
}
