//! `pgraftctl`: the operator's command line for pgraft.
//!
//! `pgraftctl local ...` starts, stops and breaks real clusters on this machine (the tool
//! behind the demo, the integration tests and the benchmarks); `pgraftctl lsn ...` does
//! WAL position arithmetic; `pgraftctl wal ...` streams WAL (receive, decode);
//! `pgraftctl server ...` calls the server API functions and `pgraftctl backup` makes (and
//! `--verify` checks) a file-level base backup through them. `pgraftctl member|endpoint|
//! leader|kv|log|config ...` operate a running cluster over libpq, with etcdctl's habits.

mod backup;
mod backup_wal;
mod cluster_args;
mod config;
mod endpoint;
mod failover;
mod kv;
mod leader;
mod local;
mod log;
mod lsn;
mod manifest;
mod member;
mod pg_conn;
mod server;
mod switchover;
mod table;
mod wal;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// pgraft: Raft consensus inside PostgreSQL.
#[derive(Parser)]
#[command(name = "pgraftctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Local clusters of real servers on 127.0.0.1, for trying, testing and benchmarking.
    Local(local::LocalArgs),
    /// WAL positions (LSNs): parse, compare, and map to segment file names.
    Lsn(lsn::LsnArgs),
    /// The server API functions against one server: info, check, checkpoint, stat, read.
    Server(server::ServerArgs),
    /// A file-level base backup of a running primary, or --verify of a finished one.
    Backup(backup::BackupArgs),
    /// WAL streaming: receive segments into a directory, decode a logical slot.
    Wal(wal::WalArgs),
    /// Cluster membership: list, add, remove (like etcdctl member).
    Member(member::MemberArgs),
    /// Every endpoint's status or health at once; --watch refreshes in place.
    Endpoint(endpoint::EndpointArgs),
    /// Hand leadership to another member.
    Leader(leader::LeaderArgs),
    /// HA clusters: make another member's server the primary (a planned switchover).
    Switchover(switchover::SwitchoverArgs),
    /// HA clusters, primary lost: make member N's server the new primary.
    Failover(failover::FailoverArgs),
    /// The replicated key-value store: get, put, del (with --prefix).
    Kv(kv::KvArgs),
    /// The Raft log's indexes and size.
    Log(log::LogArgs),
    /// pgraft's settings: get, and set on every member.
    Config(config::ConfigArgs),
}

/// Frees `-h` for the host, as psql and pg_basebackup have it: help is `--help` (or `-?`)
/// on every command.
fn psql_style_help(cmd: clap::Command) -> clap::Command {
    let cmd = cmd
        .disable_help_flag(true)
        .arg(clap::Arg::new("help").long("help").short('?').action(clap::ArgAction::Help).help("Print help"));
    let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    names.iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, psql_style_help))
}

fn main() {
    let matches = psql_style_help(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Local(args) => local::run(args),
        Command::Lsn(args) => lsn::run(args),
        Command::Server(args) => server::run(args),
        Command::Backup(args) => backup::run(args),
        Command::Wal(args) => wal::run(args),
        Command::Member(args) => member::run(args),
        Command::Endpoint(args) => endpoint::run(args),
        Command::Leader(args) => leader::run(args),
        Command::Switchover(args) => switchover::run(args),
        Command::Failover(args) => failover::run(args),
        Command::Kv(args) => kv::run(args),
        Command::Log(args) => log::run(args),
        Command::Config(args) => config::run(args),
    };
    if let Err(e) = result {
        eprintln!("pgraftctl: error: {e:#}");
        std::process::exit(1);
    }
}
