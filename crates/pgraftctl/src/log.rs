//! `pgraftctl log stats`: the Raft log of one member (pgraft_log_get_stats).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cluster_args::{sql_error, ClusterArgs};

#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Indexes (first, last, committed, applied), entry count and disk use of the first
    /// endpoint that answers.
    Stats,
}

pub fn run(args: LogArgs) -> Result<()> {
    let c = &args.cluster;
    match args.command {
        LogCommand::Stats => {
            let mut s = c.any()?;
            let node_id = s.node_id()?;
            let r = s
                .client
                .query_one(
                    "SELECT first_index, last_index, commit_index, last_applied, total_entries, \
                            log_size, disk_usage_mb FROM pgraft_log_get_stats()",
                    &[],
                )
                .map_err(sql_error)
                .with_context(|| format!("pgraft_log_get_stats on {}", s.endpoint))?;
            crate::server::print(
                c.output,
                &json!({
                    "endpoint": s.endpoint.to_string(),
                    "node_id": node_id,
                    "first_index": r.get::<_, i64>(0),
                    "last_index": r.get::<_, i64>(1),
                    "commit_index": r.get::<_, i64>(2),
                    "last_applied": r.get::<_, i64>(3),
                    "total_entries": r.get::<_, i64>(4),
                    "log_size_bytes": r.get::<_, i64>(5),
                    "disk_usage_mb": r.get::<_, f64>(6),
                }),
            )
        }
    }
}
