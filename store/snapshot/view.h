// SnapshotView: one version of a snapshot store as readers see it, the base table plus the
// delta's states up to the view's generation. Immutable once published; a reader that holds
// it sees that one version whatever commits and merges happen meanwhile.
// Internal to store/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "keyfs/store/snapshot.h"
#include "snapshot/delta.h"

namespace keyfs {

// Counts of a version's entries, kept exact by the publisher from what each commit changed.
struct ViewCounts {
  uint64_t entries = 0, files = 0, dirs = 0, symlinks = 0, value_bytes = 0;
  // Adds (sign +1) or removes (-1) one entry.
  void Count(const Meta& m, uint64_t value_size, int sign);
};

class SnapshotView {
 public:
  SnapshotView(TableRef base, std::shared_ptr<const DeltaIndex> delta, uint64_t generation,
               Meta root, uint64_t root_version, int64_t commit_time_ns, ViewCounts counts,
               uint64_t delta_keys);

  // Point lookup at this version. OK and *out filled; NotFound; Corruption from the base.
  // The views in *out stay valid while the view is held.
  Status Find(std::string_view key, EntryRef* out) const;
  // Immediate children of `dir` after `start_after`, in order, merged from the base and the
  // delta (deleted ones left out). Does not check that `dir` exists.
  Status ListChildren(std::string_view dir, std::string_view start_after, const ListFn& fn) const;
  // Every entry with key >= `from`, in key order, until fn returns false.
  Status Scan(std::string_view from, const std::function<bool(const EntryRef&)>& fn) const;

  const TableRef& base() const { return base_; }
  const std::shared_ptr<const DeltaIndex>& delta() const { return delta_; }
  uint64_t generation() const { return generation_; }
  const Meta& root() const { return root_; }
  uint64_t root_version() const { return root_version_; }
  int64_t commit_time_ns() const { return commit_time_ns_; }
  const ViewCounts& counts() const { return counts_; }
  // Keys the delta holds states of at this version (0: the base alone).
  uint64_t delta_keys() const { return delta_keys_; }

 private:
  // The delta's keys visible at this version whose key is >= from (and, if `dir` is given,
  // whose parent is dir), sorted.
  void SortedDeltaKeys(std::string_view from, const std::string_view* dir,
                       std::vector<const DeltaKey*>* out) const;

  TableRef base_;
  std::shared_ptr<const DeltaIndex> delta_;
  uint64_t generation_;
  Meta root_;
  uint64_t root_version_;
  int64_t commit_time_ns_;
  ViewCounts counts_;
  uint64_t delta_keys_;
};

using ViewRef = std::shared_ptr<const SnapshotView>;

// Fills an EntryRef from a live delta state.
inline void FromState(const DeltaKey& k, const DeltaState& s, EntryRef* out) {
  out->key = k.key;
  out->meta = s.meta;
  out->version = s.version;
  out->value = s.value;
}

}  // namespace keyfs
