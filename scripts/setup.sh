#!/usr/bin/env bash
# Takes a fresh Debian 12 machine (root, Rust installed) to a working pgraft build:
# Debian packages (haproxy and promtool for the HTTP endpoints' tests among them),
# cargo-pgrx at the pinned version, PostgreSQL 15 (Debian), 16 (the pgserver wheel from
# PyPI), 17 and 18 (built from pinned upstream tarballs served by Debian's pool), and `cargo pgrx init` pointed at all four. Every download is pinned and
# verified (scripts/pins.sh). Idempotent: on a set-up machine it takes seconds.
#
# Usage: scripts/setup.sh [--versions "15 16 17 18"] [--packages "more Debian packages"]
# Environment: PGRAFT_CACHE (default ~/.cache/pgraft) holds the PostgreSQL builds.
set -euo pipefail

# shellcheck source=scripts/pins.sh
. "$(dirname "$0")/pins.sh"
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
          protobuf-compiler ca-certificates curl bzip2 xz-utils python3
          haproxy prometheus)
# shellcheck disable=SC2206 # a space-separated list on purpose
packages+=($extra_packages)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  # apt checks every package against the signed index of the machine's Debian suite
  # (bookworm); the versions are that suite's, which moves only by point releases.
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
    log "apt-get update failed: Debian's package index is not reachable"; exit 1
  fi
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
       --no-install-recommends "${missing[@]}" >"$cache/apt-install.log" 2>&1; then
    tail -20 "$cache/apt-install.log" >&2
    still=()
    for p in "${missing[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || still+=("$p")
    done
    log "installing Debian packages failed; not installed: ${still[*]} (log: $cache/apt-install.log)"
    exit 1
  fi
fi
# The Debian cluster that postgresql-15 creates is not ours; keep it from holding ports.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  log "stopping the Debian-managed PostgreSQL cluster (pgraft runs its own servers)"
  pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    as_root pg_ctlcluster "$v" "$c" stop || true
  done
fi

# haproxy (the load-balancer test) and prometheus (its promtool checks /metrics) are run by
# the tests with their own configuration; the packages' own services are not ours.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  for svc in haproxy prometheus; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      log "stopping the Debian-managed $svc service (the tests run their own)"
      as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
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
  if ! cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked --quiet; then
    log "installing cargo-pgrx $PGRX_VERSION from crates.io failed (see above)"; exit 1
  fi
fi

# --- PostgreSQL 16 from the pgserver wheel ---------------------------------------------
pg16="$cache/pg16"
if [[ " $versions " == *" 16 "* ]] && [ ! -x "$pg16/pgserver/pginstall/bin/pg_config" ]; then
  log "installing PostgreSQL 16 from the pgserver $PGSERVER_VERSION wheel"
  rm -rf "$pg16.tmp"
  printf 'pgserver==%s --hash=sha256:%s\n' "$PGSERVER_VERSION" "$PGSERVER_SHA256" > "$cache/pg16-requirements.txt"
  if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
       --only-binary :all: --target "$pg16.tmp" -r "$cache/pg16-requirements.txt"; then
    log "installing PostgreSQL 16 failed: PyPI did not serve pgserver $PGSERVER_VERSION with sha256 $PGSERVER_SHA256 (see above)"
    exit 1
  fi
  rm -rf "$pg16"; mv "$pg16.tmp" "$pg16"
fi
if [ -d "$pg16" ]; then chmod -R o+rX "$pg16"; fi

# --- PostgreSQL 17 and 18 from pinned source tarballs ---------------------------------
# Debian's mirror, as the machine's apt sources name it (never hard-coded).
debian_mirror() {
  if [ -n "${PGRAFT_DEBIAN_MIRROR:-}" ]; then echo "$PGRAFT_DEBIAN_MIRROR"; return; fi
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
# Leaves the verified tarball of the newest pinned version of major $1 that the mirror
# serves in $src and prints its version; says what failed for each and returns 1 if none.
fetch_source() {
  local v="$1" src="$2" mirror entry ver sum file url got
  local -n pins="PG${v}_SOURCES"
  mirror=$(debian_mirror)
  for entry in "${pins[@]}"; do
    read -r ver sum <<<"$entry"
    file="postgresql-${v}_${ver}.orig.tar.bz2"
    if [ -f "$src/$file" ] && echo "$sum  $src/$file" | sha256sum -c --quiet - >/dev/null 2>&1; then
      echo "$ver"; return 0
    fi
    url="$mirror/pool/main/p/postgresql-$v/$file"
    log "fetching PostgreSQL $ver: $url"
    rm -f "$src/$file.part"
    if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$src/$file.part" "$url"; then
      log "PostgreSQL $ver is not served at $url; trying the next pinned version"
      continue
    fi
    got=$(sha256sum "$src/$file.part" | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then
      log "PostgreSQL $ver from $url has sha256 $got, not the pinned $sum: not used"
      rm -f "$src/$file.part"; continue
    fi
    mv "$src/$file.part" "$src/$file"
    echo "$ver"; return 0
  done
  log "no pinned PostgreSQL $v source could be had from $mirror (pinned: $(printf '%s; ' "${pins[@]}"))"
  log "pin a version the mirror serves in scripts/pins.sh (docs/operations.md, \"Set-up and pinned versions\")"
  return 1
}
build_from_source() {
  local v="$1" prefix="$cache/pg$1" src="$cache/src" ver
  local -n pins="PG${v}_SOURCES"
  # A build is reused only if it is of a version still pinned.
  if [ -x "$prefix/bin/pg_config" ] && [ -f "$prefix/.pgraft-version" ]; then
    local have entry
    have=$(cat "$prefix/.pgraft-version")
    for entry in "${pins[@]}"; do
      [ "${entry%% *}" = "$have" ] && return 0
    done
    log "PostgreSQL $have in $prefix is no longer pinned: rebuilding"
  fi
  mkdir -p "$src"
  ver=$(fetch_source "$v" "$src") || exit 1
  local build="$cache/build-$v"
  rm -rf "$build" "$prefix"; mkdir -p "$build"
  tar -xjf "$src/postgresql-${v}_${ver}.orig.tar.bz2" -C "$build" --strip-components=1
  log "building PostgreSQL $ver (about 2 minutes)"
  # Run under `make test`, the outer make's jobserver settings must not leak into this
  # build; its output goes to a log that is shown when it fails.
  local blog="$cache/build-$v.log"
  if ! (cd "$build" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL sh -c \
        "./configure --prefix='$prefix' --without-icu --with-openssl \
         && make -j$(nproc) && make install && make -C contrib install") >"$blog" 2>&1; then
    tail -40 "$blog" >&2
    log "building PostgreSQL $ver failed; the whole log is $blog"
    exit 1
  fi
  echo "$ver" > "$prefix/.pgraft-version"
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
