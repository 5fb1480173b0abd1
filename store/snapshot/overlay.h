// Overlay: the snapshot engine's MutableTree, the changes of one group commit on top of a
// version of the store, rolling a failing batch back without disturbing the batches before
// it. Internal to store/.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "snapshot/view.h"
#include "tree.h"

namespace keyfs {

// Not thread-safe: owned by the committer. Values are views: into the base view (pinned
// by the caller for the overlay's lifetime) or into the batches (alive until the commit
// has been answered).
class Overlay final : public MutableTree {
 public:
  using Value = TreeValue;

  // `base` must outlive the overlay. Entries written get version `generation` and, where
  // the batch leaves them 0, times `now_ns`.
  Overlay(const SnapshotView* base, uint64_t generation, int64_t now_ns);

  // Applies every mutation of `batch` or none: on failure the overlay is as before the call
  // and the Status names the failing key.
  Status Apply(const Batch& batch);

  // The merged state after the applied batches, for the builder: calls fn(key, value) for
  // every live entry in key order. Stops at the first non-OK Status from the base table.
  Status ForEachMerged(const std::function<Status(std::string_view key, const Value& v)>& fn) const;

  bool empty() const { return changes_.empty() && !root_; }
  // Number of keys changed (the root not counted).
  size_t size() const { return changes_.size(); }
  // Calls fn for each changed key in key order: its new state, or nullopt if removed.
  void ForEachChange(
      const std::function<void(std::string_view key, const std::optional<Value>& v)>& fn) const;
  // Whether the applied batches changed the root's metadata.
  bool root_changed() const { return root_.has_value(); }
  // The root directory's state after the applied batches.
  StatusOr<Value> Root() const;
  // Keys whose state differs from the base (added, removed or modified), sorted; "" first
  // when the root's metadata changed.
  std::vector<std::string> ChangedKeys() const;

  // MutableTree.
  Status Lookup(std::string_view key, Value* out) const override;
  StatusOr<bool> HasChildren(std::string_view dir) const override;
  Status CollectSubtree(std::string_view key,
                        std::vector<std::pair<std::string, Value>>* out) const override;
  void Set(std::string_view key, std::optional<Value> v) override;

 private:
  using Slot = std::optional<Value>;  // nullopt: deleted

  const SnapshotView* base_;
  uint64_t generation_;
  int64_t now_ns_;
  std::map<std::string, Slot, std::less<>> changes_;
  std::optional<Value> root_;  // set once a batch changed the root
  // Undo log of the batch being applied: the previous state of each key it touched
  // (outer nullopt: the key had no entry in changes_).
  std::vector<std::pair<std::string, std::optional<Slot>>> undo_;
  std::unordered_set<std::string> undo_keys_;
  bool logging_ = false;
};

}  // namespace keyfs
