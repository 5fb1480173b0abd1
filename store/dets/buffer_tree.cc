// BufferTree: reads merge the layers (active buffer, frozen buffers, file) as a lookup
// does; writes go to the active buffer only.
#include "dets/buffer_tree.h"

#include <algorithm>
#include <set>

namespace keyfs::dets {

void BufferTree::SetHashHint(std::string_view key, uint64_t hash) {
  hint_key_ = key;
  hint_hash_ = hash;
}

Status BufferTree::Lookup(std::string_view key, TreeValue* out) const {
  if (key.empty()) return layers_.Root(out);
  // ApplyMutation looks a key up and then usually sets it: remember what was found where,
  // so Set needs neither a second probe of the buffer nor a second look below it.
  const uint64_t h = Hash(key);
  last_.key.assign(key);
  last_.hash = h;
  last_.probe = active_->ProbeKey(key, h);
  last_.valid = true;
  if (last_.probe.node != nullptr && last_.probe.node->record != nullptr) {
    last_.below_known = false;
    const BufRecord* r = last_.probe.node->record;
    if (r->tombstone) return Status::NotFound();
    *out = TreeValue{r->meta(), r->version, r->value_view()};
    return Status::OK();
  }
  Status s = LookupBelow(key, h, &last_.below);
  last_.below_known = s.ok() || s.IsNotFound();
  last_.below_found = s.ok();
  if (s.ok()) *out = last_.below;
  return s;
}

StatusOr<bool> BufferTree::HasChildren(std::string_view dir) const {
  // A live child in some buffer...
  for (const WriteBuffer* l : BufferLayers()) {
    for (const Node* n : l->SortedChildren(dir)) {
      if (n->record == nullptr) continue;
      const BufRecord* top = layers_.Buffered(n->key(), n->hash);
      if (top != nullptr && !top->tombstone) return true;
    }
  }
  // ...or a key below it in the file that no buffer deleted. (A deleted key's own subtree
  // is deleted too, so the scan jumps over it.)
  const std::string prefix = ChildPrefix(dir);
  DetsFile::KeyCursor c(layers_.file);
  KEYFS_RETURN_IF_ERROR(c.Seek(prefix));
  while (c.Valid() && StartsWith(c.key(), prefix)) {
    if (layers_.FileKeyLive(c.key())) return true;
    std::string next(c.key());
    next += '0';  // the byte after '/'
    KEYFS_RETURN_IF_ERROR(c.Seek(next));
  }
  return false;
}

Status BufferTree::CollectSubtree(std::string_view key,
                                  std::vector<std::pair<std::string, TreeValue>>* out) const {
  TreeValue root;
  KEYFS_RETURN_IF_ERROR(Lookup(key, &root));
  out->emplace_back(std::string(key), root);
  if (root.meta.type != EntryType::kDir) return Status::OK();
  // Candidates: every key below `key` in the file or in any buffer (whatever its state);
  // a buffer lists a key under its parent, which may live in another layer, so every
  // candidate is expanded in every buffer.
  std::set<std::string, std::less<>> cands;
  std::vector<std::string> todo{std::string(key)};
  const std::string prefix = ChildPrefix(key);
  DetsFile::KeyCursor c(layers_.file);
  KEYFS_RETURN_IF_ERROR(c.Seek(prefix));
  while (c.Valid() && StartsWith(c.key(), prefix)) {
    if (cands.emplace(c.key()).second) todo.emplace_back(c.key());
    KEYFS_RETURN_IF_ERROR(c.Next());
  }
  const auto layers = BufferLayers();
  while (!todo.empty()) {
    const std::string k = std::move(todo.back());
    todo.pop_back();
    for (const WriteBuffer* l : layers) {
      for (const Node* n : l->SortedChildren(k)) {
        if (cands.emplace(n->key()).second) todo.emplace_back(n->key());
      }
    }
  }
  for (const std::string& k : cands) {
    TreeValue v;
    Status s = LookupMerged(k, &v);
    if (s.IsNotFound()) continue;
    KEYFS_RETURN_IF_ERROR(s);
    out->emplace_back(k, v);
  }
  return Status::OK();
}

void BufferTree::Set(std::string_view key, std::optional<TreeValue> v) {
  if (key.empty()) {  // the root: never deleted
    if (!v) return;
    const BufRecord* cur = active_->root();
    if (cur != nullptr && cur->version == v->version) {
      WriteBuffer::Rewrite(cur, v->meta, v->version);  // made by this batch
    } else {
      undo_.emplace_back(nullptr, cur);
      active_->SetRoot(active_->NewRecord(true, v->meta, v->version, {}));
    }
    if (collect_changed_) changed_.emplace_back();
    return;
  }
  const uint64_t h = Hash(key);
  const bool cached = last_.valid && last_.hash == h && last_.key == key;
  Node* node = active_->AddAt(cached ? last_.probe : active_->ProbeKey(key, h), key, h);
  // The merged state before, for the exact totals.
  bool was_live = false;
  EntryType was_type = EntryType::kFile;
  uint64_t was_size = 0;
  if (const BufRecord* r = node->record) {
    was_live = !r->tombstone;
    was_type = r->type;
    was_size = r->value_len;
  } else {
    TreeValue below;
    bool found;
    if (cached && last_.below_known) {
      found = last_.below_found;
      below = last_.below;
    } else {
      found = LookupBelow(key, h, &below).ok();
    }
    if (found) {
      was_live = true;
      was_type = below.meta.type;
      was_size = below.value.size();
    }
  }
  last_.valid = false;
  const BufRecord* old = node->record;
  if (v && v->meta.type == EntryType::kDir && old != nullptr && !old->tombstone &&
      old->type == EntryType::kDir && old->version == v->version) {
    // A directory this batch already wrote (a commit's version is new to the buffer,
    // and a rolled-back batch's records are unreachable): every put into it touches it,
    // so rewrite its record rather than add one per put.
    WriteBuffer::Rewrite(old, v->meta, v->version);
  } else {
    const BufRecord* rec = v ? active_->NewRecord(true, v->meta, v->version, v->value)
                             : active_->NewRecord(false, Meta(), 0, {});
    undo_.emplace_back(node, old);
    active_->SetRecord(node, rec);
  }
  if (was_live) Count(was_type, was_size, -1);
  if (v) Count(v->meta.type, v->value.size(), +1);
  if (collect_changed_) changed_.emplace_back(key);
}

void BufferTree::Rollback() {
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
    if (it->first == nullptr) {
      active_->SetRoot(it->second);
    } else {
      active_->SetRecord(it->first, it->second);
    }
  }
  undo_.clear();
  delta_ = WriteBuffer::Totals();
  changed_.clear();
}

void BufferTree::Keep() {
  WriteBuffer::Totals& t = active_->totals();
  t.entries += delta_.entries;
  t.files += delta_.files;
  t.dirs += delta_.dirs;
  t.symlinks += delta_.symlinks;
  t.value_bytes += delta_.value_bytes;
  undo_.clear();
}

std::vector<std::string> BufferTree::TakeChanged() {
  std::sort(changed_.begin(), changed_.end());
  changed_.erase(std::unique(changed_.begin(), changed_.end()), changed_.end());
  return std::move(changed_);
}

Status BufferTree::LookupMerged(std::string_view key, TreeValue* out) const {
  const uint64_t h = format::HashKey(key);
  if (const BufRecord* r = layers_.Buffered(key, h)) {
    if (r->tombstone) return Status::NotFound();
    *out = TreeValue{r->meta(), r->version, r->value_view()};
    return Status::OK();
  }
  return LookupBelow(key, h, out);
}

uint64_t BufferTree::Hash(std::string_view key) const {
  if (key.data() == hint_key_.data() && key.size() == hint_key_.size()) return hint_hash_;
  return format::HashKey(key);
}

Status BufferTree::LookupBelow(std::string_view key, uint64_t h, TreeValue* out) const {
  for (auto it = layers_.frozen->rbegin(); it != layers_.frozen->rend(); ++it) {
    const Node* n = (*it)->Find(key, h);
    if (n != nullptr && n->record != nullptr) {
      if (n->record->tombstone) return Status::NotFound();
      *out = TreeValue{n->record->meta(), n->record->version, n->record->value_view()};
      return Status::OK();
    }
  }
  DetsEntry e;
  scratch_.emplace_back();
  Status s = layers_.file->FindCopy(key, h, &e, &scratch_.back());
  if (!s.ok()) {
    scratch_.pop_back();
    return s;
  }
  *out = TreeValue{e.meta, e.version, e.value};  // valid while the batch is applied
  return Status::OK();
}

std::vector<const WriteBuffer*> BufferTree::BufferLayers() const {
  std::vector<const WriteBuffer*> v{active_};
  for (const BufferRef& f : *layers_.frozen) v.push_back(f.get());
  return v;
}

void BufferTree::Count(EntryType type, uint64_t size, int64_t sign) {
  delta_.entries += sign;
  delta_.value_bytes += sign * static_cast<int64_t>(size);
  switch (type) {
    case EntryType::kFile:
      delta_.files += sign;
      break;
    case EntryType::kDir:
      delta_.dirs += sign;
      break;
    case EntryType::kSymlink:
      delta_.symlinks += sign;
      break;
  }
}

}  // namespace keyfs::dets
