// The background merge: folds the delta into a new base table and trims the commit log
// to the records after it (the protocol is at the top of engine.cc).
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "failpoint.h"
#include "format.h"
#include "publish.h"
#include "snapshot/engine_impl.h"
#include "snapshot/table_builder.h"

namespace keyfs {

void SnapshotEngineImpl::MaybeStartMerge(const SnapshotView& v) {
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

void SnapshotEngineImpl::MergerLoop() {
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

Status SnapshotEngineImpl::MergeOnce() {
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

Status SnapshotEngineImpl::TrimLog(uint64_t upto) {
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

Status SnapshotEngineImpl::WaitForMerges() {
  MutexLock l(&merge_mu_);
  merge_idle_cv_.Wait(&merge_mu_, [&]() REQUIRES(merge_mu_) {
    return merge_stopping_ || (!merge_wanted_ && !merging_);
  });
  return last_merge_status_;
}

Status SnapshotEngineImpl::Merge() {
  if (read_only_) return Status::ReadOnly("store opened read-only");
  {
    MutexLock l(&merge_mu_);
    merge_wanted_ = true;
  }
  merge_cv_.NotifyAll();
  return WaitForMerges();
}

}  // namespace keyfs
