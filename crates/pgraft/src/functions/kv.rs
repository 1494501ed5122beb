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
fn pgraft_kv_put_text(key: Option<&str>, value: Option<&str>) -> bool {
    let key = bridge::required("pgraft_kv_put", "key", key);
    put(key, bridge::required("pgraft_kv_put", "value", value).as_bytes().to_vec())
}

/// Stores a JSON value (kept as its text) under a key.
#[pg_extern(name = "pgraft_kv_put")]
fn pgraft_kv_put_jsonb(key: Option<&str>, value: Option<pgrx::JsonB>) -> bool {
    let key = bridge::required("pgraft_kv_put", "key", key);
    let value = bridge::required("pgraft_kv_put", "value", value);
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
fn pgraft_kv_delete(key: Option<&str>) -> bool {
    let key = bridge::required("pgraft_kv_delete", "key", key);
    if key.is_empty() {
        invalid("the key must not be empty");
    }
    let op = KvOp::Delete { key: key.to_string(), time_ms: now_ms() };
    matches!(bridge::raft(Request::Propose(Body::Kv(op))), Response::Applied { .. })
}

/// Deletes every key that starts with `prefix`, atomically in one revision (etcd's
/// `del --prefix`); returns how many keys went away. The prefix must not be empty:
/// `pgraft_kv_reset()` clears everything.
#[pg_extern]
fn pgraft_kv_delete_prefix(prefix: Option<&str>) -> i64 {
    use pgraft_core::kv::KvResult;
    use pgraft_core::state_machine::Outcome;
    let prefix = bridge::required("pgraft_kv_delete_prefix", "prefix", prefix);
    if prefix.is_empty() {
        invalid("the prefix must not be empty; pgraft_kv_reset() clears the whole store");
    }
    let op = KvOp::DeletePrefix { prefix: prefix.to_string(), time_ms: now_ms() };
    match bridge::raft(Request::Propose(Body::Kv(op))) {
        Response::Applied { outcome: Outcome::Kv(KvResult::Deleted { deleted, .. }), .. } => deleted as i64,
        other => invalid(format!("unexpected answer {other:?}")),
    }
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
fn pgraft_kv_cas(key: Option<&str>, expected: Option<&str>, new_value: Option<&str>) -> bool {
    use pgraft_core::kv::{Compare, KvResult, TxnAction};
    use pgraft_core::state_machine::Outcome;
    let key = bridge::required("pgraft_kv_cas", "key", key);
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
        f.applied_index as i64,
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

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn put_get_exists_delete() {
        init_and_lead();
        assert!(yes("SELECT pgraft_kv_put('t1/foo', 'bar')"));
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t1/foo')"), "bar");
        assert_eq!(one::<String>("SELECT pgraft_kv_get_serializable('t1/foo')"), "bar");
        assert!(yes("SELECT pgraft_kv_exists('t1/foo')"));
        assert!(yes("SELECT pgraft_kv_put('t1/foo', 'baz')"), "overwrite");
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t1/foo')"), "baz");
        assert!(yes("SELECT pgraft_kv_delete('t1/foo')"));
        assert_eq!(maybe::<String>("SELECT pgraft_kv_get('t1/foo')"), None);
        assert!(!yes("SELECT pgraft_kv_exists('t1/foo')"));
        assert!(yes("SELECT pgraft_kv_delete('t1/foo')"), "deleting a missing key is fine, as in etcd");
        assert_eq!(maybe::<String>("SELECT pgraft_kv_get('t1/never')"), None);
        // JSON values are kept as their text and read back as JSON.
        assert!(yes("SELECT pgraft_kv_put('t1/j', jsonb_build_object('a', 1, 'b', array[true, false]))"));
        assert!(yes("SELECT pgraft_kv_get('t1/j')::jsonb = '{\"a\": 1, \"b\": [true, false]}'::jsonb"));
        // Text is any text: empty values, quotes, non-ASCII.
        assert!(yes("SELECT pgraft_kv_put('t1/e', '')"));
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t1/e')"), "");
        assert!(yes("SELECT pgraft_kv_put('t1/ключ', 'it''s ✓')"));
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t1/ключ')"), "it's ✓");
    }

    #[pg_test]
    fn bad_keys_are_refused_and_nothing_is_written() {
        init_and_lead();
        let rev = one::<i64>("SELECT revision FROM pgraft_kv_get_stats()");
        assert_error("SELECT pgraft_kv_put('', 'x')", "22023", "the key must not be empty");
        assert_error("SELECT pgraft_kv_put('', '{}'::jsonb)", "22023", "the key must not be empty");
        assert_error("SELECT pgraft_kv_delete('')", "22023", "the key must not be empty");
        assert_error("SELECT pgraft_kv_cas('', NULL, 'x')", "22023", "the key must not be empty");
        for (sql, arg) in [
            ("SELECT pgraft_kv_put(NULL, 'x')", "pgraft_kv_put: key"),
            ("SELECT pgraft_kv_put('k', NULL::text)", "pgraft_kv_put: value"),
            ("SELECT pgraft_kv_put('k', NULL::jsonb)", "pgraft_kv_put: value"),
            ("SELECT pgraft_kv_delete(NULL)", "pgraft_kv_delete: key"),
            ("SELECT pgraft_kv_delete_prefix(NULL)", "pgraft_kv_delete_prefix: prefix"),
            ("SELECT pgraft_kv_cas(NULL, NULL, 'x')", "pgraft_kv_cas: key"),
        ] {
            assert_error(sql, "22004", &format!("{arg} must not be NULL"));
        }
        assert_eq!(one::<i64>("SELECT revision FROM pgraft_kv_get_stats()"), rev, "no write happened");
    }

    #[pg_test]
    fn large_keys_and_values_have_no_fixed_limit() {
        init_and_lead();
        // 1 MiB and 20 MiB values (larger than a peer frame) and a 100 KiB key.
        for size in [1 << 20, 20 << 20] {
            assert!(yes(&format!("SELECT pgraft_kv_put('t2/big', repeat('v', {size}))")));
            assert_eq!(one::<i32>("SELECT length(pgraft_kv_get('t2/big'))"), size);
            assert!(yes(&format!("SELECT pgraft_kv_get('t2/big') = repeat('v', {size})")));
        }
        let key = "SELECT 't2/' || repeat('k', 100000)";
        assert!(yes(&format!("SELECT pgraft_kv_put(({key}), 'x')")));
        assert_eq!(one::<String>(&format!("SELECT pgraft_kv_get(({key}))")), "x");
        assert!(yes(&format!("SELECT pgraft_replicate_entry(repeat('e', {}))", 2 << 20)));
    }

    #[pg_test]
    fn prefix_delete_is_one_revision() {
        init_and_lead();
        for k in ["t10/a", "t10/b", "t10/c/d", "t10x"] {
            assert!(yes(&format!("SELECT pgraft_kv_put('{k}', 'v')")));
        }
        let rev = one::<i64>("SELECT revision FROM pgraft_kv_get_stats()");
        assert_eq!(one::<i64>("SELECT pgraft_kv_delete_prefix('t10/')"), 3);
        assert_eq!(one::<i64>("SELECT revision FROM pgraft_kv_get_stats()"), rev + 1, "one revision");
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft_kv_range('t10')"), 1, "t10x stays");
        assert_eq!(one::<i64>("SELECT pgraft_kv_delete_prefix('t10/')"), 0, "nothing left");
        assert_error("SELECT pgraft_kv_delete_prefix('')", "22023", "the prefix must not be empty");
    }

    #[pg_test]
    fn compare_and_swap() {
        init_and_lead();
        Spi::run("SELECT pgraft_kv_delete('t3/lock')").expect("clean");
        assert!(yes("SELECT pgraft_kv_cas('t3/lock', NULL, 'a')"), "create when absent");
        assert!(!yes("SELECT pgraft_kv_cas('t3/lock', NULL, 'b')"), "it exists now");
        assert!(!yes("SELECT pgraft_kv_cas('t3/lock', 'x', 'b')"), "wrong expected value");
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t3/lock')"), "a");
        assert!(yes("SELECT pgraft_kv_cas('t3/lock', 'a', 'b')"));
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t3/lock')"), "b");
        assert!(yes("SELECT pgraft_kv_cas('t3/lock', 'b', NULL)"), "delete when it holds b");
        assert!(!yes("SELECT pgraft_kv_exists('t3/lock')"));
    }

    #[pg_test]
    fn ranges_revisions_and_listing() {
        init_and_lead();
        for (k, v) in [("t4/a", "1"), ("t4/b", "2"), ("t4x", "3"), ("t4/a", "4")] {
            assert!(yes(&format!("SELECT pgraft_kv_put('{k}', '{v}')")));
        }
        assert_eq!(
            one::<String>(
                "SELECT string_agg(key || '=' || value, ',' ORDER BY key) FROM pgraft_kv_range('t4/')"
            ),
            "t4/a=4,t4/b=2"
        );
        assert_eq!(
            one::<String>(
                "SELECT string_agg(key || '=' || value, ',' ORDER BY key) FROM pgraft_kv_range('t4/', true)"
            ),
            "t4/a=4,t4/b=2",
            "a serializable range on the leader sees the same"
        );
        let (version, created, modified) = (
            one::<i64>("SELECT version FROM pgraft_kv_range('t4/a')"),
            one::<i64>("SELECT create_revision FROM pgraft_kv_range('t4/a')"),
            one::<i64>("SELECT mod_revision FROM pgraft_kv_range('t4/a')"),
        );
        assert_eq!(version, 2, "put twice");
        assert!(created < modified);
        assert!(yes("SELECT created_at <= updated_at AND updated_at <= now() + interval '1 minute' FROM pgraft_kv_range('t4/a')"));
        assert_eq!(
            one::<i64>("SELECT max(mod_revision) FROM pgraft_kv_range('')"),
            one::<i64>("SELECT revision FROM pgraft_kv_get_stats()")
        );
        // The list of every key is a JSON array holding them.
        assert!(yes("SELECT pgraft_kv_list_keys()::jsonb @> '[\"t4/a\", \"t4/b\", \"t4x\"]'::jsonb"));
        assert!(yes("SELECT jsonb_typeof(pgraft_kv_list_keys()::jsonb) = 'array'"));
        // The table view shows the same rows.
        assert_eq!(one::<String>("SELECT value FROM pgraft.kv WHERE key = 't4/a'"), "4");
        assert_eq!(one::<i64>("SELECT version FROM pgraft.kv_status WHERE key = 't4/a'"), 2);
    }

    #[pg_test]
    fn statistics_count_what_happened() {
        init_and_lead();
        let stat = |c: &str| one::<i64>(&format!("SELECT {c} FROM pgraft_kv_get_stats()"));
        let (puts, gets, deletes, rev) = (stat("puts"), stat("gets"), stat("deletes"), stat("revision"));
        assert!(yes("SELECT pgraft_kv_put('t5/a', '1') AND pgraft_kv_put('t5/b', '2')"));
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t5/a')"), "1");
        assert!(yes("SELECT pgraft_kv_delete('t5/a')"));
        assert_eq!(stat("puts"), puts + 2, "puts");
        assert!(stat("gets") > gets, "gets");
        assert_eq!(stat("deletes"), deletes + 1, "deletes");
        assert_eq!(stat("revision"), rev + 3, "revision");
        assert!(stat("active_entries") >= 1 && stat("size_bytes") > 0);
        assert_eq!(stat("last_applied_index"), one::<i64>("SELECT last_applied FROM pgraft_log_get_stats()"));
        assert!(stat("total_operations") >= stat("puts") + stat("deletes"));
    }

    #[pg_test]
    fn compaction_keeps_every_live_key() {
        init_and_lead();
        for i in 0..20 {
            assert!(yes(&format!("SELECT pgraft_kv_put('t6/k', 'v{i}')")));
        }
        let hash = one::<i64>("SELECT hash FROM pgraft_kv_hash()");
        assert!(yes("SELECT pgraft_kv_compact()"));
        assert!(yes("SELECT pgraft_kv_compact()"), "compacting again is harmless");
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t6/k')"), "v19");
        let stats = "SELECT compact_revision = revision FROM pgraft_kv_get_stats()";
        assert!(yes(stats), "compacted up to the current revision");
        assert_eq!(one::<i64>("SELECT hash FROM pgraft_kv_hash()"), hash, "live state unchanged");
        // The log was compacted behind a snapshot: it starts after the first entries.
        assert!(one::<i64>("SELECT first_index FROM pgraft_log_get_stats()") > 1);
        assert_eq!(maybe::<String>("SELECT pgraft_log_get_entry(1)"), None, "compacted away");
    }
}
