// The same randomised operation sequences run against an engine and a std::map model
// that implements the tree semantics independently; every status and every state must
// agree, across thousands of batches and many reopenings. (leveldb's table_test Harness.)
#include "engine_model.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "keyfs/store/engine.h"
#include "testutil.h"

namespace keyfs {
namespace {

using Code = Status::Code;
using model::Dump;
using model::Model;
using model::Tree;

class ModelTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  void Open() {
    if (engine_) merges_ += engine_->Stats().merges;
    engine_.reset();
    OpenOptions o;
    o.create = true;
    o.kind = GetParam();
    o.merge_threshold = merge_threshold_;
    auto e = OpenStore(path_, o);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(*e);
  }

  std::string RandomKey() {
    static const char* kNames[] = {"a", "b", "c", "dd"};
    std::discrete_distribution<int> depth({0, 4, 3, 2});
    std::uniform_int_distribution<int> name(0, 3);
    std::string k;
    for (int i = depth(rng_); i > 0; --i) {
      if (!k.empty()) k += '/';
      k += kNames[name(rng_)];
    }
    return k;
  }

  Mutation RandomMutation() {
    Mutation m;
    m.key = RandomKey();
    std::uniform_int_distribution<int> op(0, 99);
    int o = op(rng_);
    if (o < 35) {
      m.op = Mutation::Op::kPut;
      m.meta = Meta::File(0600 + (rng_() % 0100));
      std::uniform_int_distribution<size_t> len(0, rng_() % 8 == 0 ? 40000 : 200);
      m.value = test::RandomBytes(rng_, len(rng_));
      m.exclusive = rng_() % 5 == 0;
    } else if (o < 42) {
      m.op = Mutation::Op::kPut;
      m.meta = Meta::Symlink();
      m.value = "../" + RandomKey();
    } else if (o < 60) {
      m.op = Mutation::Op::kMkdir;
      m.meta = Meta::Dir(0700 + (rng_() % 0100));
    } else if (o < 75) {
      m.op = Mutation::Op::kDelete;
    } else if (o < 82) {
      m.op = Mutation::Op::kSetMeta;
      m.meta = Meta::File(rng_() % 01000);
      if (rng_() % 6 == 0) m.key = "";  // the root's own metadata
    } else {
      m.op = Mutation::Op::kRename;
      m.target = RandomKey();
      uint32_t f = rng_() % 6;
      m.rename_flags = f == 4 ? kRenameNoReplace : f == 5 ? kRenameExchange : kRenameNone;
    }
    return m;
  }

  void CheckSame(int step) {
    ASSERT_NO_FATAL_FAILURE(CheckSame(*engine_, step));
    if (follower_) {
      // Another reader of the store (as a -o ro mount is) that follows the writer's commit
      // log and its merges.
      ASSERT_OK(follower_->Refresh());
      ASSERT_EQ(follower_->Stats().generation, engine_->Stats().generation) << "step " << step;
      ASSERT_NO_FATAL_FAILURE(CheckSame(*follower_, step));
    }
  }

  void CheckSame(const Engine& engine, int step) {
    Tree got;
    ASSERT_OK(Dump(engine, "", &got));
    ASSERT_EQ(got.size(), model_.tree().size()) << "step " << step;
    for (const auto& [k, v] : model_.tree()) {
      auto it = got.find(k);
      ASSERT_TRUE(it != got.end()) << "step " << step << ": missing " << k;
      ASSERT_EQ(static_cast<int>(it->second.type), static_cast<int>(v.type)) << k;
      ASSERT_EQ(it->second.value, v.value) << "step " << step << ": value of " << k;
      ASSERT_EQ(it->second.mode, v.mode) << k;
      ASSERT_EQ(it->second.subdirs, v.type == EntryType::kDir ? model_.Subdirs(k) : 0)
          << "step " << step << ": subdirs of " << k;
    }
    auto root = engine.Get("");
    ASSERT_OK(root.status());
    ASSERT_EQ(root->meta.subdirs, model_.Subdirs("")) << "step " << step << ": root subdirs";
    ASSERT_EQ(root->meta.mode, model_.root_mode()) << "step " << step << ": root mode";
    // Point lookups of absent keys agree too.
    for (int i = 0; i < 20; ++i) {
      std::string k = RandomKey();
      auto r = engine_->Get(k);
      ASSERT_EQ(r.ok(), model_.tree().count(k) == 1) << k;
      // GetInDirectory answers the same, except that a miss is always NotFound.
      auto d = engine_->GetInDirectory(k);
      ASSERT_EQ(d.ok(), r.ok()) << k;
      if (r.ok()) {
        ASSERT_EQ(d->value, r->value) << k;
        ASSERT_EQ(d->version, r->version) << k;
      } else {
        ASSERT_TRUE(d.status().IsNotFound()) << k << ": " << d.status().ToString();
      }
    }
  }

  test::TempDir dir_;
  std::string path_ = dir_.Join("store");
  std::mt19937_64 rng_{static_cast<uint64_t>(GTEST_FLAG_GET(random_seed)) + 12345};
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Engine> follower_;
  uint64_t merge_threshold_ = 0;
  uint64_t merges_ = 0;  // by the engines closed so far
  Model model_;

  void RandomBatches();
};

TEST_P(ModelTest, RandomBatchesMatchModel) { RandomBatches(); }

// snapshot: merges of the commit log run in the background every few commits, while a
// read-only engine follows; both match the model at every check.
TEST_P(ModelTest, RandomBatchesMatchModelWhileMerging) {
  if (GetParam() != EngineKind::kSnapshot) GTEST_SKIP() << "snapshot only";
  merge_threshold_ = 6;
  Open();
  OpenOptions ro;
  ro.read_only = true;
  ro.watch = true;
  auto f = OpenStore(path_, ro);
  ASSERT_OK(f.status());
  follower_ = std::move(*f);
  RandomBatches();
}

void ModelTest::RandomBatches() {
  Open();
  ASSERT_TRUE(engine_);
  constexpr int kBatches = 3000;
  int accepted = 0;
  for (int step = 0; step < kBatches; ++step) {
    Batch b;
    const int n = rng_() % 4 == 0 ? 2 + static_cast<int>(rng_() % 3) : 1;
    for (int i = 0; i < n; ++i) b.Add(RandomMutation());
    Code want = model_.Apply(b);
    Status got = engine_->Commit(b);
    ASSERT_EQ(Status::CodeName(got.code()), std::string(Status::CodeName(want)))
        << "step " << step << ": " << got.ToString();
    if (got.ok()) ++accepted;
    if (step % 50 == 0) {
      ASSERT_NO_FATAL_FAILURE(CheckSame(step));
    }
    if (step % 400 == 399) {
      ASSERT_NO_FATAL_FAILURE(Open());  // reopen: everything acknowledged is on disk
      ASSERT_NO_FATAL_FAILURE(CheckSame(step));
    }
  }
  ASSERT_NO_FATAL_FAILURE(CheckSame(kBatches));
  EXPECT_GT(accepted, kBatches / 6) << accepted;  // real changes, not only errors
  if (merge_threshold_ != 0) {
    EXPECT_GT(merges_ + engine_->Stats().merges, 0u) << "no merge ran: the test tests nothing new";
  }
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

INSTANTIATE_TEST_SUITE_P(Engines, ModelTest,
                         ::testing::Values(EngineKind::kSnapshot, EngineKind::kDets),
                         [](const auto& info) { return std::string(EngineKindName(info.param)); });

}  // namespace
}  // namespace keyfs
