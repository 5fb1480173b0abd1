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
//
// This file: construction, the read path, the commit queue and the factory functions.
// follow.cc loads and follows the files, write.cc holds the two commit paths, merge.cc the
// merge; engine_impl.h declares the class they share.
#include "snapshot/engine.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <optional>

#include "failpoint.h"
#include "format.h"
#include "publish.h"
#include "snapshot/engine_impl.h"
#include "snapshot/table_builder.h"

namespace keyfs {

SnapshotEngineImpl::~SnapshotEngineImpl() {
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

Status SnapshotEngineImpl::Init(bool watch) {
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

StatusOr<Record> SnapshotEngineImpl::Find(std::string_view key, bool why_missing) const {
  KEYFS_RETURN_IF_ERROR(ValidateKey(key, /*allow_root=*/true));
  ViewRef v = View();
  if (key.empty()) return Record{v->root(), v->root_version(), {}, nullptr};
  EntryRef e;
  Status s = v->Find(key, &e);
  if (s.IsNotFound()) return why_missing ? MissingReason(*v, key) : s;
  if (!s.ok()) return s;
  return Record{e.meta, e.version, e.value, std::move(v)};
}

Status SnapshotEngineImpl::List(std::string_view dir, std::string_view start_after,
                                const ListFn& fn) const {
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

Status SnapshotEngineImpl::Commit(const Batch& batch) {
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

Status SnapshotEngineImpl::Refresh() {
  MutexLock l(&publish_mu_);
  return CatchUp(/*notify=*/true);
}

EngineStats SnapshotEngineImpl::Stats() const {
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

void SnapshotEngineImpl::SetChangeListener(ChangeListener listener) {
  MutexLock l(&listener_mu_);
  listener_ = std::move(listener);
}

std::pair<uint64_t, uint64_t> SnapshotEngineImpl::LogExtent() {
  MutexLock pl(&publish_mu_);
  if (log_fd_ < 0) return {0, 0};
  struct stat st;
  if (::fstat(log_fd_, &st) != 0) return {log_end_, log_end_};
  return {log_end_, static_cast<uint64_t>(st.st_size)};
}

Status SnapshotEngineImpl::MissingReason(const SnapshotView& v, std::string_view key) {
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

void SnapshotEngineImpl::CountTypes(const TableRef& t, EngineStats* s) const {
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

void SnapshotEngineImpl::CommitterLoop() {
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

void SnapshotEngineImpl::Answer(const std::vector<Pending*>& ps) {
  {
    MutexLock l(&mu_);
    for (Pending* p : ps) p->done = true;
  }
  done_cv_.NotifyAll();
}

void SnapshotEngineImpl::Fail(const std::vector<Pending*>& ps, const Status& s) {
  for (Pending* p : ps) p->result = s;
  commit_errors_.fetch_add(ps.size(), std::memory_order_relaxed);
  Answer(ps);
}

void SnapshotEngineImpl::RunGroup(const std::vector<Pending*>& group) {
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

StatusOr<std::unique_ptr<Engine>> OpenSnapshotEngine(const std::string& path,
                                                     const OpenOptions& options) {
  auto e = std::make_unique<SnapshotEngineImpl>(path, options);
  KEYFS_RETURN_IF_ERROR(e->Init(options.watch));
  return std::unique_ptr<Engine>(std::move(e));
}

// Checks the tree a version holds: every entry's parent is a directory, every directory's
// count of child directories is exact.
static Status VerifyTree(const SnapshotView& v, std::vector<std::string>* report) {
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
  if (env == nullptr) env = Env::Default();
  // A commit log without its table is an orphan of a store removed by hand: its records
  // would be replayed onto the new table (both start at generation 1). It goes first, and
  // durably, before the new table can appear beside it.
  const std::string log = path + ".log";
  if (::access(path.c_str(), F_OK) != 0 && ::access(log.c_str(), F_OK) == 0) {
    KEYFS_RETURN_IF_ERROR(env->RemoveFile(log));
    KEYFS_RETURN_IF_ERROR(env->SyncDir(DirName(path)));
  }
  return CreateFileAtomically(env, path, [](WritableFile* f) {
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
