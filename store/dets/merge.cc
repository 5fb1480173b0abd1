// The dets merge: old file (already in hash order) + frozen buffers (sorted here by hash)
// -> new file, bucket by bucket, in one sequential write. The key index is merged the same
// way from the old file's key index and the buffers sorted by key.
#include "dets/merge.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "format.h"
#include "keyfs/base/mutex.h"

namespace keyfs {

using namespace format;  // NOLINT: the format's names are this file's vocabulary

namespace {

using Node = WriteBuffer::Node;

// One buffered key to merge in hash order: `k` is the hash, `node` the newest layer's node
// of the key, `rec` its record (nullptr: a tombstone).
struct Item {
  uint64_t k;
  const Node* node;
  const WriteBuffer::Record* rec;
};
// The same in key order: `k` is the first 8 key bytes big-endian; the low bit of `node`
// is set for a tombstone.
struct KeyItem {
  uint64_t k;
  uintptr_t node;
  const Node* get() const { return reinterpret_cast<const Node*>(node & ~uintptr_t{1}); }
  bool live() const { return !(node & 1); }
};

// The buffers sit in memory in insertion order and are read in hash or key order: ask for
// the lines of an item a few items ahead.
inline void Prefetch(const Item& it) {
  __builtin_prefetch(it.node);
  if (it.rec != nullptr) {
    const char* r = reinterpret_cast<const char*>(it.rec);
    __builtin_prefetch(r);
    __builtin_prefetch(r + 64);
    __builtin_prefetch(r + 128);
  }
}
constexpr size_t kPrefetchAhead = 16;

// In-place MSD radix sort by k (American flag sort), one byte per level, skipping bytes
// that are equal in the whole range (long common key prefixes); small ranges go to
// std::sort. No memory beyond the array.
template <class T>
void RadixSort(T* b, T* e, int shift) {
  while (true) {
    const size_t n = static_cast<size_t>(e - b);
    if (n < 1024 || shift < 0) {
      std::sort(b, e, [](const T& x, const T& y) { return x.k < y.k; });
      return;
    }
    size_t count[256] = {};
    for (const T* it = b; it != e; ++it) ++count[(it->k >> shift) & 0xff];
    if (std::find(count, count + 256, n) != count + 256) {
      shift -= 8;  // every item has the same byte here
      continue;
    }
    size_t start[257], next[256];
    start[0] = 0;
    for (int i = 0; i < 256; ++i) start[i + 1] = start[i] + count[i];
    std::copy(start, start + 256, next);
    for (int d = 0; d < 256; ++d) {
      while (next[d] < start[d + 1]) {
        T& it = b[next[d]];
        const size_t to = (it.k >> shift) & 0xff;
        if (to == static_cast<size_t>(d)) {
          ++next[d];
        } else {
          std::swap(it, b[next[to]++]);
        }
      }
    }
    for (int i = 0; i < 256; ++i) {
      if (count[i] > 1) RadixSort(b + start[i], b + start[i + 1], shift - 8);
    }
    return;
  }
}

template <class T>
void RadixSort(HugeVector<T>& v) {
  RadixSort(v.data(), v.data() + v.size(), 56);
}

// Sorts items already sorted by k so that runs of equal k are ordered by key.
template <class T, class NodeOf>
void SortTies(HugeVector<T>& v, NodeOf node_of) {
  auto by_key = [&](const T& a, const T& b) { return node_of(a)->key() < node_of(b)->key(); };
  for (size_t i = 0; i < v.size();) {
    size_t j = i + 1;
    while (j < v.size() && v[j].k == v[i].k) ++j;
    if (j - i > 1) std::sort(v.begin() + i, v.begin() + j, by_key);
    i = j;
  }
}

uint64_t KeyPrefix(std::string_view key) {
  uint8_t b[8] = {};
  std::memcpy(b, key.data(), std::min<size_t>(8, key.size()));
  uint64_t v = 0;
  for (uint8_t c : b) v = (v << 8) | c;
  return v;
}

// (hash, key) order of entries within the file.
bool HashKeyLess(uint64_t ha, std::string_view ka, uint64_t hb, std::string_view kb) {
  return ha < hb || (ha == hb && ka < kb);
}

// XXH3 of consecutive 4 KiB chunks of a byte stream (FORMAT.md §3.4).
class Chunker {
 public:
  void Reset() {
    XXH3_64bits_reset_withSeed(&st_, kHashSeed);
    fill_ = 0;
    sums_.clear();
  }
  void Feed(const uint8_t* p, size_t n) {
    while (n > 0) {
      const size_t take = std::min<size_t>(n, kDetsChunkSize - fill_);
      XXH3_64bits_update(&st_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ == kDetsChunkSize) {
        sums_.push_back(XXH3_64bits_digest(&st_));
        XXH3_64bits_reset_withSeed(&st_, kHashSeed);
        fill_ = 0;
      }
    }
  }
  // The sums, the last (short) chunk included.
  const std::vector<uint64_t>& Finish() {
    if (fill_ > 0) sums_.push_back(XXH3_64bits_digest(&st_));
    fill_ = 0;
    return sums_;
  }

 private:
  XXH3_state_t st_;
  size_t fill_ = 0;
  std::vector<uint64_t> sums_;
};

// Appends buffers to a WritableFile on a thread of its own, so that copying them into the
// page cache overlaps with preparing the next ones; at most two wait. Every 64 MiB it asks
// the kernel to start writing back (sync_file_range), so the final fdatasync finds little
// left to do.
class BackgroundAppender {
 public:
  explicit BackgroundAppender(WritableFile* f)
      : f_(f), thread_([this] {
          pthread_setname_np(pthread_self(), "dets-append");
          Run();
        }) {}
  ~BackgroundAppender() { (void)Finish(); }

  // Queues `buf` (taken) and returns an empty buffer to fill next.
  std::string Submit(std::string buf) {
    MutexLock l(&mu_);
    cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return queue_.size() < 2; });
    queue_.push_back(std::move(buf));
    cv_.NotifyAll();
    if (spare_.empty()) return std::string();
    std::string out = std::move(spare_.back());
    spare_.pop_back();
    return out;
  }
  // The first error of any append so far.
  Status status() {
    if (status_ok_.load(std::memory_order_acquire)) return Status::OK();
    MutexLock l(&mu_);
    return status_;
  }
  // Waits for every queued buffer and stops the thread.
  Status Finish() {
    {
      MutexLock l(&mu_);
      done_ = true;
      cv_.NotifyAll();
    }
    if (thread_.joinable()) thread_.join();
    MutexLock l(&mu_);
    return status_;
  }

 private:
  void Run() {
    uint64_t written = 0, hinted = 0;
    while (true) {
      std::string buf;
      {
        MutexLock l(&mu_);
        cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return done_ || !queue_.empty(); });
        if (queue_.empty()) return;
        buf = std::move(queue_.front());
        queue_.pop_front();
      }
      Status s = status_ok_ ? f_->Append(buf) : Status();
      written += buf.size();
      if (s.ok() && written - hinted >= (64 << 20) && f_->fd() >= 0) {
        ::sync_file_range(f_->fd(), static_cast<off_t>(hinted),
                          static_cast<off_t>(written - hinted), SYNC_FILE_RANGE_WRITE);
        hinted = written;
      }
      MutexLock l(&mu_);
      if (!s.ok() && status_.ok()) {
        status_ = s;
        status_ok_.store(false, std::memory_order_release);
      }
      buf.clear();
      spare_.push_back(std::move(buf));
      cv_.NotifyAll();
    }
  }

  WritableFile* f_;
  Mutex mu_;
  CondVar cv_;
  std::deque<std::string> queue_ GUARDED_BY(mu_);
  std::vector<std::string> spare_ GUARDED_BY(mu_);
  bool done_ GUARDED_BY(mu_) = false;
  Status status_ GUARDED_BY(mu_);
  std::atomic<bool> status_ok_{true};
  std::thread thread_;  // last: starts once the rest is built
};

// Buffered sequential output, tracking the file offset. Between BeginChunks and EndChunks
// every byte written is also cut into checksummed chunks.
class OutWriter {
 public:
  explicit OutWriter(WritableFile* f) : appender_(f) { buf_.reserve(kBuf); }
  uint64_t pos() const { return pos_; }
  void Put(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    pos_ += n;
    while (n > 0) {
      if (buf_.size() == kBuf) Flush();
      const size_t take = std::min(n, kBuf - buf_.size());
      buf_.append(c, take);
      c += take;
      n -= take;
    }
  }
  void Zeros(size_t n) {
    static const char kZeros[4096] = {};
    while (n > 0) {
      size_t m = std::min(n, sizeof(kZeros));
      Put(kZeros, m);
      n -= m;
    }
  }
  // Room for n bytes at the end of the buffer, to be filled in place before the next call.
  // REQUIRES n <= kBuf / 2.
  uint8_t* Reserve(size_t n) {
    if (buf_.size() + n > kBuf) Flush();
    size_t at = buf_.size();
    buf_.resize(at + n);
    pos_ += n;
    return reinterpret_cast<uint8_t*>(buf_.data() + at);
  }
  void Flush() {
    HashPending();
    if (!buf_.empty()) {
      buf_ = appender_.Submit(std::move(buf_));
      buf_.reserve(kBuf);
    }
    hashed_ = 0;
  }
  void BeginChunks() {
    HashPending();
    chunker_.Reset();
    chunking_ = true;
  }
  const std::vector<uint64_t>& EndChunks() {
    HashPending();
    chunking_ = false;
    return chunker_.Finish();
  }
  // The first write error so far.
  Status status() { return appender_.status(); }
  // Flushes, waits for every write, and returns the first error.
  Status Finish() {
    Flush();
    return appender_.Finish();
  }

  static constexpr size_t kBuf = 4 << 20;

 private:
  void HashPending() {
    if (chunking_ && hashed_ < buf_.size()) {
      chunker_.Feed(reinterpret_cast<const uint8_t*>(buf_.data()) + hashed_, buf_.size() - hashed_);
    }
    hashed_ = buf_.size();
  }

  std::string buf_;
  size_t hashed_ = 0;  // buf_[0, hashed_) went through the chunker (or needed not)
  uint64_t pos_ = 0;
  bool chunking_ = false;
  Chunker chunker_;
  BackgroundAppender appender_;
};

Status ReadFully(int fd, const std::string& path, uint64_t off, size_t len, uint8_t* dst) {
  while (len > 0) {
    ssize_t n = ::pread(fd, dst, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) return Status::Corruption(path + ": unexpected end of file");
    dst += n;
    off += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return Status::OK();
}

// Forward reads of one checksummed region of the old file (a bucket) through a fixed window
// of whole chunks, each verified against the region's sums as it is read.
class RegionReader {
 public:
  RegionReader(int fd, const std::string& path) : fd_(fd), path_(path), buf_(kWindow) {}

  // Reads the sums of [begin, end) from `sums_off` and starts at `begin`.
  Status Begin(uint64_t begin, uint64_t end, uint64_t sums_off) {
    begin_ = begin;
    end_ = end;
    const uint64_t chunks = (end - begin + kDetsChunkSize - 1) / kDetsChunkSize;
    sums_.resize(chunks);
    w0_ = w1_ = 0;
    return ReadFully(fd_, path_, sums_off, 8 * chunks, reinterpret_cast<uint8_t*>(sums_.data()));
  }

  // Verified bytes [off, off + len) at *out, valid until the next call. REQUIRES
  // len <= kMaxGet, [off, off + len) inside the region, off not before the chunk of the
  // previous call's off.
  Status Get(uint64_t off, size_t len, const uint8_t** out) {
    const uint64_t c0 = (off - begin_) / kDetsChunkSize;
    const uint64_t c1 = (off + len - 1 - begin_) / kDetsChunkSize + 1;  // exclusive
    if (c0 < w0_ || c1 > w1_) KEYFS_RETURN_IF_ERROR(Load(c0, c1));
    *out = buf_.data() + (off - begin_ - w0_ * kDetsChunkSize);
    return Status::OK();
  }

  // Calls sink(p, n) for the verified bytes of [off, off + len) in order, any length.
  template <class Sink>
  Status Stream(uint64_t off, uint64_t len, Sink&& sink) {
    while (len > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(len, kMaxGet));
      const uint8_t* p;
      KEYFS_RETURN_IF_ERROR(Get(off, n, &p));
      sink(p, n);
      off += n;
      len -= n;
    }
    return Status::OK();
  }

  static constexpr size_t kWindow = 4 << 20;
  static constexpr size_t kMaxGet = kWindow - 2 * kDetsChunkSize;

 private:
  uint64_t ChunkLen(uint64_t c) const {
    return std::min<uint64_t>(kDetsChunkSize, end_ - begin_ - c * kDetsChunkSize);
  }

  // Makes the window hold chunks [c0, c1) at least, keeping what it already has of them.
  Status Load(uint64_t c0, uint64_t c1) {
    const uint64_t chunks = sums_.size();
    uint64_t have_to = c0;
    if (c0 >= w0_ && c0 < w1_) {
      have_to = w1_;
      std::memmove(buf_.data(), buf_.data() + (c0 - w0_) * kDetsChunkSize,
                   (w1_ - c0) * kDetsChunkSize);
    }
    const uint64_t want_to = std::min(chunks, c0 + kWindow / kDetsChunkSize);
    if (c1 > want_to) return Status::InvalidArgument("region read too large");
    if (have_to < want_to) {
      const uint64_t off = begin_ + have_to * kDetsChunkSize;
      const uint64_t len = std::min(end_, begin_ + want_to * kDetsChunkSize) - off;
      uint8_t* dst = buf_.data() + (have_to - c0) * kDetsChunkSize;
      KEYFS_RETURN_IF_ERROR(ReadFully(fd_, path_, off, static_cast<size_t>(len), dst));
      for (uint64_t c = have_to; c < want_to; ++c) {
        const uint8_t* p = buf_.data() + (c - c0) * kDetsChunkSize;
        if (Hash(p, ChunkLen(c)) != sums_[c]) {
          w0_ = w1_ = 0;
          return Status::Corruption(path_ + ": checksum mismatch in chunk at offset " +
                                    std::to_string(begin_ + c * kDetsChunkSize));
        }
      }
    }
    w0_ = c0;
    w1_ = want_to;
    return Status::OK();
  }

  int fd_;
  const std::string& path_;
  std::vector<uint8_t> buf_;
  std::vector<uint64_t> sums_;
  uint64_t begin_ = 0, end_ = 0;
  uint64_t w0_ = 0, w1_ = 0;  // the window holds chunks [w0_, w1_)
};

void FillEntryHeader(uint8_t* e, uint64_t hash, uint64_t size, const Meta& m, uint64_t version,
                     uint16_t key_len) {
  std::memset(e, 0, kDetsEntryFixed);
  Store64(e + kEHash, hash);
  Store64(e + kESize, size);
  Store64(e + kEVersion, version);
  Store64(e + kEMtime, static_cast<uint64_t>(m.mtime_ns));
  Store64(e + kECtime, static_cast<uint64_t>(m.ctime_ns));
  Store32(e + kEUid, m.uid);
  Store32(e + kEGid, m.gid);
  Store16(e + kEMode, static_cast<uint16_t>(m.mode & 07777));
  e[kEType] = static_cast<uint8_t>(m.type);
  Store16(e + kEKeyLen, key_len);
  Store64(e + kEAtime, static_cast<uint64_t>(m.atime_ns));
  Store32(e + kESubdirs, m.type == EntryType::kDir ? m.subdirs : 0);
}

void FillEntryHeader(uint8_t* e, uint64_t hash, uint64_t size, const WriteBuffer::Record& r,
                     uint16_t key_len) {
  std::memset(e, 0, kDetsEntryFixed);
  Store64(e + kEHash, hash);
  Store64(e + kESize, size);
  Store64(e + kEVersion, r.version);
  Store64(e + kEMtime, static_cast<uint64_t>(r.mtime_ns));
  Store64(e + kECtime, static_cast<uint64_t>(r.ctime_ns));
  Store32(e + kEUid, r.uid);
  Store32(e + kEGid, r.gid);
  Store16(e + kEMode, static_cast<uint16_t>(r.mode & 07777));
  e[kEType] = static_cast<uint8_t>(r.type);
  Store16(e + kEKeyLen, key_len);
  Store64(e + kEAtime, static_cast<uint64_t>(r.atime_ns));
  Store32(e + kESubdirs, r.type == EntryType::kDir ? r.subdirs : 0);
}

// Accumulates the key index: blocks of front-coded keys and their directory.
class KeyIndexWriter {
 public:
  explicit KeyIndexWriter(OutWriter* out) : out_(out) { block_.reserve(2 * kDetsKeyBlockSize); }
  // REQUIRES: keys strictly increasing.
  void Add(std::string_view key) {
    uint8_t head[8];
    size_t shared = 0;
    if (items_ > 0) {
      const size_t lim = std::min(prev_.size(), key.size());
      while (shared < lim && prev_[shared] == key[shared]) ++shared;
    }
    size_t hn = PutVarint(head, shared);
    hn += PutVarint(head + hn, key.size() - shared);
    if (items_ > 0 && block_.size() + hn + key.size() - shared > kDetsKeyBlockSize) {
      FinishBlock();
      shared = 0;
      hn = PutVarint(head, 0);
      hn += PutVarint(head + hn, key.size());
    }
    block_.append(reinterpret_cast<const char*>(head), hn);
    block_.append(key.data() + shared, key.size() - shared);
    prev_.assign(key);
    ++items_;
    ++total_;
  }
  void Finish() {
    if (items_ > 0) FinishBlock();
  }
  // Appends a whole block of the old index unchanged (the caller checked its checksum).
  void CopyBlock(const uint8_t* data, const DetsKeyBlock& old) {
    if (items_ > 0) FinishBlock();
    DetsKeyBlock b = old;
    b.offset = out_->pos();
    out_->Put(data, old.length);
    dir_.push_back(b);
    total_ += old.items;
  }
  const std::vector<DetsKeyBlock>& blocks() const { return dir_; }
  uint64_t total() const { return total_; }

 private:
  void FinishBlock() {
    DetsKeyBlock b;
    b.offset = out_->pos();
    b.length = static_cast<uint32_t>(block_.size());
    b.items = items_;
    b.checksum = Hash(block_.data(), block_.size());
    out_->Put(block_.data(), block_.size());
    dir_.push_back(b);
    block_.clear();
    items_ = 0;
  }

  OutWriter* out_;
  std::string block_, prev_;
  uint32_t items_ = 0;
  uint64_t total_ = 0;
  std::vector<DetsKeyBlock> dir_;
};

class Merger {
 public:
  Merger(const MergeInput& in, WritableFile* file) : in_(in), out_(file) {}
  ~Merger() {
    if (key_sorter_.joinable()) key_sorter_.join();
  }

  Status Run(MergeStats* stats) {
    if (in_.old_file != nullptr && in_.old_file->legacy()) {
      if (!in_.layers.empty()) {
        return Status::InvalidArgument("a version-1 file is upgraded before it is merged");
      }
      KEYFS_RETURN_IF_ERROR(CountLegacyDirs());
    }
    old_fixed_ = in_.old_file != nullptr ? in_.old_file->entry_fixed() : kDetsEntryFixed;
    KEYFS_RETURN_IF_ERROR(CollectChanges());
    uint8_t prefix[kDetsPrefixSize] = {};
    std::memcpy(prefix, kDetsMagic, 8);
    Store32(prefix + 8, kDetsVersion);
    out_.Put(prefix, sizeof(prefix));
    if (in_.old_file != nullptr) {
      reader_.emplace(in_.old_file->fd(), in_.old_file->path());
      const DetsFile& f = *in_.old_file;
      entries_ = f.entry_count();
      types_[0] = f.files();
      types_[1] = f.dirs();
      types_[2] = f.symlinks();
      value_bytes_ = f.value_bytes();
    }
    size_t c = 0;
    for (uint32_t t = 0; t < kDetsBuckets; ++t) {
      size_t end = c;
      while (end < by_hash_.size() && (by_hash_[end].k >> 56) == t) ++end;
      KEYFS_RETURN_IF_ERROR(MergeBucket(t, c, end));
      c = end;
    }
    KEYFS_RETURN_IF_ERROR(MergeKeyIndex());
    KEYFS_RETURN_IF_ERROR(WriteHeader());
    KEYFS_RETURN_IF_ERROR(out_.Finish());
    if (stats != nullptr) {
      stats->entries = entries_;
      stats->file_size = out_.pos();
      stats->copied = copied_;
      stats->written = written_;
      stats->dropped = dropped_;
    }
    return Status::OK();
  }

 private:
  // Every directory's child directory count, for a version-1 old file that stores none:
  // each key's type through the hash tables, in key index order.
  Status CountLegacyDirs() {
    const DetsFile& f = *in_.old_file;
    DetsFile::KeyCursor c(&f);
    KEYFS_RETURN_IF_ERROR(c.SeekToFirst());
    while (c.Valid()) {
      DetsEntry e;
      Status s = f.Find(c.key(), HashKey(c.key()), &e);
      if (s.IsNotFound()) {
        return Corrupt("key index lists a missing key '" + std::string(c.key()) + "'",
                       f.key_blocks().empty() ? 0 : f.key_blocks()[0].offset);
      }
      KEYFS_RETURN_IF_ERROR(s);
      if (e.meta.type == EntryType::kDir) ++legacy_subdirs_[std::string(ParentKey(c.key()))];
      KEYFS_RETURN_IF_ERROR(c.Next());
    }
    return Status::OK();
  }

  // Writes the version-1 entry at `off` (size `size`, checked by PeekOld) as a version-2 one.
  Status ConvertOldEntry(uint64_t off, uint64_t size) {
    const uint8_t* e;
    KEYFS_RETURN_IF_ERROR(reader_->Get(off, old_fixed_, &e));
    const uint64_t klen = Load16(e + kEKeyLen);
    const uint64_t rest = size - old_fixed_;  // key and value
    Meta m;
    m.type = static_cast<EntryType>(e[kEType]);
    m.mode = Load16(e + kEMode);
    m.uid = Load32(e + kEUid);
    m.gid = Load32(e + kEGid);
    m.mtime_ns = static_cast<int64_t>(Load64(e + kEMtime));
    m.ctime_ns = static_cast<int64_t>(Load64(e + kECtime));
    m.atime_ns = m.mtime_ns;
    if (m.mode > 07777) return Corrupt("bad entry mode", off);
    if (m.type == EntryType::kDir) {
      auto it = legacy_subdirs_.find(old_key_);
      m.subdirs = it == legacy_subdirs_.end() ? 0 : it->second;
    }
    const uint64_t version = Load64(e + kEVersion);
    uint8_t head[kDetsEntryFixed];
    FillEntryHeader(head, old_hash_, kDetsEntryFixed + rest, m, version,
                    static_cast<uint16_t>(klen));
    pairs_.push_back({old_hash_, out_.pos()});
    out_.Put(head, sizeof(head));
    KEYFS_RETURN_IF_ERROR(reader_->Stream(off + old_fixed_, rest,
                                          [&](const uint8_t* p, size_t n) { out_.Put(p, n); }));
    ++copied_;  // the same entry re-encoded: the totals do not change
    return out_.status();
  }

  // The newest record of every buffered key, sorted by (hash, key) here and by key on a
  // helper thread meanwhile (the merge has the file's two orders to produce).
  Status CollectChanges() {
    size_t total = 0;
    for (const WriteBuffer* l : in_.layers) total += l->nodes();
    by_hash_.reserve(total);
    by_key_.reserve(total);
    // Newest layer first; a key already taken from a newer layer is skipped.
    for (size_t i = in_.layers.size(); i-- > 0;) {
      in_.layers[i]->ForEachNode([&](const Node* n) {
        for (size_t j = i + 1; j < in_.layers.size(); ++j) {
          const Node* newer = in_.layers[j]->Find(n->key(), n->hash);
          if (newer != nullptr && newer->record != nullptr) return;
        }
        const bool live = !n->record->tombstone;
        by_hash_.push_back(Item{n->hash, n, live ? n->record : nullptr});
        by_key_.push_back(KeyItem{KeyPrefix(n->key()), reinterpret_cast<uintptr_t>(n) | !live});
      });
    }
    key_sorter_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "dets-keysort");
      RadixSort(by_key_);
      SortTies(by_key_, [](const KeyItem& it) { return it.get(); });
    });
    RadixSort(by_hash_);
    SortTies(by_hash_, [](const Item& it) { return it.node; });
    return Status::OK();
  }

  void WriteRecordEntry(const Node* n, const WriteBuffer::Record& r) {
    const uint64_t klen = n->key_len, vlen = r.value_len;
    const uint64_t size = kDetsEntryOverhead + klen + vlen;
    pairs_.push_back({n->hash, out_.pos()});
    if (size <= OutWriter::kBuf / 2) {
      uint8_t* e = out_.Reserve(size);
      FillEntryHeader(e, n->hash, size, r, static_cast<uint16_t>(klen));
      std::memcpy(e + kEKey, n->key_data(), klen);
      if (vlen > 0) std::memcpy(e + kEKey + klen, r.value(), vlen);
    } else {
      uint8_t head[kDetsEntryFixed];
      FillEntryHeader(head, n->hash, size, r, static_cast<uint16_t>(klen));
      out_.Put(head, sizeof(head));
      out_.Put(n->key_data(), klen);
      out_.Put(r.value(), vlen);
    }
    Count(r.type, vlen);
    ++written_;
  }

  // The new file's totals are the old file's, plus the entries written from the buffers,
  // minus the old entries they replace or delete (copied entries change nothing).
  void Count(EntryType type, uint64_t vlen) {
    ++entries_;
    ++types_[static_cast<int>(type) - 1];
    value_bytes_ += vlen;
  }
  void Uncount(EntryType type, uint64_t vlen) {
    --entries_;
    --types_[static_cast<int>(type) - 1];
    value_bytes_ -= vlen;
  }

  Status Corrupt(const std::string& what, uint64_t off) const {
    return Status::Corruption(in_.old_file->path() + ": " + what + " at offset " +
                              std::to_string(off));
  }

  // Copies the old entry at `off` (size `size`); its chunks are verified as they are read.
  Status CopyOldEntry(uint64_t off, uint64_t size) {
    if (in_.old_file->legacy()) return ConvertOldEntry(off, size);
    pairs_.push_back({old_hash_, out_.pos()});
    if (size <= RegionReader::kMaxGet) {
      const uint8_t* e;
      KEYFS_RETURN_IF_ERROR(reader_->Get(off, size, &e));
      out_.Put(e, size);
    } else {
      KEYFS_RETURN_IF_ERROR(
          reader_->Stream(off, size, [&](const uint8_t* p, size_t n) { out_.Put(p, n); }));
    }
    ++copied_;
    return out_.status();
  }

  // Reads the header and key of the old entry at `off` into old_*; checks bounds and order.
  Status PeekOld(const DetsBucket& b, uint64_t off, uint32_t t) {
    const uint8_t* e;
    if (b.entries_end - off < old_fixed_ + 1) return Corrupt("entry overruns its bucket", off);
    KEYFS_RETURN_IF_ERROR(reader_->Get(off, old_fixed_, &e));
    const uint64_t size = Load64(e + kESize), klen = Load16(e + kEKeyLen);
    const uint64_t hash = Load64(e + kEHash);
    const uint8_t type = e[kEType];
    if (klen == 0 || klen > kMaxKeyLength || size < old_fixed_ + klen ||
        size > b.entries_end - off || type < 1 || type > 3) {
      return Corrupt("bad entry", off);
    }
    KEYFS_RETURN_IF_ERROR(reader_->Get(off, old_fixed_ + klen, &e));
    std::string_view key(reinterpret_cast<const char*>(e + old_fixed_), klen);
    if ((hash >> 56) != t || HashKey(key) != hash) return Corrupt("entry hash mismatch", off);
    if (have_prev_old_ && !HashKeyLess(old_hash_, old_key_, hash, key)) {
      return Corrupt("entries out of hash order", off);
    }
    old_hash_ = hash;
    old_key_.assign(key);
    old_size_ = size;
    old_type_ = static_cast<EntryType>(type);
    have_prev_old_ = true;
    return Status::OK();
  }

  // A bucket no buffered key falls into is copied byte for byte (slot positions are relative
  // to the bucket and buckets start 64-byte aligned, so nothing in it changes), its chunks
  // checked on the way.
  Status CopyBucket(uint32_t t, const DetsBucket& ob) {
    const uint64_t at = out_.pos();
    KEYFS_RETURN_IF_ERROR(reader_->Begin(ob.entries_off, ob.sums_off, ob.sums_off));
    KEYFS_RETURN_IF_ERROR(reader_->Stream(ob.entries_off, ob.sums_off - ob.entries_off,
                                          [&](const uint8_t* p, size_t n) { out_.Put(p, n); }));
    std::vector<uint8_t> sums(ob.end - ob.sums_off);  // the sums and the zero padding
    KEYFS_RETURN_IF_ERROR(
        ReadFully(in_.old_file->fd(), in_.old_file->path(), ob.sums_off, sums.size(), sums.data()));
    out_.Put(sums.data(), sums.size());
    DetsBucket b = ob;
    b.entries_off = at;
    b.entries_end = at + (ob.entries_end - ob.entries_off);
    b.index_off = at + (ob.index_off - ob.entries_off);
    buckets_[t] = b;
    copied_ += ob.count;
    return out_.status();
  }

  Status MergeBucket(uint32_t t, size_t c, size_t c_end) {
    const uint64_t entries_off = out_.pos();
    pairs_.clear();
    const DetsBucket* ob = in_.old_file ? &in_.old_file->bucket(t) : nullptr;
    // (A version-1 bucket is never copied: its entries are converted one by one.)
    if (c == c_end && ob != nullptr && ob->count > 0 && !in_.old_file->legacy()) {
      return CopyBucket(t, *ob);
    }
    uint64_t off = ob ? ob->entries_off : 0;
    const uint64_t old_end = ob ? ob->entries_end : 0;
    if (ob != nullptr && ob->count > 0) {
      KEYFS_RETURN_IF_ERROR(reader_->Begin(ob->entries_off, ob->sums_off, ob->sums_off));
    }
    out_.BeginChunks();
    uint64_t old_seen = 0;
    have_prev_old_ = false;
    bool have_old = false;
    while (true) {
      if (!have_old && off < old_end) {
        KEYFS_RETURN_IF_ERROR(PeekOld(*ob, off, t));
        have_old = true;
        ++old_seen;
      }
      const bool have_new = c < c_end;
      if (!have_old && !have_new) break;
      const Node* n = have_new ? by_hash_[c].node : nullptr;
      if (have_new && c + kPrefetchAhead < c_end) Prefetch(by_hash_[c + kPrefetchAhead]);
      if (have_old && (!have_new || HashKeyLess(old_hash_, old_key_, n->hash, n->key()))) {
        KEYFS_RETURN_IF_ERROR(CopyOldEntry(off, old_size_));
        off += old_size_;
        have_old = false;
      } else {
        if (have_old && n->hash == old_hash_ && n->key() == old_key_) {
          Uncount(old_type_, old_size_ - old_fixed_ - old_key_.size());
          off += old_size_;  // replaced or deleted
          have_old = false;
          ++dropped_;
        }
        if (by_hash_[c].rec != nullptr) WriteRecordEntry(n, *by_hash_[c].rec);
        ++c;
      }
      KEYFS_RETURN_IF_ERROR(out_.status());
    }
    if (ob != nullptr && (off != old_end || old_seen != ob->count)) {
      return Corrupt("bucket " + std::to_string(t) + " does not match its count", off);
    }
    DetsBucket b;
    b.entries_off = entries_off;
    b.entries_end = out_.pos();
    b.count = pairs_.size();
    if (b.count > 0) {
      b.index_off = entries_off + Align64(b.entries_end - entries_off);
      out_.Zeros(b.index_off - b.entries_end);
      b.slot_bits = DetsSlotBits(b.count);
      b.bloom_blocks = DetsBloomBlocks(b.count);
      const uint64_t slots = uint64_t{1} << b.slot_bits, mask = slots - 1;
      const uint64_t region = slots * kDetsSlotSize + b.bloom_blocks * kDetsBloomBlockBytes;
      index_.assign(region, 0);
      uint8_t* table = index_.data();
      uint8_t* bloom = table + slots * kDetsSlotSize;
      for (const auto& [h, eoff] : pairs_) {
        uint64_t s = DetsSlot(h, b.slot_bits);
        while (Load64(table + s * kDetsSlotSize + 8) != 0) s = (s + 1) & mask;
        Store64(table + s * kDetsSlotSize, h);
        Store64(table + s * kDetsSlotSize + 8, eoff - entries_off + 1);
        const BloomProbe bp = Bloom(h, b.bloom_blocks);
        uint8_t* block = bloom + bp.block * kDetsBloomBlockBytes;
        uint32_t a = bp.a;
        for (uint32_t i = 0; i < kDetsBloomK; ++i) {
          const uint32_t bit = a & 511;
          block[bit >> 3] |= static_cast<uint8_t>(1u << (bit & 7));
          a += bp.delta;
        }
      }
      out_.Put(index_.data(), region);
      const std::vector<uint64_t>& sums = out_.EndChunks();
      out_.Put(sums.data(), 8 * sums.size());
      out_.Zeros(Align64(out_.pos()) - out_.pos());  // the next bucket starts aligned
      if (index_.size() > (64 << 20)) index_ = {};   // keep the working set small
    } else {
      (void)out_.EndChunks();  // an empty bucket has no bytes and no sums
    }
    buckets_[t] = b;
    return out_.status();
  }

  // Key order: old key index merged with the buffered keys.
  Status MergeKeyIndex() {
    by_hash_ = {};
    if (key_sorter_.joinable()) key_sorter_.join();
    const HugeVector<KeyItem>& by_key = by_key_;

    key_off_ = out_.pos();
    KeyIndexWriter w(&out_);
    size_t c = 0;
    // The old index block by block, read in pieces of up to 1 MiB. A block whose key range
    // (up to the next block's first key) holds no buffered key is copied unchanged.
    const std::vector<DetsKeyBlock> none;
    const std::vector<DetsKeyBlock>& blocks = in_.old_file ? in_.old_file->key_blocks() : none;
    std::vector<uint8_t> piece;
    uint64_t piece_off = 0;
    auto load = [&](size_t j, const uint8_t** p) -> Status {
      const DetsKeyBlock& kb = blocks[j];
      if (kb.offset < piece_off || kb.offset + kb.length > piece_off + piece.size()) {
        size_t last = j;
        while (last + 1 < blocks.size() &&
               blocks[last + 1].offset + blocks[last + 1].length - kb.offset <= (1 << 20)) {
          ++last;
        }
        piece.resize(blocks[last].offset + blocks[last].length - kb.offset);
        piece_off = kb.offset;
        KEYFS_RETURN_IF_ERROR(ReadFully(in_.old_file->fd(), in_.old_file->path(), piece_off,
                                        piece.size(), piece.data()));
      }
      *p = piece.data() + (kb.offset - piece_off);
      if (Hash(*p, kb.length) != kb.checksum) {
        return Corrupt("key index block checksum mismatch", kb.offset);
      }
      return Status::OK();
    };
    auto add_buffered_before = [&](std::string_view bound, bool bounded) {
      while (c < by_key.size() && (!bounded || by_key[c].get()->key() < bound)) {
        if (c + kPrefetchAhead < by_key.size())
          __builtin_prefetch(by_key[c + kPrefetchAhead].get());
        if (by_key[c].live()) w.Add(by_key[c].get()->key());
        ++c;
      }
    };
    std::string old_key, prev_old, hi;
    uint64_t old_n = 0;
    for (size_t bi = 0; bi < blocks.size(); ++bi) {
      const bool bounded = bi + 1 < blocks.size();
      const uint8_t* p;
      if (bounded) {
        KEYFS_RETURN_IF_ERROR(load(bi + 1, &p));
        const uint8_t* end = p + blocks[bi + 1].length;
        uint64_t shared, len;
        size_t n1 = GetVarint(p, end, &shared);
        size_t n2 = n1 ? GetVarint(p + n1, end, &len) : 0;
        if (n2 == 0 || shared != 0 || len == 0 || len > kMaxKeyLength ||
            len > static_cast<uint64_t>(end - p) - n1 - n2) {
          return Corrupt("bad first key in a key index block", blocks[bi + 1].offset);
        }
        hi.assign(reinterpret_cast<const char*>(p + n1 + n2), len);
      }
      KEYFS_RETURN_IF_ERROR(load(bi, &p));
      const DetsKeyBlock& kb = blocks[bi];
      if (c == by_key.size() || (bounded && !(by_key[c].get()->key() < std::string_view(hi)))) {
        w.CopyBlock(p, kb);
        KEYFS_RETURN_IF_ERROR(out_.status());
        continue;
      }
      const uint8_t* end = p + kb.length;
      old_key.clear();
      for (uint32_t item = 0; item < kb.items; ++item) {
        uint64_t shared, len;
        size_t n1 = GetVarint(p, end, &shared);
        size_t n2 = n1 ? GetVarint(p + n1, end, &len) : 0;
        if (n2 == 0 || shared > old_key.size() || (item == 0 && shared != 0) || shared + len == 0 ||
            shared + len > kMaxKeyLength || len > static_cast<uint64_t>(end - p) - n1 - n2) {
          return Corrupt("bad key index item", kb.offset);
        }
        old_key.resize(shared);
        old_key.append(reinterpret_cast<const char*>(p + n1 + n2), len);
        p += n1 + n2 + len;
        if (old_n > 0 && !(prev_old < old_key)) return Corrupt("key index out of order", kb.offset);
        prev_old = old_key;
        ++old_n;
        // Buffered keys before the old one, then the old one unless replaced.
        add_buffered_before(old_key, true);
        if (c < by_key.size() && by_key[c].get()->key() == std::string_view(old_key)) {
          if (by_key[c].live()) w.Add(old_key);
          ++c;
        } else {
          w.Add(old_key);
        }
      }
      if (p != end) return Corrupt("key index block has trailing bytes", kb.offset);
      add_buffered_before(hi, bounded);  // the rest of this block's range
      KEYFS_RETURN_IF_ERROR(out_.status());
    }
    add_buffered_before({}, false);
    w.Finish();
    if (w.total() != entries_) {
      return Status::Corruption((in_.old_file ? in_.old_file->path() : std::string("merge")) +
                                ": key index and entries disagree (" + std::to_string(w.total()) +
                                " keys, " + std::to_string(entries_) + " entries)");
    }
    key_dir_off_ = out_.pos();
    key_blocks_ = w.blocks();
    std::string dir;
    dir.resize(key_blocks_.size() * kDetsKeyDirEntrySize);
    for (size_t i = 0; i < key_blocks_.size(); ++i) {
      uint8_t* e = reinterpret_cast<uint8_t*>(dir.data()) + i * kDetsKeyDirEntrySize;
      Store64(e, key_blocks_[i].offset);
      Store32(e + 8, key_blocks_[i].length);
      Store32(e + 12, key_blocks_[i].items);
      Store64(e + 16, key_blocks_[i].checksum);
    }
    key_dir_sum_ = Hash(dir.data(), dir.size());
    out_.Put(dir.data(), dir.size());
    return out_.status();
  }

  Status WriteHeader() {
    std::string hs(kDetsHeaderSize, '\0');
    uint8_t* h = reinterpret_cast<uint8_t*>(hs.data());
    const uint64_t header_off = out_.pos();
    std::memcpy(h + kDHMagic, kDetsMagic, 8);
    Store32(h + kDHVersion, kDetsVersion);
    Store32(h + kDHHeaderSize, kDetsHeaderSize);
    Store64(h + kDHFileSize, header_off + kDetsHeaderSize + kDetsFooterSize);
    Store64(h + kDHGeneration, in_.generation);
    Store64(h + kDHSyncTime, static_cast<uint64_t>(in_.sync_time_ns));
    Store64(h + kDHEntryCount, entries_);
    Store64(h + kDHFiles, types_[0]);
    Store64(h + kDHDirs, types_[1]);
    Store64(h + kDHSymlinks, types_[2]);
    Store64(h + kDHValueBytes, value_bytes_);
    Store64(h + kDHLastVersion, in_.last_version);
    Store64(h + kDHKeyIndexOff, key_off_);
    Store64(h + kDHKeyDirOff, key_dir_off_);
    Store64(h + kDHKeyBlocks, key_blocks_.size());
    Store64(h + kDHKeyDirChecksum, key_dir_sum_);
    Store32(h + kDHBloomK, kDetsBloomK);
    for (uint32_t t = 0; t < kDetsBuckets; ++t) {
      uint8_t* d = h + kDHBuckets + t * kDetsBucketDescSize;
      const DetsBucket& b = buckets_[t];
      Store64(d + kBEntriesOff, b.entries_off);
      Store64(d + kBEntriesEnd, b.entries_end);
      Store64(d + kBCount, b.count);
      Store64(d + kBIndexOff, b.index_off);
      Store32(d + kBSlotBits, b.slot_bits);
      Store64(d + kBBloomBlocks, b.bloom_blocks);
    }
    const Meta& r = in_.root;
    Store32(h + kDHRootMode, r.mode & 07777);
    Store32(h + kDHRootUid, r.uid);
    Store32(h + kDHRootGid, r.gid);
    Store32(h + kDHRootSubdirs, r.subdirs);
    Store64(h + kDHRootMtime, static_cast<uint64_t>(r.mtime_ns));
    Store64(h + kDHRootCtime, static_cast<uint64_t>(r.ctime_ns));
    Store64(h + kDHRootAtime, static_cast<uint64_t>(r.atime_ns));
    Store64(h + kDHRootVersion, in_.root_version);
    Store64(h + kDHChecksum, Hash(h, kDHChecksum));
    out_.Put(h, kDetsHeaderSize);
    uint8_t footer[8];
    Store64(footer, header_off);
    out_.Put(footer, 8);
    return out_.status();
  }

  const MergeInput& in_;
  OutWriter out_;
  std::optional<RegionReader> reader_;
  HugeVector<Item> by_hash_;
  HugeVector<KeyItem> by_key_;
  std::thread key_sorter_;                            // sorts by_key_ while the buckets are written
  std::vector<std::pair<uint64_t, uint64_t>> pairs_;  // (hash, new offset) of one bucket
  std::vector<uint8_t> index_;                        // one bucket's table + bloom
  std::vector<uint64_t> sums_;
  DetsBucket buckets_[kDetsBuckets];
  // The old entry being looked at.
  uint64_t old_hash_ = 0, old_size_ = 0;
  std::string old_key_;
  EntryType old_type_ = EntryType::kFile;
  bool have_prev_old_ = false;
  uint32_t old_fixed_ = kDetsEntryFixed;  // the old file's entry bytes before the key
  // A version-1 old file: child directory counts by directory key.
  std::unordered_map<std::string, uint32_t> legacy_subdirs_;
  // Totals of the new file.
  uint64_t entries_ = 0, types_[3] = {0, 0, 0}, value_bytes_ = 0;
  uint64_t copied_ = 0, written_ = 0, dropped_ = 0;
  uint64_t key_off_ = 0, key_dir_off_ = 0, key_dir_sum_ = 0;
  std::vector<DetsKeyBlock> key_blocks_;
};

}  // namespace

Status WriteMergedFile(const MergeInput& in, WritableFile* file, MergeStats* stats) {
  Merger m(in, file);
  return m.Run(stats);
}

Status WriteEmptyFile(WritableFile* file, int64_t time_ns) {
  MergeInput in;
  in.generation = 1;
  in.sync_time_ns = time_ns;
  in.root = Meta::Dir(0755);
  in.root.uid = ::geteuid();
  in.root.gid = ::getegid();
  in.root.mtime_ns = in.root.ctime_ns = in.root.atime_ns = time_ns;
  return WriteMergedFile(in, file, nullptr);
}

}  // namespace keyfs
