// Overlay, the snapshot engine's batch of changes on top of a version of the store.
#include "snapshot/overlay.h"

namespace keyfs {

namespace {

std::string ChildPrefix(std::string_view dir) {
  std::string p(dir);
  if (!p.empty()) p += '/';
  return p;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

Overlay::Overlay(const SnapshotView* base, uint64_t generation, int64_t now_ns)
    : base_(base), generation_(generation), now_ns_(now_ns) {}

Status Overlay::Lookup(std::string_view key, Value* out) const {
  if (key.empty()) {
    *out = root_ ? *root_ : Value{base_->root(), base_->root_version(), {}};
    return Status::OK();
  }
  auto it = changes_.find(key);
  if (it != changes_.end()) {
    if (!it->second) return Status::NotFound();
    *out = *it->second;
    return Status::OK();
  }
  EntryRef e;
  KEYFS_RETURN_IF_ERROR(base_->Find(key, &e));
  *out = Value{e.meta, e.version, e.value};
  return Status::OK();
}

void Overlay::Set(std::string_view key, std::optional<Value> slot) {
  if (key.empty()) {  // the root is never deleted; the batch's undo keeps its old state
    if (slot) root_ = std::move(slot);
    return;
  }
  auto it = changes_.find(key);
  if (logging_) {
    if (undo_keys_.emplace(key).second) {
      undo_.emplace_back(std::string(key),
                         it == changes_.end() ? std::nullopt : std::optional<Slot>(it->second));
    }
  }
  if (it == changes_.end()) {
    changes_.emplace(std::string(key), std::move(slot));
  } else {
    it->second = std::move(slot);
  }
}

StatusOr<bool> Overlay::HasChildren(std::string_view dir) const {
  const std::string prefix = ChildPrefix(dir);
  for (auto it = changes_.lower_bound(prefix);
       it != changes_.end() && StartsWith(it->first, prefix); ++it) {
    if (it->second) return true;
  }
  bool found = false;
  std::string key;
  Status s = base_->ListChildren(dir, "", [&](const DirEntry& e) {
    key.assign(prefix).append(e.name);
    auto it = changes_.find(key);
    found = it == changes_.end() || it->second.has_value();
    return !found;
  });
  if (!s.ok()) return s;
  return found;
}

Status Overlay::CollectSubtree(std::string_view key,
                               std::vector<std::pair<std::string, Value>>* out) const {
  Value root;
  KEYFS_RETURN_IF_ERROR(Lookup(key, &root));
  out->emplace_back(std::string(key), root);
  if (root.meta.type != EntryType::kDir) return Status::OK();
  const std::string prefix = ChildPrefix(key);
  // Merge the base's keys below `key` with the overlay's, the overlay winning.
  std::vector<std::pair<std::string, Value>> below;
  KEYFS_RETURN_IF_ERROR(base_->Scan(prefix, [&](const EntryRef& e) {
    if (!StartsWith(e.key, prefix)) return false;
    below.emplace_back(std::string(e.key), Value{e.meta, e.version, e.value});
    return true;
  }));
  auto it = changes_.lower_bound(prefix);
  size_t i = 0;
  while (true) {
    const bool have_base = i < below.size();
    const bool have_ov = it != changes_.end() && StartsWith(it->first, prefix);
    if (!have_base && !have_ov) break;
    if (have_ov && (!have_base || it->first <= below[i].first)) {
      if (have_base && it->first == below[i].first) ++i;
      if (it->second) out->emplace_back(it->first, *it->second);
      ++it;
    } else {
      out->push_back(std::move(below[i++]));
    }
  }
  return Status::OK();
}

Status Overlay::Apply(const Batch& batch) {
  // The first batch on an empty overlay needs no undo log: rolling it back empties the
  // overlay (what a bulk load of a million puts saves: a copy of every key).
  const bool first = changes_.empty() && !root_;
  const std::optional<Value> saved_root = root_;
  undo_.clear();
  undo_keys_.clear();
  logging_ = !first;
  Status s;
  for (const Mutation& m : batch.mutations()) {
    s = ApplyMutation(*this, m, generation_, now_ns_);
    if (!s.ok()) break;
  }
  logging_ = false;
  if (!s.ok()) {
    root_ = saved_root;
    if (first) {
      changes_.clear();
    } else {
      for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
        if (!it->second) {
          changes_.erase(it->first);
        } else {
          changes_[it->first] = std::move(*it->second);
        }
      }
    }
  }
  undo_.clear();
  undo_keys_.clear();
  return s;
}

Status Overlay::ForEachMerged(
    const std::function<Status(std::string_view key, const Value& v)>& fn) const {
  auto it = changes_.begin();
  Status failed;
  // Emits the overlay's live changes that sort before `key` (all of them for null).
  auto emit_before = [&](const std::string_view* key) {
    for (; failed.ok() && it != changes_.end() && (key == nullptr || it->first < *key); ++it) {
      if (it->second) failed = fn(it->first, *it->second);
    }
  };
  KEYFS_RETURN_IF_ERROR(base_->Scan("", [&](const EntryRef& e) {
    emit_before(&e.key);
    if (!failed.ok()) return false;
    if (it != changes_.end() && it->first == e.key) {
      if (it->second) failed = fn(it->first, *it->second);
      ++it;
    } else {
      failed = fn(e.key, Value{e.meta, e.version, e.value});
    }
    return failed.ok();
  }));
  emit_before(nullptr);
  return failed;
}

void Overlay::ForEachChange(
    const std::function<void(std::string_view key, const std::optional<Value>& v)>& fn) const {
  for (const auto& [k, v] : changes_) fn(k, v);
}

StatusOr<Overlay::Value> Overlay::Root() const {
  Value v;
  KEYFS_RETURN_IF_ERROR(Lookup("", &v));
  return v;
}

std::vector<std::string> Overlay::ChangedKeys() const {
  std::vector<std::string> keys;
  keys.reserve(changes_.size() + 1);
  if (root_) keys.emplace_back();  // "" sorts first
  for (const auto& [k, v] : changes_) keys.push_back(k);
  return keys;
}

}  // namespace keyfs
