#!/usr/bin/env bash
# Installs the Debian packages Ortelius needs to build and test, if missing. Idempotent.
#   libclang-dev: bindgen for the rocksdb crate;  g++: RocksDB's C++.
set -euo pipefail
needed=(libclang-dev g++)
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
