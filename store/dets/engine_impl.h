// DetsEngineImpl: the dets engine. Its pieces live in files named for what they do:
//   dets_read.cc     the read path: Get, List, the served state and its lock-free view;
//   dets_commit.cc   Commit into the active buffer, back-pressure;
//   dets_syncer.cc   the sync state machine (freezing, merging, renaming, publishing);
//   dets_engine.cc   opening, the writer lock, following another writer, stats.
// Internal to store/.
//
// The dets engine: a DetsPlus-style hash file (FORMAT.md §3) under an in-memory write
// buffer. Commits go into the buffer and are visible at once; a sync merges the buffer into
// a new file in one streaming pass and renames it over the store.
//
// Served state (readers see it through mu_):
//   active  the write buffer commits go to (puts and tombstones), newest;
//   frozen  buffers being synced (normally zero or one; more only after failed syncs),
//           immutable, oldest first;
//   file    the last published store file (DetsFile, mapped).
// A lookup asks active, then frozen newest to oldest, then the file: the bloom filter (in
// memory) answers most misses; a thread whose recent lookups mostly hit skips the filter
// and goes straight to the hash table (one cache miss less per hit). The first layer that
// knows the key answers (a tombstone answers "absent"). Commits read the file with pread,
// never through the mapping, so writing into a file far larger than memory does not grow
// the process's resident mapping.
//
// A quiet store (no buffer holds anything: after every sync, and always when read-only) is
// its file alone. quiet_file_ then names the file, and a lookup reads its bloom filter with
// no lock: it announces the file in hazards_ (hazard_slots.h) and the syncer, or a refresh,
// waits for no announcement of a replaced file before dropping it. A commit withdraws
// quiet_file_ under mu_ before it changes the active buffer.
//
// Lock order: commit_mu_ -> sync_mu_, commit_mu_ -> mu_, refresh_mu_ -> mu_, and
// listener_mu_ after commit_mu_ or refresh_mu_; sync_mu_ and mu_ are never held together.
// Readers take only mu_ (shared); the syncer takes sync_mu_ and mu_ one at a time, never
// while merging.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "dets/served.h"
#include "file_util.h"
#include "hazard_slots.h"
#include "keyfs/base/mutex.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"
#include "store_watcher.h"

namespace keyfs::dets {

constexpr uint64_t kDefaultBufferLimit = uint64_t{512} << 20;

class DetsEngineImpl final : public Engine {
 public:
  DetsEngineImpl(std::string path, const OpenOptions& o)
      : path_(std::move(path)),
        dir_(DirName(path_)),
        lock_path_(path_ + ".lock"),
        env_(o.env ? o.env : Env::Default()),
        read_only_(o.read_only),
        interval_s_(o.sync_interval_s),
        limit_(o.buffer_limit_bytes ? o.buffer_limit_bytes : kDefaultBufferLimit),
        active_(std::make_shared<WriteBuffer>()) {}

  ~DetsEngineImpl() override;

  Status Init(bool watch);

  std::string_view name() const override { return "dets"; }

  StatusOr<keyfs::Record> Get(std::string_view key) const override { return Find(key, true); }
  StatusOr<keyfs::Record> GetInDirectory(std::string_view key) const override;

  // Get; with `why_missing`, a miss below the top level looks at the ancestors to tell
  // NotDirectory from NotFound.
  StatusOr<keyfs::Record> Find(std::string_view key, bool why_missing) const;

  Status List(std::string_view dir, std::string_view start_after, const ListFn& fn) const override;

  Status Commit(const Batch& batch) override;

  Status Sync() override;

  Status Refresh() override;

  EngineStats Stats() const override;

  void SetChangeListener(ChangeListener listener) override;

 private:
  // A version-1 file stores no child directory counts: a directory's is counted.
  static Status FillLegacy(const DetsFile& file, Meta* meta, std::string_view key);

  // A version-1 file opened read-write is rewritten as version 2 before anything else
  // (every entry converted, every directory's child count computed), through the sync's
  // publish path: temp file, fdatasync, rename, directory fsync. Its commit time, and the
  // root's metadata a v1 reader implies, are kept.
  Status UpgradeIfOld();

  // Publishes the file for lock-free lookups if it is the whole served state (no buffer
  // holds anything), else withdraws it.
  void PublishQuietLocked() REQUIRES(mu_);

  // Valid while mu_ is held (shared or exclusive).
  Layers LayersLocked() const REQUIRES_SHARED(mu_);

  // The owner of `layer` (active or frozen), to pin a Record's memory.
  std::shared_ptr<const void> PinOf(const WriteBuffer* layer) const REQUIRES_SHARED(mu_);

  uint64_t CommitsApplied() const { return commits_applied_.load(std::memory_order_acquire); }

  Status TakeWriterLock();

  // Holding the writer lock, every temp file of STORE is a leftover of a crash.
  void RemoveStaleTemps();

  // Back-pressure.
  Status WaitForRoom() REQUIRES(commit_mu_);

  void SyncerLoop() EXCLUDES(sync_mu_);

  // One sync attempt: make every commit applied before it began durable. Runs on the
  // syncer thread only.
  Status RunSync();

  bool dir_sync_owed();

  // FREEZING -> MERGING -> RENAMING -> PUBLISHED (see the top of dets_syncer.cc).
  Status SyncRound();

  // The syncer's state (dets_syncer.cc): where the current sync attempt is. Only the
  // syncer thread changes it.
  enum class SyncState : uint8_t { kIdle, kFreezing, kMerging, kRenaming, kPublished, kError };
  static const char* SyncStateName(SyncState s);
  // Moves to `next`, aborting on a transition the state machine does not have (a bug).
  void EnterState(SyncState next) EXCLUDES(sync_mu_);
  void EnterStateLocked(SyncState next) REQUIRES(sync_mu_);

  // Serves the file STORE names now if it is not the current one (read-only engines).
  Status RefreshFile(bool notify);

  // Tells the listener which keys differ between two files (by version).
  void NotifyDiff(const DetsFile& a, const DetsFile& b);

  const std::string path_, dir_, lock_path_;
  Env* const env_;
  const bool read_only_;
  const uint32_t interval_s_;
  const uint64_t limit_;
  int lock_fd_ = -1;
  uint64_t temp_counter_ = 0;         // syncer only
  std::vector<DetsFileRef> retired_;  // syncer only: files replaced by the last sync

  Mutex commit_mu_;                   // serialises Commit: apply, then the listener
  std::atomic<uint64_t> version_{0};  // the last version given to a commit

  Mutex refresh_mu_;  // serialises RefreshFile

  // The served state. Readers hold mu_ shared; commits, freezing and publishing exclusive.
  mutable SharedMutex mu_ ACQUIRED_AFTER(commit_mu_, refresh_mu_);
  std::shared_ptr<WriteBuffer> active_ GUARDED_BY(mu_);
  std::vector<BufferRef> frozen_ GUARDED_BY(mu_);  // oldest first
  // Per frozen buffer (same length as frozen_, which readers walk alone): what it holds.
  struct FrozenMark {
    uint64_t upto;      // commits_applied_ when it was frozen
    int64_t newest_ns;  // last_commit_ns_ then
  };
  std::vector<FrozenMark> frozen_marks_ GUARDED_BY(mu_);
  int64_t last_commit_ns_ GUARDED_BY(mu_) = 0;  // wall clock of the newest commit served
  DetsFileRef file_ GUARDED_BY(mu_);
  std::atomic<uint64_t> commits_applied_{0};  // successful commits; written under mu_
  // file_ while it is the whole served state (active_ and frozen_ empty), else nullptr:
  // lookups read it without mu_, announcing it in hazards_. Written under mu_ (exclusive);
  // a file it named is dropped only after hazards_.WaitUnused.
  std::atomic<const DetsFile*> quiet_file_{nullptr};
  mutable HazardSlots<DetsFile> hazards_;
  std::atomic<uint64_t> active_bytes_{0};

  // Sync coordination. Never held together with mu_.
  mutable Mutex sync_mu_ ACQUIRED_AFTER(commit_mu_);
  CondVar sync_cv_;  // wakes the syncer
  CondVar done_cv_;  // an attempt finished, or the buffer was frozen
  bool stopping_ GUARDED_BY(sync_mu_) = false;
  bool limit_hit_ GUARDED_BY(sync_mu_) = false;
  bool syncing_ GUARDED_BY(sync_mu_) = false;
  SyncState sync_state_ GUARDED_BY(sync_mu_) = SyncState::kIdle;
  // The highest attempt a Sync() caller waits for.
  uint64_t requested_ GUARDED_BY(sync_mu_) = 0;
  uint64_t started_ GUARDED_BY(sync_mu_) = 0, finished_ GUARDED_BY(sync_mu_) = 0;
  // Every commit up to this count is durable.
  uint64_t durable_commits_ GUARDED_BY(sync_mu_) = 0;
  bool dir_sync_owed_ GUARDED_BY(sync_mu_) = false;  // renamed, but the directory fsync failed
  uint64_t owed_commits_ GUARDED_BY(sync_mu_) = 0;   // durable once the directory fsync succeeds
  uint64_t frozen_count_ GUARDED_BY(sync_mu_) = 0;
  Status last_error_ GUARDED_BY(sync_mu_);
  int64_t last_sync_duration_ns_ GUARDED_BY(sync_mu_) = 0;
  // Wall clock; 0 until a sync of this object completes.
  int64_t last_sync_end_ns_ GUARDED_BY(sync_mu_) = 0;
  std::thread syncer_;

  Mutex listener_mu_ ACQUIRED_AFTER(commit_mu_, refresh_mu_);
  ChangeListener listener_ GUARDED_BY(listener_mu_);

  std::unique_ptr<StoreWatcher> watcher_;

  std::atomic<uint64_t> commits_{0}, commit_errors_{0}, syncs_{0}, sync_errors_{0},
      external_reloads_{0};
  std::atomic<int64_t> last_commit_duration_ns_{0};
};

}  // namespace keyfs::dets
