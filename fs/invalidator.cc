// The invalidator (invalidator.h).
#include "invalidator.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <set>

namespace keyfs::fs {

void Invalidator::Start(fuse_session* session) {
  session_ = session;
  {
    MutexLock l(&mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] { Run(); });
}

void Invalidator::Stop() {
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  cv_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

void Invalidator::Push(Item item) {
  {
    MutexLock l(&mu_);
    queue_.push_back(std::move(item));
  }
  cv_.NotifyOne();
}

void Invalidator::InvalidateKeyThenReply(fuse_req_t req, const std::string& key, int err) {
  Item it;
  if (!key.empty()) {
    it.node = table_->DirId(std::string(ParentKey(key)));
    if (it.node != 0) it.name = std::string(BaseName(key));
  }
  if (it.node == 0) {
    // Nothing to invalidate: answer now, never behind the queue. A caller may hold a
    // directory lock an invalidation ahead of it waits for (FSYNCDIR does).
    fuse_reply_err(req, err);
    return;
  }
  it.then = [req, err] { fuse_reply_err(req, err); };
  Push(std::move(it));
}

void Invalidator::InvalidateKey(const std::string& key) {
  if (key.empty()) return;
  if (uint64_t parent = table_->DirId(std::string(ParentKey(key)))) {
    InvalidateEntry(parent, std::string(BaseName(key)));
  }
}

void Invalidator::InvalidateEntry(uint64_t parent, std::string name) {
  Item it;
  it.node = parent;
  it.name = std::move(name);
  Push(std::move(it));
}

void Invalidator::InvalidateNode(uint64_t id) {
  Item it;
  it.node = id;
  Push(std::move(it));
}

void Invalidator::InvalidateNodeThen(uint64_t id, std::function<void()> then) {
  Item it;
  it.node = id;
  it.then = std::move(then);
  Push(std::move(it));
}

void Invalidator::OnChange(const ChangeEvent& ev) {
  if (!ev.external) return;
  spdlog::debug("store changed elsewhere: generation {} -> {}, {} keys", ev.old_generation,
                ev.new_generation, ev.changed.size());
  std::set<uint64_t> listings;  // directories whose listing may have changed
  for (const std::string& k : ev.changed) {
    if (k.empty()) {  // the root's own metadata
      listings.insert(kRootId);
      continue;
    }
    const uint64_t self = table_->DirId(k);
    if (self != 0) {
      auto rec = engine_->Get(k);
      if (rec.ok() && rec->meta.type == EntryType::kDir) {
        listings.insert(self);  // still a directory: keep its dentry
        continue;
      }
    }
    const uint64_t parent = table_->DirId(std::string(ParentKey(k)));
    if (parent == 0) continue;  // the kernel knows nothing below an unknown directory
    InvalidateEntry(parent, std::string(BaseName(k)));
    listings.insert(parent);
  }
  for (uint64_t id : listings) InvalidateNode(id);
}

void Invalidator::Run() {
  while (true) {
    Item it;
    bool stopping;
    {
      MutexLock l(&mu_);
      cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      it = std::move(queue_.front());
      queue_.pop_front();
      stopping = stop_;
    }
    if (it.node != 0 && !stopping && session_ != nullptr) {
      int r = it.name.empty() ? fuse_lowlevel_notify_inval_inode(session_, it.node, 0, 0)
                              : fuse_lowlevel_notify_inval_entry(session_, it.node, it.name.data(),
                                                                 it.name.size());
      if (r != 0 && r != -ENOENT) spdlog::debug("invalidation failed: {}", strerror(-r));
    }
    if (it.then) it.then();
  }
}

}  // namespace keyfs::fs
