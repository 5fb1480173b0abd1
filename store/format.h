// Constants of the on-disk formats. store/FORMAT.md is the document; this header only
// names its numbers. Internal to store/.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

#define XXH_INLINE_ALL
#include <xxhash.h>

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
constexpr uint32_t kSnapVersion = 1;
constexpr uint32_t kSnapHeaderSize = 128;
constexpr uint64_t kSnapDataStart = 4096;  // records begin here; [128, 4096) is zero
constexpr uint32_t kChunkShift = 14;       // 16 KiB checksum chunks
constexpr uint64_t kChunkSize = uint64_t{1} << kChunkShift;
constexpr uint32_t kRecordFixed = 16;  // key_len, type, pad, value_len
constexpr uint32_t kMetaSize = 40;     // mode, uid, gid, pad, mtime, ctime, version
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
  kHHeaderChecksum = 120,
};

constexpr uint64_t Align8(uint64_t x) { return (x + 7) & ~uint64_t{7}; }
constexpr uint64_t Align64(uint64_t x) { return (x + 63) & ~uint64_t{63}; }

inline uint64_t RecordSize(uint64_t key_len, uint64_t value_len) {
  return kRecordFixed + Align8(key_len) + kMetaSize + Align8(value_len);
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

}  // namespace keyfs::format
