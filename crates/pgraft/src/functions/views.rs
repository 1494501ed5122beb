//! The functions behind the tables and views of `pgraft-sql-reference.txt`.

use pgraft_core::{Consistency, Read, Request, Response};
use pgrx::prelude::*;

use super::kv::ts;
use crate::bridge::{self, invalid};
use crate::protocol::{IpcRequest, IpcResponse};

fn history(limit: u32) -> Vec<pgraft_core::state_machine::AppliedRecord> {
    match bridge::call(IpcRequest::History { limit }) {
        IpcResponse::History(h) => h,
        other => bridge::unexpected(other),
    }
}

/// The entries this member applied most recently (up to 10,000), newest first.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_applied_entries() -> TableIterator<
    'static,
    (
        name!(raft_index, i64),
        name!(raft_term, i64),
        name!(entry_type, i32),
        name!(applied_at, Option<pgrx::datetime::TimestampWithTimeZone>),
    ),
> {
    let rows: Vec<_> = history(10_000)
        .into_iter()
        .map(|r| (r.index as i64, r.term as i64, r.entry_type, ts(r.applied_ms)))
        .collect();
    TableIterator::new(rows)
}

/// What each recently applied entry did.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_index_mapping() -> TableIterator<
    'static,
    (
        name!(raft_index, i64),
        name!(operation_type, String),
        name!(target_table, Option<String>),
        name!(operation_data, Option<pgrx::JsonB>),
        name!(applied_at, Option<pgrx::datetime::TimestampWithTimeZone>),
    ),
> {
    let rows: Vec<_> = history(10_000)
        .into_iter()
        .map(|r| {
            let data = serde_json::from_str(&r.data).ok().map(pgrx::JsonB);
            (r.index as i64, r.operation, r.target, data, ts(r.applied_ms))
        })
        .collect();
    TableIterator::new(rows)
}

/// The KV store's hash and the revision it was taken at (etcd's hashkv), linearizable.
#[pg_extern]
fn pgraft_kv_hash() -> TableIterator<'static, (name!(hash, i64), name!(hash_revision, i64))> {
    match bridge::raft(Request::Read(Read::Hash { revision: None }, Consistency::Linearizable)) {
        Response::Hash { hash, revision } => TableIterator::once((hash as i64, revision as i64)),
        other => invalid(format!("unexpected answer {other:?}")),
    }
}

/// The facts the worker keeps in shared memory.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_shared_state() -> TableIterator<
    'static,
    (
        name!(worker_state, String),
        name!(worker_pid, i32),
        name!(is_leader, bool),
        name!(term, i64),
        name!(leader_id, i64),
        name!(commit_index, i64),
        name!(last_applied, i64),
        name!(last_index, i64),
        name!(voters, i32),
        name!(quorum_met, bool),
    ),
> {
    let s = crate::shmem::read();
    TableIterator::once((
        s.state.as_str().to_string(),
        s.pid,
        s.is_leader,
        s.term as i64,
        s.leader_id as i64,
        s.commit as i64,
        s.applied as i64,
        s.last_index as i64,
        s.voters as i32,
        s.quorum,
    ))
}

pgrx::extension_sql!(
    r#"
CREATE SCHEMA IF NOT EXISTS pgraft;

-- Core tables (pgraft-sql-reference.txt): views over the worker's state, so they answer
-- on every member, standbys included.
CREATE VIEW pgraft.kv AS
  SELECT key, value, version, created_at, updated_at, create_revision, mod_revision
    FROM pgraft_kv_range('', false);
CREATE VIEW pgraft.applied_entries AS
  SELECT raft_index, raft_term, entry_type, applied_at FROM pgraft_applied_entries();
CREATE VIEW pgraft.ha_status AS
  SELECT node_id, raft_state, recorded_primary, server_role, timeline,
         received_lsn::pg_lsn AS received_lsn, replayed_lsn::pg_lsn AS replayed_lsn, lag_bytes,
         sync_state, fenced, failover_enabled, last_promotion_term, last_promotion_at,
         last_promotion_reason, note
    FROM pgraft_ha_status();
CREATE VIEW pgraft.log_index_mapping AS
  SELECT raft_index, operation_type, target_table, operation_data, applied_at FROM pgraft_log_index_mapping();

-- etcd-compatible views, etcdctl's columns.
CREATE VIEW pgraft.member_list AS
  SELECT n.node_id::bigint AS id,
         CASE WHEN n.state = 'Unreachable' THEN 'unreachable' ELSE 'started' END AS status,
         'node' || n.node_id AS name,
         'tcp://' || n.address || ':' || n.port AS peer_urls,
         n.client_url AS client_urls,
         n.is_leader,
         n.is_learner
    FROM pgraft_get_nodes() n;
CREATE VIEW pgraft.member_details AS
  SELECT id AS "ID", name AS "Name", peer_urls AS "PeerURLs", client_urls AS "ClientURLs",
         is_leader AS "IsLeader", is_learner AS "IsLearner"
    FROM pgraft.member_list;
CREATE VIEW pgraft.endpoint_status AS
  SELECT current_setting('pgraft.address') || ':' || current_setting('pgraft.port') AS endpoint,
         current_setting('pgraft.node_id')::bigint AS id,
         pgraft_get_version() AS version,
         l.log_size AS db_size,
         s.is_leader AS "isLeader",
         COALESCE((SELECT n.is_learner FROM pgraft_get_nodes() n
                    WHERE n.node_id = current_setting('pgraft.node_id')::int), false) AS "isLearner",
         s.term AS "raftTerm",
         l.last_index AS "raftIndex",
         l.last_applied AS "raftAppliedIndex",
         CASE WHEN s.quorum_met THEN NULL ELSE 'no quorum' END AS errors
    FROM pgraft_shared_state() s, pgraft_log_get_stats() l;
CREATE VIEW pgraft.endpoint_health AS
  SELECT current_setting('pgraft.address') || ':' || current_setting('pgraft.port') AS endpoint,
         (SELECT bool_and(status = 'OK') FROM pgraft_health_check() WHERE metric IN ('worker_state', 'leader', 'quorum')) AS health,
         (clock_timestamp() - t0)::text AS took,
         (SELECT string_agg(metric || ': ' || value, '; ') FROM pgraft_health_check()
           WHERE severity IN ('warning', 'critical')) AS error
    FROM (SELECT clock_timestamp() AS t0) x;
CREATE VIEW pgraft.cluster_health AS
  SELECT n.node_id::bigint AS member, n.is_leader AS "isLeader", n.is_learner AS "isLearner",
         CASE WHEN n.state = 'Unreachable' THEN 'unhealthy' ELSE 'healthy' END AS health
    FROM pgraft_get_nodes() n;
CREATE VIEW pgraft.cluster_info AS
  SELECT current_setting('pgraft.cluster_id') AS "clusterID",
         (SELECT count(*) FROM pgraft_get_nodes())::int AS "memberCount",
         s.leader_id AS leader, s.term AS "raftTerm", s.last_index AS "raftIndex", s.last_applied AS "raftAppliedIndex"
    FROM pgraft_shared_state() s;
CREATE VIEW pgraft.kv_status AS
  SELECT key, value, version, create_revision, mod_revision FROM pgraft_kv_range('', false);
CREATE VIEW pgraft.endpoint_hashkv AS
  SELECT current_setting('pgraft.address') || ':' || current_setting('pgraft.port') AS endpoint, h.hash, h.hash_revision
    FROM pgraft_kv_hash() h;
-- The calls of pgraft_kv_watch() running on this server: watch_count is how many times each
-- has asked this member for changes, watch_pending how many revisions the store has moved
-- past the one it watches after (changes under other prefixes included).
CREATE VIEW pgraft.watch_status AS
  SELECT w.watcher_id, w.is_active, w.polls::int AS watch_count,
         GREATEST(s.revision - w.since_revision, 0)::int AS watch_pending,
         w.prefix, w.since_revision, w.started_at
    FROM pgraft_watches() w, pgraft_kv_get_stats() s;
-- What is enforced: clients are PostgreSQL's roles (only those granted the functions that
-- change the cluster may; revision counts them), members prove who they are by TLS
-- certificates naming their node ids or by the cluster secret. enabled: members are
-- authenticated; peer_authentication says how ('none' when not).
CREATE VIEW pgraft.auth_status AS
  SELECT a.method <> 'none' AS enabled,
         (SELECT count(*) FROM pg_roles r
           WHERE has_function_privilege(r.oid, 'pgraft_add_node(integer, text, integer)', 'EXECUTE'))::bigint AS revision,
         a.method AS peer_authentication
    FROM (SELECT pgraft_peer_authentication() AS method) a;
CREATE VIEW pgraft.alarm_list AS
  SELECT a.alarm, current_setting('pgraft.node_id')::bigint AS "memberID"
    FROM pgraft_shared_state() s,
         LATERAL (VALUES ('NOQUORUM', NOT s.quorum_met),
                         ('NOLEADER', s.leader_id = 0),
                         ('WORKER_' || upper(s.worker_state), s.worker_state <> 'running')) AS a(alarm, active)
   WHERE a.active;
CREATE VIEW pgraft.snapshot_status AS
  SELECT h.hash, h.hash_revision AS revision, k.active_entries AS total_key, k.size_bytes AS total_size,
         pgraft_get_version() AS version
    FROM pgraft_kv_hash() h, pgraft_kv_get_stats() k;

-- Internal views.
CREATE VIEW pgraft_cluster_state AS
  SELECT current_setting('pgraft.node_id')::int AS node_id, current_setting('pgraft.cluster_id') AS cluster_id, s.*
    FROM pgraft_shared_state() s;
CREATE VIEW pgraft_worker_status AS
  SELECT worker_state, worker_state = 'running' AS is_running, worker_pid FROM pgraft_shared_state();
CREATE VIEW pgraft_cluster_overview AS
  SELECT c.node_id, c.worker_state, c.is_leader, c.leader_id, c.term,
         (SELECT state FROM pgraft_get_nodes() WHERE node_id = c.node_id) AS state,
         (SELECT count(*) FROM pgraft_get_nodes())::int AS num_nodes,
         c.commit_index, c.last_applied, c.quorum_met
    FROM pgraft_cluster_state c;
CREATE VIEW pgraft_nodes AS
  SELECT n.*, s.term AS cluster_term, s.leader_id AS cluster_leader_id
    FROM pgraft_get_nodes() n, pgraft_shared_state() s;
CREATE VIEW pgraft_log_status AS
  SELECT first_index, last_index, commit_index, last_applied, total_entries, log_size FROM pgraft_log_get_stats();
CREATE VIEW pgraft_kv_status AS
  SELECT num_entries, active_entries, deleted_entries, total_operations, puts, gets, deletes,
         last_applied_index,
         CASE WHEN (SELECT worker_state FROM pgraft_shared_state()) = 'running' THEN 'active' ELSE 'unavailable' END AS status
    FROM pgraft_kv_get_stats();

-- Functions that change the cluster are not for everyone: grant them to the roles that
-- administer it (reference/pgraft-overview.txt, "Access Control"). Reads stay public.
REVOKE EXECUTE ON FUNCTION pgraft_init() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_add_node(integer, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_remove_node(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_transfer_leadership(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_replicate_entry(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_log_append(bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_put(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_put(text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_delete(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_delete_prefix(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_cas(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_compact() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_kv_reset() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_set_config(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_save_config() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_set_debug(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgraft_test() FROM PUBLIC;
"#,
    name = "views_and_privileges",
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn every_view_answers_from_live_state() {
        init_and_lead();
        assert!(yes("SELECT pgraft_kv_put('t8/k', 'v')"));
        let term = one::<i64>("SELECT pgraft_get_term()");
        assert_eq!(
            one::<String>("SELECT format('%s %s %s %s %s', id, status, name, peer_urls, is_leader) FROM pgraft.member_list"),
            "1 started node1 tcp://127.0.0.1:45901 t"
        );
        assert_eq!(one::<String>("SELECT \"PeerURLs\" FROM pgraft.member_details"), "tcp://127.0.0.1:45901");
        assert!(yes(&format!(
            "SELECT endpoint = '127.0.0.1:45901' AND id = 1 AND version = '1.0.0' AND \"isLeader\" AND NOT \"isLearner\" \
                    AND \"raftTerm\" = {term} AND \"raftAppliedIndex\" <= \"raftIndex\" AND errors IS NULL \
               FROM pgraft.endpoint_status"
        )));
        assert!(yes("SELECT health AND error IS NULL FROM pgraft.endpoint_health"));
        assert_eq!(one::<String>("SELECT health FROM pgraft.cluster_health WHERE member = 1"), "healthy");
        assert!(yes(&format!(
            "SELECT \"clusterID\" = 'pgrx-tests' AND \"memberCount\" = 1 AND leader = 1 AND \"raftTerm\" = {term} \
               FROM pgraft.cluster_info"
        )));
        assert_eq!(one::<String>("SELECT value FROM pgraft.kv_status WHERE key = 't8/k'"), "v");
        assert_eq!(
            one::<i64>("SELECT hash FROM pgraft.endpoint_hashkv"),
            one::<i64>("SELECT hash FROM pgraft_kv_hash()")
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft.watch_status"), 0, "no watch runs now");
        assert!(
            yes("SELECT NOT enabled AND peer_authentication = 'none' AND revision >= 1 FROM pgraft.auth_status"),
            "superusers may change it; no peer authentication is configured here"
        );
        assert!(yes(
            "SELECT value = 'none' AND status = 'OK' FROM pgraft_health_check() WHERE metric = 'peer_authentication'"
        ));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgraft.alarm_list"),
            0,
            "a healthy member raises no alarm"
        );
        assert!(yes(
            "SELECT total_key = (SELECT active_entries FROM pgraft_kv_get_stats()) AND version = '1.0.0' \
               FROM pgraft.snapshot_status"
        ));
        assert!(yes("SELECT raft_index > 0 FROM pgraft.applied_entries ORDER BY raft_index DESC LIMIT 1"));
        // The internal views.
        assert!(yes(
            "SELECT node_id = 1 AND cluster_id = 'pgrx-tests' AND worker_state = 'running' AND is_leader AND quorum_met \
               FROM pgraft_cluster_state"
        ));
        assert!(yes("SELECT is_running AND worker_pid > 0 FROM pgraft_worker_status"));
        assert!(yes("SELECT worker_pid <> pg_backend_pid() FROM pgraft_worker_status"));
        assert!(yes("SELECT state = 'Leader' AND num_nodes = 1 FROM pgraft_cluster_overview"));
        assert!(yes(&format!("SELECT cluster_term = {term} AND cluster_leader_id = 1 FROM pgraft_nodes")));
        assert!(yes("SELECT last_applied <= commit_index FROM pgraft_log_status"));
        assert_eq!(one::<String>("SELECT status FROM pgraft_kv_status"), "active");
    }

    #[pg_test]
    fn reset_clears_the_store_through_the_log() {
        init_and_lead();
        assert!(yes("SELECT pgraft_kv_put('t9/a', '1') AND pgraft_kv_put('t9/b', '2')"));
        let rev = one::<i64>("SELECT revision FROM pgraft_kv_get_stats()");
        assert!(yes("SELECT pgraft_kv_reset()"));
        assert_eq!(one::<String>("SELECT pgraft_kv_list_keys()"), "[]");
        assert_eq!(one::<i64>("SELECT count(*) FROM pgraft.kv"), 0);
        assert_eq!(
            one::<String>(
                "SELECT operation_type FROM pgraft.log_index_mapping ORDER BY raft_index DESC LIMIT 1"
            ),
            "kv_reset"
        );
        assert!(one::<i64>("SELECT revision FROM pgraft_kv_get_stats()") >= rev, "revisions never go back");
        assert!(yes("SELECT pgraft_kv_put('t9/a', 'again')"), "the store works after a reset");
        assert_eq!(one::<String>("SELECT pgraft_kv_get('t9/a')"), "again");
    }
}
