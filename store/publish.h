// Making a new file appear under its final name all at once (STYLE: publish files
// atomically): temp (O_EXCL), write, fsync, rename, fsync the directory.
#pragma once

#include <functional>
#include <string>

#include "keyfs/store/env.h"
#include "keyfs/store/status.h"

namespace keyfs {

// Creates `path`, which must not exist, holding what `write` puts into the file it is given.
// AlreadyExists (and nothing changed) if `path` exists by the time of the rename. On any
// failure before the rename the temp file is removed and `path` is untouched; once this
// returns OK, `path` and its content are durable.
Status CreateFileAtomically(Env* env, const std::string& path,
                            const std::function<Status(WritableFile*)>& write);

// The same, replacing `path` if it exists: readers see the old file or the new one, whole.
// (The temp is named `path`.tmp-<pid>-create-<n>: a writer's open removes leftovers.)
Status ReplaceFileAtomically(Env* env, const std::string& path,
                             const std::function<Status(WritableFile*)>& write);

}  // namespace keyfs
