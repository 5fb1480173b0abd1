// Env: the file-system calls store/ makes when it writes, behind one small interface so
// tests can inject ENOSPC, EIO and failed renames (leveldb's Env, ErrorEnv).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "keyfs/store/status.h"

namespace keyfs {

// A file being written. Not thread-safe: one writer at a time.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends at the end of what was written so far.
  virtual Status Append(std::string_view data) = 0;
  // Writes at an absolute offset (used to fill a header in last).
  virtual Status WriteAt(uint64_t offset, std::string_view data) = 0;
  // fdatasync/fsync: returns once the data is durable.
  virtual Status Sync() = 0;
  // Closes the descriptor. Further calls fail.
  virtual Status Close() = 0;
  // Cuts or extends the file to `size` bytes. Default: NotSupported.
  virtual Status Truncate(uint64_t size) {
    (void)size;
    return Status::NotSupported("truncate");
  }
  // The descriptor, still open (for mmap after writing); -1 after Close().
  virtual int fd() const = 0;
};

// Thread-safety: Default() is safe from any thread; test Envs document their own.
class Env {
 public:
  virtual ~Env() = default;
  static Env* Default();

  // Creates `path` with O_CREAT|O_EXCL (AlreadyExists if present), mode 0644.
  virtual StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path) = 0;
  // rename(2): replaces `to` atomically.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // renameat2(RENAME_NOREPLACE): AlreadyExists if `to` exists, which is left alone.
  virtual Status RenameNoReplace(const std::string& from, const std::string& to) = 0;
  // fsync of a directory, so a rename in it is durable.
  virtual Status SyncDir(const std::string& dir) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;

  // Optional, for recycling retired snapshot files (an Env without them makes the engine
  // write a fresh file per commit). Default: NotSupported.
  // Opens an existing file read-write for rewriting in place (no O_TRUNC).
  virtual StatusOr<std::unique_ptr<WritableFile>> ReopenForRewrite(const std::string& path) {
    (void)path;
    return Status::NotSupported("rewrite in place");
  }
  // link(2): a second name for `from`'s file. AlreadyExists if `to` exists.
  virtual Status Link(const std::string& from, const std::string& to) {
    (void)from;
    (void)to;
    return Status::NotSupported("link");
  }
};

}  // namespace keyfs
