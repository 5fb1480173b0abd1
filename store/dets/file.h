// DetsFile: one dets store file (FORMAT.md §3), read through a read-only mapping. Opening
// checks the prefix, footer, header, bucket descriptors, the padding after each bucket and
// the key index directory and reads the bloom filters into memory (verified); entries and
// hash tables are verified per 4 KiB chunk on first use, key index blocks on first use.
// Internal to store/.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

namespace keyfs {

// One decoded entry; the views point into the mapped file. Filled by ReadEntry (no default
// values: lookups that miss never pay for initialising it).
struct DetsEntry {
  uint64_t hash;
  std::string_view key;
  Meta meta;
  uint64_t version;
  std::string_view value;
  uint64_t offset;  // of the entry in the file
  uint64_t size;    // of the whole entry, checksum included
};

// A bucket's descriptor (FORMAT.md §3.3), with the offsets it implies (§3.4).
struct DetsBucket {
  uint64_t entries_off = 0, entries_end = 0, count = 0;
  uint64_t index_off = 0;  // hash table; 0 when the bucket is empty
  uint32_t slot_bits = 0;
  uint64_t bloom_blocks = 0;
  // Derived.
  uint64_t bloom_off = 0, sums_off = 0, end = 0;
  uint64_t chunks = 0, chunk_base = 0;  // checksum chunks; index of the first in the bitmap
};

// One entry of the key index directory (FORMAT.md §3.6).
struct DetsKeyBlock {
  uint64_t offset = 0;
  uint32_t length = 0, items = 0;
  uint64_t checksum = 0;
};

// Thread-safety: all const methods are safe from any number of threads at once.
class DetsFile {
 public:
  // Maps `path` and checks its structure (not the entries: O(buckets + key blocks)).
  // NotFound if missing; Corruption("<path>: <what> at offset N") if damaged.
  static StatusOr<std::shared_ptr<const DetsFile>> Open(const std::string& path);
  // Same for an open descriptor; the file takes ownership of `fd`, even on failure.
  static StatusOr<std::shared_ptr<const DetsFile>> OpenFd(int fd, const std::string& path);

  ~DetsFile();
  DetsFile(const DetsFile&) = delete;
  DetsFile& operator=(const DetsFile&) = delete;

  // Point lookup; `hash` must be format::HashKey(key). OK and *out filled if found; NotFound;
  // Corruption if a structure it touched is damaged. The bloom filter answers most misses.
  Status Find(std::string_view key, uint64_t hash, DetsEntry* out) const {
    KEYFS_RETURN_IF_ERROR(MayContain(hash));
    return FindInTable(key, hash, out);
  }
  // The bloom filter alone: OK if the key may be present, NotFound if it is certainly absent
  // (one cache line read), Corruption.
  Status MayContain(uint64_t hash) const;
  // Starts loading the hash slot of `hash` into the cache.
  void PrefetchSlot(uint64_t hash) const {
    const DetsBucket& b = buckets_[hash >> 56];
    if (b.count > 0)
      __builtin_prefetch(base_ + b.index_off + (((hash << 8) >> (64 - b.slot_bits)) << 4));
  }
  // The hash table alone (after MayContain said OK).
  Status FindInTable(std::string_view key, uint64_t hash, DetsEntry* out) const;

  // Like Find, but reads the hash table and the entry with pread into *storage (the views
  // of *out point into it) instead of through the mapping: for writers, whose lookups must
  // not grow the mapped (resident) part of a file far larger than memory.
  Status FindCopy(std::string_view key, uint64_t hash, DetsEntry* out, std::string* storage) const;

  // Decodes and checks (bounds, checksum) the entry at `offset` of bucket `b`.
  Status ReadEntry(const DetsBucket& b, uint64_t offset, DetsEntry* out) const;

  // A position in the key index: every key of the file in bytewise order.
  // Not thread-safe; the file must outlive it.
  class KeyCursor {
   public:
    explicit KeyCursor(const DetsFile* file) : file_(file) {}
    // Positions at the first key >= target.
    Status Seek(std::string_view target);
    // Positions at the first key of the index.
    Status SeekToFirst();
    bool Valid() const { return valid_; }
    // REQUIRES: Valid(). The view stays valid until the next Seek/Next.
    std::string_view key() const { return key_; }
    Status Next();

   private:
    friend class DetsFile;  // VerifyAll walks the blocks item by item
    Status LoadBlock(uint64_t block);
    Status DecodeItem();

    const DetsFile* file_;
    bool valid_ = false;
    uint64_t block_ = 0;
    const uint8_t* p_ = nullptr;  // next item in the block
    const uint8_t* end_ = nullptr;
    std::string key_;
  };

  // Checks everything: every entry, hash table slot, bloom filter chunk and key index block,
  // the order of entries and keys, that every key is found through the hash table and the
  // bloom filter, the tree (every parent a directory) and the totals in the header.
  Status VerifyAll(std::vector<std::string>* report) const;

  // The first key of key index block `i`, checked. For the merge and the cursor.
  Status BlockFirstKey(uint64_t i, std::string_view* out) const;
  // The checked bytes of key index block `i` (points into the mapping).
  Status BlockBytes(uint64_t i, const uint8_t** data) const;

  // The root directory's metadata (v2: stored in the header; v1: mode 0755, owner 0:0,
  // every time the commit time, child directories counted) and version.
  StatusOr<Meta> RootMeta() const;
  uint64_t root_version() const { return root_version_; }
  // The number of child directories of `dir` ("" = root), counted through the key index
  // and the hash tables: O(children). For version-1 files, which store no counts.
  StatusOr<uint32_t> CountChildDirs(std::string_view dir) const;
  // A version-1 file: no atimes, no child directory counts, no root metadata stored.
  bool legacy() const { return legacy_; }
  uint32_t format_version() const { return format_version_; }
  // Bytes of an entry before its key: 56 (v1) or 68.
  uint32_t entry_fixed() const { return entry_fixed_; }

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  dev_t dev() const { return dev_; }
  ino_t ino() const { return ino_; }
  // When the file was written (its mtime at open).
  int64_t mtime_ns() const { return mtime_ns_; }
  uint64_t file_size() const { return size_; }
  uint64_t generation() const { return generation_; }
  int64_t sync_time_ns() const { return sync_time_ns_; }
  uint64_t entry_count() const { return entry_count_; }
  uint64_t files() const { return files_; }
  uint64_t dirs() const { return dirs_; }
  uint64_t symlinks() const { return symlinks_; }
  uint64_t value_bytes() const { return value_bytes_; }
  uint64_t last_version() const { return last_version_; }
  uint32_t bloom_k() const { return bloom_k_; }
  uint64_t bloom_bits() const;
  // Fraction of lookups of absent keys expected to get past the bloom filters (a miss
  // lands in each bucket with probability 1/256; an empty bucket has no filter to pass).
  double bloom_fp_estimate() const;
  uint64_t hash_slots() const;
  const DetsBucket& bucket(uint32_t t) const { return buckets_[t]; }
  const std::vector<DetsKeyBlock>& key_blocks() const { return key_blocks_; }
  uint64_t key_index_bytes() const { return key_dir_off_ - key_index_off_; }

 private:
  DetsFile() = default;
  Status Init(int fd, const std::string& path);
  Status Corrupt(const std::string& what, uint64_t off) const;
  Status LoadBlooms();
  Status CheckEntryHeader(const DetsBucket& b, uint64_t off, const uint8_t* e,
                          uint64_t* size) const;
  Status DecodeEntry(uint64_t off, const uint8_t* e, uint64_t size, DetsEntry* out) const;
  Status ReadChecked(const DetsBucket& b, uint64_t off, uint64_t len, std::string* out) const;
  Status ReadAt(uint64_t off, size_t len, uint8_t* dst) const;
  // Ensures chunk `c` of bucket `b`'s index region has been verified.
  Status CheckChunk(const DetsBucket& b, uint64_t c) const;
  // The Corruption for chunk `c` of bucket `b` not matching its checksum.
  Status ChunkMismatch(const DetsBucket& b, uint64_t c) const;
  Status CheckRange(const DetsBucket& b, uint64_t off, uint64_t len) const;
  Status CheckKeyBlock(uint64_t i) const;
  Status VerifyBucket(uint32_t t, std::vector<std::string>* report, uint64_t* max_version,
                      uint64_t* counts, uint64_t* values) const;
  Status VerifyKeyIndex(std::vector<std::string>* report) const;

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  uint32_t format_version_ = 0;
  bool legacy_ = false;
  uint32_t header_size_ = 0, entry_fixed_ = 0;
  uint64_t header_off_ = 0;
  Meta root_;
  uint64_t root_version_ = 0;
  uint64_t generation_ = 0;
  int64_t sync_time_ns_ = 0;
  int64_t mtime_ns_ = 0;
  uint64_t entry_count_ = 0, files_ = 0, dirs_ = 0, symlinks_ = 0;
  uint64_t value_bytes_ = 0;
  uint64_t last_version_ = 0;
  uint64_t key_index_off_ = 0, key_dir_off_ = 0;
  uint32_t bloom_k_ = 0;
  std::vector<DetsBucket> buckets_;
  std::vector<DetsKeyBlock> key_blocks_;
  // One bit per checksum chunk / key block: set once it matched. Chunks never change, so
  // relaxed atomics suffice; two threads verifying one chunk at once is harmless.
  std::unique_ptr<std::atomic<uint64_t>[]> chunk_ok_;
  std::unique_ptr<std::atomic<uint64_t>[]> block_ok_;
  uint8_t* bloom_mem_ = nullptr;  // every bucket's bloom filter, copied at open
  size_t bloom_mem_size_ = 0;
  // Per bucket, what a miss reads: its filter in bloom_mem_ and its block count (0: an empty
  // bucket). 16 bytes each, so the 256 of them stay in a few cache lines that a lookup in a
  // cold cache finds in one load, instead of the descriptor and an offset table.
  struct BloomRef {
    const uint8_t* filter = nullptr;
    uint64_t blocks = 0;
  };
  std::array<BloomRef, 256> bloom_refs_{};
};

using DetsFileRef = std::shared_ptr<const DetsFile>;

}  // namespace keyfs
