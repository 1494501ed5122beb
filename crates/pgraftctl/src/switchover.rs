//! `pgraftctl switchover --to N`: a planned switchover of an HA cluster (the Raft leader's
//! server is the primary), like `patronictl switchover`.
//!
//! The request (`pgraft_transfer_leadership(N)`) is sent to a member that is not the
//! leader: the old primary shuts down during a switchover, and a session on it would end
//! with it. The function returns once N's server is the recorded primary and N leads.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::cluster_args::{sql_error, ClusterArgs, Session};
use crate::server::Output;

#[derive(Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The member whose server becomes the primary.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    to: i32,
}

/// A session on an endpoint whose member does not lead.
fn on_a_follower(c: &ClusterArgs) -> Result<(Session, i32)> {
    let mut failures = Vec::new();
    for ep in c.endpoint_list()? {
        match c.connect(&ep) {
            Ok(mut s) => match s.leadership() {
                Ok((false, leader)) => return Ok((s, leader)),
                Ok((true, _)) => failures.push(format!("{ep} leads")),
                Err(e) => failures.push(format!("{e:#}")),
            },
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!(
        "a switchover is asked on a member that does not lead (the old primary shuts down); \
         give such a member among --endpoints ({})",
        failures.join("; ")
    )
}

pub fn run(args: SwitchoverArgs) -> Result<()> {
    let c = &args.cluster;
    let to = args.to;
    let (mut s, from) = on_a_follower(c)?;
    let started = Instant::now();
    let ok: bool = s
        .client
        .query_one("SELECT pgraft_transfer_leadership($1)", &[&to])
        .map_err(sql_error)
        .with_context(|| format!("switchover to node {to} (asked on {})", s.endpoint))?
        .get(0);
    if !ok {
        bail!("{} answered false: node {to} did not become the primary", s.endpoint);
    }
    let took = started.elapsed();
    match c.output {
        Output::Json => println!(
            "{}",
            json!({ "from": from, "to": to, "ms": took.as_millis() as u64, "endpoint": s.endpoint.to_string() })
        ),
        Output::Table => println!("Switched over from node {from} to node {to} in {} ms", took.as_millis()),
    }
    Ok(())
}
