#!/usr/bin/env bash
# pgraft next to etcd on this machine (issue 8's benchmarks): installs what is missing
# (etcd-server, Patroni, perf, a font for the plots, the usual set-up), installs a release build of the
# extension into a private copy of PostgreSQL 15, builds the benchmark and runs it.
#
#   scripts/bench.sh            the full run (about 20 minutes on 2 cores); writes
#                               docs/benchmarks.md and docs/benchmarks/*.png
#   scripts/bench.sh --quick    a smoke run of a few minutes; writes its report under
#                               ${TMPDIR:-/tmp}/pgraft-bench-quick/ unless --report is given
#
# Other arguments go to the benchmark (`pgraft-vs-etcd --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${PGRAFT_CACHE:-$HOME/.cache/pgraft}"
log() { printf '[bench] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The usual set-up for PostgreSQL 15, plus etcd and Patroni (with its etcd client) from
# Debian, and a TrueType font that the plots' text is drawn with.
scripts/setup.sh --versions "15" --packages "etcd-server fonts-dejavu-core patroni python3-etcd linux-perf"

# Debian's package starts a single-member etcd on 127.0.0.1:2379 as a service; the
# benchmark runs its own members on free ports, so that one only costs CPU: stop it.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  log "stopping the etcd service that Debian's package started"
  as_root systemctl stop etcd || true
fi

log "installing a release build of the extension into a private PostgreSQL 15"
pg_config=$(scripts/bench-pg.sh "$cache/pg15-bench")

log "building pgraftctl and pgraft-vs-etcd (release)"
cargo build --release --quiet -p pgraftctl --bin pgraftctl
cargo build --release --quiet -p pgraft-testkit --features bench --bin pgraft-vs-etcd
target="${CARGO_TARGET_DIR:-target}"

quick=0
report_given=0
for a in "$@"; do
  [ "$a" = "--quick" ] && quick=1
  [ "$a" = "--report" ] && report_given=1
done
args=()
if [ $report_given = 0 ]; then
  if [ $quick = 1 ]; then
    out="${TMPDIR:-/tmp}/pgraft-bench-quick"
    mkdir -p "$out"
    args+=(--report "$out/benchmarks.md")
  else
    args+=(--report docs/benchmarks.md)
  fi
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ", with local changes" || true)
cmd="make bench"
[ $quick = 1 ] && cmd="make bench-quick"
[ $# -gt 0 ] && [ $quick = 0 ] && cmd="scripts/bench.sh $*"
log "running the benchmark"
"$target/release/pgraft-vs-etcd" --pg-config "$pg_config" --pgraftctl "$target/release/pgraftctl" \
  --command "$cmd" \
  --build "pgraft at commit $commit$dirty, the extension built with \`cargo pgrx install --release\` into a copy of Debian's PostgreSQL 15 (scripts/bench-pg.sh)" \
  "${args[@]}" "$@"
