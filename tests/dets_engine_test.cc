// The dets engine: the DetsPlus behaviours (lookups before and after syncs, insert-new,
// overwrites, reopen, deletes shrinking the file, deleting everything during a running
// sync), tree semantics across the buffer layers and the file, the writer lock, timer and
// memory-limit syncs, readers during syncs, and the same random batches as the snapshot
// engine with syncs in between.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keyfs/store/engine.h"
#include "testutil.h"

namespace keyfs {
namespace {

using Code = Status::Code;

std::string Key(int i) { return "k" + std::to_string(i); }
std::string Val(int i, int gen = 0) {
  return "value-" + std::to_string(i) + "-" + std::to_string(gen);
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

class DetsEngineTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  OpenOptions Options() const {
    OpenOptions o;
    o.create = true;
    o.kind = EngineKind::kDets;
    o.sync_interval_s = 0;  // syncs only when a test asks (or closes)
    o.buffer_limit_bytes = limit_;
    return o;
  }
  void Reopen() {
    engine_.reset();
    auto e = OpenStore(path_, Options());
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(*e);
  }
  Status Put(const std::string& k, const std::string& v) {
    return engine_->Commit(Batch().Put(k, v));
  }
  std::string GetValue(const std::string& k) { return GetValue(*engine_, k); }
  static std::string GetValue(const Engine& e, const std::string& k) {
    auto r = e.Get(k);
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
  void PutRange(int from, int to, int gen = 0) {
    for (int i = from; i <= to;) {
      Batch b;
      for (int j = 0; j < 500 && i <= to; ++j, ++i) b.Put(Key(i), Val(i, gen));
      ASSERT_OK(engine_->Commit(b));
    }
  }
  void ExpectRange(int from, int to, int gen = 0) {
    for (int i = from; i <= to; ++i) {
      ASSERT_EQ(GetValue(Key(i)), Val(i, gen)) << i;
    }
  }

  test::TempDir dir_;
  std::string path_ = dir_.Join("store");
  uint64_t limit_ = 0;
  std::unique_ptr<Engine> engine_;
};

TEST_F(DetsEngineTest, NewStoreIsEmpty) {
  EXPECT_EQ(engine_->name(), "dets");
  EXPECT_TRUE(Names("").empty());
  auto root = engine_->Get("");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->meta.type, EntryType::kDir);
  EngineStats st = engine_->Stats();
  EXPECT_EQ(st.engine, "dets");
  EXPECT_EQ(st.entries, 0u);
  EXPECT_EQ(st.generation, 1u);
  ASSERT_OK(VerifyStore(path_));
  auto kind = DetectEngine(path_);
  ASSERT_TRUE(kind.ok());
  EXPECT_EQ(*kind, EngineKind::kDets);
}

// DetsPlus: keys 1..5000 found before and after a sync; then 5000..10000 added, synced, and
// all found.
TEST_F(DetsEngineTest, KeysFoundBeforeAndAfterSync) {
  PutRange(1, 5000);
  ExpectRange(1, 5000);
  EXPECT_EQ(engine_->Stats().entries, 5000u);
  EXPECT_EQ(engine_->Stats().buffered_writes, 5000u);
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(engine_->Stats().buffered_writes, 0u);
  EXPECT_EQ(engine_->Stats().generation, 2u);
  ExpectRange(1, 5000);
  PutRange(5000, 10000);
  ExpectRange(1, 10000);
  ASSERT_OK(engine_->Sync());
  ExpectRange(1, 10000);
  EngineStats st = engine_->Stats();
  EXPECT_EQ(st.entries, 10000u);
  EXPECT_EQ(st.files, 10000u);
  EXPECT_EQ(GetValue("k10001"), "<not found>");
  EXPECT_EQ(GetValue("k0"), "<not found>");
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

// Values of every size class land whole in a fresh write buffer (one starts after each
// sync): the buffer's memory blocks grow with it, and a record bigger than the next block
// must still get a block that holds it.
TEST_F(DetsEngineTest, ValuesOfEverySizeRightAfterASync) {
  const size_t sizes[] = {
      0,      1,         4095,          64 << 10,      (64 << 10) + 1, 100 << 10,
      131072, 200 << 10, (1 << 20) - 8, (1 << 20) + 8, 3 << 20,        (4 << 20) + 1};
  for (size_t n : sizes) {
    SCOPED_TRACE(n);
    ASSERT_OK(engine_->Sync());
    const std::string key = "v" + std::to_string(n);
    const std::string value(n, static_cast<char>('a' + n % 26));
    ASSERT_OK(Put(key, value));
    ASSERT_OK(Put(key + "-next", "after"));  // allocated behind it in the same buffer
    EXPECT_EQ(GetValue(key), value);
    EXPECT_EQ(GetValue(key + "-next"), "after");
  }
  ASSERT_OK(engine_->Sync());
  Reopen();
  for (size_t n : sizes) {
    EXPECT_EQ(GetValue("v" + std::to_string(n)).size(), n);
  }
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

// DetsPlus insert_new: an exclusive put of an existing key fails, buffered or synced.
TEST_F(DetsEngineTest, InsertNewSemantics) {
  Mutation m;
  m.op = Mutation::Op::kPut;
  m.key = "a";
  m.value = "1";
  m.exclusive = true;
  ASSERT_OK(engine_->Commit(Batch().Add(m)));
  m.value = "2";
  EXPECT_EQ(engine_->Commit(Batch().Add(m)).code(), Code::kAlreadyExists);
  EXPECT_EQ(GetValue("a"), "1");
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(engine_->Commit(Batch().Add(m)).code(), Code::kAlreadyExists);
  EXPECT_EQ(GetValue("a"), "1");
  ASSERT_OK(engine_->Commit(Batch().Delete("a")));
  ASSERT_OK(engine_->Commit(Batch().Add(m)));  // absent again (a tombstone over the file)
  EXPECT_EQ(GetValue("a"), "2");
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(GetValue("a"), "2");
}

TEST_F(DetsEngineTest, OverwritesVisibleBeforeAndAfterSync) {
  PutRange(1, 1000, 0);
  ASSERT_OK(engine_->Sync());
  PutRange(1, 1000, 1);
  ExpectRange(1, 1000, 1);
  ASSERT_OK(engine_->Sync());
  ExpectRange(1, 1000, 1);
  PutRange(1, 500, 2);
  PutRange(1, 250, 3);
  ExpectRange(1, 250, 3);
  ExpectRange(251, 500, 2);
  ExpectRange(501, 1000, 1);
  ASSERT_OK(engine_->Sync());
  ExpectRange(1, 250, 3);
  ExpectRange(251, 500, 2);
  ExpectRange(501, 1000, 1);
  EXPECT_EQ(engine_->Stats().entries, 1000u);
}

TEST_F(DetsEngineTest, ReopenKeepsData) {
  PutRange(1, 3000);
  ASSERT_OK(engine_->Sync());
  PutRange(3001, 4000);  // buffered only: the close syncs it
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/x", "in a dir").Symlink("l", "d/x")));
  ASSERT_NO_FATAL_FAILURE(Reopen());
  ExpectRange(1, 4000);
  EXPECT_EQ(GetValue("d/x"), "in a dir");
  auto l = engine_->Get("l");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->meta.type, EntryType::kSymlink);
  EXPECT_EQ(l->value, "d/x");
  EXPECT_EQ(engine_->Stats().entries, 4003u);
  EXPECT_EQ(engine_->Stats().dirs, 1u);
  EXPECT_EQ(engine_->Stats().symlinks, 1u);
  EXPECT_EQ(engine_->Stats().buffered_writes, 0u);
  // Versions keep growing across reopens.
  uint64_t v1 = engine_->Get("d/x")->version;
  ASSERT_OK(Put("d/x", "again"));
  EXPECT_GT(engine_->Get("d/x")->version, v1);
}

TEST_F(DetsEngineTest, DeletesShrinkTheFileAfterSync) {
  PutRange(1, 5000);
  ASSERT_OK(engine_->Sync());
  const uint64_t full = FileSize(path_);
  for (int i = 1; i <= 5000; i += 2) ASSERT_OK(engine_->Commit(Batch().Delete(Key(i))));
  EXPECT_EQ(GetValue(Key(1)), "<not found>");
  EXPECT_EQ(FileSize(path_), full);  // nothing synced yet
  ASSERT_OK(engine_->Sync());
  const uint64_t half = FileSize(path_);
  EXPECT_LT(half, full * 3 / 4);
  EXPECT_EQ(engine_->Stats().entries, 2500u);
  for (int i = 1; i <= 5000; ++i) {
    ASSERT_EQ(GetValue(Key(i)), i % 2 ? "<not found>" : Val(i)) << i;
  }
  for (int i = 2; i <= 5000; i += 2) ASSERT_OK(engine_->Commit(Batch().Delete(Key(i))));
  ASSERT_OK(engine_->Sync());
  EXPECT_LT(FileSize(path_), half / 10);
  EXPECT_EQ(engine_->Stats().entries, 0u);
  EXPECT_TRUE(Names("").empty());
}

// A sync with a few changes copies the untouched buckets and key index blocks byte for byte;
// the result must still be exact and verify clean.
TEST_F(DetsEngineTest, SmallSyncCopiesUntouchedParts) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d")));
  for (int i = 1; i <= 20000;) {
    Batch b;
    for (int j = 0; j < 1000 && i <= 20000; ++j, ++i) b.Put("d/" + Key(i), Val(i));
    ASSERT_OK(engine_->Commit(b));
  }
  ASSERT_OK(engine_->Sync());
  ASSERT_OK(Put("d/" + Key(20001), "new"));
  ASSERT_OK(Put("d/" + Key(77), "changed"));
  ASSERT_OK(engine_->Commit(Batch().Delete("d/" + Key(5))));
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(engine_->Stats().entries, 20001u);
  EXPECT_EQ(GetValue("d/" + Key(20001)), "new");
  EXPECT_EQ(GetValue("d/" + Key(77)), "changed");
  EXPECT_EQ(GetValue("d/" + Key(5)), "<not found>");
  EXPECT_EQ(GetValue("d/" + Key(6)), Val(6));
  EXPECT_EQ(Names("d").size(), 20000u);
  engine_.reset();
  std::vector<std::string> report;
  ASSERT_OK(VerifyStore(path_, &report));
  ASSERT_NO_FATAL_FAILURE(Reopen());
  EXPECT_EQ(engine_->Stats().entries, 20001u);
  EXPECT_EQ(GetValue("d/" + Key(19999)), Val(19999));
}

// Everything is deleted while a sync of a large buffer runs; the deletes land in the new
// buffer and the next sync empties the file.
TEST_F(DetsEngineTest, DeleteAllDuringRunningSync) {
  PutRange(1, 20000);
  ASSERT_OK(engine_->Sync());
  PutRange(20001, 60000);
  std::atomic<bool> synced{false};
  std::thread syncer([&] {
    EXPECT_OK(engine_->Sync());
    synced = true;
  });
  // Deletes run while the sync is (most likely) merging.
  while (!engine_->Stats().syncing && !synced) std::this_thread::yield();
  bool deleted_during_sync = engine_->Stats().syncing;
  for (int i = 1; i <= 60000;) {
    Batch b;
    for (int j = 0; j < 1000 && i <= 60000; ++j, ++i) b.Delete(Key(i));
    ASSERT_OK(engine_->Commit(b));
  }
  syncer.join();
  EXPECT_TRUE(Names("").empty());
  EXPECT_EQ(engine_->Stats().entries, 0u);
  ASSERT_OK(engine_->Sync());
  EXPECT_TRUE(Names("").empty());
  EXPECT_EQ(engine_->Stats().entries, 0u);
  ASSERT_NO_FATAL_FAILURE(Reopen());
  EXPECT_TRUE(Names("").empty());
  EXPECT_EQ(GetValue(Key(1)), "<not found>");
  RecordProperty("deleted_during_sync", deleted_during_sync ? "yes" : "no");
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

// Entries of one directory spread over the file, a frozen buffer and the active buffer.
TEST_F(DetsEngineTest, TreeSemanticsAcrossLayers) {
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Mkdir("d/sub").Put("d/a", "A").Put("d/sub/x", "X")));
  ASSERT_OK(engine_->Sync());  // in the file
  ASSERT_OK(engine_->Commit(Batch().Put("d/b", "B").Put("d/sub/y", "Y")));
  ASSERT_OK(engine_->Sync());
  ASSERT_OK(engine_->Commit(Batch().Put("d/c", "C").Delete("d/a")));  // buffered
  EXPECT_EQ(Names("d"), (std::vector<std::string>{"b", "c", "sub"}));
  EXPECT_EQ(Names("d", "b"), (std::vector<std::string>{"c", "sub"}));
  EXPECT_EQ(Names("d/sub"), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(engine_->Commit(Batch().Delete("d/sub")).code(), Code::kNotEmpty);
  EXPECT_EQ(engine_->Commit(Batch().Put("d/b/z", "")).code(), Code::kNotDirectory);
  EXPECT_EQ(engine_->Get("d/b/z").status().code(), Code::kNotDirectory);
  EXPECT_EQ(engine_->Commit(Batch().Put("nodir/z", "")).code(), Code::kNotFound);
  EXPECT_EQ(engine_->Commit(Batch().Put("d", "")).code(), Code::kIsDirectory);
  // Rename the whole directory: keys from every layer move.
  ASSERT_OK(engine_->Commit(Batch().Rename("d", "e")));
  EXPECT_EQ(Names(""), (std::vector<std::string>{"e"}));
  EXPECT_EQ(Names("e"), (std::vector<std::string>{"b", "c", "sub"}));
  EXPECT_EQ(GetValue("e/sub/x"), "X");
  EXPECT_EQ(GetValue("e/sub/y"), "Y");
  EXPECT_EQ(GetValue("d/b"), "<not found>");
  EXPECT_EQ(engine_->List("d", "", [](const DirEntry&) { return true; }).code(), Code::kNotFound);
  EXPECT_EQ(engine_->List("e/b", "", [](const DirEntry&) { return true; }).code(),
            Code::kNotDirectory);
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(Names("e"), (std::vector<std::string>{"b", "c", "sub"}));
  EXPECT_EQ(Names("e/sub"), (std::vector<std::string>{"x", "y"}));
  // Delete the subtree key by key, then the directory (HasChildren sees the tombstones).
  ASSERT_OK(engine_->Commit(Batch().Delete("e/sub/x").Delete("e/sub/y").Delete("e/sub")));
  EXPECT_EQ(Names("e"), (std::vector<std::string>{"b", "c"}));
  // Exchange and no-replace.
  ASSERT_OK(engine_->Commit(Batch().Rename("e/b", "e/c", kRenameExchange)));
  EXPECT_EQ(GetValue("e/b"), "C");
  EXPECT_EQ(GetValue("e/c"), "B");
  EXPECT_EQ(engine_->Commit(Batch().Rename("e/b", "e/c", kRenameNoReplace)).code(),
            Code::kAlreadyExists);
  EngineStats st = engine_->Stats();
  EXPECT_EQ(st.entries, 3u);
  EXPECT_EQ(st.dirs, 1u);
  EXPECT_EQ(st.files, 2u);
  engine_.reset();
  ASSERT_OK(VerifyStore(path_));
}

TEST_F(DetsEngineTest, ListingPagesThroughABigDirectory) {
  ASSERT_OK(
      engine_->Commit(Batch().Mkdir("big").Mkdir("big/k100-dir").Put("big/k100-dir/inner", "")));
  for (int i = 0; i < 3000; i += 2) ASSERT_OK(Put("big/" + Key(i), ""));
  ASSERT_OK(engine_->Sync());
  for (int i = 1; i < 3000; i += 2) ASSERT_OK(Put("big/" + Key(i), ""));
  std::vector<std::string> all, page;
  std::string after;
  do {
    page.clear();
    ASSERT_OK(engine_->List("big", after, [&](const DirEntry& d) {
      page.emplace_back(d.name);
      return page.size() < 100;
    }));
    all.insert(all.end(), page.begin(), page.end());
    if (!page.empty()) after = page.back();
  } while (!page.empty());
  std::vector<std::string> want;
  for (int i = 0; i < 3000; ++i) want.push_back(Key(i));
  want.push_back("k100-dir");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(all, want);
}

TEST_F(DetsEngineTest, SecondWriterIsBusyReadersAreNot) {
  ASSERT_OK(Put("a", "1"));
  ASSERT_OK(engine_->Sync());
  ASSERT_OK(Put("a", "2"));  // buffered, not durable
  auto second = OpenStore(path_, Options());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kBusy);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(::getpid())), std::string::npos)
      << second.status().ToString();
  OpenOptions ro;
  ro.read_only = true;
  auto reader = OpenStore(path_, ro);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(GetValue(**reader, "a"), "1");  // the last durable state
  EXPECT_EQ((*reader)->Commit(Batch().Put("b", "")).code(), Code::kReadOnly);
  ASSERT_OK(engine_->Sync());
  ASSERT_OK((*reader)->Refresh());
  EXPECT_EQ(GetValue(**reader, "a"), "2");
  engine_.reset();  // releases the lock
  auto again = OpenStore(path_, Options());
  EXPECT_TRUE(again.ok()) << again.status().ToString();
}

TEST_F(DetsEngineTest, TimerSyncs) {
  engine_.reset();
  OpenOptions o = Options();
  o.sync_interval_s = 1;
  auto e = OpenStore(path_, o);
  ASSERT_TRUE(e.ok());
  engine_ = std::move(*e);
  ASSERT_OK(Put("t", "timer"));
  OpenOptions ro;
  ro.read_only = true;
  bool seen = false;
  for (int i = 0; i < 100 && !seen; ++i) {  // up to 10 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto reader = OpenStore(path_, ro);
    ASSERT_TRUE(reader.ok());
    seen = (*reader)->Get("t").ok();
  }
  EXPECT_TRUE(seen);
  // The new file is renamed into place before the engine counts the sync as done.
  for (int i = 0; i < 100 && engine_->Stats().syncs == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GE(engine_->Stats().syncs, 1u);
  EXPECT_GE(engine_->Stats().rebuilds, 1u);
}

// A small buffer limit: syncs start on their own; writers wait but are never dropped.
TEST_F(DetsEngineTest, BufferLimitSyncsAndBackPressure) {
  limit_ = 2 << 20;
  ASSERT_NO_FATAL_FAILURE(Reopen());
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; i < 5000; ++i) {
        EXPECT_OK(Put("w" + std::to_string(w) + "-" + std::to_string(i), std::string(200, 'x')));
      }
    });
  }
  for (auto& t : writers) t.join();
  EngineStats st = engine_->Stats();
  EXPECT_EQ(st.entries, 20000u);
  EXPECT_GE(st.rebuilds, 2u);  // the limit started syncs
  for (int w = 0; w < 4; ++w) {
    for (int i = 0; i < 5000; i += 97) {
      ASSERT_EQ(GetValue("w" + std::to_string(w) + "-" + std::to_string(i)), std::string(200, 'x'));
    }
  }
}

// Readers never miss a key while syncs publish new files under them.
TEST_F(DetsEngineTest, ReadersDuringSyncs) {
  PutRange(1, 2000);
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      std::mt19937 rng(r);
      while (!stop) {
        int i = 1 + static_cast<int>(rng() % 2000);
        auto v = engine_->Get(Key(i));
        if (!v.ok() || v->value.substr(0, 6) != "value-") ++errors;
        std::vector<std::string> names;
        if (rng() % 64 == 0 && !engine_
                                    ->List("", "",
                                           [&](const DirEntry& d) {
                                             names.emplace_back(d.name);
                                             return true;
                                           })
                                    .ok()) {
          ++errors;
        }
        if (!names.empty() && names.size() < 2000) ++errors;
      }
    });
  }
  for (int round = 1; round <= 10; ++round) {
    PutRange(1, 2000, round);
    ASSERT_OK(engine_->Sync());
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(errors.load(), 0);
  ExpectRange(1, 2000, 10);
}

// Misses on a store with nothing buffered take no lock (the file alone answers them): a
// commit must withdraw that path before its keys are visible, and a file replaced by a sync
// or a refresh must outlive the readers still using it.
TEST_F(DetsEngineTest, LockFreeMissesFollowCommitsAndSyncs) {
  PutRange(1, 500);
  ASSERT_OK(engine_->Sync());
  OpenOptions ro;
  ro.read_only = true;
  auto reader = OpenStore(path_, ro);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      const Engine& e = r == 0 ? *engine_ : **reader;
      for (uint64_t n = 0; !stop; ++n) {
        auto miss = e.Get("absent-" + std::to_string(n % 1000));
        if (miss.ok() || !miss.status().IsNotFound()) ++errors;
        auto hit = e.Get(Key(1 + static_cast<int>(n % 500)));
        if (!hit.ok() || hit->value != Val(1 + static_cast<int>(n % 500))) ++errors;
      }
    });
  }
  for (int round = 0; round < 50; ++round) {
    const std::string k = "new-" + std::to_string(round);
    EXPECT_TRUE(engine_->Get(k).status().IsNotFound()) << round;  // asked of the quiet file
    ASSERT_OK(Put(k, "v"));
    EXPECT_EQ(GetValue(k), "v") << round;  // visible at once, from the buffer
    ASSERT_OK(engine_->Sync());
    EXPECT_EQ(GetValue(k), "v") << round;  // and from the new file
    ASSERT_OK((*reader)->Refresh());
    EXPECT_EQ(GetValue(**reader, k), "v") << round;
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(errors.load(), 0);
}

TEST_F(DetsEngineTest, ListenerSeesChangedKeys) {
  std::vector<std::string> seen;
  engine_->SetChangeListener([&](const ChangeEvent& ev) {
    seen.insert(seen.end(), ev.changed.begin(), ev.changed.end());
  });
  ASSERT_OK(engine_->Commit(Batch().Mkdir("d").Put("d/a", "1")));
  ASSERT_OK(engine_->Commit(Batch().Rename("d", "e")));
  // The root ("") changed both times: an entry was added to it, then one renamed in it.
  EXPECT_EQ(seen, (std::vector<std::string>{"", "d", "d/a", "", "d", "d/a", "e", "e/a"}));
}

TEST_F(DetsEngineTest, StatsAreExactWithBufferedWrites) {
  PutRange(1, 100);
  ASSERT_OK(engine_->Sync());
  ASSERT_OK(Put(Key(1), "overwrite"));  // no new entry
  ASSERT_OK(Put("new", "12345"));
  ASSERT_OK(engine_->Commit(Batch().Delete(Key(2))));
  ASSERT_OK(engine_->Commit(Batch().Mkdir("dir")));
  EngineStats st = engine_->Stats();
  EXPECT_EQ(st.entries, 101u);
  EXPECT_EQ(st.files, 100u);
  EXPECT_EQ(st.dirs, 1u);
  uint64_t values = 0;
  for (int i = 3; i <= 100; ++i) values += Val(i).size();
  values += std::string("overwrite").size() + 5;
  EXPECT_EQ(st.value_bytes, values);
  ASSERT_OK(engine_->Sync());
  EngineStats after = engine_->Stats();
  EXPECT_EQ(after.entries, 101u);
  EXPECT_EQ(after.value_bytes, values);
  bool have_bloom = false;
  for (const auto& [k, v] : after.extra) have_bloom |= k == "bloom bits";
  EXPECT_TRUE(have_bloom);
}

// A failed batch leaves nothing behind, in the buffer or after a sync.
TEST_F(DetsEngineTest, FailedBatchLeavesNoTrace) {
  ASSERT_OK(Put("a", "1"));
  Batch b;
  b.Put("b", "2").Put("a", "changed").Delete("missing");
  EXPECT_EQ(engine_->Commit(b).code(), Code::kNotFound);
  EXPECT_EQ(GetValue("a"), "1");
  EXPECT_EQ(GetValue("b"), "<not found>");
  EXPECT_EQ(Names(""), std::vector<std::string>{"a"});
  EXPECT_EQ(engine_->Stats().entries, 1u);
  ASSERT_OK(engine_->Sync());
  EXPECT_EQ(Names(""), std::vector<std::string>{"a"});
  EXPECT_EQ(engine_->Stats().entries, 1u);
}

// The same random batches against the dets engine (syncing at random moments, some while
// commits run) and the snapshot engine: every status and every final state agree.
TEST(DetsVsSnapshot, RandomBatchesWithSyncs) {
  test::TempDir dir;
  OpenOptions o;
  o.create = true;
  o.kind = EngineKind::kSnapshot;
  auto snap = OpenStore(dir.Join("snap"), o);
  ASSERT_TRUE(snap.ok());
  o.kind = EngineKind::kDets;
  o.sync_interval_s = 0;
  o.buffer_limit_bytes = 64 << 10;  // limit syncs too
  auto dets = OpenStore(dir.Join("dets"), o);
  ASSERT_TRUE(dets.ok());
  std::mt19937_64 rng(GTEST_FLAG_GET(random_seed) + 77);
  static const char* kNames[] = {"a", "b", "c", "dd"};
  auto key = [&] {
    std::string k;
    for (int i = 1 + static_cast<int>(rng() % 3); i > 0; --i) {
      if (!k.empty()) k += '/';
      k += kNames[rng() % 4];
    }
    return k;
  };
  std::atomic<bool> stop{false};
  std::thread background([&] {
    while (!stop) {
      EXPECT_OK((*dets)->Sync());
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });
  for (int step = 0; step < 4000; ++step) {
    Batch b;
    for (int n = rng() % 4 == 0 ? 3 : 1; n > 0; --n) {
      Mutation m;
      m.key = key();
      int op = static_cast<int>(rng() % 100);
      if (op < 35) {
        m.op = Mutation::Op::kPut;
        m.value = test::RandomBytes(rng, rng() % 300);
        m.meta = Meta::File(0600);
        m.make_parents = rng() % 3 == 0;
      } else if (op < 55) {
        m.op = Mutation::Op::kMkdir;
        m.meta = Meta::Dir();
        m.make_parents = rng() % 3 == 0;
      } else if (op < 75) {
        m.op = Mutation::Op::kDelete;
      } else {
        m.op = Mutation::Op::kRename;
        m.target = key();
        m.rename_flags = rng() % 4 == 0 ? kRenameExchange : kRenameNone;
      }
      b.Add(m);
    }
    Status want = (*snap)->Commit(b);
    Status got = (*dets)->Commit(b);
    ASSERT_EQ(Status::CodeName(got.code()), std::string(Status::CodeName(want.code())))
        << "step " << step << ": " << got.ToString() << " vs " << want.ToString();
  }
  stop = true;
  background.join();
  // Compare every entry, walking both trees.
  std::function<void(const std::string&)> compare = [&](const std::string& d) {
    std::vector<std::pair<std::string, EntryType>> a, b;
    ASSERT_OK((*snap)->List(d, "", [&](const DirEntry& e) {
      a.emplace_back(std::string(e.name), e.meta.type);
      return true;
    }));
    ASSERT_OK((*dets)->List(d, "", [&](const DirEntry& e) {
      b.emplace_back(std::string(e.name), e.meta.type);
      return true;
    }));
    ASSERT_EQ(a, b) << "dir '" << d << "'";
    for (const auto& [name, type] : a) {
      std::string k = d.empty() ? name : d + "/" + name;
      auto x = (*snap)->Get(k);
      auto y = (*dets)->Get(k);
      ASSERT_TRUE(x.ok() && y.ok()) << k;
      ASSERT_EQ(x->value, y->value) << k;
      if (type == EntryType::kDir) compare(k);
    }
  };
  compare("");
  EXPECT_EQ((*snap)->Stats().entries, (*dets)->Stats().entries);
  ASSERT_OK((*dets)->Sync());
  compare("");
  dets->reset();
  ASSERT_OK(VerifyStore(dir.Join("dets")));
}

}  // namespace
}  // namespace keyfs
