// Tree semantics of a batch, shared by both engines: MutableTree is the merged view of a
// store that a batch changes key by key, ApplyMutation applies one mutation to it with full
// tree semantics (parents, ENOTDIR, ENOTEMPTY, renames of whole subtrees, RENAME_NOREPLACE /
// EXCHANGE). Overlay is the snapshot engine's MutableTree: the changes of one group commit on
// top of a base table, rolling a failing batch back without disturbing the batches before it.
// (The dets engine's MutableTree is its write buffer: see dets_engine.cc.)
// Internal to store/.
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

#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "snapshot/view.h"

namespace keyfs {

// An entry of a merged view. `value` is a view whose owner is the MutableTree's business:
// it must stay valid until the batch being applied has been answered.
struct TreeValue {
  Meta meta;
  uint64_t version = 0;
  std::string_view value;
};

// The state a batch is applied to. The root "" is always there, a directory: Lookup("")
// returns its stored metadata and Set("", v) updates it (it is never deleted).
// Not thread-safe: owned by whoever applies the batch.
class MutableTree {
 public:
  virtual ~MutableTree() = default;
  // The entry at `key` in the merged state. NotFound if absent; other errors (Corruption,
  // IOError) from the storage below.
  virtual Status Lookup(std::string_view key, TreeValue* out) const = 0;
  // Whether directory `dir` ("" = root) has any live child in the merged state.
  virtual StatusOr<bool> HasChildren(std::string_view dir) const = 0;
  // `key` and every key below it in the merged state, in key order.
  // REQUIRES: `key` exists.
  virtual Status CollectSubtree(std::string_view key,
                                std::vector<std::pair<std::string, TreeValue>>* out) const = 0;
  // Sets `key` to `v`, or deletes it when v is nullopt. The tree copies what it must keep.
  // For "", v is never nullopt.
  virtual void Set(std::string_view key, std::optional<TreeValue> v) = 0;
};

// Applies one mutation to `tree`. New and changed entries get version `version` and, where
// the mutation leaves them kTimeNow, times `now_ns` (an atime of kTimeNow keeps an existing
// entry's). Directories that gain or lose entries (the root included) get mtime and ctime
// `now_ns`, version `version` and their count of child directories kept right. On failure
// returns the Status (naming the key) and may have changed `tree` partly: the caller rolls
// the whole batch back.
Status ApplyMutation(MutableTree& tree, const Mutation& m, uint64_t version, int64_t now_ns);

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
