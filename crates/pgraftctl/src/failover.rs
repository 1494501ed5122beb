//! `pgraftctl failover --to N`: make member N's server the primary after the primary was
//! lost, like `patronictl failover --candidate N`.
//!
//! With the primary's member gone, the Raft leader of the next term promotes the most
//! advanced standby by itself (docs/failover.md); this command waits for that and, when
//! another standby than N was promoted, hands the primary role on to N with a switchover
//! (N replays everything first, nothing is lost). It refuses while the primary is healthy
//! (its member leads and it is the recorded primary: that is what `switchover` is for) and
//! while automatic failover is paused (`failover_enabled` off): paused, nothing fences the
//! old primary, and promoting another server beside it is how split brain happens.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::cluster_args::{parse_duration, sql_error, ClusterArgs, Session};
use crate::server::Output;

#[derive(Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The member whose server becomes the primary.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    to: i32,
    /// How long to wait for the cluster to replace the lost primary.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    wait: Duration,
}

/// What one member says about the HA cluster.
struct HaView {
    leader: i32,
    primary: Option<i32>,
    failover_enabled: bool,
    members: Vec<i32>,
}

fn ha_view(s: &mut Session) -> Result<HaView> {
    let (_, leader) = s.leadership()?;
    let rows = s
        .client
        .query("SELECT node_id::int, recorded_primary, failover_enabled FROM pgraft_ha_status()", &[])
        .map_err(sql_error)
        .with_context(|| format!("read pgraft_ha_status() on {}", s.endpoint))?;
    let mut v = HaView { leader, primary: None, failover_enabled: false, members: Vec::new() };
    for r in rows {
        let node: i32 = r.get(0);
        v.members.push(node);
        if r.get::<_, bool>(1) {
            v.primary = Some(node);
        }
        v.failover_enabled = r.get(2);
    }
    Ok(v)
}

/// The view of the first endpoint that answers, without the warnings `any` prints about
/// the ones before it (the lost primary's, polled here many times).
fn quiet_view(c: &ClusterArgs) -> Result<HaView> {
    let mut failures = Vec::new();
    for ep in c.endpoint_list()? {
        match c.connect(&ep).and_then(|mut s| ha_view(&mut s)) {
            Ok(v) => return Ok(v),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!("no endpoint answered: {}", failures.join("; "))
}

/// A session on member `node`'s own server, if it answers among the endpoints.
fn session_on(c: &ClusterArgs, node: i32) -> Option<Session> {
    let eps = c.endpoint_list().ok()?;
    eps.iter().filter_map(|ep| c.connect(ep).ok()).find_map(|mut s| (s.node_id().ok()? == node).then_some(s))
}

/// Whether member `node`'s server answers among the endpoints as a primary (the decision is
/// committed before the promotion).
fn promoted(c: &ClusterArgs, node: i32) -> bool {
    session_on(c, node).is_some_and(|mut s| {
        s.client.query_one("SELECT pg_is_in_recovery()", &[]).is_ok_and(|r| !r.get::<_, bool>(0))
    })
}

/// Whether member `node` answers among the endpoints and says it leads.
fn leads_itself(c: &ClusterArgs, node: i32) -> bool {
    session_on(c, node).is_some_and(|mut s| s.leadership().is_ok_and(|(leads, _)| leads))
}

pub fn run(args: FailoverArgs) -> Result<()> {
    let c = &args.cluster;
    let to = args.to;
    let started = Instant::now();
    let v = quiet_view(c)?;
    if !v.members.contains(&to) {
        bail!("node {to} is not a member of this cluster (members: {:?})", v.members);
    }
    if !v.failover_enabled {
        bail!(
            "automatic failover is paused (failover_enabled is false): nothing would fence the old primary; \
             turn it on with SELECT pgraft_set_config('failover_enabled', 'true') and the leader replaces a lost primary"
        );
    }
    // Healthy: the primary's own member answers among the endpoints and leads (the others
    // may not have noticed a primary that just died yet).
    let healthy = v.primary.filter(|p| *p == v.leader && leads_itself(c, *p));
    let lost = match healthy {
        Some(p) if p == to => {
            return report(c, p, to, started, "already the primary");
        }
        Some(p) => bail!(
            "node {p} is the primary and its member leads: a failover replaces a lost primary; \
             use `pgraftctl switchover --to {to}` for a planned change"
        ),
        None => v.primary,
    };
    // The primary's member does not lead: the cluster is replacing it. Wait for a primary
    // on record whose member leads and whose server was promoted.
    let promoted = loop {
        let last = match quiet_view(c) {
            Ok(v) => match v.primary {
                Some(p) if p == v.leader && Some(p) != lost && promoted(c, p) => break p,
                p => format!("primary on record {p:?}, leader {}", v.leader),
            },
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() >= args.wait {
            bail!("no new primary within {:?} (last seen: {last})", args.wait);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if promoted == to {
        return report(c, lost.unwrap_or(0), to, started, "promoted by the failover");
    }
    crate::switchover::transfer(c, to)?;
    report(c, lost.unwrap_or(0), to, started, &format!("node {promoted} was promoted, then a switchover"))
}

fn report(c: &ClusterArgs, from: i32, to: i32, started: Instant, how: &str) -> Result<()> {
    let ms = started.elapsed().as_millis() as u64;
    match c.output {
        Output::Json => println!("{}", json!({ "from": from, "to": to, "ms": ms, "how": how })),
        Output::Table => println!("Failed over from node {from} to node {to} in {ms} ms ({how})"),
    }
    Ok(())
}
