#!/usr/bin/env python3
"""Prints, for every criterion group that has a `raw` (or other baseline) and an `ortelius`
function, the throughput ratio baseline-time / ortelius-time (1.0 = as fast as the baseline).
Usage: scripts/bench-ratios.py [criterion-dir]   (default: $CARGO_TARGET_DIR or target, /criterion)"""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
if not os.path.isdir(root):
    sys.exit(f"no criterion results under {root}; run `cargo bench` first")

def mean_ns(group, fn):
    path = os.path.join(root, group, fn, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["mean"]["point_estimate"]

for group in sorted(os.listdir(root)):
    ours = mean_ns(group, "ortelius")
    if ours is None:
        continue
    for baseline in sorted(os.listdir(os.path.join(root, group))):
        if baseline in ("ortelius", "report"):
            continue
        base = mean_ns(group, baseline)
        if base is not None:
            print(f"{group:<28} ortelius {ours/1000:10.2f} us  {baseline} {base/1000:10.2f} us  ratio {base/ours:5.2f}x")
