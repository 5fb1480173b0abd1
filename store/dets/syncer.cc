// The dets engine's syncer: one thread that makes commits durable by merging the frozen
// write buffers and the store file into a new file and publishing it.
//
// Sync state machine (one sync at a time, on the syncer thread):
//
//   IDLE --(timer / Sync() / buffer over its limit / close)--> FREEZING
//   FREEZING   Under mu_ (exclusive, microseconds): the active buffer becomes the newest
//              frozen buffer and an empty one takes its place; committers and readers go
//              on at once. Durable: the old file only. (The active buffer is not frozen
//              while a backlog of failed syncs already holds a full buffer's worth, so
//              memory stays bounded; the sync then runs twice, see PUBLISHED.)
//   MERGING    Without locks: the old file (read with pread through a fixed window, every
//              4 KiB chunk verified) and the frozen buffers (sorted by (hash, key) here and
//              by key on a helper thread) are merged into STORE.tmp-<pid>-<n> (O_EXCL) in
//              one sequential write, appended by a second helper thread so copying into the
//              page cache overlaps the merge, writeback started every 64 MiB; then
//              fdatasync. Buckets and key index blocks no buffered key falls into are
//              copied unchanged. Durable: the old file only; the temp is garbage until
//              renamed.
//   RENAMING   rename(temp, STORE), then fsync of the directory. Durable: the old file
//              until the directory fsync returns, the new one after; a crash in between
//              leaves one of the two complete files under STORE.
//   PUBLISHED  Under mu_: the new file replaces the old one for readers and the merged
//              frozen buffers are dropped. Every commit made before FREEZING is durable;
//              Sync() callers waiting for it are released. Then, still on the syncer, the
//              old file is released (unmapping it frees its blocks, which with online
//              discard costs ~0.5 s per 300 MB: no caller waits for that; Stats().syncing
//              stays true until it is done). -> IDLE, or FREEZING again within the same
//              attempt if the backlog rule left a waiting Sync() caller's commits in the
//              active buffer.
//
//   ERROR      Any failure (ENOSPC, EIO, a damaged old file) in MERGING or RENAMING before
//              the rename: the temp file is removed; STORE, the served file and the frozen
//              buffers are untouched, so every commit stays visible and is merged by the
//              next sync; the Sync() callers get the error. A failed fdatasync is never
//              retried on the same file (its dirty pages may be gone): the next sync writes
//              a new temp from scratch. If the rename succeeded but the directory fsync
//              failed (twice), the new file is published (STORE names it) and the
//              durability is still owed: the next sync fsyncs the directory first. -> IDLE;
//              the timer or the next Sync() retries.
//
// Durability is tracked by counting commits: a frozen buffer records how many commits had
// been applied when it was frozen; publishing it makes that many durable. Sync() waits for
// an attempt that starts after it is called and returns OK iff every commit applied before
// the call is durable.
//
// Closing (the destructor) runs a last sync; its error cannot be returned, so callers that
// care call Sync() first.
//
// The state is explicit: sync_state_ (under sync_mu_, changed only by the syncer through
// EnterState, which aborts on a transition not drawn here). An attempt goes IDLE ->
// [RENAMING -> PUBLISHED, for an owed directory fsync] -> (FREEZING -> [MERGING ->
// RENAMING ->] PUBLISHED) once to three times -> IDLE, or from any of its steps to ERROR ->
// IDLE. Checked at the transitions: MERGING has frozen buffers and a file to merge over;
// PUBLISHED replaces exactly the file it merged over, by one of the next generation, and
// drops the oldest frozen buffers, the ones it merged; IDLE never claims more durable
// commits than were applied.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "dets/engine_impl.h"
#include "dets/merge.h"
#include "failpoint.h"

namespace keyfs::dets {

// An invariant of the state machine; a failure is a bug in this file, not an I/O error,
// and serving on could lose commits: abort in every build. Cheap: a few per sync.
#define DETS_SYNC_CHECK(cond)                                                              \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "keyfs: dets syncer invariant failed at %s:%d: %s\n", __FILE__, \
                   __LINE__, #cond);                                                       \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

const char* DetsEngineImpl::SyncStateName(SyncState s) {
  switch (s) {
    case SyncState::kIdle:
      return "IDLE";
    case SyncState::kFreezing:
      return "FREEZING";
    case SyncState::kMerging:
      return "MERGING";
    case SyncState::kRenaming:
      return "RENAMING";
    case SyncState::kPublished:
      return "PUBLISHED";
    case SyncState::kError:
      return "ERROR";
  }
  return "?";
}

void DetsEngineImpl::EnterState(SyncState next) {
  MutexLock l(&sync_mu_);
  EnterStateLocked(next);
}

void DetsEngineImpl::EnterStateLocked(SyncState next) {
  using S = SyncState;
  const S from = sync_state_;
  bool allowed = false;
  switch (next) {
    case S::kFreezing:  // an attempt's first round, or the next one
      allowed = from == S::kIdle || from == S::kPublished;
      break;
    case S::kMerging:
      allowed = from == S::kFreezing;
      break;
    case S::kRenaming:  // a merged file, or a directory fsync owed by the last attempt
      allowed = from == S::kMerging || (from == S::kIdle && dir_sync_owed_);
      break;
    case S::kPublished:  // renamed, or nothing was frozen (the file holds every commit)
      allowed = from == S::kRenaming || from == S::kFreezing;
      break;
    case S::kError:
      allowed = from != S::kIdle || dir_sync_owed_;
      break;
    case S::kIdle:  // the attempt is over (or found nothing to do)
      allowed = from == S::kPublished || from == S::kError || from == S::kIdle;
      break;
  }
  if (!allowed) {
    std::fprintf(stderr, "keyfs: dets syncer: no transition %s -> %s\n", SyncStateName(from),
                 SyncStateName(next));
    std::abort();
  }
  sync_state_ = next;
}

Status DetsEngineImpl::Sync() {
  if (read_only_) return Status::OK();
  MutexLock l(&sync_mu_);
  const uint64_t target = CommitsApplied();
  if (durable_commits_ >= target && !dir_sync_owed_) return Status::OK();
  if (stopping_) return Status::IOError("engine is shutting down");
  const uint64_t attempt = started_ + 1;  // the next attempt covers every commit so far
  requested_ = std::max(requested_, attempt);
  sync_cv_.NotifyAll();
  done_cv_.Wait(&sync_mu_, [&]() REQUIRES(sync_mu_) { return finished_ >= attempt; });
  if (durable_commits_ >= target && !dir_sync_owed_) return Status::OK();
  return last_error_.ok() ? Status::IOError("sync did not complete") : last_error_;
}

void DetsEngineImpl::SyncerLoop() {
  MutexLock l(&sync_mu_);
  auto next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(interval_s_);
  while (true) {
    auto due = [&]() REQUIRES(sync_mu_) {
      return stopping_ || requested_ > started_ || limit_hit_ ||
             (interval_s_ > 0 && std::chrono::steady_clock::now() >= next_tick);
    };
    if (interval_s_ > 0) {
      sync_cv_.WaitUntil(&sync_mu_, next_tick, due);
    } else {
      sync_cv_.Wait(&sync_mu_, due);
    }
    if (interval_s_ > 0 && std::chrono::steady_clock::now() >= next_tick) {
      next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(interval_s_);
    }
    const bool final_round = stopping_;
    // Over the limit counts even without a commit: failed batches leave nodes behind.
    const bool needed =
        CommitsApplied() > durable_commits_ || dir_sync_owed_ || frozen_count_ > 0 || limit_hit_;
    if (!needed && !(requested_ > started_)) {
      limit_hit_ = false;
      if (final_round) return;
      continue;
    }
    const uint64_t attempt = ++started_;
    limit_hit_ = false;
    syncing_ = true;
    DETS_SYNC_CHECK(sync_state_ == SyncState::kIdle);
    l.Unlock();
    const int64_t t0 = MonoNs();
    Status s;
    try {
      s = RunSync();
    } catch (const std::bad_alloc&) {
      s = Status::IOError("out of memory during a sync");
    }
    l.Lock();
    if (!s.ok()) EnterStateLocked(SyncState::kError);
    EnterStateLocked(SyncState::kIdle);
    DETS_SYNC_CHECK(durable_commits_ <= CommitsApplied());
    if (s.ok()) {
      last_sync_duration_ns_ = MonoNs() - t0;
      last_sync_end_ns_ = NowNs();
    }
    finished_ = attempt;
    last_error_ = s;
    if (!s.ok()) sync_errors_.fetch_add(1, std::memory_order_relaxed);
    done_cv_.NotifyAll();
    if (!retired_.empty()) {
      l.Unlock();
      for (const DetsFileRef& f : retired_) hazards_.WaitUnused(f.get());
      retired_.clear();  // Stats().syncing stays true until the old file is gone
      l.Lock();
    }
    syncing_ = false;
    if (final_round) return;
  }
}

Status DetsEngineImpl::RunSync() {
  const uint64_t target = CommitsApplied();
  if (dir_sync_owed()) {
    EnterState(SyncState::kRenaming);  // the last rename's directory fsync, still owed
    KEYFS_RETURN_IF_ERROR(env_->SyncDir(dir_));
    MutexLock l(&sync_mu_);
    dir_sync_owed_ = false;
    durable_commits_ = std::max(durable_commits_, owed_commits_);
    EnterStateLocked(SyncState::kPublished);
  }
  for (int round = 0; round < 3; ++round) {
    {
      // Done when every commit so far is durable, unless the buffer is over its limit
      // (it may hold only the leftovers of failed batches: freeze it all the same).
      MutexLock l(&sync_mu_);
      if (durable_commits_ >= target &&
          (round > 0 || active_bytes_.load(std::memory_order_relaxed) < limit_)) {
        return Status::OK();
      }
    }
    KEYFS_RETURN_IF_ERROR(SyncRound());
  }
  MutexLock l(&sync_mu_);
  return durable_commits_ >= target ? Status::OK() : Status::IOError("sync fell behind");
}

bool DetsEngineImpl::dir_sync_owed() {
  MutexLock l(&sync_mu_);
  return dir_sync_owed_;
}

Status DetsEngineImpl::SyncRound() {
  EnterState(SyncState::kFreezing);
  std::vector<BufferRef> layers;
  DetsFileRef old;
  const BufRecord* root_rec = nullptr;  // lives in a frozen buffer held by `layers`
  TreeValue root;
  uint64_t upto;  // every commit up to this count is in `layers` or `old`
  int64_t newest_ns;
  {
    WriterMutexLock l(&mu_);
    uint64_t backlog = 0;
    for (const BufferRef& f : frozen_) backlog += f->bytes();
    if (!active_->empty() && (frozen_.empty() || backlog < limit_)) {
      // Allocate first: out of memory here must leave the two lists the same length
      // and the active buffer active.
      auto fresh = std::make_shared<WriteBuffer>();
      frozen_.reserve(frozen_.size() + 1);
      frozen_marks_.reserve(frozen_marks_.size() + 1);
      frozen_.push_back(std::move(active_));
      frozen_marks_.push_back({CommitsApplied(), last_commit_ns_});
      active_ = std::move(fresh);
      active_bytes_.store(active_->bytes(), std::memory_order_relaxed);
    }
    layers = frozen_;
    old = file_;
    // The root as the newest frozen buffer that changed it says, else as the old file.
    for (auto it = frozen_.rbegin(); it != frozen_.rend() && root_rec == nullptr; ++it) {
      root_rec = (*it)->root();
      if (root_rec != nullptr) root = TreeValue{root_rec->meta(), root_rec->version, {}};
    }
    // The new file is dated by the newest commit it holds, so `info`'s last commit stays
    // what it was when the file is reopened.
    newest_ns = frozen_marks_.empty() ? old->sync_time_ns() : frozen_marks_.back().newest_ns;
    // With the active buffer empty and nothing frozen, the file holds every commit.
    upto = !frozen_marks_.empty() ? frozen_marks_.back().upto
                                  : (active_->empty() ? CommitsApplied() : 0);
  }
  {
    MutexLock l(&sync_mu_);
    frozen_count_ = layers.size();
    done_cv_.NotifyAll();  // the active buffer has room again
  }
  if (layers.empty()) {
    MutexLock l(&sync_mu_);
    durable_commits_ = std::max(durable_commits_, upto);
    EnterStateLocked(SyncState::kPublished);  // nothing to write: the file holds them all
    return Status::OK();
  }

  (void)FailPoint("dets.frozen");
  // Every frozen buffer is merged, oldest first, over the file served when they froze.
  DETS_SYNC_CHECK(!layers.empty() && old != nullptr);
  EnterState(SyncState::kMerging);
  const std::string tmp =
      path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++temp_counter_);
  auto file = env_->NewExclusiveFile(tmp);
  if (!file.ok()) return file.status();
  WritableFile* f = file->get();
  MergeInput in;
  in.old_file = old.get();
  for (const BufferRef& b : layers) in.layers.push_back(b.get());
  in.generation = old->generation() + 1;
  in.sync_time_ns = newest_ns;
  in.last_version = version_.load(std::memory_order_relaxed);
  if (root_rec == nullptr) {
    auto m = old->RootMeta();
    if (!m.ok()) {
      (void)f->Close();
      (void)env_->RemoveFile(tmp);
      return m.status();
    }
    root = TreeValue{*m, old->root_version(), {}};
  }
  in.root = root.meta;
  in.root_version = root.version;
  MergeStats stats;
  Status s;
  try {
    s = WriteMergedFile(in, f, &stats);
  } catch (const std::bad_alloc&) {
    s = Status::IOError("out of memory during a sync");
  }
  if (s.ok()) EnterState(SyncState::kRenaming);
  if (s.ok()) s = FailPoint("dets.merged");
  if (s.ok()) s = f->Sync();
  if (s.ok()) s = FailPoint("dets.file_synced");
  if (s.ok()) s = env_->Rename(tmp, path_);
  if (!s.ok()) {
    (void)f->Close();
    (void)env_->RemoveFile(tmp);
    return s;
  }
  (void)FailPoint("dets.renamed");
  int fd = ::dup(f->fd());
  Status sync_dir = env_->SyncDir(dir_);
  if (!sync_dir.ok()) sync_dir = env_->SyncDir(dir_);  // once more before giving up
  if (sync_dir.ok()) sync_dir = FailPoint("dets.dir_synced");
  (void)f->Close();
  if (fd < 0) return Status::FromErrno(errno, "dup");
  auto opened = DetsFile::OpenFd(fd, path_);
  if (!opened.ok()) return opened.status();  // the frozen buffers stay served

  // The new file follows the one it was merged over.
  DETS_SYNC_CHECK((*opened)->generation() == old->generation() + 1);
  {
    WriterMutexLock l(&mu_);
    // Nobody else replaces the file of a writer, and the merged buffers are the oldest.
    DETS_SYNC_CHECK(file_ == old && frozen_.size() >= layers.size() &&
                    frozen_.size() == frozen_marks_.size() && frozen_.front() == layers.front());
    file_ = *opened;
    frozen_.erase(frozen_.begin(), frozen_.begin() + static_cast<ptrdiff_t>(layers.size()));
    frozen_marks_.erase(frozen_marks_.begin(),
                        frozen_marks_.begin() + static_cast<ptrdiff_t>(layers.size()));
    PublishQuietLocked();
  }
  syncs_.fetch_add(1, std::memory_order_relaxed);
  {
    MutexLock l(&sync_mu_);
    frozen_count_ -= std::min<uint64_t>(frozen_count_, layers.size());
    if (sync_dir.ok()) {
      durable_commits_ = std::max(durable_commits_, upto);
    } else {
      dir_sync_owed_ = true;
      owed_commits_ = std::max(owed_commits_, upto);
    }
    EnterStateLocked(SyncState::kPublished);
  }
  layers.clear();
  (void)FailPoint("dets.published");
  // Usually the last reference: unmapped (and its blocks freed, which takes a while for a
  // big file) once the Sync() callers have their answer, on this thread, not a reader's.
  retired_.push_back(std::move(old));
  return sync_dir;
}

Status DetsEngineImpl::UpgradeIfOld() {
  DetsFileRef old;
  {
    ReaderMutexLock l(&mu_);
    old = file_;
  }
  if (!old->legacy()) return Status::OK();
  const std::string tmp =
      path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++temp_counter_);
  auto file = env_->NewExclusiveFile(tmp);
  if (!file.ok()) return file.status();
  WritableFile* f = file->get();
  MergeInput in;
  in.old_file = old.get();
  in.generation = old->generation() + 1;
  in.sync_time_ns = old->sync_time_ns();
  in.last_version = old->last_version();
  auto root = old->RootMeta();
  Status s = root.status();
  if (s.ok()) {
    in.root = *root;
    in.root_version = old->root_version();
    s = WriteMergedFile(in, f, nullptr);
  }
  if (s.ok()) s = f->Sync();
  if (s.ok()) s = env_->Rename(tmp, path_);
  if (!s.ok()) {
    (void)f->Close();
    (void)env_->RemoveFile(tmp);
    return s.WithContext("upgrade " + path_ + " to format version 2");
  }
  int fd = ::dup(f->fd());
  Status sync_dir = env_->SyncDir(dir_);
  (void)f->Close();
  if (fd < 0) return Status::FromErrno(errno, "dup");
  auto opened = DetsFile::OpenFd(fd, path_);
  if (!opened.ok()) return opened.status();
  {
    WriterMutexLock l(&mu_);
    file_ = *opened;
    PublishQuietLocked();
  }
  hazards_.WaitUnused(old.get());
  syncs_.fetch_add(1, std::memory_order_relaxed);
  return sync_dir;
}

}  // namespace keyfs::dets
