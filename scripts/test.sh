#!/usr/bin/env bash
# The whole test suite: installs what is needed, then runs every test of the workspace.
# Release profile on purpose: RocksDB's C++ is then compiled once for tests, demo and benches.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --release --workspace "$@"
