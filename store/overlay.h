// Overlay: the changes of one group commit on top of a base table. Applies the mutations
// of each batch with full tree semantics (parents, ENOTDIR, ENOTEMPTY, renames of whole
// subtrees), and rolls a failing batch back without disturbing the batches before it.
// Internal to store/.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"

namespace keyfs {

// Not thread-safe: owned by the committer. Values are views: into the base table (pinned
// by the caller for the overlay's lifetime) or into the batches (alive until the commit
// has been answered).
class Overlay {
 public:
  struct Value {
    Meta meta;
    uint64_t version = 0;
    std::string_view value;
  };

  // `base` must outlive the overlay. Entries written get version `generation` and, where
  // the batch leaves them 0, times `now_ns`.
  Overlay(const SnapshotTable* base, uint64_t generation, int64_t now_ns);

  // Applies every mutation of `batch` or none: on failure the overlay is as before the call
  // and the Status names the failing key.
  Status Apply(const Batch& batch);

  // The merged state after the applied batches, for the builder: calls fn(key, value) for
  // every live entry in key order. Stops at the first non-OK Status from the base table.
  Status ForEachMerged(const std::function<Status(std::string_view key, const Value& v)>& fn) const;

  bool empty() const { return changes_.empty(); }
  // Keys whose state differs from the base (added, removed or modified), sorted.
  std::vector<std::string> ChangedKeys() const;

 private:
  using Slot = std::optional<Value>;  // nullopt: deleted

  Status ApplyOne(const Mutation& m);
  // The merged entry at `key`. NotFound if absent; errors from the base table otherwise.
  Status Lookup(std::string_view key, Value* out) const;
  // OK if `key`'s parent exists as a directory (creating it if make_parents).
  Status CheckParent(std::string_view key, bool make_parents, const Meta& meta);
  // Whether directory `dir` has any live child.
  StatusOr<bool> HasChildren(std::string_view dir) const;
  // `key` and every key below it, in key order, from the merged state.
  Status CollectSubtree(std::string_view key,
                        std::vector<std::pair<std::string, Value>>* out) const;
  void Set(std::string_view key, Slot slot);

  const SnapshotTable* base_;
  uint64_t generation_;
  int64_t now_ns_;
  std::map<std::string, Slot, std::less<>> changes_;
  // Undo log of the batch being applied: the previous state of each key it touched
  // (outer nullopt: the key had no entry in changes_).
  std::vector<std::pair<std::string, std::optional<Slot>>> undo_;
  std::unordered_set<std::string> undo_keys_;
  bool logging_ = false;
};

}  // namespace keyfs
