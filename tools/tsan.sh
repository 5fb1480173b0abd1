#!/usr/bin/env bash
# The clang build of keyfs with ThreadSanitizer, which is also the build that checks the lock
# annotations (-Wthread-safety, an error with clang: see CMakeLists.txt), and the unit tests
# that run threads, under TSan: the first report fails the run.
#
#   tools/tsan.sh
#
# Environment:
#   KEYFS_TSAN_DIR   the build directory, this script's own (default build-tsan)
#
# Built: the store and fs_core libraries, the keyfs daemon, keyfsctl, and the test binaries
# below. Run: their tests, but for a few that run one thread for minutes under TSan (5-15x
# slower than without): they check formats and results, which the normal and the ASan runs
# of tools/test.sh cover, and TSan finds nothing where nothing runs concurrently.
# Takes about 5-8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${KEYFS_TSAN_DIR:-build-tsan}
command -v clang++ >/dev/null || { echo "tsan.sh: clang++ is missing (apt-get install clang)" >&2; exit 2; }

# The tests where threads meet: each engine's committer or syncer against readers, writers
# and the store watcher (the engine tests, the model test's random batches, faults and
# back-pressure while committing concurrently, several processes on one store), and fs/'s
# shared state without a mount (the inode table, a write handle used by several requests).
tests=(
  snapshot_engine_test dets_engine_test engine_model_test engine_meta_test
  snapshot_fault_test dets_fault_test snapshot_multiprocess_test format_compat_test snapshot_log_test
  inode_table_test fs_attr_test write_path_test
)
# Single-threaded and slow under TSan: a 1 GiB value (4 min per engine), the comparison of
# the engines over random batches (3.5 min; DetsEngineTest runs the syncer against readers),
# every fault point of a lone committer (2 min; SnapshotFaultConcurrent stays), damaged dets
# files. *_NOT_BUILT: the test binaries not built here.
skip='_NOT_BUILT$|ValueOverTheLimitIsTooLarge|^DetsVsSnapshot\.|^Faults/SnapshotFault\.|^DetsCorruptionTest\.'

CXX=clang++ cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYFS_WERROR=ON \
  -DKEYFS_SANITIZE=thread -DKEYFS_BUILD_BENCHMARKS=OFF -DKEYFS_BUILD_MOUNT_TESTS=OFF >/dev/null
cmake --build "$dir" -j"$(nproc)" --target keyfs keyfsctl "${tests[@]}"
# No suppressions: every report so far was a real race, fixed.
cd "$dir"
TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
  ctest --output-on-failure -j"$(nproc)" --timeout 600 -LE 'mount|large|bench' -E "$skip"
