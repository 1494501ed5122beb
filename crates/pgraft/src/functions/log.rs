//! The replicated log: raw entries, commit and apply waits, statistics, replication.

use pgraft_core::command::Body;
use pgraft_core::{Consistency, Read, Request, Response};
use pgrx::prelude::*;

use super::cluster::{heard_ms, seconds, state_of, status};
use crate::bridge::{self, invalid};
use crate::protocol::{IpcRequest, IpcResponse};

/// Replicates an entry through Raft; returns once it is committed and applied here.
#[pg_extern]
fn pgraft_replicate_entry(entry_data: &str) -> bool {
    matches!(
        bridge::raft(Request::Propose(Body::Raw(entry_data.as_bytes().to_vec()))),
        Response::Applied { .. }
    )
}

/// Appends an entry in `term`, which must be the current term; returns once the entry is
/// in the log (committed and applied here).
#[pg_extern]
fn pgraft_log_append(term: i64, data: &str) -> bool {
    let current = crate::shmem::read().term as i64;
    if term != current {
        invalid(format!("pgraft_log_append: term {term} is not the current term {current}"));
    }
    pgraft_replicate_entry(data)
}

fn index_arg(what: &str, index: i64) -> u64 {
    if index < 1 {
        invalid(format!("{what}: log index {index} is out of range; indexes start at 1"));
    }
    index as u64
}

/// Waits until log index `index` is committed on this member.
#[pg_extern]
fn pgraft_log_commit(index: i64) -> bool {
    let i = index_arg("pgraft_log_commit", index);
    matches!(bridge::raft(Request::WaitCommitted(i)), Response::Reached(_))
}

/// Waits until log index `index` is applied on this member.
#[pg_extern]
fn pgraft_log_apply(index: i64) -> bool {
    let i = index_arg("pgraft_log_apply", index);
    matches!(bridge::raft(Request::WaitApplied(i)), Response::Reached(_))
}

/// The data of a replicated entry, or a JSON description of any other entry; NULL when
/// the log no longer (or not yet) holds the index.
#[pg_extern]
fn pgraft_log_get_entry(index: i64) -> Option<String> {
    let i = index_arg("pgraft_log_get_entry", index);
    match bridge::call(IpcRequest::Entry { index: i }) {
        IpcResponse::Entry(e) => e.map(|e| e.text),
        other => bridge::unexpected(other),
    }
}

/// Waits until this member has applied everything the leader had committed when called.
#[pg_extern]
fn pgraft_log_sync_with_leader() -> bool {
    matches!(bridge::raft(Request::Read(Read::Barrier, Consistency::Linearizable)), Response::Reached(_))
}

/// Statistics of this member's log.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_get_stats() -> TableIterator<
    'static,
    (
        name!(log_size, i64),
        name!(last_index, i64),
        name!(commit_index, i64),
        name!(last_applied, i64),
        name!(first_index, i64),
        name!(total_entries, i64),
        name!(disk_usage_mb, f64),
    ),
> {
    let st = status();
    let m = &st.member;
    let total = (m.last_index + 1).saturating_sub(m.first_index);
    TableIterator::once((
        st.disk_bytes as i64,
        m.last_index as i64,
        m.commit as i64,
        m.applied as i64,
        m.first_index as i64,
        total as i64,
        (st.disk_bytes as f64 / (1024.0 * 1024.0) * 1000.0).round() / 1000.0,
    ))
}

/// Replication of every other member, as this member (the leader) sees it. On a follower
/// only the leader's row is known.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_get_replication_status() -> TableIterator<
    'static,
    (
        name!(node_id, i32),
        name!(match_index, Option<i64>),
        name!(next_index, Option<i64>),
        name!(is_replicating, bool),
        name!(last_heartbeat, Option<String>),
        name!(commit_index, i64),
        name!(lag_entries, Option<i64>),
        name!(state, String),
    ),
> {
    let st = status();
    let m = &st.member;
    let heard = |id: u64| heard_ms(&st, id).map(seconds);
    let rows: Vec<_> = if !m.progress.is_empty() {
        m.progress
            .iter()
            .filter(|p| p.id != m.id)
            .map(|p| {
                let reachable = !m.unreachable.contains(&p.id);
                let state = if !reachable {
                    "stalled".to_string()
                } else if p.state == "replicate" {
                    "replicating".to_string()
                } else {
                    p.state.clone()
                };
                (
                    p.id as i32,
                    Some(p.matched as i64),
                    Some(p.next as i64),
                    reachable && p.state == "replicate",
                    heard(p.id),
                    m.commit as i64,
                    Some(m.last_index.saturating_sub(p.matched) as i64),
                    state,
                )
            })
            .collect()
    } else {
        st.addresses
            .keys()
            .filter(|id| **id != m.id && **id == m.leader_id)
            .map(|id| (*id as i32, None, None, true, heard(*id), m.commit as i64, None, state_of(*id, m)))
            .collect()
    };
    TableIterator::new(rows)
}
