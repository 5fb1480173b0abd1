#!/usr/bin/env bash
# README's test command: install what is needed, build, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh
cd build && ctest --output-on-failure -j"$(nproc)" --timeout 900
