#!/usr/bin/env bash
# Installs what keyfs needs to build, test and benchmark, from Debian's archive only.
set -euo pipefail
pkgs=(cmake g++ make pkg-config libfuse3-dev fuse3 libspdlog-dev libxxhash-dev
      libgtest-dev libgmock-dev libbenchmark-dev libabsl-dev libcdb-dev liblmdb-dev
      python3 rsync stress-ng tar clang libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
