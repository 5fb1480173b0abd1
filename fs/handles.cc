// The registry of write handles (handles.h).
#include "handles.h"

#include <algorithm>

namespace keyfs::fs {

void WriterRegistry::Add(WriteHandle* h) {
  MutexLock l(&mu_);
  by_node_[h->node].push_back(h);
}

void WriterRegistry::Remove(WriteHandle* h) {
  MutexLock l(&mu_);
  auto it = by_node_.find(h->node);
  if (it == by_node_.end()) return;
  auto& v = it->second;
  v.erase(std::remove(v.begin(), v.end(), h), v.end());
  if (v.empty()) by_node_.erase(it);
}

WriteHandle* WriterRegistry::Find(uint64_t node, pid_t pid) {
  MutexLock l(&mu_);
  auto it = by_node_.find(node);
  if (it == by_node_.end()) return nullptr;
  for (auto h = it->second.rbegin(); h != it->second.rend(); ++h) {
    if ((*h)->pid == pid) return static_cast<WriteHandle*>(Ref(*h));
  }
  return nullptr;
}

WriteHandle* WriterRegistry::FindLastChanged(uint64_t node, pid_t pid) {
  MutexLock l(&mu_);
  auto it = by_node_.find(node);
  if (it == by_node_.end()) return nullptr;
  WriteHandle* best = nullptr;
  for (auto h = it->second.rbegin(); h != it->second.rend(); ++h) {
    if ((*h)->pid != pid) continue;
    if (best == nullptr || (*h)->last_change.load(std::memory_order_relaxed) >
                               best->last_change.load(std::memory_order_relaxed)) {
      best = *h;
    }
  }
  return best != nullptr ? static_cast<WriteHandle*>(Ref(best)) : nullptr;
}

}  // namespace keyfs::fs
