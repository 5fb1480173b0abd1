# Shell functions shared by tools/pjdfstest.sh and tools/stress.sh: mount a fresh store of
# one engine, and unmount it waiting for the daemon to finish writing its store.
# The sourcing script sets: tag (its name, for messages), keyfs (the binary), work (a temp
# dir), mnt (the mountpoint), mount_opts (the -o options, engine= is added), daemon (empty),
# and defines die().
# shellcheck shell=bash disable=SC2154  # the variables above come from the sourcing script

is_mounted() { grep -qs " $mnt fuse" /proc/self/mounts; }

# keyfs runs with -f in its own session, so $daemon is its pid and we can wait for it.
mount_store() {  # ENGINE LOG
  rm -rf "$work"/store*
  setsid "$keyfs" "$work/store" "$mnt" -f -o "$mount_opts,engine=$1" >>"$2" 2>&1 &
  daemon=$!
  local i
  for ((i = 0; i < 100; i++)); do
    is_mounted && return 0
    kill -0 "$daemon" 2>/dev/null || break
    sleep 0.1
  done
  cat "$2" >&2
  die "cannot mount a $1 store at $mnt with $keyfs"
}

unmount() {  # then waits for the daemon to finish writing the store and exit
  local i
  if is_mounted; then
    for ((i = 0; i < 10; i++)); do
      fusermount3 -u "$mnt" 2>/dev/null && break
      sleep 0.5
    done
    if is_mounted; then
      echo "$tag: $mnt busy, unmounting lazily" >&2
      fusermount3 -u -z "$mnt"
    fi
  fi
  [ -n "$daemon" ] || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$daemon" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$daemon" 2>/dev/null; then
    echo "$tag: keyfs (pid $daemon) did not exit after unmounting; killing it" >&2
    kill -TERM "$daemon"
    sleep 1
    kill -KILL "$daemon" 2>/dev/null
  fi
  wait "$daemon" 2>/dev/null
  daemon=
}
