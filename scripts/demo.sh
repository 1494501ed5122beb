#!/usr/bin/env bash
# The guided tour (`make demo`): a local three-member HA cluster (a primary and two
# synchronous standbys, the Raft members on all three), each step shown with its SQL and real
# output: the KV store, an application writing through the multi-host conninfo, kill -9 of the
# primary and the failover, and the old primary rejoining as a standby. It leaves the cluster
# running and says how to connect and stop.
#
# Environment: DEMO_DIR (default /tmp/pgraft-demo), PG_CONFIG (default Debian's 15).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgraft/target}"
dir="${DEMO_DIR:-/tmp/pgraft-demo}"
pg_config="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
say() { printf '\n'; bold "── $*"; }

say "Building pgraftctl and installing the extension into $("$pg_config" --version)"
cargo build --quiet -p pgraftctl
# Unlink the old library first: servers still running keep the file they mapped, rather
# than crash on a library rewritten in place under them (SIGBUS).
rm -f "$("$pg_config" --pkglibdir)/pgraft.so"
(cd crates/pgraft && cargo pgrx install --pg-config "$pg_config" >/dev/null)
ctl="$CARGO_TARGET_DIR/debug/pgraftctl"

if [ -f "$dir/cluster.json" ]; then
  say "A previous demo cluster lives in $dir: stopping it"
  "$ctl" local down --dir "$dir" || true
fi
rm -rf "$dir"; mkdir -p "$dir"; chmod 755 "$dir"

say "pgraftctl local up --ha --nodes 3 --dir $dir"
echo "node 1: initdb, the primary; nodes 2 and 3: pg_basebackup clones streaming from it."
echo "Then the reference bootstrap (CREATE EXTENSION pgraft; SELECT pgraft_init(); pgraft_add_node)"
echo "and pgraft.failover_enabled = on: from now on the primary follows the Raft leader."
"$ctl" local up --ha --nodes 3 --dir "$dir" --pg-config "$pg_config" | tee "$dir/nodes.jsonl"

conn() { python3 -c 'import json,sys; print(next(json.loads(l)["conninfo"] for l in open(sys.argv[2]) if json.loads(l).get("node_id")==int(sys.argv[1])))' "$1" "$dir/nodes.jsonl"; }
rw=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["read_write_conninfo"])' "$dir/nodes.jsonl")
sql() {
  local n="$1"; shift
  printf '\nnode %s=# %s\n' "$n" "$*"
  psql "$(conn "$n")" -X -v ON_ERROR_STOP=1 -P pager=off -c "$*"
}
app() {
  printf '\napp (%s)=# %s\n' "read-write conninfo" "$*"
  psql "$rw" -X -v ON_ERROR_STOP=1 -P pager=off -c "$*"
}
value() { psql "$(conn "$1")" -X -At -c "$2" 2>/dev/null || true; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    if [ $SECONDS -ge $end ]; then echo "gave up waiting for $what" >&2; return 1; fi
    sleep 0.1
  done
}
ha_status="SELECT node_id, raft_state, recorded_primary AS primary, server_role, timeline, replayed_lsn, lag_bytes, sync_state, fenced FROM pgraft.ha_status"

say "Three members, one leader; its server is the primary, the others stream from it synchronously"
sql 1 "SELECT node_id, is_leader, state, term, commit_index FROM pgraft_get_cluster_status()"
sql 1 "$ha_status"

say "The replicated key-value store: write on a standby's member, read on another"
sql 2 "SELECT pgraft_kv_put('greeting', 'hello from node 2')"
sql 3 "SELECT pgraft_kv_get('greeting')"

say "An application writes through the cluster's multi-host conninfo (target_session_attrs=read-write)"
echo "$rw"
app "CREATE TABLE orders (id bigserial PRIMARY KEY, item text, at timestamptz DEFAULT now())"
app "INSERT INTO orders (item) SELECT 'before the failover #' || i FROM generate_series(1, 1000) i"

say "kill -9 the primary's postmaster"
echo "\$ pgraftctl local kill 1"
start_ns=$(date +%s%N)
"$ctl" local kill 1 --dir "$dir"
writable() { psql "$rw connect_timeout=1" -X -At -c "INSERT INTO orders (item) VALUES ('after the failover') RETURNING inet_server_port()" >/dev/null 2>&1; }
wait_for 30 "a new primary" writable
echo "the application wrote again $(( ($(date +%s%N) - start_ns) / 1000000 )) ms after the kill"
new=$(python3 -c 'import json,sys; ps={json.loads(l)["pg_port"]: json.loads(l)["node_id"] for l in open(sys.argv[1]) if "pg_port" in json.loads(l)}; print(ps[int(sys.argv[2])])' "$dir/nodes.jsonl" "$(psql "$rw" -X -At -c 'SELECT inet_server_port()')")
sql "$new" "SELECT count(*) FILTER (WHERE item LIKE 'before%') AS before_the_failover, count(*) AS all_rows FROM orders"
sql "$new" "$ha_status"
sql "$new" "SELECT node_id, last_promotion_term, last_promotion_reason FROM pgraft.ha_status WHERE recorded_primary"

say "Start node 1 again: its worker fences it, a helper rewinds it, it rejoins as a standby"
echo "\$ pgraftctl local start 1   (it shuts itself down at once: another server is the primary)"
"$ctl" local start 1 --dir "$dir" >/dev/null 2>&1 || true
rejoined() { [ "$(value "$new" "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgraft_node_1' AND state = 'streaming'")" = 1 ] && [ "$(value 1 "SELECT pg_is_in_recovery()")" = t ]; }
wait_for 60 "node 1 to rejoin" rejoined
raft1=$(python3 -c 'import json,sys; print(next(json.loads(l)["raft_data_dir"] for l in open(sys.argv[1]) if json.loads(l).get("node_id")==1))' "$dir/nodes.jsonl")
echo "\$ cat $raft1/rejoin.log | grep 'pgraft rejoin'"; grep 'pgraft rejoin' "$raft1/rejoin.log" || true
sql "$new" "$ha_status"
sql 1 "SELECT pg_is_in_recovery(), count(*) FROM orders"

say "pgraftctl local status --dir $dir"
"$ctl" local status --dir "$dir"

say "The cluster is running"
for n in 1 2 3; do echo "  node $n: psql \"$(conn "$n")\""; done
echo "  the application's: psql \"$rw\""
echo "  stop it:  $ctl local down --dir $dir"
