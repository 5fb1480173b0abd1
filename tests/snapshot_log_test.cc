// The snapshot engine's commit log (FORMAT.md 2.10) and the delta index it feeds: records
// round-trip; every damaged byte is caught; a torn tail is dropped and cut off by the next
// writer, damage before intact records is Corruption; the delta index keeps every version
// of a key through its growth; merges leave the same content on a new base.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "format.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "snapshot/commit_log.h"
#include "snapshot/delta.h"
#include "testutil.h"

namespace keyfs {
namespace {

using test::ReadAll;
using test::TempDir;
using test::WriteAll;

std::string Record(uint64_t gen) {
  LogRecordWriter w(gen, 1234);
  Meta root = Meta::Dir(0700);
  root.subdirs = 1;
  w.SetRoot(root, gen);
  LogEntry a;
  a.key = "a";
  a.live = true;
  a.meta = Meta::Dir(0755);
  a.version = gen;
  w.Add(a);
  LogEntry b;
  b.key = "a/file";
  b.live = true;
  b.meta = Meta::File(0640);
  b.meta.mtime_ns = -5;
  b.version = gen;
  b.value = "hello, log";
  w.Add(b);
  LogEntry gone;
  gone.key = "old";
  w.Add(gone);
  return w.Finish();
}

TEST(CommitLog, RecordRoundTrips) {
  const std::string bytes = Record(7);
  ASSERT_EQ(bytes.size() % 8, 0u);
  LogRecord rec;
  Status why;
  ASSERT_EQ(ParseLogRecord(bytes, 64, "log", &rec, &why), LogParse::kOk) << why.ToString();
  EXPECT_EQ(rec.generation, 7u);
  EXPECT_EQ(rec.commit_time_ns, 1234);
  EXPECT_EQ(rec.size, bytes.size());
  ASSERT_TRUE(rec.root.has_value());
  EXPECT_EQ(rec.root->mode, 0700u);
  EXPECT_EQ(rec.root->subdirs, 1u);
  ASSERT_EQ(rec.entries.size(), 3u);
  EXPECT_EQ(rec.entries[0].key, "a");
  EXPECT_EQ(rec.entries[0].meta.type, EntryType::kDir);
  EXPECT_EQ(rec.entries[1].value, "hello, log");
  EXPECT_EQ(rec.entries[1].meta.mode, 0640u);
  EXPECT_EQ(rec.entries[1].meta.mtime_ns, -5);
  EXPECT_FALSE(rec.entries[2].live);
  EXPECT_EQ(ParseLogRecord("", 64, "log", &rec, &why), LogParse::kEnd);
}

// No damaged copy of a record parses as a record: a flipped bit anywhere is a bad magic,
// length or checksum; a cut anywhere is a short record.
TEST(CommitLog, EveryDamagedByteAndEveryCutIsCaught) {
  const std::string good = Record(3);
  LogRecord rec;
  Status why;
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x10;
    EXPECT_NE(ParseLogRecord(bad, 64, "log", &rec, &why), LogParse::kOk) << "byte " << i;
    EXPECT_TRUE(why.IsCorruption()) << "byte " << i;
  }
  for (size_t n = 1; n < good.size(); ++n) {
    EXPECT_EQ(ParseLogRecord(good.substr(0, n), 64, "log", &rec, &why), LogParse::kTorn)
        << "cut at " << n;
  }
  // Intact follows damage: found at any 8-aligned offset after it.
  EXPECT_TRUE(IntactRecordFollows(std::string(16, 'x') + good));
  EXPECT_FALSE(IntactRecordFollows(std::string(16, 'x') + good.substr(0, good.size() - 1)));
}

TEST(CommitLog, HeaderIsChecked) {
  const std::string h = EncodeLogHeader(42, 99);
  uint64_t base = 0;
  ASSERT_OK(ParseLogHeader(h, "log", &base));
  EXPECT_EQ(base, 42u);
  for (size_t i = 0; i < h.size(); ++i) {
    std::string bad = h;
    bad[i] ^= 1;
    EXPECT_TRUE(ParseLogHeader(bad, "log", &base).IsCorruption()) << "byte " << i;
  }
  EXPECT_TRUE(ParseLogHeader(h.substr(0, 63), "log", &base).IsCorruption());
}

// Every key added keeps every state it had, through every growth of the index: a view at
// generation g finds the state of g, and an index published before a growth still finds
// the keys it knew.
TEST(DeltaIndex, KeepsEveryVersionThroughGrowth) {
  DeltaWriter w;
  std::vector<std::shared_ptr<const DeltaIndex>> published;
  constexpr int kKeys = 3000;
  for (int i = 0; i < kKeys; ++i) {
    const std::string k = "d" + std::to_string(i % 37) + "/k" + std::to_string(i);
    DeltaState s;
    s.gen = static_cast<uint64_t>(i) + 1;
    s.live = true;
    s.value = k;
    w.Add(k, format::HashKey(k), s);
    if (i % 2 == 0) {  // a second state of the same key, one generation later
      DeltaState t = s;
      t.gen = s.gen + 1;
      t.live = false;
      w.Add(k, format::HashKey(k), t);
    }
    if (i % 500 == 0) published.push_back(w.index());
  }
  EXPECT_EQ(w.key_count(), static_cast<uint64_t>(kKeys));
  for (int i = 0; i < kKeys; ++i) {
    const std::string k = "d" + std::to_string(i % 37) + "/k" + std::to_string(i);
    const DeltaKey* dk = w.index()->FindKey(k, format::HashKey(k));
    ASSERT_NE(dk, nullptr) << k;
    const uint64_t g = static_cast<uint64_t>(i) + 1;
    EXPECT_EQ(dk->At(g - 1), nullptr) << k << ": a state before the key was written";
    ASSERT_NE(dk->At(g), nullptr);
    EXPECT_TRUE(dk->At(g)->live);
    EXPECT_EQ(dk->At(g)->value, k);
    EXPECT_EQ(dk->At(g + 1)->live, i % 2 != 0) << k;
  }
  for (size_t p = 0; p < published.size(); ++p) {
    const int known = static_cast<int>(p) * 500;  // keys 0..known were added before
    for (int i = 0; i <= known; i += 97) {
      const std::string k = "d" + std::to_string(i % 37) + "/k" + std::to_string(i);
      EXPECT_NE(published[p]->FindKey(k, format::HashKey(k)), nullptr) << k << " in index " << p;
    }
    EXPECT_EQ(published[p]->FindKey("absent", format::HashKey("absent")), nullptr);
  }
  // Each directory lists its children once.
  const DeltaDir* d = w.index()->FindDir("d5", format::HashKey("d5"));
  ASSERT_NE(d, nullptr);
  int children = 0;
  for (const DeltaKey* k = d->first_child.load(); k != nullptr; k = k->next_sibling) ++children;
  EXPECT_EQ(children, (kKeys - 5 + 36) / 37);
}

class CommitLogStore : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.Join("STORE");
    log_ = path_ + ".log";
    ASSERT_OK(CreateStore(path_, EngineKind::kSnapshot));
    auto e = OpenStore(path_, OpenOptions{});
    ASSERT_OK(e.status());
    for (int i = 0; i < 3; ++i) {
      ASSERT_OK((*e)->Commit(Batch().Put("k" + std::to_string(i), "value " + std::to_string(i))));
    }
    ASSERT_EQ(::access(log_.c_str(), F_OK), 0) << "the commits did not go to the log";
    log_bytes_ = ReadAll(log_);
  }
  // The offset of the last record.
  size_t LastRecord() const {
    size_t off = format::kLogHeaderSize, last = off;
    while (off < log_bytes_.size()) {
      last = off;
      off += format::Load64(reinterpret_cast<const uint8_t*>(log_bytes_.data()) + off +
                            format::kLRLength);
    }
    return last;
  }

  TempDir dir_;
  std::string path_, log_, log_bytes_;
};

TEST_F(CommitLogStore, TornTailIsDroppedAndCutOffByTheNextWriter) {
  const size_t last = LastRecord();
  WriteAll(log_, log_bytes_.substr(0, last + 20));  // the last commit half written
  {
    auto ro = OpenStore(path_, OpenOptions{.read_only = true});
    ASSERT_OK(ro.status());
    EXPECT_EQ(ReadAll(log_).size(), last + 20) << "a reader wrote";
    EXPECT_EQ((*ro)->Get("k2").status().code(), Status::Code::kNotFound);
    EXPECT_EQ((*ro)->Get("k1")->value, "value 1");
  }
  std::vector<std::string> report;
  ASSERT_OK(VerifyStore(path_, &report));
  bool told = false;
  for (const std::string& l : report) told = told || l.find("after the last intact") != l.npos;
  EXPECT_TRUE(told) << "verify says nothing of the torn tail";
  auto rw = OpenStore(path_, OpenOptions{});
  ASSERT_OK(rw.status());
  ASSERT_OK((*rw)->Commit(Batch().Put("k9", "nine")));
  rw->reset();
  auto ro = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_OK(ro.status());
  EXPECT_EQ((*ro)->Get("k9")->value, "nine");
  EXPECT_EQ((*ro)->Get("k2").status().code(), Status::Code::kNotFound);
  EXPECT_OK(VerifyStore(path_));
}

TEST_F(CommitLogStore, DamageBeforeAnIntactRecordIsCorruption) {
  std::string bad = log_bytes_;
  bad[format::kLogHeaderSize + 50] ^= 0x01;  // inside the first record
  WriteAll(log_, bad);
  auto ro = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_TRUE(ro.status().IsCorruption()) << ro.status().ToString();
  EXPECT_NE(ro.status().ToString().find("STORE.log"), std::string::npos) << ro.status().ToString();
  EXPECT_NE(ro.status().ToString().find("intact commit records follow"), std::string::npos);
  EXPECT_TRUE(VerifyStore(path_).IsCorruption());
  EXPECT_TRUE(OpenStore(path_, OpenOptions{}).status().IsCorruption());
  EXPECT_TRUE(ReadAll(log_) == bad) << "a damaged log was modified";
}

TEST_F(CommitLogStore, MissingRecordIsCorruption) {
  // Drop the middle record: generations jump from 2 to 4.
  size_t first_end =
      format::kLogHeaderSize + format::Load64(reinterpret_cast<const uint8_t*>(log_bytes_.data()) +
                                              format::kLogHeaderSize + format::kLRLength);
  const size_t last = LastRecord();
  WriteAll(log_, log_bytes_.substr(0, first_end) + log_bytes_.substr(last));
  auto ro = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_TRUE(ro.status().IsCorruption()) << ro.status().ToString();
  EXPECT_NE(ro.status().ToString().find("jumps from generation"), std::string::npos)
      << ro.status().ToString();
}

TEST_F(CommitLogStore, LogOfANewerTableIsCorruption) {
  std::string bad = log_bytes_;
  const std::string header = EncodeLogHeader(1000, 1);
  bad.replace(0, header.size(), header);
  WriteAll(log_, bad);
  auto ro = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_TRUE(ro.status().IsCorruption()) << ro.status().ToString();
}

// A store removed by hand leaves its log behind: a new store of the same name must not
// replay it (both would start at generation 1).
TEST_F(CommitLogStore, CreateRemovesAnOrphanLog) {
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  ASSERT_EQ(::access(log_.c_str(), F_OK), 0);
  ASSERT_OK(CreateStore(path_, EngineKind::kSnapshot));
  EXPECT_NE(::access(log_.c_str(), F_OK), 0) << "the orphan log survived";
  auto e = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_OK(e.status());
  EXPECT_EQ((*e)->Get("k0").status().code(), Status::Code::kNotFound);
  EXPECT_EQ((*e)->Stats().entries, 0u);
}

// A merge writes the same content on a new base and empties the log; a reader that held a
// value from before keeps reading it.
TEST_F(CommitLogStore, MergeKeepsContentAndRemovesTheLog) {
  auto e = OpenStore(path_, OpenOptions{});
  ASSERT_OK(e.status());
  auto held = (*e)->Get("k1");
  ASSERT_OK(held.status());
  const uint64_t gen = (*e)->Stats().generation;
  auto* snap = dynamic_cast<SnapshotEngine*>(e->get());
  ASSERT_NE(snap, nullptr);
  ASSERT_OK(snap->Merge());
  EXPECT_EQ((*e)->Stats().generation, gen);
  EXPECT_EQ((*e)->Stats().delta_keys, 0u);
  EXPECT_EQ(snap->Current()->generation(), gen);
  EXPECT_NE(::access(log_.c_str(), F_OK), 0) << "the log outlived the merge";
  EXPECT_EQ(held->value, "value 1");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*e)->Get("k" + std::to_string(i))->value, "value " + std::to_string(i));
  }
  ASSERT_OK((*e)->Commit(Batch().Put("k3", "after")));
  e->reset();
  auto ro = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_OK(ro.status());
  EXPECT_EQ((*ro)->Get("k3")->value, "after");
  EXPECT_EQ((*ro)->Stats().generation, gen + 1);
  EXPECT_OK(VerifyStore(path_));
}

}  // namespace
}  // namespace keyfs
