#!/usr/bin/env bash
# Soak: many one-shot live backups during the bank workload, each restored from scratch and
# verified (acknowledged transfers present, invariant holding). ORTELIUS_SOAK_CYCLES overrides 25.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
ORTELIUS_SOAK_CYCLES="${ORTELIUS_SOAK_CYCLES:-25}" cargo test --release -p ortelius-cli --test live_runbook \
  one_shot_backups_during_the_workload_restore_consistently -- --nocapture
