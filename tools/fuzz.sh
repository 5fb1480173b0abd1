#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (AddressSanitizer and
# UndefinedBehaviorSanitizer on) and runs each on a copy of its seed corpus for a while.
#
#   tools/fuzz.sh [TARGET...]
#
# Environment:
#   KEYFS_FUZZ_SECONDS   seconds per target (default 30)
#   KEYFS_FUZZ_DIR       the build directory (default build-fuzz)
#
# A target's run fails on a crash, a sanitizer report, a leak, a timeout (10 s for one
# input) or memory past 2 GiB; the input that did it is kept as build-fuzz/crash-* etc.
# and the command that replays it is printed. Exit status: 0 if every target ran clean,
# 1 if one failed, 2 on setup errors.
set -uo pipefail
{ # bash reads the whole block before running it, so editing this file mid-run is safe

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${KEYFS_FUZZ_DIR:-build-fuzz}
secs=${KEYFS_FUZZ_SECONDS:-30}
targets=("$@")
((${#targets[@]})) || targets=(fuzz_store_file fuzz_key fuzz_batches fuzz_commit_log)
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is missing (apt-get install clang)" >&2; exit 2; }

cd "$here"
CXX=clang++ CC=clang cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKEYFS_WERROR=ON -DKEYFS_BUILD_FUZZERS=ON -DKEYFS_SANITIZE='address;undefined' \
  -DKEYFS_BUILD_TESTS=OFF -DKEYFS_BUILD_BENCHMARKS=OFF >/dev/null || exit 2
cmake --build "$dir" -j"$(nproc)" --target "${targets[@]}" >"$dir/build.log" 2>&1 || {
  grep -m5 -B2 -A3 'error' "$dir/build.log" >&2
  echo "fuzz.sh: build failed ($dir/build.log)" >&2
  exit 2
}

status=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  cp -r "tests/fuzz/corpus/$t/." "$work/" 2>/dev/null
  log="$dir/$t.log"
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$dir/tests/fuzz/$t" "$work" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -artifact_prefix="$dir/$t-" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  if ((rc == 0)); then
    echo "fuzz.sh: $t: ${runs:-?} runs in ${secs} s, no failure"
  else
    status=1
    echo "fuzz.sh: $t FAILED (exit $rc); the end of $log:" >&2
    tail -30 "$log" >&2
    ls "$dir/$t-"* 2>/dev/null | sed 's/^/fuzz.sh: replay with: '"$dir\/tests\/fuzz\/$t"' /' >&2
  fi
  rm -rf "$work"
done
exit $status
}
