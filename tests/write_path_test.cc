// The write path (fs/write_path.h) without a mount, on a real dets engine: one write handle
// used by several request threads at once, as libfuse's loop thread and the workers use it
// (WRITE, FLUSH/fsync, SETATTR). Meant for ThreadSanitizer (tools/tsan.sh) as much as for
// its assertions.
#include "write_path.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <latch>
#include <string>
#include <thread>

#include "keyfs/store/engine.h"
#include "testutil.h"

namespace keyfs::fs {
namespace {

class WritePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OpenOptions o;
    o.create = true;
    o.kind = EngineKind::kDets;
    o.sync_interval_s = 0;  // commits stay in the write buffer: no disk in the loop
    auto e = OpenStore(dir_.Join("store"), o);
    ASSERT_OK(e.status());
    engine_ = std::move(*e);
    path_ = std::make_unique<WritePath>(engine_.get(), &table_, &counters_, DefaultWriteBudget());
  }

  test::TempDir dir_;
  std::unique_ptr<Engine> engine_;
  InodeTable table_;
  FsCounters counters_;
  std::unique_ptr<WritePath> path_;
};

// A writer without root's privilege writes while another thread commits the handle (FLUSH,
// fsync) and a third changes its metadata (fchmod, futimens: SETATTR with the handle). Each
// commit copies what it needs under the handle's lock; afterwards the store holds exactly
// the handle's bytes, and setuid/setgid are gone.
TEST_F(WritePathTest, WritesCommitsAndSetattrsOnOneHandle) {
  const std::string key = "f";
  Meta meta = Meta::File(06775);
  meta.uid = 1000;
  meta.gid = 1000;
  ASSERT_OK(engine_->Commit(Batch().Put(key, "", meta)));
  auto rec = engine_->Get(key);
  ASSERT_OK(rec.status());
  WriteHandle h(table_.AcquireFresh(key, *rec), path_->budget());
  {
    MutexLock l(&h.mu);
    h.create_meta = rec->meta;
  }
  Caller writer;
  writer.uid = 1000;
  writer.gid = 1000;
  writer.groups = {1000};

  // The writer writes kWrites bytes one at a time and lets a commit in every tenth write;
  // the others work until it is done.
  constexpr int kWrites = 1000;
  std::latch start(3);
  std::atomic<bool> done{false};
  std::atomic<int> commits{0};
  std::atomic<int> write_errors{0}, commit_errors{0};
  std::thread write([&] {
    start.arrive_and_wait();
    for (int i = 0; i < kWrites; ++i) {
      const int seen = commits;
      if (path_->MustDropPrivs(&h, writer) && path_->DropPrivs(&h, writer) != 0) ++write_errors;
      const std::string data = std::to_string(i % 10);
      if (path_->Write(&h, writer, data.data(), data.size(), i, /*lock_owner=*/7) != 0) {
        ++write_errors;
      }
      // Every tenth write waits for a commit that began after `seen`: one comes, as this
      // write left the handle dirty.
      while (i % 10 == 9 && commits == seen && commit_errors == 0) std::this_thread::yield();
    }
    done = true;
  });
  std::thread flush([&] {
    start.arrive_and_wait();
    while (!done) {
      bool committed;
      if (path_->Commit(&h, &committed) != 0) ++commit_errors;
      commits += committed;
    }
  });
  std::thread setattr([&] {
    start.arrive_and_wait();
    for (int i = 0; !done; ++i) {
      {
        // What DoSetAttr does with the caller's handle after committing new metadata
        // (here a futimens by the owner).
        Meta m = rec->meta;
        m.atime_ns = m.mtime_ns = i;
        MutexLock l(&h.mu);
        h.create_meta = m;
        h.explicit_mtime = m.mtime_ns;
      }
      std::this_thread::yield();
    }
  });
  write.join();
  flush.join();
  setattr.join();
  EXPECT_EQ(write_errors, 0);
  EXPECT_EQ(commit_errors, 0);
  EXPECT_GE(commits, kWrites / 10);

  bool committed;
  ASSERT_EQ(path_->Commit(&h, &committed), 0);
  std::string expected;
  {
    MutexLock l(&h.mu);
    expected = h.buf;
  }
  ASSERT_EQ(expected.size(), static_cast<size_t>(kWrites));
  auto now = engine_->Get(key);
  ASSERT_OK(now.status());
  EXPECT_EQ(now->value, expected);
  EXPECT_EQ(now->meta.mode & (S_ISUID | S_ISGID), 0u) << std::oct << now->meta.mode;
}

}  // namespace
}  // namespace keyfs::fs
