// Offsets and sizes past 4 GiB: a dets store of about 4.3 GiB (68 values of 64 MiB and some
// small keys), synced, changed and synced again (the merge copies entries that lie beyond
// 4 GiB), reopened and verified. Needs about 9 GiB free where the test directory lives (old
// and new file exist together during the second sync); skips, loudly, if there is less.
#include <gtest/gtest.h>
#include <sys/statvfs.h>

#include <cstring>
#include <string>

#include "keyfs/store/engine.h"
#include "testutil.h"

namespace keyfs {
namespace {

constexpr int kBig = 68;
constexpr size_t kBigSize = size_t{64} << 20;

uint64_t Mix(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Value i of generation g: 64 MiB of words derived from (i, g, position).
std::string BigValue(int i, int g) {
  std::string v(kBigSize, '\0');
  const uint64_t seed = Mix(static_cast<uint64_t>(i) * 1000 + static_cast<uint64_t>(g));
  for (size_t w = 0; w < kBigSize / 8; ++w) {
    const uint64_t x = seed + w * 0x9E3779B97F4A7C15ULL;
    std::memcpy(v.data() + 8 * w, &x, 8);
  }
  return v;
}

// Checks a looked-up value against BigValue(i, g) without building it.
bool IsBigValue(std::string_view v, int i, int g) {
  if (v.size() != kBigSize) return false;
  const uint64_t seed = Mix(static_cast<uint64_t>(i) * 1000 + static_cast<uint64_t>(g));
  for (size_t w = 0; w < kBigSize / 8; ++w) {
    uint64_t x;
    std::memcpy(&x, v.data() + 8 * w, 8);
    if (x != seed + w * 0x9E3779B97F4A7C15ULL) return false;
  }
  return true;
}

std::string BigKey(int i) { return "big/v" + std::to_string(i); }

TEST(DetsLarge, OffsetsPastFourGiB) {
  test::TempDir dir;
  struct statvfs fs;
  ASSERT_EQ(::statvfs(dir.path().c_str(), &fs), 0);
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (free_bytes < (uint64_t{10} << 30)) {
    GTEST_SKIP() << "SKIPPED LOUDLY: the >4 GiB dets test needs 10 GiB free in " << dir.path()
                 << ", only " << (free_bytes >> 20) << " MiB are";
  }
  const std::string path = dir.Join("store");
  OpenOptions o;
  o.create = true;
  o.kind = EngineKind::kDets;
  o.sync_interval_s = 0;
  o.buffer_limit_bytes = uint64_t{8} << 30;
  auto e = OpenStore(path, o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_OK((*e)->Commit(Batch().Mkdir("big").Mkdir("small")));
  for (int i = 0; i < kBig; ++i) {
    ASSERT_OK((*e)->Commit(Batch().Put(BigKey(i), BigValue(i, 0))));
    ASSERT_OK((*e)->Commit(Batch().Put("small/s" + std::to_string(i), std::to_string(i))));
  }
  ASSERT_OK((*e)->Sync());
  EngineStats st = (*e)->Stats();
  ASSERT_GT(st.file_bytes, uint64_t{4} << 30);
  EXPECT_EQ(st.value_bytes > (uint64_t{4} << 30), true);
  for (int i = 0; i < kBig; ++i) {
    auto r = (*e)->Get(BigKey(i));
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    ASSERT_TRUE(IsBigValue(r->value, i, 0)) << "value " << i;
  }
  // Second sync: a few changes; every other bucket, and the entries past 4 GiB with them,
  // are copied from the old file into the new one.
  ASSERT_OK((*e)->Commit(Batch().Put(BigKey(3), BigValue(3, 1)).Delete(BigKey(5))));
  ASSERT_OK((*e)->Commit(Batch().Put("small/after", "x")));
  ASSERT_OK((*e)->Sync());
  e->reset();
  std::vector<std::string> report;
  Status v = VerifyStore(path, &report);
  ASSERT_TRUE(v.ok()) << v.ToString();
  o.create = false;
  e = OpenStore(path, o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  for (int i = 0; i < kBig; ++i) {
    auto r = (*e)->Get(BigKey(i));
    if (i == 5) {
      EXPECT_TRUE(r.status().IsNotFound());
      continue;
    }
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    ASSERT_TRUE(IsBigValue(r->value, i, i == 3 ? 1 : 0)) << "value " << i;
    auto s = (*e)->Get("small/s" + std::to_string(i));
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->value, std::to_string(i));
  }
  EXPECT_EQ((*e)->Stats().entries, 2u + 2 * kBig - 1 + 1);
  EXPECT_GT((*e)->Stats().file_bytes, uint64_t{4} << 30);
}

}  // namespace
}  // namespace keyfs
