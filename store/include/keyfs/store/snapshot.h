// The snapshot engine's immutable table: one mmap'd file holding every entry (see
// store/FORMAT.md). Lookups are lock-free; a table stays valid while a shared_ptr to it is
// held, whatever tables are published after it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

namespace keyfs {

// One entry as stored in a table; every view points into the mapped file.
struct EntryRef {
  std::string_view key;
  Meta meta;
  uint64_t version = 0;
  std::string_view value;
};

// Thread-safety: all const methods are safe from any number of threads at once.
class SnapshotTable {
 public:
  // Maps the file at `path` and checks its header, section bounds and the checksum of its
  // chunk-checksum array; O(file size / 16 KiB) tiny work, no per-entry parsing. Entry
  // bytes are verified lazily: the first access to each 16 KiB chunk checks its checksum.
  // NotFound if missing; Corruption("<path>: <what> at offset N") if damaged.
  static StatusOr<std::shared_ptr<const SnapshotTable>> Open(const std::string& path);
  // Same, for an open descriptor (the table takes ownership of `fd`).
  static StatusOr<std::shared_ptr<const SnapshotTable>> OpenFd(int fd, const std::string& path);

  ~SnapshotTable();
  SnapshotTable(const SnapshotTable&) = delete;
  SnapshotTable& operator=(const SnapshotTable&) = delete;

  // Point lookup. OK and *out filled if found; NotFound; Corruption if a structure it
  // touched is damaged. (A version-1 table stores no atime, which reads as the mtime, and
  // no count of child directories, which a directory's lookup then counts: O(children).)
  Status Find(std::string_view key, EntryRef* out) const;
  // Find, given the key's hash (format::HashKey) already computed.
  Status FindHashed(std::string_view key, uint64_t hash, EntryRef* out) const;

  // Number of entries and the entry at sorted position i (0 <= i < entry_count()).
  uint64_t entry_count() const { return entry_count_; }
  Status At(uint64_t i, EntryRef* out) const;

  // The root directory's metadata (stored in the header; for a version-1 table: mode 0755,
  // owner 0:0, every time the commit time, child directories counted) and version.
  StatusOr<Meta> RootMeta() const;
  uint64_t root_version() const { return root_version_; }
  // The number of child directories of `dir` ("" = root), counted from the records.
  StatusOr<uint32_t> CountChildDirs(std::string_view dir) const;
  // The first sorted position whose key is >= key (entry_count() if none).
  StatusOr<uint64_t> LowerBound(std::string_view key) const;

  // Immediate children of directory `dir` ("" = root) after `start_after`, in order.
  // Does not check that `dir` exists (the engine does).
  Status ListChildren(std::string_view dir, std::string_view start_after, const ListFn& fn) const;

  // Checks every chunk checksum and every structure: record bounds, key rules, sorted
  // order, the hash index and the bloom filter agree with the records, the tree (every
  // parent is a directory). OK only if all hold.
  Status VerifyAll(std::vector<std::string>* report) const;

  // The version of the file's format (1 or 2); tables are written in the newest only.
  uint32_t format_version() const { return format_version_; }
  uint64_t generation() const { return generation_; }
  int64_t commit_time_ns() const { return commit_time_ns_; }
  uint64_t file_size() const { return size_; }
  uint64_t value_bytes() const { return value_bytes_; }
  uint64_t slot_count() const { return uint64_t{1} << slot_bits_; }
  uint64_t bloom_bits() const { return bloom_blocks_ * 512; }
  uint32_t bloom_k() const { return bloom_k_; }
  // Fraction of lookups of absent keys expected to get past the bloom filter.
  double bloom_fp_estimate() const;
  const std::string& path() const { return path_; }
  dev_t dev() const { return dev_; }
  ino_t ino() const { return ino_; }

 private:
  SnapshotTable() = default;
  Status Init(int fd, const std::string& path);
  // Ensures bytes [off, off+len) are inside the data area and their chunks verified.
  Status Check(uint64_t off, uint64_t len, const char* what) const;
  Status VerifyChunk(uint64_t chunk) const;
  bool BloomMayContain(uint64_t h) const;
  template <bool kRaw>
  Status FindImpl(std::string_view key, uint64_t hash, EntryRef* out) const;
  // Find and At as stored: a version-1 directory's subdirs is 0.
  Status FindRaw(std::string_view key, EntryRef* out) const;
  Status AtRaw(uint64_t i, EntryRef* out) const;
  // Counts a version-1 directory's child directories into out->meta.subdirs.
  Status FillLegacy(EntryRef* out) const;
  // Calls fn for each immediate child of `dir` after `start_after`, as stored.
  Status ForEachChild(std::string_view dir, std::string_view start_after,
                      const std::function<bool(const EntryRef&)>& fn) const;
  Status FindSlow(uint64_t roff, std::string_view key, EntryRef* out) const;
  Status DecodeRecord(uint64_t off, EntryRef* out) const;
  Status Corrupt(const char* what, uint64_t off) const;

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  uint32_t format_version_ = 0;
  uint32_t header_size_ = 0;
  uint32_t meta_size_ = 0;  // of a record's metadata: 40 (v1) or 48
  // Where a record's atime is, from its metadata: v1 has none, so it is the mtime's.
  uint32_t atime_off_ = 0;
  bool legacy_ = false;  // v1: directories' child counts are not stored
  Meta root_;            // v2: from the header
  uint64_t root_version_ = 0;
  uint64_t generation_ = 0;
  int64_t commit_time_ns_ = 0;
  uint64_t entry_count_ = 0;
  uint64_t value_bytes_ = 0;
  uint64_t records_off_ = 0, records_end_ = 0;
  uint64_t sorted_off_ = 0;
  uint64_t slots_off_ = 0;
  uint32_t slot_bits_ = 0;
  uint64_t slot_mask_ = 0;
  uint64_t bloom_off_ = 0, bloom_blocks_ = 0;
  uint32_t bloom_k_ = 0;
  uint64_t sums_off_ = 0;  // end of the checksummed data area
  uint64_t chunk_count_ = 0;
  // One bit per chunk: set once its checksum matched. Chunks never change, so relaxed
  // atomics suffice; two threads verifying one chunk at once is harmless.
  std::unique_ptr<std::atomic<uint64_t>[]> verified_;
  mutable std::atomic<uint64_t> unverified_chunks_{0};
  // Set once every chunk has been verified: from then on reads skip the per-chunk bits.
  mutable std::atomic<bool> all_verified_{false};
  // Small tables skip the bloom filter: their hash index is in cache anyway, and a hit
  // would pay for both.
  bool use_bloom_ = true;
};

using TableRef = std::shared_ptr<const SnapshotTable>;

// The snapshot engine. Beyond Engine, it hands out the current table for lock-free reads.
class SnapshotEngine : public Engine {
 public:
  // The table being served; stays valid while held. Never null. Lock-free (one atomic
  // shared_ptr load), never waits for a commit.
  // The base table of the version being served: the whole store only when no commit is
  // pending in the commit log (after Merge(), say).
  virtual TableRef Current() const = 0;
  // Folds the commit log into a new base table now (a background merge does it on its own
  // once the log holds merge_threshold keys) and returns once it is done. ReadOnly for a
  // store opened read-only.
  virtual Status Merge() = 0;
  // Returns once no merge is wanted or running: the last merge's Status.
  virtual Status WaitForMerges() = 0;
};

}  // namespace keyfs
