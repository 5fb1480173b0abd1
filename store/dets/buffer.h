// WriteBuffer: one layer of the dets engine's buffered writes (puts and tombstones), held
// in memory until a sync merges it into the store file. Point lookups go through a hash
// index; directory listings through a per-directory list of children sorted on demand.
// Internal to store/.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>
#include <string_view>
#include <vector>

#include "format.h"
#include "keyfs/base/mutex.h"
#include "keyfs/store/engine.h"

namespace keyfs {

// An allocator for large arrays that are read at random (hash tables, sort arrays): big
// ones are mapped with transparent huge pages, so random probes do not miss the TLB on
// every access.
template <class T>
struct HugeAllocator {
  using value_type = T;
  HugeAllocator() = default;
  template <class U>
  HugeAllocator(const HugeAllocator<U>&) {}  // NOLINT: rebinding
  static constexpr size_t kHuge = 2 << 20;
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < kHuge) return std::allocator<T>().allocate(n);
    void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    ::madvise(m, bytes, MADV_HUGEPAGE);
    return static_cast<T*>(m);
  }
  void deallocate(T* p, size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < kHuge) {
      std::allocator<T>().deallocate(p, n);
    } else {
      ::munmap(p, bytes);
    }
  }
  template <class U>
  bool operator==(const HugeAllocator<U>&) const {
    return true;
  }
};
template <class T>
using HugeVector = std::vector<T, HugeAllocator<T>>;

// A fixed-size array of a trivial type, all bytes zero, taken zeroed from the system (mmap
// with huge pages when big, else calloc): a growing hash table is not written twice.
template <class T>
class ZeroedArray {
 public:
  ZeroedArray() = default;
  explicit ZeroedArray(size_t n) : n_(n) {
    const size_t bytes = n * sizeof(T);
    if (bytes >= HugeAllocator<T>::kHuge) {
      void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      ::madvise(m, bytes, MADV_HUGEPAGE);
      p_ = static_cast<T*>(m);
    } else {
      p_ = static_cast<T*>(std::calloc(n, sizeof(T)));
      if (p_ == nullptr) throw std::bad_alloc();
    }
  }
  ~ZeroedArray() { Free(); }
  ZeroedArray(ZeroedArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  ZeroedArray& operator=(ZeroedArray&& o) noexcept {
    if (this != &o) {
      Free();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  size_t size() const { return n_; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }

 private:
  void Free() {
    if (p_ == nullptr) return;
    if (n_ * sizeof(T) >= HugeAllocator<T>::kHuge) {
      ::munmap(p_, n_ * sizeof(T));
    } else {
      std::free(p_);
    }
    p_ = nullptr;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Bump allocator. Memory is never moved or freed before the arena is destroyed, so views
// into it stay valid for the arena's lifetime. Blocks grow from 64 KiB to 4 MiB; big ones
// are mapped with transparent huge pages, so a large buffer costs few page faults.
// Not thread-safe.
class Arena {
 public:
  Arena() = default;
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  // `n` bytes aligned to 8.
  char* Allocate(size_t n);
  // Bytes obtained from the system.
  uint64_t bytes() const { return bytes_; }

 private:
  static constexpr size_t kMaxBlockSize = 4 << 20;
  char* NewBlock(size_t size);

  std::vector<std::pair<char*, size_t>> blocks_;
  char* cur_ = nullptr;
  size_t left_ = 0;
  uint64_t bytes_ = 0;
};

// Thread-safety: the engine's contract. Writers (FindOrAdd, SetRecord, NewRecord) need
// exclusive access; Find and SortedChildren may run concurrently with each other (they take
// sort_mu_ for the lazy sort); a frozen buffer is never written again.
class WriteBuffer {
 public:
  // One state of a key, immutable once written; the value bytes follow it in the arena.
  struct Record {
    uint64_t version;
    int64_t mtime_ns, ctime_ns, atime_ns;
    uint64_t value_len;
    uint32_t mode, uid, gid, subdirs;
    EntryType type;
    bool tombstone;

    const char* value() const { return reinterpret_cast<const char*>(this + 1); }
    std::string_view value_view() const { return {value(), value_len}; }
    Meta meta() const { return Meta{type, mode, uid, gid, mtime_ns, ctime_ns, atime_ns, subdirs}; }
  };
  // One key of the layer. `record` is the key's latest state in this layer; nullptr means
  // the layer says nothing about the key (a rolled-back insert): look further down.
  struct Node {
    uint64_t hash;
    const Record* record;
    uint32_t key_len;
    const char* key_data() const { return reinterpret_cast<const char*>(this + 1); }
    std::string_view key() const { return {key_data(), key_len}; }
  };
  // Changes of the merged state (entries, bytes) made through this layer, for exact totals.
  struct Totals {
    int64_t entries = 0, files = 0, dirs = 0, symlinks = 0, value_bytes = 0;
  };

  WriteBuffer();
  ~WriteBuffer();
  WriteBuffer(const WriteBuffer&) = delete;
  WriteBuffer& operator=(const WriteBuffer&) = delete;

  // The node of `key` (hash = format::HashKey(key)), or nullptr.
  const Node* Find(std::string_view key, uint64_t hash) const { return ProbeKey(key, hash).node; }

  // Where a key is, or would be inserted; valid until the next insert (see AddAt).
  struct Probe {
    Node* node;      // nullptr: absent
    size_t slot;     // the node's slot, or the empty slot it would take
    uint64_t stamp;  // inserts_ when probed
  };
  Probe ProbeKey(std::string_view key, uint64_t hash) const;
  // Starts loading the first slot `hash` probes into the cache.
  void PrefetchSlot(uint64_t hash) const {
    __builtin_prefetch(&slots_[hash & (slots_.size() - 1)]);
  }

  // Writer side. The node of `key`, created (with record nullptr and registered with its
  // parent directory) if missing.
  Node* FindOrAdd(std::string_view key, uint64_t hash) {
    return AddAt(ProbeKey(key, hash), key, hash);
  }
  // Same, reusing a probe of the same key (re-probing only if something was inserted since).
  Node* AddAt(const Probe& probe, std::string_view key, uint64_t hash);
  // A record for `meta`/`value` (copied into the arena), or a tombstone if !live.
  const Record* NewRecord(bool live, const Meta& meta, uint64_t version, std::string_view value);
  void SetRecord(Node* node, const Record* r);
  // The root directory's metadata as this layer last set it (a live record), or nullptr.
  const Record* root() const { return root_; }
  void SetRoot(const Record* r) { root_ = r; }
  // Overwrites `r`, a live directory record made by NewRecord for the batch being applied
  // (which no reader has seen), with `meta` and `version`: a directory touched by every
  // put of a batch then costs one record, not one per put.
  static void Rewrite(const Record* r, const Meta& meta, uint64_t version);

  // The nodes of the immediate children of `dir` ("" = root) in this layer, in key order
  // (sorted here on first use after a change). Nodes whose record is nullptr are included:
  // callers skip them. Valid until the next writer call.
  std::span<const Node* const> SortedChildren(std::string_view dir) const;

  // Calls fn(node) for every node with a record, in insertion order (which is also the
  // order of the arena, so the walk reads memory mostly sequentially).
  template <class Fn>
  void ForEachNode(Fn&& fn) const {
    for (const Node* n : order_) {
      if (n->record != nullptr) fn(n);
    }
  }

  // Nothing buffered: no key and no change of the root.
  bool empty() const { return nodes_ == 0 && root_ == nullptr; }
  uint64_t nodes() const { return nodes_; }
  // Memory held: arena, hash index and child lists.
  uint64_t bytes() const;
  Totals& totals() { return totals_; }
  const Totals& totals() const { return totals_; }

 private:
  struct Slot {
    uint64_t hash;
    Node* node;
  };
  struct Children {
    std::vector<const Node*> nodes;
    size_t sorted = 0;  // nodes[0, sorted) are in key order
    uint64_t hash;      // of the directory key
    std::string_view dir;
  };
  struct DirSlot {
    uint64_t hash;
    Children* children;
  };

  void Grow();
  Children* FindChildren(std::string_view dir, uint64_t hash) const;
  Children* AddChildren(std::string_view dir, uint64_t hash);
  // Sorts the unsorted tail of `c` into its sorted prefix. REQUIRES: sort_mu_ held.
  static void SortChildren(Children* c);

  Arena arena_;
  ZeroedArray<Slot> slots_;  // open addressing, linear probing; size a power of two
  uint64_t nodes_ = 0;
  const Record* root_ = nullptr;   // beside nodes_: empty() reads both on every lookup
  uint64_t inserts_ = 0;           // stamps probes
  HugeVector<const Node*> order_;  // every node, in insertion order
  std::vector<DirSlot> dir_slots_;
  uint64_t dirs_ = 0;
  std::vector<std::unique_ptr<Children>> children_;
  uint64_t child_refs_ = 0;
  Totals totals_;
  mutable Mutex sort_mu_;  // the lazy sort of child lists (Children::sorted); leaf lock
};

}  // namespace keyfs
