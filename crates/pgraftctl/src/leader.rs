//! `pgraftctl leader transfer`: hand leadership to another voter, like
//! `etcdctl move-leader`.
//!
//! The request goes to the leader, found among the endpoints: on a follower,
//! pgraft_transfer_leadership to a third member does not complete (it waits until its
//! timeout), so the command never sends it there unless told to (`--no-follow-leader`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cluster_args::ClusterArgs;
use crate::server::Output;

#[derive(Args)]
pub struct LeaderArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: LeaderCommand,
}

#[derive(Subcommand)]
enum LeaderCommand {
    /// Make another voting member the leader; returns once it leads.
    Transfer {
        /// The node id of the member to lead.
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        id: i32,
        /// Send the request to the first endpoint even when it does not lead.
        #[arg(long)]
        no_follow_leader: bool,
    },
}

pub fn run(args: LeaderArgs) -> Result<()> {
    let c = &args.cluster;
    match args.command {
        LeaderCommand::Transfer { id, no_follow_leader } => {
            let (on, (from, ok, leader, term)) =
                c.on_leader(!no_follow_leader, "pgraft_transfer_leadership", |cl| {
                    let from: i32 = cl.query_one("SELECT pgraft_get_leader()", &[])?.get(0);
                    let ok: bool = cl.query_one("SELECT pgraft_transfer_leadership($1)", &[&id])?.get(0);
                    // The function returns once the Raft member sees the new leader; the
                    // shared memory behind pgraft_get_leader() follows a moment later.
                    let deadline = Instant::now() + c.command_timeout;
                    loop {
                        let r = cl.query_one("SELECT pgraft_get_leader(), pgraft_get_term()", &[])?;
                        let (leader, term) = (r.get::<_, i32>(0), r.get::<_, i64>(1));
                        if leader == id || !ok || Instant::now() >= deadline {
                            return Ok((from, ok, leader, term));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })?;
            if !ok {
                bail!("{on} answered false: leadership was not transferred to node {id}");
            }
            match c.output {
                Output::Json => println!(
                    "{}",
                    json!({ "from": from, "to": id, "leader": leader, "term": term, "endpoint": on.to_string() })
                ),
                Output::Table if from == id => println!("Node {id} already leads (term {term})"),
                Output::Table => {
                    println!("Leadership transferred from node {from} to node {id} (term {term})")
                }
            }
            Ok(())
        }
    }
}
