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

/// Refuses a switchover that would leave the cluster without a primary. The old primary's
/// server shuts down, and its Raft member with it until the server is back as a standby,
/// which needs the new primary; the new primary needs the reports of a detach quorum of
/// the other standbys. With another member down, the rest can neither elect a leader nor
/// promote (a 3-member cluster is then left with one member running). So every member's
/// server must answer among the endpoints.
fn every_member_up(c: &ClusterArgs, to: i32) -> Result<()> {
    let mut up = std::collections::BTreeSet::new();
    let mut members = 0i64;
    let mut down = Vec::new();
    for ep in c.endpoint_list()? {
        let answer = c.connect(&ep).and_then(|mut s| {
            let id = s.node_id()?;
            let n: i64 = s
                .client
                .query_one("SELECT count(*) FROM pgraft_ha_status()", &[])
                .map_err(sql_error)
                .with_context(|| format!("read pgraft_ha_status() on {ep}"))?
                .get(0);
            Ok((id, n))
        });
        match answer {
            Ok((id, n)) => {
                up.insert(id);
                members = members.max(n);
            }
            Err(e) => down.push(format!("{e:#}")),
        }
    }
    if (up.len() as i64) < members {
        bail!(
            "a switchover needs every member's server running, and {} of {members} answer among --endpoints ({}): \
             the old primary shuts down during a switchover, and with another member down the others could \
             neither elect a leader nor promote node {to}; start the missing server (it rejoins as a standby), \
             then ask again",
            up.len(),
            if down.is_empty() { "list every member".to_string() } else { down.join("; ") }
        );
    }
    Ok(())
}

/// Asks for a switchover to `to` on a member that does not lead; returns the leader it
/// knew of before and the endpoint asked.
pub fn transfer(c: &ClusterArgs, to: i32) -> Result<(i32, String)> {
    every_member_up(c, to)?;
    let (mut s, from) = on_a_follower(c)?;
    // pgraft_transfer_leadership waits up to 15 s for the new primary (the standbys of a
    // detach quorum report first): give it that, whatever --command-timeout says.
    let ms = c.command_timeout.max(std::time::Duration::from_secs(20)).as_millis();
    s.client
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .map_err(sql_error)
        .with_context(|| format!("set statement_timeout on {}", s.endpoint))?;
    let ok: bool = s
        .client
        .query_one("SELECT pgraft_transfer_leadership($1)", &[&to])
        .map_err(sql_error)
        .with_context(|| format!("switchover to node {to} (asked on {})", s.endpoint))?
        .get(0);
    if !ok {
        bail!("{} answered false: node {to} did not become the primary", s.endpoint);
    }
    Ok((from, s.endpoint.to_string()))
}

pub fn run(args: SwitchoverArgs) -> Result<()> {
    let c = &args.cluster;
    let to = args.to;
    let started = Instant::now();
    let (from, endpoint) = transfer(c, to)?;
    let took = started.elapsed();
    match c.output {
        Output::Json => println!(
            "{}",
            json!({ "from": from, "to": to, "ms": took.as_millis() as u64, "endpoint": endpoint })
        ),
        Output::Table => println!("Switched over from node {from} to node {to} in {} ms", took.as_millis()),
    }
    Ok(())
}
