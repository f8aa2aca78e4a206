#!/usr/bin/env bash
# The main job: installs what is needed, builds, and runs `ortelius demo` (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --release --quiet -p ortelius-cli --bin ortelius -- demo "$@"
