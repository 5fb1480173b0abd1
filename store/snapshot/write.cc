// The two commit paths and the files they write: one record appended to STORE.log, or a
// whole new table renamed over STORE (recycling a spare old table's blocks).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "failpoint.h"
#include "format.h"
#include "publish.h"
#include "snapshot/engine_impl.h"
#include "snapshot/table_builder.h"

namespace keyfs {

Status SnapshotEngineImpl::UpgradeIfOld() {
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

void SnapshotEngineImpl::RemoveStaleTemps() {
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

uint64_t SnapshotEngineImpl::CommittedBytes(const Overlay& overlay) {
  uint64_t n = 0;
  overlay.ForEachChange([&](std::string_view key, const std::optional<Overlay::Value>& v) {
    n += key.size() + (v ? v->value.size() : 0);
  });
  return n;
}

bool SnapshotEngineImpl::WholeTableWanted(const SnapshotView& base, const Overlay& overlay) const {
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

Status SnapshotEngineImpl::AppendToLog(const Overlay& overlay, uint64_t gen, int64_t now) {
  KEYFS_RETURN_IF_ERROR(OpenLogForAppend());
  LogRecordWriter w(gen, now);
  LogRecord rec;  // what the record says, applied to the delta once it is durable
  rec.generation = gen;
  rec.commit_time_ns = now;
  if (overlay.root_changed()) {
    auto root = overlay.Root();
    if (!root.ok()) return root.status();
    w.SetRoot(root->meta, root->version);
    rec.root = root->meta;
    rec.root_version = root->version;
  }
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

Status SnapshotEngineImpl::OpenLogForAppend() {
  if (log_writer_) return Status::OK();
  if (log_fd_ < 0) {
    auto probe = env_->ReopenForRewrite(lock_path_);
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

Status SnapshotEngineImpl::CommitWholeTable(const Overlay& overlay, uint64_t gen, int64_t now,
                                            Status* in_doubt) {
  auto built = WriteTable(overlay, gen, now, in_doubt);
  if (!built.ok()) return built.status();
  AdoptTable(*built);
  rebuilds_.fetch_add(1, std::memory_order_relaxed);
  return Status::OK();
}

void SnapshotEngineImpl::AdoptTable(TableRef t) {
  if (log_fd_ >= 0) {
    if (env_->RemoveFile(log_path_).ok()) (void)env_->SyncDir(dir_);
  }
  CloseLog();
  ResetDelta(std::move(t));
  Publish(MakeView());
}

StatusOr<TableRef> SnapshotEngineImpl::WriteTable(const Overlay& overlay, uint64_t gen, int64_t now,
                                                  Status* in_doubt) {
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

std::unique_ptr<WritableFile> SnapshotEngineImpl::TakeSpare(std::string* name) {
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

void SnapshotEngineImpl::TrimSpares() {
  while (spares_.size() > kMaxSpares) {
    (void)env_->RemoveFile(spares_.front());
    spares_.erase(spares_.begin());
  }
}

}  // namespace keyfs
