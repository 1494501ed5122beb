//! `pgraftctl member list|add|remove`: cluster membership, like `etcdctl member`.
//!
//! `list` asks the leader when it is among the endpoints (only the leader tracks every
//! member's progress and reachability), otherwise the first endpoint that answers.
//! `add` and `remove` run on the leader, found among the endpoints (see
//! [`ClusterArgs::leader`]); `--no-follow-leader` sends them to the first endpoint as is.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cluster_args::{sql_error, ClusterArgs};
use crate::server::Output;
use crate::table::{cell, Table};

#[derive(Args)]
pub struct MemberArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Every member: id, Raft address, state, progress (pgraft_get_nodes).
    List,
    /// Add a voting member by node id and Raft address (run on the leader).
    Add {
        /// The new member's node id (its pgraft.node_id).
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        id: i32,
        /// Its Raft address, host:port (pgraft.address and pgraft.port).
        peer_addr: String,
        /// Send the request to the first endpoint even when it does not lead.
        #[arg(long)]
        no_follow_leader: bool,
    },
    /// Remove a member by node id (run on the leader).
    Remove {
        /// The member's node id.
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        id: i32,
        /// Send the request to the first endpoint even when it does not lead.
        #[arg(long)]
        no_follow_leader: bool,
    },
}

pub fn run(args: MemberArgs) -> Result<()> {
    let c = &args.cluster;
    match args.command {
        MemberCommand::List => list(c),
        MemberCommand::Add { id, peer_addr, no_follow_leader } => {
            let (host, port) = split_peer(&peer_addr)?;
            let (on, ok) = c.on_leader(!no_follow_leader, "pgraft_add_node", |cl| {
                cl.query_one("SELECT pgraft_add_node($1, $2, $3)", &[&id, &host, &port]).map(|r| r.get(0))
            })?;
            done(c.output, ok, &on.to_string(), json!({ "added": id, "peer_addr": peer_addr }), || {
                format!("Member {id} added to the cluster at {peer_addr}")
            })
        }
        MemberCommand::Remove { id, no_follow_leader } => {
            let (on, ok) = c.on_leader(!no_follow_leader, "pgraft_remove_node", |cl| {
                cl.query_one("SELECT pgraft_remove_node($1)", &[&id]).map(|r| r.get(0))
            })?;
            done(c.output, ok, &on.to_string(), json!({ "removed": id }), || {
                format!("Member {id} removed from the cluster")
            })
        }
    }
}

fn list(c: &ClusterArgs) -> Result<()> {
    let mut s = match c.leader() {
        Ok(s) => s,
        Err(_) => c.any()?,
    };
    let rows = s
        .client
        .query(
            "SELECT n.node_id, n.address, n.port, n.is_leader, n.state, n.match_index, n.commit_index, \
                    n.last_heartbeat_ms, n.replication_lag_bytes, \
                    CASE WHEN h.server_role IS NOT NULL THEN h.server_role \
                         WHEN h.recorded_primary THEN 'primary (recorded)' END \
               FROM pgraft_get_nodes() n LEFT JOIN pgraft_ha_status() h ON h.node_id = n.node_id \
              ORDER BY n.node_id",
            &[],
        )
        .map_err(sql_error)
        .with_context(|| format!("pgraft_get_nodes on {}", s.endpoint))?;
    let members: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (address, port): (String, i32) = (r.get(1), r.get(2));
            let peer = if address.contains(':') {
                format!("[{address}]:{port}")
            } else {
                format!("{address}:{port}")
            };
            json!({
                "id": r.get::<_, i32>(0),
                "name": format!("node{}", r.get::<_, i32>(0)),
                "peer_addr": peer,
                "is_leader": r.get::<_, bool>(3),
                "state": r.get::<_, String>(4),
                "match_index": r.get::<_, Option<i64>>(5),
                "commit_index": r.get::<_, Option<i64>>(6),
                "last_heartbeat_ms": r.get::<_, Option<i64>>(7),
                "replication_lag_bytes": r.get::<_, Option<i64>>(8),
                "pg_role": r.get::<_, Option<String>>(9),
            })
        })
        .collect();
    if c.output == Output::Json {
        println!("{}", json!({ "endpoint": s.endpoint.to_string(), "members": members }));
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "PEER ADDR",
        "STATE",
        "IS LEADER",
        "MATCH INDEX",
        "COMMIT INDEX",
        "LAST HEARD MS",
        "LAG",
        "PG ROLE",
    ]);
    for m in &members {
        t.row(
            [
                "id",
                "name",
                "peer_addr",
                "state",
                "is_leader",
                "match_index",
                "commit_index",
                "last_heartbeat_ms",
                "replication_lag_bytes",
                "pg_role",
            ]
            .iter()
            .map(|k| cell(&m[*k]))
            .collect(),
        );
    }
    t.print();
    Ok(())
}

/// Reports a change: a sentence for people, an object for scripts; a `false` answer is a
/// failure.
fn done(out: Output, ok: bool, on: &str, mut v: Value, sentence: impl Fn() -> String) -> Result<()> {
    if !ok {
        bail!("{on} answered false: the change was not made");
    }
    match out {
        Output::Json => {
            v["endpoint"] = json!(on);
            println!("{v}");
        }
        Output::Table => println!("{}", sentence()),
    }
    Ok(())
}

/// `host:port` or `[v6]:port` into the host and port pgraft_add_node takes.
fn split_peer(s: &str) -> Result<(String, i32)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => s.rsplit_once(':'),
    }
    .with_context(|| format!("peer address {s:?}: expected host:port, e.g. 127.0.0.1:7004"))?;
    let port: i32 = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("peer address {s:?}: {port:?} is not a port number"))?
        .into();
    if host.is_empty() {
        bail!("peer address {s:?} names no host");
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::split_peer;

    #[test]
    fn peer_addresses() {
        assert_eq!(split_peer("127.0.0.1:7004").unwrap(), ("127.0.0.1".to_string(), 7004));
        assert_eq!(split_peer("[::1]:7004").unwrap(), ("::1".to_string(), 7004));
        assert!(split_peer("127.0.0.1").is_err());
        assert!(split_peer("127.0.0.1:70000").is_err());
        assert!(split_peer(":7").is_err());
    }
}
