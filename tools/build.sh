#!/usr/bin/env bash
# Configures and builds keyfs into ./build (or $KEYFS_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${KEYFS_BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYFS_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
