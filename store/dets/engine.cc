// The dets engine: a DetsPlus-style hash file (FORMAT.md §3) under an in-memory write
// buffer; see dets_engine_impl.h for the served state and the pieces. This file: opening,
// the writer lock, stale temps, following another writer's syncs (read-only engines),
// stats, and the store-level functions of dets_engine.h.
#include "dets/engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "dets/engine_impl.h"
#include "dets/merge.h"
#include "file_util.h"
#include "publish.h"

namespace keyfs {
namespace dets {

DetsEngineImpl::~DetsEngineImpl() {
  {
    MutexLock l(&sync_mu_);
    stopping_ = true;
  }
  sync_cv_.NotifyAll();
  done_cv_.NotifyAll();
  if (syncer_.joinable()) syncer_.join();  // the syncer's last act is a final sync
  watcher_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Status DetsEngineImpl::Init(bool watch) {
  if (!read_only_) KEYFS_RETURN_IF_ERROR(TakeWriterLock());
  auto f = DetsFile::Open(path_);
  if (!f.ok()) return f.status();
  version_.store((*f)->last_version());
  {
    WriterMutexLock l(&mu_);  // no other thread yet: for the analysis' sake
    file_ = *f;
    last_commit_ns_ = file_->sync_time_ns();
    PublishQuietLocked();
  }
  if (!read_only_) {
    RemoveStaleTemps();
    KEYFS_RETURN_IF_ERROR(UpgradeIfOld());
    syncer_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "dets-sync");
      SyncerLoop();
    });
  }
  if (watch && read_only_) {
    // A writer is the only one writing its store; readers follow its syncs.
    auto w = StoreWatcher::Start(path_, [this](bool changed) {
      if (changed) (void)RefreshFile(/*notify=*/true);
    });
    if (!w.ok()) return w.status();
    watcher_ = std::move(*w);
  }
  return Status::OK();
}

Status DetsEngineImpl::Refresh() {
  if (!read_only_) return Status::OK();  // the only writer: nobody else changes STORE
  return RefreshFile(/*notify=*/true);
}

EngineStats DetsEngineImpl::Stats() const {
  EngineStats s;
  s.engine = "dets";
  DetsFileRef file;
  WriteBuffer::Totals t;
  uint64_t buffered = 0, buffered_bytes = 0, frozen_layers = 0;
  {
    ReaderMutexLock l(&mu_);
    file = file_;
    auto add = [&](const WriteBuffer& b) {
      t.entries += b.totals().entries;
      t.files += b.totals().files;
      t.dirs += b.totals().dirs;
      t.symlinks += b.totals().symlinks;
      t.value_bytes += b.totals().value_bytes;
      buffered += b.nodes();
      buffered_bytes += b.bytes();
    };
    add(*active_);
    for (const BufferRef& f : frozen_) add(*f);
    frozen_layers = frozen_.size();
  }
  s.format_version = file->format_version();
  s.entries = static_cast<uint64_t>(static_cast<int64_t>(file->entry_count()) + t.entries);
  s.files = static_cast<uint64_t>(static_cast<int64_t>(file->files()) + t.files);
  s.dirs = static_cast<uint64_t>(static_cast<int64_t>(file->dirs()) + t.dirs);
  s.symlinks = static_cast<uint64_t>(static_cast<int64_t>(file->symlinks()) + t.symlinks);
  s.value_bytes = static_cast<uint64_t>(static_cast<int64_t>(file->value_bytes()) + t.value_bytes);
  s.file_bytes = file->file_size();
  s.generation = file->generation();
  s.commits = commits_.load(std::memory_order_relaxed);
  s.commit_errors = commit_errors_.load(std::memory_order_relaxed);
  s.rebuilds = syncs_.load(std::memory_order_relaxed);
  s.external_reloads = external_reloads_.load(std::memory_order_relaxed);
  {
    ReaderMutexLock l(&mu_);
    s.last_commit_ns = last_commit_ns_;
  }
  s.last_commit_duration_ns = last_commit_duration_ns_.load(std::memory_order_relaxed);
  s.buffered_writes = buffered;
  s.syncs = syncs_.load(std::memory_order_relaxed);
  s.sync_errors = sync_errors_.load(std::memory_order_relaxed);
  s.bloom_fp_estimate = file->bloom_fp_estimate();
  Status last_error;
  int64_t last_sync_ns;
  {
    MutexLock l(&sync_mu_);
    s.syncing = syncing_;
    last_error = last_error_;
    last_sync_ns = last_sync_duration_ns_;
    s.last_sync_ns = last_sync_end_ns_;
    s.last_sync_duration_ns = last_sync_duration_ns_;
  }
  if (s.last_sync_ns == 0) s.last_sync_ns = file->mtime_ns();  // none by this object yet
  auto& x = s.extra;
  x.emplace_back("entries in file", std::to_string(file->entry_count()));
  x.emplace_back("file size", std::to_string(file->file_size()));
  x.emplace_back("hash tables", "256, " + std::to_string(file->hash_slots()) + " slots");
  uint32_t min_bits = 64, max_bits = 0;
  for (uint32_t i = 0; i < format::kDetsBuckets; ++i) {
    if (file->bucket(i).count == 0) continue;
    min_bits = std::min(min_bits, file->bucket(i).slot_bits);
    max_bits = std::max(max_bits, file->bucket(i).slot_bits);
  }
  if (max_bits > 0) {
    x.emplace_back("hash table slot bits",
                   std::to_string(min_bits) + "-" + std::to_string(max_bits));
  }
  x.emplace_back("bloom bits", std::to_string(file->bloom_bits()));
  x.emplace_back("bloom k", std::to_string(file->bloom_k()));
  x.emplace_back("key index", std::to_string(file->key_blocks().size()) + " blocks, " +
                                  std::to_string(file->key_index_bytes()) + " bytes");
  if (!read_only_) {
    x.emplace_back("last sync duration", std::to_string(last_sync_ns / 1000000) + " ms");
    x.emplace_back("sync interval", interval_s_ ? std::to_string(interval_s_) + " s" : "off");
    x.emplace_back("buffer limit", std::to_string(limit_) + " bytes");
    x.emplace_back("buffered keys", std::to_string(buffered));
    x.emplace_back("buffered bytes", std::to_string(buffered_bytes));
    if (frozen_layers > 0) x.emplace_back("buffers being synced", std::to_string(frozen_layers));
    x.emplace_back("syncs", std::to_string(syncs_.load()) + " (" +
                                std::to_string(sync_errors_.load()) + " failed)");
    if (!last_error.ok()) x.emplace_back("last sync error", last_error.ToString());
  }
  return s;
}

void DetsEngineImpl::SetChangeListener(ChangeListener listener) {
  MutexLock l(&listener_mu_);
  listener_ = std::move(listener);
}

Status DetsEngineImpl::TakeWriterLock() {
  lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return Status::FromErrno(errno, "open lock file " + lock_path_);
  while (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) return Status::FromErrno(errno, "lock " + lock_path_);
    char buf[32] = {};
    ssize_t n = ::pread(lock_fd_, buf, sizeof(buf) - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return Status::Busy(path_ + ": in use by " +
                        (pid.empty() ? std::string("another process") : "pid " + pid));
  }
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 ||
      ::pwrite(lock_fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    return Status::FromErrno(errno, "write " + lock_path_);
  }
  return Status::OK();
}

void DetsEngineImpl::RemoveStaleTemps() {
  const std::string prefix = FileName(path_) + ".tmp-";
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) return;
  while (dirent* de = ::readdir(d)) {
    if (std::string_view(de->d_name).substr(0, prefix.size()) == prefix) {
      (void)env_->RemoveFile(dir_ + "/" + de->d_name);
    }
  }
  ::closedir(d);
}

Status DetsEngineImpl::RefreshFile(bool notify) {
  MutexLock rl(&refresh_mu_);
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path_);
  DetsFileRef cur;
  {
    ReaderMutexLock l(&mu_);
    cur = file_;
  }
  if (st.st_dev == cur->dev() && st.st_ino == cur->ino()) return Status::OK();
  auto f = DetsFile::Open(path_);
  if (!f.ok()) return f.status();
  if ((*f)->generation() < cur->generation()) return Status::OK();
  {
    WriterMutexLock l(&mu_);
    file_ = *f;
    last_commit_ns_ = file_->sync_time_ns();  // a reader has no commits of its own
    PublishQuietLocked();
  }
  external_reloads_.fetch_add(1, std::memory_order_relaxed);
  if (notify) NotifyDiff(*cur, **f);
  hazards_.WaitUnused(cur.get());
  return Status::OK();
}

void DetsEngineImpl::NotifyDiff(const DetsFile& a, const DetsFile& b) {
  {
    MutexLock l(&listener_mu_);
    if (!listener_) return;
  }
  ChangeEvent ev;
  ev.old_generation = a.generation();
  ev.new_generation = b.generation();
  ev.external = true;
  auto ra = a.RootMeta(), rb = b.RootMeta();
  if (!ra.ok() || !rb.ok() || *ra != *rb || a.root_version() != b.root_version()) {
    ev.changed.emplace_back();  // the root ("" sorts first)
  }
  DetsFile::KeyCursor x(&a), y(&b);
  if (!x.SeekToFirst().ok() || !y.SeekToFirst().ok()) return;
  while (x.Valid() || y.Valid()) {
    if (x.Valid() && (!y.Valid() || x.key() < y.key())) {
      ev.changed.emplace_back(x.key());
      if (!x.Next().ok()) break;
    } else if (y.Valid() && (!x.Valid() || y.key() < x.key())) {
      ev.changed.emplace_back(y.key());
      if (!y.Next().ok()) break;
    } else {
      DetsEntry ea, eb;
      const uint64_t h = format::HashKey(x.key());
      if (!a.Find(x.key(), h, &ea).ok() || !b.Find(y.key(), h, &eb).ok() ||
          ea.version != eb.version) {
        ev.changed.emplace_back(x.key());
      }
      if (!x.Next().ok() || !y.Next().ok()) break;
    }
  }
  MutexLock l(&listener_mu_);
  if (listener_) listener_(ev);
}

}  // namespace dets

StatusOr<std::unique_ptr<Engine>> OpenDetsEngine(const std::string& path,
                                                 const OpenOptions& options) {
  auto e = std::make_unique<dets::DetsEngineImpl>(path, options);
  KEYFS_RETURN_IF_ERROR(e->Init(options.watch));
  return std::unique_ptr<Engine>(std::move(e));
}

Status CreateDetsStore(const std::string& path, Env* env) {
  return CreateFileAtomically(env ? env : Env::Default(), path,
                              [](WritableFile* f) { return WriteEmptyFile(f, NowNs()); });
}

Status VerifyDetsStore(const std::string& path, std::vector<std::string>* report) {
  auto f = DetsFile::Open(path);
  if (!f.ok()) return f.status();
  if (report) {
    report->push_back("engine: dets, format version " + std::to_string((*f)->format_version()) +
                      ", generation " + std::to_string((*f)->generation()));
    report->push_back("header: ok, " + std::to_string((*f)->file_size()) + " bytes");
  }
  return (*f)->VerifyAll(report);
}

}  // namespace keyfs
