// InodeTable, without a mount: which node a lookup gets, when nodes go away, how renames
// carry the nodes the kernel holds, and the st_ino of a key.
#include "inode_table.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace keyfs::fs {
namespace {

Record FileAt(uint64_t version, std::string_view value = "v") {
  Record r;
  r.meta = Meta::File();
  r.version = version;
  r.value = value;  // a literal: outlives the table's copy
  return r;
}

Record DirRecord() {
  Record r;
  r.meta = Meta::Dir();
  return r;
}

std::string KeyOf(InodeTable& t, uint64_t id) {
  std::string key;
  return t.KeyOf(id, &key) ? key : "<unknown>";
}

TEST(KeyIno, StableDistinctAndNeverReserved) {
  EXPECT_EQ(KeyIno(""), kRootId);
  EXPECT_EQ(KeyIno("a/b"), KeyIno(std::string("a/") + "b"));
  std::set<uint64_t> seen;
  for (int i = 0; i < 100000; ++i) {
    const uint64_t ino = KeyIno("d" + std::to_string(i % 100) + "/k" + std::to_string(i));
    EXPECT_GE(ino, kFirstDynamicId);
    seen.insert(ino);
  }
  EXPECT_EQ(seen.size(), 100000u);
}

TEST(InodeTable, OneNodePerVersion) {
  InodeTable t;
  const uint64_t a = t.Acquire("k", FileAt(1));
  EXPECT_EQ(t.Acquire("k", FileAt(1)), a) << "readers of one version share its node";
  const uint64_t b = t.Acquire("k", FileAt(2));
  EXPECT_NE(b, a) << "a new version gets a node of its own";
  uint64_t ino_a = 0, ino_b = 0;
  t.WithNode(a, [&](Node& n) { ino_a = n.ino; });
  t.WithNode(b, [&](Node& n) { ino_b = n.ino; });
  EXPECT_EQ(ino_a, ino_b) << "st_ino is per key";
  EXPECT_EQ(ino_a, KeyIno("k"));
}

TEST(InodeTable, NodeGoesAwayAtZeroLookupsAndNoHandles) {
  InodeTable t;
  const size_t base = t.size();
  const uint64_t a = t.Acquire("k", FileAt(1));
  t.Acquire("k", FileAt(1));
  t.WithNode(a, [](Node& n) { ++n.open_handles; });
  t.Forget(a, 2);
  EXPECT_EQ(KeyOf(t, a), "k") << "an open handle keeps the node";
  t.CloseHandle(a, false, false);
  EXPECT_EQ(KeyOf(t, a), "<unknown>");
  EXPECT_EQ(t.size(), base);
}

TEST(InodeTable, DirectoryHasOneNode) {
  InodeTable t;
  const uint64_t d = t.Acquire("dir", DirRecord());
  EXPECT_EQ(t.Acquire("dir", DirRecord()), d);
  EXPECT_EQ(t.DirId("dir"), d);
  EXPECT_EQ(t.DirId("other"), 0u);
}

// A rename moves every node at or below the old key, and nothing else: not siblings whose
// names merely start with it ("conf.d" and "conf-old" sort between "conf" and "conf/x").
TEST(InodeTable, RenameMovesTheSubtreeOnly) {
  InodeTable t;
  const uint64_t conf = t.Acquire("conf", DirRecord());
  const uint64_t x = t.Acquire("conf/x", FileAt(1));
  const uint64_t deep = t.Acquire("conf/sub/y", FileAt(1));
  const uint64_t dotd = t.Acquire("conf.d", DirRecord());
  const uint64_t dotd_z = t.Acquire("conf.d/z", FileAt(1));
  const uint64_t dash = t.Acquire("conf-old", FileAt(1));
  t.Renamed("conf", "new", false);
  EXPECT_EQ(KeyOf(t, conf), "new");
  EXPECT_EQ(KeyOf(t, x), "new/x");
  EXPECT_EQ(KeyOf(t, deep), "new/sub/y");
  EXPECT_EQ(KeyOf(t, dotd), "conf.d");
  EXPECT_EQ(KeyOf(t, dotd_z), "conf.d/z");
  EXPECT_EQ(KeyOf(t, dash), "conf-old");
  EXPECT_EQ(t.DirId("new"), conf);
  EXPECT_EQ(t.DirId("conf"), 0u);
  // Lookups of the new key find the moved node.
  EXPECT_EQ(t.Acquire("new/x", FileAt(1)), x);
}

TEST(InodeTable, RenameExchangeSwapsBothSubtrees) {
  InodeTable t;
  // The kernel holds a directory's node while it holds anything below it.
  t.Acquire("a", DirRecord());
  t.Acquire("b", DirRecord());
  const uint64_t a = t.Acquire("a/f", FileAt(1));
  const uint64_t b = t.Acquire("b/g", FileAt(1));
  t.Renamed("a", "b", true);
  EXPECT_EQ(KeyOf(t, a), "b/f");
  EXPECT_EQ(KeyOf(t, b), "a/g");
  // A file moves alone, with every node of its key.
  const uint64_t v1 = t.Acquire("f", FileAt(1));
  const uint64_t v2 = t.Acquire("f", FileAt(2));
  const uint64_t other = t.Acquire("f2", FileAt(1));
  t.Renamed("f", "g", false);
  EXPECT_EQ(KeyOf(t, v1), "g");
  EXPECT_EQ(KeyOf(t, v2), "g");
  EXPECT_EQ(KeyOf(t, other), "f2");
}

TEST(InodeTable, UnlinkedNodeIsNotHandedOutAgain) {
  InodeTable t;
  const uint64_t a = t.Acquire("k", FileAt(1));
  t.Unlinked("k");
  EXPECT_NE(t.Acquire("k", FileAt(1)), a);
}

// The ESTALE scheme (fs/fs_impl.h): a writer sent back from a clean node retries its lookup
// on the same thread and must get a writer node; everyone else keeps getting clean nodes,
// and a clean node never turns into a writer node.
TEST(InodeTable, WriterReservationIsPerThreadAndNodesKeepTheirKind) {
  InodeTable t;
  const uint64_t clean = t.Acquire("k", FileAt(1), /*tid=*/100);
  bool tainted = true;
  t.WithNode(clean, [&](Node& n) { tainted = n.tainted; });
  EXPECT_FALSE(tainted);
  t.ReserveForWriter(100);
  const uint64_t writer = t.Acquire("k", FileAt(1), 100);
  EXPECT_NE(writer, clean);
  t.WithNode(writer, [&](Node& n) { tainted = n.tainted; });
  EXPECT_TRUE(tainted);
  EXPECT_EQ(t.Acquire("k", FileAt(1), 200), clean) << "another thread is a reader";
  // A second writer's retry shares the writer node, which follows the newest version.
  t.ReserveForWriter(300);
  EXPECT_EQ(t.Acquire("k", FileAt(2), 300), writer);
  uint64_t version = 0;
  t.WithNode(writer, [&](Node& n) { version = n.version; });
  EXPECT_EQ(version, 2u);
  t.WriterOpened(100);
  t.WriterOpened(300);
  const uint64_t reader2 = t.Acquire("k", FileAt(2), 100);
  EXPECT_NE(reader2, writer) << "a used reservation is gone";
  EXPECT_NE(reader2, clean) << "a new version gets a new clean node";
  t.WithNode(clean, [&](Node& n) { tainted = n.tainted; });
  EXPECT_FALSE(tainted);
}

TEST(InodeTable, ReaderRetryIsTakenOnce) {
  InodeTable t;
  EXPECT_FALSE(t.TakeReaderRetry(7));
  t.MarkReaderRetry(7);
  EXPECT_FALSE(t.TakeReaderRetry(8));
  EXPECT_TRUE(t.TakeReaderRetry(7));
  EXPECT_FALSE(t.TakeReaderRetry(7));
}

// A retry is the same thread's next lookup and open, whatever key the file has by then: a
// rename through the mount may have moved it (or its directory) between the ESTALE and the
// retry. Keyed by the old key, the retry was not recognised and the program got ESTALE.
TEST(InodeTable, RetriesFollowTheThreadNotTheKey) {
  InodeTable t;
  const uint64_t clean = t.Acquire("d/k", FileAt(1), 100);
  t.ReserveForWriter(100);
  t.Renamed("d", "e", false);
  const uint64_t writer = t.Acquire("e/k", FileAt(1), 100);
  EXPECT_NE(writer, clean);
  bool tainted = false;
  t.WithNode(writer, [&](Node& n) { tainted = n.tainted; });
  EXPECT_TRUE(tainted) << "the writer's retry under the new name gets a writer node";
  t.MarkReaderRetry(200);
  EXPECT_TRUE(t.TakeReaderRetry(200));
}

TEST(InodeTable, FreshNodeIsAWriterNode) {
  InodeTable t;
  const uint64_t a = t.AcquireFresh("k", FileAt(1));
  bool tainted = false;
  t.WithNode(a, [&](Node& n) { tainted = n.tainted; });
  EXPECT_TRUE(tainted);
  EXPECT_NE(t.Acquire("k", FileAt(1)), a) << "readers never get a writer node";
}

}  // namespace
}  // namespace keyfs::fs
