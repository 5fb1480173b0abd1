// The dets sync's file writer: one streaming merge of the current file with the frozen write
// buffers into a new file (FORMAT.md §3.8). Internal to store/.
#pragma once

#include <cstdint>
#include <vector>

#include "dets/buffer.h"
#include "dets/file.h"
#include "keyfs/store/env.h"
#include "keyfs/store/status.h"

namespace keyfs {

struct MergeInput {
  const DetsFile* old_file = nullptr;      // the file being replaced; nullptr: none
  std::vector<const WriteBuffer*> layers;  // frozen buffers, oldest first (newest wins)
  uint64_t generation = 0;                 // of the new file
  int64_t sync_time_ns = 0;
  uint64_t last_version = 0;  // >= every version in the file and the layers
  Meta root;                  // the root directory's metadata, for the header
  uint64_t root_version = 0;
};

struct MergeStats {
  uint64_t entries = 0;
  uint64_t file_size = 0;
  uint64_t copied = 0;   // entries carried over from the old file
  uint64_t written = 0;  // entries written from the buffers
  uint64_t dropped = 0;  // old entries replaced or deleted
};

// Writes the merged file to `file` (fresh and empty) in one pass, in the newest format
// version. A version-1 old file (no atimes, no child directory counts) is converted entry by
// entry, every directory's count computed first; that is done only with no layers (writers
// upgrade the file when they open it, before any commit). every bucket's entries in
// (hash, key) order followed by its hash table and bloom filter, then the key index, the
// header and the footer. Buckets and key index blocks that no buffered key falls into are
// copied unchanged. The old file is read with pread through a fixed window, every chunk and
// key block checked as it is read, entries checked for order and bucket; a damaged old file
// fails the merge with Corruption. Two helper threads: one sorts the buffered keys by key
// while this one sorts them by hash and writes the buckets, one appends the output.
// Memory: the sort arrays (40 bytes per buffered key) plus a fixed working set (read
// window 4 MiB, up to three 4 MiB write buffers) plus one bucket's hash table and bloom
// filter (about 30 bytes per entry of that bucket: 1/256 of the file's index) plus the key
// index directory (24 bytes per block of about 4 KiB of keys). Does not sync the file.
Status WriteMergedFile(const MergeInput& in, WritableFile* file, MergeStats* stats);

// Writes an empty dets file (no entries) of generation 1; its root belongs to this process's
// effective user and group, mode 0755, every time `time_ns`.
Status WriteEmptyFile(WritableFile* file, int64_t time_ns);

}  // namespace keyfs
