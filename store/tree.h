// Tree semantics of a batch, shared by both engines: MutableTree is the merged view of a
// store that a batch changes key by key, ApplyMutation applies one mutation to it with full
// tree semantics (parents, ENOTDIR, ENOTEMPTY, renames of whole subtrees, RENAME_NOREPLACE /
// EXCHANGE). The snapshot engine's MutableTree is its Overlay (snapshot/overlay.h), the dets
// engine's its write buffer.
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

}  // namespace keyfs
