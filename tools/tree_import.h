// `keyfsctl import`: reads a directory tree on disk into one Batch, so the whole tree is
// committed atomically or not at all.
#pragma once

#include <string>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

namespace keyfs::ctl {

// Appends to *batch every file, directory and symlink below `dir` (not `dir` itself, which
// is followed if it is a symlink), keyed by its path relative to `dir`, in sorted pre-order.
// Each entry keeps its mode (st_mode & 07777), uid, gid and mtime in nanoseconds; symlinks
// stay symlinks (value = target) and are never followed. Directories are Mkdir(exist_ok)
// and files/symlinks Put(make_parents), so the import merges into the store: keys not in
// `dir` stay. Every directory's metadata is set once more after its children, so its mtime
// survives an engine that touches a directory when a child is added.
//
// Returns OK, or a Status whose message() is the user-facing text naming the offending path
// (see error_text.h): a special file (fifo, socket, device), a name that breaks the key rules,
// an unreadable file. *batch is unspecified after a failure.
// Every value is read into memory. Not thread-safe with respect to changes of `dir` by
// others: a file that changes type while it is read is reported, never followed.
Status ScanTree(const std::string& dir, Batch* batch);

}  // namespace keyfs::ctl
