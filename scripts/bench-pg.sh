#!/usr/bin/env bash
# A private, relocatable copy of Debian's PostgreSQL 15 with a release build of the pgraft
# extension installed into it: the benchmark's servers run an optimised extension (etcd is
# an optimised binary too) without replacing the debug build that the tests install into
# /usr/lib/postgresql/15. PostgreSQL finds its library and share directories relative to
# its binaries, so a copy of the three trees works as an installation of its own.
#
# Usage: scripts/bench-pg.sh DIR      prints DIR/lib/postgresql/15/bin/pg_config
set -euo pipefail
dest="$1"
src_bin=/usr/lib/postgresql/15
if [ ! -x "$dest/lib/postgresql/15/bin/pg_config" ]; then
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp/lib/postgresql" "$dest.tmp/share/postgresql" "$dest.tmp/include/postgresql"
  cp -a "$src_bin" "$dest.tmp/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$dest.tmp/share/postgresql/"
  cp -a /usr/include/postgresql/15 "$dest.tmp/include/postgresql/"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
fi
pg_config="$dest/lib/postgresql/15/bin/pg_config"
[ "$("$pg_config" --pkglibdir)" = "$dest/lib/postgresql/15/lib" ] \
  || { echo "the copy under $dest is not relocatable" >&2; exit 1; }
(cd "$(dirname "$0")/../crates/pgraft" && cargo pgrx install --release --pg-config "$pg_config" >&2)
# As root the servers run as `postgres`: it must read the installation.
if [ "$(id -u)" = 0 ]; then
  d="$dest"; while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  chmod -R o+rX "$dest"
fi
echo "$pg_config"
