#!/usr/bin/env bash
# The guided tour (`make demo`): a local three-member cluster, each step shown with its
# SQL and real output. It leaves the cluster running and says how to connect and stop.
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

say "pgraftctl local up --nodes 3 --dir $dir"
echo "initdb and start three PostgreSQL servers on 127.0.0.1, then the reference bootstrap:"
echo "CREATE EXTENSION pgraft; SELECT pgraft_init(); on every node, pgraft_add_node(2|3, ...) on node 1."
"$ctl" local up --nodes 3 --dir "$dir" --pg-config "$pg_config" | tee "$dir/nodes.jsonl"

conn() { python3 -c 'import json,sys; print(next(json.loads(l)["conninfo"] for l in open(sys.argv[2]) if json.loads(l)["node_id"]==int(sys.argv[1])))' "$1" "$dir/nodes.jsonl"; }
sql() {
  local n="$1"; shift
  printf '\nnode %s=# %s\n' "$n" "$*"
  psql "$(conn "$n")" -X -v ON_ERROR_STOP=1 -P pager=off -c "$*"
}
sql_may_fail() {
  local n="$1"; shift
  printf '\nnode %s=# %s\n' "$n" "$*"
  psql "$(conn "$n")" -X -P pager=off -c "$*" 2>&1 || true
}
value() { psql "$(conn "$1")" -X -At -c "$2" 2>/dev/null || true; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    if [ $SECONDS -ge $end ]; then echo "gave up waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

say "Three members, one leader"
sql 1 "SELECT node_id, address, port, is_leader, state, term, commit_index, last_log_index FROM pgraft_get_cluster_status()"

say "Write on a follower, read on another member: writes are forwarded, reads are linearizable"
sql 2 "SELECT pgraft_kv_put('greeting', 'hello from node 2')"
sql 3 "SELECT pgraft_kv_get('greeting')"
sql 3 "SELECT pgraft_kv_put('configs/maintenance', jsonb_build_object('window', '02:00 UTC', 'duration', '30m'))"
sql 1 "SELECT pgraft_kv_get('configs/maintenance')"

say "Hand leadership to node 2"
sql 1 "SELECT pgraft_transfer_leadership(2)"
sql 3 "SELECT pgraft_get_leader()"

say "kill -9 the leader's postmaster and watch a new leader take over"
echo "\$ pgraftctl local kill 2"; "$ctl" local kill 2 --dir "$dir"
new_leader() { local a b; a=$(value 1 "SELECT pgraft_get_leader()"); b=$(value 3 "SELECT pgraft_get_leader()"); [ -n "$a" ] && [ "$a" != 0 ] && [ "$a" != 2 ] && [ "$a" = "$b" ]; }
wait_for 15 "a new leader" new_leader
sql 1 "SELECT node_id, is_leader, state, term FROM pgraft_get_cluster_status()"
sql 3 "SELECT pgraft_kv_put('greeting', 'written after the failover')"

say "Start node 2 again: it rejoins as a follower and catches up"
echo "\$ pgraftctl local start 2"; "$ctl" local start 2 --dir "$dir"
caught_up() { [ "$(value 2 "SELECT pgraft_kv_get('greeting')")" = "written after the failover" ]; }
wait_for 20 "node 2 to catch up" caught_up
sql 2 "SELECT pgraft_is_leader(), pgraft_get_leader(), pgraft_kv_get('greeting')"

say "Cut node $( [ "$(value 1 "SELECT pgraft_get_leader()")" = 3 ] && echo 1 || echo 3 ) off: it cannot commit, the majority goes on"
cut=$( [ "$(value 1 "SELECT pgraft_get_leader()")" = 3 ] && echo 1 || echo 3 )
echo "\$ pgraftctl local partition $cut"; "$ctl" local partition "$cut" --dir "$dir"
sql_may_fail "$cut" "SET statement_timeout = '3s'; SELECT pgraft_kv_put('greeting', 'from the minority')"
echo "\$ pgraftctl local heal"; "$ctl" local heal --dir "$dir"

say "pgraftctl local status --dir $dir"
"$ctl" local status --dir "$dir"

say "The cluster is running"
for n in 1 2 3; do echo "  node $n: psql \"$(conn "$n")\""; done
echo "  stop it:  $ctl local down --dir $dir"
