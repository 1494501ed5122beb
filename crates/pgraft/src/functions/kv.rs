//! The replicated key-value store, etcd-style.

use pgraft_core::command::Body;
use pgraft_core::kv::KvOp;
use pgraft_core::{Consistency, Read, Request, Response};
use pgrx::prelude::*;

use crate::bridge::{self, invalid};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn put(key: &str, value: Vec<u8>) -> bool {
    if key.is_empty() {
        invalid("the key must not be empty");
    }
    let op = KvOp::Put { key: key.to_string(), value, time_ms: now_ms() };
    matches!(bridge::raft(Request::Propose(Body::Kv(op))), Response::Applied { .. })
}

/// Stores a value under a key on every member; returns once applied here.
#[pg_extern(name = "pgraft_kv_put")]
fn pgraft_kv_put_text(key: &str, value: &str) -> bool {
    put(key, value.as_bytes().to_vec())
}

/// Stores a JSON value (kept as its text) under a key.
#[pg_extern(name = "pgraft_kv_put")]
fn pgraft_kv_put_jsonb(key: &str, value: pgrx::JsonB) -> bool {
    let text = serde_json::to_string(&value.0)
        .unwrap_or_else(|e| invalid(format!("the JSON value cannot be stored: {e}")));
    put(key, text.into_bytes())
}

/// Reads a key (linearizable: it sees every write acknowledged before it started).
#[pg_extern]
fn pgraft_kv_get(key: &str) -> Option<String> {
    crate::shmem::count_get();
    match bridge::raft(Request::Read(
        Read::Get { key: key.to_string(), revision: None },
        Consistency::Linearizable,
    )) {
        Response::Kvs(kvs) => {
            kvs.into_iter().next().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        }
        other => invalid(format!("unexpected answer {other:?}")),
    }
}

/// Deletes a key; true whether or not it existed (like etcd's delete).
#[pg_extern]
fn pgraft_kv_delete(key: &str) -> bool {
    if key.is_empty() {
        invalid("the key must not be empty");
    }
    let op = KvOp::Delete { key: key.to_string(), time_ms: now_ms() };
    matches!(bridge::raft(Request::Propose(Body::Kv(op))), Response::Applied { .. })
}

/// Whether a key exists (linearizable).
#[pg_extern]
fn pgraft_kv_exists(key: &str) -> bool {
    pgraft_kv_get(key).is_some()
}

fn range(prefix: &str, consistency: Consistency) -> Vec<pgraft_core::kv::KeyValue> {
    match bridge::raft(Request::Read(
        Read::Range { prefix: prefix.to_string(), revision: None, limit: None },
        consistency,
    )) {
        Response::Kvs(kvs) => kvs,
        other => invalid(format!("unexpected answer {other:?}")),
    }
}

/// Every key, as a JSON array (linearizable).
#[pg_extern]
fn pgraft_kv_list_keys() -> String {
    let keys: Vec<String> = range("", Consistency::Linearizable).into_iter().map(|kv| kv.key).collect();
    serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into())
}

/// A time in ms since the Unix epoch as a timestamptz.
pub fn ts(ms: i64) -> Option<pgrx::datetime::TimestampWithTimeZone> {
    (ms > 0).then(|| pgrx::datetime::to_timestamp(ms as f64 / 1000.0))
}

/// Keys with a prefix and etcd's bookkeeping; `serializable` reads this member's state
/// without a round trip to the leader.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_kv_range(
    prefix: default!(&str, "''"),
    serializable: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(value, String),
        name!(version, i64),
        name!(create_revision, i64),
        name!(mod_revision, i64),
        name!(created_at, Option<pgrx::datetime::TimestampWithTimeZone>),
        name!(updated_at, Option<pgrx::datetime::TimestampWithTimeZone>),
    ),
> {
    let c = if serializable { Consistency::Serializable } else { Consistency::Linearizable };
    let rows: Vec<_> = range(prefix, c)
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.version as i64,
                kv.create_revision as i64,
                kv.mod_revision as i64,
                ts(kv.created_ms),
                ts(kv.updated_ms),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Reads a key from this member's applied state, without asking the leader (may be
/// behind; etcd's serializable read).
#[pg_extern]
fn pgraft_kv_get_serializable(key: &str) -> Option<String> {
    match bridge::raft(Request::Read(
        Read::Get { key: key.to_string(), revision: None },
        Consistency::Serializable,
    )) {
        Response::Kvs(kvs) => {
            kvs.into_iter().next().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        }
        other => invalid(format!("unexpected answer {other:?}")),
    }
}

/// Compare-and-swap: if the key's value is `expected` (NULL: the key must not exist), set
/// it to `new_value` (NULL: delete it). Returns whether the comparison held.
#[pg_extern]
fn pgraft_kv_cas(key: &str, expected: Option<&str>, new_value: Option<&str>) -> bool {
    use pgraft_core::kv::{Compare, KvResult, TxnAction};
    use pgraft_core::state_machine::Outcome;
    if key.is_empty() {
        invalid("the key must not be empty");
    }
    let op = KvOp::CompareAndSwap {
        key: key.to_string(),
        compare: Compare::Value(expected.map(|v| v.as_bytes().to_vec())),
        action: new_value.map_or(TxnAction::Delete, |v| TxnAction::Put(v.as_bytes().to_vec())),
        time_ms: now_ms(),
    };
    match bridge::raft(Request::Propose(Body::Kv(op))) {
        Response::Applied { outcome: Outcome::Kv(KvResult::CompareAndSwap { succeeded, .. }), .. } => {
            succeeded
        }
        other => invalid(format!("unexpected answer {other:?}")),
    }
}

/// KV store statistics.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_kv_get_stats() -> TableIterator<
    'static,
    (
        name!(num_entries, i64),
        name!(active_entries, i64),
        name!(deleted_entries, i64),
        name!(total_operations, i64),
        name!(puts, i64),
        name!(gets, i64),
        name!(deletes, i64),
        name!(revision, i64),
        name!(compact_revision, i64),
        name!(size_bytes, i64),
        name!(last_applied_index, i64),
    ),
> {
    let f = match bridge::raft(Request::Read(Read::Stats, Consistency::Serializable)) {
        Response::KvFigures(f) => f,
        other => invalid(format!("unexpected answer {other:?}")),
    };
    let gets = crate::shmem::gets();
    let s = f.stats;
    let total = s.puts + s.deletes + s.cas_succeeded + s.cas_failed + gets;
    TableIterator::once((
        f.history as i64,
        f.keys as i64,
        f.tombstones as i64,
        total as i64,
        s.puts as i64,
        gets as i64,
        s.deletes as i64,
        f.revision as i64,
        f.compact_revision as i64,
        f.size_bytes as i64,
        crate::shmem::read().applied as i64,
    ))
}

/// Compacts old KV revisions (every live key stays) and the log behind a fresh snapshot.
#[pg_extern]
fn pgraft_kv_compact() -> bool {
    let revision = match bridge::raft(Request::Read(Read::Stats, Consistency::Linearizable)) {
        Response::KvFigures(f) => f.revision,
        other => invalid(format!("unexpected answer {other:?}")),
    };
    if revision > 0 {
        // Refused only if already compacted to this revision: nothing to do then.
        bridge::raft(Request::Propose(Body::Kv(KvOp::Compact { revision })));
    }
    match bridge::call(crate::protocol::IpcRequest::CompactLog) {
        crate::protocol::IpcResponse::Compacted(_) => true,
        other => bridge::unexpected(other),
    }
}

/// Removes every key on every member (through the log).
#[pg_extern]
fn pgraft_kv_reset() -> bool {
    matches!(bridge::raft(Request::Propose(Body::Kv(KvOp::Reset))), Response::Applied { .. })
}
