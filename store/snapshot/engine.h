// Factory functions of the snapshot engine. Internal to store/ (open.cc dispatches here).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"

namespace keyfs {

// Opens an existing snapshot store. See OpenStore.
StatusOr<std::unique_ptr<Engine>> OpenSnapshotEngine(const std::string& path,
                                                     const OpenOptions& options);

// VerifyStore for a snapshot store: its base table, its commit log and the tree they make.
Status VerifySnapshotStore(const std::string& path, std::vector<std::string>* report);

// Writes an empty snapshot table at `path`. AlreadyExists if present.
Status CreateSnapshotStore(const std::string& path, Env* env);

}  // namespace keyfs
