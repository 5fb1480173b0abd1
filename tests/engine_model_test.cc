// The same randomised operation sequences run against an engine and a std::map model
// that implements the tree semantics independently; every status and every state must
// agree, across thousands of batches and many reopenings. (leveldb's table_test Harness.)
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

struct ModelEntry {
  EntryType type;
  std::string value;
  uint32_t mode;
  uint32_t subdirs = 0;  // directories: child directories (the engine's count; the model
                         // counts its own in CheckSame)
  bool operator==(const ModelEntry&) const = default;
};
using Tree = std::map<std::string, ModelEntry>;

bool Below(const std::string& key, const std::string& dir) {
  return key.size() > dir.size() && key.compare(0, dir.size(), dir) == 0 && key[dir.size()] == '/';
}

std::string Parent(const std::string& k) {
  size_t s = k.rfind('/');
  return s == std::string::npos ? "" : k.substr(0, s);
}

// The model: what SPEC §3 says each mutation does, written without looking at Overlay.
class Model {
 public:
  Code Apply(const Batch& b) {
    Tree saved = tree_;
    const uint32_t saved_root = root_mode_;
    for (const Mutation& m : b.mutations()) {
      Code c = ApplyOne(m);
      if (c != Code::kOk) {
        tree_ = std::move(saved);
        root_mode_ = saved_root;
        return c;
      }
    }
    return Code::kOk;
  }
  const Tree& tree() const { return tree_; }
  uint32_t root_mode() const { return root_mode_; }
  // Child directories of `dir` ("" = root), counted.
  uint32_t Subdirs(const std::string& dir) const {
    uint32_t n = 0;
    for (const auto& [k, v] : tree_) n += v.type == EntryType::kDir && Parent(k) == dir;
    return n;
  }

 private:
  bool Exists(const std::string& k) const { return k.empty() || tree_.count(k); }
  bool IsDir(const std::string& k) const {
    return k.empty() || (tree_.count(k) && tree_.at(k).type == EntryType::kDir);
  }
  bool HasChildren(const std::string& d) const {
    for (const auto& [k, v] : tree_) {
      if (Below(k, d)) return true;
    }
    return false;
  }
  Code ParentOk(const std::string& k) const {
    std::string p = Parent(k);
    if (IsDir(p)) return Code::kOk;
    if (Exists(p)) return Code::kNotDirectory;
    for (std::string a = Parent(p); !a.empty(); a = Parent(a)) {
      if (Exists(a)) return IsDir(a) ? Code::kNotFound : Code::kNotDirectory;
    }
    return Code::kNotFound;
  }
  Code ApplyOne(const Mutation& m) {
    const std::string& k = m.key;
    switch (m.op) {
      case Mutation::Op::kPut: {
        if (Code c = ParentOk(k); c != Code::kOk) return c;
        if (IsDir(k)) return Code::kIsDirectory;
        if (m.exclusive && Exists(k)) return Code::kAlreadyExists;
        tree_[k] = {m.meta.type, m.value, m.meta.mode};
        return Code::kOk;
      }
      case Mutation::Op::kMkdir: {
        if (Code c = ParentOk(k); c != Code::kOk) return c;
        if (Exists(k)) return Code::kAlreadyExists;
        tree_[k] = {EntryType::kDir, "", m.meta.mode};
        return Code::kOk;
      }
      case Mutation::Op::kDelete:
        if (!Exists(k)) return Code::kNotFound;
        if (IsDir(k) && HasChildren(k)) return Code::kNotEmpty;
        tree_.erase(k);
        return Code::kOk;
      case Mutation::Op::kSetMeta:
        if (!Exists(k)) return Code::kNotFound;
        if (k.empty()) {
          root_mode_ = m.meta.mode;
        } else {
          tree_[k].mode = m.meta.mode;
        }
        return Code::kOk;
      case Mutation::Op::kRename:
        return Rename(k, m.target, m.rename_flags);
    }
    return Code::kInvalidArgument;
  }
  Tree TakeSubtree(const std::string& root) {
    Tree out;
    for (auto it = tree_.begin(); it != tree_.end();) {
      if (it->first == root || Below(it->first, root)) {
        out.insert(*it);
        it = tree_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }
  void PutSubtree(const Tree& t, const std::string& from, const std::string& to) {
    for (const auto& [k, v] : t) tree_[to + k.substr(from.size())] = v;
  }
  Code Rename(const std::string& from, const std::string& to, uint32_t flags) {
    if (!Exists(from)) return Code::kNotFound;
    const bool exchange = flags & kRenameExchange;
    if (exchange && (flags & kRenameNoReplace)) return Code::kInvalidArgument;
    if (Below(to, from)) return Code::kInvalidArgument;
    if (Code c = ParentOk(to); c != Code::kOk) return c;
    if (from == to) return Code::kOk;
    if (exchange) {
      if (!Exists(to)) return Code::kNotFound;
      if (Below(from, to)) return Code::kInvalidArgument;
      Tree a = TakeSubtree(from), b = TakeSubtree(to);
      PutSubtree(a, from, to);
      PutSubtree(b, to, from);
      return Code::kOk;
    }
    if (Exists(to)) {
      if (flags & kRenameNoReplace) return Code::kAlreadyExists;
      if (IsDir(from)) {
        if (!IsDir(to)) return Code::kNotDirectory;
        if (HasChildren(to)) return Code::kNotEmpty;
      } else if (IsDir(to)) {
        return Code::kIsDirectory;
      }
      tree_.erase(to);
    }
    Tree a = TakeSubtree(from);
    PutSubtree(a, from, to);
    return Code::kOk;
  }

  Tree tree_;
  uint32_t root_mode_ = 0755;
};

// Every entry of the engine, by walking List from the root.
Status Dump(const Engine& e, const std::string& dir, Tree* out) {
  std::vector<std::pair<std::string, EntryType>> children;
  Status s = e.List(dir, "", [&](const DirEntry& d) {
    children.emplace_back(std::string(d.name), d.meta.type);
    return true;
  });
  if (!s.ok()) return s;
  for (const auto& [name, type] : children) {
    std::string key = dir.empty() ? name : dir + "/" + name;
    auto r = e.Get(key);
    if (!r.ok()) return r.status().WithContext("get " + key);
    if (r->meta.type != type) return Status::Corruption("list and get disagree on " + key);
    (*out)[key] = {r->meta.type, std::string(r->value), r->meta.mode, r->meta.subdirs};
    if (type == EntryType::kDir) KEYFS_RETURN_IF_ERROR(Dump(e, key, out));
  }
  return Status::OK();
}

class ModelTest : public ::testing::TestWithParam<EngineKind> {
 protected:
  void Open() {
    engine_.reset();
    OpenOptions o;
    o.create = true;
    o.kind = GetParam();
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
    Tree got;
    ASSERT_OK(Dump(*engine_, "", &got));
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
    auto root = engine_->Get("");
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
  Model model_;
};

TEST_P(ModelTest, RandomBatchesMatchModel) {
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
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

INSTANTIATE_TEST_SUITE_P(Engines, ModelTest,
                         ::testing::Values(EngineKind::kSnapshot, EngineKind::kDets),
                         [](const auto& info) { return std::string(EngineKindName(info.param)); });

}  // namespace
}  // namespace keyfs
