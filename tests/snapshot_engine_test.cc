// The snapshot engine: tree semantics of each mutation, listings, concurrency (no lost
// update, readers never see a partial value), retired tables staying readable.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "testutil.h"

namespace keyfs {
namespace {

using Code = Status::Code;

class SnapshotEngineTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  // merge_threshold 1: every commit writes a whole table (the path of bulk loads and
  // merges), instead of appending to the commit log.
  void Reopen(uint64_t merge_threshold = 0) {
    engine_.reset();
    OpenOptions o;
    o.create = true;
    o.merge_threshold = merge_threshold;
    auto e = OpenStore(path_, o);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(*e);
  }
  Status Put(const std::string& k, const std::string& v) {
    return engine_->Commit(Batch().Put(k, v));
  }
  std::string GetValue(const std::string& k) {
    auto r = engine_->Get(k);
    return r.ok() ? std::string(r->value) : "<" + r.status().ToString() + ">";
  }
  std::vector<std::string> Names(const std::string& dir, const std::string& after = "") {
    std::vector<std::string> out;
    Status s = engine_->List(dir, after, [&](const DirEntry& d) {
      out.emplace_back(d.name);
      return true;
    });
    if (!s.ok()) out.push_back("<" + s.ToString() + ">");
    return out;
  }

  test::TempDir dir_;
  std::string path_ = dir_.Join("store");
  std::unique_ptr<Engine> engine_;
};

TEST_F(SnapshotEngineTest, NewStoreIsEmptyWithRoot) {
  EXPECT_TRUE(Names("").empty());
  auto root = engine_->Get("");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->meta.type, EntryType::kDir);
  EXPECT_EQ(engine_->Stats().generation, 1u);
}

TEST_F(SnapshotEngineTest, PutGetListAcrossReopen) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("etc").Put("etc/hosts", "127.0.0.1 localhost\n")));
  ASSERT_OK(engine_->Commit(Batch().Symlink("etc/link", "hosts").Put("top", "")));
  Reopen();
  EXPECT_EQ(GetValue("etc/hosts"), "127.0.0.1 localhost\n");
  EXPECT_EQ(GetValue("top"), "");
  auto l = engine_->Get("etc/link");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->meta.type, EntryType::kSymlink);
  EXPECT_EQ(l->value, "hosts");
  EXPECT_EQ(Names(""), (std::vector<std::string>{"etc", "top"}));
  EXPECT_EQ(Names("etc"), (std::vector<std::string>{"hosts", "link"}));
}

TEST_F(SnapshotEngineTest, ParentsMustExistAndBeDirectories) {
  EXPECT_EQ(Put("a/b", "x").code(), Code::kNotFound);
  ASSERT_OK(Put("f", "file"));
  EXPECT_EQ(Put("f/x", "x").code(), Code::kNotDirectory);
  EXPECT_EQ(engine_->Get("f/x").status().code(), Code::kNotDirectory);
  EXPECT_EQ(engine_->Commit(Batch().Mkdir("f")).code(), Code::kAlreadyExists);
  Mutation m;
  m.key = "p/q/r";
  m.value = "deep";
  m.make_parents = true;
  ASSERT_OK(engine_->Commit(Batch().Add(m)));
  EXPECT_EQ(GetValue("p/q/r"), "deep");
  EXPECT_EQ(engine_->Get("p/q")->meta.type, EntryType::kDir);
  EXPECT_EQ(engine_->Get("p/q")->meta.mode, 0755u);
}

TEST_F(SnapshotEngineTest, DeleteRules) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/x", "1")));
  EXPECT_EQ(engine_->Commit(Batch().Delete("d")).code(), Code::kNotEmpty);
  EXPECT_EQ(engine_->Commit(Batch().Delete("nope")).code(), Code::kNotFound);
  ASSERT_OK(engine_->Commit(Batch().Delete("d/x").Delete("d")));
  EXPECT_TRUE(Names("").empty());
  EXPECT_EQ(Put("d", "file now").code(), Code::kOk);
}

TEST_F(SnapshotEngineTest, PutOverDirectoryAndExclusive) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d")));
  EXPECT_EQ(Put("d", "x").code(), Code::kIsDirectory);
  ASSERT_OK(Put("k", "1"));
  Mutation m;
  m.key = "k";
  m.value = "2";
  m.exclusive = true;
  EXPECT_EQ(engine_->Commit(Batch().Add(m)).code(), Code::kAlreadyExists);
  EXPECT_EQ(GetValue("k"), "1");
}

TEST_F(SnapshotEngineTest, FailedBatchChangesNothing) {
  ASSERT_OK(Put("a", "1"));
  uint64_t gen = engine_->Stats().generation;
  // The second mutation fails: the first must not be applied either.
  EXPECT_EQ(engine_->Commit(Batch().Put("b", "2").Delete("missing")).code(), Code::kNotFound);
  EXPECT_EQ(engine_->Get("b").status().code(), Code::kNotFound);
  EXPECT_EQ(engine_->Stats().generation, gen);
}

TEST_F(SnapshotEngineTest, InvalidKeysRejected) {
  const std::string long_comp(256, 'x');
  std::string long_key;
  while (long_key.size() <= kMaxKeyLength) long_key += "abcdefgh/";
  long_key.pop_back();
  struct Case {
    std::string key;
    Code code;
  } cases[] = {{"", Code::kInvalidArgument},      {"/a", Code::kInvalidArgument},
               {"a/", Code::kInvalidArgument},    {"a//b", Code::kInvalidArgument},
               {"a/./b", Code::kInvalidArgument}, {"../x", Code::kInvalidArgument},
               {"..", Code::kInvalidArgument},    {std::string("a\0b", 3), Code::kInvalidArgument},
               {long_comp, Code::kNameTooLong},   {long_key, Code::kNameTooLong}};
  for (const auto& c : cases) {
    EXPECT_EQ(Put(c.key, "v").code(), c.code) << c.key.size();
    EXPECT_EQ(engine_->Commit(Batch().Mkdir(c.key)).code(), c.code);
  }
  EXPECT_OK(Put(std::string(255, 'y'), "max component"));
  EXPECT_EQ(engine_->Stats().entries, 1u);
}

TEST_F(SnapshotEngineTest, RenameMovesWholeSubtreeAtomically) {
  ASSERT_OK(engine_->Commit(Batch()
                                .Mkdir("src")
                                .Mkdir("src/sub")
                                .Put("src/a", "A")
                                .Put("src/sub/b", "B")
                                .Put("srcx", "X")));
  ASSERT_OK(engine_->Commit(Batch().Rename("src", "dst")));
  EXPECT_EQ(Names("dst"), (std::vector<std::string>{"a", "sub"}));
  EXPECT_EQ(GetValue("dst/sub/b"), "B");
  EXPECT_EQ(engine_->Get("src").status().code(), Code::kNotFound);
  EXPECT_EQ(GetValue("srcx"), "X");  // a sibling sharing the prefix is not part of the subtree
  EXPECT_EQ(engine_->Commit(Batch().Rename("dst", "dst/sub/in")).code(), Code::kInvalidArgument);
}

TEST_F(SnapshotEngineTest, RenameReplaceRules) {
  ASSERT_OK(engine_->Commit(
      Batch().Put("f1", "1").Put("f2", "2").Mkdir("d1").Mkdir("d2").Put("d2/x", "x").Mkdir("e")));
  EXPECT_EQ(engine_->Commit(Batch().Rename("f1", "d1")).code(), Code::kIsDirectory);
  EXPECT_EQ(engine_->Commit(Batch().Rename("d1", "f1")).code(), Code::kNotDirectory);
  EXPECT_EQ(engine_->Commit(Batch().Rename("d1", "d2")).code(), Code::kNotEmpty);
  EXPECT_EQ(engine_->Commit(Batch().Rename("f1", "f2", kRenameNoReplace)).code(),
            Code::kAlreadyExists);
  EXPECT_EQ(engine_->Commit(Batch().Rename("nope", "f2")).code(), Code::kNotFound);
  ASSERT_OK(engine_->Commit(Batch().Rename("f1", "f2")));
  EXPECT_EQ(GetValue("f2"), "1");
  ASSERT_OK(engine_->Commit(Batch().Rename("d1", "e")));  // over an empty directory
  EXPECT_EQ(engine_->Get("d1").status().code(), Code::kNotFound);
  EXPECT_EQ(engine_->Get("e")->meta.type, EntryType::kDir);
}

TEST_F(SnapshotEngineTest, RenameExchange) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/in", "i").Put("f", "F")));
  ASSERT_OK(engine_->Commit(Batch().Rename("d", "f", kRenameExchange)));
  EXPECT_EQ(GetValue("d"), "F");
  EXPECT_EQ(GetValue("f/in"), "i");
  EXPECT_EQ(engine_->Commit(Batch().Rename("d", "zz", kRenameExchange)).code(), Code::kNotFound);
  EXPECT_EQ(engine_->Commit(Batch().Rename("d", "f", kRenameExchange | kRenameNoReplace)).code(),
            Code::kInvalidArgument);
}

TEST_F(SnapshotEngineTest, MetadataPersistsAndSetMetaKeepsValue) {
  Meta m = Meta::File(0600);
  m.uid = 1000;
  m.gid = 100;
  m.mtime_ns = 1234567890123456789;
  ASSERT_OK(engine_->Commit(Batch().Put("k", "value", m)));
  Reopen();
  auto r = engine_->Get("k");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->meta.mode, 0600u);
  EXPECT_EQ(r->meta.uid, 1000u);
  EXPECT_EQ(r->meta.gid, 100u);
  EXPECT_EQ(r->meta.mtime_ns, 1234567890123456789);
  EXPECT_GT(r->meta.ctime_ns, 0);
  Meta m2 = r->meta;
  m2.mode = 0640;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("k", m2)));
  EXPECT_EQ(GetValue("k"), "value");
  EXPECT_EQ(engine_->Get("k")->meta.mode, 0640u);
  EXPECT_EQ(engine_->Get("k")->meta.type, EntryType::kFile);
}

TEST_F(SnapshotEngineTest, ListingResumesFromCursorAndSkipsSubtrees) {
  Batch b;
  b.Mkdir("d");
  for (int i = 0; i < 500; ++i) {
    std::string name = "n" + std::to_string(i);
    if (i % 50 == 0) {
      b.Mkdir("d/" + name).Put("d/" + name + "/deep", "x");
    } else {
      b.Put("d/" + name, std::to_string(i));
    }
  }
  b.Put("d-sibling", "not a child").Put("d0", "not a child either");
  ASSERT_OK(engine_->Commit(b));
  std::vector<std::string> all = Names("d");
  ASSERT_EQ(all.size(), 500u);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end()));
  std::vector<std::string> paged;
  std::string cursor;
  while (true) {
    int n = 0;
    ASSERT_OK(engine_->List("d", cursor, [&](const DirEntry& d) {
      paged.emplace_back(d.name);
      return ++n < 7;
    }));
    if (n == 0) break;
    cursor = paged.back();
  }
  EXPECT_EQ(paged, all);
  EXPECT_EQ(engine_->List("d/n1", "", [](const DirEntry&) { return true; }).code(),
            Code::kNotDirectory);
  EXPECT_EQ(engine_->List("nope", "", [](const DirEntry&) { return true; }).code(),
            Code::kNotFound);
}

TEST_F(SnapshotEngineTest, ConcurrentWritersLoseNothing) {
  constexpr int kThreads = 16, kEach = 60;
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (!Put("t" + std::to_string(t) + "-" + std::to_string(i), std::to_string(i)).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
  Reopen();
  EXPECT_EQ(engine_->Stats().entries, uint64_t{kThreads * kEach});
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kEach; ++i) {
      EXPECT_EQ(GetValue("t" + std::to_string(t) + "-" + std::to_string(i)), std::to_string(i));
    }
  }
}

// A value that proves its own integrity: "<len>:<fill byte repeated>".
std::string SelfCheckingValue(int i) {
  size_t len = 1 + (i * 7919) % 20000;
  return std::to_string(len) + ":" + std::string(len, static_cast<char>('a' + i % 26));
}
bool IsWhole(std::string_view v) {
  size_t colon = v.find(':');
  if (colon == std::string_view::npos) return false;
  size_t len = std::stoul(std::string(v.substr(0, colon)));
  std::string_view body = v.substr(colon + 1);
  return body.size() == len && body.find_first_not_of(body[0]) == std::string_view::npos;
}

TEST_F(SnapshotEngineTest, ReadersDuringCommitsSeeWholeValues) {
  ASSERT_OK(Put("k", SelfCheckingValue(0)));
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0}, bad{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        auto rec = engine_->Get("k");
        if (!rec.ok() || !IsWhole(rec->value)) ++bad;
        ++reads;
      }
    });
  }
  // A reader holding an old table keeps reading it while newer ones are published (by the
  // merges of the commit log below).
  auto* snap = dynamic_cast<SnapshotEngine*>(engine_.get());
  ASSERT_NE(snap, nullptr);
  ASSERT_OK(snap->Merge());
  TableRef held = snap->Current();
  for (int i = 1; i <= 300; ++i) {
    ASSERT_OK(Put("k", SelfCheckingValue(i)));
    if (i % 100 == 0) ASSERT_OK(snap->Merge());
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0) << "of " << reads.load() << " reads";
  EXPECT_GT(reads.load(), 0);
  EntryRef e;
  ASSERT_OK(held->Find("k", &e));
  EXPECT_EQ(e.value, SelfCheckingValue(0));
  EXPECT_EQ(GetValue("k"), SelfCheckingValue(300));
}

TEST_F(SnapshotEngineTest, ChangeListenerGetsChangedKeys) {
  std::vector<std::string> changed;
  std::mutex mu;
  engine_->SetChangeListener([&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(mu);
    EXPECT_FALSE(ev.external);
    EXPECT_EQ(ev.new_generation, ev.old_generation + 1);
    changed.insert(changed.end(), ev.changed.begin(), ev.changed.end());
  });
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/a", "1")));
  ASSERT_OK(engine_->Commit(Batch().Rename("d", "e")));
  std::lock_guard<std::mutex> l(mu);
  // The root ("") changed both times: an entry was added to it, then one renamed in it.
  EXPECT_EQ(changed, (std::vector<std::string>{"", "d", "d/a", "", "d", "d/a", "e", "e/a"}));
}

TEST_F(SnapshotEngineTest, StaleTempFilesRemovedOnOpen) {
  engine_.reset();
  std::string stale = path_ + ".tmp-99999-1";
  FILE* f = fopen(stale.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("half-written", f);
  fclose(f);
  Reopen();
  EXPECT_FALSE(std::filesystem::exists(stale));
  ASSERT_OK(Put("k", "v"));
}

// Commits recycle retired files (STORE.old-*) instead of freeing them: the directory
// stays bounded however many commits run.
TEST_F(SnapshotEngineTest, RetiredFilesAreRecycledNotAccumulated) {
  Reopen(/*merge_threshold=*/1);
  for (int i = 0; i < 200; ++i) ASSERT_OK(Put("k" + std::to_string(i % 7), std::to_string(i)));
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
    (void)e;
    ++files;
  }
  EXPECT_LE(files, 2u + 3u);  // STORE, STORE.lock and at most three spares
  EXPECT_EQ(GetValue("k3"), "199");
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
  // Closed, the store keeps no spare: it would double the disk it takes.
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
    left.push_back(e.path().filename().string());
  }
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"store", "store.lock"}));
}

// A table mapped by another process is never recycled under it: that process keeps
// reading its own version, whole, across many commits.
TEST_F(SnapshotEngineTest, TableMappedByAnotherProcessIsNeverRewritten) {
  Reopen(/*merge_threshold=*/1);
  ASSERT_OK(Put("k", "original value of generation two"));
  int to_child[2], to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto t = SnapshotTable::Open(path_);
    char c = t.ok() ? 'r' : 'e';
    (void)!write(to_parent[1], &c, 1);
    (void)!read(to_child[0], &c, 1);  // the parent has committed meanwhile
    EntryRef e;
    bool same = t.ok() && (*t)->Find("k", &e).ok() && e.value == "original value of generation two";
    _exit(same && (*t)->VerifyAll(nullptr).ok() ? 0 : 1);
  }
  char c = 0;
  ASSERT_EQ(read(to_parent[0], &c, 1), 1);
  ASSERT_EQ(c, 'r');
  for (int i = 0; i < 50; ++i) ASSERT_OK(Put("k", "rewritten " + std::to_string(i)));
  ASSERT_EQ(write(to_child[1], "g", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child's table changed";
  EXPECT_EQ(GetValue("k"), "rewritten 49");
}

TEST(SnapshotStore, CreateFailsOnExistingAndOpenFailsOnMissing) {
  test::TempDir dir;
  std::string p = dir.Join("s");
  EXPECT_EQ(OpenStore(p, OpenOptions{}).status().code(), Code::kNotFound);
  ASSERT_OK(CreateStore(p, EngineKind::kSnapshot));
  EXPECT_EQ(CreateStore(p, EngineKind::kSnapshot).code(), Code::kAlreadyExists);
  EXPECT_EQ(DetectEngine(p).value(), EngineKind::kSnapshot);
  OpenOptions ro;
  ro.read_only = true;
  auto e = OpenStore(p, ro);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)->Commit(Batch().Put("k", "v")).code(), Code::kReadOnly);
  EXPECT_FALSE(std::filesystem::exists(p + ".lock"));
}

}  // namespace
}  // namespace keyfs
