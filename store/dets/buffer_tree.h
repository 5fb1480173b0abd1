// BufferTree: the dets engine's MutableTree (tree.h), through which ApplyMutation
// applies a batch straight to the active write buffer, with an undo log for a batch that
// fails. Internal to store/.
#pragma once

#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dets/served.h"

namespace keyfs::dets {

// The dets engine's MutableTree: a batch applied straight to the active buffer, with an
// undo log. REQUIRES: mu_ held exclusively for the tree's lifetime.
class BufferTree final : public MutableTree {
 public:
  BufferTree(WriteBuffer* active, const Layers& layers, bool collect_changed)
      : active_(active), layers_(layers), collect_changed_(collect_changed) {}

  // The hash of the key of the mutation about to be applied, computed by the caller already
  // (a key is recognised by its address, so views of other strings are hashed anew).
  void SetHashHint(std::string_view key, uint64_t hash);

  Status Lookup(std::string_view key, TreeValue* out) const override;

  StatusOr<bool> HasChildren(std::string_view dir) const override;

  Status CollectSubtree(std::string_view key,
                        std::vector<std::pair<std::string, TreeValue>>* out) const override;

  void Set(std::string_view key, std::optional<TreeValue> v) override;

  void Rollback();

  // Adds the batch's totals to the active buffer's.
  void Keep();

  std::vector<std::string> TakeChanged();

 private:
  // The merged entry at `key` (not the root), reading the file like LookupBelow.
  Status LookupMerged(std::string_view key, TreeValue* out) const;

  uint64_t Hash(std::string_view key) const;

  // The entry below the active buffer: frozen buffers, newest first, then the file.
  Status LookupBelow(std::string_view key, uint64_t h, TreeValue* out) const;

  std::vector<const WriteBuffer*> BufferLayers() const;

  void Count(EntryType type, uint64_t size, int64_t sign);

  WriteBuffer* active_;
  const Layers& layers_;
  const bool collect_changed_;
  std::vector<std::pair<Node*, const BufRecord*>> undo_;  // node nullptr: the root
  WriteBuffer::Totals delta_;
  // The last Lookup (see there).
  struct LastLookup {
    bool valid = false;
    std::string key;
    uint64_t hash = 0;
    WriteBuffer::Probe probe{};
    bool below_known = false, below_found = false;
    TreeValue below;
  };
  mutable LastLookup last_;
  std::string_view hint_key_;
  uint64_t hint_hash_ = 0;
  // Copies of file entries read during the batch (TreeValue views point into them).
  mutable std::deque<std::string> scratch_;
  std::vector<std::string> changed_;
};

}  // namespace keyfs::dets
