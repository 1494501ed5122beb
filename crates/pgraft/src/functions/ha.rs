//! `pgraft_ha_status()`: failover as this member sees it, one row per member.
//!
//! The HA state comes from the log (so every member tells the same story about who is the
//! primary and why); this member's own row adds what its server and worker are doing now;
//! on the primary, the other rows add what `pg_stat_replication` says of each standby.

use std::collections::BTreeMap;

use pgraft_core::ha::{lsn_text, HaState, Lsn};
use pgrx::prelude::*;

use super::cluster::status;
use super::kv::ts;
use crate::ha::server_probe;
use crate::shmem::{self, GateState};

/// One standby as the primary's `pg_stat_replication` shows it.
struct Streaming {
    state: String,
    flushed: Option<Lsn>,
    replayed: Option<Lsn>,
    sync_state: String,
}

/// The standbys streaming from this server, by member (application name `pgraft_node_N`).
fn streaming() -> BTreeMap<u64, Streaming> {
    let q = "SELECT application_name, state, (flush_lsn - '0/0'::pg_lsn)::bigint, \
                    (replay_lsn - '0/0'::pg_lsn)::bigint, sync_state \
               FROM pg_stat_replication WHERE application_name LIKE 'pgraft_node_%'";
    Spi::connect(|c| {
        let mut out = BTreeMap::new();
        let Ok(rows) = c.select(q, None, &[]) else { return out };
        for row in rows {
            let name: Option<String> = row.get(1).ok().flatten();
            let Some(id) = name.as_deref().and_then(pgraft_core::ha::member_of) else {
                continue;
            };
            let lsn = |i: usize| row.get::<i64>(i).ok().flatten().map(|v| v as u64);
            out.insert(
                id,
                Streaming {
                    state: row.get::<String>(2).ok().flatten().unwrap_or_default(),
                    flushed: lsn(3),
                    replayed: lsn(4),
                    sync_state: row.get::<String>(5).ok().flatten().unwrap_or_default(),
                },
            );
        }
        out
    })
}

/// The rejoin helper's last step on this member (`rejoin.state`: when, and what, such as
/// "done: running as a standby (rewound)"), if it ever ran.
fn last_rejoin() -> Option<String> {
    let text = std::fs::read_to_string(crate::worker::raft_dir().join(crate::ha::rejoin::STATE)).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// Failover as this member sees it: per member, its Raft state, its server's role,
/// timeline and WAL positions where known here, its lag and synchronous state on the
/// primary, whether it is fenced, and its last promotion.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_ha_status() -> TableIterator<
    'static,
    (
        name!(node_id, i64),
        name!(raft_state, String),
        name!(recorded_primary, bool),
        name!(server_role, Option<String>),
        name!(timeline, Option<i64>),
        name!(received_lsn, Option<String>),
        name!(replayed_lsn, Option<String>),
        name!(lag_bytes, Option<i64>),
        name!(sync_state, Option<String>),
        name!(fenced, Option<bool>),
        name!(failover_enabled, bool),
        name!(last_promotion_term, Option<i64>),
        name!(last_promotion_at, Option<pgrx::datetime::TimestampWithTimeZone>),
        name!(last_promotion_reason, Option<String>),
        name!(note, Option<String>),
        name!(server_problem, Option<String>),
        name!(last_rejoin, Option<String>),
    ),
> {
    let st = status();
    let ha: &HaState = &st.ha;
    let me = st.member.id;
    let failover = crate::gucs::effective_failover(&st.cluster_config);
    let facts = server_probe::observe();
    let replicas = if facts.in_recovery { BTreeMap::new() } else { streaming() };
    let shared = shmem::read();
    let mut ids: Vec<u64> = st.member.voters.iter().chain(st.member.learners.iter()).copied().collect();
    ids.sort_unstable();
    let rows: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let raft_state = if id == me {
                st.member.role.as_str().to_ascii_lowercase()
            } else if id == st.member.leader_id {
                "leader".to_string()
            } else if st.member.learners.contains(&id) {
                "learner".to_string()
            } else {
                "follower".to_string()
            };
            let recorded = ha.primary.as_ref().is_some_and(|p| p.node == id);
            let promo = ha.last_promotion.get(&id);
            let (role, timeline, received, replayed, lag, sync, fenced, note) = if id == me {
                let role = if facts.in_recovery { "standby" } else { "primary" };
                (
                    Some(role.to_string()),
                    Some(i64::from(facts.timeline)),
                    Some(lsn_text(facts.received)),
                    Some(lsn_text(facts.replayed)),
                    None,
                    None,
                    Some(shared.gate == GateState::Fenced),
                    Some(shared.ha_note.as_str().to_string()).filter(|n| !n.is_empty()),
                )
            } else if let Some(r) = replicas.get(&id) {
                (
                    Some("standby".to_string()),
                    None,
                    r.flushed.map(lsn_text),
                    r.replayed.map(lsn_text),
                    r.flushed.map(|f| facts.replayed.saturating_sub(f) as i64),
                    Some(format!("{} ({})", r.sync_state, r.state)),
                    None,
                    None,
                )
            } else {
                (None, None, None, None, None, None, None, None)
            };
            (
                id as i64,
                raft_state,
                recorded,
                role,
                timeline,
                received,
                replayed,
                lag,
                sync,
                fenced,
                failover,
                promo.map(|p| p.term as i64),
                promo.and_then(|p| ts(p.time_ms)),
                promo.map(|p| p.reason.clone()),
                note,
                ha.unhealthy.get(&id).cloned(),
                (id == me).then(last_rejoin).flatten(),
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn ha_status_has_a_row_per_member_and_this_servers_facts() {
        init_and_lead();
        let me: i64 = one("SELECT current_setting('pgraft.node_id')::bigint");
        assert!(yes("SELECT count(*) = (SELECT count(*) FROM pgraft_get_nodes()) FROM pgraft.ha_status"));
        assert!(yes(&format!(
            "SELECT server_role = 'primary' AND raft_state = 'leader' AND timeline >= 1 \
                    AND replayed_lsn::pg_lsn > '0/0' AND fenced IS NOT NULL \
               FROM pgraft.ha_status WHERE node_id = {me}"
        )));
    }
}
