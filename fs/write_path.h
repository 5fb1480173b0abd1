// The write path: how bytes written to a file become a committed value.
//
// A write handle holds a private copy of the value (handles.h). WRITE and truncation
// change only that copy; the copy is committed as one Put at FLUSH (the writer's close),
// fsync, or RELEASE (a handle that only truncated), so nobody else ever sees a partial
// value. Sizes are bounded by kMaxValueSize before anything is allocated: a hostile offset
// gets EFBIG, never a huge buffer.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "attr.h"
#include "control_files.h"
#include "handles.h"
#include "inode_table.h"
#include "keyfs/store/engine.h"

namespace keyfs::fs {

// Thread-safety: every method may be called from any thread; a handle's own fields are
// guarded by its mutexes. Lock order: WriteHandle::commit_mu, WriteHandle::mu, then
// InodeTable's (never the reverse); InodeTable's RenameGate between commit_mu and the table.
// The default limit of the bytes all write handles' copies hold together: half the
// machine's memory, at least one largest value.
uint64_t DefaultWriteBudget();

class WritePath {
 public:
  WritePath(Engine* engine, InodeTable* table, FsCounters* counters, uint64_t budget)
      : engine_(engine), table_(table), counters_(counters), budget_(budget) {}

  // What new write handles charge their copies to.
  WriteBudget* budget() { return &budget_; }

  // Commits `b`, counting it; logs I/O failures. The engine's Status.
  Status CommitBatch(const Batch& b);

  // Writes `size` bytes at `off` (at the end for O_APPEND) into the handle's copy.
  // 0, or EFBIG past kMaxValueSize, ENOSPC past the write budget, EINVAL for a negative
  // offset.
  int Write(WriteHandle* h, const Caller& c, const char* data, size_t size, off_t off,
            uint64_t lock_owner);
  // Whether a write by `c` must first take setuid/setgid away from the file (it has them,
  // and this handle has not done it yet): then DropPrivs before the write.
  bool MustDropPrivs(WriteHandle* h, const Caller& c);
  // Commits the file's mode without setuid/setgid (WithoutPrivs) at once, as Linux
  // changes the mode at the write, not at close. 0 or an errno.
  int DropPrivs(WriteHandle* h, const Caller& c);

  // Sets the copy's size (ftruncate, open with O_TRUNC). 0, or EFBIG / ENOSPC / EINVAL.
  int Resize(WriteHandle* h, const Caller& c, int64_t size);

  // Commits the handle's copy if it changed since its last commit; *committed says whether
  // it did. The node then shows the committed version. 0 or an errno.
  int Commit(WriteHandle* h, bool* committed);

  // truncate(2) of `key` with no write handle of the caller: a commit of its own, with
  // `meta` as the entry's new metadata. 0 or an errno.
  int TruncateKey(const std::string& key, int64_t size, const Meta& meta);

  // Commits the rename of `from` to `to` (kRename* flags) and moves the nodes it renames
  // (InodeTable::Unlinked of a replaced target, InodeTable::Renamed), with nobody using a
  // node's key in between (RenameGate). The engine's Status.
  Status Rename(const std::string& from, const std::string& to, uint32_t flags);

 private:
  Engine* const engine_;
  InodeTable* const table_;
  FsCounters* const counters_;
  WriteBudget budget_;
};

}  // namespace keyfs::fs
