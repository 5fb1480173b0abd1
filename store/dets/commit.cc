// The dets engine's commits: a batch is applied to the active write buffer under mu_,
// visible at once, durable at the next sync (dets_syncer.cc).
//
// Back-pressure: a commit that finds the active buffer over its limit asks for a sync and
// waits until the buffer is frozen (writers are never dropped). If a sync attempt that began
// after it asked fails and the buffer is still over the limit, the commit fails with that
// error rather than growing memory without bound.
#include <algorithm>
#include <new>

#include "dets/buffer_tree.h"
#include "dets/engine_impl.h"

namespace keyfs::dets {

Status DetsEngineImpl::Commit(const Batch& batch) {
  if (read_only_) return Status::ReadOnly("store opened read-only");
  if (batch.empty()) return Status::OK();
  MutexLock cl(&commit_mu_);
  KEYFS_RETURN_IF_ERROR(WaitForRoom());
  const int64_t start = MonoNs();
  const uint64_t version = version_.load(std::memory_order_relaxed) + 1;
  bool listening;
  {
    MutexLock l(&listener_mu_);
    listening = static_cast<bool>(listener_);
  }
  std::vector<std::string> changed;
  Status s;
  const int64_t now = NowNs();
  {
    WriterMutexLock l(&mu_);
    quiet_file_.store(nullptr, std::memory_order_seq_cst);  // before the buffer changes
    const Layers layers = LayersLocked();
    BufferTree tree(active_.get(), layers, listening);
    try {
      // The buffer's hash slots are cache misses: ask for a few mutations ahead.
      const auto& ms = batch.mutations();
      constexpr size_t kAhead = 8;
      uint64_t hashes[kAhead];
      for (size_t i = 0; i < std::min(kAhead, ms.size()); ++i) {
        hashes[i] = format::HashKey(ms[i].key);
        active_->PrefetchSlot(hashes[i]);
      }
      for (size_t i = 0; i < ms.size(); ++i) {
        tree.SetHashHint(ms[i].key, hashes[i % kAhead]);
        if (i + kAhead < ms.size()) {
          hashes[i % kAhead] = format::HashKey(ms[i + kAhead].key);
          active_->PrefetchSlot(hashes[i % kAhead]);
        }
        s = ApplyMutation(tree, ms[i], version, now);
        if (!s.ok()) break;
      }
    } catch (const std::bad_alloc&) {
      s = Status::IOError("out of memory applying a batch");
    }
    if (!s.ok()) {
      tree.Rollback();
    } else {
      tree.Keep();
      if (listening) changed = tree.TakeChanged();
      version_.store(version, std::memory_order_relaxed);
      ++commits_applied_;
      last_commit_ns_ = std::max(last_commit_ns_, now);
    }
    active_bytes_.store(active_->bytes(), std::memory_order_relaxed);
    PublishQuietLocked();  // a rolled-back batch may have left the buffer empty
  }
  if (!s.ok()) {
    if (s.code() == Status::Code::kIOError) commit_errors_.fetch_add(1);
    return s;
  }
  commits_.fetch_add(1, std::memory_order_relaxed);
  last_commit_duration_ns_.store(MonoNs() - start, std::memory_order_relaxed);
  if (active_bytes_.load(std::memory_order_relaxed) >= limit_) {
    MutexLock l(&sync_mu_);
    limit_hit_ = true;
    sync_cv_.NotifyAll();
  }
  if (listening) {
    ChangeEvent ev;
    ev.old_generation = version - 1;
    ev.new_generation = version;
    ev.changed = std::move(changed);
    MutexLock l(&listener_mu_);
    if (listener_) listener_(ev);
  }
  return Status::OK();
}

Status DetsEngineImpl::WaitForRoom() {
  if (active_bytes_.load(std::memory_order_relaxed) < limit_) return Status::OK();
  MutexLock l(&sync_mu_);
  const uint64_t attempt = started_ + 1;
  limit_hit_ = true;
  sync_cv_.NotifyAll();
  done_cv_.Wait(&sync_mu_, [&]() REQUIRES(sync_mu_) {
    return stopping_ || active_bytes_.load(std::memory_order_relaxed) < limit_ ||
           finished_ >= attempt;
  });
  if (active_bytes_.load(std::memory_order_relaxed) < limit_) return Status::OK();
  if (stopping_) return Status::IOError("engine is shutting down");
  commit_errors_.fetch_add(1, std::memory_order_relaxed);
  return Status(last_error_.ok()
                    ? Status::IOError("write buffer full")
                    : last_error_.WithContext("write buffer full and the last sync failed"));
}

}  // namespace keyfs::dets
