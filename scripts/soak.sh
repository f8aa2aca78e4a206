#!/usr/bin/env bash
# Soak targets, each ending with a one-line summary:
#   scripts/soak.sh --crashes N   kill -9 a writer N times (embedded RocksDB); after each kill,
#                                 every acknowledged transfer is present and money is conserved
#   scripts/soak.sh --cycles N    N live one-shot backups during the bank workload, each
#                                 restored after total loss and checked
# Both by default: --crashes 1000 --cycles 100. CI runs the same tests short (50 kills, 3 cycles).
# --backend rocksdb|postgres|etcd picks the store of the backup cycles (default rocksdb).
set -euo pipefail
cd "$(dirname "$0")/.."
crashes="" cycles="" backend=rocksdb
while (($#)); do
  case "$1" in
    --crashes) crashes="${2:?--crashes needs a count}"; shift 2 ;;
    --cycles) cycles="${2:?--cycles needs a count}"; shift 2 ;;
    --backend) backend="${2:?--backend needs rocksdb, postgres or etcd}"; shift 2 ;;
    *) echo "unknown option $1; use --crashes N, --cycles N, --backend B" >&2; exit 2 ;;
  esac
done
if [[ -z "$crashes$cycles" ]]; then crashes=1000 cycles=100; fi
for n in $crashes $cycles; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "counts must be positive integers, not $n" >&2; exit 2; }
done
case "$backend" in rocksdb|postgres|etcd) ;; *) echo "unknown backend $backend" >&2; exit 2 ;; esac
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ortelius-target}"
summary() { grep '^SUMMARY' | sed 's/^SUMMARY //'; }
if [[ -n "$crashes" ]]; then
  ORTELIUS_CRASHES="$crashes" cargo test -q --release --workspace --test txn_crash \
    killed_writers_lose_nothing_acknowledged_and_break_no_invariant -- --exact --nocapture | summary
fi
if [[ -n "$cycles" ]]; then
  ORTELIUS_SOAK_CYCLES="$cycles" cargo test -q --release --workspace --test live_runbook \
    "$backend::one_shot_backups_during_the_workload_restore_consistently" -- --exact --nocapture | summary
fi
