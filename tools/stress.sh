#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup() and friends run from traps
# Runs stress-ng's filesystem stressors, one at a time, each on a fresh keyfs mount of
# each engine, and fails if any of them fails.
#
#   tools/stress.sh [STRESSOR...]
#
# Environment:
#   KEYFS_BUILD_DIR         the keyfs build (default: build/ of this repository)
#   KEYFS_STRESS_ENGINES    engines (default "snapshot dets")
#   KEYFS_STRESS_SECONDS    seconds per stressor (default 5: the whole run, 16 stressors on
#                           two engines, takes about 2.5 minutes; 10 s about 5 minutes)
#   KEYFS_STRESS_KEEP=DIR   keep each stressor's output there
#
# Each stressor runs as `stress-ng --NAME 1 --timeout Ns --verify --temp-path MNT
# --metrics-brief` plus small sizes (16 MiB files), so nothing needs much memory. A stressor
# passes if stress-ng exits 0, prints no "fail:"/"error:" line and no "finished
# prematurely" warning, and did at least one bogo operation (a stressor that silently
# retries a refused call forever reports 0). Exit status: 0 if all passed, 1 if any failed,
# 2 on setup errors, 130 if interrupted. The mounts are always unmounted.
set -uo pipefail
{ # bash reads the whole block before running it, so editing this file mid-run is safe

here=$(cd "$(dirname "$0")/.." && pwd)
build=${KEYFS_BUILD_DIR:-$here/build}
keyfs=$build/fs/keyfs
engines=${KEYFS_STRESS_ENGINES:-snapshot dets}
secs=${KEYFS_STRESS_SECONDS:-5}

all=(dir dentry rename open fstat getdent filename seek utime chmod chown mmap flock lockf
     sync-file hdd readahead)
# Stressors that cannot apply to keyfs, with the reason.
declare -A skip=(
  # --mmap-file maps its file MAP_SHARED with PROT_WRITE while it is open O_RDWR: keyfs
  # refuses a shared mapping of a file opened for writing with ENODEV (README, "mmap"; the
  # writer's copy is private until close). stress-ng takes the refusal for a lack of
  # memory and retries forever (0 bogo ops, exit 0); without --mmap-file it maps
  # anonymous memory and never touches the filesystem.
  [mmap]="shared writable mapping of a file open for writing: ENODEV by design"
)
# Per-stressor options: small sizes, and where a stressor needs a populated directory.
declare -A opts=(
  [dir]="--dir-dirs 1024"
  [dentry]="--dentries 512"
  [seek]="--seek-size 16M"
  [sync-file]="--sync-file-bytes 16M"
  [hdd]="--hdd-bytes 16M"
  [readahead]="--readahead-bytes 16M"
  [mmap]="--mmap-file --mmap-bytes 16M"
)
# getdent ignores --temp-path: it reads /proc, /dev, /sys, /run and /tmp (4 levels deep),
# so the mount lives in /tmp/keyfs-stress.X/mnt with a small tree in it (see populate).

die() { echo "stress.sh: $*" >&2; exit 2; }
names=("$@")
((${#names[@]})) || names=("${all[@]}")
for n in "${names[@]}"; do
  [[ " ${all[*]} " == *" $n "* ]] || die "unknown stressor $n (known: ${all[*]})"
done
[ -x "$keyfs" ] || die "$keyfs not built (tools/build.sh, or set KEYFS_BUILD_DIR)"
for c in stress-ng fusermount3 setsid timeout; do
  command -v "$c" >/dev/null || die "$c not found"
done
mount_opts="create,default_permissions"
[ "$(id -u)" = 0 ] && mount_opts+=",allow_other"

work=$(mktemp -d /tmp/keyfs-stress.XXXXXX) || die "mktemp failed"
mnt=$work/mnt
out=${KEYFS_STRESS_KEEP:-$work/out}
mkdir -p "$mnt" "$out" || die "cannot create $mnt or $out"
daemon=   # keyfs runs with -f in its own session, so we know its pid and can wait for it
child=    # stress-ng's session

# shellcheck source=tools/mount_lib.sh
. "$here/tools/mount_lib.sh"
tag=stress.sh

cleanup() {
  trap - EXIT INT TERM HUP
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null   # stress-ng and its workers (own session)
    sleep 1
    kill -KILL -- "-$child" 2>/dev/null
    wait "$child" 2>/dev/null
    child=
  fi
  cd /
  unmount
  if is_mounted; then
    echo "stress.sh: $mnt is still mounted; left $work in place" >&2
  else
    rm -rf "$work"/store* "$mnt"
    [ -n "${KEYFS_STRESS_KEEP:-}" ] || rm -rf "$out"
    rmdir "$work" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'echo "stress.sh: interrupted" >&2; exit 130' INT TERM HUP

populate() {  # a few directories and files for fstat and getdent
  local d i
  for d in a b c d; do
    mkdir -p "$mnt/tree/$d/sub" || return 1
    for i in 1 2 3 4 5 6 7 8; do echo "$d$i" >"$mnt/tree/$d/f$i" || return 1; done
  done
}

failed=0
printf '%-9s %-10s %-6s %10s %7s\n' engine stressor result bogo-ops seconds
for engine in $engines; do
  for n in "${names[@]}"; do
    if [ -n "${skip[$n]:-}" ]; then
      printf '%-9s %-10s %-6s %10s %7s  %s\n' "$engine" "$n" skip - - "${skip[$n]}"
      continue
    fi
    log=$out/$engine-$n.txt
    mount_store "$engine" "$out/$engine-$n.keyfs.log"
    populate || die "cannot populate $mnt"
    # shellcheck disable=SC2206
    extra=(${opts[$n]:-})
    [ "$n" = fstat ] && extra=(--fstat-dir "$mnt/tree/a")
    start=$SECONDS
    cd "$mnt" || die "cannot enter $mnt"
    setsid timeout -k 10 $((secs + 120)) stress-ng --"$n" 1 --timeout "${secs}s" --verify \
      --temp-path "$mnt" --metrics-brief "${extra[@]}" >"$log" 2>&1 &
    child=$!
    wait "$child"
    rc=$?
    child=
    cd / || exit 2
    unmount
    # "metrc: [pid] NAME  BOGO-OPS  REAL  USR  SYS ..." (the header lines have no number)
    ops=$(awk -v n="$n" '$2 == "metrc:" && $4 == n && $5 ~ /^[0-9]+$/ { print $5 }' "$log")
    problems=$(grep -E 'stress-ng: (fail|error):|finished prematurely' "$log")
    if ((rc == 0)) && [ -z "$problems" ] && [ -n "$ops" ] && ((ops > 0)); then
      result=pass
    else
      result=FAIL
      failed=1
    fi
    printf '%-9s %-10s %-6s %10s %7s\n' "$engine" "$n" "$result" "${ops:--}" $((SECONDS - start))
    if [ "$result" = FAIL ]; then
      ((rc == 124)) && echo "    timed out"
      echo "    stress-ng exit status $rc"
      [ -n "$problems" ] && while IFS= read -r l; do echo "    $l"; done <<<"$problems"
      [ -n "$ops" ] && ((ops == 0)) && echo "    0 bogo operations"
    fi
  done
done
exit $failed
exit
}
