// The delta's arena and its lock-free multi-version index (see delta.h).
#include "snapshot/delta.h"

#include <cstring>
#include <new>

#include "format.h"

namespace keyfs {

namespace {
constexpr size_t kBlockSize = 64 * 1024;
constexpr uint64_t kMinSlots = 64;
}  // namespace

char* DeltaArena::Allocate(size_t n, size_t align) {
  const size_t pad = (align - reinterpret_cast<uintptr_t>(cur_) % align) % align;
  if (cur_ == nullptr || pad + n > left_) {
    if (n + align > kBlockSize / 4) {  // big values get a block of their own
      blocks_.emplace_back(new char[n + align]);
      bytes_.fetch_add(n + align, std::memory_order_relaxed);
      char* p = blocks_.back().get();
      return p + (align - reinterpret_cast<uintptr_t>(p) % align) % align;
    }
    blocks_.emplace_back(new char[kBlockSize]);
    bytes_.fetch_add(kBlockSize, std::memory_order_relaxed);
    cur_ = blocks_.back().get();
    left_ = kBlockSize;
    return Allocate(n, align);
  }
  char* p = cur_ + pad;
  cur_ += pad + n;
  left_ -= pad + n;
  return p;
}

std::string_view DeltaArena::Copy(std::string_view bytes) {
  if (bytes.empty()) return {};
  char* p = Allocate(bytes.size(), 1);
  std::memcpy(p, bytes.data(), bytes.size());
  return {p, bytes.size()};
}

DeltaState* DeltaArena::NewState() {
  return new (Allocate(sizeof(DeltaState), alignof(DeltaState))) DeltaState();
}
DeltaKey* DeltaArena::NewKey() {
  return new (Allocate(sizeof(DeltaKey), alignof(DeltaKey))) DeltaKey();
}
DeltaDir* DeltaArena::NewDir() {
  return new (Allocate(sizeof(DeltaDir), alignof(DeltaDir))) DeltaDir();
}
// DeltaState, DeltaKey and DeltaDir are trivially destructible apart from their atomics,
// which need no destruction: the arena frees their memory without running destructors.
static_assert(std::is_trivially_destructible_v<DeltaState>);

const DeltaKey* DeltaIndex::FindKey(std::string_view key, uint64_t hash) const {
  if (keys_ == nullptr) return nullptr;
  const uint8_t tag = Tag(hash);
  for (uint64_t i = hash & key_mask_;; i = (i + 1) & key_mask_) {
    // The tag is stored after the slot's key (release): once it is seen, so is the key.
    const uint8_t t = tags_[i].load(std::memory_order_acquire);
    if (t == 0) return nullptr;
    if (t != tag) continue;
    const DeltaKey* k = keys_[i].load(std::memory_order_relaxed);
    if (k->hash == hash && k->key == key) return k;
  }
}

const DeltaDir* DeltaIndex::FindDir(std::string_view dir, uint64_t hash) const {
  if (dirs_ == nullptr) return nullptr;
  for (uint64_t i = hash & dir_mask_;; i = (i + 1) & dir_mask_) {
    const DeltaDir* d = dirs_[i].load(std::memory_order_acquire);
    if (d == nullptr) return nullptr;
    if (d->hash == hash && d->dir == dir) return d;
  }
}

void DeltaIndex::KeysAt(uint64_t gen, std::vector<const DeltaKey*>* out) const {
  if (keys_ == nullptr) return;
  for (uint64_t i = 0; i <= key_mask_; ++i) {
    const DeltaKey* k = keys_[i].load(std::memory_order_acquire);
    if (k != nullptr && k->At(gen) != nullptr) out->push_back(k);
  }
}

DeltaWriter::DeltaWriter() : index_(std::make_shared<DeltaIndex>()) {
  index_->arena_ = std::make_shared<DeltaArena>();
}

void DeltaWriter::Grow() {
  auto next = std::make_shared<DeltaIndex>();
  next->arena_ = index_->arena_;
  const uint64_t keys = index_->key_count_.load(std::memory_order_relaxed);
  uint64_t key_slots = kMinSlots;
  while (key_slots < 4 * (keys + 1)) key_slots *= 2;
  uint64_t dir_slots = kMinSlots;
  while (dir_slots < 4 * (index_->dir_count_ + 1)) dir_slots *= 2;
  next->keys_.reset(new std::atomic<DeltaKey*>[key_slots]);
  next->tags_.reset(new std::atomic<uint8_t>[key_slots]);
  next->key_mask_ = key_slots - 1;
  next->dirs_.reset(new std::atomic<DeltaDir*>[dir_slots]);
  next->dir_mask_ = dir_slots - 1;
  for (uint64_t i = 0; i < key_slots; ++i) {
    next->keys_[i].store(nullptr, std::memory_order_relaxed);
    next->tags_[i].store(0, std::memory_order_relaxed);
  }
  for (uint64_t i = 0; i < dir_slots; ++i) next->dirs_[i].store(nullptr, std::memory_order_relaxed);
  if (index_->keys_ != nullptr) {
    for (uint64_t i = 0; i <= index_->key_mask_; ++i) {
      DeltaKey* k = index_->keys_[i].load(std::memory_order_relaxed);
      if (k == nullptr) continue;
      uint64_t j = k->hash & next->key_mask_;
      while (next->keys_[j].load(std::memory_order_relaxed) != nullptr)
        j = (j + 1) & next->key_mask_;
      next->keys_[j].store(k, std::memory_order_relaxed);
      next->tags_[j].store(DeltaIndex::Tag(k->hash), std::memory_order_relaxed);
    }
    for (uint64_t i = 0; i <= index_->dir_mask_; ++i) {
      DeltaDir* d = index_->dirs_[i].load(std::memory_order_relaxed);
      if (d == nullptr) continue;
      uint64_t j = d->hash & next->dir_mask_;
      while (next->dirs_[j].load(std::memory_order_relaxed) != nullptr)
        j = (j + 1) & next->dir_mask_;
      next->dirs_[j].store(d, std::memory_order_relaxed);
    }
  }
  next->key_count_.store(keys, std::memory_order_relaxed);
  next->dir_count_ = index_->dir_count_;
  index_ = std::move(next);  // published with the next view
}

DeltaDir* DeltaWriter::DirFor(std::string_view dir) {
  const uint64_t h = format::HashKey(dir);
  DeltaIndex& x = *index_;
  uint64_t i = h & x.dir_mask_;
  for (;; i = (i + 1) & x.dir_mask_) {
    DeltaDir* d = x.dirs_[i].load(std::memory_order_relaxed);
    if (d == nullptr) break;
    if (d->hash == h && d->dir == dir) return d;
  }
  DeltaDir* d = x.arena_->NewDir();
  d->hash = h;
  d->dir = x.arena_->Copy(dir);
  x.dirs_[i].store(d, std::memory_order_release);
  ++x.dir_count_;
  return d;
}

void DeltaWriter::Add(std::string_view key, uint64_t hash, const DeltaState& s) {
  if (index_->keys_ == nullptr ||
      4 * (index_->key_count_.load(std::memory_order_relaxed) + 1) > 2 * (index_->key_mask_ + 1) ||
      4 * (index_->dir_count_ + 1) > 2 * (index_->dir_mask_ + 1)) {
    Grow();
  }
  DeltaIndex& x = *index_;
  DeltaArena& arena = *x.arena_;
  DeltaState* st = arena.NewState();
  *st = s;
  st->value = arena.Copy(s.value);
  uint64_t i = hash & x.key_mask_;
  for (;; i = (i + 1) & x.key_mask_) {
    DeltaKey* k = x.keys_[i].load(std::memory_order_relaxed);
    if (k == nullptr) break;
    if (k->hash == hash && k->key == key) {
      st->older = k->newest.load(std::memory_order_relaxed);
      k->newest.store(st, std::memory_order_release);
      return;
    }
  }
  DeltaKey* k = arena.NewKey();
  k->hash = hash;
  k->key = arena.Copy(key);
  k->newest.store(st, std::memory_order_relaxed);
  DeltaDir* d = DirFor(ParentKey(key));
  k->next_sibling = d->first_child.load(std::memory_order_relaxed);
  x.keys_[i].store(k, std::memory_order_release);
  x.tags_[i].store(DeltaIndex::Tag(hash), std::memory_order_release);
  d->first_child.store(k, std::memory_order_release);
  x.key_count_.store(x.key_count_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

}  // namespace keyfs
