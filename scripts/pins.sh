# The exact versions set-up installs, with the checksum each download must match. Sourced
# by scripts/setup.sh; docs/operations.md ("Set-up and pinned versions") says how to move
# to a newer release.
#
# Nothing here is "the newest the registry lists": a registry's index can name a version
# whose files it does not serve (Debian's trixie named postgresql-17 17.12 while answering
# 404 for its tarballs), so every entry is a version that was fetched and verified.

# cargo-pgrx and the pgrx crates (Cargo.toml pins pgrx =0.18.1 too). `cargo install
# --locked` checks every crate against the checksum in crates.io's index.
PGRX_VERSION=0.18.1

# PostgreSQL 16: the pgserver wheel from PyPI carries a relocatable 16.2 install. The
# sha256 is PyPI's own (https://pypi.org/simple/pgserver/), installed with --require-hashes.
PGSERVER_VERSION=0.1.4
PGSERVER_SHA256=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813

# PostgreSQL 17 and 18: upstream source tarballs as Debian's pool serves them
# (pool/main/p/postgresql-NN/postgresql-NN_VERSION.orig.tar.bz2), newest first. Set-up
# takes the first one that is served and whose sha256 matches; it never builds one that
# does not match. 18.6 matches the Checksums-Sha256 of sid's postgresql-18_18.6-3.dsc.
PG17_SOURCES=(
  "17.11 dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979"
  "17.10 078a03516dcdbdb705fecaf415ea3d13a956c589e46f09fed68a06fb00598c90"
)
PG18_SOURCES=(
  "18.6 555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f"
)
