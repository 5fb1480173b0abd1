#!/usr/bin/env python3
"""Shows that the power-loss test bites: removes each fsync and directory fsync of store/
in turn (in a scratch clone of HEAD), rebuilds tests/power_loss_test and prints which of its
tests then fail. A mutant no test kills is a durability step nothing checks.

Usage: tools/fsync_mutants.py [SCRATCH_DIR]   (default /tmp/keyfs-fsync-mutants; ~1 min each)
"""
import os
import subprocess
import sys

# (label, file, the exact text, which occurrence (0-based), what it becomes)
MUTANTS = [
    ("snapshot commit to the log: fdatasync of the record", "store/snapshot/write.cc",
     "if (s.ok()) s = log_writer_->Sync();", 0, ""),
    ("snapshot whole-table commit: fsync of the new table", "store/snapshot/write.cc",
     "if (s.ok()) s = f->Sync();", 0, ""),
    ("snapshot whole-table commit: directory fsync after the rename", "store/snapshot/write.cc",
     "Status sync_dir = env_->SyncDir(dir_);\n  if (!sync_dir.ok()) sync_dir = env_->SyncDir(dir_);",
     0, "Status sync_dir;"),
    ("snapshot merge: fsync of the merged table", "store/snapshot/merge.cc",
     "if (s.ok()) s = (*file)->Sync();", 0, ""),
    ("snapshot merge: directory fsync between the table's rename and the log's", "store/snapshot/merge.cc",
     "s = env_->SyncDir(dir_);", 0, "s = Status::OK();"),
    ("create, log creation and log trim (publish.cc): fsync of the new file", "store/publish.cc",
     "if (s.ok()) s = (*file)->Sync();", 0, ""),
    ("create, log creation and log trim (publish.cc): directory fsync after the rename", "store/publish.cc",
     "return env->SyncDir(DirName(path));", 0, "return Status::OK();"),
    ("dets upgrade: fsync of the version-2 file", "store/dets/syncer.cc",
     "if (s.ok()) s = f->Sync();", 1, ""),
    ("dets upgrade: directory fsync after the rename", "store/dets/syncer.cc",
     "Status sync_dir = env_->SyncDir(dir_);", 1, "Status sync_dir;"),
    ("dets sync: fsync of the merged file", "store/dets/syncer.cc",
     "if (s.ok()) s = f->Sync();", 0, ""),
    ("dets sync: directory fsync after the rename", "store/dets/syncer.cc",
     "Status sync_dir = env_->SyncDir(dir_);\n  if (!sync_dir.ok()) sync_dir = env_->SyncDir(dir_);",
     0, "Status sync_dir;"),
]


def run(cmd, cwd, check=True):
    return subprocess.run(cmd, cwd=cwd, shell=True, check=check, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def main():
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], text=True,
                          stdout=subprocess.PIPE, check=True).stdout.strip()
    scratch = sys.argv[1] if len(sys.argv) > 1 else "/tmp/keyfs-fsync-mutants"
    if not os.path.isdir(scratch):
        run(f"git clone -q {repo} {scratch}", "/")
    run("git fetch -q origin && git checkout -q --detach origin/HEAD 2>/dev/null || true", scratch, False)
    run("cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYFS_BUILD_BENCHMARKS=OFF "
        "-DKEYFS_BUILD_MOUNT_TESTS=OFF >/dev/null", scratch)
    rows = []
    for label, path, old, nth, new in MUTANTS:
        run("git checkout -q -- store", scratch)
        full = os.path.join(scratch, path)
        text = open(full).read()
        at = -1
        for _ in range(nth + 1):
            at = text.find(old, at + 1)
            if at < 0:
                sys.exit(f"fsync_mutants: {path}: occurrence {nth} of {old!r} not found")
        open(full, "w").write(text[:at] + new + text[at + len(old):])
        b = run("cmake --build build -j2 --target power_loss_test", scratch, False)
        if b.returncode != 0:
            sys.exit(f"fsync_mutants: build failed for {label}:\n{b.stdout[-2000:]}")
        t = run("./build/tests/power_loss_test --gtest_brief=1", scratch, False)
        failed = sorted({l.split("]", 1)[1].split(",")[0].strip()
                         for l in t.stdout.splitlines()
                         if l.startswith("[  FAILED  ]") and "," in l})
        rows.append((label, failed))
        print(f"{label}: {', '.join(failed) if failed else 'NOT KILLED'}", flush=True)
    run("git checkout -q -- store", scratch)
    print("\n| fsync removed | tests of power_loss_test that fail |\n|---|---|")
    for label, failed in rows:
        print(f"| {label} | {', '.join(failed) if failed else '**none**'} |")
    sys.exit(0 if all(f for _, f in rows) else 1)


if __name__ == "__main__":
    main()
