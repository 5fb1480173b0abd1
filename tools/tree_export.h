// `keyfsctl export`: writes a store's entries out as a directory tree.
#pragma once

#include <string>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

namespace keyfs::ctl {

// Writes every entry of `engine` below `dir`: files (content, mode), directories (mode),
// symlinks (the target, never followed), each with its mtime, and its uid/gid when running
// as root (EPERM from chown is ignored). A directory's mode and mtime are set after its
// children are written. `dir` must be absent (it is then created with mode 0777 & ~umask;
// its parent must exist) or an empty directory; its own metadata is left alone. `store`
// only names the store in messages.
//
// Never writes outside `dir`: every entry is created relative to a descriptor of its parent
// directory (mkdirat, symlinkat, openat with O_CREAT|O_EXCL|O_NOFOLLOW), so no symlink is
// followed, neither one from the store nor one planted in `dir` meanwhile, and every name
// the store hands back is checked to be a single valid component.
//
// Returns OK, or a Status whose message() is the user-facing text (see error_text.h). A
// failure before anything was written (dir not empty, not a directory, ...) changes nothing;
// after a later failure what was written so far stays.
Status ExportTree(const Engine& engine, const std::string& store, const std::string& dir);

}  // namespace keyfs::ctl
