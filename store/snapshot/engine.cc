// The snapshot engine: lock-free reads of one version (an immutable base table plus the
// delta of the commits since it), writes through one committer thread whose commits cost
// what they change, and a background merge that folds the delta into a new base table.
//
// Files (FORMAT.md §2): STORE, the base table, written whole and renamed into place;
// STORE.log, the commit log: one checksummed record per commit after some base table,
// appended and fdatasynced before the commit is answered.
//
// Commit protocol (one iteration of the committer):
//   1. Take every queued batch (group commit: batches that arrive while a commit runs wait
//      for the next iteration and share it).
//   2. flock(LOCK_EX) STORE.lock: writers of all processes are serialised here.
//   3. Catch up: if STORE or STORE.log on disk is not what we serve (another process
//      committed or merged), read what is new, check it, and serve it from now on.
//   4. Apply each batch to an Overlay on the served version; a batch that fails validation
//      is answered with its error and leaves no trace.
//   5. Either (the usual case) append one record with every changed key's new state to
//      STORE.log and fdatasync it; or, for a batch as big as the merge threshold, for a
//      delta the merge cannot keep up with and for a version-1/2 base, write a whole new
//      table (STORE.tmp-<pid>-<n>, fsync, rename over STORE, fsync the directory) and
//      remove STORE.log, whose records the new table holds. A failure fails exactly the
//      batches of this commit: a failed append is cut off again (truncate), a failed table
//      is removed; the served version is untouched and the committer goes on.
//   6. Publish the new version (one atomic pointer store), unlock, tell the change
//      listener, then answer the batches.
// Durable state: STORE always names a complete, fsynced table; STORE.log, when present,
// holds records whose generations rise by one; those not above STORE's generation are
// already in it and skipped. A crash anywhere leaves the last answered commit or a later
// one; a record torn by a crash is the log's last and is dropped (it was never answered).
//
// Merge (the merger thread, when the delta holds merge_threshold keys):
//   1. Without locks: write the served version V (base + delta) into a new table file and
//      fsync it. Commits and reads go on meanwhile.
//   2. Under the store lock: catch up; if STORE is no longer V's base (another process
//      merged), drop the file. Else rename it over STORE and fsync the directory (the log's
//      records up to V are now skipped), then write a new STORE.log holding only the
//      records after V (temp, fsync, rename, fsync the directory; none: remove it), and
//      serve the new base with those records as its delta: same generation, same content.
//   A crash between the steps leaves a new table with an old log, which reads the same.
//
// Old tables are retired on the committer: freeing a file's blocks costs ~1-2 ms on
// ext4 with online discard, which must not land on a reader's thread. The file STORE named
// before a whole-table commit is kept as a spare (STORE.old-*, linked before the rename) and
// rewritten in place by a later one once no process maps it: readers hold flock(LOCK_SH)
// on the table they map, the committer recycles only a spare it can lock exclusively, and
// never the file STORE names.
#include "snapshot/engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <optional>
#include <thread>

#include "atomic_shared_ptr.h"
#include "failpoint.h"
#include "file_util.h"
#include "format.h"
#include "keyfs/base/mutex.h"
#include "keyfs/store/snapshot.h"
#include "publish.h"
#include "snapshot/commit_log.h"
#include "snapshot/delta.h"
#include "snapshot/overlay.h"
#include "snapshot/table_builder.h"
#include "snapshot/view.h"
#include "store_watcher.h"

namespace keyfs {
namespace {

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
Status ReadAt(int fd, uint64_t off, uint64_t len, std::string* out, const std::string& path) {
  out->resize(len);
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, out->data() + done, len - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  out->resize(done);
  return Status::OK();
}

// The largest commit log a reader loads: far above what the merge thresholds let a log grow
// to, so only a damaged or hostile file reaches it.
constexpr uint64_t kMaxLogBytes = uint64_t{8} << 30;
// A commit whose record would be bigger than this writes a whole table instead.
constexpr uint64_t kMaxRecordBytes = uint64_t{16} << 20;
// The default merge threshold: the delta is merged once it holds this many keys or one
// eighth of the base's entry count, whichever is more; and once it holds this many bytes
// of keys and values, or a quarter of the base file's size, whichever is more.
constexpr uint64_t kMinMergeKeys = 16384;
constexpr uint64_t kMinMergeBytes = uint64_t{64} << 20;

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

  ~SnapshotEngineImpl() override {
    {
      MutexLock l(&mu_);
      stopping_ = true;
    }
    cv_.NotifyAll();
    if (committer_.joinable()) committer_.join();
    {
      MutexLock l(&merge_mu_);
      merge_stopping_ = true;
    }
    merge_cv_.NotifyAll();
    if (merger_.joinable()) merger_.join();
    watcher_.reset();
    // Spares speed up commits while the store is open; closed, they would double its
    // disk use for nothing. Unlinking is safe for a process still mapping one. Our list
    // holds other processes' spares too (RemoveStaleTemps), and another writer may be
    // rewriting one of them right now, to rename it over STORE: only under the store lock
    // is none of them in use.
    MutexLock pl(&publish_mu_);
    if (!spares_.empty()) {
      FlockGuard lock(lock_fd_);
      if (lock.Lock().ok()) {
        for (const std::string& name : spares_) (void)env_->RemoveFile(name);
      }
    }
    CloseLog();
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  Status Init(bool watch) {
    {
      MutexLock pl(&publish_mu_);
      auto v = LoadFromDisk(0, nullptr);
      if (!v.ok()) return v.status();
      current_.Exchange(*v);
    }
    if (!read_only_) {
      lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (lock_fd_ < 0) return Status::FromErrno(errno, "open lock file " + lock_path_);
      {
        MutexLock pl(&publish_mu_);
        RemoveStaleTemps();
      }
      KEYFS_RETURN_IF_ERROR(UpgradeIfOld());
      committer_ = std::thread([this] { CommitterLoop(); });
      merger_ = std::thread([this] { MergerLoop(); });
      MaybeStartMerge(*View());
    }
    if (watch) {
      auto w = StoreWatcher::Start(path_,
                                   [this](bool changed) {
                                     if (changed) (void)Refresh();
                                     ReapRetired();
                                   },
                                   {FileName(log_path_)});
      if (!w.ok()) return w.status();
      watcher_ = std::move(*w);
    }
    return Status::OK();
  }

  std::string_view name() const override { return "snapshot"; }

  ViewRef View() const { return current_.Load(); }
  TableRef Current() const override { return View()->base(); }

  StatusOr<Record> Get(std::string_view key) const override { return Find(key, true); }
  StatusOr<Record> GetInDirectory(std::string_view key) const override { return Find(key, false); }

  // Get; with `why_missing`, a miss looks at the ancestors to tell NotDirectory from
  // NotFound.
  StatusOr<Record> Find(std::string_view key, bool why_missing) const {
    KEYFS_RETURN_IF_ERROR(ValidateKey(key, /*allow_root=*/true));
    ViewRef v = View();
    if (key.empty()) return Record{v->root(), v->root_version(), {}, nullptr};
    EntryRef e;
    Status s = v->Find(key, &e);
    if (s.IsNotFound()) return why_missing ? MissingReason(*v, key) : s;
    if (!s.ok()) return s;
    return Record{e.meta, e.version, e.value, std::move(v)};
  }

  Status List(std::string_view dir, std::string_view start_after, const ListFn& fn) const override {
    KEYFS_RETURN_IF_ERROR(ValidateKey(dir, /*allow_root=*/true));
    ViewRef v = View();
    if (!dir.empty()) {
      EntryRef e;
      Status s = v->Find(dir, &e);
      if (s.IsNotFound()) return MissingReason(*v, dir);
      if (!s.ok()) return s;
      if (e.meta.type != EntryType::kDir) return Status::NotDirectory();
    }
    return v->ListChildren(dir, start_after, fn);
  }

  Status Commit(const Batch& batch) override {
    if (read_only_) return Status::ReadOnly("store opened read-only");
    if (batch.empty()) return Status::OK();
    Pending p{&batch, Status(), false};
    MutexLock l(&mu_);
    if (stopping_) return Status::IOError("engine is shutting down");
    queue_.push_back(&p);
    cv_.NotifyAll();
    done_cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return p.done; });
    return std::move(p.result);
  }

  Status Sync() override { return Status::OK(); }  // every commit is durable when answered

  Status Refresh() override EXCLUDES(publish_mu_) {
    MutexLock l(&publish_mu_);
    return CatchUp(/*notify=*/true);
  }

  EngineStats Stats() const override {
    ViewRef v = View();
    const TableRef& t = v->base();
    EngineStats s;
    s.engine = "snapshot";
    s.format_version = t->format_version();
    CountTypes(t, &s);
    const ViewCounts& c = v->counts();  // the delta's changes to the base's counts
    s.entries = t->entry_count() + c.entries;
    s.files += c.files;
    s.dirs += c.dirs;
    s.symlinks += c.symlinks;
    s.value_bytes = t->value_bytes() + c.value_bytes;
    const uint64_t log_bytes = log_bytes_.load(std::memory_order_relaxed);
    s.file_bytes = t->file_size() + log_bytes;
    s.generation = v->generation();
    s.commits = commits_.load(std::memory_order_relaxed);
    s.commit_errors = commit_errors_.load(std::memory_order_relaxed);
    s.rebuilds = rebuilds_.load(std::memory_order_relaxed);
    s.external_reloads = external_reloads_.load(std::memory_order_relaxed);
    s.last_commit_ns = v->commit_time_ns();
    s.last_commit_duration_ns = last_commit_duration_ns_.load(std::memory_order_relaxed);
    // Every commit is durable when it returns: a commit is a sync.
    s.syncs = durable_writes_.load(std::memory_order_relaxed);
    s.sync_errors = s.commit_errors;
    s.last_sync_ns = s.last_commit_ns;
    s.last_sync_duration_ns = s.last_commit_duration_ns;
    s.bloom_fp_estimate = t->bloom_fp_estimate();
    s.delta_keys = v->delta_keys();
    s.merges = merges_.load(std::memory_order_relaxed);
    s.merge_errors = merge_errors_.load(std::memory_order_relaxed);
    s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
    s.bytes_committed = bytes_committed_.load(std::memory_order_relaxed);
    s.extra.emplace_back("base table generation", std::to_string(t->generation()));
    s.extra.emplace_back("base table bytes", std::to_string(t->file_size()));
    s.extra.emplace_back("commit log bytes", std::to_string(log_bytes));
    s.extra.emplace_back("delta keys", std::to_string(v->delta_keys()));
    s.extra.emplace_back("merge threshold keys", std::to_string(MergeKeys(*t)));
    s.extra.emplace_back("hash slots", std::to_string(t->slot_count()));
    s.extra.emplace_back("bloom bits", std::to_string(t->bloom_bits()));
    s.extra.emplace_back("bloom k", std::to_string(t->bloom_k()));
    return s;
  }

  void SetChangeListener(ChangeListener listener) override {
    MutexLock l(&listener_mu_);
    listener_ = std::move(listener);
  }

  Status WaitForMerges() override {
    MutexLock l(&merge_mu_);
    merge_idle_cv_.Wait(&merge_mu_, [&]() REQUIRES(merge_mu_) {
      return merge_stopping_ || (!merge_wanted_ && !merging_);
    });
    return last_merge_status_;
  }

  // For VerifySnapshotStore: where the intact records of the commit log end, and its size.
  std::pair<uint64_t, uint64_t> LogExtent() EXCLUDES(publish_mu_) {
    MutexLock pl(&publish_mu_);
    if (log_fd_ < 0) return {0, 0};
    struct stat st;
    if (::fstat(log_fd_, &st) != 0) return {log_end_, log_end_};
    return {log_end_, static_cast<uint64_t>(st.st_size)};
  }

  Status Merge() override {
    if (read_only_) return Status::ReadOnly("store opened read-only");
    {
      MutexLock l(&merge_mu_);
      merge_wanted_ = true;
      merge_forced_ = true;
    }
    merge_cv_.NotifyAll();
    return WaitForMerges();
  }

 private:
  // A Commit call waiting for the committer: `result` is written by the committer before
  // it sets `done` under mu_, and read by the caller once it sees `done`.
  struct Pending {
    const Batch* batch;
    Status result;
    bool done = false;  // mu_
  };

  // NotDirectory if an ancestor of `key` is a file or symlink, else NotFound.
  static Status MissingReason(const SnapshotView& v, std::string_view key) {
    EntryRef e;
    for (std::string_view a = ParentKey(key); !a.empty(); a = ParentKey(a)) {
      Status s = v.Find(a, &e);
      if (s.ok()) {
        if (e.meta.type != EntryType::kDir) return Status::NotDirectory();
        break;
      }
      if (!s.IsNotFound()) return s;
    }
    return Status::NotFound();
  }

  void CountTypes(const TableRef& t, EngineStats* s) const {
    MutexLock l(&count_mu_);
    if (counted_generation_ != t->generation() || counted_ino_ != t->ino()) {
      counts_[0] = counts_[1] = counts_[2] = 0;
      EntryRef e;
      for (uint64_t i = 0; i < t->entry_count(); ++i) {
        if (!t->At(i, &e).ok()) break;
        ++counts_[static_cast<int>(e.meta.type) - 1];
      }
      counted_generation_ = t->generation();
      counted_ino_ = t->ino();
    }
    s->files = counts_[0];
    s->dirs = counts_[1];
    s->symlinks = counts_[2];
  }

  uint64_t MergeKeys(const SnapshotTable& base) const {
    if (merge_keys_option_ != 0) return merge_keys_option_;
    return std::max(kMinMergeKeys, base.entry_count() / 8);
  }
  uint64_t MergeBytes(const SnapshotTable& base) const {
    return std::max(kMinMergeBytes, base.file_size() / 4);
  }

  // ---- loading and following the files ----

  // Builds the version STORE and STORE.log hold now, replacing the publisher's delta and log
  // state; does not publish it. With `changed`, fills it with the keys of the records after
  // generation `since` and returns whether they cover every change since it (false when
  // the new base table is newer than `since`: the caller must diff).
  StatusOr<ViewRef> LoadFromDisk(uint64_t since, std::vector<std::string>* changed,
                                 bool* covered = nullptr) REQUIRES(publish_mu_) {
    for (int attempt = 0;; ++attempt) {
      auto t = SnapshotTable::Open(path_);
      if (!t.ok()) return t.status();
      CloseLog();
      int fd = ::open(log_path_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 && errno != ENOENT) return Status::FromErrno(errno, "open " + log_path_);
      ResetDelta(*t);
      if (changed != nullptr) changed->clear();
      if (covered != nullptr) *covered = (*t)->generation() <= since;
      if (fd < 0) return MakeView();
      log_fd_ = fd;
      struct stat st;
      if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + log_path_);
      log_dev_ = st.st_dev;
      log_ino_ = st.st_ino;
      if (static_cast<uint64_t>(st.st_size) > kMaxLogBytes) {
        return Status::Corruption(log_path_ + ": commit log of " + std::to_string(st.st_size) +
                                  " bytes, more than any writer makes");
      }
      std::string header;
      KEYFS_RETURN_IF_ERROR(ReadAt(fd, 0, format::kLogHeaderSize, &header, log_path_));
      uint64_t log_base = 0;
      KEYFS_RETURN_IF_ERROR(ParseLogHeader(header, log_path_, &log_base));
      if (log_base > (*t)->generation()) {
        // A merge by another process replaced both files between our two opens.
        if (attempt < 5) continue;
        return Status::Corruption(log_path_ + ": commit log starts after generation " +
                                  std::to_string(log_base) + ", newer than the table's " +
                                  std::to_string((*t)->generation()));
      }
      log_end_ = format::kLogHeaderSize;
      log_bytes_.store(static_cast<uint64_t>(st.st_size), std::memory_order_relaxed);
      KEYFS_RETURN_IF_ERROR(ReadNewRecords(static_cast<uint64_t>(st.st_size), since, changed));
      return MakeView();
    }
  }

  // Reads and applies the records between log_end_ and `size`. A torn tail stops it (the
  // rest is read again later: a writer may still be writing it).
  Status ReadNewRecords(uint64_t size, uint64_t since, std::vector<std::string>* changed)
      REQUIRES(publish_mu_) {
    if (size <= log_end_) return Status::OK();
    std::string buf;
    KEYFS_RETURN_IF_ERROR(ReadAt(log_fd_, log_end_, size - log_end_, &buf, log_path_));
    std::string_view rest(buf);
    LogRecord rec;
    Status why;
    while (true) {
      const LogParse p = ParseLogRecord(rest, log_end_, log_path_, &rec, &why);
      if (p == LogParse::kEnd) break;
      if (p == LogParse::kBad) return why;
      if (p == LogParse::kTorn) {
        if (IntactRecordFollows(rest)) {
          return Status::Corruption(std::string(why.message()) +
                                    " (intact commit records follow it)");
        }
        break;
      }
      if (rec.generation > gen_) {
        if (rec.generation != gen_ + 1) {
          return Status::Corruption(log_path_ + ": commit log jumps from generation " +
                                    std::to_string(gen_) + " to " + std::to_string(rec.generation) +
                                    " at offset " + std::to_string(log_end_));
        }
        if (record_offsets_.empty() || record_offsets_.back().first < rec.generation) {
          record_offsets_.emplace_back(rec.generation, log_end_);
        }
        ApplyRecord(rec);
        if (changed != nullptr && rec.generation > since) {
          if (rec.root) changed->emplace_back();
          for (const LogEntry& e : rec.entries) changed->emplace_back(e.key);
        }
      }
      log_end_ += rec.size;
      rest.remove_prefix(rec.size);
    }
    return Status::OK();
  }

  void ResetDelta(TableRef base) REQUIRES(publish_mu_) {
    base_ = std::move(base);
    delta_ = std::make_unique<DeltaWriter>();
    adjust_ = ViewCounts();
    record_offsets_.clear();
    gen_ = base_->generation();
    auto root = base_->RootMeta();
    root_ = root.ok() ? *root : Meta::Dir();
    root_version_ = base_->root_version();
    commit_time_ = base_->commit_time_ns();
    log_bytes_.store(0, std::memory_order_relaxed);
  }

  // Adds one commit's states to the delta (its generation must be gen_ + 1).
  void ApplyRecord(const LogRecord& rec) REQUIRES(publish_mu_) {
    for (const LogEntry& e : rec.entries) {
      const uint64_t h = format::HashKey(e.key);
      // The counts move by what the key held before.
      const DeltaKey* k = delta_->index()->FindKey(e.key, h);
      const DeltaState* prev = k ? k->newest.load(std::memory_order_relaxed) : nullptr;
      if (prev != nullptr) {
        if (prev->live) adjust_.Count(prev->meta, prev->value.size(), -1);
      } else {
        EntryRef old;
        if (base_->FindHashed(e.key, h, &old).ok()) adjust_.Count(old.meta, old.value.size(), -1);
      }
      if (e.live) adjust_.Count(e.meta, e.value.size(), +1);
      DeltaState s;
      s.gen = rec.generation;
      s.live = e.live;
      s.meta = e.meta;
      s.version = e.version;
      s.value = e.value;
      delta_->Add(e.key, h, s);
    }
    if (rec.root) {
      root_ = *rec.root;
      root_version_ = rec.root_version;
    }
    gen_ = rec.generation;
    commit_time_ = rec.commit_time_ns;
  }

  ViewRef MakeView() REQUIRES(publish_mu_) {
    return std::make_shared<const SnapshotView>(base_, delta_->index(), gen_, root_, root_version_,
                                                commit_time_, adjust_, delta_->key_count());
  }

  void CloseLog() REQUIRES(publish_mu_) {
    log_writer_.reset();
    if (log_fd_ >= 0) ::close(log_fd_);
    log_fd_ = -1;
    log_dev_ = 0;
    log_ino_ = 0;
    log_end_ = 0;
  }

  // Serves what the files hold now if it is newer than what we serve. Corruption if they
  // are damaged (the current version stays served).
  Status CatchUp(bool notify) REQUIRES(publish_mu_) {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path_);
    ViewRef cur = View();
    bool reload = stale_ || st.st_dev != cur->base()->dev() || st.st_ino != cur->base()->ino();
    struct stat lst;
    const bool have_log = ::stat(log_path_.c_str(), &lst) == 0;
    if (!have_log && errno != ENOENT) return Status::FromErrno(errno, "stat " + log_path_);
    if (have_log != (log_fd_ >= 0) ||
        (have_log && (lst.st_dev != log_dev_ || lst.st_ino != log_ino_))) {
      reload = true;
    }
    std::vector<std::string> changed;
    if (reload) {
      bool covered = false;
      auto v = LoadFromDisk(cur->generation(), &changed, &covered);
      if (!v.ok()) {
        MarkStale();  // serve on what we had
        return v.status();
      }
      stale_ = false;
      // Files older than what we serve (a store restored from a backup under a running
      // mount) are served too: they are what is durable, and the diff says what changed.
      const bool same = (*v)->generation() == cur->generation();
      if ((*v)->generation() < cur->generation()) covered = false;
      Publish(*v);
      if (same) return Status::OK();  // a merge: the same content on a new base
      external_reloads_.fetch_add(1, std::memory_order_relaxed);
      if (notify) {
        if (covered) {
          NotifyKeys(cur->generation(), (*v)->generation(), std::move(changed), true);
        } else {
          NotifyDiff(*cur, **v);
        }
      }
      return Status::OK();
    }
    if (!have_log || static_cast<uint64_t>(lst.st_size) <= log_end_) return Status::OK();
    const uint64_t before = gen_;
    Status s = ReadNewRecords(static_cast<uint64_t>(lst.st_size), before, &changed);
    log_bytes_.store(static_cast<uint64_t>(lst.st_size), std::memory_order_relaxed);
    if (gen_ != before) {
      Publish(MakeView());
      external_reloads_.fetch_add(1, std::memory_order_relaxed);
      if (notify) NotifyKeys(before, gen_, std::move(changed), true);
    }
    return s;
  }

  // After a failed load the publisher's state is not the served version's: the next
  // catch-up loads the files again (until then commits fail with the load's error).
  void MarkStale() REQUIRES(publish_mu_) {
    CloseLog();
    stale_ = true;
  }

  void Publish(ViewRef v) REQUIRES(publish_mu_) {
    ViewRef old = current_.Exchange(std::move(v));
    MutexLock l(&retire_mu_);
    retired_.push_back(std::move(old));
  }

  // Drops retired versions nobody else holds, here rather than on a reader's thread.
  void ReapRetired() {
    std::vector<ViewRef> drop;
    {
      MutexLock l(&retire_mu_);
      for (auto it = retired_.begin(); it != retired_.end();) {
        if (it->use_count() == 1) {
          drop.push_back(std::move(*it));
          it = retired_.erase(it);
        } else {
          ++it;
        }
      }
    }
    drop.clear();  // munmap + close: the file's blocks are freed here
  }

  void Notify(ChangeEvent ev) {
    MutexLock l(&listener_mu_);
    if (listener_) listener_(ev);
  }

  void NotifyKeys(uint64_t from, uint64_t to, std::vector<std::string> keys, bool external) {
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    ChangeEvent ev;
    ev.old_generation = from;
    ev.new_generation = to;
    ev.external = external;
    ev.changed = std::move(keys);
    Notify(std::move(ev));
  }

  // Tells the listener what differs between two versions (keys compared with versions).
  void NotifyDiff(const SnapshotView& a, const SnapshotView& b) {
    {
      MutexLock l(&listener_mu_);
      if (!listener_) return;
    }
    ChangeEvent ev;
    ev.old_generation = a.generation();
    ev.new_generation = b.generation();
    ev.external = true;
    if (a.root() != b.root() || a.root_version() != b.root_version()) {
      ev.changed.emplace_back();  // the root ("" sorts first)
    }
    std::vector<std::pair<std::string, uint64_t>> xs, ys;
    (void)a.Scan("", [&](const EntryRef& e) {
      xs.emplace_back(std::string(e.key), e.version);
      return true;
    });
    (void)b.Scan("", [&](const EntryRef& e) {
      ys.emplace_back(std::string(e.key), e.version);
      return true;
    });
    size_t i = 0, j = 0;
    while (i < xs.size() || j < ys.size()) {
      if (j == ys.size() || (i < xs.size() && xs[i].first < ys[j].first)) {
        ev.changed.push_back(std::move(xs[i++].first));
      } else if (i == xs.size() || ys[j].first < xs[i].first) {
        ev.changed.push_back(std::move(ys[j++].first));
      } else {
        if (xs[i].second != ys[j].second) ev.changed.push_back(xs[i].first);
        ++i;
        ++j;
      }
    }
    Notify(std::move(ev));
  }

  // ---- writing ----

  // A version-1 or -2 table opened read-write is rewritten as the current version at once
  // (version 1's child counts computed; version 3 may have a commit log beside it), under
  // the store lock and published like a commit. Its commit time, and the root's metadata
  // a v1 reader implies, are kept.
  Status UpgradeIfOld() EXCLUDES(publish_mu_) {
    if (Current()->format_version() >= format::kSnapVersion) return Status::OK();
    MutexLock pl(&publish_mu_);
    FlockGuard lock(lock_fd_);
    KEYFS_RETURN_IF_ERROR(lock.Lock());
    KEYFS_RETURN_IF_ERROR(CatchUp(/*notify=*/false));
    ViewRef base = View();
    if (base->base()->format_version() >= format::kSnapVersion) return Status::OK();
    const uint64_t gen = base->generation() + 1;
    Overlay overlay(base.get(), gen, base->commit_time_ns());
    Status in_doubt;
    auto built = WriteTable(overlay, gen, base->commit_time_ns(), &in_doubt);
    if (!built.ok()) {
      return built.status().WithContext("upgrade " + path_ + " to format version " +
                                        std::to_string(format::kSnapVersion));
    }
    AdoptTable(*built);
    rebuilds_.fetch_add(1, std::memory_order_relaxed);
    return in_doubt;
  }

  void RemoveStaleTemps() REQUIRES(publish_mu_) {
    FlockGuard lock(lock_fd_);
    if (!lock.Lock().ok()) return;
    // Holding the lock, no other writer is mid-commit: every temp of ours is a leftover.
    // (A merger of another process may be writing its table without the lock: its rename
    // then fails and it drops the merge; the next one starts over.)
    const std::string prefix = FileName(path_) + ".tmp-";
    const std::string log_prefix = FileName(log_path_) + ".tmp-";  // a log being created
    const std::string spare_prefix = FileName(path_) + ".old-";
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) return;
    while (dirent* de = ::readdir(d)) {
      std::string_view n(de->d_name);
      if (n.substr(0, prefix.size()) == prefix || n.substr(0, log_prefix.size()) == log_prefix) {
        (void)env_->RemoveFile(dir_ + "/" + de->d_name);
      } else if (n.substr(0, spare_prefix.size()) == spare_prefix) {
        spares_.push_back(dir_ + "/" + de->d_name);  // recyclable
      }
    }
    ::closedir(d);
    TrimSpares();
  }

  void CommitterLoop() {
    std::vector<Pending*> group;
    while (true) {
      {
        MutexLock l(&mu_);
        cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, nothing left to answer
        group.assign(queue_.begin(), queue_.end());
        queue_.clear();
      }
      RunGroup(group);
      ReapRetired();
    }
  }

  void Answer(const std::vector<Pending*>& ps) {
    {
      MutexLock l(&mu_);
      for (Pending* p : ps) p->done = true;
    }
    done_cv_.NotifyAll();
  }

  void Fail(const std::vector<Pending*>& ps, const Status& s) {
    for (Pending* p : ps) p->result = s;
    commit_errors_.fetch_add(ps.size(), std::memory_order_relaxed);
    Answer(ps);
  }

  void RunGroup(const std::vector<Pending*>& group) EXCLUDES(publish_mu_) {
    const int64_t start = MonoNs();
    std::vector<Pending*> accepted;
    std::optional<ChangeEvent> event;
    ViewRef published;
    // Outlives the answer: freeing a bulk load's million entries is nobody's wait.
    std::unique_ptr<Overlay> overlay_owner;
    {
      MutexLock pl(&publish_mu_);
      FlockGuard lock(lock_fd_);
      Status s = lock.Lock();
      if (s.ok()) s = CatchUp(/*notify=*/true);
      if (!s.ok()) return Fail(group, s);
      ViewRef base = View();
      const uint64_t gen = base->generation() + 1;
      const int64_t now = NowNs();
      overlay_owner = std::make_unique<Overlay>(base.get(), gen, now);
      Overlay& overlay = *overlay_owner;
      std::vector<Pending*> rejected;
      for (Pending* p : group) {
        p->result = overlay.Apply(*p->batch);
        (p->result.ok() ? accepted : rejected).push_back(p);
      }
      Answer(rejected);  // validation errors change nothing; answer them at once
      if (accepted.empty()) return;

      (void)FailPoint("snapshot.commit_begin");
      Status in_doubt;
      const uint64_t committed = CommittedBytes(overlay);
      const bool whole = !log_supported_ || WholeTableWanted(*base, overlay);
      s = whole ? CommitWholeTable(overlay, gen, now, &in_doubt) : AppendToLog(overlay, gen, now);
      if (s.code() == Status::Code::kNotSupported && !whole) {
        log_supported_ = false;  // an Env that cannot append in place: whole tables only
        s = CommitWholeTable(overlay, gen, now, &in_doubt);
      }
      if (!s.ok()) return Fail(accepted, s);
      last_commit_duration_ns_.store(MonoNs() - start, std::memory_order_relaxed);
      durable_writes_.fetch_add(1, std::memory_order_relaxed);
      bytes_committed_.fetch_add(committed, std::memory_order_relaxed);
      if (in_doubt.ok()) {
        commits_.fetch_add(accepted.size(), std::memory_order_relaxed);
      } else {
        // In doubt (the directory fsync failed after the rename): the new table is what
        // STORE names, so it is served and announced, but the callers get the error.
        for (Pending* p : accepted) p->result = in_doubt;
        commit_errors_.fetch_add(accepted.size(), std::memory_order_relaxed);
      }
      {
        MutexLock l(&listener_mu_);
        if (listener_) {
          event.emplace();
          event->old_generation = base->generation();
          event->new_generation = gen;
          event->changed = overlay.ChangedKeys();
        }
      }
      published = View();
    }
    // The listener runs before the callers are released: once Commit returns, caches
    // that listen (the kernel's, via fs/) have already dropped what changed.
    if (event) Notify(std::move(*event));
    (void)FailPoint("snapshot.published");
    Answer(accepted);
    MaybeStartMerge(*published);
  }

  // Keys and values a commit changes: what write amplification is measured against.
  static uint64_t CommittedBytes(const Overlay& overlay) {
    uint64_t n = 0;
    overlay.ForEachChange([&](std::string_view key, const std::optional<Overlay::Value>& v) {
      n += key.size() + (v ? v->value.size() : 0);
    });
    return n;
  }

  bool WholeTableWanted(const SnapshotView& base, const Overlay& overlay) const {
    const SnapshotTable& t = *base.base();
    if (t.format_version() < format::kSnapVersion) return true;
    const uint64_t keys = MergeKeys(t);
    if (overlay.size() >= keys) return true;                          // a bulk load
    if (base.delta_keys() + overlay.size() >= 4 * keys) return true;  // the merge lags
    if (delta_->arena_bytes() >= 4 * MergeBytes(t)) return true;
    uint64_t bytes = 0;
    overlay.ForEachChange([&](std::string_view key, const std::optional<Overlay::Value>& v) {
      bytes += 80 + key.size() + (v ? v->value.size() : 0);
    });
    return bytes > kMaxRecordBytes;
  }

  // Appends the overlay as one record to STORE.log (created if missing), fdatasyncs it and
  // publishes the new version. On failure the record is cut off again and nothing changed.
  Status AppendToLog(const Overlay& overlay, uint64_t gen, int64_t now) REQUIRES(publish_mu_) {
    KEYFS_RETURN_IF_ERROR(OpenLogForAppend());
    LogRecordWriter w(gen, now);
    if (overlay.root_changed()) {
      auto root = overlay.Root();
      if (!root.ok()) return root.status();
      w.SetRoot(root->meta, root->version);
    }
    LogRecord rec;
    rec.generation = gen;
    rec.commit_time_ns = now;
    overlay.ForEachChange([&](std::string_view key, const std::optional<Overlay::Value>& v) {
      LogEntry e;
      e.key = key;
      if (v) {
        e.live = true;
        e.meta = v->meta;
        e.version = v->version;
        e.value = v->value;
      }
      w.Add(e);
      rec.entries.push_back(e);
    });
    if (overlay.root_changed()) {
      auto root = overlay.Root();
      rec.root = root->meta;
      rec.root_version = root->version;
    }
    const std::string bytes = w.Finish();
    rec.size = bytes.size();
    Status s = log_writer_->WriteAt(log_end_, bytes);
    if (s.ok()) s = FailPoint("snapshot.log_written");
    if (s.ok()) s = log_writer_->Sync();
    if (s.ok()) s = FailPoint("snapshot.log_synced");
    if (!s.ok()) {
      // Cut the record off, so that no reader or later open takes it for a commit; the
      // next append starts from a reopened file.
      if (log_writer_->Truncate(log_end_).ok()) (void)log_writer_->Sync();
      log_writer_.reset();
      return s;
    }
    bytes_written_.fetch_add(bytes.size(), std::memory_order_relaxed);
    record_offsets_.emplace_back(gen, log_end_);
    log_end_ += bytes.size();
    log_bytes_.store(log_end_, std::memory_order_relaxed);
    ApplyRecord(rec);
    Publish(MakeView());
    return Status::OK();
  }

  // Makes log_writer_ ready to append at log_end_, creating STORE.log if there is none.
  // NotSupported (and nothing changed) if the Env cannot reopen a file to write into it.
  Status OpenLogForAppend() REQUIRES(publish_mu_) {
    if (log_writer_) return Status::OK();
    if (log_fd_ < 0) {
      auto probe = env_->ReopenForRewrite(path_ + ".lock");
      if (!probe.ok() && probe.status().code() == Status::Code::kNotSupported) {
        return probe.status();
      }
      const uint64_t base_gen = base_->generation();
      Status s = CreateFileAtomically(env_, log_path_, [&](WritableFile* f) {
        return f->Append(EncodeLogHeader(base_gen, NowNs()));
      });
      if (!s.ok()) return s.WithContext("create commit log " + log_path_);
      bytes_written_.fetch_add(format::kLogHeaderSize, std::memory_order_relaxed);
      int fd = ::open(log_path_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return Status::FromErrno(errno, "open " + log_path_);
      struct stat st;
      if (::fstat(fd, &st) != 0) {
        ::close(fd);
        return Status::FromErrno(errno, "stat " + log_path_);
      }
      log_fd_ = fd;
      log_dev_ = st.st_dev;
      log_ino_ = st.st_ino;
      log_end_ = format::kLogHeaderSize;
      log_bytes_.store(log_end_, std::memory_order_relaxed);
    }
    auto f = env_->ReopenForRewrite(log_path_);
    if (!f.ok()) return f.status().WithContext("open commit log " + log_path_);
    struct stat st;
    if (::fstat((*f)->fd(), &st) != 0) return Status::FromErrno(errno, "stat " + log_path_);
    if (st.st_dev != log_dev_ || st.st_ino != log_ino_) {
      return Status::IOError(log_path_ + ": replaced while the store lock was held");
    }
    if (static_cast<uint64_t>(st.st_size) != log_end_) {
      // A torn record of a crashed writer, or bytes a failed append could not cut off.
      KEYFS_RETURN_IF_ERROR((*f)->Truncate(log_end_));
    }
    log_writer_ = std::move(*f);
    return Status::OK();
  }

  // Writes the overlay over the served version as a whole new table, renames it over STORE
  // and removes STORE.log; publishes the new version.
  Status CommitWholeTable(const Overlay& overlay, uint64_t gen, int64_t now, Status* in_doubt)
      REQUIRES(publish_mu_) {
    auto built = WriteTable(overlay, gen, now, in_doubt);
    if (!built.ok()) return built.status();
    AdoptTable(*built);
    rebuilds_.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  }

  // Serves `t`, just renamed over STORE and holding everything committed, with no delta,
  // and removes the commit log, whose records it holds.
  void AdoptTable(TableRef t) REQUIRES(publish_mu_) {
    if (log_fd_ >= 0) {
      if (env_->RemoveFile(log_path_).ok()) (void)env_->SyncDir(dir_);
    }
    CloseLog();
    ResetDelta(std::move(t));
    Publish(MakeView());
  }

  // Builds the merged table into a temp file and renames it over STORE. An error before
  // the rename is returned (nothing changed); a failed directory fsync after it returns
  // the new table with *in_doubt set to the error.
  // REQUIRES: the store lock held.
  StatusOr<TableRef> WriteTable(const Overlay& overlay, uint64_t gen, int64_t now, Status* in_doubt)
      REQUIRES(publish_mu_) {
    // The file to write: a recycled spare if one is free, else a fresh temp.
    std::string target;
    bool recycled = false;
    std::unique_ptr<WritableFile> file = TakeSpare(&target);
    if (file) {
      recycled = true;
    } else {
      target = path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++temp_counter_);
      auto fresh = env_->NewExclusiveFile(target);
      if (!fresh.ok()) return fresh.status();
      file = std::move(*fresh);
    }
    WritableFile* f = file.get();
    auto root = overlay.Root();
    if (!root.ok()) {
      (void)f->Close();
      if (recycled) {
        spares_.push_back(target);
      } else {
        (void)env_->RemoveFile(target);
      }
      return root.status();
    }
    Status s;
    {
      TableBuilder builder(f, gen, now, root->meta, root->version);
      s = overlay.ForEachMerged([&](std::string_view key, const Overlay::Value& v) {
        return builder.Add(key, v.meta, v.version, v.value);
      });
      if (s.ok()) s = builder.Finish();
      if (s.ok() && recycled) s = f->Truncate(builder.file_size());
      if (s.ok()) bytes_written_.fetch_add(builder.file_size(), std::memory_order_relaxed);
    }
    if (s.ok()) s = FailPoint("snapshot.table_written");
    if (s.ok()) s = f->Sync();
    if (s.ok()) s = FailPoint("snapshot.table_synced");
    // Keep the file STORE names now under a spare name: its blocks are recycled by a later
    // commit instead of freed (freeing costs 1-2 ms on ext4 with online discard).
    std::string spare =
        path_ + ".old-" + std::to_string(::getpid()) + "-" + std::to_string(++spare_counter_);
    const bool linked = s.ok() && env_->Link(path_, spare).ok();
    if (s.ok()) s = env_->Rename(target, path_);
    if (!s.ok()) {
      (void)f->Close();
      if (linked) (void)env_->RemoveFile(spare);  // STORE still names that file
      if (s.code() == Status::Code::kNoSpace) {
        // Spares hold blocks: give them back so the next commit has room.
        for (const std::string& name : spares_) (void)env_->RemoveFile(name);
        spares_.clear();
        if (recycled) {
          (void)env_->RemoveFile(target);
          return s;
        }
      }
      if (recycled) {
        spares_.push_back(target);  // its content is garbage; it is still a spare
      } else {
        (void)env_->RemoveFile(target);
      }
      return s;
    }
    if (linked) spares_.push_back(spare);
    (void)FailPoint("snapshot.renamed");
    int fd = ::dup(f->fd());
    Status sync_dir = env_->SyncDir(dir_);
    if (!sync_dir.ok()) sync_dir = env_->SyncDir(dir_);  // once more before giving up
    if (sync_dir.ok()) sync_dir = FailPoint("snapshot.dir_synced");
    (void)f->Close();
    if (fd < 0) return Status::FromErrno(errno, "dup");
    auto t = SnapshotTable::OpenFd(fd, path_);  // converts our lock to shared
    *in_doubt = std::move(sync_dir);
    TrimSpares();
    return t;
  }

  // A spare file nobody maps, opened for rewriting and locked exclusively; null if none.
  // REQUIRES: the store lock held (so STORE cannot change under the identity check).
  std::unique_ptr<WritableFile> TakeSpare(std::string* name) REQUIRES(publish_mu_) {
    struct stat store_st;
    if (::stat(path_.c_str(), &store_st) != 0) return nullptr;
    for (size_t i = 0; i < spares_.size(); ++i) {
      auto f = env_->ReopenForRewrite(spares_[i]);
      if (!f.ok()) {
        if (f.status().code() == Status::Code::kNotSupported) return nullptr;
        spares_.erase(spares_.begin() + static_cast<long>(i--));  // gone
        continue;
      }
      struct stat st;
      if (::fstat((*f)->fd(), &st) != 0 ||
          (st.st_dev == store_st.st_dev && st.st_ino == store_st.st_ino)) {
        continue;  // never rewrite the file STORE names
      }
      if (::flock((*f)->fd(), LOCK_EX | LOCK_NB) != 0) continue;  // a reader maps it
      *name = spares_[i];
      spares_.erase(spares_.begin() + static_cast<long>(i));
      return std::move(*f);
    }
    return nullptr;
  }

  // Spares beyond a few are deleted (readers kept them busy; new files were written).
  void TrimSpares() REQUIRES(publish_mu_) {
    while (spares_.size() > kMaxSpares) {
      (void)env_->RemoveFile(spares_.front());
      spares_.erase(spares_.begin());
    }
  }

  // ---- the merge ----

  void MaybeStartMerge(const SnapshotView& v) {
    if (read_only_ || v.delta_keys() == 0) return;
    const SnapshotTable& t = *v.base();
    if (v.delta_keys() < MergeKeys(t) && v.delta()->arena_bytes() < MergeBytes(t)) return;
    {
      MutexLock l(&merge_mu_);
      if (merge_wanted_ || merging_) return;
      merge_wanted_ = true;
    }
    merge_cv_.NotifyAll();
  }

  void MergerLoop() {
    while (true) {
      {
        MutexLock l(&merge_mu_);
        merge_cv_.Wait(&merge_mu_,
                       [&]() REQUIRES(merge_mu_) { return merge_stopping_ || merge_wanted_; });
        if (merge_stopping_) {
          merge_idle_cv_.NotifyAll();
          return;
        }
        merge_wanted_ = false;
        merging_ = true;
      }
      Status s = MergeOnce();
      if (!s.ok()) {
        merge_errors_.fetch_add(1, std::memory_order_relaxed);
        std::fprintf(stderr, "keyfs: merge of %s failed (commits go on in the log): %s\n",
                     path_.c_str(), s.ToString().c_str());
      }
      {
        MutexLock l(&merge_mu_);
        merging_ = false;
        merge_forced_ = false;
        last_merge_status_ = s;
      }
      merge_idle_cv_.NotifyAll();
      ReapRetired();
      if (!s.ok()) {
        // Back off before the next attempt (a full disk or a failing device).
        MutexLock l(&merge_mu_);
        (void)merge_cv_.WaitUntil(&merge_mu_,
                                  std::chrono::steady_clock::now() + std::chrono::seconds(1),
                                  [&]() REQUIRES(merge_mu_) { return merge_stopping_; });
      }
    }
  }

  // One merge of the served version into a new base table (see the top of the file).
  Status MergeOnce() EXCLUDES(publish_mu_) {
    ViewRef v = View();
    if (v->delta_keys() == 0) return Status::OK();
    std::string target;
    {
      MutexLock pl(&publish_mu_);
      target = path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++temp_counter_);
    }
    auto file = env_->NewExclusiveFile(target);
    if (!file.ok()) return file.status();
    Status s;
    uint64_t written = 0;
    {
      TableBuilder builder(file->get(), v->generation(), v->commit_time_ns(), v->root(),
                           v->root_version());
      Status added;
      s = v->Scan("", [&](const EntryRef& e) {
        added = builder.Add(e.key, e.meta, e.version, e.value);
        return added.ok();
      });
      if (s.ok()) s = added;
      if (s.ok()) s = builder.Finish();
      written = builder.file_size();
    }
    if (s.ok()) s = FailPoint("snapshot.merge_written");
    if (s.ok()) s = (*file)->Sync();
    if (s.ok()) s = FailPoint("snapshot.merge_synced");
    bytes_written_.fetch_add(written, std::memory_order_relaxed);
    if (!s.ok()) {
      (void)(*file)->Close();
      (void)env_->RemoveFile(target);
      return s;
    }
    MutexLock pl(&publish_mu_);
    FlockGuard lock(lock_fd_);
    s = lock.Lock();
    if (s.ok()) s = CatchUp(/*notify=*/true);
    // Another writer replaced the base table meanwhile (a whole-table commit or a merge of
    // its own): this merge is moot.
    const bool moot = s.ok() && View()->base() != v->base();
    if (!s.ok() || moot) {
      (void)(*file)->Close();
      (void)env_->RemoveFile(target);
      return s;
    }
    std::string spare =
        path_ + ".old-" + std::to_string(::getpid()) + "-" + std::to_string(++spare_counter_);
    const bool linked = env_->Link(path_, spare).ok();
    s = env_->Rename(target, path_);
    if (!s.ok()) {
      (void)(*file)->Close();
      if (linked) (void)env_->RemoveFile(spare);
      (void)env_->RemoveFile(target);
      return s;
    }
    if (linked) spares_.push_back(spare);
    (void)FailPoint("snapshot.merge_renamed");
    (void)(*file)->Close();
    s = env_->SyncDir(dir_);
    if (s.ok()) s = FailPoint("snapshot.merge_dir_synced");
    // From here STORE holds v; the log's records up to v are skipped. Keep only the rest.
    if (s.ok()) s = TrimLog(v->generation());
    merges_.fetch_add(1, std::memory_order_relaxed);
    TrimSpares();
    // Serve the new base: the same version, so nothing to announce.
    auto loaded = LoadFromDisk(gen_, nullptr);
    if (!loaded.ok()) {
      MarkStale();
      return loaded.status();
    }
    Publish(*loaded);
    return s;
  }

  // Replaces STORE.log by one holding only the records after generation `upto` (none:
  // removes it). REQUIRES: the store lock held, STORE's table at generation `upto`.
  Status TrimLog(uint64_t upto) REQUIRES(publish_mu_) {
    if (log_fd_ < 0) return Status::OK();
    uint64_t from = log_end_;
    for (const auto& [gen, off] : record_offsets_) {
      if (gen > upto) {
        from = off;
        break;
      }
    }
    if (from == log_end_) {
      Status s = env_->RemoveFile(log_path_);
      if (s.ok()) s = env_->SyncDir(dir_);
      CloseLog();
      return s;
    }
    std::string tail;
    KEYFS_RETURN_IF_ERROR(ReadAt(log_fd_, from, log_end_ - from, &tail, log_path_));
    KEYFS_RETURN_IF_ERROR(ReplaceFileAtomically(env_, log_path_, [&](WritableFile* f) {
      Status s = f->Append(EncodeLogHeader(upto, NowNs()));
      if (s.ok()) s = f->Append(tail);
      return s;
    }));
    bytes_written_.fetch_add(format::kLogHeaderSize + tail.size(), std::memory_order_relaxed);
    CloseLog();
    return Status::OK();
  }

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
  bool merge_forced_ GUARDED_BY(merge_mu_) = false;
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

}  // namespace

StatusOr<std::unique_ptr<Engine>> OpenSnapshotEngine(const std::string& path,
                                                     const OpenOptions& options) {
  auto e = std::make_unique<SnapshotEngineImpl>(path, options);
  KEYFS_RETURN_IF_ERROR(e->Init(options.watch));
  return std::unique_ptr<Engine>(std::move(e));
}

// Checks the tree a version holds: every entry's parent is a directory, every directory's
// count of child directories is exact.
Status VerifyTree(const SnapshotView& v, std::vector<std::string>* report) {
  struct Dir {
    uint32_t stored = 0, counted = 0;
  };
  std::map<std::string, Dir, std::less<>> dirs;
  dirs[""].stored = v.root().subdirs;
  uint64_t entries = 0;
  Status bad;
  KEYFS_RETURN_IF_ERROR(v.Scan("", [&](const EntryRef& e) {
    ++entries;
    auto parent = dirs.find(ParentKey(e.key));
    if (parent == dirs.end()) {
      bad = Status::Corruption("'" + std::string(e.key) + "': its parent is not a directory");
      return false;
    }
    if (e.meta.type == EntryType::kDir) {
      ++parent->second.counted;
      dirs[std::string(e.key)].stored = e.meta.subdirs;
    }
    return true;
  }));
  KEYFS_RETURN_IF_ERROR(bad);
  for (const auto& [name, d] : dirs) {
    if (d.stored != d.counted) {
      return Status::Corruption("directory '" + name + "' says " + std::to_string(d.stored) +
                                " child directories, has " + std::to_string(d.counted));
    }
  }
  if (report) {
    report->push_back("tree with the commit log applied: ok, " + std::to_string(entries) +
                      " entries, " + std::to_string(dirs.size()) + " directories with the root");
  }
  return Status::OK();
}

Status VerifySnapshotStore(const std::string& path, std::vector<std::string>* report) {
  auto t = SnapshotTable::Open(path);
  if (!t.ok()) return t.status();
  if (report) {
    report->push_back("engine: snapshot, format version " + std::to_string((*t)->format_version()) +
                      ", base table generation " + std::to_string((*t)->generation()));
    report->push_back("header: ok, " + std::to_string((*t)->file_size()) + " bytes");
  }
  KEYFS_RETURN_IF_ERROR((*t)->VerifyAll(report));
  if (::access((path + ".log").c_str(), F_OK) != 0) {
    if (report) report->push_back("commit log: none");
    return Status::OK();
  }
  // Opening read-only reads the whole log: header, every record's checksum and rules, the
  // generations' sequence. Then the version it builds must be a sound tree.
  OpenOptions o;
  o.read_only = true;
  SnapshotEngineImpl engine(path, o);
  KEYFS_RETURN_IF_ERROR(engine.Init(/*watch=*/false));
  ViewRef v = engine.View();
  const auto [end, size] = engine.LogExtent();
  if (report) {
    report->push_back("commit log: ok, " + std::to_string(end) +
                      " bytes of records up to generation " + std::to_string(v->generation()) +
                      ", " + std::to_string(v->delta_keys()) +
                      " keys changed since the base table");
    if (size > end) {
      report->push_back("commit log: " + std::to_string(size - end) +
                        " bytes after the last intact record (a commit a crash cut short, never "
                        "acknowledged; the next writer cuts them off)");
    }
  }
  return VerifyTree(*v, report);
}

Status CreateSnapshotStore(const std::string& path, Env* env) {
  return CreateFileAtomically(env ? env : Env::Default(), path, [](WritableFile* f) {
    const int64_t now = NowNs();
    Meta root = Meta::Dir(0755);
    root.uid = ::geteuid();
    root.gid = ::getegid();
    root.mtime_ns = root.ctime_ns = root.atime_ns = now;
    TableBuilder builder(f, 1, now, root, 0);
    return builder.Finish();
  });
}

}  // namespace keyfs
