// The snapshot engine's class, shared by the files that implement it: engine.cc (the
// design, the read path and the commit queue), follow.cc, write.cc and merge.cc.
// Internal to store/snapshot/: nothing else includes it.
#pragma once

#include <sys/file.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "atomic_shared_ptr.h"
#include "file_util.h"
#include "keyfs/base/mutex.h"
#include "keyfs/store/snapshot.h"
#include "snapshot/commit_log.h"
#include "snapshot/delta.h"
#include "snapshot/engine.h"
#include "snapshot/overlay.h"
#include "snapshot/view.h"
#include "store_watcher.h"

namespace keyfs {

// Holds flock(LOCK_EX) on a descriptor for its lifetime.
class FlockGuard {
 public:
  explicit FlockGuard(int fd) : fd_(fd) {}
  Status Lock() {
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) return Status::FromErrno(errno, "lock store");
    }
    locked_ = true;
    return Status::OK();
  }
  ~FlockGuard() {
    if (locked_) ::flock(fd_, LOCK_UN);
  }

 private:
  int fd_;
  bool locked_ = false;
};

// Reads [off, off+len) of a descriptor.
Status ReadAt(int fd, uint64_t off, uint64_t len, std::string* out, const std::string& path);

// The largest commit log a reader loads: far above what the merge thresholds let a log grow
// to, so only a damaged or hostile file reaches it.
constexpr uint64_t kMaxLogBytes = uint64_t{8} << 30;
// A commit whose record would be bigger than this writes a whole table instead.
constexpr uint64_t kMaxRecordBytes = uint64_t{16} << 20;
// The default merge threshold: the delta is merged once it holds this many keys or one
// eighth of the base's entry count, whichever is more; and once it holds this many bytes
// of keys and values, or a quarter of the base file's size, whichever is more.
constexpr uint64_t kMinMergeKeys = 16384;
// (The bytes bound what a daemon holds in memory beside the mapped table: every version of
// every value logged since the last merge, in each process that follows the log.)
constexpr uint64_t kMinMergeBytes = uint64_t{8} << 20;

class SnapshotEngineImpl final : public SnapshotEngine {
 public:
  SnapshotEngineImpl(std::string path, const OpenOptions& o)
      : path_(std::move(path)),
        dir_(DirName(path_)),
        lock_path_(path_ + ".lock"),
        log_path_(path_ + ".log"),
        env_(o.env ? o.env : Env::Default()),
        read_only_(o.read_only),
        merge_keys_option_(o.merge_threshold) {}
  ~SnapshotEngineImpl() override;

  Status Init(bool watch);

  std::string_view name() const override { return "snapshot"; }

  ViewRef View() const { return current_.Load(); }
  TableRef Current() const override { return View()->base(); }

  StatusOr<Record> Get(std::string_view key) const override { return Find(key, true); }
  StatusOr<Record> GetInDirectory(std::string_view key) const override { return Find(key, false); }

  // Get; with `why_missing`, a miss looks at the ancestors to tell NotDirectory from
  // NotFound.
  StatusOr<Record> Find(std::string_view key, bool why_missing) const;
  Status List(std::string_view dir, std::string_view start_after, const ListFn& fn) const override;
  Status Commit(const Batch& batch) override;
  Status Sync() override { return Status::OK(); }  // every commit is durable when answered
  Status Refresh() override EXCLUDES(publish_mu_);
  EngineStats Stats() const override;
  void SetChangeListener(ChangeListener listener) override;
  Status WaitForMerges() override;

  // For VerifySnapshotStore: where the intact records of the commit log end, and its size.
  std::pair<uint64_t, uint64_t> LogExtent() EXCLUDES(publish_mu_);

  Status Merge() override;

 private:
  // A Commit call waiting for the committer: `result` is written by the committer before
  // it sets `done` under mu_, and read by the caller once it sees `done`.
  struct Pending {
    const Batch* batch;
    Status result;
    bool done = false;  // mu_
  };

  // ---- reading (engine.cc) ----

  // NotDirectory if an ancestor of `key` is a file or symlink, else NotFound.
  static Status MissingReason(const SnapshotView& v, std::string_view key);
  void CountTypes(const TableRef& t, EngineStats* s) const;

  // The delta sizes past which a merge starts (see kMinMergeKeys).
  uint64_t MergeKeys(const SnapshotTable& base) const {
    if (merge_keys_option_ != 0) return merge_keys_option_;
    return std::max(kMinMergeKeys, base.entry_count() / 8);
  }
  uint64_t MergeBytes(const SnapshotTable& base) const {
    return std::max(kMinMergeBytes, base.file_size() / 4);
  }

  // ---- loading and following the files (follow.cc) ----

  // Builds the version STORE and STORE.log hold now, replacing the publisher's delta and log
  // state; does not publish it. With `changed`, fills it with the keys of the records after
  // generation `since` and returns whether they cover every change since it (false when
  // the new base table is newer than `since`: the caller must diff).
  StatusOr<ViewRef> LoadFromDisk(uint64_t since, std::vector<std::string>* changed,
                                 bool* covered = nullptr) REQUIRES(publish_mu_);

  // Reads and applies the records between log_end_ and `size`. A torn tail stops it (the
  // rest is read again later: a writer may still be writing it).
  Status ReadNewRecords(uint64_t size, uint64_t since, std::vector<std::string>* changed)
      REQUIRES(publish_mu_);
  void ResetDelta(TableRef base) REQUIRES(publish_mu_);

  // Adds one commit's states to the delta (its generation must be gen_ + 1).
  void ApplyRecord(const LogRecord& rec) REQUIRES(publish_mu_);
  ViewRef MakeView() REQUIRES(publish_mu_);
  void CloseLog() REQUIRES(publish_mu_);

  // Serves what the files hold now if it is newer than what we serve. Corruption if they
  // are damaged (the current version stays served).
  Status CatchUp(bool notify) REQUIRES(publish_mu_);

  // After a failed load the publisher's state is not the served version's: the next
  // catch-up loads the files again (until then commits fail with the load's error).
  void MarkStale() REQUIRES(publish_mu_);
  void Publish(ViewRef v) REQUIRES(publish_mu_);

  // Drops retired versions nobody else holds, here rather than on a reader's thread.
  void ReapRetired();
  void Notify(ChangeEvent ev);
  void NotifyKeys(uint64_t from, uint64_t to, std::vector<std::string> keys, bool external);

  // Tells the listener what differs between two versions (keys compared with versions).
  void NotifyDiff(const SnapshotView& a, const SnapshotView& b);

  // ---- the commit queue (engine.cc) ----

  void CommitterLoop();
  void Answer(const std::vector<Pending*>& ps);
  void Fail(const std::vector<Pending*>& ps, const Status& s);
  void RunGroup(const std::vector<Pending*>& group) EXCLUDES(publish_mu_);

  // ---- writing: a log record or a whole table (write.cc) ----

  // A version-1 or -2 table opened read-write is rewritten as the current version at once
  // (version 1's child counts computed; version 3 may have a commit log beside it), under
  // the store lock and published like a commit. Its commit time, and the root's metadata
  // a v1 reader implies, are kept.
  Status UpgradeIfOld() EXCLUDES(publish_mu_);
  void RemoveStaleTemps() REQUIRES(publish_mu_);

  // Keys and values a commit changes: what write amplification is measured against.
  static uint64_t CommittedBytes(const Overlay& overlay);
  bool WholeTableWanted(const SnapshotView& base, const Overlay& overlay) const
      REQUIRES(publish_mu_);

  // Appends the overlay as one record to STORE.log (created if missing), fdatasyncs it and
  // publishes the new version. On failure the record is cut off again and nothing changed.
  Status AppendToLog(const Overlay& overlay, uint64_t gen, int64_t now) REQUIRES(publish_mu_);

  // Makes log_writer_ ready to append at log_end_, creating STORE.log if there is none.
  // NotSupported (and nothing changed) if the Env cannot reopen a file to write into it.
  Status OpenLogForAppend() REQUIRES(publish_mu_);

  // Writes the overlay over the served version as a whole new table, renames it over STORE
  // and removes STORE.log; publishes the new version.
  Status CommitWholeTable(const Overlay& overlay, uint64_t gen, int64_t now, Status* in_doubt)
      REQUIRES(publish_mu_);

  // Serves `t`, just renamed over STORE and holding everything committed, with no delta,
  // and removes the commit log, whose records it holds.
  void AdoptTable(TableRef t) REQUIRES(publish_mu_);

  // Builds the merged table into a temp file and renames it over STORE. An error before
  // the rename is returned (nothing changed); a failed directory fsync after it returns
  // the new table with *in_doubt set to the error.
  // REQUIRES: the store lock held.
  StatusOr<TableRef> WriteTable(const Overlay& overlay, uint64_t gen, int64_t now, Status* in_doubt)
      REQUIRES(publish_mu_);

  // A spare file nobody maps, opened for rewriting and locked exclusively; null if none.
  // REQUIRES: the store lock held (so STORE cannot change under the identity check).
  std::unique_ptr<WritableFile> TakeSpare(std::string* name) REQUIRES(publish_mu_);

  // Spares beyond a few are deleted (readers kept them busy; new files were written).
  void TrimSpares() REQUIRES(publish_mu_);

  // ---- the merge (merge.cc) ----

  void MaybeStartMerge(const SnapshotView& v);
  void MergerLoop();

  // One merge of the served version into a new base table (see the top of engine.cc).
  Status MergeOnce() EXCLUDES(publish_mu_);

  // Replaces STORE.log by one holding only the records after generation `upto` (none:
  // removes it). REQUIRES: the store lock held, STORE's table at generation `upto`.
  Status TrimLog(uint64_t upto) REQUIRES(publish_mu_);

  const std::string path_, dir_, lock_path_, log_path_;
  Env* const env_;
  const bool read_only_;
  const uint64_t merge_keys_option_;
  int lock_fd_ = -1;  // set by Init, before other threads start

  AtomicSharedPtr<const SnapshotView> current_;

  // Lock order: publish_mu_ -> (flock) -> mu_ / retire_mu_ / listener_mu_ / count_mu_ /
  // merge_mu_.
  Mutex publish_mu_;  // serialises changes of current_ (committer, merger, watcher)
  // The publisher's state: the version being built on, the delta and the log behind it.
  TableRef base_ GUARDED_BY(publish_mu_);
  bool stale_ GUARDED_BY(publish_mu_) = false;         // see MarkStale
  bool log_supported_ GUARDED_BY(publish_mu_) = true;  // the Env can append to the log
  std::unique_ptr<DeltaWriter> delta_ GUARDED_BY(publish_mu_);
  ViewCounts adjust_ GUARDED_BY(publish_mu_);
  uint64_t gen_ GUARDED_BY(publish_mu_) = 0;
  Meta root_ GUARDED_BY(publish_mu_);
  uint64_t root_version_ GUARDED_BY(publish_mu_) = 0;
  int64_t commit_time_ GUARDED_BY(publish_mu_) = 0;
  int log_fd_ GUARDED_BY(publish_mu_) = -1;  // STORE.log read-only, -1 if there is none
  uint64_t log_dev_ GUARDED_BY(publish_mu_) = 0, log_ino_ GUARDED_BY(publish_mu_) = 0;
  uint64_t log_end_ GUARDED_BY(publish_mu_) = 0;  // after the last record applied
  std::unique_ptr<WritableFile> log_writer_ GUARDED_BY(publish_mu_);
  // Generation and offset of each record after the base, for trimming the log.
  std::vector<std::pair<uint64_t, uint64_t>> record_offsets_ GUARDED_BY(publish_mu_);
  uint64_t temp_counter_ GUARDED_BY(publish_mu_) = 0;
  uint64_t spare_counter_ GUARDED_BY(publish_mu_) = 0;
  // STORE.old-* files this engine may recycle.
  std::vector<std::string> spares_ GUARDED_BY(publish_mu_);
  static constexpr size_t kMaxSpares = 3;

  Mutex mu_ ACQUIRED_AFTER(publish_mu_);  // queue_, stopping_, Pending::done
  CondVar cv_, done_cv_;
  std::deque<Pending*> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread committer_;

  Mutex merge_mu_ ACQUIRED_AFTER(publish_mu_);
  CondVar merge_cv_, merge_idle_cv_;
  bool merge_wanted_ GUARDED_BY(merge_mu_) = false;
  bool merging_ GUARDED_BY(merge_mu_) = false;
  bool merge_stopping_ GUARDED_BY(merge_mu_) = false;
  Status last_merge_status_ GUARDED_BY(merge_mu_);
  std::thread merger_;

  Mutex retire_mu_ ACQUIRED_AFTER(publish_mu_);
  std::vector<ViewRef> retired_ GUARDED_BY(retire_mu_);

  Mutex listener_mu_ ACQUIRED_AFTER(publish_mu_);
  ChangeListener listener_ GUARDED_BY(listener_mu_);

  std::unique_ptr<StoreWatcher> watcher_;

  mutable Mutex count_mu_ ACQUIRED_AFTER(publish_mu_);
  mutable uint64_t counts_[3] GUARDED_BY(count_mu_) = {};
  mutable uint64_t counted_generation_ GUARDED_BY(count_mu_) = ~uint64_t{0};
  mutable ino_t counted_ino_ GUARDED_BY(count_mu_) = 0;

  std::atomic<uint64_t> commits_{0}, commit_errors_{0}, rebuilds_{0}, external_reloads_{0};
  std::atomic<uint64_t> merges_{0}, merge_errors_{0}, bytes_written_{0}, bytes_committed_{0};
  std::atomic<uint64_t> log_bytes_{0}, durable_writes_{0};
  std::atomic<int64_t> last_commit_duration_ns_{0};
};

}  // namespace keyfs
