// The keyfs FUSE filesystem: lowlevel request handlers over one Engine.
// fs/ never knows which engine is behind the interface.
#pragma once

#include <fuse_lowlevel.h>

#include <memory>
#include <string>

#include "keyfs/store/engine.h"

namespace keyfs::fs {

struct Config {
  bool read_only = false;  // -o ro: no OPEN round trips (kernel no_open), EROFS on writes
  // How long the kernel may cache entries and attributes. Every change is invalidated
  // explicitly, so this can be long.
  double cache_timeout_s = 86400;
  // Threads for requests that commit: as many as writers that should share one group
  // commit (they mostly wait on the committer).
  unsigned workers = 32;
  // The bytes all open files' write copies may hold together (0: half the machine's
  // memory); past it a write gets ENOSPC.
  uint64_t write_budget_bytes = 0;
  // The store's absolute path: statfs reports the space of the filesystem holding it.
  std::string store_path;
};

// Maps a store Status to the errno a syscall should return.
int StatusToErrno(const Status& s);

// Thread-safety: the handlers run on libfuse's loop thread; requests that commit are
// handed to an internal worker pool that replies itself.
class Filesystem {
 public:
  // `engine` must outlive the Filesystem.
  Filesystem(Engine* engine, Config config);
  ~Filesystem();
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;

  // The operations table and the userdata to pass with it to fuse_session_new.
  static const fuse_lowlevel_ops* Ops();
  void* SessionData() { return impl_.get(); }

  // REQUIRES: called once the session exists, before the loop starts. Starts the threads
  // that commit and invalidate kernel caches.
  void Start(fuse_session* session);
  // Stops the threads, answering queued work first. Call after the loop has returned.
  void Stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace keyfs::fs
