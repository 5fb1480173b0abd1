// TableBuilder: writes one snapshot file (FORMAT.md §2) in a single pass from entries
// given in key order. Internal to store/.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"

namespace keyfs {

// Not thread-safe. Memory: the output buffer plus 16 bytes per entry (offsets and hashes)
// plus the hash index and bloom filter, built in memory before they are appended.
class TableBuilder {
 public:
  // `file` must be empty; the builder writes everything, header last. It does not sync.
  // `root` (with `root_version`) is the root directory's metadata, kept in the header.
  TableBuilder(WritableFile* file, uint64_t generation, int64_t commit_time_ns, const Meta& root,
               uint64_t root_version);
  ~TableBuilder();
  TableBuilder(const TableBuilder&) = delete;
  TableBuilder& operator=(const TableBuilder&) = delete;

  // REQUIRES: keys strictly increasing (bytewise) across calls, each a valid key; times
  // resolved (no kTimeNow); meta.subdirs right for a directory.
  Status Add(std::string_view key, const Meta& meta, uint64_t version, std::string_view value);

  // Writes the indexes, checksums and header. Returns the first error seen.
  Status Finish();

  uint64_t entries() const { return offsets_.size(); }
  uint64_t file_size() const { return pos_; }

 private:
  void Emit(const void* data, size_t len);
  void EmitZeros(size_t len);
  Status Flush();

  WritableFile* file_;
  uint64_t generation_;
  int64_t commit_time_ns_;
  Meta root_;
  uint64_t root_version_;
  std::string buf_;
  uint64_t pos_ = 0;         // file offset of the next byte emitted
  uint64_t chunk_fill_ = 0;  // bytes of the current chunk hashed so far
  void* hash_state_;         // XXH3_state_t*, owned
  std::vector<uint64_t> sums_;
  std::vector<uint64_t> offsets_;
  std::vector<uint64_t> hashes_;
  uint64_t value_bytes_ = 0;
  Status status_;
};

}  // namespace keyfs
