// Damaged snapshot files (store/FORMAT.md §2): each structure of a real store is damaged
// in turn, in a copy of the file, and the readers must report Corruption, never crash and
// never serve a wrong entry; VerifyStore must catch every damaged byte.
//
// Two kinds of damage:
//  - byte flips, what a disk or a stray write does: the header checksum, the chunk checksums
//    and the checksum of the sums array must catch every one of them;
//  - "resealed" edits, where every checksum is recomputed after the edit (a buggy writer, or
//    a hostile file): only the structural checks of Open and VerifyAll stand between them and
//    the readers. These run in a child process, so a reader that crashes fails the test
//    instead of taking the whole binary down.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "format.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "testutil.h"

namespace keyfs {
namespace {

using namespace format;  // NOLINT: the format's names are this file's vocabulary
using test::TempDir;

// ---- files ----

std::string ReadAll(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[1 << 16];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

bool WriteAll(const std::string& path, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return ::close(fd) == 0;
}

bool PwriteByte(int fd, uint64_t off, uint8_t b) {
  return ::pwrite(fd, &b, 1, static_cast<off_t>(off)) == 1;
}

const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }
uint8_t* U8(std::string& s) { return reinterpret_cast<uint8_t*>(s.data()); }

// ---- what the golden store holds ----

struct Entry {
  Meta meta;
  uint64_t version = 0;
  std::string value;
};
using Truth = std::map<std::string, Entry>;  // std::string order is bytewise, as the table's

struct Child {
  std::string name;
  Meta meta;
  uint64_t size = 0;
  uint64_t version = 0;
  bool operator==(const Child&) const = default;
};
using Listings = std::map<std::string, std::vector<Child>>;  // directory ("" = root) -> children

// Where everything is in a golden file, parsed from its (trusted) header and records.
struct RecInfo {
  uint64_t off = 0, klen = 0, vlen = 0, meta_off = 0, value_off = 0, end = 0;
  uint8_t type = 0;
  std::string key;
};

struct Layout {
  uint64_t size = 0, n = 0, sorted_off = 0, slots_off = 0, bloom_off = 0, bloom_blocks = 0;
  uint64_t sums_off = 0, chunks = 0;
  uint32_t slot_bits = 0;
  std::vector<RecInfo> recs;  // in key order

  uint64_t sorted_end() const { return sorted_off + 8 * n; }
  uint64_t slots_end() const { return slots_off + (uint64_t{kSlotSize} << slot_bits); }
  uint64_t bloom_end() const { return bloom_off + bloom_blocks * kBloomBlockBytes; }

  // The record holding byte `off`, or nullptr.
  const RecInfo* RecordAt(uint64_t off) const {
    auto it = std::upper_bound(recs.begin(), recs.end(), off,
                               [](uint64_t o, const RecInfo& r) { return o < r.off; });
    if (it == recs.begin()) return nullptr;
    --it;
    return off < it->end ? &*it : nullptr;
  }
  const RecInfo* Record(std::string_view key) const {
    for (const RecInfo& r : recs) {
      if (r.key == key) return &r;
    }
    return nullptr;
  }
};

Layout ParseLayout(const std::string& f) {
  const uint8_t* b = U8(f);
  Layout L;
  L.size = f.size();
  L.n = Load64(b + kHEntryCount);
  L.sorted_off = Load64(b + kHSortedOff);
  L.slots_off = Load64(b + kHSlotsOff);
  L.slot_bits = Load32(b + kHSlotBits);
  L.bloom_off = Load64(b + kHBloomOff);
  L.bloom_blocks = Load64(b + kHBloomBlocks);
  L.sums_off = Load64(b + kHSumsOff);
  L.chunks = (L.sums_off - kSnapDataStart + kChunkSize - 1) / kChunkSize;
  uint64_t off = kSnapDataStart;
  for (uint64_t i = 0; i < L.n; ++i) {
    RecInfo r;
    r.off = off;
    r.klen = Load32(b + off);
    r.type = b[off + 4];
    r.vlen = Load64(b + off + 8);
    r.key.assign(f, off + kRecordFixed, r.klen);
    r.meta_off = off + kRecordFixed + Align8(r.klen);
    r.value_off = r.meta_off + kMetaSize;
    r.end = r.value_off + Align8(r.vlen);
    off = r.end;
    L.recs.push_back(std::move(r));
  }
  return L;
}

// A human-readable name for the structure byte `off` belongs to (for failure messages).
std::string Region(const Layout& L, uint64_t off) {
  auto at = [&](const std::string& what, uint64_t base) {
    return what + " +" + std::to_string(off - base) + " (offset " + std::to_string(off) + ")";
  };
  if (off < kSnapHeaderSize) return at("header", 0);
  if (off < kSnapDataStart) return at("header padding", 0);
  if (const RecInfo* r = L.RecordAt(off)) return at("record '" + r->key + "'", r->off);
  if (off < L.sorted_off) return at("records section", kSnapDataStart);
  if (off < L.sorted_end()) return at("sorted index", L.sorted_off);
  if (off < L.slots_off) return at("gap before hash index", L.sorted_end());
  if (off < L.slots_end()) return at("hash index", L.slots_off);
  if (off < L.bloom_off) return at("gap before bloom filter", L.slots_end());
  if (off < L.bloom_end()) return at("bloom filter", L.bloom_off);
  if (off < L.sums_off) return at("gap before chunk sums", L.bloom_end());
  return at("chunk sums", L.sums_off);
}

// Recomputes every checksum from the image itself, as a writer that meant the edit would:
// the chunk sums over the golden layout, the checksum of the sums, the header checksum.
void Reseal(std::string* f, const Layout& L) {
  uint8_t* b = U8(*f);
  for (uint64_t c = 0; c < L.chunks; ++c) {
    const uint64_t off = kSnapDataStart + (c << kChunkShift);
    const uint64_t len = std::min<uint64_t>(kChunkSize, L.sums_off - off);
    Store64(b + L.sums_off + 8 * c, Hash(b + off, len));
  }
  Store64(b + kHSumsChecksum, Hash(b + L.sums_off, 8 * L.chunks));
  Store64(b + kHHeaderChecksum, Hash(b, kHHeaderChecksum));
}

// ---- checking what a (possibly damaged) table serves ----

// "" if Find(key) is right or reports Corruption; what went wrong otherwise.
// `want` == nullptr: the key is absent (NotFound is right).
std::string CheckFind(const SnapshotTable& t, const std::string& key, const Entry* want) {
  EntryRef e;
  Status s = t.Find(key, &e);
  if (s.IsCorruption()) return "";
  if (want == nullptr) {
    return s.IsNotFound() ? "" : "Find('" + key + "') of an absent key: " + s.ToString();
  }
  if (!s.ok()) return "Find('" + key + "'): " + s.ToString() + " (want the entry or Corruption)";
  if (e.key != key || !(e.meta == want->meta) || e.version != want->version ||
      e.value != want->value) {
    return "Find('" + key + "') served a wrong entry";
  }
  return "";
}

// "" if listing `dir` gives exactly the right children, or reports Corruption after giving a
// correct prefix of them; what went wrong otherwise.
std::string CheckList(const SnapshotTable& t, const std::string& dir,
                      const std::vector<Child>& want) {
  std::vector<Child> got;
  Status s = t.ListChildren(dir, "", [&](const DirEntry& d) {
    got.push_back(Child{std::string(d.name), d.meta, d.size, d.version});
    return got.size() <= want.size() + 1;  // a runaway listing stops here and fails below
  });
  if (!s.ok() && !s.IsCorruption()) return "ListChildren('" + dir + "'): " + s.ToString();
  if (s.ok() ? got != want
             : got.size() > want.size() || !std::equal(got.begin(), got.end(), want.begin())) {
    return "ListChildren('" + dir + "') served a wrong listing (" + std::to_string(got.size()) +
           " children, want " + std::to_string(want.size()) + ")";
  }
  return "";
}

// ---- the golden stores ----

struct Golden {
  std::string dir_path;  // the TempDir holding STORE
  std::string path;      // STORE
  std::string bytes;     // its contents
  Layout layout;
  Truth truth;  // every entry, as read back from the sound file
  Listings lists;
  std::vector<std::string> absent;  // keys that are not in the store
};

struct GoldenSpec {
  int files = 2000;
  size_t big_value = 100 * 1024;
};

Meta FileMeta(int i) {
  static const uint32_t kModes[] = {0644, 0600, 0640, 0755, 04755, 0444};
  Meta m = Meta::File(kModes[i % 6]);
  m.uid = 1000 + static_cast<uint32_t>(i % 7);
  m.gid = 100 + static_cast<uint32_t>(i % 5);
  m.mtime_ns = 1'700'000'000'000'000'000 + i;
  return m;
}

std::string FileKey(int i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "d%02d/file-%04d", i % 16, i);
  return buf;
}

// Builds a store through the engine, in four commits: directories; files of every size from
// 0 up (mode, uid, gid, mtime varied); symlinks, an empty file, a big value, a 255-byte name;
// then a delete, a rename and a chmod. `intended` receives key -> (type, value) as written.
void BuildGolden(TempDir* dir, const GoldenSpec& spec, Golden* g) {
  g->dir_path = dir->path();
  g->path = dir->Join("STORE");
  std::map<std::string, std::pair<EntryType, std::string>> intended;
  std::mt19937_64 rng(20261121);
  {
    OpenOptions o;
    o.create = true;
    o.merge_threshold = 1;  // whole tables: the table file alone holds every entry
    auto eng = OpenStore(g->path, o);
    ASSERT_OK(eng.status());
    Engine& e = **eng;

    Batch dirs;
    for (const char* d : {"etc", "etc/app", "links", "big", "empty-dir", "long"}) {
      dirs.Mkdir(d);
      intended[d] = {EntryType::kDir, ""};
    }
    for (int i = 0; i < 16; ++i) {
      char d[8];
      std::snprintf(d, sizeof(d), "d%02d", i);
      dirs.Mkdir(d, Meta::Dir(i % 2 ? 0700 : 0755));
      intended[d] = {EntryType::kDir, ""};
    }
    ASSERT_OK(e.Commit(dirs));

    for (int half = 0; half < 2; ++half) {
      Batch files;
      for (int i = half; i < spec.files; i += 2) {
        std::string value;
        if (i % 40 != 0) value = test::RandomBytes(rng, 1 + rng() % 240);
        files.Put(FileKey(i), value, FileMeta(i));
        intended[FileKey(i)] = {EntryType::kFile, value};
      }
      ASSERT_OK(e.Commit(files));
    }

    Batch misc;
    for (int i = 0; i < 10; ++i) {
      std::string target = "../etc/app/config-" + std::to_string(i);
      misc.Symlink("links/l" + std::to_string(i), target);
      intended["links/l" + std::to_string(i)] = {EntryType::kSymlink, target};
    }
    misc.Put("empty", "");
    intended["empty"] = {EntryType::kFile, ""};
    std::string big = test::RandomBytes(rng, spec.big_value);
    misc.Put("big/blob", big);
    intended["big/blob"] = {EntryType::kFile, big};
    misc.Put("etc/app/config", "listen = 8080\n");
    intended["etc/app/config"] = {EntryType::kFile, "listen = 8080\n"};
    std::string long_key = "long/" + std::string(255, 'x');
    misc.Put(long_key, "long name");
    intended[long_key] = {EntryType::kFile, "long name"};
    ASSERT_OK(e.Commit(misc));

    Batch edits;
    edits.Delete(FileKey(0));
    intended.erase(FileKey(0));
    edits.Rename("links/l9", "links/l9-renamed");
    intended["links/l9-renamed"] = intended["links/l9"];
    intended.erase("links/l9");
    Meta m = Meta::File(0600);
    m.uid = 4242;
    edits.SetMeta("etc/app/config", m);
    ASSERT_OK(e.Commit(edits));
  }
  ASSERT_OK(VerifyStore(g->path));

  g->bytes = ReadAll(g->path);
  ASSERT_GE(g->bytes.size(), kSnapDataStart);
  g->layout = ParseLayout(g->bytes);

  auto t = SnapshotTable::Open(g->path);
  ASSERT_OK(t.status());
  ASSERT_EQ((*t)->entry_count(), intended.size());
  for (uint64_t i = 0; i < (*t)->entry_count(); ++i) {
    EntryRef e;
    ASSERT_OK((*t)->At(i, &e));
    auto want = intended.find(std::string(e.key));
    ASSERT_NE(want, intended.end()) << e.key;
    ASSERT_EQ(e.meta.type, want->second.first) << e.key;
    ASSERT_EQ(e.value, want->second.second) << e.key;
    g->truth[std::string(e.key)] = Entry{e.meta, e.version, std::string(e.value)};
  }
  g->lists[""];
  for (const auto& [key, entry] : g->truth) {
    if (entry.meta.type == EntryType::kDir) g->lists[key];
    std::string_view base = BaseName(key);
    g->lists[std::string(ParentKey(key))].push_back(
        Child{std::string(base), entry.meta, entry.value.size(), entry.version});
  }
  for (int i = 0; i < 40; ++i) g->absent.push_back("d03/missing-" + std::to_string(i));
  g->absent.push_back("zzz");
  g->absent.push_back(FileKey(0));  // deleted
  g->absent.push_back("links/l9");  // renamed away
  g->absent.push_back(FileKey(7) + "/below");
}

// Every read of the table (Find of every entry and of absent keys, every listing) must be
// right or Corruption. Returns the first violation, or "".
std::string CheckAllReads(const SnapshotTable& t, const Golden& g) {
  for (const auto& [key, entry] : g.truth) {
    std::string why = CheckFind(t, key, &entry);
    if (!why.empty()) return why;
  }
  for (const std::string& key : g.absent) {
    std::string why = CheckFind(t, key, nullptr);
    if (!why.empty()) return why;
  }
  for (const auto& [dir, children] : g.lists) {
    std::string why = CheckList(t, dir, children);
    if (!why.empty()) return why;
  }
  return "";
}

// Reads touched by damage at `off`: the record's own key and its directory's listing, or
// the key an index entry points to.
std::string CheckAffectedReads(const SnapshotTable& t, const Golden& g, uint64_t off) {
  const Layout& L = g.layout;
  const RecInfo* r = L.RecordAt(off);
  if (r == nullptr && off >= L.sorted_off && off < L.sorted_end()) {
    r = &L.recs[(off - L.sorted_off) / 8];
  }
  if (r == nullptr && off >= L.slots_off && off < L.slots_end()) {
    const uint64_t slot = L.slots_off + (off - L.slots_off) / kSlotSize * kSlotSize;
    const uint64_t roff = Load64(U8(g.bytes) + slot + 8);
    r = roff != 0 ? L.RecordAt(roff) : nullptr;
  }
  if (r == nullptr) return "";
  std::string why = CheckFind(t, r->key, &g.truth.at(r->key));
  if (!why.empty()) return why;
  std::string parent(ParentKey(r->key));
  return CheckList(t, parent, g.lists.at(parent));
}

// ---- running readers in a child process ----

struct ProbeResult {
  int stage = 0;         // how far the child got: 1 Open, 2 reads checked, 3 VerifyStore
  int open_code = -1;    // Status::Code of SnapshotTable::Open
  int verify_code = -1;  // of VerifyStore (run even if Open failed)
  char wrong[240] = {};  // first wrong read, if reads were checked
};

const char* CodeName(int code) {
  return code < 0 ? "(not run)" : Status::CodeName(static_cast<Status::Code>(code));
}

// Opens `path`, optionally checks every read against `g`, runs VerifyStore; all in a child
// process that reports after each stage. Fails (rather than crashing the test binary) if the
// child dies, saying how far it got.
testing::AssertionResult ProbeInChild(const std::string& path, const Golden* check_reads,
                                      ProbeResult* out) {
  int fds[2];
  if (::pipe(fds) != 0) return testing::AssertionFailure() << "pipe: " << std::strerror(errno);
  pid_t pid = ::fork();
  if (pid < 0) return testing::AssertionFailure() << "fork: " << std::strerror(errno);
  if (pid == 0) {
    ::close(fds[0]);
    ProbeResult r;
    auto report = [&](int stage) {
      r.stage = stage;
      if (::write(fds[1], &r, sizeof(r)) != static_cast<ssize_t>(sizeof(r))) ::_exit(3);
    };
    {
      auto t = SnapshotTable::Open(path);
      r.open_code = static_cast<int>(t.status().code());
      report(1);
      if (t.ok() && check_reads != nullptr) {
        std::string why = CheckAllReads(**t, *check_reads);
        std::snprintf(r.wrong, sizeof(r.wrong), "%s", why.c_str());
      }
      report(2);
    }
    r.verify_code = static_cast<int>(VerifyStore(path).code());
    report(3);
    ::_exit(0);
  }
  ::close(fds[1]);
  ProbeResult r, last;
  while (true) {  // keep the last complete report
    size_t got = 0;
    while (got < sizeof(r)) {
      ssize_t n = ::read(fds[0], reinterpret_cast<char*>(&r) + got, sizeof(r) - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    if (got != sizeof(r)) break;
    last = r;
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  static const char* kStage[] = {"in Open", "checking reads", "in VerifyStore", "after all"};
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || last.stage != 3) {
    auto f = testing::AssertionFailure();
    if (WIFSIGNALED(status)) {
      f << "the readers crashed (signal " << WTERMSIG(status) << ")";
    } else {
      f << "the readers died (exit status " << WEXITSTATUS(status) << ", e.g. a sanitizer report)";
    }
    return f << " " << kStage[std::min(last.stage, 3)]
             << "; Open had returned: " << CodeName(last.open_code);
  }
  *out = last;
  return testing::AssertionSuccess();
}

constexpr int kCorruption = static_cast<int>(Status::Code::kCorruption);

// ---- the fixture ----

class SnapshotCorruption : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    big_dir_ = new TempDir();
    big_ = new Golden();
    BuildGolden(big_dir_, GoldenSpec{}, big_);
    small_dir_ = new TempDir();
    small_ = new Golden();
    // Small enough to flip every byte, still two chunks (a 20000-byte value).
    BuildGolden(small_dir_, GoldenSpec{40, 20000}, small_);
    built_ = !testing::Test::HasFatalFailure();
  }
  static void TearDownTestSuite() {
    delete big_;
    delete big_dir_;
    delete small_;
    delete small_dir_;
  }
  void SetUp() override { ASSERT_TRUE(built_) << "building the golden stores failed"; }

  std::string Scratch(const std::string& name) { return scratch_.Join(name); }

  static TempDir* big_dir_;
  static TempDir* small_dir_;
  static Golden* big_;
  static Golden* small_;
  static bool built_;
  TempDir scratch_;
};
TempDir* SnapshotCorruption::big_dir_ = nullptr;
TempDir* SnapshotCorruption::small_dir_ = nullptr;
Golden* SnapshotCorruption::big_ = nullptr;
Golden* SnapshotCorruption::small_ = nullptr;
bool SnapshotCorruption::built_ = false;

TEST_F(SnapshotCorruption, GoldenStoreIsSound) {
  const Golden& g = *big_;
  EXPECT_GE(g.layout.chunks, 4u) << "the store should span several 16 KiB chunks";
  EXPECT_EQ(g.layout.recs.size(), g.truth.size());
  EXPECT_EQ(g.layout.recs.back().end, g.layout.sorted_off);
  int types[4] = {};
  bool empty_file = false, big_file = false, odd_key = false;
  for (const auto& [key, e] : g.truth) {
    ++types[static_cast<int>(e.meta.type)];
    empty_file |= e.meta.type == EntryType::kFile && e.value.empty();
    big_file |= e.value.size() >= 100 * 1024;
    odd_key |= key.size() % 8 != 0;
  }
  EXPECT_GE(types[1], 1900);
  EXPECT_GE(types[2], 20);
  EXPECT_GE(types[3], 10);
  EXPECT_TRUE(empty_file && big_file && odd_key);
  auto t = SnapshotTable::Open(g.path);
  ASSERT_OK(t.status());
  EXPECT_EQ(CheckAllReads(**t, g), "");
  EXPECT_GE(small_->layout.chunks, 2u);
}

// One flip (every bit inverted) in each structure FORMAT.md names. Open or VerifyStore
// reports Corruption, VerifyStore always does, and whatever Open accepts serves only right
// entries or Corruption.
TEST_F(SnapshotCorruption, EveryStructureFlipIsCaught) {
  const Golden& g = *big_;
  const Layout& L = g.layout;
  std::vector<std::pair<std::string, uint64_t>> targets;
  auto add = [&](std::string what, uint64_t off) {
    ASSERT_LT(off, L.size) << what;
    targets.emplace_back(std::move(what), off);
  };

  // Header fields: the first and the last byte of each.
  const struct {
    const char* name;
    uint32_t off, width;
  } kFields[] = {
      {"magic", kHMagic, 8},
      {"format version", kHVersion, 4},
      {"header size", kHHeaderSize, 4},
      {"file size", kHFileSize, 8},
      {"generation", kHGeneration, 8},
      {"commit time", kHCommitTime, 8},
      {"entry count", kHEntryCount, 8},
      {"sum of value lengths", kHValueBytes, 8},
      {"records offset", kHRecordsOff, 8},
      {"sorted_off", kHSortedOff, 8},
      {"slots_off", kHSlotsOff, 8},
      {"slot_bits", kHSlotBits, 4},
      {"bloom_k", kHBloomK, 4},
      {"bloom_off", kHBloomOff, 8},
      {"bloom_blocks", kHBloomBlocks, 8},
      {"sums_off", kHSumsOff, 8},
      {"sums checksum", kHSumsChecksum, 8},
      {"root mode", kHRootMode, 4},
      {"root uid", kHRootUid, 4},
      {"root gid", kHRootGid, 4},
      {"root subdirs", kHRootSubdirs, 4},
      {"root mtime", kHRootMtime, 8},
      {"root ctime", kHRootCtime, 8},
      {"root atime", kHRootAtime, 8},
      {"root version", kHRootVersion, 8},
      {"header checksum", kHHeaderChecksum, 8},
  };
  for (const auto& f : kFields) {
    add(std::string("header ") + f.name + " (low byte)", f.off);
    add(std::string("header ") + f.name + " (high byte)", f.off + f.width - 1);
  }

  // Records of every kind, at every field.
  std::vector<const RecInfo*> recs = {
      &L.recs.front(),     &L.recs[L.recs.size() / 2],
      &L.recs.back(),      L.Record("big/blob"),
      L.Record("empty"),   L.Record("links/l3"),
      L.Record("etc/app"), L.Record("long/" + std::string(255, 'x')),
      L.Record(FileKey(1))};
  for (const RecInfo* r : recs) {
    ASSERT_NE(r, nullptr);
    const std::string who = "record '" + r->key.substr(0, 20) + "' ";
    add(who + "key_len low byte", r->off);
    add(who + "key_len high byte", r->off + 3);
    add(who + "type", r->off + 4);
    add(who + "zero after type", r->off + 5);
    add(who + "value_len low byte", r->off + 8);
    add(who + "value_len high byte", r->off + 15);
    add(who + "first key byte", r->off + kRecordFixed);
    add(who + "last key byte", r->off + kRecordFixed + r->klen - 1);
    if (Align8(r->klen) > r->klen) add(who + "key padding", r->off + kRecordFixed + r->klen);
    add(who + "mode", r->meta_off);
    add(who + "uid", r->meta_off + 4);
    add(who + "gid", r->meta_off + 8);
    add(who + "subdirs", r->meta_off + kMSubdirs);
    add(who + "mtime", r->meta_off + kMMtime);
    add(who + "ctime", r->meta_off + kMCtime);
    add(who + "version", r->meta_off + kMVersion);
    add(who + "atime", r->meta_off + kMAtime);
    if (r->vlen > 0) {
      add(who + "first value byte", r->value_off);
      add(who + "middle value byte", r->value_off + r->vlen / 2);
      add(who + "last value byte", r->value_off + r->vlen - 1);
    }
    if (Align8(r->vlen) > r->vlen) add(who + "value padding", r->value_off + r->vlen);
  }

  // Sorted index, hash slots (used and empty), bloom blocks, alignment gaps, chunk sums.
  add("sorted index entry 0", L.sorted_off);
  add("sorted index middle entry", L.sorted_off + 8 * (L.n / 2) + 1);
  add("sorted index last entry", L.sorted_end() - 1);
  if (L.slots_off > L.sorted_end()) add("gap after sorted index", L.sorted_end());
  const uint8_t* b = U8(g.bytes);
  bool used_done = false, empty_done = false;
  for (uint64_t s = 0; s < (uint64_t{1} << L.slot_bits) && !(used_done && empty_done); ++s) {
    const uint64_t soff = L.slots_off + s * kSlotSize;
    const bool used = Load64(b + soff + 8) != 0;
    if (used && !used_done) {
      add("used hash slot: hash", soff + 2);
      add("used hash slot: record offset", soff + 8);
      add("used hash slot: record offset high byte", soff + 15);
      used_done = true;
    } else if (!used && !empty_done) {
      add("empty hash slot: hash", soff + 3);
      add("empty hash slot: record offset", soff + 8);
      empty_done = true;
    }
  }
  add("last hash slot", L.slots_end() - 1);
  add("bloom block 0", L.bloom_off);
  add("middle bloom block", L.bloom_off + (L.bloom_blocks / 2) * kBloomBlockBytes + 33);
  add("last bloom byte", L.bloom_end() - 1);
  add("chunk sums entry 0", L.sums_off);
  add("chunk sums last entry", L.size - 1);
  ASSERT_FALSE(HasFatalFailure());

  const std::string copy = Scratch("STORE");
  for (const auto& [what, off] : targets) {
    SCOPED_TRACE(what + " at offset " + std::to_string(off));
    std::string bad = g.bytes;
    bad[off] = static_cast<char>(bad[off] ^ 0xFF);
    ASSERT_TRUE(WriteAll(copy, bad));

    auto t = SnapshotTable::Open(copy);
    if (!t.ok()) {
      EXPECT_TRUE(t.status().IsCorruption()) << t.status().ToString();
      OpenOptions ro;
      ro.read_only = true;
      auto eng = OpenStore(copy, ro);
      EXPECT_TRUE(eng.status().IsCorruption()) << eng.status().ToString();
    } else {
      EXPECT_EQ(CheckAllReads(**t, g), "");
    }
    Status v = VerifyStore(copy);
    EXPECT_TRUE(v.IsCorruption()) << v.ToString();
    if (off < kSnapHeaderSize || off >= L.sums_off) {
      EXPECT_FALSE(t.ok()) << "Open must check the header and the sums array";
    }
  }
}

// Flips one bit of the byte at `off` in the open file `fd`, checks, restores it. Returns a
// description of a miss, "" if the flip was caught and no read went wrong.
std::string FlipAndCheck(const Golden& g, int fd, const std::string& copy, uint64_t off) {
  const uint8_t orig = U8(g.bytes)[off];
  if (!PwriteByte(fd, off, static_cast<uint8_t>(orig ^ (1u << (off % 8))))) return "pwrite";
  std::string why;
  Status v = VerifyStore(copy);
  if (!v.IsCorruption()) why = "VerifyStore: " + v.ToString();
  if (why.empty()) {
    auto t = SnapshotTable::Open(copy);
    if (t.ok()) {
      why = CheckAffectedReads(**t, g, off);
    } else if (!t.status().IsCorruption()) {
      why = "Open: " + t.status().ToString();
    }
  }
  if (!PwriteByte(fd, off, orig)) return "pwrite (restore)";
  return why.empty() ? "" : Region(g.layout, off) + ": " + why;
}

// Every byte of a small store outside the header padding [128, 4096), which
// HeaderPaddingFlipsAreCaught covers.
TEST_F(SnapshotCorruption, EveryByteOfSmallStoreIsCaught) {
  const Golden& g = *small_;
  const std::string copy = Scratch("STORE");
  ASSERT_TRUE(WriteAll(copy, g.bytes));
  int fd = ::open(copy.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t flips = 0, missed = 0;
  for (uint64_t off = 0; off < g.bytes.size(); ++off) {
    if (off == kSnapHeaderSize) off = kSnapDataStart;
    ++flips;
    std::string why = FlipAndCheck(g, fd, copy, off);
    if (!why.empty() && ++missed <= 10) ADD_FAILURE() << why;
  }
  ::close(fd);
  EXPECT_EQ(missed, 0u) << "of " << flips << " flips";
  EXPECT_OK(VerifyStore(copy));  // every byte was restored
}

// Every 7th byte of the large store (again outside [128, 4096)).
TEST_F(SnapshotCorruption, StridedBytesOfLargeStoreAreCaught) {
  const Golden& g = *big_;
  const std::string copy = Scratch("STORE");
  ASSERT_TRUE(WriteAll(copy, g.bytes));
  int fd = ::open(copy.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t flips = 0, missed = 0;
  for (uint64_t off = 0; off < g.bytes.size(); off += 7) {
    if (off >= kSnapHeaderSize && off < kSnapDataStart) continue;
    ++flips;
    std::string why = FlipAndCheck(g, fd, copy, off);
    if (!why.empty() && ++missed <= 10) ADD_FAILURE() << why;
  }
  ::close(fd);
  EXPECT_EQ(missed, 0u) << "of " << flips << " flips";
  EXPECT_GT(flips, g.bytes.size() / 8);
  EXPECT_OK(VerifyStore(copy));
}

// FORMAT.md §2: bytes [128, 4096) are zero. No checksum covers them (the header checksum
// ends at 120, the chunks start at 4096), so only an explicit "is it zero" check (the
// open makes it) can notice a damaged byte there.
TEST_F(SnapshotCorruption, HeaderPaddingFlipsAreCaught) {
  const Golden& g = *small_;
  const std::string copy = Scratch("STORE");
  ASSERT_TRUE(WriteAll(copy, g.bytes));
  int fd = ::open(copy.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t missed = 0, first_missed = 0;
  for (uint64_t off = kSnapHeaderSize; off < kSnapDataStart; ++off) {
    ASSERT_TRUE(PwriteByte(fd, off, static_cast<uint8_t>(1u << (off % 8))));
    Status v = VerifyStore(copy);
    if (!v.IsCorruption() && missed++ == 0) first_missed = off;
    // Whatever VerifyStore says, the readers serve only right entries.
    auto t = SnapshotTable::Open(copy);
    if (t.ok() && off % 512 == 0) {
      EXPECT_EQ(CheckAllReads(**t, g), "") << "offset " << off;
    }
    ASSERT_TRUE(PwriteByte(fd, off, 0));
  }
  ::close(fd);
  EXPECT_EQ(missed, 0u) << "VerifyStore missed " << missed << " of "
                        << kSnapDataStart - kSnapHeaderSize
                        << " flips in the zero header padding [128, 4096), first at offset "
                        << first_missed;
}

TEST_F(SnapshotCorruption, TruncatedOrExtendedFilesAreRejected) {
  const Golden& g = *big_;
  const uint64_t size = g.bytes.size();
  std::vector<uint64_t> lengths = {0, 1, 7, 8, 100, 127, 128, 4095, 4096, 4097, size - 8, size - 1};
  for (uint64_t len = 997; len < size; len += 997) lengths.push_back(len);
  std::vector<std::string> images;
  for (uint64_t len : lengths) images.push_back(g.bytes.substr(0, len));
  images.push_back(g.bytes + std::string(1, '\0'));
  images.push_back(g.bytes + std::string(1, '\xff'));
  images.push_back(g.bytes + std::string(8, '\0'));
  images.push_back(g.bytes + std::string(kChunkSize, '\0'));

  const std::string copy = Scratch("STORE");
  for (const std::string& img : images) {
    SCOPED_TRACE("file of " + std::to_string(img.size()) +
                 " bytes (golden: " + std::to_string(size) + ")");
    ASSERT_TRUE(WriteAll(copy, img));
    auto t = SnapshotTable::Open(copy);
    EXPECT_TRUE(t.status().IsCorruption()) << t.status().ToString();
    Status v = VerifyStore(copy);
    EXPECT_TRUE(v.IsCorruption()) << v.ToString();
    OpenOptions ro;
    ro.read_only = true;
    auto eng = OpenStore(copy, ro);
    EXPECT_TRUE(eng.status().IsCorruption()) << eng.status().ToString();
  }
}

// A table whose value chunk is damaged opens (chunks are checked lazily), but never serves
// the damaged bytes: Find and ListChildren report Corruption naming the chunk.
TEST_F(SnapshotCorruption, CorruptValueChunkIsNeverServed) {
  const Golden& g = *big_;
  const Layout& L = g.layout;
  const std::string copy = Scratch("STORE");

  // 1. The middle of the 100 KiB value (its record spans seven chunks).
  {
    const RecInfo* blob = L.Record("big/blob");
    ASSERT_NE(blob, nullptr);
    std::string bad = g.bytes;
    const uint64_t off = blob->value_off + blob->vlen / 2;
    bad[off] = static_cast<char>(bad[off] ^ 0x10);
    ASSERT_TRUE(WriteAll(copy, bad));
    auto t = SnapshotTable::Open(copy);
    ASSERT_OK(t.status());
    EntryRef e;
    Status s = (*t)->Find("big/blob", &e);
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    EXPECT_NE(s.message().find("chunk"), std::string_view::npos) << s.ToString();
    EXPECT_NE(s.message().find("offset"), std::string_view::npos) << s.ToString();
    s = (*t)->Find("big/blob", &e);  // a failed check is not remembered as a pass
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    int called = 0;
    s = (*t)->ListChildren("big", "", [&](const DirEntry&) { return ++called, true; });
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    EXPECT_EQ(called, 0);
    EXPECT_EQ(CheckAllReads(**t, g), "");
  }

  // 2. A value byte of a small file: its neighbours in the same chunk go down with it, the
  //    listing of its directory reports Corruption after (at most) the children before it.
  {
    const RecInfo* r = L.Record(FileKey(1001));
    ASSERT_NE(r, nullptr);
    ASSERT_GT(r->vlen, 0u);
    std::string bad = g.bytes;
    bad[r->value_off] = static_cast<char>(bad[r->value_off] ^ 0x01);
    ASSERT_TRUE(WriteAll(copy, bad));
    auto t = SnapshotTable::Open(copy);
    ASSERT_OK(t.status());
    EntryRef e;
    Status s = (*t)->Find(r->key, &e);
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    const uint64_t chunk = (r->value_off - kSnapDataStart) / kChunkSize;
    for (const RecInfo& other : L.recs) {
      if ((other.off - kSnapDataStart) / kChunkSize != chunk) continue;
      Status os = (*t)->Find(other.key, &e);
      EXPECT_TRUE(os.IsCorruption()) << other.key << ": " << os.ToString();
    }
    std::string parent(ParentKey(r->key));
    std::vector<std::string> names;
    s = (*t)->ListChildren(parent, "", [&](const DirEntry& d) {
      names.emplace_back(d.name);
      return true;
    });
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    EXPECT_EQ(std::find(names.begin(), names.end(), std::string(BaseName(r->key))), names.end());
    EXPECT_EQ(CheckList(**t, parent, g.lists.at(parent)), "");
    EXPECT_EQ(CheckAllReads(**t, g), "");
  }
}

// The same through the engine: a read-only engine opens the damaged store and reports
// Corruption for what is damaged; a writer refuses to commit on top of it (rebuilding would
// copy the damaged record into a new file with fresh checksums) and leaves STORE alone.
TEST_F(SnapshotCorruption, EngineReportsCorruptChunkAndRefusesToCommitOverIt) {
  const Golden& g = *big_;
  const RecInfo* blob = g.layout.Record("big/blob");
  ASSERT_NE(blob, nullptr);
  std::string bad = g.bytes;
  bad[blob->value_off + 5000] = static_cast<char>(bad[blob->value_off + 5000] ^ 0x80);
  const std::string store = Scratch("STORE");
  ASSERT_TRUE(WriteAll(store, bad));

  {
    OpenOptions ro;
    ro.read_only = true;
    auto eng = OpenStore(store, ro);
    ASSERT_OK(eng.status());
    auto r = (*eng)->Get("big/blob");
    EXPECT_TRUE(r.status().IsCorruption()) << r.status().ToString();
    Status s = (*eng)->List("big", "", [](const DirEntry&) { return true; });
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    auto ok = (*eng)->Get("etc/app/config");
    ASSERT_OK(ok.status());
    EXPECT_EQ(ok->value, g.truth.at("etc/app/config").value);
    EXPECT_EQ((*eng)->Commit(Batch().Put("x", "y")).code(), Status::Code::kReadOnly);
  }
  {
    // A commit that writes a whole table reads every chunk: it refuses the damaged store.
    OpenOptions whole;
    whole.merge_threshold = 1;
    auto eng = OpenStore(store, whole);
    ASSERT_OK(eng.status());
    Status s = (*eng)->Commit(Batch().Put("new-key", "v"));
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    auto r = (*eng)->Get("new-key");
    EXPECT_TRUE(r.status().IsNotFound()) << r.status().ToString();
  }
  {
    // A commit to the log reads only what it changes: over the damaged value it is refused,
    // and a merge, which reads everything, never copies the damage into a new table.
    auto eng = OpenStore(store, OpenOptions{});
    ASSERT_OK(eng.status());
    Status s = (*eng)->Commit(Batch().Put("big/blob", "new"));
    EXPECT_TRUE(s.IsCorruption()) << s.ToString();
    ASSERT_OK((*eng)->Commit(Batch().Put("elsewhere", "v")));
    Status m = dynamic_cast<SnapshotEngine&>(**eng).Merge();
    EXPECT_TRUE(m.IsCorruption()) << m.ToString();
    EXPECT_EQ((*eng)->Get("elsewhere")->value, "v");
  }
  EXPECT_TRUE(ReadAll(store) == bad) << "STORE changed";
  ::unlink((store + ".log").c_str());  // the log of the commit above
  std::vector<std::string> names;
  for (const auto& de : std::filesystem::directory_iterator(scratch_.path())) {
    names.push_back(de.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"STORE", "STORE.lock"}));
}

// A sums_off for which "sums_off + 8 * chunks == file size" holds only modulo 2^64.
uint64_t WrappingSumsOff(uint64_t size) {
  const long double approx = (std::ldexp(1.0L, 53) - size) * 2048.0L / 2049.0L;
  const uint64_t d0 = static_cast<uint64_t>(approx) & ~uint64_t{7};
  for (uint64_t d = d0 - (uint64_t{1} << 20); d < d0 + (uint64_t{1} << 20); d += 8) {
    const uint64_t s = 0 - d;
    const uint64_t chunks = (s - kSnapDataStart + kChunkSize - 1) >> kChunkShift;
    if (s + 8 * chunks == size) return s;
  }
  return 0;
}

// Headers whose checksum is right but whose fields are not (resealed). FORMAT.md §2.7: Open
// checks that every section is in order, aligned, inside the file and sized as its count
// says; these must all be refused by Open itself, without a crash.
TEST_F(SnapshotCorruption, ResealedBadHeadersAreRejectedByOpen) {
  const Golden& g = *big_;
  const Layout& L = g.layout;
  const uint64_t wrap_sums = WrappingSumsOff(L.size);
  ASSERT_NE(wrap_sums, 0u) << "could not construct the wrapping sums_off";

  struct Case {
    std::string what;
    uint32_t field;
    uint64_t value;
    bool u32 = false;
  };
  const std::vector<Case> cases = {
      {"format version 4", kHVersion, kSnapVersion + 1, true},
      // A version-2 header read as version 1 has the wrong header size for it.
      {"format version 1", kHVersion, 1, true},
      {"format version 0", kHVersion, 0, true},
      {"header size 128 (version 1's)", kHHeaderSize, kSnapHeaderSizeV1, true},
      {"root mode 010000", kHRootMode, 010000, true},
      {"header size 4096", kHHeaderSize, 4096, true},
      {"file size + 1", kHFileSize, L.size + 1},
      {"records offset 0", kHRecordsOff, 0},
      {"records offset 4104", kHRecordsOff, 4104},
      {"sorted_off before the records", kHSortedOff, kSnapDataStart - 8},
      {"sorted_off unaligned", kHSortedOff, L.sorted_off + 4},
      {"sorted_off past the end of the file", kHSortedOff, L.size + 64},
      // sorted_off + 8 * n wraps to a small number that passes "slots_off >= sorted end".
      {"sorted_off = 2^64 - 8 (the sorted index wraps around)", kHSortedOff, ~uint64_t{7}},
      {"entry count 2^64 - 1", kHEntryCount, ~uint64_t{0}},
      {"entry count 2^61", kHEntryCount, uint64_t{1} << 61},
      {"slots_off overlapping the sorted index", kHSlotsOff, L.sorted_off},
      {"slots_off unaligned", kHSlotsOff, L.slots_off + 8},
      {"slots_off past the end", kHSlotsOff, Align64(L.size)},
      {"slot_bits 3", kHSlotBits, 3, true},
      {"slot_bits - 1 (too few slots for n)", kHSlotBits, L.slot_bits - 1, true},
      {"slot_bits + 1 (overlaps the bloom filter)", kHSlotBits, L.slot_bits + 1, true},
      {"slot_bits 41", kHSlotBits, 41, true},
      {"slot_bits 63", kHSlotBits, 63, true},
      {"slot_bits 2^32 - 1", kHSlotBits, 0xFFFFFFFFu, true},
      {"bloom_k 0", kHBloomK, 0, true},
      {"bloom_k 1000", kHBloomK, 1000, true},
      {"bloom_off overlapping the hash index", kHBloomOff, L.slots_off},
      {"bloom_off unaligned", kHBloomOff, L.bloom_off + 8},
      {"bloom_off past the end", kHBloomOff, Align64(L.size) + 64},
      {"bloom_blocks 0", kHBloomBlocks, 0},
      {"bloom_blocks + 1 (overlaps the sums)", kHBloomBlocks, L.bloom_blocks + 1},
      {"bloom_blocks 2^40", kHBloomBlocks, uint64_t{1} << 40},
      {"bloom_blocks 2^58 + 1", kHBloomBlocks, (uint64_t{1} << 58) + 1},
      {"sums_off - 8", kHSumsOff, L.sums_off - 8},
      {"sums_off overlapping the bloom filter", kHSumsOff, L.bloom_off},
      {"sums_off past the end", kHSumsOff, L.size + 8},
      // sums_off + 8 * chunks == file size only modulo 2^64: the sums array "starts" far
      // outside the mapping.
      {"sums_off near 2^64 (sums_off + 8 * chunks wraps to the file size)", kHSumsOff, wrap_sums},
  };
  const std::string copy = Scratch("STORE");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string bad = g.bytes;
    if (c.u32) {
      Store32(U8(bad) + c.field, static_cast<uint32_t>(c.value));
    } else {
      Store64(U8(bad) + c.field, c.value);
    }
    Reseal(&bad, L);
    ASSERT_TRUE(WriteAll(copy, bad));
    ProbeResult r;
    testing::AssertionResult survived = ProbeInChild(copy, &g, &r);
    EXPECT_TRUE(survived);
    if (!survived) continue;
    EXPECT_EQ(r.open_code, kCorruption) << "Open: " << CodeName(r.open_code);
    EXPECT_EQ(r.verify_code, kCorruption) << "VerifyStore: " << CodeName(r.verify_code);
    EXPECT_STREQ(r.wrong, "");
  }
}

// Resealed damage that only the full check can see (the header or a record is consistent
// with itself, but not with the rest). VerifyStore must report it; nothing may crash.
// `reads` says whether plain reads (no verify) must still be right-or-Corruption: where the
// damage is a consistent lie (a slot pointing at another record, a resealed length that
// swallows the next record), a reader that checks only what it touches cannot know.
TEST_F(SnapshotCorruption, ResealedDamageIsCaughtByVerify) {
  const Golden& g = *big_;
  const Layout& L = g.layout;
  const RecInfo& blob = *L.Record("big/blob");
  const RecInfo& mid = L.recs[L.recs.size() / 2];
  const RecInfo& last = L.recs.back();
  const RecInfo& etc = *L.Record("etc");
  const RecInfo& f1 = *L.Record(FileKey(1));
  const RecInfo& f17 = *L.Record(FileKey(17));
  ASSERT_EQ(f1.klen, f17.klen);
  ASSERT_EQ(ParentKey(f1.key), ParentKey(f17.key));
  ASSERT_GT(f1.vlen, 0u);
  const uint8_t* gb = U8(g.bytes);

  // The hash slot holding record offset `roff`.
  auto slot_of = [&](uint64_t roff) -> uint64_t {
    for (uint64_t s = 0; s < (uint64_t{1} << L.slot_bits); ++s) {
      if (Load64(gb + L.slots_off + s * kSlotSize + 8) == roff) return L.slots_off + s * kSlotSize;
    }
    return 0;
  };

  struct Case {
    std::string what;
    bool reads;  // plain reads must be right or Corruption
    std::function<void(uint8_t*)> edit;
  };
  const std::vector<Case> cases = {
      {"entry count + 1", false, [&](uint8_t* b) { Store64(b + kHEntryCount, L.n + 1); }},
      {"entry count - 1", false, [&](uint8_t* b) { Store64(b + kHEntryCount, L.n - 1); }},
      {"entry count 0", false, [&](uint8_t* b) { Store64(b + kHEntryCount, 0); }},
      {"sum of value lengths + 1", true,
       [&](uint8_t* b) { Store64(b + kHValueBytes, Load64(b + kHValueBytes) + 1); }},
      {"bloom_k 9", false, [&](uint8_t* b) { Store32(b + kHBloomK, 9); }},
      {"sorted_off - 8 (records section cut short)", false,
       [&](uint8_t* b) { Store64(b + kHSortedOff, L.sorted_off - 8); }},
      {"value_len 2^62", true, [&](uint8_t* b) { Store64(b + blob.off + 8, uint64_t{1} << 62); }},
      {"value_len 2^64 - 1", true, [&](uint8_t* b) { Store64(b + mid.off + 8, ~uint64_t{0}); }},
      {"last value runs into the sorted index", true,
       [&](uint8_t* b) { Store64(b + last.off + 8, last.vlen + 64); }},
      {"value_len + 8 (swallows the next record)", false,
       [&](uint8_t* b) { Store64(b + mid.off + 8, Align8(mid.vlen) + 8); }},
      {"key_len 0", true, [&](uint8_t* b) { Store32(b + mid.off, 0); }},
      {"key_len 4097", true, [&](uint8_t* b) { Store32(b + mid.off, 4097); }},
      {"key_len 2^32 - 1", true, [&](uint8_t* b) { Store32(b + mid.off, 0xFFFFFFFFu); }},
      {"type 0", true, [&](uint8_t* b) { b[mid.off + 4] = 0; }},
      {"type 4", true, [&](uint8_t* b) { b[mid.off + 4] = 4; }},
      {"nonzero byte after type", true, [&](uint8_t* b) { b[mid.off + 6] = 1; }},
      {"key byte NUL", false, [&](uint8_t* b) { b[f1.off + kRecordFixed + 5] = 0; }},
      {"key starts with '/'", false, [&](uint8_t* b) { b[f1.off + kRecordFixed] = '/'; }},
      {"keys out of order (two keys swapped)", false,
       [&](uint8_t* b) {
         std::memcpy(b + f1.off + kRecordFixed, f17.key.data(), f17.klen);
         std::memcpy(b + f17.off + kRecordFixed, f1.key.data(), f1.klen);
       }},
      {"mode 0170644", false, [&](uint8_t* b) { Store32(b + f1.meta_off, 0170644); }},
      // Child directory counts: stored, so a lie is consistent and only verify sees it.
      {"directory subdirs + 1", false,
       [&](uint8_t* b) {
         Store32(b + etc.meta_off + kMSubdirs, Load32(b + etc.meta_off + kMSubdirs) + 1);
       }},
      {"file with subdirs", false, [&](uint8_t* b) { Store32(b + f1.meta_off + kMSubdirs, 1); }},
      {"root subdirs + 1", false,
       [&](uint8_t* b) { Store32(b + kHRootSubdirs, Load32(b + kHRootSubdirs) + 1); }},
      {"root subdirs 0", false, [&](uint8_t* b) { Store32(b + kHRootSubdirs, 0); }},
      {"record version past the generation", false,
       [&](uint8_t* b) { Store64(b + f1.meta_off + kMVersion, Load64(b + kHGeneration) + 1); }},
      {"root version past the generation", false,
       [&](uint8_t* b) { Store64(b + kHRootVersion, Load64(b + kHGeneration) + 1); }},
      {"file turned into a directory with a value", false,
       [&](uint8_t* b) { b[f1.off + 4] = static_cast<uint8_t>(EntryType::kDir); }},
      {"parent directory turned into a file", false,
       [&](uint8_t* b) { b[etc.off + 4] = static_cast<uint8_t>(EntryType::kFile); }},
      {"sorted index entry 0", true, [&](uint8_t* b) { Store64(b + L.sorted_off, 0); }},
      {"sorted index entry unaligned", true,
       [&](uint8_t* b) { Store64(b + L.sorted_off + 8 * 5, L.recs[5].off + 4); }},
      {"sorted index entry into the sums", true,
       [&](uint8_t* b) { Store64(b + L.sorted_off + 8 * 9, L.sums_off); }},
      {"sorted index entry 2^63", true,
       [&](uint8_t* b) { Store64(b + L.sorted_off + 8 * 11, uint64_t{1} << 63); }},
      {"sorted index entry points at the next record", false,
       [&](uint8_t* b) { Store64(b + L.sorted_off + 8 * 20, L.recs[21].off); }},
      {"hash slot offset unaligned", true,
       [&](uint8_t* b) { Store64(b + slot_of(mid.off) + 8, mid.off + 4); }},
      {"hash slot offset past the records", true,
       [&](uint8_t* b) { Store64(b + slot_of(mid.off) + 8, L.slots_off); }},
      {"hash slot offset 2^64 - 8", true,
       [&](uint8_t* b) { Store64(b + slot_of(mid.off) + 8, ~uint64_t{7}); }},
      {"hash slot emptied", false, [&](uint8_t* b) { Store64(b + slot_of(mid.off) + 8, 0); }},
      {"hash slot hash changed", false,
       [&](uint8_t* b) { b[slot_of(mid.off)] = static_cast<uint8_t>(b[slot_of(mid.off)] ^ 1); }},
      {"hash slot points at another record", false,
       [&](uint8_t* b) { Store64(b + slot_of(mid.off) + 8, L.recs[3].off); }},
      {"bloom filter cleared", false,
       [&](uint8_t* b) { std::memset(b + L.bloom_off, 0, L.bloom_end() - L.bloom_off); }},
  };

  const std::string copy = Scratch("STORE");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string bad = g.bytes;
    c.edit(U8(bad));
    ASSERT_NE(bad, g.bytes);
    Reseal(&bad, L);
    ASSERT_TRUE(WriteAll(copy, bad));
    ProbeResult r;
    testing::AssertionResult survived = ProbeInChild(copy, c.reads ? &g : nullptr, &r);
    EXPECT_TRUE(survived);
    if (!survived) continue;
    EXPECT_TRUE(r.open_code == kCorruption || r.verify_code == kCorruption)
        << "Open: " << CodeName(r.open_code) << ", VerifyStore: " << CodeName(r.verify_code);
    EXPECT_EQ(r.verify_code, kCorruption) << "VerifyStore: " << CodeName(r.verify_code);
    EXPECT_STREQ(r.wrong, "");
  }
}

// A record image hidden inside a file's value, and hash slots pointed at it: a slot that
// points into the middle of another record is "a slot pointing elsewhere" (FORMAT.md §2.7).
TEST_F(SnapshotCorruption, ResealedSlotIntoAValueIsCaughtByVerify) {
  // A store whose value is a well-formed record for key "ghost" (and one for an existing key).
  TempDir dir;
  const std::string store = dir.Join("STORE");
  auto record_image = [](std::string_view key, std::string_view value) {
    std::string r(RecordSize(key.size(), value.size()), '\0');
    uint8_t* p = U8(r);
    Store32(p, static_cast<uint32_t>(key.size()));
    p[4] = static_cast<uint8_t>(EntryType::kFile);
    Store64(p + 8, value.size());
    std::memcpy(p + kRecordFixed, key.data(), key.size());
    uint8_t* m = p + kRecordFixed + Align8(key.size());
    Store32(m + kMMode, 0644);
    Store64(m + kMVersion, 2);
    std::memcpy(m + kMetaSize, value.data(), value.size());
    return r;
  };
  {
    OpenOptions o;
    o.create = true;
    o.merge_threshold = 1;  // a whole table: STORE holds every record
    auto eng = OpenStore(store, o);
    ASSERT_OK(eng.status());
    Batch b;
    b.Put("carrier", record_image("ghost", "BOO!") + std::string(64, '\0'));
    b.Put("victim", "the real value");
    for (int i = 0; i < 50; ++i) b.Put("k" + std::to_string(i), std::to_string(i));
    ASSERT_OK((*eng)->Commit(b));
  }
  const std::string golden = ReadAll(store);
  const Layout L = ParseLayout(golden);
  const RecInfo* carrier = L.Record("carrier");
  const RecInfo* victim = L.Record("victim");
  ASSERT_TRUE(carrier && victim);
  const uint64_t fake = carrier->value_off;  // 8-aligned, inside the records section
  const uint64_t slots = uint64_t{1} << L.slot_bits;

  // Puts (hash(key), fake) in the slot where a lookup of `key` would look, sets its bloom bits.
  auto plant = [&](std::string* img, std::string_view key, bool replace) {
    uint8_t* b = U8(*img);
    const uint64_t h = HashKey(key);
    uint64_t s = h & (slots - 1);
    while (Load64(b + L.slots_off + s * kSlotSize + 8) != 0 &&
           !(replace && Load64(b + L.slots_off + s * kSlotSize) == h)) {
      s = (s + 1) & (slots - 1);
    }
    Store64(b + L.slots_off + s * kSlotSize, h);
    Store64(b + L.slots_off + s * kSlotSize + 8, fake);
    BloomProbe bp = Bloom(h, L.bloom_blocks);
    uint8_t* block = b + L.bloom_off + bp.block * kBloomBlockBytes;
    uint32_t a = bp.a;
    for (uint32_t i = 0; i < kBloomK; ++i, a += bp.delta) {
      block[(a & 511) >> 3] |= static_cast<uint8_t>(1u << (a & 7));
    }
    Reseal(img, L);
  };

  std::string ghost = golden;
  plant(&ghost, "ghost", false);
  // The fake record for "victim": same layout trick, a value that is not the real one.
  std::string victim_img = golden;
  {
    std::string img = record_image("victim", "an impostor!!!");
    ASSERT_LE(img.size(), Align8(carrier->vlen));
    std::memcpy(U8(victim_img) + fake, img.data(), img.size());
    plant(&victim_img, "victim", true);
  }
  const std::vector<std::pair<std::string, std::string>> images = {
      {"extra slot for an absent key", ghost}, {"slot of an existing key redirected", victim_img}};
  for (const auto& [what, img] : images) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(WriteAll(store, img));
    ProbeResult r;
    ASSERT_TRUE(ProbeInChild(store, nullptr, &r));
    EXPECT_EQ(r.verify_code, kCorruption) << "VerifyStore: " << CodeName(r.verify_code);
  }
}

// FORMAT.md §2: record padding (after the key, after the value) and the gaps
// between sections are zero, and §2.7 says verify checks the padding. A byte flip there is
// caught by the chunk checksums (see the tests above), but a resealed file with nonzero
// padding passes VerifyStore.
TEST_F(SnapshotCorruption, ResealedNonzeroPaddingIsCaughtByVerify) {
  const Golden& g = *big_;
  const Layout& L = g.layout;
  const RecInfo* odd = nullptr;  // a record with key and value padding
  for (const RecInfo& r : L.recs) {
    if (r.klen % 8 != 0 && r.vlen % 8 != 0) {
      odd = &r;
      break;
    }
  }
  ASSERT_NE(odd, nullptr);
  std::vector<std::pair<std::string, uint64_t>> where = {
      {"key padding", odd->off + kRecordFixed + odd->klen},
      {"value padding", odd->value_off + odd->vlen},
  };
  if (L.slots_off > L.sorted_end()) where.emplace_back("gap after sorted index", L.sorted_end());
  const std::string copy = Scratch("STORE");
  for (const auto& [what, off] : where) {
    SCOPED_TRACE(what + " at offset " + std::to_string(off));
    std::string bad = g.bytes;
    bad[off] = 'x';
    Reseal(&bad, L);
    ASSERT_TRUE(WriteAll(copy, bad));
    ProbeResult r;
    ASSERT_TRUE(ProbeInChild(copy, &g, &r));
    EXPECT_EQ(r.verify_code, kCorruption) << "VerifyStore: " << CodeName(r.verify_code);
    EXPECT_STREQ(r.wrong, "");
  }
}

}  // namespace
}  // namespace keyfs
