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
