// SnapshotTable: reads one mmap'd snapshot file (FORMAT.md §2). Opening checks only the
// header, the zero padding after it and the chunk-checksum array; each 16 KiB chunk is
// verified on first access. Corruption messages name the region (as FORMAT.md does) and
// the offset.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "format.h"
#include "keyfs/store/snapshot.h"

namespace keyfs {

using namespace format;  // NOLINT: the format's names are this file's vocabulary

namespace {

// Reader policy (not format): tables of at most this many chunks are verified at open;
// hash indexes up to this size are probed without the bloom filter.
constexpr uint64_t kEagerChunks = 16;
constexpr uint64_t kBloomSkipSlotBytes = 512 * 1024;

bool ValidType(uint8_t t) { return t >= 1 && t <= 3; }

// memcmp for short keys without the library call: 8 bytes at a time.
inline bool SameBytes(const uint8_t* a, const char* b, size_t n) {
  while (n >= 8) {
    uint64_t x, y;
    std::memcpy(&x, a, 8);
    std::memcpy(&y, b, 8);
    if (x != y) return false;
    a += 8;
    b += 8;
    n -= 8;
  }
  return std::memcmp(a, b, n) == 0;
}

// Overflow-safe "a + b <= limit".
bool FitsIn(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

// A region of a snapshot file, named as FORMAT.md §2 names it.
struct Section {
  const char* name;
  uint64_t begin, end;
};

// The regions the header `h` (of `header_size` bytes, its checksum verified) gives the file,
// in file order, empty ones left out. Only for saying where damage is: the offsets are the
// header's, not checked (a bogus one gives a wrong name, never a wrong access).
std::vector<Section> SectionsOf(const uint8_t* h, uint32_t header_size) {
  const uint64_t sorted = Load64(h + kHSortedOff), slots = Load64(h + kHSlotsOff);
  const uint64_t sorted_end = sorted + 8 * Load64(h + kHEntryCount);
  const uint32_t bits = Load32(h + kHSlotBits);
  const uint64_t slots_end = slots + (bits < 48 ? uint64_t{kSlotSize} << bits : 0);
  const uint64_t bloom = Load64(h + kHBloomOff), sums = Load64(h + kHSumsOff);
  const uint64_t bloom_end = bloom + Load64(h + kHBloomBlocks) * kBloomBlockBytes;
  const Section all[] = {
      {"header", 0, header_size},          {"header padding", header_size, kSnapDataStart},
      {"records", kSnapDataStart, sorted}, {"sorted index", sorted, sorted_end},
      {"padding", sorted_end, slots},      {"hash index", slots, slots_end},
      {"padding", slots_end, bloom},       {"bloom filter", bloom, bloom_end},
      {"padding", bloom_end, sums},        {"chunk checksums", sums, Load64(h + kHFileSize)},
  };
  std::vector<Section> out;
  for (const Section& s : all) {
    if (s.begin < s.end) out.push_back(s);
  }
  return out;
}

// "records, sorted index": the names of the sections [from, to) overlaps, each once.
std::string SectionsIn(const std::vector<Section>& sections, uint64_t from, uint64_t to) {
  std::vector<std::string_view> names;
  for (const Section& s : sections) {
    if (s.begin < to && from < s.end &&
        std::find(names.begin(), names.end(), s.name) == names.end()) {
      names.emplace_back(s.name);
    }
  }
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

// Where a file that ends at `off` ends: "inside the records", "at the start of the hash index".
std::string WhereItEnds(const std::vector<Section>& sections, uint64_t off) {
  for (const Section& s : sections) {
    if (off == s.begin) return std::string("at the start of the ") + s.name;
    if (off < s.end) return std::string("inside the ") + s.name;
  }
  return "past its end";
}

}  // namespace

StatusOr<TableRef> SnapshotTable::Open(const std::string& path) {
  // A reader holds flock(LOCK_SH) on its table's file while it maps it: a writer only
  // recycles a retired file it can lock exclusively. The lock is taken, then the file is
  // checked to still be what `path` names (a recycled file is renamed over STORE only
  // once complete, so what passes the check is whole).
  for (int attempt = 0;; ++attempt) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, path);
    while (::flock(fd, LOCK_SH) != 0 && errno == EINTR) {
    }
    struct stat a, b;
    if (::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 &&
        (a.st_dev != b.st_dev || a.st_ino != b.st_ino) && attempt < 100) {
      ::close(fd);  // replaced meanwhile: take the newer one
      continue;
    }
    return OpenFd(fd, path);
  }
}

StatusOr<TableRef> SnapshotTable::OpenFd(int fd, const std::string& path) {
  std::shared_ptr<SnapshotTable> t(new SnapshotTable());
  Status s = t->Init(fd, path);  // owns fd from here on, even on failure
  if (!s.ok()) return s;
  return TableRef(std::move(t));
}

SnapshotTable::~SnapshotTable() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

Status SnapshotTable::Corrupt(const char* what, uint64_t off) const {
  return Status::Corruption(path_ + ": " + what + " at offset " + std::to_string(off));
}

Status SnapshotTable::Init(int fd, const std::string& path) {
  fd_ = fd;
  path_ = path;
  // Hold a shared lock while mapped (see Open); on the writer's own new file this
  // converts its exclusive lock.
  (void)::flock(fd, LOCK_SH | LOCK_NB);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + ": not a regular file");
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < kSnapDataStart) {
    // Say which part of the first page is missing: the header (as long as its version
    // says, if the file still has one) or the zero padding after it.
    uint32_t header_size = kSnapHeaderSize;
    uint8_t v[4];
    if (::pread(fd, v, sizeof v, kHVersion) == sizeof v && Load32(v) == 1) {
      header_size = kSnapHeaderSizeV1;
    }
    return Status::Corruption(path + ": file too short for a snapshot store (" +
                              std::to_string(size_) + " bytes): it ends inside the " +
                              (size_ < header_size ? "header" : "header padding") + " at offset " +
                              std::to_string(size_));
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "mmap " + path);
  base_ = static_cast<const uint8_t*>(p);

  const uint8_t* h = base_;
  if (std::memcmp(h + kHMagic, kSnapMagic, 8) != 0) return Corrupt("bad magic in the header", 0);
  format_version_ = Load32(h + kHVersion);
  if (format_version_ < 1 || format_version_ > kSnapVersion) {
    return Corrupt(("unsupported snapshot format version " + std::to_string(format_version_) +
                    " in the header")
                       .c_str(),
                   kHVersion);
  }
  legacy_ = format_version_ == 1;
  header_size_ = legacy_ ? kSnapHeaderSizeV1 : kSnapHeaderSize;
  meta_size_ = legacy_ ? kMetaSizeV1 : kMetaSize;
  atime_off_ = legacy_ ? kMMtime : kMAtime;
  if (Load32(h + kHHeaderSize) != header_size_) return Corrupt("bad header size", kHHeaderSize);
  // The header's last 8 bytes are the checksum of the bytes before them.
  const uint32_t sum_off = header_size_ - 8;
  if (Hash(h, sum_off) != Load64(h + sum_off)) return Corrupt("header checksum mismatch", sum_off);
  if (const uint64_t want = Load64(h + kHFileSize); want != size_) {
    const std::string what =
        "file is " + std::to_string(size_) + " bytes, the header says " + std::to_string(want);
    if (size_ > want) return Corrupt((what + ": extended past its end").c_str(), want);
    return Corrupt(
        (what + ": truncated " + WhereItEnds(SectionsOf(h, header_size_), size_)).c_str(), size_);
  }
  // The zero padding after the header is under no checksum: checked here, in the page the
  // header was just read from, so no open serves (or upgrades) a file damaged there.
  for (uint64_t i = header_size_; i < kSnapDataStart; ++i) {
    if (h[i] != 0) return Corrupt("nonzero header padding", i);
  }
  if (!legacy_) {
    root_ = Meta::Dir(Load32(h + kHRootMode));
    if (root_.mode > 07777) return Corrupt("bad root directory mode", kHRootMode);
    root_.uid = Load32(h + kHRootUid);
    root_.gid = Load32(h + kHRootGid);
    root_.subdirs = Load32(h + kHRootSubdirs);
    root_.mtime_ns = static_cast<int64_t>(Load64(h + kHRootMtime));
    root_.ctime_ns = static_cast<int64_t>(Load64(h + kHRootCtime));
    root_.atime_ns = static_cast<int64_t>(Load64(h + kHRootAtime));
    root_version_ = Load64(h + kHRootVersion);
  }
  generation_ = Load64(h + kHGeneration);
  commit_time_ns_ = static_cast<int64_t>(Load64(h + kHCommitTime));
  entry_count_ = Load64(h + kHEntryCount);
  value_bytes_ = Load64(h + kHValueBytes);
  records_off_ = Load64(h + kHRecordsOff);
  sorted_off_ = Load64(h + kHSortedOff);
  records_end_ = sorted_off_;
  slots_off_ = Load64(h + kHSlotsOff);
  slot_bits_ = Load32(h + kHSlotBits);
  bloom_k_ = Load32(h + kHBloomK);
  bloom_off_ = Load64(h + kHBloomOff);
  bloom_blocks_ = Load64(h + kHBloomBlocks);
  sums_off_ = Load64(h + kHSumsOff);

  // Sections in order, aligned, sized by their counts, inside the file.
  if (records_off_ != kSnapDataStart) return Corrupt("bad records offset", kHRecordsOff);
  // Every offset is checked against the file size before any arithmetic on it, so no sum
  // below can wrap.
  if (sorted_off_ < records_off_ || sorted_off_ > size_ || sorted_off_ % 8 != 0) {
    return Corrupt("bad sorted-index offset", kHSortedOff);
  }
  if (slots_off_ > size_ || bloom_off_ > size_ || sums_off_ > size_) {
    return Corrupt("section offset beyond the end of the file", kHSlotsOff);
  }
  if (entry_count_ > (size_ - sorted_off_) / 8 ||
      (records_end_ - records_off_) / (kRecordFixed + 8 + meta_size_) < entry_count_) {
    return Corrupt("entry count does not fit the file", kHEntryCount);
  }
  if (slot_bits_ < kMinSlotBits || slot_bits_ > 40) return Corrupt("bad slot bits", kHSlotBits);
  slot_mask_ = (uint64_t{1} << slot_bits_) - 1;
  if ((uint64_t{1} << slot_bits_) < entry_count_ + entry_count_ / 2 + 1) {
    return Corrupt("hash index too small for the entry count", kHSlotBits);
  }
  const uint64_t sorted_end = sorted_off_ + 8 * entry_count_;
  const uint64_t slots_bytes = uint64_t{kSlotSize} << slot_bits_;
  if (slots_off_ < sorted_end || slots_off_ % 64 != 0 || !FitsIn(slots_off_, slots_bytes, size_)) {
    return Corrupt("bad hash-index offset", kHSlotsOff);
  }
  if (bloom_k_ != kBloomK) return Corrupt("bad bloom k", kHBloomK);
  if (bloom_blocks_ < 1 || bloom_blocks_ > size_ / kBloomBlockBytes ||
      bloom_off_ < slots_off_ + slots_bytes || bloom_off_ % 64 != 0 ||
      !FitsIn(bloom_off_, bloom_blocks_ * kBloomBlockBytes, size_)) {
    return Corrupt("bad bloom filter offset or size", kHBloomOff);
  }
  if (sums_off_ < bloom_off_ + bloom_blocks_ * kBloomBlockBytes || sums_off_ % 8 != 0) {
    return Corrupt("bad chunk checksums offset", kHSumsOff);
  }
  chunk_count_ = (sums_off_ - kSnapDataStart + kChunkSize - 1) >> kChunkShift;
  if (size_ - sums_off_ != 8 * chunk_count_) return Corrupt("bad chunk checksums size", kHSumsOff);
  if (Hash(base_ + sums_off_, 8 * chunk_count_) != Load64(h + kHSumsChecksum)) {
    return Corrupt("chunk checksums do not match their checksum in the header", sums_off_);
  }
  verified_.reset(new std::atomic<uint64_t>[(chunk_count_ + 63) / 64]());
  unverified_chunks_.store(chunk_count_, std::memory_order_relaxed);
  all_verified_.store(chunk_count_ == 0, std::memory_order_relaxed);
  use_bloom_ = slots_bytes > kBloomSkipSlotBytes;
  // A small table is verified whole right away: a bounded cost (<= 256 KiB hashed) that
  // keeps the per-chunk bookkeeping off its reads.
  if (chunk_count_ <= kEagerChunks) {
    for (uint64_t c = 0; c < chunk_count_; ++c) KEYFS_RETURN_IF_ERROR(VerifyChunk(c));
  }
  return Status::OK();
}

Status SnapshotTable::VerifyChunk(uint64_t chunk) const {
  uint64_t off = kSnapDataStart + (chunk << kChunkShift);
  uint64_t len = std::min<uint64_t>(kChunkSize, sums_off_ - off);
  if (Hash(base_ + off, len) != Load64(base_ + sums_off_ + 8 * chunk)) {
    // Either the chunk or its checksum is damaged: name both.
    return Corrupt(("checksum mismatch in chunk " + std::to_string(chunk) + " (" +
                    SectionsIn(SectionsOf(base_, header_size_), off, off + len) +
                    "; chunk checksum at offset " + std::to_string(sums_off_ + 8 * chunk) + ")")
                       .c_str(),
                   off);
  }
  const uint64_t bit = uint64_t{1} << (chunk % 64);
  if (!(verified_[chunk / 64].fetch_or(bit, std::memory_order_relaxed) & bit) &&
      unverified_chunks_.fetch_sub(1, std::memory_order_relaxed) == 1) {
    all_verified_.store(true, std::memory_order_relaxed);
  }
  return Status::OK();
}

inline Status SnapshotTable::Check(uint64_t off, uint64_t len, const char* what) const {
  if (off < kSnapDataStart || !FitsIn(off, len, sums_off_)) return Corrupt(what, off);
  if (len == 0 || all_verified_.load(std::memory_order_relaxed)) return Status::OK();
  uint64_t first = (off - kSnapDataStart) >> kChunkShift;
  uint64_t last = (off + len - 1 - kSnapDataStart) >> kChunkShift;
  for (uint64_t c = first; c <= last; ++c) {
    if (!(verified_[c / 64].load(std::memory_order_relaxed) & (uint64_t{1} << (c % 64)))) {
      KEYFS_RETURN_IF_ERROR(VerifyChunk(c));
    }
  }
  return Status::OK();
}

Status SnapshotTable::DecodeRecord(uint64_t off, EntryRef* out) const {
  if (off < records_off_ || off % 8 != 0 || !FitsIn(off, kRecordFixed, records_end_)) {
    return Corrupt("record offset out of range", off);
  }
  KEYFS_RETURN_IF_ERROR(Check(off, kRecordFixed, "record header"));
  const uint8_t* r = base_ + off;
  uint64_t klen = Load32(r);
  uint8_t type = r[4];
  uint64_t vlen = Load64(r + 8);
  if (klen == 0 || klen > kMaxKeyLength || !ValidType(type) || r[5] || r[6] || r[7]) {
    return Corrupt("bad record", off);
  }
  uint64_t meta = off + kRecordFixed + Align8(klen);
  if (vlen > records_end_ || !FitsIn(meta + meta_size_, Align8(vlen), records_end_)) {
    return Corrupt("record value out of range", off);
  }
  KEYFS_RETURN_IF_ERROR(Check(off, RecordSize(klen, vlen, meta_size_), "record"));
  const uint8_t* m = base_ + meta;
  out->key = std::string_view(reinterpret_cast<const char*>(r + kRecordFixed), klen);
  out->meta.type = static_cast<EntryType>(type);
  if (Load32(m + kMMode) > 07777) return Corrupt("bad record metadata", meta);
  // v1: the subdirs field is zero padding (and 0 is right for files and symlinks).
  if (legacy_ && Load32(m + kMSubdirs) != 0) return Corrupt("bad record metadata", meta);
  out->meta.mode = Load32(m + kMMode);
  out->meta.uid = Load32(m + kMUid);
  out->meta.gid = Load32(m + kMGid);
  out->meta.subdirs = Load32(m + kMSubdirs);
  out->meta.mtime_ns = static_cast<int64_t>(Load64(m + kMMtime));
  out->meta.ctime_ns = static_cast<int64_t>(Load64(m + kMCtime));
  out->meta.atime_ns = static_cast<int64_t>(Load64(m + atime_off_));
  out->version = Load64(m + kMVersion);
  out->value = std::string_view(reinterpret_cast<const char*>(m + meta_size_), vlen);
  return Status::OK();
}

Status SnapshotTable::FillLegacy(EntryRef* out) const {
  if (out->meta.type != EntryType::kDir) return Status::OK();
  auto n = CountChildDirs(out->key);
  if (!n.ok()) return n.status();
  out->meta.subdirs = *n;
  return Status::OK();
}

StatusOr<uint32_t> SnapshotTable::CountChildDirs(std::string_view dir) const {
  uint32_t n = 0;
  KEYFS_RETURN_IF_ERROR(ForEachChild(dir, {}, [&](const EntryRef& e) {
    n += e.meta.type == EntryType::kDir;
    return true;
  }));
  return n;
}

StatusOr<Meta> SnapshotTable::RootMeta() const {
  if (!legacy_) return root_;
  auto n = CountChildDirs("");
  if (!n.ok()) return n.status();
  return format::LegacyRootMeta(commit_time_ns_, *n);
}

// The record at `roff` (its header already bounds-checked) if its key is `key`, with every
// chunk it touches verified first; NotFound if the key differs.
Status SnapshotTable::FindSlow(uint64_t roff, std::string_view key, EntryRef* out) const {
  KEYFS_RETURN_IF_ERROR(DecodeRecord(roff, out));
  return out->key == key ? Status::OK() : Status::NotFound();
}

bool SnapshotTable::BloomMayContain(uint64_t h) const {
  // The bloom section was bounds-checked at open; its chunks are verified by the caller.
  const BloomProbe bp = Bloom(h, bloom_blocks_);
  const uint8_t* block = base_ + bloom_off_ + bp.block * kBloomBlockBytes;
  uint32_t a = bp.a;
  for (uint32_t i = 0; i < kBloomK; ++i) {
    const uint32_t bit = a & 511;
    if (!(block[bit >> 3] & (1u << (bit & 7)))) return false;
    a += bp.delta;
  }
  return true;
}

// Inlined into Find and FindRaw: a call more would show on the ~13 ns of a hit.
template <bool kRaw>
[[gnu::always_inline]] inline Status SnapshotTable::FindImpl(std::string_view key, uint64_t h,
                                                             EntryRef* out) const {
  const bool verified = all_verified_.load(std::memory_order_relaxed);
  if (use_bloom_) {
    // A miss usually ends here without touching the hash index.
    if (!verified) {
      const BloomProbe bp = Bloom(h, bloom_blocks_);
      KEYFS_RETURN_IF_ERROR(
          Check(bloom_off_ + bp.block * kBloomBlockBytes, kBloomBlockBytes, "bloom block"));
    }
    if (!BloomMayContain(h)) return Status::NotFound();
  }
  const uint8_t* slots = base_ + slots_off_;  // inside the file: checked at open
  uint64_t slot = h & slot_mask_;
  for (uint64_t probes = 0; probes <= slot_mask_; ++probes) {
    if (!verified) {
      KEYFS_RETURN_IF_ERROR(Check(slots_off_ + slot * kSlotSize, kSlotSize, "hash slot"));
    }
    const uint8_t* s = slots + slot * kSlotSize;
    const uint64_t roff = Load64(s + 8);
    if (roff == 0) return Status::NotFound();
    if (Load64(s) == h) {
      // Compare the key before decoding the rest of the record.
      if (roff < records_off_ || roff % 8 != 0 || !FitsIn(roff, kRecordFixed, records_end_)) {
        return Corrupt("record offset out of range", roff);
      }
      if (!verified) KEYFS_RETURN_IF_ERROR(Check(roff, kRecordFixed, "record header"));
      const uint8_t* r = base_ + roff;
      const uint32_t klen = Load32(r);
      if (klen == 0 || klen > kMaxKeyLength) return Corrupt("bad record", roff);
      if (klen == key.size() && FitsIn(roff + kRecordFixed, klen, records_end_)) {
        if (!verified) {
          Status fs = FindSlow(roff, key, out);
          if (!kRaw && legacy_ && fs.ok()) [[unlikely]]
            return FillLegacy(out);
          if (!fs.IsNotFound()) return fs;
          slot = (slot + 1) & slot_mask_;
          continue;
        }
        if (SameBytes(r + kRecordFixed, key.data(), klen)) {
          if (legacy_) [[unlikely]] {  // v1: another layout, and counts to compute
            KEYFS_RETURN_IF_ERROR(DecodeRecord(roff, out));
            return kRaw ? Status::OK() : FillLegacy(out);
          }
          // Verified version-2 table: decode in place (the layout's offsets are constants),
          // bounds-checking what the header says.
          const uint8_t type = r[4];
          const uint64_t vlen = Load64(r + 8);
          const uint64_t meta = roff + kRecordFixed + Align8(klen);
          if (!ValidType(type) || vlen > records_end_ ||
              !FitsIn(meta + kMetaSize, Align8(vlen), records_end_)) {
            return Corrupt("bad record", roff);
          }
          const uint8_t* m = base_ + meta;
          out->key = std::string_view(reinterpret_cast<const char*>(r + kRecordFixed), klen);
          out->meta.type = static_cast<EntryType>(type);
          out->meta.mode = Load32(m + kMMode) & 07777;
          out->meta.uid = Load32(m + kMUid);
          out->meta.gid = Load32(m + kMGid);
          out->meta.subdirs = Load32(m + kMSubdirs);
          out->meta.mtime_ns = static_cast<int64_t>(Load64(m + kMMtime));
          out->meta.ctime_ns = static_cast<int64_t>(Load64(m + kMCtime));
          out->meta.atime_ns = static_cast<int64_t>(Load64(m + kMAtime));
          out->version = Load64(m + kMVersion);
          out->value = std::string_view(reinterpret_cast<const char*>(m + kMetaSize), vlen);
          return Status::OK();
        }
      }
    }
    slot = (slot + 1) & slot_mask_;
  }
  return Corrupt("hash index has no empty slot", slots_off_);
}

Status SnapshotTable::Find(std::string_view key, EntryRef* out) const {
  return FindImpl<false>(key, HashKey(key), out);
}

Status SnapshotTable::FindHashed(std::string_view key, uint64_t hash, EntryRef* out) const {
  return FindImpl<false>(key, hash, out);
}

Status SnapshotTable::FindRaw(std::string_view key, EntryRef* out) const {
  return FindImpl<true>(key, HashKey(key), out);
}

Status SnapshotTable::AtRaw(uint64_t i, EntryRef* out) const {
  if (i >= entry_count_) return Status::InvalidArgument("index out of range");
  const uint64_t p = sorted_off_ + 8 * i;
  KEYFS_RETURN_IF_ERROR(Check(p, 8, "sorted index"));
  return DecodeRecord(Load64(base_ + p), out);
}

Status SnapshotTable::At(uint64_t i, EntryRef* out) const {
  KEYFS_RETURN_IF_ERROR(AtRaw(i, out));
  if (legacy_) [[unlikely]]
    return FillLegacy(out);
  return Status::OK();
}

StatusOr<uint64_t> SnapshotTable::LowerBound(std::string_view key) const {
  uint64_t lo = 0, hi = entry_count_;
  EntryRef e;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    KEYFS_RETURN_IF_ERROR(AtRaw(mid, &e));
    if (e.key < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

Status SnapshotTable::ListChildren(std::string_view dir, std::string_view start_after,
                                   const ListFn& fn) const {
  Status inner;
  KEYFS_RETURN_IF_ERROR(ForEachChild(dir, start_after, [&](const EntryRef& stored) {
    EntryRef e = stored;
    if (legacy_) {
      inner = FillLegacy(&e);
      if (!inner.ok()) return false;
    }
    DirEntry d;
    d.name = e.key.substr(dir.empty() ? 0 : dir.size() + 1);
    d.meta = e.meta;
    d.size = e.value.size();
    d.version = e.version;
    return fn(d);
  }));
  return inner;
}

Status SnapshotTable::ForEachChild(std::string_view dir, std::string_view start_after,
                                   const std::function<bool(const EntryRef&)>& fn) const {
  std::string prefix(dir);
  if (!prefix.empty()) prefix += '/';
  std::string from = prefix;
  if (!start_after.empty()) {
    // The first key after every key of the subtree of `start_after`.
    // "name\0" is the immediate successor of "name"; the loop below skips "name/...".
    from.append(start_after);
    from += '\0';
  }
  auto pos = LowerBound(from);
  if (!pos.ok()) return pos.status();
  uint64_t i = *pos;
  EntryRef e;
  while (i < entry_count_) {
    KEYFS_RETURN_IF_ERROR(AtRaw(i, &e));
    if (e.key.size() <= prefix.size() || e.key.compare(0, prefix.size(), prefix) != 0) break;
    std::string_view rest = e.key.substr(prefix.size());
    size_t slash = rest.find('/');
    if (slash != std::string_view::npos) {
      // A descendant of a child directory (or of start_after): jump past that subtree.
      std::string skip = prefix;
      skip.append(rest.substr(0, slash));
      skip += '0';  // the byte after '/'
      auto next = LowerBound(skip);
      if (!next.ok()) return next.status();
      i = std::max(*next, i + 1);
      continue;
    }
    if (!fn(e)) break;
    ++i;
  }
  return Status::OK();
}

Status SnapshotTable::VerifyAll(std::vector<std::string>* report) const {
  auto note = [&](std::string line) {
    if (report) report->push_back(std::move(line));
  };
  for (uint64_t c = 0; c < chunk_count_; ++c) KEYFS_RETURN_IF_ERROR(VerifyChunk(c));
  note("chunks: " + std::to_string(chunk_count_) + " checksums ok");
  // Bytes the format says are zero (they lie outside every checksum or structure).
  auto zeros = [&](uint64_t from, uint64_t to, const char* what) -> Status {
    for (uint64_t i = from; i < to; ++i) {
      if (base_[i] != 0) return Corrupt(what, i);
    }
    return Status::OK();
  };
  // Records: consecutive, sorted, well-formed, zero padding, tree intact.
  uint64_t off = records_off_, values = 0;
  std::string prev;
  EntryRef e;
  // v2: every directory's stored count of child directories, and the count of the records.
  std::vector<std::pair<uint64_t, uint32_t>> dirs;  // (record offset, stored subdirs)
  std::unordered_map<std::string, uint32_t> child_dirs;
  for (uint64_t i = 0; i < entry_count_; ++i) {
    const uint64_t p = sorted_off_ + 8 * i;
    if (Load64(base_ + p) != off) return Corrupt("sorted index does not match records", p);
    KEYFS_RETURN_IF_ERROR(DecodeRecord(off, &e));
    const uint64_t key_end = off + kRecordFixed + e.key.size();
    KEYFS_RETURN_IF_ERROR(
        zeros(key_end, off + kRecordFixed + Align8(e.key.size()), "nonzero key padding"));
    const uint64_t value_end =
        static_cast<uint64_t>(reinterpret_cast<const uint8_t*>(e.value.data()) - base_) +
        e.value.size();
    KEYFS_RETURN_IF_ERROR(zeros(value_end,
                                off + RecordSize(e.key.size(), e.value.size(), meta_size_),
                                "nonzero value padding"));
    Status ks = ValidateKey(e.key);
    if (!ks.ok()) return Corrupt(("invalid key (" + ks.ToString() + ")").c_str(), off);
    if (i > 0 && !(prev < e.key)) return Corrupt("keys out of order", off);
    if (e.meta.mode > 07777) return Corrupt("bad mode", off);
    if (e.meta.type == EntryType::kDir && !e.value.empty()) {
      return Corrupt("directory with a value", off);
    }
    if (e.version > generation_) return Corrupt("entry newer than the table", off);
    if (e.meta.type == EntryType::kDir) {
      dirs.emplace_back(off, e.meta.subdirs);
      ++child_dirs[std::string(ParentKey(e.key))];
    } else if (e.meta.subdirs != 0) {
      return Corrupt("child directory count on a file or symlink", off);
    }
    std::string_view parent = ParentKey(e.key);
    if (!parent.empty()) {
      // Siblings like "a-b" sort between "a" and "a/b", so look the parent up.
      EntryRef p;
      Status ps = FindRaw(parent, &p);
      if (!ps.ok() && !ps.IsNotFound()) return ps;
      if (!ps.ok() || p.meta.type != EntryType::kDir) {
        return Corrupt(("parent of '" + std::string(e.key) + "' is not a directory").c_str(), off);
      }
    }
    // Lookup through the hash index and bloom filter must find this very record.
    if (!BloomMayContain(HashKey(e.key))) {
      return Corrupt(("bloom filter misses key '" + std::string(e.key) + "'").c_str(), off);
    }
    EntryRef found;
    Status fs = FindRaw(e.key, &found);
    if (!fs.ok() || found.key.data() != e.key.data()) {
      return Corrupt(("hash index or bloom filter misses key '" + std::string(e.key) + "'").c_str(),
                     off);
    }
    values += e.value.size();
    prev.assign(e.key);
    off += RecordSize(e.key.size(), e.value.size(), meta_size_);
  }
  if (off != records_end_) return Corrupt("records section has trailing bytes", off);
  const uint64_t slots_bytes = uint64_t{kSlotSize} << slot_bits_;
  KEYFS_RETURN_IF_ERROR(zeros(sorted_off_ + 8 * entry_count_, slots_off_, "nonzero gap"));
  KEYFS_RETURN_IF_ERROR(zeros(slots_off_ + slots_bytes, bloom_off_, "nonzero gap"));
  KEYFS_RETURN_IF_ERROR(
      zeros(bloom_off_ + bloom_blocks_ * kBloomBlockBytes, sums_off_, "nonzero gap"));
  if (values != value_bytes_) return Corrupt("value byte total does not match", kHValueBytes);
  note("records: " + std::to_string(entry_count_) + " entries, sorted, tree intact");
  if (!legacy_) {
    for (const auto& [doff, stored] : dirs) {
      KEYFS_RETURN_IF_ERROR(DecodeRecord(doff, &e));
      auto it = child_dirs.find(std::string(e.key));
      const uint32_t counted = it == child_dirs.end() ? 0 : it->second;
      if (stored != counted) {
        return Corrupt(("directory '" + std::string(e.key) + "' says " + std::to_string(stored) +
                        " child directories, has " + std::to_string(counted))
                           .c_str(),
                       doff + kRecordFixed + Align8(e.key.size()) + kMSubdirs);
      }
    }
    const uint32_t root_counted = child_dirs.count("") ? child_dirs[""] : 0;
    if (root_.subdirs != root_counted) {
      return Corrupt(("root directory says " + std::to_string(root_.subdirs) +
                      " child directories, has " + std::to_string(root_counted))
                         .c_str(),
                     kHRootSubdirs);
    }
    if (root_version_ > generation_) return Corrupt("root newer than the table", kHRootVersion);
    note("directories: " + std::to_string(dirs.size()) + " and the root, child counts match");
  }
  auto root = RootMeta();
  if (!root.ok()) return root.status();
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", root->mode);
  note(std::string("root: mode ") + mode + ", owner " + std::to_string(root->uid) + ":" +
       std::to_string(root->gid) + ", " + std::to_string(root->subdirs) + " child directories" +
       (legacy_ ? " (version 1: implied)" : ""));

  uint64_t used = 0;
  for (uint64_t s = 0; s <= slot_mask_; ++s) {
    const uint64_t soff = slots_off_ + s * kSlotSize;
    const uint64_t roff = Load64(base_ + soff + 8);
    if (roff == 0) {
      if (Load64(base_ + soff) != 0) return Corrupt("empty hash slot with a hash", soff);
      continue;
    }
    ++used;
    KEYFS_RETURN_IF_ERROR(DecodeRecord(roff, &e));
    if (HashKey(e.key) != Load64(base_ + soff)) return Corrupt("hash slot hash mismatch", soff);
  }
  if (used != entry_count_) return Corrupt("hash index entry count mismatch", slots_off_);
  note("hash index: " + std::to_string(slot_mask_ + 1) + " slots, " + std::to_string(used) +
       " used");
  note("bloom filter: " + std::to_string(bloom_blocks_ * 512) +
       " bits, k=" + std::to_string(bloom_k_));
  return Status::OK();
}

double SnapshotTable::bloom_fp_estimate() const {
  return BlockedBloomFpRate(entry_count(), bloom_blocks_, kBloomBlockBytes * 8, bloom_k_);
}

}  // namespace keyfs
