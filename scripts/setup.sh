#!/usr/bin/env bash
# Takes a fresh Debian 12 machine (root, Rust installed) to a working pgraft build:
# Debian packages, cargo-pgrx at the pinned version, PostgreSQL 15 (Debian), 16 (the
# pgserver wheel from PyPI), 17 and 18 (built from Debian's source packages), and
# `cargo pgrx init` pointed at all four. Idempotent: on a set-up machine it takes seconds.
#
# Usage: scripts/setup.sh [--versions "15 16 17 18"] [--packages "more Debian packages"]
# Environment: PGRAFT_CACHE (default ~/.cache/pgraft) holds the PostgreSQL builds.
set -euo pipefail

PGRX_VERSION=0.18.1
PGSERVER_VERSION=0.1.4
versions="15 16 17 18"
extra_packages=""
while [ $# -gt 0 ]; do
  case "$1" in
    --versions) versions="$2"; shift 2 ;;
    --packages) extra_packages="$2"; shift 2 ;;
    *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cache="${PGRAFT_CACHE:-$HOME/.cache/pgraft}"
mkdir -p "$cache"
log() { printf '[setup] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------------------
packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang
          bison flex libreadline-dev zlib1g-dev libssl-dev pkg-config sudo make
          protobuf-compiler ca-certificates bzip2 xz-utils python3)
# shellcheck disable=SC2206 # a space-separated list on purpose
packages+=($extra_packages)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian cluster that postgresql-15 creates is not ours; keep it from holding ports.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  log "stopping the Debian-managed PostgreSQL cluster (pgraft runs its own servers)"
  pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    as_root pg_ctlcluster "$v" "$c" stop || true
  done
fi

# --- Servers run as an unprivileged user; the builds must be reachable by it -----------
# initdb refuses root, so as root the servers run as `postgres`. The cache lives under
# $HOME, which for root is mode 700: grant traversal (x only, no listing) down to it.
if [ "$(id -u)" = 0 ]; then
  d="$cache"
  while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
fi

# --- cargo-pgrx at the pinned version --------------------------------------------------
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
  log "installing cargo-pgrx $PGRX_VERSION (about 4 minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

# --- PostgreSQL 16 from the pgserver wheel ---------------------------------------------
pg16="$cache/pg16"
if [[ " $versions " == *" 16 "* ]] && [ ! -x "$pg16/pgserver/pginstall/bin/pg_config" ]; then
  log "installing PostgreSQL 16 from the pgserver $PGSERVER_VERSION wheel"
  rm -rf "$pg16.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$pg16.tmp" "pgserver==$PGSERVER_VERSION"
  rm -rf "$pg16"; mv "$pg16.tmp" "$pg16"
fi
if [ -d "$pg16" ]; then chmod -R o+rX "$pg16"; fi

# --- PostgreSQL 17 and 18 from Debian's source packages --------------------------------
build_from_source() {
  local v="$1" prefix="$cache/pg$1"
  [ -x "$prefix/bin/pg_config" ] && return 0
  local aptdir="$cache/apt" src="$cache/src"
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/sources.list.d" "$src"
  if ! ls "$src"/postgresql-"$v"_*.orig.tar.bz2 >/dev/null 2>&1; then
    # A private apt configuration: the machine's own sources stay untouched. The mirror and
    # keyring are read from the machine's deb822 sources, never hard-coded.
    local main_src=/etc/apt/sources.list.d/debian.sources uri keyring
    uri=$(awk '/^URIs:/{print $2; exit}' "$main_src")
    keyring=$(awk '/^Signed-By:/{print $2; exit}' "$main_src")
    cat > "$aptdir/sources.list" <<SRC
deb-src [signed-by=$keyring] $uri trixie main
deb-src [signed-by=$keyring] $uri sid main
SRC
    cat > "$aptdir/apt.conf" <<CONF
Dir::Etc::sourcelist "$aptdir/sources.list";
Dir::Etc::sourceparts "$aptdir/sources.list.d";
Dir::State::Lists "$aptdir/lists";
Dir::Cache "$aptdir/cache";
APT::Sandbox::User "root";
CONF
    log "fetching Debian's source package of PostgreSQL $v"
    APT_CONFIG="$aptdir/apt.conf" apt-get update -qq
    (cd "$src" && APT_CONFIG="$aptdir/apt.conf" apt-get source --download-only -qq "postgresql-$v")
  fi
  local tarball
  tarball=$(ls "$src"/postgresql-"$v"_*.orig.tar.bz2 | head -1)
  local build="$cache/build-$v"
  rm -rf "$build"; mkdir -p "$build"
  tar -xjf "$tarball" -C "$build" --strip-components=1
  log "building PostgreSQL $v (about 2 minutes)"
  # Run under `make test`, the outer make's jobserver settings must not leak into this
  # build; its output goes to a log that is shown when it fails.
  local blog="$cache/build-$v.log"
  if ! (cd "$build" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL sh -c \
        "./configure --prefix='$prefix' --without-icu --with-openssl \
         && make -j$(nproc) && make install && make -C contrib install") >"$blog" 2>&1; then
    tail -40 "$blog" >&2
    log "building PostgreSQL $v failed; the whole log is $blog"
    exit 1
  fi
  rm -rf "$build" "$blog"
  chmod -R o+rX "$prefix"
}
for v in 17 18; do
  if [[ " $versions " == *" $v "* ]]; then build_from_source "$v"; fi
done

# --- cargo pgrx init, naming every version in one call ---------------------------------
pgrx_home="${PGRX_HOME:-$HOME/.pgrx}"
args=()
declare -A pgc=(
  [15]=/usr/lib/postgresql/15/bin/pg_config
  [16]="$pg16/pgserver/pginstall/bin/pg_config"
  [17]="$cache/pg17/bin/pg_config"
  [18]="$cache/pg18/bin/pg_config"
)
for v in 15 16 17 18; do
  if [ -x "${pgc[$v]}" ]; then args+=("--pg$v=${pgc[$v]}"); fi
done
want=$(printf '%s\n' "${args[@]}" | sort | tr '\n' ' ')
if [ ! -f "$pgrx_home/.pgraft-init" ] || [ "$(cat "$pgrx_home/.pgraft-init")" != "$want" ] \
   || [ ! -f "$pgrx_home/config.toml" ]; then
  log "cargo pgrx init ${args[*]}"
  cargo pgrx init "${args[@]}" >/dev/null
  printf '%s' "$want" > "$pgrx_home/.pgraft-init"
fi
log "ready: PostgreSQL $(for v in 15 16 17 18; do [ -x "${pgc[$v]}" ] && printf '%s ' "$v"; done)"
