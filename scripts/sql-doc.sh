#!/usr/bin/env bash
# Regenerates docs/sql.md: every pgraft SQL function and view, each with an example run
# against a real local three-member cluster and its real output.
# Usage: scripts/sql-doc.sh   (needs the extension installed into Debian's PostgreSQL 15)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgraft/target}"
cargo build --quiet -p pgraftctl
ctl="$CARGO_TARGET_DIR/debug/pgraftctl"
dir="$(mktemp -d)"; chmod 755 "$dir"
trap '"$ctl" local down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$ctl" local up --nodes 3 --dir "$dir" --raft-port 17101 > "$dir/nodes.jsonl"
conn() { python3 -c 'import json,sys; print(next(json.loads(l)["conninfo"] for l in open(sys.argv[2]) if json.loads(l)["node_id"]==int(sys.argv[1])))' "$1" "$dir/nodes.jsonl"; }
out=docs/sql.md
{
  echo "# SQL reference, with real output"
  echo
  echo "Every function and view of the pgraft extension, each with an example run against a"
  echo "local three-member cluster (\`pgraftctl local up --nodes 3\`) and the output it gave."
  echo "Regenerate with \`scripts/sql-doc.sh\`. Functions that change the cluster are revoked"
  echo "from PUBLIC; grant them to the roles that administer it. They are not STRICT: a NULL"
  echo "argument is an error naming it (SQLSTATE 22004), never a NULL result that"
  echo "\`IF NOT f(...) THEN RAISE\` would let pass; reading a NULL key gives NULL."
} > "$out"
section() { printf '\n## %s\n' "$1" >> "$out"; }
ex() {  # ex NODE "what it does" SQL
  local n="$1" what="$2" sql="$3"
  { printf '\n%s (on node %s)\n\n```sql\n%s\n```\n```text\n' "$what" "$n" "$sql"
    psql "$(conn "$n")" -X -P pager=off -c "$sql" 2>&1 || true
    printf '```\n'; } >> "$out"
}
section "Cluster management"
ex 1 "Initialise (harmless to repeat)" "SELECT pgraft_init();"
ex 1 "Add a member (leader only); again with the same address is a no-op" "SELECT pgraft_add_node(2, '127.0.0.1', 17102);"
ex 2 "On a follower, membership changes name the leader" "SELECT pgraft_add_node(4, '127.0.0.1', 17104);"
ex 1 "Members: \`replication_lag_bytes\` is the bytes of log a member is missing (known on the leader, NULL elsewhere); \`client_url\` where clients reach its server (NULL for another member that registered none: failover off)" "SELECT * FROM pgraft_get_nodes();"
ex 1 "Cluster status (the union of every document's columns): \`term\`, \`commit_index\`, \`last_log_index\`, \`messages_processed\` and \`elections_triggered\` are each member's own, NULL where this member does not know them" "SELECT * FROM pgraft_get_cluster_status();"
ex 3 "Leadership" "SELECT pgraft_is_leader(), pgraft_get_leader(), pgraft_get_term(), pgraft_quorum_met();"
ex 1 "Whether the leader keeps a majority without a member (the rejoin helper asks before it stops a standby; false on a follower)" "SELECT pgraft_can_spare(2), pgraft_can_spare(3);"
ex 1 "Hand leadership to another voter" "SELECT pgraft_transfer_leadership(2);"
ex 3 "Leader now" "SELECT pgraft_get_leader();"
ex 1 "Worker and version: the state is one of \`stopped\`, \`initializing\`, \`running\`, \`error\`, lowercase, as the reference compares it (\`pgraft_get_worker_state() = 'running'\`)" "SELECT pgraft_get_worker_state(), pgraft_get_version();"
ex 1 "A round trip through the log" "SELECT pgraft_test();"
leader() { psql "$(conn 1)" -XAtc 'SELECT pgraft_get_leader()'; }
ex "$(leader)" "Unknown members are errors (on the leader)" "SELECT pgraft_remove_node(42);"
section "Key/value store"
ex 3 "Put (text) from any member" "SELECT pgraft_kv_put('foo', 'bar');"
ex 1 "Put (jsonb)" "SELECT pgraft_kv_put('configs/maintenance', jsonb_build_object('window', '02:00 UTC', 'duration', '30m'));"
ex 2 "Get (linearizable)" "SELECT pgraft_kv_get('foo'), pgraft_kv_get('configs/maintenance');"
ex 2 "Get from this member's state (serializable)" "SELECT pgraft_kv_get_serializable('foo');"
ex 1 "Exists" "SELECT pgraft_kv_exists('foo'), pgraft_kv_exists('nothing');"
ex 1 "Compare-and-swap" "SELECT pgraft_kv_cas('lock', NULL, 'owner-1') AS acquired, pgraft_kv_cas('lock', NULL, 'owner-2') AS second_try;"
ex 1 "Keys" "SELECT pgraft_kv_list_keys();"
ex 1 "Keys with a prefix and etcd's bookkeeping" "SELECT * FROM pgraft_kv_range('configs/');"
ex 1 "Statistics" "SELECT * FROM pgraft_kv_get_stats();"
ex 1 "Delete" "SELECT pgraft_kv_delete('foo');"
ex 1 "Delete every key under a prefix, in one revision" "SELECT pgraft_kv_put('app/a', '1'), pgraft_kv_put('app/b', '2'), pgraft_kv_delete_prefix('app/');"
ex 1 "Watch (etcd's): every change under a prefix after a revision, in revision order; waits up to the timeout (default 10 s) for the first one. A compacted revision is an error" "SELECT * FROM pgraft_kv_watch('app/', (SELECT revision - 3 FROM pgraft_kv_get_stats()), '1 second');"
ex 1 "The watches running on this server (what pgraft.watch_status shows)" "SELECT * FROM pgraft_watches();"
ex 1 "Compact old revisions and the log (live keys stay)" "SELECT pgraft_kv_compact();"
section "The log"
ex 1 "Replicate an entry" "SELECT pgraft_replicate_entry('{\"action\": \"update\", \"table\": \"users\", \"id\": 123}');"
ex 1 "Append in the current term" "SELECT pgraft_log_append(pgraft_get_term(), 'an entry');"
ex 1 "Statistics: \`log_size\` is the bytes of the entries in the log, \`disk_usage_mb\` the size of its database file" "SELECT * FROM pgraft_log_get_stats();"
ex 1 "Read an entry" "SELECT pgraft_log_get_entry((SELECT last_index FROM pgraft_log_get_stats()));"
ex 1 "Wait until committed / applied here" "SELECT pgraft_log_commit(3), pgraft_log_apply(3);"
ex 3 "Catch up with the leader" "SELECT pgraft_log_sync_with_leader();"
ex "$(leader)" "Replication, on the leader" "SELECT * FROM pgraft_log_get_replication_status();"
section "Configuration, health, debugging"
ex 1 "Change timing on every member" "SELECT pgraft_set_config('heartbeat_interval', '75ms');"
ex 1 "Bad values are refused" "SELECT pgraft_set_config('heartbeat_interval', 'banana');"
ex 1 "Save the cluster-wide settings" "SELECT pgraft_save_config();"
ex 2 "Settings" "SELECT * FROM pgraft_get_config();"
ex 1 "Health" "SELECT * FROM pgraft_health_check();"
ex 1 "How peers prove who they are to this member (tls: certificates naming node ids; cluster secret; none)" "SELECT pgraft_peer_authentication();"
ex 1 "Queues" "SELECT * FROM pgraft_get_queue_status();"
ex 1 "Debug logging" "SELECT pgraft_set_debug(true), pgraft_set_debug(false);"
section "Tables"
ex 2 "pgraft.kv" "SELECT * FROM pgraft.kv;"
ex 2 "pgraft.applied_entries" "SELECT * FROM pgraft.applied_entries LIMIT 5;"
ex 2 "pgraft.log_index_mapping" "SELECT * FROM pgraft.log_index_mapping LIMIT 5;"
section "etcd-compatible views"
for v in member_list endpoint_status endpoint_health cluster_health cluster_info kv_status endpoint_hashkv watch_status member_details auth_status alarm_list snapshot_status; do
  ex 1 "pgraft.$v" "SELECT * FROM pgraft.$v;"
done
section "Internal views"
for v in pgraft_cluster_state pgraft_worker_status pgraft_cluster_overview pgraft_nodes pgraft_log_status pgraft_kv_status; do
  ex 1 "$v" "SELECT * FROM $v;"
done
echo "wrote $out"
