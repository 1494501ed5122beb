# pgraft: the two commands of the README, and the longer runs.
#
#   make demo          a local three-member cluster and a guided tour (leaves it running)
#   make test          everything CI runs: set-up, fmt, clippy, unit, pgrx (PostgreSQL 15
#                      and 17), builds for 16 and 18, multi-server integration tests
#   make test-matrix   the pgrx and integration tests on PostgreSQL 15, 16, 17 and 18
#   make bench         pgraft next to etcd on this machine; writes docs/benchmarks.md and
#                      its plots (about 20 minutes on 2 cores)
#   make bench-quick   the same as a smoke run of a few minutes (report under /tmp)
#
# Both commands do their own set-up (scripts/setup.sh), which is idempotent.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/pgraft/target
export PGRAFT_CACHE ?= $(HOME)/.cache/pgraft

.PHONY: setup demo test test-matrix bench bench-quick fmt

setup:
	scripts/setup.sh

demo:
	scripts/setup.sh --versions "15"
	scripts/demo.sh

test:
	scripts/test.sh --versions "15 17" --build-only "16 18"

test-matrix:
	scripts/test.sh --versions "15 16 17 18"

bench:
	scripts/bench.sh

bench-quick:
	scripts/bench.sh --quick

fmt:
	cargo fmt --all
