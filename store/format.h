// Constants of the on-disk formats. store/FORMAT.md is the document; this header only
// names its numbers. Internal to store/.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "keyfs/store/engine.h"

namespace keyfs::format {

static_assert(std::endian::native == std::endian::little, "formats are little-endian");

// Seed of every XXH3-64 hash in the snapshot format (keys, chunks, sums, header).
constexpr uint64_t kHashSeed = 0x6b65796673763031ULL;  // "keyfsv01"

inline uint64_t Hash(const void* data, size_t len) {
  return XXH3_64bits_withSeed(data, len, kHashSeed);
}
inline uint64_t HashKey(std::string_view key) { return Hash(key.data(), key.size()); }

// ---- snapshot (FORMAT.md §2) ----
constexpr char kSnapMagic[8] = {'K', 'E', 'Y', 'F', 'S', 'S', 'N', 'P'};
// Writers write kSnapVersion only; readers accept every version from 1 (FORMAT.md §2.9).
// Version 3 has version 2's layout; it says the table may have a commit log beside it
// (STORE.log, §2.10), so that a reader that knows no log refuses it.
constexpr uint32_t kSnapVersion = 3;
constexpr uint32_t kSnapHeaderSizeV1 = 128;
constexpr uint32_t kSnapHeaderSize = 176;  // v2: the root's metadata before the checksum
constexpr uint64_t kSnapDataStart = 4096;  // records begin here; [128, 4096) is zero
constexpr uint32_t kChunkShift = 14;       // 16 KiB checksum chunks
constexpr uint64_t kChunkSize = uint64_t{1} << kChunkShift;
constexpr uint32_t kRecordFixed = 16;  // key_len, type, pad, value_len
constexpr uint32_t kMetaSizeV1 = 40;   // mode, uid, gid, zero, mtime, ctime, version
constexpr uint32_t kMetaSize = 48;     // mode, uid, gid, subdirs, mtime, ctime, version, atime
constexpr uint32_t kSlotSize = 16;     // hash, record offset
constexpr uint32_t kBloomBlockBytes = 64;
constexpr uint32_t kBloomBitsPerKey = 12;
constexpr uint32_t kBloomK = 8;
constexpr uint32_t kMinSlotBits = 4;

// Header field offsets.
enum SnapHeader : uint32_t {
  kHMagic = 0,
  kHVersion = 8,
  kHHeaderSize = 12,
  kHFileSize = 16,
  kHGeneration = 24,
  kHCommitTime = 32,
  kHEntryCount = 40,
  kHValueBytes = 48,
  kHRecordsOff = 56,
  kHSortedOff = 64,
  kHSlotsOff = 72,
  kHSlotBits = 80,
  kHBloomK = 84,
  kHBloomOff = 88,
  kHBloomBlocks = 96,
  kHSumsOff = 104,
  kHSumsChecksum = 112,
  kHHeaderChecksumV1 = 120,  // v1: H(bytes 0..119)
  // v2: the root directory's metadata, then the checksum of everything before it.
  kHRootMode = 120,
  kHRootUid = 124,
  kHRootGid = 128,
  kHRootSubdirs = 132,
  kHRootMtime = 136,
  kHRootCtime = 144,
  kHRootAtime = 152,
  kHRootVersion = 160,
  kHHeaderChecksum = 168,
};

// Record metadata field offsets, relative to the metadata (16 + align8(key_len)).
enum SnapMetaField : uint32_t {
  kMMode = 0,
  kMUid = 4,
  kMGid = 8,
  kMSubdirs = 12,  // v1: zero
  kMMtime = 16,
  kMCtime = 24,
  kMVersion = 32,
  kMAtime = 40,  // v2 only
};

// ---- snapshot commit log, STORE.log (FORMAT.md §2.10) ----
constexpr char kLogMagic[8] = {'K', 'E', 'Y', 'F', 'S', 'L', 'O', 'G'};
constexpr uint32_t kLogVersion = 1;
constexpr uint32_t kLogHeaderSize = 64;
enum LogHeader : uint32_t {
  kLHMagic = 0,
  kLHVersion = 8,
  kLHHeaderSize = 12,
  kLHBaseGeneration = 16,
  kLHCreateTime = 24,
  kLHChecksum = 56,  // H(bytes 0..55)
};
constexpr uint32_t kLogRecordMagic = 0x4352'4c4b;  // "KLRC"
constexpr uint32_t kLogRecordFixed = 40;           // magic, flags, length, generation, time, count
constexpr uint32_t kLogFlagRoot = 1;               // the root's metadata (48 bytes) follows
enum LogRecordField : uint32_t {
  kLRMagic = 0,
  kLRFlags = 4,
  kLRLength = 8,  // of the whole record, checksum included; a multiple of 8
  kLRGeneration = 16,
  kLRCommitTime = 24,
  kLRCount = 32,
};
constexpr uint32_t kLogEntryFixed = 16;  // type, zero, key_len (u16), zero (u32), value_len
constexpr uint8_t kLogDeleted = 0;       // entry type: the key was removed

constexpr uint64_t Align8(uint64_t x) { return (x + 7) & ~uint64_t{7}; }
constexpr uint64_t Align64(uint64_t x) { return (x + 63) & ~uint64_t{63}; }

inline uint64_t RecordSize(uint64_t key_len, uint64_t value_len, uint32_t meta_size = kMetaSize) {
  return kRecordFixed + Align8(key_len) + meta_size + Align8(value_len);
}

// Bloom probe: block index and the k bit positions come from one 64-bit key hash.
struct BloomProbe {
  uint64_t block;
  uint32_t a, delta;
};
inline BloomProbe Bloom(uint64_t h, uint64_t blocks) {
  uint64_t m = (h ^ (h >> 29)) * 0x9E3779B97F4A7C15ULL;
  uint32_t a = static_cast<uint32_t>(m);
  return {((m >> 32) * blocks) >> 32, a, (a >> 17) | (a << 15)};
}

// Expected false-positive rate of a blocked bloom filter: `keys` spread over `blocks` blocks
// of `block_bits` bits, `k` bits set per key inside its block. Block loads are Poisson
// distributed; a block holding j keys lets a miss through with (1 - (1 - 1/B)^(k j))^k.
inline double BlockedBloomFpRate(uint64_t keys, uint64_t blocks, uint32_t block_bits, uint32_t k) {
  if (keys == 0 || blocks == 0 || block_bits == 0) return 0;
  const double lambda = static_cast<double>(keys) / static_cast<double>(blocks);
  if (lambda > 500) return 1;  // saturated (and exp(-lambda) would underflow)
  const double miss_bit = 1.0 - 1.0 / block_bits;
  const uint64_t last = static_cast<uint64_t>(lambda + 12 * std::sqrt(lambda) + 20);
  double p = std::exp(-lambda), fp = 0;
  for (uint64_t j = 0; j <= last; ++j) {
    fp += p * std::pow(1.0 - std::pow(miss_bit, static_cast<double>(k) * j), k);
    p *= lambda / static_cast<double>(j + 1);
  }
  return fp;
}

inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void Store32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void Store64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

// ---- dets (FORMAT.md §3) ----
constexpr char kDetsMagic[8] = {'K', 'E', 'Y', 'F', 'S', 'D', 'E', 'T'};
// Writers write kDetsVersion only; readers accept every version from 1 (FORMAT.md §3.10).
constexpr uint32_t kDetsVersion = 2;
inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline void Store16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

constexpr uint64_t kDetsPrefixSize = 64;    // magic, version, zeros; bucket 0 starts here
constexpr uint32_t kDetsBuckets = 256;      // picked by the top byte of the key hash
constexpr uint32_t kDetsEntryFixedV1 = 56;  // v1 entry bytes before the key
constexpr uint32_t kDetsEntryFixed = 68;    // v2: atime and subdirs after the v1 fields
constexpr uint32_t kDetsEntryOverhead = kDetsEntryFixed;  // a v2 entry is this + key + value
constexpr uint32_t kDetsSlotSize = 16;                    // hash, entry offset
constexpr uint32_t kDetsMinSlotBits = 2;
constexpr uint32_t kDetsMaxSlotBits = 40;
constexpr uint32_t kDetsBloomBitsPerKey = 10;
constexpr uint32_t kDetsBloomK = 7;
constexpr uint32_t kDetsBloomBlockBytes = 64;
constexpr uint64_t kDetsChunkSize = 4096;     // checksum chunks of a bucket
constexpr uint64_t kDetsKeyBlockSize = 4096;  // target size of a key index block
constexpr uint32_t kDetsKeyDirEntrySize = 24;
constexpr uint32_t kDetsHeaderFixed = 128;
constexpr uint32_t kDetsBucketDescSize = 48;
constexpr uint32_t kDetsHeaderSizeV1 = kDetsHeaderFixed + kDetsBuckets * kDetsBucketDescSize + 8;
constexpr uint32_t kDetsRootSize = 48;  // v2: the root's metadata after the bucket descriptors
constexpr uint32_t kDetsHeaderSize = kDetsHeaderSizeV1 + kDetsRootSize;
constexpr uint64_t kDetsFooterSize = 8;  // the header's offset, the file's last 8 bytes

// Entry field offsets (FORMAT.md §3.5).
enum DetsEntryField : uint32_t {
  kEHash = 0,
  kESize = 8,
  kEVersion = 16,
  kEMtime = 24,
  kECtime = 32,
  kEUid = 40,
  kEGid = 44,
  kEMode = 48,
  kEType = 50,
  kEZero1 = 51,
  kEKeyLen = 52,
  kEZero2 = 54,
  kEKeyV1 = 56,
  kEAtime = 56,  // v2 only
  kESubdirs = 64,
  kEKey = 68,
};

// Header field offsets (FORMAT.md §3.2).
enum DetsHeaderField : uint32_t {
  kDHMagic = 0,
  kDHVersion = 8,
  kDHHeaderSize = 12,
  kDHFileSize = 16,
  kDHGeneration = 24,
  kDHSyncTime = 32,
  kDHEntryCount = 40,
  kDHFiles = 48,
  kDHDirs = 56,
  kDHSymlinks = 64,
  kDHValueBytes = 72,
  kDHLastVersion = 80,
  kDHKeyIndexOff = 88,
  kDHKeyDirOff = 96,
  kDHKeyBlocks = 104,
  kDHKeyDirChecksum = 112,
  kDHBloomK = 120,
  kDHZero = 124,
  kDHBuckets = 128,
  kDHChecksumV1 = kDetsHeaderFixed + kDetsBuckets * kDetsBucketDescSize,  // 12416
  // v2: the root directory's metadata, then the checksum of everything before it.
  kDHRootMode = kDHChecksumV1,
  kDHRootUid = kDHRootMode + 4,
  kDHRootGid = kDHRootMode + 8,
  kDHRootSubdirs = kDHRootMode + 12,
  kDHRootMtime = kDHRootMode + 16,
  kDHRootCtime = kDHRootMode + 24,
  kDHRootAtime = kDHRootMode + 32,
  kDHRootVersion = kDHRootMode + 40,
  kDHChecksum = kDHRootMode + kDetsRootSize,  // 12464
};

// Bucket descriptor field offsets, relative to the descriptor.
enum DetsBucketField : uint32_t {
  kBEntriesOff = 0,
  kBEntriesEnd = 8,
  kBCount = 16,
  kBIndexOff = 24,
  kBSlotBits = 32,
  kBZero = 36,
  kBBloomBlocks = 40,
};

// The number of slot bits of a bucket holding n > 0 entries: the smallest k >= 2 with
// 2^k >= 1.3 n + 1 (load at most 0.77, as DetsPlus).
inline uint32_t DetsSlotBits(uint64_t n) {
  uint32_t k = kDetsMinSlotBits;
  while ((uint64_t{10} << k) < 13 * n + 10) ++k;
  return k;
}
// The slot a hash starts probing at: the k bits after the top byte, so slot order is hash
// order within a bucket.
inline uint64_t DetsSlot(uint64_t h, uint32_t slot_bits) { return (h << 8) >> (64 - slot_bits); }
inline uint64_t DetsBloomBlocks(uint64_t n) { return (n * kDetsBloomBitsPerKey + 511) / 512; }

// LEB128 varints of the key index.
inline size_t PutVarint(uint8_t* p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  p[n++] = static_cast<uint8_t>(v);
  return n;
}
// Decodes a varint of at most 3 bytes from [p, end). Returns the bytes used, 0 if malformed.
inline size_t GetVarint(const uint8_t* p, const uint8_t* end, uint64_t* v) {
  uint64_t r = 0;
  for (size_t i = 0; i < 3 && p + i < end; ++i) {
    r |= uint64_t{p[i] & 0x7fu} << (7 * i);
    if (!(p[i] & 0x80)) {
      *v = r;
      return i + 1;
    }
  }
  return 0;
}

// The root directory a version-1 file (which stored none) stands for: 0755, owned by root,
// dated by the file's commit time, with `subdirs` counted from the file (FORMAT.md 2.9, 3.10).
inline Meta LegacyRootMeta(int64_t time_ns, uint32_t subdirs) {
  Meta m = Meta::Dir(0755);
  m.mtime_ns = m.ctime_ns = m.atime_ns = time_ns;
  m.subdirs = subdirs;
  return m;
}

}  // namespace keyfs::format
