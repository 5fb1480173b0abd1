#!/usr/bin/env bash
# README's test command: install what is needed, build, run the whole test suite, stress-ng's
# filesystem stressors on a mount of each engine, the store and tool tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer, the threaded tests under ThreadSanitizer in a
# clang build that also checks the lock annotations (tools/tsan.sh), then the libFuzzer
# targets (tools/fuzz.sh, 30 s each).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 900)
if [ "${KEYFS_SKIP_STRESS:-0}" != 1 ]; then
  tools/stress.sh
fi
if [ "${KEYFS_SKIP_SANITIZERS:-0}" != 1 ]; then
  KEYFS_BUILD_DIR=build-asan tools/build.sh -DKEYFS_SANITIZE='address;undefined' \
    -DKEYFS_BUILD_BENCHMARKS=OFF -DKEYFS_BUILD_MOUNT_TESTS=OFF
  # The mount tests and the >4 GiB file run once, above; the rest again with sanitizers.
  (cd build-asan && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --output-on-failure -j"$(nproc)" --timeout 900 -LE 'mount|large|bench')
fi
if [ "${KEYFS_SKIP_TSAN:-0}" != 1 ]; then
  tools/tsan.sh
fi
if [ "${KEYFS_SKIP_FUZZ:-0}" != 1 ]; then
  tools/fuzz.sh
fi
