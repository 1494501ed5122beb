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
(cd crates/pgraft && cargo pgrx install --pg-config "$pg_config" >/dev/null)
ctl="$CARGO_TARGET_DIR/debug/pgraftctl"

if [ -f "$dir/cluster.json" ]; then
  say "A previous demo cluster lives in $dir: stopping it"
  "$ctl" local down --dir "$dir" || true
fi
rm -rf "$dir"; mkdir -p "$dir"; chmod 755 "$dir"

say "pgraftctl local up --nodes 3 --dir $dir --no-init"
echo "initdb, configure and start three PostgreSQL servers on 127.0.0.1, pgraft preloaded:"
"$ctl" local up --nodes 3 --dir "$dir" --no-init --pg-config "$pg_config" | tee "$dir/nodes.jsonl"

conn() { python3 -c 'import json,sys; print(next(json.loads(l)["conninfo"] for l in open(sys.argv[2]) if json.loads(l)["node_id"]==int(sys.argv[1])))' "$1" "$dir/nodes.jsonl"; }
sql() {
  local n="$1"; shift
  printf '\nnode %s=# %s\n' "$n" "$*"
  psql "$(conn "$n")" -X -v ON_ERROR_STOP=1 -P pager=off -c "$*"
}

say "Every member is configured with its identity and Raft address"
for n in 1 2 3; do
  sql "$n" "SELECT name, setting FROM pg_settings WHERE name IN ('pgraft.cluster_id', 'pgraft.node_id', 'pgraft.address', 'pgraft.port', 'pgraft.election_timeout', 'pgraft.heartbeat_interval') ORDER BY name"
done

say "The reference bootstrap starts with CREATE EXTENSION on every node"
for n in 1 2 3; do
  sql "$n" "CREATE EXTENSION pgraft"
  sql "$n" "SELECT pgraft_get_version()"
done

say "What the SQL surface offers today (the Raft member, elections and the KV store are being built; this tour grows with them)"
sql 1 "SELECT p.proname AS function, pg_get_function_result(p.oid) AS returns FROM pg_proc p JOIN pg_extension e ON p.pronamespace = e.extnamespace WHERE e.extname = 'pgraft' AND p.proname LIKE 'pgraft%' ORDER BY 1"

say "pgraftctl local status --dir $dir"
"$ctl" local status --dir "$dir"

say "Break things: kill -9 the postmaster of node 2, look, start it again"
echo "\$ pgraftctl local kill 2"; "$ctl" local kill 2 --dir "$dir"
"$ctl" local status --dir "$dir"
echo "\$ pgraftctl local start 2"; "$ctl" local start 2 --dir "$dir"
"$ctl" local status --dir "$dir"

say "Cut node 3 off from the other members' Raft traffic (its SQL port still answers), then heal"
echo "\$ pgraftctl local partition 3"; "$ctl" local partition 3 --dir "$dir"
"$ctl" local status --dir "$dir"
sql 3 "SELECT 'node 3 still serves SQL' AS note"
echo "\$ pgraftctl local heal"; "$ctl" local heal --dir "$dir"

say "The cluster is running"
for n in 1 2 3; do echo "  node $n: psql \"$(conn "$n")\""; done
echo "  stop it:  $ctl local down --dir $dir"
