#!/usr/bin/env bash
# The test command (`make test`): set-up, formatting, lints, docs, every crate's tests, the
# pgrx tests of the extension on each PostgreSQL version asked for, builds on the others,
# and the integration tests that start real servers. Exits non-zero when anything fails.
#
# Usage: scripts/test.sh [--versions "15 17"] [--build-only "16 18"]
set -euo pipefail
cd "$(dirname "$0")/.."

versions="15 17"
build_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --versions) versions="$2"; shift 2 ;;
    --build-only) build_only="$2"; shift 2 ;;
    *) echo "usage: $0 [--versions \"15 17\"] [--build-only \"16 18\"]" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgraft/target}"
# The acceptance scripts live beside the repository (shared/ next to the clone).
acceptance="${PGRAFT_ACCEPTANCE:-$(cd .. && pwd)/shared/acceptance}"
if [ ! -f "$acceptance/run.sh" ]; then
  echo "the acceptance scripts are missing at $acceptance (set PGRAFT_ACCEPTANCE)" >&2
  exit 2
fi
export PGRAFT_CACHE="${PGRAFT_CACHE:-$HOME/.cache/pgraft}"

# Failed runs keep their cluster directories for diagnosis (/tmp/pgraft-t-*, torture runs);
# over many runs they filled this machine's disk (60 GB). Remove those older than a day,
# with any server still running in them.
for d in $(find "${TMPDIR:-/tmp}" -maxdepth 1 \( -name 'pgraft-t-*' -o -name 'pgraft-torture-*' \) -mmin +1440 2>/dev/null); do
  pkill -9 -f -- "$d/" 2>/dev/null || true
  rm -rf -- "$d"
done

scripts/setup.sh --versions "$versions $build_only"

pg_config_for() {
  case "$1" in
    15) echo /usr/lib/postgresql/15/bin/pg_config ;;
    16) echo "$PGRAFT_CACHE/pg16/pgserver/pginstall/bin/pg_config" ;;
    *)  echo "$PGRAFT_CACHE/pg$1/bin/pg_config" ;;
  esac
}

passed=0
current=""
started=$SECONDS
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -n "$current" ]; then
    printf '\n== %s: FAILED\n' "$current"
    echo "steps: $passed passed, 1 failed"
  fi
}
trap on_exit EXIT
step() {
  current="$1"; shift
  local t0=$SECONDS
  printf '\n== %s\n' "$current"
  "$@"
  passed=$((passed + 1))
  printf '== %s: ok (%ss)\n' "$current" $((SECONDS - t0))
  current=""
}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy (warnings denied)" cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo doc (warnings denied)" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

# pgrx tests: one server per version, run as an unprivileged user when we are root
# (initdb refuses root). They install a test build of the extension, so they run before
# the real install below.
runas=()
pgrx_data="${TMPDIR:-/tmp}/pgraft-pgrx"
if [ "$(id -u)" = 0 ]; then
  runas=(--runas postgres)
  install -d -m 755 "$pgrx_data"
fi
for v in $versions; do
  rm -rf "$pgrx_data/pg$v"
  if [ "$(id -u)" = 0 ]; then install -d -o postgres -g postgres "$pgrx_data/pg$v"; else mkdir -p "$pgrx_data/pg$v"; fi
  # One test at a time: they share one member, and some (kv_reset, set_config) act on all
  # of its state.
  step "pgrx tests on PostgreSQL $v" \
    env RUST_TEST_THREADS=1 bash -c "cd crates/pgraft && cargo pgrx test pg$v ${runas[*]} --pgdata '$pgrx_data/pg$v'"
done
for v in $build_only; do
  step "extension builds for PostgreSQL $v" \
    cargo build --quiet -p pgraft --no-default-features --features "pg$v"
done

# The extension as operators install it, into every version the integration tests use.
pg_configs=()
for v in $versions; do
  pgc=$(pg_config_for "$v")
  # The old library is unlinked first: running servers keep what they mapped instead of
  # crashing (SIGBUS) on a file rewritten in place.
  step "install the extension into PostgreSQL $v" \
    bash -c "rm -f \"\$('$pgc' --pkglibdir)/pgraft.so\" && cd crates/pgraft && cargo pgrx install --pg-config '$pgc' >/dev/null"
  pg_configs+=("$pgc")
done

# Every other crate's tests: unit, simulation, and the integration tests that start real
# clusters through pgraftctl on each installed version.
export PGRAFT_TEST_PG_CONFIGS="${pg_configs[*]}"
step "cargo test (all crates but the extension)" cargo test --workspace --exclude pgraft

# The reference documents' SQL examples, unchanged, against a real three-node cluster on
# every version tested.
cargo build --quiet -p pgraftctl
for v in $versions; do
  step "reference examples (../shared/acceptance) on PostgreSQL $v" \
    env PATH="$CARGO_TARGET_DIR/debug:$PATH" PGRAFT_PG_CONFIG="$(pg_config_for "$v")" \
    bash "$acceptance/run.sh"
done

printf '\nmake test finished in %ss\n' $((SECONDS - started))
echo "steps: $passed passed, 0 failed"
