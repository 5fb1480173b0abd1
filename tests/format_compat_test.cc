// Store files of every format version, written by the code of that version
// (tests/testdata/README.md), are read by this one: every entry and its metadata as they
// were written, a read-only open never writes, a read-write open upgrades an older file to
// the current format version with nothing lost, and damaged copies are refused with a
// Corruption that says where.
// The checked-in files are only ever copied: a test works on its own copy.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "format.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"
#include "table_builder.h"
#include "testutil.h"

namespace keyfs {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}
uint32_t Load32(const std::string& b, uint64_t off) {
  uint32_t v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}

std::string TestData(const std::string& name) {
  return std::string(KEYFS_TESTDATA_DIR) + "/" + name;
}

constexpr int64_t kFileTime = 1'577'934'245'123'456'789;  // 2020-01-02T03:04:05.123456789Z
constexpr int64_t kDirTime = 1'577'836'799'250'000'000;   // 2019-12-31T23:59:59.25Z
constexpr int64_t kLinkTime = 1'620'284'889'500'000'000;  // 2021-05-06T07:08:09.5Z
// Version 2's tree fixes the other directories' times and sets some atimes apart.
constexpr int64_t kDirTimeV2 = 1'531'041'011'987'654'321;    // 2018-07-08T09:10:11.987654321Z
constexpr int64_t kAtimeV2 = 1'643'861'106'000'000'007;      // 2022-02-03T04:05:06.000000007Z
constexpr int64_t kLinkAtimeV2 = 1'677'906'367'800'000'000;  // 2023-03-04T05:06:07.8Z
constexpr int64_t kZeroAtimeV2 = -500'000'000;               // 1969-12-31T23:59:59.5Z

// One file of tests/testdata and what it holds (README.md; the times the recipe does not
// fix, the commit times and the versions dumped once from the files).
struct CheckedInFile {
  const char* name;
  EngineKind kind;
  uint32_t version;        // the format version it was written in
  int64_t commit_ns;       // the header's commit time: every ctime, the root's mtime
  uint64_t entry_version;  // every entry's
  int64_t data_mtime, etc_mtime, nginx_mtime;
  int64_t root_atime;     // version 1 stores no root: its times are the commit time
  uint64_t root_version;  // version 1: 0
};
const CheckedInFile kFiles[] = {
    {"format_v1.snapshot", EngineKind::kSnapshot, 1, 1'796'286'220'463'646'336, 2,
     1'796'286'215'750'638'311, 1'796'286'215'755'514'972, 1'796'286'215'742'638'311,
     1'796'286'220'463'646'336, 0},
    {"format_v1.dets", EngineKind::kDets, 1, 1'796'286'220'478'395'635, 1,
     1'796'286'215'750'638'311, 1'796'286'215'755'514'972, 1'796'286'215'742'638'311,
     1'796'286'220'478'395'635, 0},
    {"format_v2.snapshot", EngineKind::kSnapshot, 2, 1'796'314'351'738'252'328, 2, kDirTimeV2,
     kDirTimeV2, kDirTimeV2, 1'796'314'351'712'029'670, 2},
    {"format_v2.dets", EngineKind::kDets, 2, 1'796'314'352'079'713'110, 1, kDirTimeV2, kDirTimeV2,
     kDirTimeV2, 1'796'314'352'048'266'602, 1},
};

void PrintTo(const CheckedInFile& f, std::ostream* os) { *os << f.name; }

uint32_t CurrentVersion(EngineKind kind) {
  return kind == EngineKind::kSnapshot ? format::kSnapVersion : format::kDetsVersion;
}

struct Want {
  EntryType type;
  uint32_t mode, uid, gid, subdirs;
  int64_t mtime, atime;
  std::string value;
};

std::map<std::string, Want> Expected(const CheckedInFile& f) {
  const std::string blob = ReadAll(TestData("format_v1.blob"));
  EXPECT_EQ(blob.size(), 3000u);
  // Version 1 has no atime: it reads as the mtime.
  const auto dir = [](uint32_t mode, uint32_t subdirs, int64_t mtime) {
    return Want{EntryType::kDir, mode, 0, 0, subdirs, mtime, mtime, ""};
  };
  const auto file = [](uint32_t mode, std::string value) {
    return Want{EntryType::kFile, mode, 0, 0, 0, kFileTime, kFileTime, std::move(value)};
  };
  std::map<std::string, Want> w;
  w[""] = dir(0755, 2, f.commit_ns);  // written by create and import (v1: implied)
  w[""].atime = f.root_atime;
  w["data"] = dir(0755, 0, f.data_mtime);
  w["data/blob"] = file(04755, blob);
  w["etc"] = dir(0755, 2, f.etc_mtime);
  w["etc/empty"] = dir(0700, 0, kDirTime);
  w["etc/nginx"] = dir(0755, 1, f.nginx_mtime);
  w["etc/nginx/default"] = file(0644, "server { listen 80; }\n");
  w["etc/nginx/nginx.conf"] = file(0644, "worker_processes 4;\n");
  w["etc/nginx/nginx.conf"].uid = 1000;
  w["etc/nginx/nginx.conf"].gid = 1001;
  w["etc/nginx/sites-enabled"] = dir(0755, 0, kDirTime);
  w["etc/nginx/sites-enabled/default"] =
      Want{EntryType::kSymlink, 0777, 0, 0, 0, kLinkTime, kLinkTime, "../default"};
  w["etc/secret"] = file(0600, "secret\n");
  w["etc/zero"] = file(0644, "");
  if (f.version >= 2) {
    w["etc/nginx"].uid = 1000;
    w["etc/nginx"].gid = 1001;
    w["etc/nginx/nginx.conf"].atime = kAtimeV2;
    w["etc/empty"].atime = kAtimeV2;
    w["etc/nginx/sites-enabled/default"].atime = kLinkAtimeV2;
    w["etc/zero"].atime = kZeroAtimeV2;
  }
  return w;
}

// Every entry of `e` (the root included), by walking List; each checked against Get.
void Dump(const Engine& e, const std::string& dir, std::map<std::string, Record>* out) {
  auto r = e.Get(dir);
  ASSERT_TRUE(r.ok()) << dir << ": " << r.status().ToString();
  (*out)[dir] = *r;
  std::vector<std::pair<std::string, Meta>> kids;
  ASSERT_OK(e.List(dir, "", [&](const DirEntry& d) {
    kids.emplace_back(dir.empty() ? std::string(d.name) : dir + "/" + std::string(d.name), d.meta);
    return true;
  }));
  for (const auto& [k, listed] : kids) {
    auto g = e.Get(k);
    ASSERT_TRUE(g.ok()) << k << ": " << g.status().ToString();
    EXPECT_EQ(listed, g->meta) << k << ": List and Get disagree";
    auto in_dir = e.GetInDirectory(k);
    ASSERT_TRUE(in_dir.ok()) << k;
    EXPECT_EQ(in_dir->meta, g->meta) << k;
    if (g->meta.type == EntryType::kDir) {
      ASSERT_NO_FATAL_FAILURE(Dump(e, k, out));
    } else {
      (*out)[k] = *g;
    }
  }
}

// The whole content of `e` is what `f` was written with.
void CheckContent(const Engine& e, const CheckedInFile& f) {
  std::map<std::string, Record> got;
  ASSERT_NO_FATAL_FAILURE(Dump(e, "", &got));
  const auto want = Expected(f);
  std::vector<std::string> got_keys, want_keys;
  for (const auto& [k, r] : got) got_keys.push_back(k);
  for (const auto& [k, w] : want) want_keys.push_back(k);
  ASSERT_EQ(got_keys, want_keys);
  for (const auto& [k, w] : want) {
    SCOPED_TRACE("key '" + k + "'");
    const Record& r = got.at(k);
    EXPECT_EQ(r.meta.type, w.type);
    EXPECT_EQ(r.meta.mode, w.mode);
    EXPECT_EQ(r.meta.uid, w.uid);
    EXPECT_EQ(r.meta.gid, w.gid);
    EXPECT_EQ(r.meta.subdirs, w.subdirs);
    EXPECT_EQ(r.meta.mtime_ns, w.mtime);
    EXPECT_EQ(r.meta.atime_ns, w.atime);
    EXPECT_EQ(r.meta.ctime_ns, f.commit_ns);
    EXPECT_EQ(r.value, w.value);
    EXPECT_EQ(r.version, k.empty() ? f.root_version : f.entry_version);
  }
}

std::vector<std::string> DirNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* de = ::readdir(d)) {
    if (std::strcmp(de->d_name, ".") != 0 && std::strcmp(de->d_name, "..") != 0) {
      names.emplace_back(de->d_name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// Each checked-in file, of every format version and engine.
class FormatCompat : public ::testing::TestWithParam<CheckedInFile> {
 protected:
  void SetUp() override {
    original_ = ReadAll(TestData(GetParam().name));
    ASSERT_GT(original_.size(), 64u);
    ASSERT_EQ(Load32(original_, 8), GetParam().version)
        << "the checked-in file is not of the version it is named for";
    WriteAll(path_, original_);
  }
  StatusOr<std::unique_ptr<Engine>> Open(bool read_only) {
    OpenOptions o;
    o.read_only = read_only;
    o.kind = GetParam().kind;
    o.kind_given = true;
    o.sync_interval_s = 0;
    return OpenStore(path_, o);
  }

  test::TempDir dir_;
  std::string path_ = dir_.Join("STORE");
  std::string original_;
};

TEST_P(FormatCompat, ReadOnlyReadsEverythingAndWritesNothing) {
  const CheckedInFile& f = GetParam();
  {
    auto e = Open(/*read_only=*/true);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    EXPECT_EQ((*e)->Stats().format_version, f.version);
    ASSERT_NO_FATAL_FAILURE(CheckContent(**e, f));
    EXPECT_EQ((*e)->Commit(Batch().Put("x", "y")).code(), Status::Code::kReadOnly);
  }
  std::vector<std::string> report;
  ASSERT_OK(VerifyStore(path_, &report));
  ASSERT_FALSE(report.empty());
  EXPECT_NE(report[0].find("format version " + std::to_string(f.version)), std::string::npos)
      << report[0];
  EXPECT_EQ(ReadAll(path_), original_) << "a read-only open or verify changed the file";
  EXPECT_EQ(DirNames(dir_.path()), std::vector<std::string>{"STORE"});
}

// A read-write open upgrades an older file to the current version before anything else
// (and leaves a current one as it is); nothing is lost either way.
TEST_P(FormatCompat, ReadWriteOpenUpgradesToTheCurrentVersion) {
  const CheckedInFile& f = GetParam();
  const uint32_t current = CurrentVersion(f.kind);
  {
    auto e = Open(/*read_only=*/false);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    const EngineStats st = (*e)->Stats();
    EXPECT_EQ(st.format_version, current);
    EXPECT_EQ(st.last_commit_ns, f.commit_ns);  // nothing was committed
    ASSERT_NO_FATAL_FAILURE(CheckContent(**e, f));
    // Already on disk, before any commit or sync.
    const std::string now = ReadAll(path_);
    EXPECT_EQ(Load32(now, 8), current);
    if (f.version == current) {
      EXPECT_EQ(now, original_) << "a current file was rewritten";
    }
  }
  EXPECT_EQ(DirNames(dir_.path()), (std::vector<std::string>{"STORE", "STORE.lock"}));
  if (f.version == current) {
    EXPECT_EQ(ReadAll(path_), original_) << "a current file was rewritten at close";
  }
  std::vector<std::string> report;
  ASSERT_OK(VerifyStore(path_, &report));
  EXPECT_NE(report[0].find("format version " + std::to_string(current)), std::string::npos)
      << report[0];
  // Read again as a current file: the same entries, times and counts.
  {
    auto e = Open(/*read_only=*/true);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    EXPECT_EQ((*e)->Stats().format_version, current);
    ASSERT_NO_FATAL_FAILURE(CheckContent(**e, f));
  }
  // And it takes commits, which keep the counts and the directory times.
  {
    auto e = Open(/*read_only=*/false);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    ASSERT_OK((*e)->Commit(Batch().Mkdir("etc/conf.d").Put("etc/conf.d/a", "1")));
    ASSERT_OK((*e)->Commit(Batch().Delete("etc/empty")));
    ASSERT_OK((*e)->Sync());
    auto etc = (*e)->Get("etc");
    ASSERT_OK(etc.status());
    EXPECT_EQ(etc->meta.subdirs, 2u);  // nginx, conf.d
    EXPECT_GT(etc->meta.mtime_ns, f.etc_mtime);
    auto blob = (*e)->Get("data/blob");
    ASSERT_OK(blob.status());
    EXPECT_EQ(blob->value, ReadAll(TestData("format_v1.blob")));
  }
  ASSERT_OK(VerifyStore(path_));
}

// A damaged copy is refused with a Corruption that names what and where; a read-write
// open of it does not upgrade (or otherwise touch) it.
TEST_P(FormatCompat, DamagedCopiesAreRefused) {
  const bool dets = GetParam().kind == EngineKind::kDets;
  // Offsets of the layout (FORMAT.md): the snapshot header at 0 (its entry count at 40),
  // records from 4096; the dets header ends 8 bytes before the end of the file (its entry
  // count at 40 from its start), buckets from 64.
  const uint64_t dets_header_size =
      GetParam().version == 1 ? format::kDetsHeaderSizeV1 : format::kDetsHeaderSize;
  const uint64_t header_byte =
      dets ? original_.size() - format::kDetsFooterSize - dets_header_size + 40 : 40;
  const uint64_t entry_byte = dets ? 64 + 30 : 4096 + 40;
  struct Case {
    std::string what, bytes;
    std::vector<std::string> words;  // the message names these
  };
  std::vector<Case> cases;
  cases.push_back(
      {"truncated by one byte", original_.substr(0, original_.size() - 1), {"truncated"}});
  cases.push_back({"truncated to half", original_.substr(0, original_.size() / 2), {}});
  std::string bad = original_;
  bad[header_byte] = static_cast<char>(bad[header_byte] ^ 0x10);
  cases.push_back({"a flipped header byte", bad, {"header checksum", "offset"}});
  bad = original_;
  if (dets) {
    // Empty buckets take no bytes: the first entry of the first non-empty one is at 64.
    ASSERT_NE(original_.compare(64, 8, std::string(8, '\0')), 0);
  }
  bad[entry_byte] = static_cast<char>(bad[entry_byte] ^ 0x10);
  cases.push_back({"a flipped byte in a record", bad, {"checksum mismatch in chunk", "offset"}});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    WriteAll(path_, c.bytes);
    Status v = VerifyStore(path_);
    EXPECT_TRUE(v.IsCorruption()) << v.ToString();
    for (const std::string& w : c.words) {
      EXPECT_NE(v.ToString().find(w), std::string::npos) << v.ToString();
    }
    for (bool read_only : {true, false}) {
      auto e = Open(read_only);
      if (e.ok()) {
        // Opened (damage the open does not look at): nothing damaged may be served.
        auto r = (*e)->Get("data/blob");
        if (r.ok()) {
          EXPECT_EQ(r->value, ReadAll(TestData("format_v1.blob")));
        }
        continue;
      }
      EXPECT_TRUE(e.status().IsCorruption()) << e.status().ToString();
      for (const std::string& w : c.words) {
        EXPECT_NE(e.status().ToString().find(w), std::string::npos) << e.status().ToString();
      }
    }
    EXPECT_EQ(ReadAll(path_), c.bytes) << "a damaged file was rewritten";
  }
}

INSTANTIATE_TEST_SUITE_P(Files, FormatCompat, ::testing::ValuesIn(kFiles), [](const auto& info) {
  return "v" + std::to_string(info.param.version) + "_" +
         std::string(EngineKindName(info.param.kind));
});

// Another writer of a snapshot store may still run the code that writes version 1: a
// commit that finds a version-1 table newest builds on it with every count right.
TEST(FormatV1Snapshot, CommitOnAVersion1TableCountsItsDirectories) {
  test::TempDir dir;
  const std::string path = dir.Join("STORE");
  WriteAll(path, ReadAll(TestData("format_v1.snapshot")));
  OpenOptions o;
  auto e = OpenStore(path, o);  // upgrades
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  // The old writer publishes a version-1 table of a newer generation (as a commit of its
  // own would be): the v1 file, its generation raised and its header resealed.
  std::string old = ReadAll(TestData("format_v1.snapshot"));
  auto* h = reinterpret_cast<uint8_t*>(old.data());
  format::Store64(h + format::kHGeneration, (*e)->Stats().generation + 1);
  format::Store64(h + format::kHHeaderChecksumV1, format::Hash(h, format::kHHeaderChecksumV1));
  const std::string tmp = dir.Join("STORE.tmp-old-writer");
  WriteAll(tmp, old);
  ASSERT_EQ(::rename(tmp.c_str(), path.c_str()), 0);
  ASSERT_OK((*e)->Commit(Batch().Mkdir("data/sub")));
  EXPECT_EQ((*e)->Stats().format_version, 2u);
  EXPECT_EQ((*e)->Stats().generation, format::Load64(h + format::kHGeneration) + 1);
  auto data = (*e)->Get("data");
  ASSERT_OK(data.status());
  EXPECT_EQ(data->meta.subdirs, 1u);
  auto etc = (*e)->Get("etc");
  ASSERT_OK(etc.status());
  EXPECT_EQ(etc->meta.subdirs, 2u);
  auto root = (*e)->Get("");
  ASSERT_OK(root.status());
  EXPECT_EQ(root->meta.subdirs, 2u);
  e->reset();
  ASSERT_OK(VerifyStore(path));
}

// Keys under .keyfs are refused from now on, but a store that already holds some (written
// before the name was reserved) opens, reads and verifies, and its keys there can be
// overwritten, moved out and deleted; only new ones are refused.
TEST(ReservedName, OldKeysStayUsable) {
  test::TempDir dir;
  const std::string path = dir.Join("STORE");
  {
    auto f = Env::Default()->NewExclusiveFile(path);
    ASSERT_OK(f.status());
    Meta root = Meta::Dir();
    root.mtime_ns = root.ctime_ns = root.atime_ns = 5;
    root.subdirs = 1;
    TableBuilder b(f->get(), 1, 5, root, 0);
    Meta d = Meta::Dir();
    d.mtime_ns = d.ctime_ns = d.atime_ns = 5;
    Meta m = Meta::File();
    m.mtime_ns = m.ctime_ns = m.atime_ns = 5;
    ASSERT_OK(b.Add(".keyfs", d, 1, ""));
    ASSERT_OK(b.Add(".keyfs/a", m, 1, "old a"));
    ASSERT_OK(b.Add(".keyfs/b", m, 1, "old b"));
    ASSERT_OK(b.Finish());
    ASSERT_OK((*f)->Sync());
    ASSERT_OK((*f)->Close());
  }
  ASSERT_OK(VerifyStore(path));
  OpenOptions o;
  auto e = OpenStore(path, o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  auto a = (*e)->Get(".keyfs/a");
  ASSERT_OK(a.status());
  EXPECT_EQ(a->value, "old a");
  ASSERT_OK((*e)->Commit(Batch().Put(".keyfs/a", "new a")));
  ASSERT_OK((*e)->Commit(Batch().Rename(".keyfs/b", "b")));
  EXPECT_EQ((*e)->Commit(Batch().Put(".keyfs/c", "c")).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ((*e)->Commit(Batch().Rename("b", ".keyfs/b")).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ((*e)->Get(".keyfs/a")->value, "new a");
  EXPECT_EQ((*e)->Get("b")->value, "old b");
  ASSERT_OK((*e)->Commit(Batch().Delete(".keyfs/a").Delete(".keyfs")));
  EXPECT_EQ((*e)->Get("")->meta.subdirs, 0u);
  e->reset();
  ASSERT_OK(VerifyStore(path));
}

}  // namespace
}  // namespace keyfs
