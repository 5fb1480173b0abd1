#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup() and friends run from traps
# Runs the pjdfstest POSIX conformance suite (https://github.com/pjd/pjdfstest) on keyfs
# mounts and classifies every failing case.
#
#   tools/pjdfstest.sh PJDFSTEST_DIR [GROUP...]
#
# PJDFSTEST_DIR is a built checkout (autoreconf -ifs && ./configure && make pjdfstest).
# GROUPs default to: open mkdir rmdir unlink rename truncate ftruncate chmod chown utimensat
# symlink link mknod mkfifo granular. Needs root (the suite changes owners), prove (perl),
# python3 and a built keyfs.
#
# Environment:
#   KEYFS_BUILD_DIR      the keyfs build (default: build/ of this repository)
#   KEYFS_PJD_ENGINES    engines to test (default "snapshot dets")
#   KEYFS_PJD_TIMEOUT    seconds one group may run (default 1800)
#   KEYFS_PJD_VERBOSE=1  also list every expected failure with the rule that matched
#   KEYFS_PJD_OUT=DIR    keep the raw prove output and shell traces there
#
# For each engine and group it mounts a fresh store (-o create,engine=E,allow_other,
# default_permissions), runs `prove -rv tests/GROUP` in the mount's root with every .t
# file traced by `sh -x` (the trace tells which command each case ran, which names exist
# and where captured values came from), re-runs any files a bail out skipped, and unmounts.
# tools/pjdfstest_classify.py then sorts each failing case into "expected" (keyfs refuses
# hard links and special files with EPERM by design, and what directly follows from that;
# its docstring has the rules) or "unexpected" (everything else, including bail outs,
# cases that did not run and parse errors), and prints a table per engine and the list of
# unexpected failures. Exit status: 0 if no unexpected failure, 1 if any, 2 on setup errors
# (not root, keyfs/pjdfstest missing, a mount that fails), 130 if interrupted.
set -uo pipefail
{ # bash reads the whole block before running it, so editing this file mid-run is safe

usage="usage: tools/pjdfstest.sh PJDFSTEST_DIR [GROUP...]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
case $1 in -h|--help) echo "$usage"; exit 0 ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
pjd=$(cd "$1" 2>/dev/null && pwd) || { echo "pjdfstest.sh: no directory $1" >&2; exit 2; }
shift
groups=("$@")
if ((${#groups[@]} == 0)); then
  groups=(open mkdir rmdir unlink rename truncate ftruncate chmod chown utimensat symlink link
          mknod mkfifo granular)
fi
build=${KEYFS_BUILD_DIR:-$here/build}
keyfs=$build/fs/keyfs
engines=${KEYFS_PJD_ENGINES:-snapshot dets}
group_timeout=${KEYFS_PJD_TIMEOUT:-1800}
classify=$here/tools/pjdfstest_classify.py

die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (the suite runs commands as other users and chowns files)"
[ -x "$keyfs" ] || die "$keyfs not built (tools/build.sh, or set KEYFS_BUILD_DIR)"
[ -x "$pjd/pjdfstest" ] || die "$pjd/pjdfstest not built"
for g in "${groups[@]}"; do
  [ -d "$pjd/tests/$g" ] || die "no test group $pjd/tests/$g"
done
for c in prove python3 fusermount3 setsid timeout; do
  command -v "$c" >/dev/null || die "$c not found"
done
[ -f "$classify" ] || die "$classify missing"

work=$(mktemp -d /tmp/keyfs-pjd.XXXXXX) || die "mktemp failed"
mnt=$work/mnt
results=${KEYFS_PJD_OUT:-$work/results}
mkdir -p "$mnt" "$results" || die "cannot create $mnt or $results"
: >"$results/order"
daemon=   # keyfs runs with -f in its own session, so we know its pid and can wait for it
child=    # prove's session

# shellcheck source=tools/mount_lib.sh
. "$here/tools/mount_lib.sh"
tag=pjdfstest.sh
mount_opts="create,allow_other,default_permissions"

cleanup() {
  trap - EXIT INT TERM HUP
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null   # the whole prove session (prove, sh, pjdfstest)
    sleep 0.5
    kill -KILL -- "-$child" 2>/dev/null
    wait "$child" 2>/dev/null
    child=
  fi
  cd /
  unmount
  if is_mounted; then
    echo "pjdfstest.sh: $mnt is still mounted; left $work in place" >&2
  else
    rm -rf "$work"/store* "$work/trace.sh" "$work/keyfs.log" "$mnt"
    [ -n "${KEYFS_PJD_OUT:-}" ] || rm -rf "$results"
    rmdir "$work" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'echo "pjdfstest.sh: interrupted" >&2; exit 130' INT TERM HUP

# prove --exec runs each .t through this: the same /bin/sh, with an xtrace into trace/.
cat >"$work/trace.sh" <<'EOF'
#!/bin/sh
rel=${1#*/tests/}
exec /bin/sh -x "$1" 2>"$PJD_TRACE_DIR/$(printf %s "$rel" | tr / _).trace"
EOF
chmod +x "$work/trace.sh"

# Runs prove in its own session (so an interrupt can end all of it) and waits for it.
run_prove() {  # OUT ARGS...
  local out=$1
  shift
  setsid timeout -k 10 "$group_timeout" prove -v --exec "$work/trace.sh" "$@" >>"$out" 2>&1 &
  child=$!
  wait "$child"
  local rc=$?
  child=
  ((rc == 124)) && echo "pjdfstest.sh: timed out after ${group_timeout}s" | tee -a "$out" >&2
  return 0
}

for engine in $engines; do
  for g in "${groups[@]}"; do
    gdir=$results/$engine/$g
    rm -rf "$gdir"
    mkdir -p "$gdir/trace"
    mount_store "$engine" "$gdir/keyfs.log"
    echo "pjdfstest.sh: $engine $g ..." >&2
    export PJD_TRACE_DIR=$gdir/trace
    cd "$mnt" || die "cannot enter $mnt"
    run_prove "$gdir/prove.out" -r "$pjd/tests/$g"
    # A "Bail out!" stops prove; run the files it skipped, until each file has run.
    while :; do
      mapfile -t left < <(find "$pjd/tests/$g" -name '*.t' | sort | while read -r t; do
        grep -qF "$t .." "$gdir/prove.out" || echo "$t"
      done)
      ((${#left[@]})) || break
      before=$(wc -c <"$gdir/prove.out")
      run_prove "$gdir/prove.out" "${left[@]}"
      [ "$(wc -c <"$gdir/prove.out")" != "$before" ] || break
    done
    cd / || exit 2
    unmount
    echo "$engine $g" >>"$results/order"
  done
done

cd / || exit 2
verbose=()
[ "${KEYFS_PJD_VERBOSE:-0}" = 1 ] && verbose=(--list-expected)
python3 "$classify" "${verbose[@]}" "$pjd" "$results"
exit
}
