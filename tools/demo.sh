#!/usr/bin/env bash
# README's run command: install what is needed, build, create a demo store and mount it.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh
root=$PWD
demo=$root/demo
store=$demo/config.keyfs
mnt=$demo/mnt
mkdir -p "$mnt"
if mountpoint -q "$mnt" 2>/dev/null || grep -qs " $mnt " /proc/mounts; then
  fusermount3 -u -z "$mnt" || true
fi
if [ ! -e "$store" ]; then
  seed=$(mktemp -d)
  trap 'rm -rf "$seed"' EXIT
  mkdir -p "$seed/app" "$seed/nginx/sites-available" "$seed/nginx/sites-enabled"
  printf 'listen = 0.0.0.0:8080\nworkers = 4\nlog_level = info\n' > "$seed/app/server.conf"
  printf '{"feature_x": true, "max_items": 100}\n' > "$seed/app/flags.json"
  printf 'server { listen 80; root /srv/www; }\n' > "$seed/nginx/sites-available/default"
  ln -s ../sites-available/default "$seed/nginx/sites-enabled/default"
  printf 'hello from keyfs\n' > "$seed/motd"
  build/tools/keyfsctl create "$store"
  build/tools/keyfsctl import "$store" "$seed"
fi
build/fs/keyfs "$store" "$mnt"
cat <<TXT

keyfs: the demo store $store is mounted at $mnt. Try:

  ls -la $mnt $mnt/app
  cat $mnt/app/server.conf
  echo 'workers = 8' >> $mnt/app/server.conf
  sed -i 's/info/debug/' $mnt/app/server.conf && cat $mnt/app/server.conf
  readlink $mnt/nginx/sites-enabled/default
  cat $mnt/.keyfs/stats
  build/tools/keyfsctl list $store
  build/tools/keyfsctl get $store app/server.conf
  build/tools/keyfsctl put $store motd 'changed with keyfsctl' && cat $mnt/motd

Unmount with: fusermount3 -u $mnt
TXT
