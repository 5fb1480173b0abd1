// The dets engine under faults: ENOSPC and EIO during a sync (through an Env wrapper), a
// failed directory fsync, back-pressure when syncs keep failing; and corruption of every
// structure of a dets file (flipped bytes, truncation, appended bytes) detected by
// VerifyStore and never served.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "format.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"
#include "testutil.h"

namespace keyfs {
namespace {

using Code = Status::Code;

// Fails what the test arms; otherwise passes everything to the default Env.
// Thread-safety: the arming flags are atomics, read on the engine's syncer thread.
class FaultEnv final : public Env {
 public:
  std::atomic<int64_t> space_left{-1};  // >= 0: appends fail with ENOSPC beyond this many bytes
  std::atomic<bool> fail_sync{false};   // fdatasync of a written file fails with EIO
  std::atomic<bool> fail_rename{false};
  std::atomic<int> fail_sync_dir{0};  // this many directory fsyncs fail with EIO
  std::atomic<int> files_created{0};

  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path) override {
    auto f = Env::Default()->NewExclusiveFile(path);
    if (!f.ok()) return f.status();
    ++files_created;
    return std::unique_ptr<WritableFile>(new File(this, std::move(*f)));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (fail_rename) return Status::FromErrno(EIO, "rename (injected)");
    return Env::Default()->Rename(from, to);
  }
  Status RenameNoReplace(const std::string& from, const std::string& to) override {
    if (fail_rename) return Status::FromErrno(EIO, "rename (injected)");
    return Env::Default()->RenameNoReplace(from, to);
  }
  Status SyncDir(const std::string& dir) override {
    if (fail_sync_dir > 0) {
      --fail_sync_dir;
      return Status::FromErrno(EIO, "fsync directory (injected)");
    }
    return Env::Default()->SyncDir(dir);
  }
  Status RemoveFile(const std::string& path) override { return Env::Default()->RemoveFile(path); }

 private:
  class File final : public WritableFile {
   public:
    File(FaultEnv* env, std::unique_ptr<WritableFile> base) : env_(env), base_(std::move(base)) {}
    Status Append(std::string_view data) override {
      int64_t left = env_->space_left.load();
      if (left >= 0) {
        if (static_cast<int64_t>(data.size()) > left) {
          env_->space_left = 0;
          return Status::FromErrno(ENOSPC, "write (injected)");
        }
        env_->space_left -= static_cast<int64_t>(data.size());
      }
      return base_->Append(data);
    }
    Status WriteAt(uint64_t offset, std::string_view data) override {
      return base_->WriteAt(offset, data);
    }
    Status Sync() override {
      if (env_->fail_sync) return Status::FromErrno(EIO, "fdatasync (injected)");
      return base_->Sync();
    }
    Status Close() override { return base_->Close(); }
    int fd() const override { return base_->fd(); }

   private:
    FaultEnv* env_;
    std::unique_ptr<WritableFile> base_;
  };
};

std::vector<std::string> DirFiles(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  if (d) ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

class DetsFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    engine_.reset();
    OpenOptions o;
    o.create = true;
    o.kind = EngineKind::kDets;
    o.sync_interval_s = 0;
    o.buffer_limit_bytes = limit_;
    o.env = &env_;
    auto e = OpenStore(path_, o);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(*e);
  }
  void PutRange(int from, int to, const std::string& tag) {
    for (int i = from; i <= to;) {
      Batch b;
      for (int j = 0; j < 500 && i <= to; ++j, ++i) {
        b.Put("k" + std::to_string(i), tag + std::to_string(i));
      }
      ASSERT_OK(engine_->Commit(b));
    }
  }
  void ExpectRange(const Engine& e, int from, int to, const std::string& tag) {
    for (int i = from; i <= to; ++i) {
      auto r = e.Get("k" + std::to_string(i));
      ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
      ASSERT_EQ(r->value, tag + std::to_string(i));
    }
  }
  std::unique_ptr<Engine> ReadOnly() {
    OpenOptions o;
    o.read_only = true;
    auto e = OpenStore(path_, o);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(*e) : nullptr;
  }

  FaultEnv env_;
  test::TempDir dir_;
  std::string path_ = dir_.Join("store");
  uint64_t limit_ = 0;
  std::unique_ptr<Engine> engine_;
};

// A sync that runs out of space fails with NoSpace; everything stays visible and the old file
// stays on disk, intact; the next sync after space is back makes everything durable.
TEST_F(DetsFaultTest, NoSpaceDuringSync) {
  PutRange(1, 3000, "a");
  ASSERT_OK(engine_->Sync());
  const int64_t size_before = engine_->Stats().file_bytes;
  PutRange(2001, 6000, "b");
  env_.space_left = 100 << 10;  // 100 KiB, far less than the new file
  Status s = engine_->Sync();
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.ToString();
  ExpectRange(*engine_, 1, 2000, "a");
  ExpectRange(*engine_, 2001, 6000, "b");
  EXPECT_EQ(engine_->Stats().entries, 6000u);
  EXPECT_EQ(engine_->Stats().file_bytes, static_cast<uint64_t>(size_before));
  EXPECT_EQ(DirFiles(dir_.path()), (std::vector<std::string>{"store", "store.lock"}));
  ASSERT_OK(VerifyStore(path_));
  {
    auto ro = ReadOnly();
    ASSERT_TRUE(ro);
    ExpectRange(*ro, 1, 3000, "a");  // the last durable state
    EXPECT_EQ(ro->Get("k3001").status().code(), Code::kNotFound);
  }
  // Commits go on meanwhile; a second failure changes nothing.
  PutRange(6001, 6100, "c");
  EXPECT_EQ(engine_->Sync().code(), Code::kNoSpace);
  env_.space_left = -1;
  ASSERT_OK(engine_->Sync());
  ASSERT_NO_FATAL_FAILURE(Open());
  ExpectRange(*engine_, 1, 2000, "a");
  ExpectRange(*engine_, 2001, 6000, "b");
  ExpectRange(*engine_, 6001, 6100, "c");
  EXPECT_EQ(engine_->Stats().entries, 6100u);
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

TEST_F(DetsFaultTest, IoErrorOnFsync) {
  PutRange(1, 1000, "a");
  ASSERT_OK(engine_->Sync());
  PutRange(1, 1000, "b");
  env_.fail_sync = true;
  Status s = engine_->Sync();
  EXPECT_EQ(s.code(), Code::kIOError) << s.ToString();
  EXPECT_EQ(s.sys_errno(), EIO);
  ExpectRange(*engine_, 1, 1000, "b");
  EXPECT_EQ(DirFiles(dir_.path()), (std::vector<std::string>{"store", "store.lock"}));
  {
    auto ro = ReadOnly();
    ASSERT_TRUE(ro);
    ExpectRange(*ro, 1, 1000, "a");
  }
  env_.fail_sync = false;
  ASSERT_OK(engine_->Sync());
  auto ro = ReadOnly();
  ASSERT_TRUE(ro);
  ExpectRange(*ro, 1, 1000, "b");
}

TEST_F(DetsFaultTest, IoErrorOnRename) {
  PutRange(1, 500, "a");
  env_.fail_rename = true;
  EXPECT_EQ(engine_->Sync().code(), Code::kIOError);
  ExpectRange(*engine_, 1, 500, "a");
  EXPECT_EQ(DirFiles(dir_.path()), (std::vector<std::string>{"store", "store.lock"}));
  env_.fail_rename = false;
  ASSERT_OK(engine_->Sync());
  engine_.reset();
  ASSERT_NO_FATAL_FAILURE(Open());
  ExpectRange(*engine_, 1, 500, "a");
}

// The rename happened but the directory fsync failed: the new file is served, Sync reports
// the error, and the next Sync makes it durable by fsyncing the directory again.
TEST_F(DetsFaultTest, FailedDirectoryFsyncIsRetried) {
  PutRange(1, 500, "a");
  env_.fail_sync_dir = 2;  // the sync tries twice
  EXPECT_EQ(engine_->Sync().code(), Code::kIOError);
  ExpectRange(*engine_, 1, 500, "a");
  EXPECT_EQ(engine_->Stats().buffered_writes, 0u);  // published
  const int created = env_.files_created;
  ASSERT_OK(engine_->Sync());              // only the directory fsync
  EXPECT_EQ(env_.files_created, created);  // no new file was written
  ASSERT_OK(engine_->Sync());
}

// Syncs keep failing and the buffer is full: commits fail with the sync's error instead of
// waiting forever or growing memory without bound; they succeed again once syncs do.
TEST_F(DetsFaultTest, BackPressureWithFailingSyncs) {
  limit_ = 256 << 10;
  ASSERT_NO_FATAL_FAILURE(Open());
  env_.space_left = 0;
  Status s;
  int accepted = 0;
  for (int i = 0; i < 20000 && s.ok(); ++i) {
    s = engine_->Commit(Batch().Put("k" + std::to_string(i), std::string(100, 'x')));
    if (s.ok()) ++accepted;
  }
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.ToString();
  EXPECT_GT(accepted, 100);
  EXPECT_LT(engine_->Stats().buffered_writes, 20000u);
  for (int i = 0; i < accepted; i += 37) {
    auto r = engine_->Get("k" + std::to_string(i));
    ASSERT_TRUE(r.ok()) << i;
  }
  env_.space_left = -1;
  ASSERT_OK(engine_->Commit(Batch().Put("after", "ok")));
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(engine_->Stats().entries, static_cast<uint64_t>(accepted) + 1);
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

// ---- corruption ----

uint64_t Load64(const std::string& b, uint64_t off) {
  uint64_t v;
  std::memcpy(&v, b.data() + off, 8);
  return v;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// The layout of a dets file, parsed from FORMAT.md §3 on its own (not through store/).
struct Layout {
  uint64_t header_off, key_index_off, key_dir_off, blocks;
  struct Bucket {
    uint64_t entries_off, entries_end, count, index_off, slot_bits, bloom_blocks;
    uint64_t bloom_off() const { return index_off + (uint64_t{16} << slot_bits); }
    uint64_t sums_off() const { return bloom_off() + 64 * bloom_blocks; }
  };
  std::vector<Bucket> buckets;
};

Layout Parse(const std::string& f) {
  Layout l;
  l.header_off = Load64(f, f.size() - 8);
  l.key_index_off = Load64(f, l.header_off + 88);
  l.key_dir_off = Load64(f, l.header_off + 96);
  l.blocks = Load64(f, l.header_off + 104);
  for (int t = 0; t < 256; ++t) {
    const uint64_t d = l.header_off + 128 + 48 * t;
    Layout::Bucket b{Load64(f, d),
                     Load64(f, d + 8),
                     Load64(f, d + 16),
                     Load64(f, d + 24),
                     Load64(f, d + 32) & 0xffffffff,
                     Load64(f, d + 40)};
    l.buckets.push_back(b);
  }
  return l;
}

class DetsCorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OpenOptions o;
    o.create = true;
    o.kind = EngineKind::kDets;
    o.sync_interval_s = 0;
    auto e = OpenStore(path_, o);
    ASSERT_TRUE(e.ok());
    ASSERT_OK((*e)->Commit(Batch().Mkdir("dir")));
    for (int i = 0; i < 3000;) {
      Batch b;
      for (int j = 0; j < 500; ++j, ++i) {
        b.Put("dir/key-" + std::to_string(i),
              "value-" + std::to_string(i) + std::string(i % 50, 'v'));
      }
      ASSERT_OK((*e)->Commit(b));
    }
    ASSERT_OK((*e)->Commit(Batch().Symlink("link", "dir/key-1")));
    e->reset();
    ASSERT_OK(VerifyStore(path_));
    good_ = ReadAll(path_);
    layout_ = Parse(good_);
    ASSERT_GE(layout_.blocks, 2u);
  }

  // Writes `bad` as a store and expects VerifyStore to report Corruption, and an engine
  // either to refuse to open it or to refuse reads it cannot vouch for.
  void ExpectDetected(const std::string& bad, const std::string& what) {
    const std::string p = dir_.Join("bad-" + std::to_string(++n_));
    WriteAll(p, bad);
    Status v = VerifyStore(p);
    EXPECT_EQ(v.code(), Code::kCorruption) << what << ": " << v.ToString();
    OpenOptions o;
    o.read_only = true;
    auto e = OpenStore(p, o);
    if (e.ok()) {
      // Whatever it serves must be what was stored.
      for (int i = 0; i < 3000; i += 7) {
        const std::string k = "dir/key-" + std::to_string(i);
        auto r = (*e)->Get(k);
        if (r.ok()) {
          EXPECT_EQ(r->value, "value-" + std::to_string(i) + std::string(i % 50, 'v'))
              << what << ": served a damaged value of " << k;
        } else {
          EXPECT_NE(r.status().code(), Code::kOk);
        }
      }
    }
    ::unlink(p.c_str());
  }
  void Flip(uint64_t off, const std::string& what) {
    std::string bad = good_;
    bad[off] = static_cast<char>(bad[off] ^ 0x40);
    ExpectDetected(bad, what + " (offset " + std::to_string(off) + ")");
  }

  test::TempDir dir_;
  std::string path_ = dir_.Join("store");
  std::string good_;
  Layout layout_;
  int n_ = 0;
};

TEST_F(DetsCorruptionTest, EveryStructure) {
  const Layout& l = layout_;
  Flip(0, "magic");
  Flip(8, "prefix version");
  Flip(40, "prefix padding");
  const Layout::Bucket* b = nullptr;
  for (const auto& x : l.buckets) {
    if (x.count > 2) {
      b = &x;
      break;
    }
  }
  ASSERT_NE(b, nullptr);
  Flip(b->entries_off, "entry hash");
  Flip(b->entries_off + 8, "entry size");
  Flip(b->entries_off + 16, "entry version");
  Flip(b->entries_off + 24, "entry mtime");
  Flip(b->entries_off + 32, "entry ctime");
  Flip(b->entries_off + 40, "entry uid");
  Flip(b->entries_off + 44, "entry gid");
  Flip(b->entries_off + 48, "entry mode");
  Flip(b->entries_off + 50, "entry type");
  Flip(b->entries_off + 51, "entry zero byte");
  Flip(b->entries_off + 52, "entry key length");
  Flip(b->entries_off + 54, "entry zero bytes");
  Flip(b->entries_off + 56, "entry atime");
  Flip(b->entries_off + 64, "entry subdirs");
  Flip(b->entries_off + 68, "entry key");
  Flip(b->entries_off + Load64(good_, b->entries_off + 8) - 1, "entry value");
  if (b->index_off > b->entries_end) Flip(b->entries_end, "padding before the table");
  for (uint64_t s = 0; s < (uint64_t{1} << b->slot_bits); ++s) {
    const uint64_t so = b->index_off + 16 * s;
    if (Load64(good_, so + 8) != 0) {
      Flip(so, "slot hash");
      Flip(so + 8, "slot position");
      break;
    }
  }
  Flip(b->index_off + 16 * ((uint64_t{1} << b->slot_bits) - 1) + 3, "last slot");
  Flip(b->bloom_off(), "bloom filter");
  Flip(b->sums_off(), "chunk checksum");
  Flip(l.key_index_off, "key index block");
  Flip(l.key_index_off + 20, "key index block bytes");
  Flip(l.key_dir_off, "key directory offset");
  Flip(l.key_dir_off + 16, "key directory checksum");
  // Every header field, the bucket descriptors' first, the root's metadata (12416..12463)
  // and the checksum (12464).
  for (uint64_t h : {0,   8,     12,    16,    24,    32,    40,    48,    56,    64,    72,   80,
                     88,  96,    104,   112,   120,   124,   128,   136,   144,   152,   160,  164,
                     168, 12416, 12420, 12424, 12428, 12432, 12440, 12448, 12456, 12464, 12471}) {
    Flip(l.header_off + h, "header field " + std::to_string(h));
  }
  Flip(good_.size() - 8, "footer");
  Flip(good_.size() - 1, "footer high byte");
}

// Lies about child directory counts that the writer of the file meant (checksums
// recomputed): consistent with themselves, so only the full check sees them.
TEST_F(DetsCorruptionTest, ResealedSubdirCountsAreCaughtByVerify) {
  const Layout& l = layout_;
  const uint64_t h = format::HashKey("dir");
  const Layout::Bucket& b = l.buckets[h >> 56];
  uint64_t off = b.entries_off;  // the entry of "dir"
  while (off < b.entries_end && Load64(good_, off) != h) off += Load64(good_, off + 8);
  ASSERT_LT(off, b.entries_end);
  auto reseal_bucket = [&](std::string* f) {
    auto* p = reinterpret_cast<uint8_t*>(f->data());
    const uint64_t sums_off = b.sums_off();
    for (uint64_t c = 0; b.entries_off + c * 4096 < sums_off; ++c) {
      const uint64_t from = b.entries_off + c * 4096;
      format::Store64(p + sums_off + 8 * c,
                      format::Hash(p + from, std::min<uint64_t>(4096, sums_off - from)));
    }
  };
  auto reseal_header = [&](std::string* f) {
    auto* p = reinterpret_cast<uint8_t*>(f->data()) + l.header_off;
    format::Store64(p + format::kDHChecksum, format::Hash(p, format::kDHChecksum));
  };
  {
    std::string bad = good_;
    format::Store32(reinterpret_cast<uint8_t*>(bad.data()) + off + format::kESubdirs, 1);
    reseal_bucket(&bad);
    ExpectDetected(bad, "directory 'dir' says it has a subdirectory");
  }
  {
    std::string bad = good_;
    auto* p = reinterpret_cast<uint8_t*>(bad.data()) + l.header_off;
    ASSERT_EQ(format::Load32(p + format::kDHRootSubdirs), 1u);  // "dir"
    format::Store32(p + format::kDHRootSubdirs, 2);
    reseal_header(&bad);
    ExpectDetected(bad, "the root says it has two subdirectories");
  }
  {
    std::string bad = good_;
    auto* p = reinterpret_cast<uint8_t*>(bad.data()) + l.header_off;
    format::Store32(p + format::kDHRootMode, 010755);
    reseal_header(&bad);
    ExpectDetected(bad, "root mode with file type bits");
  }
}

TEST_F(DetsCorruptionTest, TruncatedOrExtended) {
  for (uint64_t cut : {uint64_t{0}, uint64_t{10}, uint64_t{64}, good_.size() / 3,
                       layout_.key_index_off, layout_.header_off, good_.size() - 1}) {
    ExpectDetected(good_.substr(0, cut), "truncated to " + std::to_string(cut));
  }
  ExpectDetected(good_ + std::string(1, '\0'), "one byte appended");
  // The header (12472 bytes) and the footer.
  ExpectDetected(good_ + good_.substr(good_.size() - 12480), "header appended again");
}

// Any single flipped byte anywhere in the file is detected.
TEST_F(DetsCorruptionTest, RandomFlips) {
  std::mt19937_64 rng(GTEST_FLAG_GET(random_seed) + 4);
  for (int i = 0; i < 250; ++i) {
    const uint64_t off = rng() % good_.size();
    std::string bad = good_;
    bad[off] = static_cast<char>(bad[off] ^ (1 << (rng() % 8)));
    const std::string p = dir_.Join("flip");
    WriteAll(p, bad);
    Status v = VerifyStore(p);
    ASSERT_EQ(v.code(), Code::kCorruption) << "flip at offset " << off << ": " << v.ToString();
  }
}

}  // namespace
}  // namespace keyfs
