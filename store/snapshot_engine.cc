// The snapshot engine: lock-free reads from an immutable table; writes through one
// committer thread that rebuilds the table per group of batches.
//
// Commit protocol (one iteration of the committer):
//   1. Take every queued batch (group commit: batches that arrive while a rebuild runs
//      wait for the next iteration and share it).
//   2. flock(LOCK_EX) STORE.lock: writers of all processes are serialised here.
//   3. If STORE on disk is not the table we serve (another process committed), open the
//      newest file, check it, and serve it from now on.
//   4. Apply each batch to an Overlay on that base; a batch that fails validation is
//      answered with its error and leaves no trace.
//   5. Write STORE.tmp-<pid>-<n> (O_EXCL), header last; fsync; rename over STORE; fsync
//      the directory. Any failure here fails exactly the batches of this rebuild: the temp
//      is removed, STORE and the served table are untouched, the committer goes on.
//      (A failed directory fsync after the rename leaves the outcome in doubt, as in any
//      filesystem: the batches get the error; the new file, which STORE now names, is
//      served and announced to the listener like any other commit.)
//   6. Publish the new table (one atomic pointer store), unlock, tell the change listener,
//      then answer the batches.
// Durable state: STORE always names a complete, fsynced table; a crash between 5's
// rename and its directory fsync leaves either the old or the new table.
//
// Old tables are retired on the committer: freeing a file's blocks costs ~1-2 ms on
// ext4 with online discard, which must not land on a reader's thread. Better still, the
// file STORE named before a commit is kept as a spare (STORE.old-*, linked before the
// rename) and rewritten in place by a later commit once no process maps it: readers hold
// flock(LOCK_SH) on the table they map, the committer recycles only a spare it can lock
// exclusively, and never the file STORE names.
#include "snapshot_engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <deque>
#include <optional>
#include <thread>

#include "atomic_shared_ptr.h"
#include "failpoint.h"
#include "file_util.h"
#include "format.h"
#include "keyfs/base/mutex.h"
#include "keyfs/store/snapshot.h"
#include "overlay.h"
#include "publish.h"
#include "store_watcher.h"
#include "table_builder.h"

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

class SnapshotEngineImpl final : public SnapshotEngine {
 public:
  SnapshotEngineImpl(std::string path, const OpenOptions& o)
      : path_(std::move(path)),
        dir_(DirName(path_)),
        lock_path_(path_ + ".lock"),
        env_(o.env ? o.env : Env::Default()),
        read_only_(o.read_only) {}

  ~SnapshotEngineImpl() override {
    {
      MutexLock l(&mu_);
      stopping_ = true;
    }
    cv_.NotifyAll();
    if (committer_.joinable()) committer_.join();
    watcher_.reset();
    // Spares speed up commits while the store is open; closed, they would double its
    // disk use for nothing. Unlinking is safe for a process still mapping one. Our list
    // holds other processes' spares too (RemoveStaleTemps), and another writer may be
    // rewriting one of them right now, to rename it over STORE: only under the store lock
    // is none of them in use.
    if (!spares_.empty()) {
      FlockGuard lock(lock_fd_);
      if (lock.Lock().ok()) {
        for (const std::string& name : spares_) (void)env_->RemoveFile(name);
      }
    }
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  Status Init(bool watch) {
    auto t = SnapshotTable::Open(path_);
    if (!t.ok()) return t.status();
    current_.Exchange(*t);
    if (!read_only_) {
      lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (lock_fd_ < 0) return Status::FromErrno(errno, "open lock file " + lock_path_);
      {
        MutexLock pl(&publish_mu_);
        RemoveStaleTemps();
      }
      KEYFS_RETURN_IF_ERROR(UpgradeIfOld());
      committer_ = std::thread([this] { CommitterLoop(); });
    }
    if (watch) {
      auto w = StoreWatcher::Start(path_, [this](bool changed) {
        if (changed) (void)Refresh();
        ReapRetired();
      });
      if (!w.ok()) return w.status();
      watcher_ = std::move(*w);
    }
    return Status::OK();
  }

  std::string_view name() const override { return "snapshot"; }

  TableRef Current() const override { return current_.Load(); }

  StatusOr<Record> Get(std::string_view key) const override { return Find(key, true); }
  StatusOr<Record> GetInDirectory(std::string_view key) const override { return Find(key, false); }

  // Get; with `why_missing`, a miss looks at the ancestors to tell NotDirectory from
  // NotFound.
  StatusOr<Record> Find(std::string_view key, bool why_missing) const {
    KEYFS_RETURN_IF_ERROR(ValidateKey(key, /*allow_root=*/true));
    TableRef t = Current();
    if (key.empty()) {  // the root: its metadata is in the table's header
      auto m = t->RootMeta();
      if (!m.ok()) return m.status();
      return Record{*m, t->root_version(), {}, nullptr};
    }
    EntryRef e;
    Status s = t->Find(key, &e);
    if (s.IsNotFound()) return why_missing ? MissingReason(*t, key) : s;
    if (!s.ok()) return s;
    return Record{e.meta, e.version, e.value, std::move(t)};
  }

  Status List(std::string_view dir, std::string_view start_after, const ListFn& fn) const override {
    KEYFS_RETURN_IF_ERROR(ValidateKey(dir, /*allow_root=*/true));
    TableRef t = Current();
    if (!dir.empty()) {
      EntryRef e;
      Status s = t->Find(dir, &e);
      if (s.IsNotFound()) return MissingReason(*t, dir);
      if (!s.ok()) return s;
      if (e.meta.type != EntryType::kDir) return Status::NotDirectory();
    }
    return t->ListChildren(dir, start_after, fn);
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
    return RefreshLocked(/*notify=*/true);
  }

  EngineStats Stats() const override {
    TableRef t = Current();
    EngineStats s;
    s.engine = "snapshot";
    s.format_version = t->format_version();
    s.entries = t->entry_count();
    CountTypes(t, &s);
    s.value_bytes = t->value_bytes();
    s.file_bytes = t->file_size();
    s.generation = t->generation();
    s.commits = commits_.load(std::memory_order_relaxed);
    s.commit_errors = commit_errors_.load(std::memory_order_relaxed);
    s.rebuilds = rebuilds_.load(std::memory_order_relaxed);
    s.external_reloads = external_reloads_.load(std::memory_order_relaxed);
    s.last_commit_ns = t->commit_time_ns();
    s.last_commit_duration_ns = last_commit_duration_ns_.load(std::memory_order_relaxed);
    // Every commit is durable when it returns: a commit is a sync.
    s.syncs = s.rebuilds;
    s.sync_errors = s.commit_errors;
    s.last_sync_ns = s.last_commit_ns;
    s.last_sync_duration_ns = s.last_commit_duration_ns;
    s.bloom_fp_estimate = t->bloom_fp_estimate();
    s.extra.emplace_back("hash slots", std::to_string(t->slot_count()));
    s.extra.emplace_back("bloom bits", std::to_string(t->bloom_bits()));
    s.extra.emplace_back("bloom k", std::to_string(t->bloom_k()));
    return s;
  }

  void SetChangeListener(ChangeListener listener) override {
    MutexLock l(&listener_mu_);
    listener_ = std::move(listener);
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
  static Status MissingReason(const SnapshotTable& t, std::string_view key) {
    EntryRef e;
    for (std::string_view a = ParentKey(key); !a.empty(); a = ParentKey(a)) {
      Status s = t.Find(a, &e);
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

  // A version-1 table opened read-write is rewritten as version 2 at once (every
  // directory's child count computed), under the store lock and published like a commit.
  // Its commit time, and the root's metadata a v1 reader implies, are kept.
  Status UpgradeIfOld() EXCLUDES(publish_mu_) {
    if (Current()->format_version() >= format::kSnapVersion) return Status::OK();
    MutexLock pl(&publish_mu_);
    FlockGuard lock(lock_fd_);
    KEYFS_RETURN_IF_ERROR(lock.Lock());
    KEYFS_RETURN_IF_ERROR(RefreshLocked(/*notify=*/false));
    TableRef base = Current();
    if (base->format_version() >= format::kSnapVersion) return Status::OK();  // another did
    const uint64_t gen = base->generation() + 1;
    Overlay overlay(base.get(), gen, base->commit_time_ns());
    Status in_doubt;
    auto built = WriteTable(overlay, gen, base->commit_time_ns(), &in_doubt);
    if (!built.ok()) return built.status().WithContext("upgrade " + path_ + " to format version 2");
    Publish(*built);
    rebuilds_.fetch_add(1, std::memory_order_relaxed);
    return in_doubt;
  }

  void RemoveStaleTemps() REQUIRES(publish_mu_) {
    FlockGuard lock(lock_fd_);
    if (!lock.Lock().ok()) return;
    // Holding the lock, no other writer is mid-commit: every temp of ours is a leftover.
    const std::string prefix = FileName(path_) + ".tmp-";
    const std::string spare_prefix = FileName(path_) + ".old-";
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) return;
    while (dirent* de = ::readdir(d)) {
      std::string_view n(de->d_name);
      if (n.substr(0, prefix.size()) == prefix) {
        (void)env_->RemoveFile(dir_ + "/" + de->d_name);
      } else if (n.substr(0, spare_prefix.size()) == spare_prefix) {
        spares_.push_back(dir_ + "/" + de->d_name);  // recyclable
      }
    }
    ::closedir(d);
    TrimSpares();
  }

  // Serves the file STORE names now if it is not the current table. Corruption if that
  // file is damaged (the current table stays served).
  Status RefreshLocked(bool notify) REQUIRES(publish_mu_) {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path_);
    TableRef cur = Current();
    if (st.st_dev == cur->dev() && st.st_ino == cur->ino()) return Status::OK();
    auto t = SnapshotTable::Open(path_);
    if (!t.ok()) return t.status();
    if (t.value()->generation() < cur->generation()) return Status::OK();  // raced an older one
    Publish(*t);
    external_reloads_.fetch_add(1, std::memory_order_relaxed);
    if (notify) NotifyDiff(cur, *t);
    return Status::OK();
  }

  void Publish(TableRef t) REQUIRES(publish_mu_) {
    TableRef old = current_.Exchange(std::move(t));
    MutexLock l(&retire_mu_);
    retired_.push_back(std::move(old));
  }

  // Drops retired tables nobody else holds, here rather than on a reader's thread.
  void ReapRetired() {
    std::vector<TableRef> drop;
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

  // Tells the listener what differs between two tables (keys compared with versions).
  void NotifyDiff(const TableRef& a, const TableRef& b) {
    {
      MutexLock l(&listener_mu_);
      if (!listener_) return;
    }
    ChangeEvent ev;
    ev.old_generation = a->generation();
    ev.new_generation = b->generation();
    ev.external = true;
    auto ra = a->RootMeta(), rb = b->RootMeta();
    if (!ra.ok() || !rb.ok() || *ra != *rb || a->root_version() != b->root_version()) {
      ev.changed.emplace_back();  // the root ("" sorts first)
    }
    uint64_t i = 0, j = 0;
    EntryRef x, y;
    while (i < a->entry_count() || j < b->entry_count()) {
      bool hx = i < a->entry_count() && a->At(i, &x).ok();
      bool hy = j < b->entry_count() && b->At(j, &y).ok();
      if (!hx && !hy) break;
      if (hx && (!hy || x.key < y.key)) {
        ev.changed.emplace_back(x.key);
        ++i;
      } else if (hy && (!hx || y.key < x.key)) {
        ev.changed.emplace_back(y.key);
        ++j;
      } else {
        if (x.version != y.version) ev.changed.emplace_back(x.key);
        ++i;
        ++j;
      }
    }
    Notify(std::move(ev));
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

  void RunGroup(const std::vector<Pending*>& group) EXCLUDES(publish_mu_) {
    const int64_t start = MonoNs();
    std::vector<Pending*> accepted;
    std::optional<ChangeEvent> event;
    {
      MutexLock pl(&publish_mu_);
      FlockGuard lock(lock_fd_);
      Status s = lock.Lock();
      if (s.ok()) s = RefreshLocked(/*notify=*/true);
      if (!s.ok()) {
        for (Pending* p : group) p->result = s;
        commit_errors_.fetch_add(group.size(), std::memory_order_relaxed);
        Answer(group);
        return;
      }
      TableRef base = Current();
      const uint64_t gen = base->generation() + 1;
      const int64_t now = NowNs();
      Overlay overlay(base.get(), gen, now);
      std::vector<Pending*> rejected;
      for (Pending* p : group) {
        p->result = overlay.Apply(*p->batch);
        (p->result.ok() ? accepted : rejected).push_back(p);
      }
      Answer(rejected);  // validation errors change nothing; answer them at once
      if (accepted.empty()) return;

      // A version-1 base needs nothing special: its lookups count the child directories
      // the new table stores.
      Status failure;
      (void)FailPoint("snapshot.commit_begin");
      auto built = WriteTable(overlay, gen, now, &failure);
      if (!built.ok()) {
        for (Pending* p : accepted) p->result = built.status();
        commit_errors_.fetch_add(accepted.size(), std::memory_order_relaxed);
        Answer(accepted);
        return;
      }
      Publish(*built);
      rebuilds_.fetch_add(1, std::memory_order_relaxed);
      last_commit_duration_ns_.store(MonoNs() - start, std::memory_order_relaxed);
      if (failure.ok()) {
        commits_.fetch_add(accepted.size(), std::memory_order_relaxed);
      } else {
        // In doubt (the directory fsync failed after the rename): the new table is what
        // STORE names, so it is served and announced, but the callers get the error.
        for (Pending* p : accepted) p->result = failure;
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
    }
    // The listener runs before the callers are released: once Commit returns, caches
    // that listen (the kernel's, via fs/) have already dropped what changed.
    if (event) Notify(std::move(*event));
    (void)FailPoint("snapshot.published");
    Answer(accepted);
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

  const std::string path_, dir_, lock_path_;
  Env* const env_;
  const bool read_only_;
  int lock_fd_ = -1;  // set by Init, before other threads start

  AtomicSharedPtr<const SnapshotTable> current_;

  // Lock order: publish_mu_ -> (flock) -> mu_ / retire_mu_ / listener_mu_ / count_mu_.
  Mutex publish_mu_;  // serialises changes of current_ (committer, watcher)
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

  Mutex retire_mu_ ACQUIRED_AFTER(publish_mu_);
  std::vector<TableRef> retired_ GUARDED_BY(retire_mu_);

  Mutex listener_mu_ ACQUIRED_AFTER(publish_mu_);
  ChangeListener listener_ GUARDED_BY(listener_mu_);

  std::unique_ptr<StoreWatcher> watcher_;

  mutable Mutex count_mu_ ACQUIRED_AFTER(publish_mu_);
  mutable uint64_t counts_[3] GUARDED_BY(count_mu_) = {};
  mutable uint64_t counted_generation_ GUARDED_BY(count_mu_) = ~uint64_t{0};
  mutable ino_t counted_ino_ GUARDED_BY(count_mu_) = 0;

  std::atomic<uint64_t> commits_{0}, commit_errors_{0}, rebuilds_{0}, external_reloads_{0};
  std::atomic<int64_t> last_commit_duration_ns_{0};
};

}  // namespace

StatusOr<std::unique_ptr<Engine>> OpenSnapshotEngine(const std::string& path,
                                                     const OpenOptions& options) {
  auto e = std::make_unique<SnapshotEngineImpl>(path, options);
  KEYFS_RETURN_IF_ERROR(e->Init(options.watch));
  return std::unique_ptr<Engine>(std::move(e));
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
