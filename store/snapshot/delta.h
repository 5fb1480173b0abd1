// Delta: the commits made since the base table was written, held in memory as a multi-version
// hash index over the keys they changed (the in-memory side of STORE.log, FORMAT.md §2.10).
// One writer (the engine's publisher) adds states; any number of readers look keys up at the
// generation of the view they hold, without locks: a state, once published, never changes,
// and every state of a key links to the state it replaced.
// Internal to store/.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "keyfs/store/engine.h"

namespace keyfs {

// One state of a key: what the commit of generation `gen` left there. Immutable.
struct DeltaState {
  uint64_t gen = 0;
  const DeltaState* older = nullptr;  // the state this one replaced in the delta, or null
  bool live = false;                  // false: deleted
  Meta meta;
  uint64_t version = 0;
  std::string_view value;  // in the delta's arena
};

// A key the delta holds states of.
struct DeltaKey {
  uint64_t hash = 0;
  std::string_view key;  // in the arena
  std::atomic<const DeltaState*> newest{nullptr};
  const DeltaKey* next_sibling = nullptr;  // the next key of the same parent (newest first)
  // The state this key had at generation `gen`: null if the delta knew nothing of it then
  // (the base table's entry holds).
  const DeltaState* At(uint64_t gen) const {
    const DeltaState* s = newest.load(std::memory_order_acquire);
    while (s != nullptr && s->gen > gen) s = s->older;
    return s;
  }
};

// A directory some of whose children the delta holds states of.
struct DeltaDir {
  uint64_t hash = 0;
  std::string_view dir;  // "" = the root
  std::atomic<const DeltaKey*> first_child{nullptr};
};

// Memory for keys, values and nodes: freed all at once with the last index referring to it.
class DeltaArena {
 public:
  std::string_view Copy(std::string_view bytes);
  DeltaState* NewState();
  DeltaKey* NewKey();
  DeltaDir* NewDir();
  // Read by any thread (the merge trigger), written by the writer.
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }

 private:
  char* Allocate(size_t n, size_t align);
  std::vector<std::unique_ptr<char[]>> blocks_;
  char* cur_ = nullptr;
  size_t left_ = 0;
  std::atomic<uint64_t> bytes_{0};
};

// The published shape of a delta: open-addressed tables of keys and of directories, read
// lock-free. A writer that outgrows it builds a bigger one over the same arena and publishes
// that with the next view; views holding the older one still find every key they can see.
class DeltaIndex {
 public:
  static uint8_t Tag(uint64_t hash) { return static_cast<uint8_t>(hash >> 56) | 1; }
  // Null if the delta holds no state of `key` (`hash` = format::HashKey(key)).
  const DeltaKey* FindKey(std::string_view key, uint64_t hash) const;
  const DeltaDir* FindDir(std::string_view dir, uint64_t hash) const;
  // Every key of the delta that has a state at or before `gen`, in no order.
  void KeysAt(uint64_t gen, std::vector<const DeltaKey*>* out) const;
  uint64_t key_count() const { return key_count_.load(std::memory_order_acquire); }
  uint64_t arena_bytes() const { return arena_->bytes(); }

 private:
  friend class DeltaWriter;
  std::shared_ptr<DeltaArena> arena_;
  // One byte per key slot, read first: 0 = empty, else Tag(hash). A lookup of a key the
  // delta does not hold (most lookups) touches only this small array.
  std::unique_ptr<std::atomic<uint8_t>[]> tags_;
  std::unique_ptr<std::atomic<DeltaKey*>[]> keys_;
  uint64_t key_mask_ = 0;
  std::unique_ptr<std::atomic<DeltaDir*>[]> dirs_;
  uint64_t dir_mask_ = 0;
  std::atomic<uint64_t> key_count_{0};
  uint64_t dir_count_ = 0;  // writer only
};

// The single writer of a delta. Not thread-safe: owned by the engine's publisher.
class DeltaWriter {
 public:
  DeltaWriter();
  // Adds the state `s` of `key` (a copy: key and value are copied into the arena). States
  // must come in non-decreasing generations. May replace index() with a bigger index.
  void Add(std::string_view key, uint64_t hash, const DeltaState& s);
  // The index to publish with the next view (shared with every view published since the
  // last growth).
  std::shared_ptr<const DeltaIndex> index() const { return index_; }
  uint64_t key_count() const { return index_->key_count(); }
  uint64_t arena_bytes() const { return index_->arena_bytes(); }

 private:
  DeltaDir* DirFor(std::string_view dir);
  void Grow();
  std::shared_ptr<DeltaIndex> index_;
};

}  // namespace keyfs
