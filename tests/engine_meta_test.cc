// Metadata semantics every engine shares (ApplyMutation, the files' version-2 fields): the
// times of directories whose entries change, the root directory's own metadata, atimes and
// explicit times, counts of child directories, the reserved name, the value size limit and
// what ChangeEvents list. Each test runs on both engines and across reopening.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "keyfs/store/engine.h"
#include "testutil.h"

namespace keyfs {
namespace {

using Code = Status::Code;

class EngineMeta : public ::testing::TestWithParam<EngineKind> {
 protected:
  void SetUp() override { Open(); }

  void Open() {
    engine_.reset();
    OpenOptions o;
    o.create = true;
    o.kind = GetParam();
    o.sync_interval_s = 0;
    auto e = OpenStore(path_, o);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(*e);
  }

  Meta M(const std::string& key) {
    auto r = engine_->Get(key);
    EXPECT_TRUE(r.ok()) << key << ": " << r.status().ToString();
    return r.ok() ? r->meta : Meta{};
  }
  uint64_t V(const std::string& key) {
    auto r = engine_->Get(key);
    EXPECT_TRUE(r.ok()) << key;
    return r.ok() ? r->version : 0;
  }
  // The time of the last commit (what it stamped on what it changed).
  int64_t LastCommit() { return engine_->Stats().last_commit_ns; }

  // Sets the mtime of directory `key` far in the past, so a later change shows.
  void Age(const std::string& key, int64_t t = 1'000'000'000) {
    Meta m = M(key);
    m.mtime_ns = t;
    ASSERT_OK(engine_->Commit(Batch().SetMeta(key, m)));
  }

  test::TempDir dir_;
  std::string path_ = dir_.Join("store");
  std::unique_ptr<Engine> engine_;
};

// ---- directory times ----

TEST_P(EngineMeta, CreatingAnEntryStampsItsParent) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a")));
  for (const char* parent : {"a", ""}) {
    SCOPED_TRACE(std::string("parent '") + parent + "'");
    Age(parent);
    const Meta before = M(parent);
    const std::string p = *parent ? std::string(parent) + "/" : "";
    for (int kind = 0; kind < 3; ++kind) {
      Batch b;
      const std::string key = p + "new" + std::to_string(kind);
      if (kind == 0) b.Put(key, "v");
      if (kind == 1) b.Mkdir(key);
      if (kind == 2) b.Symlink(key, "target");
      ASSERT_OK(engine_->Commit(b));
      const Meta m = M(parent);
      EXPECT_EQ(m.mtime_ns, LastCommit()) << key;
      EXPECT_EQ(m.ctime_ns, LastCommit()) << key;
      EXPECT_EQ(m.mtime_ns, M(key).ctime_ns) << key;  // the same commit
      EXPECT_EQ(m.mode, before.mode);
      EXPECT_EQ(m.atime_ns, before.atime_ns);  // a directory's atime is not its mtime
    }
  }
}

TEST_P(EngineMeta, MakeParentsStampsEveryDirectoryItCreatesIn) {
  Age("");
  Mutation m;
  m.op = Mutation::Op::kPut;
  m.key = "x/y/z";
  m.value = "v";
  m.meta = Meta::File();
  m.make_parents = true;
  ASSERT_OK(engine_->Commit(Batch().Add(m)));
  const int64_t t = LastCommit();
  for (const char* k : {"", "x", "x/y"}) {
    EXPECT_EQ(M(k).mtime_ns, t) << k;
    EXPECT_EQ(M(k).ctime_ns, t) << k;
  }
  EXPECT_EQ(M("").subdirs, 1u);
  EXPECT_EQ(M("x").subdirs, 1u);
  EXPECT_EQ(M("x/y").subdirs, 0u);
  EXPECT_EQ(M("x/y").atime_ns, t);
}

TEST_P(EngineMeta, OverwriteAndSetMetaLeaveTheParentAlone) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/f", "1").Put("top", "1")));
  Age("d");
  Age("");
  const Meta d = M("d"), root = M("");
  const uint64_t dv = V("d");
  ASSERT_OK(engine_->Commit(Batch().Put("d/f", "2").Put("top", "2")));
  Meta f = M("d/f");
  f.mode = 0600;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("d/f", f).SetMeta("top", f)));
  EXPECT_EQ(M("d"), d);
  EXPECT_EQ(V("d"), dv);
  EXPECT_EQ(M(""), root);
}

TEST_P(EngineMeta, DeletingStampsTheParent) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/f", "1").Mkdir("d/e").Put("top", "1")));
  Age("d");
  Age("");
  ASSERT_OK(engine_->Commit(Batch().Delete("d/f")));
  EXPECT_EQ(M("d").mtime_ns, LastCommit());
  EXPECT_EQ(M("d").ctime_ns, LastCommit());
  EXPECT_EQ(M("").mtime_ns, 1'000'000'000);  // not the grandparent
  Age("d");
  ASSERT_OK(engine_->Commit(Batch().Delete("d/e")));
  EXPECT_EQ(M("d").mtime_ns, LastCommit());
  ASSERT_OK(engine_->Commit(Batch().Delete("top")));
  EXPECT_EQ(M("").mtime_ns, LastCommit());
  EXPECT_EQ(M("").ctime_ns, LastCommit());
}

TEST_P(EngineMeta, RenameStampsBothParents) {
  ASSERT_OK(engine_->Commit(
      Batch().Mkdir("a").Mkdir("b").Put("a/f", "1").Put("b/g", "2").Put("a/h", "3")));
  for (const char* d : {"a", "b", ""}) Age(d);
  // Across directories: both stamped, the root not.
  ASSERT_OK(engine_->Commit(Batch().Rename("a/f", "b/f")));
  int64_t t = LastCommit();
  EXPECT_EQ(M("a").mtime_ns, t);
  EXPECT_EQ(M("a").ctime_ns, t);
  EXPECT_EQ(M("b").mtime_ns, t);
  EXPECT_EQ(M("b").ctime_ns, t);
  EXPECT_EQ(M("").mtime_ns, 1'000'000'000);
  EXPECT_EQ(M("b/f").ctime_ns, t);  // the moved entry itself
  // Over an existing target: the target's parent lost one and gained one.
  for (const char* d : {"a", "b"}) Age(d);
  ASSERT_OK(engine_->Commit(Batch().Rename("a/h", "b/g")));
  t = LastCommit();
  EXPECT_EQ(M("a").mtime_ns, t);
  EXPECT_EQ(M("b").mtime_ns, t);
  // Into and out of the root.
  for (const char* d : {"b", ""}) Age(d);
  ASSERT_OK(engine_->Commit(Batch().Rename("b/g", "g")));
  t = LastCommit();
  EXPECT_EQ(M("").mtime_ns, t);
  EXPECT_EQ(M("").ctime_ns, t);
  EXPECT_EQ(M("b").mtime_ns, t);
  // Within one directory.
  Age("");
  ASSERT_OK(engine_->Commit(Batch().Rename("g", "g2")));
  EXPECT_EQ(M("").mtime_ns, LastCommit());
  // Exchange across parents.
  for (const char* d : {"a", "b", ""}) Age(d);
  ASSERT_OK(engine_->Commit(Batch().Put("a/x", "x").Put("b/y", "y")));
  for (const char* d : {"a", "b"}) Age(d);
  ASSERT_OK(engine_->Commit(Batch().Rename("a/x", "b/y", kRenameExchange)));
  EXPECT_EQ(M("a").mtime_ns, LastCommit());
  EXPECT_EQ(M("b").mtime_ns, LastCommit());
  EXPECT_EQ(M("").mtime_ns, 1'000'000'000);
}

// ---- the root ----

TEST_P(EngineMeta, NewStoreRootBelongsToItsCreator) {
  const Meta r = M("");
  EXPECT_EQ(r.type, EntryType::kDir);
  EXPECT_EQ(r.mode, 0755u);
  EXPECT_EQ(r.uid, ::geteuid());
  EXPECT_EQ(r.gid, ::getegid());
  EXPECT_EQ(r.subdirs, 0u);
  EXPECT_GT(r.mtime_ns, 1'700'000'000'000'000'000);
  EXPECT_EQ(r.atime_ns, r.mtime_ns);
  EXPECT_EQ(r.ctime_ns, r.mtime_ns);
  // Listing it does not list it.
  int n = 0;
  ASSERT_OK(engine_->List("", "", [&](const DirEntry&) { return ++n, true; }));
  EXPECT_EQ(n, 0);
}

TEST_P(EngineMeta, RootMetaIsSetAndPersists) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d")));
  Meta m = Meta::Dir(01777);
  m.uid = 1234;
  m.gid = 5678;
  m.atime_ns = 111;
  m.mtime_ns = -222;
  m.ctime_ns = 42;            // ignored: the commit's
  m.subdirs = 99;             // ignored: the engine's
  m.type = EntryType::kFile;  // ignored: the root is a directory
  ASSERT_OK(engine_->Commit(Batch().SetMeta("", m)));
  const int64_t t = LastCommit();
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    auto r = engine_->Get("");
    ASSERT_OK(r.status());
    EXPECT_EQ(r->meta.type, EntryType::kDir);
    EXPECT_EQ(r->meta.mode, 01777u);
    EXPECT_EQ(r->meta.uid, 1234u);
    EXPECT_EQ(r->meta.gid, 5678u);
    EXPECT_EQ(r->meta.atime_ns, 111);
    EXPECT_EQ(r->meta.mtime_ns, -222);
    EXPECT_EQ(r->meta.ctime_ns, t);
    EXPECT_EQ(r->meta.subdirs, 1u);
    auto in_dir = engine_->GetInDirectory("");
    ASSERT_OK(in_dir.status());
    EXPECT_EQ(in_dir->meta, r->meta);
  };
  check("committed");
  ASSERT_OK(engine_->Sync());
  check("synced");
  Open();
  check("reopened");
  // A store whose root was changed and then a sync of an unrelated change: still there.
  ASSERT_OK(engine_->Commit(Batch().Put("f", "x")));
  ASSERT_OK(engine_->Sync());
  Open();
  EXPECT_EQ(M("").mode, 01777u);
  EXPECT_EQ(M("").uid, 1234u);
  EXPECT_EQ(M("").mtime_ns, LastCommit());  // "f" was added to it
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

TEST_P(EngineMeta, RootTakesOnlySetMeta) {
  for (Batch b : {Batch().Put("", "v"), Batch().Mkdir(""), Batch().Symlink("", "t"),
                  Batch().Delete(""), Batch().Rename("", "x"), Batch().Rename("x", "")}) {
    if (b.mutations()[0].op == Mutation::Op::kRename && b.mutations()[0].key == "x") {
      ASSERT_OK(engine_->Commit(Batch().Put("x", "1")));
    }
    EXPECT_EQ(engine_->Commit(b).code(), Code::kInvalidArgument);
  }
  Mutation m;
  m.op = Mutation::Op::kMkdir;
  m.key = "";
  m.exist_ok = true;
  EXPECT_EQ(engine_->Commit(Batch().Add(m)).code(), Code::kInvalidArgument);
}

TEST_P(EngineMeta, FailedBatchLeavesTheRootAsItWas) {
  const Meta before = M("");
  // The first mutation changes the root (a new entry in it), the second fails.
  EXPECT_EQ(engine_->Commit(Batch().Put("a", "1").Delete("missing")).code(), Code::kNotFound);
  EXPECT_EQ(M(""), before);
  Meta m = before;
  m.mode = 0700;
  EXPECT_EQ(engine_->Commit(Batch().SetMeta("", m).Delete("missing")).code(), Code::kNotFound);
  EXPECT_EQ(M(""), before);
}

// ---- atime and explicit times ----

TEST_P(EngineMeta, TimesAreStoredAsGiven) {
  const int64_t kPast2038 = int64_t{1} << 33;  // seconds: past 32-bit time_t
  const std::vector<int64_t> times = {
      0, -1, -86'400'000'000'001, kPast2038 * 1'000'000'000 + 123, INT64_MAX, INT64_MIN + 1};
  Batch b;
  b.Mkdir("d");
  for (size_t i = 0; i < times.size(); ++i) {
    Meta m = Meta::File();
    m.atime_ns = times[i];
    m.mtime_ns = times[times.size() - 1 - i];
    b.Put("d/f" + std::to_string(i), "v", m);
    Meta dm = Meta::Dir();
    dm.atime_ns = times[i];
    dm.mtime_ns = times[i];
    b.Mkdir("d/dir" + std::to_string(i), dm);
    Meta lm = Meta::Symlink();
    lm.atime_ns = times[i];
    b.Symlink("d/l" + std::to_string(i), "t", lm);
  }
  ASSERT_OK(engine_->Commit(b));
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "committed" : "reopened");
    for (size_t i = 0; i < times.size(); ++i) {
      const std::string n = std::to_string(i);
      EXPECT_EQ(M("d/f" + n).atime_ns, times[i]);
      EXPECT_EQ(M("d/f" + n).mtime_ns, times[times.size() - 1 - i]);
      EXPECT_EQ(M("d/dir" + n).atime_ns, times[i]);
      EXPECT_EQ(M("d/dir" + n).mtime_ns, times[i]);
      EXPECT_EQ(M("d/l" + n).atime_ns, times[i]);
    }
    Open();
  }
  // And through SetMeta, on a file and on the root.
  for (int64_t t : times) {
    Meta m = M("d/f0");
    m.atime_ns = t;
    m.mtime_ns = t;
    ASSERT_OK(engine_->Commit(Batch().SetMeta("d/f0", m).SetMeta("", m)));
    EXPECT_EQ(M("d/f0").atime_ns, t);
    EXPECT_EQ(M("d/f0").mtime_ns, t);
    EXPECT_EQ(M("").atime_ns, t);
    EXPECT_EQ(M("").mtime_ns, t);
  }
  Open();
  EXPECT_EQ(M("").atime_ns, times.back());
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

TEST_P(EngineMeta, TimeNowMeansTheCommitsTime) {
  // New entries: atime and mtime kTimeNow are the commit's.
  ASSERT_OK(engine_->Commit(Batch().Put("f", "1").Mkdir("d")));
  int64_t t = LastCommit();
  for (const char* k : {"f", "d"}) {
    EXPECT_EQ(M(k).atime_ns, t) << k;
    EXPECT_EQ(M(k).mtime_ns, t) << k;
    EXPECT_EQ(M(k).ctime_ns, t) << k;
  }
  // Give them atimes; then an overwrite, a SetMeta and an exist_ok mkdir with atime kTimeNow
  // keep them, while mtime kTimeNow is the new commit's.
  for (const char* k : {"f", "d"}) {
    Meta m = M(k);
    m.atime_ns = 777;
    ASSERT_OK(engine_->Commit(Batch().SetMeta(k, m)));
  }
  ASSERT_OK(engine_->Commit(Batch().Put("f", "2")));
  EXPECT_EQ(M("f").atime_ns, 777);
  EXPECT_EQ(M("f").mtime_ns, LastCommit());
  Meta m = M("f");
  m.atime_ns = kTimeNow;
  m.mtime_ns = kTimeNow;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("f", m)));
  EXPECT_EQ(M("f").atime_ns, 777);
  EXPECT_EQ(M("f").mtime_ns, LastCommit());
  Mutation mk;
  mk.op = Mutation::Op::kMkdir;
  mk.key = "d";
  mk.meta = Meta::Dir(0700);
  mk.exist_ok = true;
  ASSERT_OK(engine_->Commit(Batch().Add(mk)));
  EXPECT_EQ(M("d").atime_ns, 777);
  EXPECT_EQ(M("d").mode, 0700u);
  // A put that replaces a file by a new one keeps the old one's atime too; a new key in
  // the same batch as a delete of the old does not.
  ASSERT_OK(engine_->Commit(Batch().Delete("f").Put("f", "3")));
  EXPECT_EQ(M("f").atime_ns, LastCommit());
  // The root: SetMeta with kTimeNow keeps its atime and stamps its mtime.
  Meta r = M("");
  const int64_t root_atime = r.atime_ns;
  r.atime_ns = r.mtime_ns = kTimeNow;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("", r)));
  EXPECT_EQ(M("").atime_ns, root_atime);
  EXPECT_EQ(M("").mtime_ns, LastCommit());
}

// ---- subdirs ----

TEST_P(EngineMeta, SubdirsFollowEveryChange) {
  auto subdirs = [&](const std::string& k) { return M(k).subdirs; };
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a").Mkdir("b").Put("f", "x")));
  EXPECT_EQ(subdirs(""), 2u);
  EXPECT_EQ(subdirs("a"), 0u);
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a/x").Mkdir("a/y").Put("a/file", "1")));
  EXPECT_EQ(subdirs("a"), 2u);
  EXPECT_EQ(subdirs(""), 2u);
  EXPECT_EQ(M("a/file").subdirs, 0u);
  // rmdir.
  ASSERT_OK(engine_->Commit(Batch().Delete("a/y")));
  EXPECT_EQ(subdirs("a"), 1u);
  // A directory renamed across parents moves one; a file moves none.
  ASSERT_OK(engine_->Commit(Batch().Rename("a/x", "b/x")));
  EXPECT_EQ(subdirs("a"), 0u);
  EXPECT_EQ(subdirs("b"), 1u);
  ASSERT_OK(engine_->Commit(Batch().Rename("a/file", "b/file")));
  EXPECT_EQ(subdirs("a"), 0u);
  EXPECT_EQ(subdirs("b"), 1u);
  // Renamed within its parent: no change; a whole subtree keeps its own counts.
  ASSERT_OK(engine_->Commit(Batch().Mkdir("b/x/deep").Rename("b/x", "b/x2")));
  EXPECT_EQ(subdirs("b"), 1u);
  EXPECT_EQ(subdirs("b/x2"), 1u);
  // Up to the root and back.
  ASSERT_OK(engine_->Commit(Batch().Rename("b/x2", "x2")));
  EXPECT_EQ(subdirs(""), 3u);
  EXPECT_EQ(subdirs("b"), 0u);
  ASSERT_OK(engine_->Commit(Batch().Rename("x2", "a/x2")));
  EXPECT_EQ(subdirs(""), 2u);
  EXPECT_EQ(subdirs("a"), 1u);
  // A replaced empty directory counts as removed.
  ASSERT_OK(engine_->Commit(Batch().Mkdir("b/empty").Mkdir("a/src")));
  EXPECT_EQ(subdirs("a"), 2u);
  EXPECT_EQ(subdirs("b"), 1u);
  ASSERT_OK(engine_->Commit(Batch().Rename("a/src", "b/empty")));
  EXPECT_EQ(subdirs("a"), 1u);
  EXPECT_EQ(subdirs("b"), 1u);
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a/e2").Rename("a/e2", "a/x2/deep2")));
  EXPECT_EQ(subdirs("a"), 1u);
  EXPECT_EQ(subdirs("a/x2"), 2u);
  // Same parent, replacing a sibling directory: one fewer.
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a/s1").Mkdir("a/s2")));
  EXPECT_EQ(subdirs("a"), 3u);
  ASSERT_OK(engine_->Commit(Batch().Rename("a/s1", "a/s2")));
  EXPECT_EQ(subdirs("a"), 2u);
  // RENAME_EXCHANGE of a directory with a file across parents: the counts swap sides.
  ASSERT_OK(engine_->Commit(Batch().Put("b/leaf", "l")));
  ASSERT_OK(engine_->Commit(Batch().Rename("a/s2", "b/leaf", kRenameExchange)));
  EXPECT_EQ(subdirs("a"), 1u);
  EXPECT_EQ(subdirs("b"), 2u);
  EXPECT_EQ(M("a/s2").type, EntryType::kFile);
  EXPECT_EQ(M("b/leaf").type, EntryType::kDir);
  // Two directories exchanged: nothing moves.
  ASSERT_OK(engine_->Commit(Batch().Rename("a/x2", "b/leaf", kRenameExchange)));
  EXPECT_EQ(subdirs("a"), 1u);
  EXPECT_EQ(subdirs("b"), 2u);
  EXPECT_EQ(subdirs("b/leaf"), 2u);  // x2's, with it
  // make_parents.
  Mutation m;
  m.op = Mutation::Op::kMkdir;
  m.key = "p/q/r";
  m.meta = Meta::Dir();
  m.make_parents = true;
  ASSERT_OK(engine_->Commit(Batch().Add(m)));
  EXPECT_EQ(subdirs(""), 3u);
  EXPECT_EQ(subdirs("p"), 1u);
  EXPECT_EQ(subdirs("p/q"), 1u);
  EXPECT_EQ(subdirs("p/q/r"), 0u);
  // SetMeta keeps the stored count whatever it is given.
  Meta pm = M("p");
  pm.subdirs = 40;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("p", pm)));
  EXPECT_EQ(subdirs("p"), 1u);
  // What Get says, List says, and a reopened store too.
  const Meta a = M("a"), b = M("b"), root = M("");
  Open();
  EXPECT_EQ(M("a"), a);
  EXPECT_EQ(M("b"), b);
  EXPECT_EQ(M(""), root);
  ASSERT_OK(engine_->List("", "", [&](const DirEntry& d) {
    EXPECT_EQ(d.meta, M(std::string(d.name))) << d.name;
    return true;
  }));
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

// ---- refusals ----

TEST_P(EngineMeta, ReservedNameIsRefused) {
  Mutation mp;
  mp.op = Mutation::Op::kPut;
  mp.key = ".keyfs/stats";
  mp.value = "x";
  mp.meta = Meta::File();
  mp.make_parents = true;
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("f", "1")));
  for (Batch b : {Batch().Put(".keyfs", "x"), Batch().Mkdir(".keyfs"),
                  Batch().Symlink(".keyfs", "t"), Batch().Add(mp), Batch().Rename("d", ".keyfs"),
                  Batch().Rename("f", ".keyfs"), Batch().Mkdir(".keyfs").Put(".keyfs/x", "1")}) {
    Status s = engine_->Commit(b);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.ToString().find(".keyfs is reserved for the mount's control directory"),
              std::string::npos)
        << s.ToString();
  }
  // Only the first component is reserved, and only that exact name.
  ASSERT_OK(engine_->Commit(
      Batch().Put("d/.keyfs", "ok").Put(".keyfsx", "ok").Put(".keyf", "ok").Mkdir("d/.keyfs2")));
  int n = 0;
  ASSERT_OK(engine_->List("", "", [&](const DirEntry& e) {
    EXPECT_NE(e.name, ".keyfs");
    return ++n, true;
  }));
  EXPECT_EQ(n, 4);  // d, f, .keyfsx, .keyf
}

TEST_P(EngineMeta, ValueOverTheLimitIsTooLarge) {
  std::string big(kMaxValueSize + 1, 'x');
  Status s = engine_->Commit(Batch().Put("huge", std::move(big)));
  EXPECT_EQ(s.code(), Code::kTooLarge) << s.ToString();
  EXPECT_NE(s.ToString().find("'huge'"), std::string::npos) << s.ToString();
  EXPECT_TRUE(engine_->Get("huge").status().IsNotFound());
  // The batch is all-or-nothing.
  s = engine_->Commit(Batch().Put("small", "1").Put("huge2", std::string(kMaxValueSize + 1, 'y')));
  EXPECT_EQ(s.code(), Code::kTooLarge);
  EXPECT_TRUE(engine_->Get("small").status().IsNotFound());
}

// ---- change events ----

TEST_P(EngineMeta, OwnCommitsListTheDirectoriesTheyChanged) {
  std::mutex mu;
  std::vector<std::vector<std::string>> events;
  engine_->SetChangeListener([&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(mu);
    EXPECT_FALSE(ev.external);
    events.push_back(ev.changed);
  });
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a").Mkdir("a/b")));
  ASSERT_OK(engine_->Commit(Batch().Put("a/b/f", "1")));
  ASSERT_OK(engine_->Commit(Batch().Put("a/b/f", "2")));  // an overwrite: only the file
  Meta r = M("");
  r.mode = 0700;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("", r)));
  ASSERT_OK(engine_->Commit(Batch().Mkdir("c").Rename("a/b/f", "c/f")));
  std::lock_guard<std::mutex> l(mu);
  ASSERT_EQ(events.size(), 5u);
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(sorted(events[0]), (std::vector<std::string>{"", "a", "a/b"}));
  EXPECT_EQ(sorted(events[1]), (std::vector<std::string>{"a/b", "a/b/f"}));
  EXPECT_EQ(sorted(events[2]), (std::vector<std::string>{"a/b/f"}));
  EXPECT_EQ(sorted(events[3]), (std::vector<std::string>{""}));
  EXPECT_EQ(sorted(events[4]), (std::vector<std::string>{"", "a/b", "a/b/f", "c", "c/f"}));
}

TEST_P(EngineMeta, ExternalChangesListTheRootAndDirectories) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a").Mkdir("b").Put("b/keep", "1")));
  ASSERT_OK(engine_->Sync());
  OpenOptions o;
  o.read_only = true;
  auto reader = OpenStore(path_, o);
  ASSERT_OK(reader.status());
  std::mutex mu;
  std::vector<ChangeEvent> events;
  (*reader)->SetChangeListener([&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(mu);
    events.push_back(ev);
  });
  auto next = [&]() -> std::vector<std::string> {
    EXPECT_OK(engine_->Sync());
    EXPECT_OK((*reader)->Refresh());
    std::lock_guard<std::mutex> l(mu);
    if (events.empty()) return {"<no event>"};
    EXPECT_TRUE(events.back().external);
    std::vector<std::string> v = events.back().changed;
    events.clear();
    std::sort(v.begin(), v.end());
    return v;
  };
  ASSERT_OK(engine_->Commit(Batch().Put("a/f", "1")));
  EXPECT_EQ(next(), (std::vector<std::string>{"a", "a/f"}));
  Meta r = M("");
  r.uid = 4242;
  ASSERT_OK(engine_->Commit(Batch().SetMeta("", r)));
  EXPECT_EQ(next(), (std::vector<std::string>{""}));
  EXPECT_EQ((*reader)->Get("")->meta.uid, 4242u);
  ASSERT_OK(engine_->Commit(Batch().Mkdir("a/sub")));
  EXPECT_EQ(next(), (std::vector<std::string>{"a", "a/sub"}));
  EXPECT_EQ((*reader)->Get("a")->meta.subdirs, 1u);
  ASSERT_OK(engine_->Commit(Batch().Put("top", "1")));
  EXPECT_EQ(next(), (std::vector<std::string>{"", "top"}));
  ASSERT_OK(engine_->Commit(Batch().Delete("b/keep")));
  EXPECT_EQ(next(), (std::vector<std::string>{"b", "b/keep"}));
}

INSTANTIATE_TEST_SUITE_P(Engines, EngineMeta,
                         ::testing::Values(EngineKind::kSnapshot, EngineKind::kDets),
                         [](const auto& info) { return std::string(EngineKindName(info.param)); });

}  // namespace
}  // namespace keyfs
