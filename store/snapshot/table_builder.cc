// TableBuilder: streams records out, then the sorted index, hash index, bloom filter,
// chunk checksums and finally the header at offset 0.
#include "snapshot/table_builder.h"

#include <algorithm>
#include <cstring>

#include "format.h"

namespace keyfs {

using namespace format;  // NOLINT: the format's names are this file's vocabulary

namespace {
constexpr size_t kFlushBytes = 1 << 20;

XXH3_state_t* State(void* p) { return static_cast<XXH3_state_t*>(p); }
}  // namespace

TableBuilder::TableBuilder(WritableFile* file, uint64_t generation, int64_t commit_time_ns,
                           const Meta& root, uint64_t root_version)
    : file_(file),
      generation_(generation),
      commit_time_ns_(commit_time_ns),
      root_(root),
      root_version_(root_version) {
  hash_state_ = XXH3_createState();
  XXH3_64bits_reset_withSeed(State(hash_state_), kHashSeed);
  buf_.reserve(kFlushBytes + kChunkSize);
  EmitZeros(kSnapDataStart);  // the header page; filled in by Finish()
}

TableBuilder::~TableBuilder() {
  if (hash_state_ != nullptr) XXH3_freeState(State(hash_state_));
}

void TableBuilder::Emit(const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  buf_.append(p, len);
  if (pos_ >= kSnapDataStart) {
    // Feed the chunk hasher, cutting at 16 KiB boundaries.
    while (len > 0) {
      size_t take = std::min<uint64_t>(len, kChunkSize - chunk_fill_);
      XXH3_64bits_update(State(hash_state_), p, take);
      chunk_fill_ += take;
      p += take;
      len -= take;
      pos_ += take;
      if (chunk_fill_ == kChunkSize) {
        sums_.push_back(XXH3_64bits_digest(State(hash_state_)));
        XXH3_64bits_reset_withSeed(State(hash_state_), kHashSeed);
        chunk_fill_ = 0;
      }
    }
  } else {
    pos_ += len;  // only the header page is written before the data area
  }
  if (buf_.size() >= kFlushBytes && status_.ok()) status_ = Flush();
}

void TableBuilder::EmitZeros(size_t len) {
  static const char kZeros[4096] = {};
  while (len > 0) {
    size_t n = std::min(len, sizeof(kZeros));
    Emit(kZeros, n);
    len -= n;
  }
}

Status TableBuilder::Flush() {
  Status s = file_->Append(buf_);
  buf_.clear();
  return s;
}

Status TableBuilder::Add(std::string_view key, const Meta& meta, uint64_t version,
                         std::string_view value) {
  uint8_t fixed[kRecordFixed] = {};
  Store32(fixed, static_cast<uint32_t>(key.size()));
  fixed[4] = static_cast<uint8_t>(meta.type);
  Store64(fixed + 8, value.size());
  uint8_t m[kMetaSize] = {};
  Store32(m + kMMode, meta.mode & 07777);
  Store32(m + kMUid, meta.uid);
  Store32(m + kMGid, meta.gid);
  Store32(m + kMSubdirs, meta.type == EntryType::kDir ? meta.subdirs : 0);
  Store64(m + kMMtime, static_cast<uint64_t>(meta.mtime_ns));
  Store64(m + kMCtime, static_cast<uint64_t>(meta.ctime_ns));
  Store64(m + kMVersion, version);
  Store64(m + kMAtime, static_cast<uint64_t>(meta.atime_ns));

  offsets_.push_back(pos_);
  hashes_.push_back(HashKey(key));
  value_bytes_ += value.size();
  Emit(fixed, sizeof(fixed));
  Emit(key.data(), key.size());
  EmitZeros(Align8(key.size()) - key.size());
  Emit(m, sizeof(m));
  Emit(value.data(), value.size());
  EmitZeros(Align8(value.size()) - value.size());
  return status_;
}

Status TableBuilder::Finish() {
  const uint64_t n = offsets_.size();
  const uint64_t sorted_off = pos_;
  Emit(offsets_.data(), 8 * n);

  uint32_t slot_bits = kMinSlotBits;
  while ((uint64_t{1} << slot_bits) < n + n / 2 + 1) ++slot_bits;
  const uint64_t slots = uint64_t{1} << slot_bits, mask = slots - 1;
  std::vector<uint64_t> table(2 * slots, 0);
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t s = hashes_[i] & mask;
    while (table[2 * s + 1] != 0) s = (s + 1) & mask;
    table[2 * s] = hashes_[i];
    table[2 * s + 1] = offsets_[i];
  }
  EmitZeros(Align64(pos_) - pos_);
  const uint64_t slots_off = pos_;
  Emit(table.data(), table.size() * 8);
  table = {};

  const uint64_t blocks = std::max<uint64_t>(1, (n * kBloomBitsPerKey + 511) / 512);
  std::vector<uint8_t> bloom(blocks * kBloomBlockBytes, 0);
  for (uint64_t h : hashes_) {
    BloomProbe bp = Bloom(h, blocks);
    uint8_t* block = bloom.data() + bp.block * kBloomBlockBytes;
    uint32_t a = bp.a;
    for (uint32_t i = 0; i < kBloomK; ++i) {
      uint32_t bit = a & 511;
      block[bit >> 3] |= static_cast<uint8_t>(1u << (bit & 7));
      a += bp.delta;
    }
  }
  EmitZeros(Align64(pos_) - pos_);
  const uint64_t bloom_off = pos_;
  Emit(bloom.data(), bloom.size());

  EmitZeros(Align8(pos_) - pos_);
  const uint64_t sums_off = pos_;
  if (chunk_fill_ > 0) sums_.push_back(XXH3_64bits_digest(State(hash_state_)));
  XXH3_freeState(State(hash_state_));
  hash_state_ = nullptr;
  // The sums array lies outside the chunked area: append it raw.
  buf_.append(reinterpret_cast<const char*>(sums_.data()), 8 * sums_.size());
  pos_ += 8 * sums_.size();
  if (status_.ok()) status_ = Flush();
  if (!status_.ok()) return status_;

  uint8_t h[kSnapHeaderSize] = {};
  std::memcpy(h + kHMagic, kSnapMagic, 8);
  Store32(h + kHVersion, kSnapVersion);
  Store32(h + kHHeaderSize, kSnapHeaderSize);
  Store64(h + kHFileSize, pos_);
  Store64(h + kHGeneration, generation_);
  Store64(h + kHCommitTime, static_cast<uint64_t>(commit_time_ns_));
  Store64(h + kHEntryCount, n);
  Store64(h + kHValueBytes, value_bytes_);
  Store64(h + kHRecordsOff, kSnapDataStart);
  Store64(h + kHSortedOff, sorted_off);
  Store64(h + kHSlotsOff, slots_off);
  Store32(h + kHSlotBits, slot_bits);
  Store32(h + kHBloomK, kBloomK);
  Store64(h + kHBloomOff, bloom_off);
  Store64(h + kHBloomBlocks, blocks);
  Store64(h + kHSumsOff, sums_off);
  Store64(h + kHSumsChecksum, Hash(sums_.data(), 8 * sums_.size()));
  Store32(h + kHRootMode, root_.mode & 07777);
  Store32(h + kHRootUid, root_.uid);
  Store32(h + kHRootGid, root_.gid);
  Store32(h + kHRootSubdirs, root_.subdirs);
  Store64(h + kHRootMtime, static_cast<uint64_t>(root_.mtime_ns));
  Store64(h + kHRootCtime, static_cast<uint64_t>(root_.ctime_ns));
  Store64(h + kHRootAtime, static_cast<uint64_t>(root_.atime_ns));
  Store64(h + kHRootVersion, root_version_);
  Store64(h + kHHeaderChecksum, Hash(h, kHHeaderChecksum));
  return file_->WriteAt(0, std::string_view(reinterpret_cast<const char*>(h), sizeof(h)));
}

}  // namespace keyfs
