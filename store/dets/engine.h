// Factory functions of the dets engine. Internal to store/ (open.cc dispatches here).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"

namespace keyfs {

// Opens an existing dets store. See OpenStore. A read-write open takes the store's writer
// lock (flock on STORE.lock, which then holds the owner's pid): Busy naming the pid if
// another process holds it. Read-only opens take no lock and serve the last synced file.
StatusOr<std::unique_ptr<Engine>> OpenDetsEngine(const std::string& path,
                                                 const OpenOptions& options);

// Writes an empty dets store at `path`. AlreadyExists if present.
Status CreateDetsStore(const std::string& path, Env* env);

// Checks every checksum and structure of the dets file at `path` (see DetsFile::VerifyAll).
Status VerifyDetsStore(const std::string& path, std::vector<std::string>* report);

}  // namespace keyfs
