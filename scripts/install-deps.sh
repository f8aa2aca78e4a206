#!/usr/bin/env bash
# Installs what Ortelius needs to build and test, if missing. Idempotent.
#   libclang-dev, g++: RocksDB's C++ (bindgen);  protobuf-compiler: the etcd client's protos;
#   postgresql-15: the server the PostgreSQL tests start;  etcd-server, etcd-client: the etcd
#   tests' members and etcdctl;  openjdk-17-jre-headless, maven: Cassandra (jars from Maven
#   Central, fetched by scripts/cassandra.sh).
# Also links the pinned Rust toolchain to the machine's stable one when it cannot be downloaded.
set -euo pipefail
needed=(libclang-dev g++ protobuf-compiler postgresql-15 etcd-server etcd-client openjdk-17-jre-headless maven)
missing=()
for pkg in "${needed[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing ${missing[*]} ..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian postgresql package starts a cluster on port 5432; the tests start their own.
pinned=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
if command -v rustup >/dev/null && ! rustup run "$pinned" rustc --version >/dev/null 2>&1; then
  rustup toolchain link "$pinned-x86_64-unknown-linux-gnu" "$(rustc +stable --print sysroot)"
fi
