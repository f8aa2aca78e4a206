#!/usr/bin/env bash
# Readies the build cache a CI run reuses, and makes sure the run has room on disk:
#   scripts/ci-cache.sh TARGET_DIR TEMP_DIR
# Cargo never deletes what it built: each change of the dependencies or the release profile
# leaves a whole build behind (every test binary links RocksDB), and a long-lived cache fills
# the disk until the tests' servers fail with "no space left on device". So the cache is kept
# only while what decides those builds is unchanged (Cargo.lock, the workspace's Cargo.toml,
# the toolchain), or emptied (everything is rebuilt: about 16 minutes on 2 cores), also when
# its disk is nearly full. Fails before anything is built, saying where, if there is too
# little room even then.
set -euo pipefail
target=${1:?usage: ci-cache.sh TARGET_DIR TEMP_DIR}
temp=${2:?usage: ci-cache.sh TARGET_DIR TEMP_DIR}
cd "$(dirname "$0")/.."
# GiB the run needs free (each can be set through the environment): beside a cache, for the
# workspace's own crates; without one, for a whole build (about 3 GiB); in the temporary
# directory, for the servers the tests start (a whole run peaked at 1.3 GB).
keep_cache_gib=${ORTELIUS_CI_KEEP_CACHE_GIB:-10}
build_gib=${ORTELIUS_CI_BUILD_GIB:-10}
temp_gib=${ORTELIUS_CI_TEMP_GIB:-4}
free_gib() { df -P -k "$1" | awk 'NR == 2 { print int($4 / 1048576) }'; }
empty() {
  if [ ! -f "$target/CACHEDIR.TAG" ] && [ ! -d "$target/release/.fingerprint" ]; then
    echo "$target does not look like a cargo target directory (no CACHEDIR.TAG, no" \
      "release/.fingerprint): not removing it, although $1" >&2
    exit 1
  fi
  echo "removing the build cache $target ($(du -sh "$target" | cut -f1)): $1" >&2
  rm -rf "$target"
  mkdir -p "$target"
}
mkdir -p "$target"
echo "disk space before the run:"
df -h "$target" "$temp"
key=$(cat Cargo.lock Cargo.toml rust-toolchain.toml | sha256sum | cut -c1-16)
if [ -n "$(ls -A "$target")" ]; then
  if [ "$(cat "$target/.ci-key" 2>/dev/null)" != "$key" ]; then
    empty "built for other dependencies, profile or toolchain"
  elif (($(free_gib "$target") < keep_cache_gib)); then
    empty "only $(free_gib "$target") GiB free on its disk"
  fi
fi
echo "$key" >"$target/.ci-key"
short=()
if [ ! -d "$target/release" ] && (($(free_gib "$target") < build_gib)); then
  short+=("$(free_gib "$target") GiB free for the build in $target, which needs $build_gib GiB")
fi
if (($(free_gib "$temp") < temp_gib)); then
  short+=("$(free_gib "$temp") GiB free for the tests' servers in $temp, which need $temp_gib GiB")
fi
if ((${#short[@]})); then
  printf 'not enough disk space: %s\n' "${short[@]}" >&2
  echo "free some space there (or point CARGO_TARGET_DIR / TMPDIR at a larger disk) and run again" >&2
  exit 1
fi
