// Reads of one version: the delta's state of a key wins over the base table's entry.
#include "snapshot/view.h"

#include <algorithm>

#include "format.h"

namespace keyfs {

void ViewCounts::Count(const Meta& m, uint64_t value_size, int sign) {
  const uint64_t one = static_cast<uint64_t>(sign);  // +1 or wraps to -1
  entries += one;
  value_bytes += static_cast<uint64_t>(sign) * value_size;
  switch (m.type) {
    case EntryType::kFile:
      files += one;
      break;
    case EntryType::kDir:
      dirs += one;
      break;
    case EntryType::kSymlink:
      symlinks += one;
      break;
  }
}

SnapshotView::SnapshotView(TableRef base, std::shared_ptr<const DeltaIndex> delta,
                           uint64_t generation, Meta root, uint64_t root_version,
                           int64_t commit_time_ns, ViewCounts counts, uint64_t delta_keys)
    : base_(std::move(base)),
      delta_(std::move(delta)),
      generation_(generation),
      root_(root),
      root_version_(root_version),
      commit_time_ns_(commit_time_ns),
      counts_(counts),
      delta_keys_(delta_keys) {}

Status SnapshotView::Find(std::string_view key, EntryRef* out) const {
  const uint64_t h = format::HashKey(key);
  if (delta_keys_ != 0) {
    if (const DeltaKey* k = delta_->FindKey(key, h)) {
      if (const DeltaState* s = k->At(generation_)) {
        if (!s->live) return Status::NotFound();
        FromState(*k, *s, out);
        return Status::OK();
      }
    }
  }
  return base_->FindHashed(key, h, out);
}

void SnapshotView::SortedDeltaKeys(std::string_view from, const std::string_view* dir,
                                   std::vector<const DeltaKey*>* out) const {
  out->clear();
  if (delta_keys_ == 0) return;
  if (dir != nullptr) {
    const DeltaDir* d = delta_->FindDir(*dir, format::HashKey(*dir));
    if (d == nullptr) return;
    for (const DeltaKey* k = d->first_child.load(std::memory_order_acquire); k != nullptr;
         k = k->next_sibling) {
      if (k->key > from && k->At(generation_) != nullptr) out->push_back(k);
    }
  } else {
    delta_->KeysAt(generation_, out);
    out->erase(
        std::remove_if(out->begin(), out->end(), [&](const DeltaKey* k) { return k->key < from; }),
        out->end());
  }
  std::sort(out->begin(), out->end(),
            [](const DeltaKey* a, const DeltaKey* b) { return a->key < b->key; });
}

Status SnapshotView::ListChildren(std::string_view dir, std::string_view start_after,
                                  const ListFn& fn) const {
  std::vector<const DeltaKey*> changed;
  if (delta_keys_ != 0) {
    std::string after(dir);
    if (!after.empty()) after += '/';
    after += start_after;
    SortedDeltaKeys(after, &dir, &changed);
    // start_after "" lists from the first child: `after` is then the prefix itself, which
    // no child equals; a child named exactly start_after is left out by the > above.
  }
  if (changed.empty()) return base_->ListChildren(dir, start_after, fn);
  size_t next = 0;
  bool stopped = false;
  // Emits the delta's children that sort before `name` (all of them for a null name).
  auto emit_before = [&](const std::string_view* name) {
    while (!stopped && next < changed.size()) {
      const DeltaKey* k = changed[next];
      const std::string_view child = BaseName(k->key);
      if (name != nullptr && child >= *name) break;
      ++next;
      const DeltaState* s = k->At(generation_);
      if (!s->live) continue;
      DirEntry e{child, s->meta, s->value.size(), s->version};
      if (!fn(e)) stopped = true;
    }
  };
  Status st = base_->ListChildren(dir, start_after, [&](const DirEntry& b) {
    emit_before(&b.name);
    if (stopped) return false;
    if (next < changed.size() && BaseName(changed[next]->key) == b.name) {
      const DeltaKey* k = changed[next++];
      const DeltaState* s = k->At(generation_);
      if (!s->live) return true;  // deleted since the base
      DirEntry e{b.name, s->meta, s->value.size(), s->version};
      if (!fn(e)) stopped = true;
      return !stopped;
    }
    if (!fn(b)) stopped = true;
    return !stopped;
  });
  if (!st.ok()) return st;
  emit_before(nullptr);
  return Status::OK();
}

Status SnapshotView::Scan(std::string_view from,
                          const std::function<bool(const EntryRef&)>& fn) const {
  std::vector<const DeltaKey*> changed;
  SortedDeltaKeys(from, nullptr, &changed);
  auto pos = base_->LowerBound(from);
  if (!pos.ok()) return pos.status();
  uint64_t i = *pos;
  const uint64_t n = base_->entry_count();
  size_t j = 0;
  EntryRef e;
  bool have_base = false;
  while (true) {
    if (!have_base && i < n) {
      KEYFS_RETURN_IF_ERROR(base_->At(i, &e));
      have_base = true;
    }
    const bool have_delta = j < changed.size();
    if (!have_base && !have_delta) return Status::OK();
    if (have_delta && (!have_base || changed[j]->key <= e.key)) {
      const DeltaKey* k = changed[j++];
      if (have_base && k->key == e.key) {
        ++i;
        have_base = false;
      }
      const DeltaState* s = k->At(generation_);
      if (!s->live) continue;
      EntryRef d;
      FromState(*k, *s, &d);
      if (!fn(d)) return Status::OK();
    } else {
      ++i;
      have_base = false;
      if (!fn(e)) return Status::OK();
    }
  }
}

}  // namespace keyfs
