// Power loss at every durable-write step (issue 10, SPEC §4 "nothing acknowledged is ever
// lost"). A workload runs once through a PowerLossEnv to number its steps (every write,
// truncate, fsync, create, rename, link, remove and directory fsync), then once per step
// with the power cut there. For each cut, the directory is rewritten to what a disk could
// hold afterwards (PowerLossEnv::Survival: nothing unsynced, unsynced data only, unsynced
// directory operations only, everything, random prefixes), and the store must
//   - verify clean (every checksum and structure);
//   - open read-only and read-write and hold exactly the state after some commit between
//     the last acknowledged one (snapshot: Commit returned OK; dets: Sync returned OK) and
//     the last attempted one: nothing acknowledged lost, nothing torn;
//   - accept a new commit, and leave no temp or spare file behind once closed.
// Acknowledgement points and step counts are printed, for the README's figures.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "engine_model.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "power_loss_env.h"
#include "testutil.h"

namespace keyfs {
namespace {

using model::Model;
using model::Tree;
using test::FilesIn;
using test::PowerLossEnv;
using test::ReadAll;
using test::TempDir;
using test::WriteAll;
using Survival = PowerLossEnv::Survival;

void RemoveAllIn(const std::string& dir) {
  for (const std::string& n : FilesIn(dir)) ::unlink((dir + "/" + n).c_str());
}

std::string Bytes(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 131 % 251);
  return s;
}

// "" if the engine holds exactly the model's state, else what differs.
std::string Diff(const Engine& e, const Model& m) {
  Tree got;
  Status s = model::Dump(e, "", &got);
  if (!s.ok()) return "dump: " + s.ToString();
  for (const auto& [k, v] : m.tree()) {
    auto it = got.find(k);
    if (it == got.end()) return "missing " + k;
    if (it->second.type != v.type || it->second.value != v.value || it->second.mode != v.mode) {
      return "differs: " + k;
    }
    if (it->second.subdirs != (v.type == EntryType::kDir ? m.Subdirs(k) : 0)) {
      return "subdirs of " + k;
    }
  }
  if (got.size() != m.tree().size()) return "extra entries";
  auto root = e.Get("");
  if (!root.ok()) return "root: " + root.status().ToString();
  if (root->meta.mode != m.root_mode()) return "root mode";
  if (root->meta.subdirs != m.Subdirs("")) return "root subdirs";
  return "";
}

// The commits of the workload: every mutation kind, values of several pages, a directory
// renamed with its children, the root's mode.
std::vector<Batch> Workload() {
  std::vector<Batch> w(7);
  w[0].Put("a/one", "one").Put("a/big", Bytes(10000, 'b')).Mkdir("d").Put("d/x", "x");
  w[1].Put("a/one", "uno").Delete("a/big").Symlink("a/link", "one");
  w[2].Rename("d", "e").SetMeta("e/x", Meta::File(0600));
  w[3].Put("e/y", Bytes(5000, 'y')).Mkdir("e/sub").Put("e/sub/z", "");
  w[4].SetMeta("", Meta::Dir(0700)).Delete("a/one");
  w[5].Put("a/one", Bytes(9000, '1')).Rename("e/y", "a/y");
  w[6].Delete("e/sub/z").Delete("e/sub").Put("init/k3", "changed");
  return w;
}

// What a run of the workload got acknowledged: the state after `acked` commits is the
// least the store may hold after a power cut, after `attempted` the most.
struct Outcome {
  int acked = 0;
  int attempted = 0;
  bool opened = false;
};

class PowerLossTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  void SetUp() override {
    path_ = dir_.Join("store");
    ASSERT_OK(CreateStore(path_, kind()));
    Batch init;
    init.Mkdir("a").Mkdir("init");
    for (int i = 0; i < 20; ++i)
      init.Put("init/k" + std::to_string(i), "value " + std::to_string(i));
    {
      OpenOptions o;
      o.sync_interval_s = 0;
      o.merge_threshold = 1;  // snapshot: into STORE itself, no commit log
      auto e = OpenStore(path_, o);
      ASSERT_OK(e.status());
      ASSERT_OK((*e)->Commit(init));
      ASSERT_OK((*e)->Sync());
    }
    initial_ = ReadAll(path_);
    Model m;
    ASSERT_EQ(m.Apply(init), Status::Code::kOk);
    states_.push_back(m);
    for (const Batch& b : Workload()) {
      ASSERT_EQ(m.Apply(b), Status::Code::kOk);
      states_.push_back(m);
    }
  }

  EngineKind kind() const { return GetParam(); }
  bool dets() const { return kind() == EngineKind::kDets; }

  // The directory back to the initial store, all of it durable.
  void Reset() {
    RemoveAllIn(dir_.path());
    WriteAll(path_, initial_);
  }

  // Opens the store through `env` and commits the workload: dets syncs after every second
  // commit and after the last; snapshot appends to its commit log and merges it into a new
  // base table after the third and the fifth commit, or (whole_tables_) writes a whole table
  // per commit. Stops at the first failure.
  Outcome Run(PowerLossEnv* env) {
    Outcome out;
    OpenOptions o;
    o.env = env;
    o.sync_interval_s = 0;
    o.merge_threshold = whole_tables_ ? 1 : 0;
    auto e = OpenStore(path_, o);
    if (!e.ok()) return out;
    out.opened = true;
    const std::vector<Batch> work = Workload();
    for (size_t c = 0; c < work.size(); ++c) {
      Status s = (*e)->Commit(work[c]);
      if (!s.ok()) {
        out.attempted = static_cast<int>(c) + 1;  // in doubt: may or may not be there
        break;
      }
      out.attempted = static_cast<int>(c) + 1;
      if (!dets()) {
        out.acked = out.attempted;
        if (!whole_tables_ && (c == 2 || c == 4)) {
          // A failed merge loses nothing: the next commit finds out whether power is on.
          (void)dynamic_cast<SnapshotEngine&>(**e).Merge();
        }
      } else if (c % 2 == 1 || c + 1 == work.size()) {
        if (!(*e)->Sync().ok()) break;
        out.acked = out.attempted;
      }
    }
    return out;  // the engine closes here (dets: a last sync, acknowledged to nobody)
  }

  // The checks of one cut; `what` names it in failures.
  void Check(const Outcome& out, const std::string& what) {
    SCOPED_TRACE(what);
    Status v = VerifyStore(path_);
    ASSERT_TRUE(v.ok()) << v.ToString();
    int state = -1;
    {
      OpenOptions o;
      o.read_only = true;
      auto e = OpenStore(path_, o);
      ASSERT_OK(e.status());
      std::string diffs;
      for (int j = out.acked; j <= out.attempted && state < 0; ++j) {
        std::string d = Diff(**e, states_[j]);
        if (d.empty()) state = j;
        diffs += " after " + std::to_string(j) + ": " + d + ";";
      }
      ASSERT_GE(state, 0) << "the store holds none of the states after commits " << out.acked
                          << ".." << out.attempted << ":" << diffs;
    }
    {
      OpenOptions o;
      o.sync_interval_s = 0;
      auto e = OpenStore(path_, o);
      ASSERT_OK(e.status());
      ASSERT_EQ(Diff(**e, states_[state]), "") << "read-write open differs";
      ASSERT_OK((*e)->Commit(Batch().Put("init/after-cut", "works")));
      ASSERT_OK((*e)->Sync());
    }
    for (const std::string& n : FilesIn(dir_.path())) {
      EXPECT_TRUE(n == "store" || n == "store.lock" || n == "store.log") << "left behind: " << n;
    }
    OpenOptions o;
    o.read_only = true;
    auto e = OpenStore(path_, o);
    ASSERT_OK(e.status());
    auto r = (*e)->Get("init/after-cut");
    ASSERT_OK(r.status());
    EXPECT_EQ(r->value, "works");
  }

  // In memory when possible: the model decides what survives, real fsyncs only cost time.
  TempDir dir_{::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"};
  std::string path_;
  std::string initial_;
  std::vector<Model> states_;  // [i]: after i commits of the workload
  bool whole_tables_ = false;  // snapshot: a whole table per commit instead of the log

  void CutAtEveryStep();
};

// The workload without a cut commits everything; its steps are the points to cut at.
void PowerLossTest::CutAtEveryStep() {
  Reset();
  int steps = 0;
  {
    PowerLossEnv env(dir_.path());
    Outcome out = Run(&env);
    ASSERT_TRUE(out.opened);
    ASSERT_EQ(out.acked, static_cast<int>(Workload().size()));
    steps = env.steps();
    // Every kind of step is among them (a spare table rewritten in place on snapshot).
    for (const char* k : {"create", "write", "fsync", "rename", "fsync-dir"}) {
      EXPECT_GT(env.count(k), 0) << k;
    }
    if (whole_tables_) {
      EXPECT_GT(env.count("truncate"), 0) << "no spare was recycled";
    }
    if (!dets()) {
      EXPECT_GT(env.count("link"), 0) << "no table was replaced";
    }
    env.ApplyPowerLoss(Survival::kNone);  // all of it was made durable
    ASSERT_NO_FATAL_FAILURE(Check(out, "no cut"));
  }
  ASSERT_GT(steps, 0);
  int checks = 0;
  for (int cut = 1; cut <= steps; ++cut) {
    Reset();
    PowerLossEnv env(dir_.path());
    env.CutPowerAt(cut);
    const Outcome out = Run(&env);
    ASSERT_TRUE(env.power_off()) << "step " << cut << " never came";
    const std::string where = "power cut at step " + std::to_string(cut) + " of " +
                              std::to_string(steps) + " (" + env.StepName(cut) + "), " +
                              std::to_string(out.acked) + " commits acknowledged";
    for (Survival mode : PowerLossEnv::kAllSurvivals) {
      const int seeds = mode == Survival::kRandom || mode == Survival::kReordered ? 3 : 1;
      for (int seed = 0; seed < seeds; ++seed) {
        env.ApplyPowerLoss(mode, static_cast<uint64_t>(cut) * 1000 + seed);
        ASSERT_NO_FATAL_FAILURE(
            Check(out, where + ", surviving: " + PowerLossEnv::SurvivalName(mode)));
        ++checks;
      }
    }
  }
  std::printf("[ %s ] %d durable-write steps in %zu commits%s; %d power cuts checked\n",
              EngineKindName(kind()), steps, Workload().size(),
              dets()          ? " and 4 syncs"
              : whole_tables_ ? ", a whole table each"
                              : " to the commit log and 2 merges",
              checks);
}

TEST_P(PowerLossTest, EveryStepOfCommitsAndSyncs) { CutAtEveryStep(); }

// The snapshot engine's other commit path: bulk loads, and commits while the merge lags.
TEST_P(PowerLossTest, EveryStepOfWholeTableCommits) {
  if (dets()) GTEST_SKIP() << "snapshot only";
  whole_tables_ = true;
  CutAtEveryStep();
}

// Creating a store: after a cut at any step there is either no store or an empty one, and
// creating it again works.
TEST_P(PowerLossTest, EveryStepOfCreate) {
  const std::string path = dir_.Join("new");
  int steps = 0;
  {
    PowerLossEnv env(dir_.path());
    ASSERT_OK(CreateStore(path, kind(), &env));
    steps = env.steps();
    env.ApplyPowerLoss(Survival::kNone);  // created means durable
    OpenOptions o;
    o.read_only = true;
    ASSERT_OK(OpenStore(path, o).status());
  }
  for (int cut = 1; cut <= steps; ++cut) {
    RemoveAllIn(dir_.path());
    PowerLossEnv env(dir_.path());
    env.CutPowerAt(cut);
    EXPECT_FALSE(CreateStore(path, kind(), &env).ok());
    for (Survival mode : PowerLossEnv::kAllSurvivals) {
      SCOPED_TRACE("cut at step " + std::to_string(cut) + " (" + env.StepName(cut) +
                   "), surviving: " + PowerLossEnv::SurvivalName(mode));
      env.ApplyPowerLoss(mode, static_cast<uint64_t>(cut));
      if (::access(path.c_str(), F_OK) == 0) {
        ASSERT_OK(VerifyStore(path));
      }
      OpenOptions o;
      o.create = true;
      o.kind = kind();
      {
        auto e = OpenStore(path, o);
        ASSERT_OK(e.status());
        Tree t;
        ASSERT_OK(model::Dump(**e, "", &t));
        EXPECT_TRUE(t.empty());
      }
      for (const std::string& n : FilesIn(dir_.path())) {
        EXPECT_TRUE(n == "new" || n == "new.lock") << "left behind: " << n;
      }
    }
  }
  std::printf("[ %s ] %d durable-write steps in a create\n", EngineKindName(kind()), steps);
}

// Opening a version-1 store read-write rewrites it as version 2 (tests/testdata): after a
// cut at any step of that, it opens with the same content, in either version.
TEST_P(PowerLossTest, EveryStepOfUpgrade) {
  const std::string v1 = ReadAll(std::string(KEYFS_TESTDATA_DIR) +
                                 (dets() ? "/format_v1.dets" : "/format_v1.snapshot"));
  ASSERT_FALSE(v1.empty());
  auto dump = [&](Tree* t, uint32_t* root_mode) {
    OpenOptions o;
    o.read_only = true;
    auto e = OpenStore(path_, o);
    ASSERT_OK(e.status());
    ASSERT_OK(model::Dump(**e, "", t));
    auto root = (*e)->Get("");
    ASSERT_OK(root.status());
    *root_mode = root->meta.mode;
  };
  RemoveAllIn(dir_.path());
  WriteAll(path_, v1);
  Tree want;
  uint32_t want_root = 0;
  ASSERT_NO_FATAL_FAILURE(dump(&want, &want_root));
  ASSERT_FALSE(want.empty());
  int steps = 0, open_steps = 0;  // the rest: removing the spare at close (snapshot)
  {
    PowerLossEnv env(dir_.path());
    OpenOptions o;
    o.env = &env;
    auto e = OpenStore(path_, o);
    ASSERT_OK(e.status());
    open_steps = env.steps();
    e->reset();
    steps = env.steps();
    env.ApplyPowerLoss(Survival::kNone);  // an open that returned has upgraded for good
    o.env = nullptr;
    o.read_only = true;
    auto upgraded = OpenStore(path_, o);
    ASSERT_OK(upgraded.status());
    EXPECT_EQ((*upgraded)->Stats().format_version, GetParam() == EngineKind::kSnapshot ? 3u : 2u);
  }
  ASSERT_GT(steps, 0) << "nothing was upgraded";
  for (int cut = 1; cut <= steps; ++cut) {
    RemoveAllIn(dir_.path());
    WriteAll(path_, v1);
    PowerLossEnv env(dir_.path());
    env.CutPowerAt(cut);
    {
      OpenOptions o;
      o.env = &env;
      auto e = OpenStore(path_, o);
      EXPECT_EQ(e.ok(), cut > open_steps)  // the upgrade failed
          << "cut at step " << cut << " (" << env.StepName(cut) << ")";
    }
    for (Survival mode : PowerLossEnv::kAllSurvivals) {
      SCOPED_TRACE("cut at step " + std::to_string(cut) + " (" + env.StepName(cut) +
                   "), surviving: " + PowerLossEnv::SurvivalName(mode));
      env.ApplyPowerLoss(mode, static_cast<uint64_t>(cut));
      ASSERT_OK(VerifyStore(path_));
      Tree got;
      uint32_t root = 0;
      ASSERT_NO_FATAL_FAILURE(dump(&got, &root));
      EXPECT_TRUE(got == want);
      EXPECT_EQ(root, want_root);
      OpenOptions o;
      ASSERT_OK(OpenStore(path_, o).status());  // upgrades now
      dump(&got, &root);
      EXPECT_TRUE(got == want);
      for (const std::string& n : FilesIn(dir_.path())) {
        EXPECT_TRUE(n == "store" || n == "store.lock") << "left behind: " << n;
      }
    }
  }
  std::printf("[ %s ] %d durable-write steps in an upgrade\n", EngineKindName(kind()), steps);
}

INSTANTIATE_TEST_SUITE_P(Engines, PowerLossTest,
                         ::testing::Values(EngineKind::kSnapshot, EngineKind::kDets),
                         [](const auto& info) { return std::string(EngineKindName(info.param)); });

}  // namespace
}  // namespace keyfs
