// DetsFile: reads one mapped dets file (FORMAT.md §3). Every offset and length read from
// the file is checked against the structure it must lie in before it is used.
#include "dets/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "format.h"

namespace keyfs {

using namespace format;  // NOLINT: the format's names are this file's vocabulary

namespace {

bool ValidType(uint8_t t) { return t >= 1 && t <= 3; }

// Overflow-safe "a + b <= limit".
bool FitsIn(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

bool TestBit(const std::atomic<uint64_t>* bits, uint64_t i) {
  return bits[i / 64].load(std::memory_order_relaxed) & (uint64_t{1} << (i % 64));
}
void SetBit(std::atomic<uint64_t>* bits, uint64_t i) {
  bits[i / 64].fetch_or(uint64_t{1} << (i % 64), std::memory_order_relaxed);
}

}  // namespace

StatusOr<DetsFileRef> DetsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, path);
  return OpenFd(fd, path);
}

StatusOr<DetsFileRef> DetsFile::OpenFd(int fd, const std::string& path) {
  std::shared_ptr<DetsFile> f(new DetsFile());
  Status s = f->Init(fd, path);  // owns fd from here on, even on failure
  if (!s.ok()) return s;
  return DetsFileRef(std::move(f));
}

DetsFile::~DetsFile() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (bloom_mem_ != nullptr) ::munmap(bloom_mem_, bloom_mem_size_);
  if (fd_ >= 0) ::close(fd_);
}

Status DetsFile::Corrupt(const std::string& what, uint64_t off) const {
  return Status::Corruption(path_ + ": " + what + " at offset " + std::to_string(off));
}

Status DetsFile::Init(int fd, const std::string& path) {
  fd_ = fd;
  path_ = path;
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + ": not a regular file");
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  mtime_ns_ = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  size_ = static_cast<uint64_t>(st.st_size);
  const uint64_t min_size = kDetsPrefixSize + kDetsHeaderSizeV1 + kDetsFooterSize;
  if (size_ < min_size) {
    return Status::Corruption(
        path + ": file too short for a dets store (" + std::to_string(size_) + " bytes): it ends " +
        (size_ < kDetsPrefixSize ? "inside the prefix" : "with no room for a header and footer") +
        " at offset " + std::to_string(size_));
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "mmap " + path);
  base_ = static_cast<const uint8_t*>(p);

  if (std::memcmp(base_, kDetsMagic, 8) != 0) return Corrupt("bad magic in the prefix", 0);
  format_version_ = Load32(base_ + 8);
  if (format_version_ < 1 || format_version_ > kDetsVersion) {
    return Corrupt(
        "unsupported dets format version " + std::to_string(format_version_) + " in the prefix", 8);
  }
  legacy_ = format_version_ == 1;
  header_size_ = legacy_ ? kDetsHeaderSizeV1 : kDetsHeaderSize;
  entry_fixed_ = legacy_ ? kDetsEntryFixedV1 : kDetsEntryFixed;
  for (uint64_t z = 12; z < kDetsPrefixSize; ++z) {
    if (base_[z] != 0) return Corrupt("nonzero prefix padding", z);
  }
  const uint64_t header_off = Load64(base_ + size_ - kDetsFooterSize);
  if (size_ < kDetsPrefixSize + header_size_ + kDetsFooterSize ||
      header_off != size_ - kDetsFooterSize - header_size_) {
    // The header is found only through the footer: where a cut or an append happened is
    // not known, only that the last 8 bytes are not the footer of this file.
    return Corrupt("footer names header offset " + std::to_string(header_off) +
                       " but the file is " + std::to_string(size_) +
                       " bytes (truncated, extended or damaged)",
                   size_ - kDetsFooterSize);
  }
  header_off_ = header_off;
  const uint8_t* h = base_ + header_off;
  if (std::memcmp(h + kDHMagic, kDetsMagic, 8) != 0) return Corrupt("bad header magic", header_off);
  if (Load32(h + kDHVersion) != format_version_) {
    return Corrupt("header version differs from the prefix", header_off + kDHVersion);
  }
  if (Load32(h + kDHHeaderSize) != header_size_) {
    return Corrupt("bad header size", header_off + kDHHeaderSize);
  }
  // The header's last 8 bytes are the checksum of the bytes before them.
  const uint32_t sum_off = header_size_ - 8;
  if (Hash(h, sum_off) != Load64(h + sum_off)) {
    return Corrupt("header checksum mismatch", header_off + sum_off);
  }
  if (!legacy_) {
    root_ = Meta::Dir(Load32(h + kDHRootMode));
    if (root_.mode > 07777) return Corrupt("bad root directory mode", header_off + kDHRootMode);
    root_.uid = Load32(h + kDHRootUid);
    root_.gid = Load32(h + kDHRootGid);
    root_.subdirs = Load32(h + kDHRootSubdirs);
    root_.mtime_ns = static_cast<int64_t>(Load64(h + kDHRootMtime));
    root_.ctime_ns = static_cast<int64_t>(Load64(h + kDHRootCtime));
    root_.atime_ns = static_cast<int64_t>(Load64(h + kDHRootAtime));
    root_version_ = Load64(h + kDHRootVersion);
  }
  if (Load64(h + kDHFileSize) != size_) {
    return Corrupt("file is " + std::to_string(size_) + " bytes, the header says " +
                       std::to_string(Load64(h + kDHFileSize)) + " (truncated or extended)",
                   header_off + kDHFileSize);
  }
  generation_ = Load64(h + kDHGeneration);
  sync_time_ns_ = static_cast<int64_t>(Load64(h + kDHSyncTime));
  entry_count_ = Load64(h + kDHEntryCount);
  files_ = Load64(h + kDHFiles);
  dirs_ = Load64(h + kDHDirs);
  symlinks_ = Load64(h + kDHSymlinks);
  value_bytes_ = Load64(h + kDHValueBytes);
  last_version_ = Load64(h + kDHLastVersion);
  key_index_off_ = Load64(h + kDHKeyIndexOff);
  key_dir_off_ = Load64(h + kDHKeyDirOff);
  const uint64_t key_blocks = Load64(h + kDHKeyBlocks);
  bloom_k_ = Load32(h + kDHBloomK);
  if (Load32(h + kDHZero) != 0) return Corrupt("nonzero header padding", header_off + kDHZero);
  if (bloom_k_ < 1 || bloom_k_ > 32) return Corrupt("bad bloom k", header_off + kDHBloomK);
  if (files_ > entry_count_ || dirs_ > entry_count_ - files_ ||
      symlinks_ != entry_count_ - files_ - dirs_) {
    return Corrupt("entry counts by type do not add up", header_off + kDHEntryCount);
  }

  // Buckets: back to back from the prefix to the key index, each sized by its count.
  buckets_.resize(kDetsBuckets);
  uint64_t pos = kDetsPrefixSize, total = 0, chunks = 0;
  for (uint32_t t = 0; t < kDetsBuckets; ++t) {
    const uint64_t doff = header_off + kDHBuckets + uint64_t{t} * kDetsBucketDescSize;
    const uint8_t* d = base_ + doff;
    DetsBucket& b = buckets_[t];
    b.entries_off = Load64(d + kBEntriesOff);
    b.entries_end = Load64(d + kBEntriesEnd);
    b.count = Load64(d + kBCount);
    b.index_off = Load64(d + kBIndexOff);
    b.slot_bits = Load32(d + kBSlotBits);
    b.bloom_blocks = Load64(d + kBBloomBlocks);
    const std::string what = "bucket " + std::to_string(t) + " descriptor";
    if (b.entries_off != pos || b.entries_off % 64 != 0 || b.entries_end < b.entries_off ||
        b.entries_end > header_off || Load32(d + kBZero) != 0) {
      return Corrupt("bad " + what, doff);
    }
    if (b.count == 0) {
      if (b.entries_end != b.entries_off || b.index_off != 0 || b.slot_bits != 0 ||
          b.bloom_blocks != 0) {
        return Corrupt("bad " + what + " (empty bucket)", doff);
      }
      b.bloom_off = b.sums_off = b.end = b.entries_off;
    } else {
      if ((b.entries_end - b.entries_off) / (entry_fixed_ + 1) < b.count) {
        return Corrupt(what + ": entry count does not fit its entries", doff);
      }
      if (b.index_off != Align64(b.entries_end) || b.slot_bits != DetsSlotBits(b.count) ||
          b.bloom_blocks != DetsBloomBlocks(b.count)) {
        return Corrupt("bad " + what + " (index)", doff);
      }
      const uint64_t slots_bytes = uint64_t{kDetsSlotSize} << b.slot_bits;
      b.bloom_off = b.index_off + slots_bytes;
      b.sums_off = b.bloom_off + b.bloom_blocks * kDetsBloomBlockBytes;
      b.chunks = (b.sums_off - b.entries_off + kDetsChunkSize - 1) / kDetsChunkSize;
      if (b.sums_off < b.index_off || !FitsIn(b.sums_off, 8 * b.chunks, header_off)) {
        return Corrupt(what + ": index region out of range", doff);
      }
      b.end = Align64(b.sums_off + 8 * b.chunks);
      if (b.end > header_off) return Corrupt(what + ": bucket overruns the file", doff);
      b.chunk_base = chunks;
      chunks += b.chunks;
    }
    pos = b.end;
    total += b.count;
  }
  if (total != entry_count_)
    return Corrupt("bucket counts do not add up", header_off + kDHEntryCount);
  if (key_index_off_ != pos) return Corrupt("bad key index offset", header_off + kDHKeyIndexOff);
  if (key_dir_off_ < key_index_off_ ||
      key_blocks > (header_off - key_dir_off_) / kDetsKeyDirEntrySize ||
      key_dir_off_ + key_blocks * kDetsKeyDirEntrySize != header_off) {
    return Corrupt("bad key index directory offset or size", header_off + kDHKeyDirOff);
  }
  if (Hash(base_ + key_dir_off_, key_blocks * kDetsKeyDirEntrySize) !=
      Load64(h + kDHKeyDirChecksum)) {
    return Corrupt("key index directory checksum mismatch", key_dir_off_);
  }
  key_blocks_.resize(key_blocks);
  uint64_t kpos = key_index_off_, items = 0;
  for (uint64_t i = 0; i < key_blocks; ++i) {
    const uint8_t* e = base_ + key_dir_off_ + i * kDetsKeyDirEntrySize;
    DetsKeyBlock& kb = key_blocks_[i];
    kb.offset = Load64(e);
    kb.length = Load32(e + 8);
    kb.items = Load32(e + 12);
    kb.checksum = Load64(e + 16);
    if (kb.offset != kpos || kb.length == 0 || kb.items == 0 ||
        !FitsIn(kb.offset, kb.length, key_dir_off_)) {
      return Corrupt("bad key index block " + std::to_string(i),
                     key_dir_off_ + i * kDetsKeyDirEntrySize);
    }
    kpos += kb.length;
    items += kb.items;
  }
  if (kpos != key_dir_off_ || items != entry_count_) {
    return Corrupt("key index does not cover the entries", key_index_off_);
  }
  chunk_ok_.reset(new std::atomic<uint64_t>[(chunks + 63) / 64 + 1]());
  KEYFS_RETURN_IF_ERROR(LoadBlooms());
  block_ok_.reset(new std::atomic<uint64_t>[(key_blocks + 63) / 64 + 1]());
  return Status::OK();
}

// The bloom filters live in memory (huge pages), read with pread and checked chunk by chunk:
// a miss then costs one cache line of RAM, never a page of the file (and the mapping's RSS
// does not grow by the filters' file pages).
Status DetsFile::LoadBlooms() {
  static_assert(kDetsBuckets == std::tuple_size_v<decltype(bloom_refs_)>);
  uint64_t total = 0;
  std::vector<uint64_t> bloom_at(kDetsBuckets);  // offset of bucket t's filter in bloom_mem_
  for (uint32_t t = 0; t < kDetsBuckets; ++t) {
    bloom_at[t] = total;
    total += buckets_[t].bloom_blocks * kDetsBloomBlockBytes;
  }
  bloom_mem_size_ = std::max<uint64_t>(total, 4096);
  void* m =
      ::mmap(nullptr, bloom_mem_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return Status::FromErrno(errno, "mmap");
  bloom_mem_ = static_cast<uint8_t*>(m);
  ::madvise(m, bloom_mem_size_, MADV_HUGEPAGE);
  std::vector<uint8_t> chunks;
  std::vector<uint8_t> sums;  // those chunks' checksums and the zero padding after them
  for (uint32_t t = 0; t < kDetsBuckets; ++t) {
    const DetsBucket& b = buckets_[t];
    if (b.count == 0) continue;
    // The chunks holding the filter (its first may begin in the hash table).
    const uint64_t c0 = (b.bloom_off - b.entries_off) / kDetsChunkSize, c1 = b.chunks;
    const uint64_t from = b.entries_off + c0 * kDetsChunkSize;
    const uint64_t sums_from = b.sums_off + 8 * c0;
    chunks.resize(b.sums_off - from);
    sums.resize(b.end - sums_from);
    KEYFS_RETURN_IF_ERROR(ReadAt(from, chunks.size(), chunks.data()));
    KEYFS_RETURN_IF_ERROR(ReadAt(sums_from, sums.size(), sums.data()));
    for (uint64_t c = c0; c < c1; ++c) {
      const uint64_t at = (c - c0) * kDetsChunkSize;
      const uint64_t len = std::min<uint64_t>(kDetsChunkSize, chunks.size() - at);
      if (Hash(chunks.data() + at, len) != Load64(sums.data() + 8 * (c - c0))) {
        return ChunkMismatch(b, c);
      }
    }
    // The padding is under no checksum: checked here, in bytes read anyway, so no open
    // serves (or upgrades) a file damaged there.
    for (uint64_t z = 8 * (c1 - c0); z < sums.size(); ++z) {
      if (sums[z] != 0) {
        return Corrupt("nonzero padding after bucket " + std::to_string(t), sums_from + z);
      }
    }
    std::memcpy(bloom_mem_ + bloom_at[t], chunks.data() + (b.bloom_off - from),
                b.bloom_blocks * kDetsBloomBlockBytes);
    bloom_refs_[t] = BloomRef{bloom_mem_ + bloom_at[t], b.bloom_blocks};
  }
  return Status::OK();
}

Status DetsFile::ReadAt(uint64_t off, size_t len, uint8_t* dst) const {
  while (len > 0) {
    ssize_t n = ::pread(fd_, dst, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path_);
    }
    if (n == 0) return Status::Corruption(path_ + ": unexpected end of file");
    dst += n;
    off += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return Status::OK();
}

double DetsFile::bloom_fp_estimate() const {
  double sum = 0;
  for (const DetsBucket& b : buckets_) {
    sum += BlockedBloomFpRate(b.count, b.bloom_blocks, kDetsBloomBlockBytes * 8, bloom_k_);
  }
  return sum / kDetsBuckets;
}

uint64_t DetsFile::bloom_bits() const {
  uint64_t bits = 0;
  for (const DetsBucket& b : buckets_) bits += b.bloom_blocks * kDetsBloomBlockBytes * 8;
  return bits;
}

uint64_t DetsFile::hash_slots() const {
  uint64_t slots = 0;
  for (const DetsBucket& b : buckets_) {
    if (b.count > 0) slots += uint64_t{1} << b.slot_bits;
  }
  return slots;
}

Status DetsFile::ChunkMismatch(const DetsBucket& b, uint64_t c) const {
  // Either the chunk or its checksum is damaged: name both, and what the chunk holds.
  const uint64_t off = b.entries_off + c * kDetsChunkSize;
  const uint64_t end = std::min(b.sums_off, off + kDetsChunkSize);
  const struct {
    const char* name;
    uint64_t begin, end;
  } parts[] = {{"entries", b.entries_off, b.entries_end},
               {"padding", b.entries_end, b.index_off},
               {"hash table", b.index_off, b.bloom_off},
               {"bloom filter", b.bloom_off, b.sums_off}};
  std::string holds;
  for (const auto& p : parts) {
    if (p.begin < p.end && p.begin < end && off < p.end) {
      holds += holds.empty() ? "" : ", ";
      holds += p.name;
    }
  }
  return Corrupt("checksum mismatch in chunk " + std::to_string(c) + " of bucket " +
                     std::to_string(&b - buckets_.data()) + " (" + holds +
                     "; chunk checksum at offset " + std::to_string(b.sums_off + 8 * c) + ")",
                 off);
}

Status DetsFile::CheckChunk(const DetsBucket& b, uint64_t c) const {
  const uint64_t bit = b.chunk_base + c;
  if (TestBit(chunk_ok_.get(), bit)) return Status::OK();  // (CheckRange tests this inline)
  const uint64_t off = b.entries_off + c * kDetsChunkSize;
  const uint64_t len = std::min<uint64_t>(kDetsChunkSize, b.sums_off - off);
  if (Hash(base_ + off, len) != Load64(base_ + b.sums_off + 8 * c)) return ChunkMismatch(b, c);
  SetBit(chunk_ok_.get(), bit);
  return Status::OK();
}

inline Status DetsFile::CheckRange(const DetsBucket& b, uint64_t off, uint64_t len) const {
  const uint64_t first = b.chunk_base + (off - b.entries_off) / kDetsChunkSize;
  const uint64_t last = b.chunk_base + (off + len - 1 - b.entries_off) / kDetsChunkSize;
  for (uint64_t c = first; c <= last; ++c) {
    if (__builtin_expect(!TestBit(chunk_ok_.get(), c), 0)) {
      KEYFS_RETURN_IF_ERROR(CheckChunk(b, c - b.chunk_base));
    }
  }
  return Status::OK();
}

// Checks the size fields of the entry header at `e` (entry at `off` of bucket `b`).
inline Status DetsFile::CheckEntryHeader(const DetsBucket& b, uint64_t off, const uint8_t* e,
                                         uint64_t* size) const {
  *size = Load64(e + kESize);
  const uint64_t klen = Load16(e + kEKeyLen);
  if (*size > b.entries_end - off || klen == 0 || klen > kMaxKeyLength ||
      *size < entry_fixed_ + klen) {
    return Corrupt("bad entry size", off);
  }
  return Status::OK();
}

// Decodes the whole entry at `e` (its header checked by CheckEntryHeader).
inline Status DetsFile::DecodeEntry(uint64_t off, const uint8_t* e, uint64_t size,
                                    DetsEntry* out) const {
  const uint64_t klen = Load16(e + kEKeyLen);
  const uint8_t type = e[kEType];
  const uint32_t mode = Load16(e + kEMode);
  if (!ValidType(type) || mode > 07777) return Corrupt("bad entry type or mode", off);
  out->hash = Load64(e + kEHash);
  out->meta.type = static_cast<EntryType>(type);
  out->meta.mode = mode;
  out->meta.uid = Load32(e + kEUid);
  out->meta.gid = Load32(e + kEGid);
  out->meta.mtime_ns = static_cast<int64_t>(Load64(e + kEMtime));
  out->meta.ctime_ns = static_cast<int64_t>(Load64(e + kECtime));
  out->version = Load64(e + kEVersion);
  if (legacy_) [[unlikely]] {
    // v1 stores no atime (it reads as the mtime) and no child count (the engine counts).
    out->key = std::string_view(reinterpret_cast<const char*>(e + kEKeyV1), klen);
    out->meta.atime_ns = out->meta.mtime_ns;
    out->meta.subdirs = 0;
    out->value = std::string_view(reinterpret_cast<const char*>(e + kEKeyV1 + klen),
                                  size - kDetsEntryFixedV1 - klen);
  } else {  // the layout's offsets as constants: this runs on every hit
    out->key = std::string_view(reinterpret_cast<const char*>(e + kEKey), klen);
    out->meta.atime_ns = static_cast<int64_t>(Load64(e + kEAtime));
    out->meta.subdirs = Load32(e + kESubdirs);
    out->value = std::string_view(reinterpret_cast<const char*>(e + kEKey + klen),
                                  size - kDetsEntryFixed - klen);
  }
  out->offset = off;
  out->size = size;
  return Status::OK();
}

Status DetsFile::ReadEntry(const DetsBucket& b, uint64_t off, DetsEntry* out) const {
  if (off < b.entries_off || !FitsIn(off, entry_fixed_ + 1, b.entries_end)) {
    return Corrupt("entry offset out of range", off);
  }
  KEYFS_RETURN_IF_ERROR(CheckRange(b, off, entry_fixed_));
  const uint8_t* e = base_ + off;
  uint64_t size;
  KEYFS_RETURN_IF_ERROR(CheckEntryHeader(b, off, e, &size));
  // The rest of the entry, past the chunk of its header (usually nothing).
  const uint64_t header_chunk_end =
      b.entries_off + ((off - b.entries_off) / kDetsChunkSize + 1) * kDetsChunkSize;
  if (off + size > header_chunk_end) {
    KEYFS_RETURN_IF_ERROR(CheckRange(b, header_chunk_end, off + size - header_chunk_end));
  }
  return DecodeEntry(off, e, size, out);
}

// [off, off + len) of bucket `b` read with pread into *out; chunks not verified yet are read
// whole and verified first.
Status DetsFile::ReadChecked(const DetsBucket& b, uint64_t off, uint64_t len,
                             std::string* out) const {
  const uint64_t c0 = (off - b.entries_off) / kDetsChunkSize;
  const uint64_t c1 = (off + len - 1 - b.entries_off) / kDetsChunkSize;
  bool verified = true;
  for (uint64_t c = c0; c <= c1 && verified; ++c)
    verified = TestBit(chunk_ok_.get(), b.chunk_base + c);
  if (verified) {
    out->resize(len);
    return ReadAt(off, len, reinterpret_cast<uint8_t*>(out->data()));
  }
  const uint64_t from = b.entries_off + c0 * kDetsChunkSize;
  const uint64_t to = std::min(b.sums_off, b.entries_off + (c1 + 1) * kDetsChunkSize);
  std::string chunks(to - from, '\0');
  std::vector<uint64_t> sums(c1 - c0 + 1);
  KEYFS_RETURN_IF_ERROR(ReadAt(from, chunks.size(), reinterpret_cast<uint8_t*>(chunks.data())));
  KEYFS_RETURN_IF_ERROR(
      ReadAt(b.sums_off + 8 * c0, 8 * sums.size(), reinterpret_cast<uint8_t*>(sums.data())));
  for (uint64_t c = c0; c <= c1; ++c) {
    const uint64_t at = (c - c0) * kDetsChunkSize;
    const uint64_t n = std::min<uint64_t>(kDetsChunkSize, chunks.size() - at);
    if (Hash(chunks.data() + at, n) != sums[c - c0]) return ChunkMismatch(b, c);
    SetBit(chunk_ok_.get(), b.chunk_base + c);
  }
  out->assign(chunks, off - from, len);
  return Status::OK();
}

Status DetsFile::FindCopy(std::string_view key, uint64_t h, DetsEntry* out,
                          std::string* storage) const {
  KEYFS_RETURN_IF_ERROR(MayContain(h));
  const DetsBucket& b = buckets_[h >> 56];
  const uint64_t mask = (uint64_t{1} << b.slot_bits) - 1;
  uint64_t slot = DetsSlot(h, b.slot_bits);
  std::string buf;
  for (uint64_t probes = 0; probes <= mask; ++probes) {
    const uint64_t soff = b.index_off + slot * kDetsSlotSize;
    KEYFS_RETURN_IF_ERROR(ReadChecked(b, soff, kDetsSlotSize, &buf));
    const uint8_t* sp = reinterpret_cast<const uint8_t*>(buf.data());
    const uint64_t pos = Load64(sp + 8);
    if (pos == 0) return Status::NotFound();
    if (Load64(sp) == h) {
      if (pos > b.entries_end - b.entries_off) return Corrupt("hash slot out of range", soff);
      const uint64_t off = b.entries_off + pos - 1;
      if (!FitsIn(off, entry_fixed_ + 1, b.entries_end)) {
        return Corrupt("entry offset out of range", off);
      }
      KEYFS_RETURN_IF_ERROR(ReadChecked(b, off, entry_fixed_, &buf));
      uint64_t size;
      KEYFS_RETURN_IF_ERROR(
          CheckEntryHeader(b, off, reinterpret_cast<const uint8_t*>(buf.data()), &size));
      KEYFS_RETURN_IF_ERROR(ReadChecked(b, off, size, &buf));
      DetsEntry e{};
      KEYFS_RETURN_IF_ERROR(
          DecodeEntry(off, reinterpret_cast<const uint8_t*>(buf.data()), size, &e));
      if (e.hash != h) return Corrupt("hash slot and entry disagree", soff);
      if (e.key == key) {
        *storage = std::move(buf);  // the views stay valid: the bytes do not move
        return DecodeEntry(off, reinterpret_cast<const uint8_t*>(storage->data()), size, out);
      }
    }
    slot = (slot + 1) & mask;
  }
  return Corrupt("hash table has no empty slot", b.index_off);
}

Status DetsFile::MayContain(uint64_t h) const {
  const BloomRef& r = bloom_refs_[h >> 56];
  if (r.blocks == 0) return Status::NotFound();  // an empty bucket (Init checked the counts)
  const BloomProbe bp = Bloom(h, r.blocks);
  const uint8_t* block = r.filter + bp.block * kDetsBloomBlockBytes;
  uint32_t a = bp.a;
  for (uint32_t i = 0; i < bloom_k_; ++i) {
    const uint32_t bit = a & 511;
    if (!(block[bit >> 3] & (1u << (bit & 7)))) return Status::NotFound();
    a += bp.delta;
  }
  return Status::OK();
}

Status DetsFile::FindInTable(std::string_view key, uint64_t h, DetsEntry* out) const {
  const DetsBucket& b = buckets_[h >> 56];
  if (b.count == 0) return Status::NotFound();
  const uint64_t mask = (uint64_t{1} << b.slot_bits) - 1;
  uint64_t slot = DetsSlot(h, b.slot_bits);
  for (uint64_t probes = 0; probes <= mask; ++probes) {
    const uint64_t soff = b.index_off + slot * kDetsSlotSize;
    KEYFS_RETURN_IF_ERROR(CheckRange(b, soff, kDetsSlotSize));
    const uint64_t pos = Load64(base_ + soff + 8);  // 1 + offset within the bucket
    if (pos == 0) return Status::NotFound();
    if (Load64(base_ + soff) == h) {
      if (pos > b.entries_end - b.entries_off) return Corrupt("hash slot out of range", soff);
      KEYFS_RETURN_IF_ERROR(ReadEntry(b, b.entries_off + pos - 1, out));
      if (out->hash != h) return Corrupt("hash slot and entry disagree", soff);
      if (out->key == key) return Status::OK();
    }
    slot = (slot + 1) & mask;
  }
  return Corrupt("hash table has no empty slot", b.index_off);
}

// ---- key index ----

Status DetsFile::CheckKeyBlock(uint64_t i) const {
  if (TestBit(block_ok_.get(), i)) return Status::OK();
  const DetsKeyBlock& kb = key_blocks_[i];
  if (Hash(base_ + kb.offset, kb.length) != kb.checksum) {
    return Corrupt("key index block " + std::to_string(i) + " checksum mismatch", kb.offset);
  }
  SetBit(block_ok_.get(), i);
  return Status::OK();
}

Status DetsFile::BlockBytes(uint64_t i, const uint8_t** data) const {
  KEYFS_RETURN_IF_ERROR(CheckKeyBlock(i));
  *data = base_ + key_blocks_[i].offset;
  return Status::OK();
}

Status DetsFile::BlockFirstKey(uint64_t i, std::string_view* out) const {
  const uint8_t* p;
  KEYFS_RETURN_IF_ERROR(BlockBytes(i, &p));
  const uint8_t* end = p + key_blocks_[i].length;
  uint64_t shared, len;
  size_t n1 = GetVarint(p, end, &shared);
  size_t n2 = n1 ? GetVarint(p + n1, end, &len) : 0;
  if (n2 == 0 || shared != 0 || len == 0 || len > kMaxKeyLength ||
      len > static_cast<uint64_t>(end - p) - n1 - n2) {
    return Corrupt("bad first key in key index block " + std::to_string(i), key_blocks_[i].offset);
  }
  *out = std::string_view(reinterpret_cast<const char*>(p + n1 + n2), len);
  return Status::OK();
}

Status DetsFile::KeyCursor::LoadBlock(uint64_t block) {
  block_ = block;
  valid_ = false;
  if (block >= file_->key_blocks_.size()) return Status::OK();
  KEYFS_RETURN_IF_ERROR(file_->BlockBytes(block, &p_));
  end_ = p_ + file_->key_blocks_[block].length;
  key_.clear();
  return DecodeItem();
}

Status DetsFile::KeyCursor::DecodeItem() {
  uint64_t shared, len;
  size_t n1 = GetVarint(p_, end_, &shared);
  size_t n2 = n1 ? GetVarint(p_ + n1, end_, &len) : 0;
  if (n2 == 0 || shared > key_.size() || shared + len == 0 || shared + len > kMaxKeyLength ||
      len > static_cast<uint64_t>(end_ - p_) - n1 - n2) {
    valid_ = false;
    return file_->Corrupt("bad key index item", file_->key_blocks_[block_].offset);
  }
  key_.resize(shared);
  key_.append(reinterpret_cast<const char*>(p_ + n1 + n2), len);
  p_ += n1 + n2 + len;
  valid_ = true;
  return Status::OK();
}

Status DetsFile::KeyCursor::Next() {
  if (!valid_) return Status::OK();
  if (p_ < end_) return DecodeItem();
  return LoadBlock(block_ + 1);
}

Status DetsFile::KeyCursor::SeekToFirst() { return LoadBlock(0); }

Status DetsFile::KeyCursor::Seek(std::string_view target) {
  // The last block whose first key is <= target (block 0 if none).
  uint64_t lo = 0, hi = file_->key_blocks_.size();
  while (hi - lo > 1) {
    const uint64_t mid = lo + (hi - lo) / 2;
    std::string_view first;
    KEYFS_RETURN_IF_ERROR(file_->BlockFirstKey(mid, &first));
    if (first <= target) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  KEYFS_RETURN_IF_ERROR(LoadBlock(lo));
  while (valid_ && std::string_view(key_) < target) KEYFS_RETURN_IF_ERROR(Next());
  return Status::OK();
}

// ---- verification ----

Status DetsFile::VerifyBucket(uint32_t t, std::vector<std::string>* report, uint64_t* max_version,
                              uint64_t* counts, uint64_t* values) const {
  (void)report;
  const DetsBucket& b = buckets_[t];
  if (b.count == 0) return Status::OK();
  for (uint64_t c = 0; c < b.chunks; ++c) KEYFS_RETURN_IF_ERROR(CheckChunk(b, c));
  // Entries: consecutive, in (hash, key) order, in the right bucket, well-formed.
  std::vector<uint64_t> offsets;
  offsets.reserve(b.count);
  uint64_t off = b.entries_off, prev_hash = 0;
  std::string prev_key;
  DetsEntry e;
  while (off < b.entries_end) {
    if (offsets.size() == b.count) return Corrupt("more entries than the bucket count", off);
    KEYFS_RETURN_IF_ERROR(ReadEntry(b, off, &e));
    const uint8_t* p = base_ + off;
    if (p[kEZero1] != 0 || Load16(p + kEZero2) != 0) return Corrupt("nonzero entry padding", off);
    if (HashKey(e.key) != e.hash) return Corrupt("entry hash does not match its key", off);
    if ((e.hash >> 56) != t) return Corrupt("entry in the wrong bucket", off);
    if (!offsets.empty() && !(prev_hash < e.hash || (prev_hash == e.hash && prev_key < e.key))) {
      return Corrupt("entries out of hash order", off);
    }
    Status ks = ValidateKey(e.key);
    if (!ks.ok()) return Corrupt("invalid key (" + ks.ToString() + ")", off);
    if (e.meta.type == EntryType::kDir && !e.value.empty()) {
      return Corrupt("directory with a value", off);
    }
    ++counts[static_cast<int>(e.meta.type) - 1];
    *values += e.value.size();
    *max_version = std::max(*max_version, e.version);
    offsets.push_back(off);
    prev_hash = e.hash;
    prev_key.assign(e.key);
    off += e.size;
  }
  if (off != b.entries_end) return Corrupt("entries overrun their bucket", off);
  if (offsets.size() != b.count) return Corrupt("fewer entries than the bucket count", off);
  for (uint64_t z = b.entries_end; z < b.index_off; ++z) {
    if (base_[z] != 0) return Corrupt("nonzero padding before a hash table", z);
  }
  for (uint64_t z = b.sums_off + 8 * b.chunks; z < b.end; ++z) {
    if (base_[z] != 0) return Corrupt("nonzero padding after bucket " + std::to_string(t), z);
  }
  // Hash table: every used slot points at an entry start with its hash; count matches; the
  // entries are all found through it (and through the bloom filter).
  uint64_t used = 0;
  const uint64_t slots = uint64_t{1} << b.slot_bits;
  for (uint64_t s = 0; s < slots; ++s) {
    const uint64_t soff = b.index_off + s * kDetsSlotSize;
    const uint64_t pos = Load64(base_ + soff + 8), h = Load64(base_ + soff);
    const uint64_t eoff = b.entries_off + pos - 1;
    if (pos == 0) {
      if (h != 0) return Corrupt("empty hash slot with a hash", soff);
      continue;
    }
    ++used;
    if (!std::binary_search(offsets.begin(), offsets.end(), eoff)) {
      return Corrupt("hash slot points between entries", soff);
    }
    if (Load64(base_ + eoff + kEHash) != h) return Corrupt("hash slot hash mismatch", soff);
  }
  if (used != b.count) return Corrupt("hash table entry count mismatch", b.index_off);
  for (uint64_t o : offsets) {
    KEYFS_RETURN_IF_ERROR(ReadEntry(b, o, &e));
    DetsEntry found;
    Status fs = Find(e.key, e.hash, &found);
    if (!fs.ok() || found.offset != o) {
      return Corrupt("hash table or bloom filter misses key '" + std::string(e.key) + "'", o);
    }
  }
  return Status::OK();
}

Status DetsFile::VerifyKeyIndex(std::vector<std::string>* report) const {
  (void)report;
  for (uint64_t i = 0; i < key_blocks_.size(); ++i) KEYFS_RETURN_IF_ERROR(CheckKeyBlock(i));
  // Every block decodes to exactly its item count; keys strictly increasing; every key is an
  // entry (so, with the count equal to the entry count, the index lists each entry once);
  // the tree holds (every parent a directory).
  KeyCursor c(this);
  std::string prev;
  uint64_t n = 0;
  // v2: every directory's stored count of child directories, and the count of the entries.
  std::vector<std::pair<std::string, uint64_t>> dirs;  // (key, entry offset)
  std::unordered_map<std::string, uint32_t> child_dirs;
  for (uint64_t i = 0; i < key_blocks_.size(); ++i) {
    KEYFS_RETURN_IF_ERROR(c.LoadBlock(i));
    for (uint32_t item = 0; item < key_blocks_[i].items; ++item) {
      if (item > 0) {
        if (c.p_ >= c.end_)
          return Corrupt("key index block has fewer items than it says", key_blocks_[i].offset);
        KEYFS_RETURN_IF_ERROR(c.DecodeItem());
      }
      const std::string_view key = c.key();
      if (n > 0 && !(prev < key)) return Corrupt("key index out of order", key_blocks_[i].offset);
      Status ks = ValidateKey(key);
      if (!ks.ok()) {
        return Corrupt("invalid key in key index (" + ks.ToString() + ")", key_blocks_[i].offset);
      }
      DetsEntry e;
      Status fs = Find(key, HashKey(key), &e);
      if (fs.IsNotFound()) {
        return Corrupt("key index lists a missing key '" + std::string(key) + "'",
                       key_blocks_[i].offset);
      }
      KEYFS_RETURN_IF_ERROR(fs);
      if (e.meta.type == EntryType::kDir) {
        dirs.emplace_back(key, e.offset);
        ++child_dirs[std::string(ParentKey(key))];
      } else if (e.meta.subdirs != 0) {
        return Corrupt("child directory count on a file or symlink", e.offset);
      }
      // Siblings like "a-b" sort between "a" and "a/b": look the parent up.
      const std::string_view parent = ParentKey(key);
      if (!parent.empty()) {
        DetsEntry p;
        Status ps = Find(parent, HashKey(parent), &p);
        if (!ps.ok() && !ps.IsNotFound()) return ps;
        if (!ps.ok() || p.meta.type != EntryType::kDir) {
          return Corrupt("parent of '" + std::string(key) + "' is not a directory", e.offset);
        }
      }
      prev.assign(key);
      ++n;
    }
    if (c.p_ != c.end_) return Corrupt("key index block has trailing bytes", key_blocks_[i].offset);
  }
  if (n != entry_count_) return Corrupt("key index count mismatch", key_index_off_);
  if (!legacy_) {
    for (const auto& [key, off] : dirs) {
      DetsEntry e;
      KEYFS_RETURN_IF_ERROR(Find(key, HashKey(key), &e));
      auto it = child_dirs.find(key);
      const uint32_t counted = it == child_dirs.end() ? 0 : it->second;
      if (e.meta.subdirs != counted) {
        return Corrupt("directory '" + key + "' says " + std::to_string(e.meta.subdirs) +
                           " child directories, has " + std::to_string(counted),
                       off + kESubdirs);
      }
    }
    const uint32_t root_counted = child_dirs.count("") ? child_dirs[""] : 0;
    if (root_.subdirs != root_counted) {
      return Corrupt("root directory says " + std::to_string(root_.subdirs) +
                         " child directories, has " + std::to_string(root_counted),
                     header_off_ + kDHRootSubdirs);
    }
    if (root_version_ > last_version_) {
      return Corrupt("root newer than the header's last version", header_off_ + kDHRootVersion);
    }
    if (report) {
      report->push_back("directories: " + std::to_string(dirs.size()) +
                        " and the root, child counts match");
    }
  }
  return Status::OK();
}

StatusOr<uint32_t> DetsFile::CountChildDirs(std::string_view dir) const {
  std::string prefix(dir);
  if (!prefix.empty()) prefix += '/';
  KeyCursor c(this);
  KEYFS_RETURN_IF_ERROR(c.Seek(prefix));
  uint32_t n = 0;
  while (c.Valid() && c.key().size() > prefix.size() &&
         c.key().compare(0, prefix.size(), prefix) == 0) {
    const std::string_view rest = c.key().substr(prefix.size());
    const size_t slash = rest.find('/');
    if (slash != std::string_view::npos) {
      // Below a child directory: jump past its subtree.
      std::string skip = prefix;
      skip.append(rest.substr(0, slash));
      skip += '0';  // the byte after '/'
      KEYFS_RETURN_IF_ERROR(c.Seek(skip));
      continue;
    }
    DetsEntry e;
    Status s = Find(c.key(), HashKey(c.key()), &e);
    if (s.IsNotFound()) {
      return Corrupt("key index lists a missing key '" + std::string(c.key()) + "'",
                     key_index_off_);
    }
    KEYFS_RETURN_IF_ERROR(s);
    n += e.meta.type == EntryType::kDir;
    KEYFS_RETURN_IF_ERROR(c.Next());
  }
  return n;
}

StatusOr<Meta> DetsFile::RootMeta() const {
  if (!legacy_) return root_;
  auto n = CountChildDirs("");
  if (!n.ok()) return n.status();
  return format::LegacyRootMeta(sync_time_ns_, *n);
}

Status DetsFile::VerifyAll(std::vector<std::string>* report) const {
  auto note = [&](std::string line) {
    if (report) report->push_back(std::move(line));
  };
  uint64_t max_version = 0, counts[3] = {0, 0, 0}, values = 0, nonempty = 0;
  uint32_t min_bits = 64, max_bits = 0;
  for (uint32_t t = 0; t < kDetsBuckets; ++t) {
    KEYFS_RETURN_IF_ERROR(VerifyBucket(t, report, &max_version, counts, &values));
    if (buckets_[t].count > 0) {
      ++nonempty;
      min_bits = std::min(min_bits, buckets_[t].slot_bits);
      max_bits = std::max(max_bits, buckets_[t].slot_bits);
    }
  }
  const uint64_t header_off = header_off_;
  if (counts[0] != files_ || counts[1] != dirs_ || counts[2] != symlinks_) {
    return Corrupt("entry counts by type do not match the header", header_off + kDHFiles);
  }
  if (values != value_bytes_) {
    return Corrupt("value byte total does not match the header", header_off + kDHValueBytes);
  }
  if (max_version > last_version_) {
    return Corrupt("an entry is newer than the header's last version", header_off + kDHLastVersion);
  }
  note("entries: " + std::to_string(entry_count_) + " (" + std::to_string(files_) + " files, " +
       std::to_string(dirs_) + " dirs, " + std::to_string(symlinks_) +
       " symlinks), checksums ok, in hash order");
  if (nonempty > 0) {
    note("hash tables: " + std::to_string(nonempty) + " of 256 used, " +
         std::to_string(hash_slots()) + " slots (" + std::to_string(min_bits) + "-" +
         std::to_string(max_bits) + " bits), every entry found");
  } else {
    note("hash tables: all 256 empty");
  }
  note("bloom filters: " + std::to_string(bloom_bits()) + " bits, k=" + std::to_string(bloom_k_));
  KEYFS_RETURN_IF_ERROR(VerifyKeyIndex(report));
  note("key index: " + std::to_string(key_blocks_.size()) + " blocks, " +
       std::to_string(entry_count_) + " keys sorted, tree intact");
  auto root = RootMeta();
  if (!root.ok()) return root.status();
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", root->mode);
  note(std::string("root: mode ") + mode + ", owner " + std::to_string(root->uid) + ":" +
       std::to_string(root->gid) + ", " + std::to_string(root->subdirs) + " child directories" +
       (legacy_ ? " (version 1: implied)" : ""));
  return Status::OK();
}

}  // namespace keyfs
