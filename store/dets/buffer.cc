// WriteBuffer: arena-allocated nodes and records, an open-addressing hash index, and lists
// of children per directory that are sorted only when someone lists the directory.
#include "dets/buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace keyfs {

namespace {
constexpr size_t kHugeBlock = 2 << 20;  // blocks this big are mapped with huge pages
}  // namespace

Arena::~Arena() {
  for (auto& [p, size] : blocks_) {
    if (size >= kHugeBlock) {
      ::munmap(p, size);
    } else {
      delete[] p;
    }
  }
}

char* Arena::NewBlock(size_t size) {
  char* p;
  if (size >= kHugeBlock) {
    void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    ::madvise(m, size, MADV_HUGEPAGE);
    p = static_cast<char*>(m);
  } else {
    p = new char[size];
  }
  blocks_.emplace_back(p, size);
  bytes_ += size;
  return p;
}

char* Arena::Allocate(size_t n) {
  n = (n + 7) & ~size_t{7};
  if (n > kMaxBlockSize / 4) return NewBlock(n);  // big values get a block of their own
  if (n > left_) {
    // Blocks grow with the buffer, but never below the record that asked for one.
    const size_t size = std::max(
        n, std::min(kMaxBlockSize, size_t{64 << 10} << std::min<size_t>(blocks_.size(), 6)));
    cur_ = NewBlock(size);
    left_ = size;
  }
  char* p = cur_;
  cur_ += n;
  left_ -= n;
  return p;
}

WriteBuffer::WriteBuffer() : slots_(256), dir_slots_(16, DirSlot{0, nullptr}) {}
WriteBuffer::~WriteBuffer() = default;

uint64_t WriteBuffer::bytes() const {
  return arena_.bytes() + slots_.size() * sizeof(Slot) + dir_slots_.size() * sizeof(DirSlot) +
         (child_refs_ + order_.size()) * sizeof(Node*) + dirs_ * sizeof(Children);
}

WriteBuffer::Probe WriteBuffer::ProbeKey(std::string_view key, uint64_t hash) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.node == nullptr) return Probe{nullptr, i, inserts_};
    if (s.hash == hash && s.node->key() == key) return Probe{s.node, i, inserts_};
  }
}

void WriteBuffer::Grow() {
  ++inserts_;  // outstanding probes name slots of the old array
  ZeroedArray<Slot> old(slots_.size() * 2);
  std::swap(old, slots_);
  const size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.node == nullptr) continue;
    size_t i = s.hash & mask;
    while (slots_[i].node != nullptr) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

WriteBuffer::Children* WriteBuffer::FindChildren(std::string_view dir, uint64_t hash) const {
  const size_t mask = dir_slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const DirSlot& s = dir_slots_[i];
    if (s.children == nullptr) return nullptr;
    if (s.hash == hash && s.children->dir == dir) return s.children;
  }
}

WriteBuffer::Children* WriteBuffer::AddChildren(std::string_view dir, uint64_t hash) {
  if ((dirs_ + 1) * 10 > dir_slots_.size() * 7) {
    std::vector<DirSlot> old(dir_slots_.size() * 2, DirSlot{0, nullptr});
    old.swap(dir_slots_);
    const size_t mask = dir_slots_.size() - 1;
    for (const DirSlot& s : old) {
      if (s.children == nullptr) continue;
      size_t i = s.hash & mask;
      while (dir_slots_[i].children != nullptr) i = (i + 1) & mask;
      dir_slots_[i] = s;
    }
  }
  children_.push_back(std::make_unique<Children>());
  Children* c = children_.back().get();
  c->hash = hash;
  c->dir = dir;
  const size_t mask = dir_slots_.size() - 1;
  size_t i = hash & mask;
  while (dir_slots_[i].children != nullptr) i = (i + 1) & mask;
  dir_slots_[i] = DirSlot{hash, c};
  ++dirs_;
  return c;
}

WriteBuffer::Node* WriteBuffer::AddAt(const Probe& probe, std::string_view key, uint64_t hash) {
  if (probe.node != nullptr) return probe.node;  // nodes never move nor go away
  Probe p = probe;
  if ((nodes_ + 1) * 10 > slots_.size() * 7) {
    Grow();
    p = ProbeKey(key, hash);
  } else if (p.stamp != inserts_) {
    p = ProbeKey(key, hash);
  }
  if (p.node != nullptr) return p.node;
  char* mem = arena_.Allocate(sizeof(Node) + key.size());
  Node* n = new (mem) Node{hash, nullptr, static_cast<uint32_t>(key.size())};
  std::memcpy(mem + sizeof(Node), key.data(), key.size());
  slots_[p.slot] = Slot{hash, n};
  ++nodes_;
  ++inserts_;
  order_.push_back(n);
  // The parent's name is a prefix of the key, so the node's own copy names the list.
  const std::string_view dir = ParentKey(n->key());
  const uint64_t dh = format::HashKey(dir);
  Children* c = FindChildren(dir, dh);
  if (c == nullptr) c = AddChildren(dir, dh);
  c->nodes.push_back(n);
  ++child_refs_;
  return n;
}

const WriteBuffer::Record* WriteBuffer::NewRecord(bool live, const Meta& meta, uint64_t version,
                                                  std::string_view value) {
  const size_t vlen = live ? value.size() : 0;
  char* mem = arena_.Allocate(sizeof(Record) + vlen);
  Record* r = new (mem) Record{};
  r->version = version;
  r->tombstone = !live;
  if (live) {
    r->mtime_ns = meta.mtime_ns;
    r->ctime_ns = meta.ctime_ns;
    r->atime_ns = meta.atime_ns;
    r->subdirs = meta.type == EntryType::kDir ? meta.subdirs : 0;
    r->mode = meta.mode;
    r->uid = meta.uid;
    r->gid = meta.gid;
    r->type = meta.type;
    if (vlen > 0) std::memcpy(mem + sizeof(Record), value.data(), vlen);
  } else {
    r->type = EntryType::kFile;
  }
  r->value_len = vlen;
  return r;
}

void WriteBuffer::SetRecord(Node* node, const Record* r) { node->record = r; }

void WriteBuffer::Rewrite(const Record* r, const Meta& meta, uint64_t version) {
  Record* w = const_cast<Record*>(r);  // arena memory, written only by its batch's writer
  w->version = version;
  w->mtime_ns = meta.mtime_ns;
  w->ctime_ns = meta.ctime_ns;
  w->atime_ns = meta.atime_ns;
  w->subdirs = meta.subdirs;
  w->mode = meta.mode;
  w->uid = meta.uid;
  w->gid = meta.gid;
}

std::span<const WriteBuffer::Node* const> WriteBuffer::SortedChildren(std::string_view dir) const {
  Children* c = FindChildren(dir, format::HashKey(dir));
  if (c == nullptr) return {};
  MutexLock l(&sort_mu_);
  if (c->sorted != c->nodes.size()) SortChildren(c);
  return {c->nodes.data(), c->nodes.size()};
}

void WriteBuffer::SortChildren(Children* c) {
  auto less = [](const Node* a, const Node* b) { return a->key() < b->key(); };
  const auto mid = c->nodes.begin() + static_cast<ptrdiff_t>(c->sorted);
  std::sort(mid, c->nodes.end(), less);
  std::inplace_merge(c->nodes.begin(), mid, c->nodes.end(), less);
  c->sorted = c->nodes.size();
}

}  // namespace keyfs
