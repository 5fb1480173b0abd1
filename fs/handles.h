// Open files and directories: one Handle per fuse_file_info::fh, typed by what was
// opened, and the registry of write handles per node (a handle-less SETATTR, the kernel's
// open(O_TRUNC), and fstat find the caller's writer through it).
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "keyfs/base/mutex.h"
#include "keyfs/store/engine.h"

namespace keyfs::fs {

// Owned through fuse_file_info::fh. References: the kernel's (dropped at RELEASE) plus one
// per queued job using the handle, so a FLUSH still committing on a worker never sees the
// handle freed by a racing RELEASE.
struct Handle {
  enum class Kind { kReader, kWriter, kDir, kStats, kSync };
  explicit Handle(Kind k, uint64_t n) : kind(k), node(n) {}
  virtual ~Handle() = default;
  const Kind kind;
  uint64_t node;  // set once, before the handle is shared
  std::atomic<int> refs{1};
};

// A reader of one committed version, through the page cache of its node.
struct ReadHandle final : Handle {
  explicit ReadHandle(uint64_t n) : Handle(Kind::kReader, n) {}
  Record rec;           // the version it reads, pinned
  bool direct = false;  // through direct I/O, on a writer node (not a page-cache reader)
};

// The bytes all writers' copies may hold together: whatever sizes and offsets are asked
// for, the daemon's memory for them stays below `limit`. Thread-safe.
class WriteBudget {
 public:
  explicit WriteBudget(uint64_t limit) : limit_(limit) {}
  // Takes `n` bytes; false (and nothing taken) if that would pass the limit.
  bool Take(uint64_t n) {
    uint64_t used = used_.load(std::memory_order_relaxed);
    do {
      if (n > limit_ - std::min(used, limit_)) return false;
    } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
    return true;
  }
  void Give(uint64_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

// A writer: a private copy of the value, committed at FLUSH/fsync/RELEASE (write_path.h).
struct WriteHandle final : Handle {
  WriteHandle(uint64_t n, WriteBudget* b) : Handle(Kind::kWriter, n), budget(b) {}
  ~WriteHandle() override {
    if (budget != nullptr) budget->Give(charged);
  }
  // Makes the copy's charge against the budget `size` bytes. False if the budget has no
  // room for the growth.
  bool Charge(uint64_t size) REQUIRES(mu) {
    if (budget == nullptr) return true;
    if (size > charged && !budget->Take(size - charged)) return false;
    if (size < charged) budget->Give(charged - size);
    charged = size;
    return true;
  }
  WriteBudget* const budget;
  pid_t pid = 0;        // the thread that opened it (a handle-less SETATTR names only that)
  bool append = false;  // O_APPEND: every write lands at the end of buf
  // Held across a whole commit (copy, engine commit, clearing `dirty`), so a FLUSH and an
  // fsync of one handle on two workers commit in order. Taken before `mu`.
  Mutex commit_mu;
  // Guards the fields below; taken also while the handle is set up, before it is shared.
  Mutex mu ACQUIRED_AFTER(commit_mu);
  uint64_t charged GUARDED_BY(mu) = 0;  // bytes of the budget this copy holds
  std::string buf GUARDED_BY(mu);
  bool dirty GUARDED_BY(mu) = false;      // written since the last commit
  bool truncated GUARDED_BY(mu) = false;  // size changed since the last commit
  // Written by someone without root's privilege: the commit clears setuid/setgid
  // (WithoutPrivs), and whether that writer is in the file's group.
  bool drop_privs GUARDED_BY(mu) = false;
  bool writer_in_group GUARDED_BY(mu) = true;
  // DropPrivs committed the mode without setuid/setgid.
  bool privs_dropped GUARDED_BY(mu) = false;
  uint64_t edits GUARDED_BY(mu) = 0;  // bumps on every change, to tell if a commit covered them
  // `edits` when the commit of a close() (FLUSH) failed and close() returned the error: the
  // RELEASE that follows must not commit those same changes after all. ~0: none failed.
  uint64_t close_failed_at GUARDED_BY(mu) = ~uint64_t{0};
  std::atomic<uint64_t> last_change{0};  // WriterRegistry::Changed() order of its last change
  Meta create_meta GUARDED_BY(mu);       // for a file this handle created
  // Set by utimens after the last write: the commit keeps it.
  int64_t explicit_mtime GUARDED_BY(mu) = kTimeNow;
  // lock_owner (the writer's file table) of the last WRITE.
  uint64_t write_owner GUARDED_BY(mu) = 0;
};

// A directory listing: where the next readdir continues (a cursor, not a rescan).
struct DirHandle final : Handle {
  explicit DirHandle(uint64_t n) : Handle(Kind::kDir, n) {}
  off_t next_off = 0;
  std::string last_name;
  bool at_end = false;  // the last answer ended the listing: continuing it is EOF
};

// MOUNT/.keyfs/stats (a snapshot of the JSON taken at open) or MOUNT/.keyfs/sync.
struct ControlHandle final : Handle {
  ControlHandle(Kind k, uint64_t n) : Handle(k, n) {}
  std::string text;
};

inline Handle* Ref(Handle* h) {
  h->refs.fetch_add(1, std::memory_order_relaxed);
  return h;
}
inline void Unref(Handle* h) {
  if (h->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete h;
}
// Owns one reference to a handle (nullptr: none) and drops it when it goes, also when an
// exception unwinds a job that used the handle.
class HandleRef {
 public:
  explicit HandleRef(Handle* h = nullptr) : h_(h) {}
  HandleRef(const HandleRef& o) : h_(o.h_ != nullptr ? Ref(o.h_) : nullptr) {}
  HandleRef(HandleRef&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  HandleRef& operator=(const HandleRef&) = delete;
  ~HandleRef() {
    if (h_ != nullptr) Unref(h_);
  }

 private:
  Handle* h_;
};

inline Handle* HandleOf(uint64_t fh) { return reinterpret_cast<Handle*>(fh); }
// The write handle behind `fh`, or nullptr if it is not one.
inline WriteHandle* WriterOf(uint64_t fh) {
  Handle* h = HandleOf(fh);
  return h != nullptr && h->kind == Handle::Kind::kWriter ? static_cast<WriteHandle*>(h) : nullptr;
}

// Thread-safety: every method locks the registry's own mutex (a leaf lock: nothing else is
// taken while it is held).
class WriterRegistry {
 public:
  void Add(WriteHandle* h);
  void Remove(WriteHandle* h);
  // The newest write handle that thread `pid` opened on `node`, with a reference the caller
  // drops (Unref); nullptr if none. (A handle-less SETATTR follows the open it belongs to.)
  WriteHandle* Find(uint64_t node, pid_t pid);
  // The write handle of thread `pid` on `node` changed last (what fstat shows when a
  // program writes through one of several descriptors), referenced; nullptr if none.
  WriteHandle* FindLastChanged(uint64_t node, pid_t pid);
  // Marks `h` as the handle changed last.
  void Changed(WriteHandle* h) {
    h->last_change.store(clock_.fetch_add(1, std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
  }

 private:
  Mutex mu_;
  std::unordered_map<uint64_t, std::vector<WriteHandle*>> by_node_ GUARDED_BY(mu_);
  std::atomic<uint64_t> clock_{0};
};

}  // namespace keyfs::fs
