#!/usr/bin/env bash
# The whole test suite: installs what is needed, then runs every test of the workspace.
# Integration tests start their own servers on loopback (PostgreSQL, etcd members, Cassandra
# nodes through scripts/cassandra.sh, timelock servers) and fail loudly if they cannot.
# Release profile on purpose: RocksDB's C++ is then compiled once for tests, demo and benches.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/cassandra.sh fetch >/dev/null
cargo test --release --workspace "$@"
