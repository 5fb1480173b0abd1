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
#include <set>
#include <string>
#include <vector>

#include "format.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"
#include "snapshot/table_builder.h"
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
const uint8_t* Bytes(const std::string& file) {
  return reinterpret_cast<const uint8_t*>(file.data());
}
// The format version of a store file: at offset 8 in both engines (FORMAT.md 2.1, 3.1).
uint32_t VersionOf(const std::string& file) { return format::Load32(Bytes(file) + 8); }

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

// ---- damaged copies ----
// Every offset below comes from the format's constants (store/format.h) and the file's own
// header, so the same code damages each version's files where its layout puts things.

// One damaged copy of a checked-in file and what its refusal must say.
struct Damage {
  std::string what;                // for the failure message
  std::string bytes;               // the damaged file
  std::vector<std::string> names;  // words the Corruption's message holds: the structure
                                   // as FORMAT.md names it, and "offset N"
  bool lazy = false;               // FORMAT.md: opening does not look there, the first read does
};

std::string OffsetWord(uint64_t off) { return "offset " + std::to_string(off); }

Damage Flip(const std::string& file, uint64_t off, const std::string& what,
            std::vector<std::string> names, bool lazy = false) {
  std::string bytes = file;
  bytes.at(off) = static_cast<char>(bytes[off] ^ 0x10);  // a version 1 or 2 stays unknown
  return {"byte " + std::to_string(off) + " flipped: " + what, std::move(bytes), std::move(names),
          lazy};
}
Damage Cut(const std::string& file, uint64_t size, const std::string& what,
           std::vector<std::string> names) {
  return {"cut to " + std::to_string(size) + " bytes: " + what, file.substr(0, size),
          std::move(names), false};
}
Damage Append(const std::string& file, std::vector<std::string> names) {
  return {"one byte appended", file + std::string(1, '\0'), std::move(names), false};
}

// A region of a snapshot file (FORMAT.md §2), from its header.
struct Region {
  std::string name;
  uint64_t begin, end;
};
std::vector<Region> SnapshotRegions(const std::string& file, uint32_t version) {
  using namespace format;  // NOLINT: the format's names
  const uint8_t* h = Bytes(file);
  const uint64_t header_size = version == 1 ? kSnapHeaderSizeV1 : kSnapHeaderSize;
  const uint64_t sorted = Load64(h + kHSortedOff);
  const uint64_t sorted_end = sorted + 8 * Load64(h + kHEntryCount);
  const uint64_t slots = Load64(h + kHSlotsOff);
  const uint64_t slots_end = slots + (uint64_t{kSlotSize} << Load32(h + kHSlotBits));
  const uint64_t bloom = Load64(h + kHBloomOff);
  const uint64_t bloom_end = bloom + kBloomBlockBytes * Load64(h + kHBloomBlocks);
  const uint64_t sums = Load64(h + kHSumsOff);
  std::vector<Region> all = {
      {"header", 0, header_size},          {"header padding", header_size, kSnapDataStart},
      {"records", kSnapDataStart, sorted}, {"sorted index", sorted, sorted_end},
      {"padding", sorted_end, slots},      {"hash index", slots, slots_end},
      {"padding", slots_end, bloom},       {"bloom filter", bloom, bloom_end},
      {"padding", bloom_end, sums},        {"chunk checksums", sums, file.size()}};
  std::erase_if(all, [](const Region& r) { return r.begin >= r.end; });
  return all;
}

std::vector<Damage> SnapshotFlips(const std::string& file, uint32_t version) {
  using namespace format;  // NOLINT: the format's names
  const uint8_t* h = Bytes(file);
  const uint64_t header_size = version == 1 ? kSnapHeaderSizeV1 : kSnapHeaderSize;
  const uint64_t header_sum = header_size - 8;
  const uint64_t sums = Load64(h + kHSumsOff);
  // A byte of the data area is caught by its chunk's checksum: the message names the chunk's
  // offset, what the chunk holds and where its checksum is.
  const auto chunk = [&](uint64_t off) {
    return OffsetWord(kSnapDataStart + ((off - kSnapDataStart) >> kChunkShift << kChunkShift));
  };
  std::vector<Damage> d;
  const std::vector<std::string> header = {"header", OffsetWord(header_sum)};
  d.push_back(Flip(file, kHMagic, "header magic", {"header", OffsetWord(kHMagic)}));
  d.push_back(Flip(file, kHVersion, "header version", {"header", OffsetWord(kHVersion)}));
  d.push_back(Flip(file, kHHeaderSize, "header size field", {"header", OffsetWord(kHHeaderSize)}));
  d.push_back(Flip(file, kHEntryCount, "header entry count", header));
  d.push_back(Flip(file, kHSlotsOff + 1, "header hash index offset", header));
  if (version >= 2) d.push_back(Flip(file, kHRootUid, "header root metadata", header));
  d.push_back(Flip(file, header_sum + 3, "header checksum", header));
  for (uint64_t off : {header_size, kSnapDataStart - 1}) {
    d.push_back(Flip(file, off, "header padding", {"header padding", OffsetWord(off)}));
  }
  // Each part of one record (etc/nginx/default: key and value both padded).
  const uint64_t meta_size = version == 1 ? kMetaSizeV1 : kMetaSize;
  uint64_t r = kSnapDataStart;
  while (file.compare(r + kRecordFixed, Load32(h + r), "etc/nginx/default") != 0) {
    r += RecordSize(Load32(h + r), Load64(h + r + 8), static_cast<uint32_t>(meta_size));
    if (r >= Load64(h + kHSortedOff)) {
      ADD_FAILURE() << "no record etc/nginx/default";
      return {};
    }
  }
  const uint64_t klen = Load32(h + r), vlen = Load64(h + r + 8);
  const uint64_t meta = r + kRecordFixed + Align8(klen), value = meta + meta_size;
  EXPECT_NE(Align8(klen), klen);
  EXPECT_NE(Align8(vlen), vlen);
  const std::vector<std::pair<std::string, uint64_t>> record_parts = {
      {"record key length", r},
      {"record type", r + 4},
      {"record value length", r + 8},
      {"record key", r + kRecordFixed + 2},
      {"record key padding", r + kRecordFixed + klen},
      {"record mode", meta + kMMode},
      {"record mtime", meta + kMMtime + 7},
      {"record version", meta + kMVersion},
      {"record value", value + 1},
      {"record value padding", value + vlen},
  };
  for (const auto& [what, off] : record_parts) {
    d.push_back(Flip(file, off, what, {"records", chunk(off)}, /*lazy=*/true));
  }
  // One byte in each other region; two slots, a used and an empty one.
  for (const Region& region : SnapshotRegions(file, version)) {
    const uint64_t off = region.begin + (region.end - region.begin) / 2;
    if (region.name == "sorted index" || region.name == "padding" ||
        region.name == "bloom filter") {
      d.push_back(Flip(file, off, region.name, {region.name, chunk(off)}, /*lazy=*/true));
    } else if (region.name == "hash index") {
      for (uint64_t slot = region.begin, seen = 0; slot < region.end && seen != 3;
           slot += kSlotSize) {
        const bool used = Load64(h + slot + 8) != 0;
        if (seen & (used ? 1 : 2)) continue;
        seen |= used ? 1 : 2;
        d.push_back(Flip(file, slot + (used ? 9 : 2), used ? "used hash slot" : "empty hash slot",
                         {"hash index", chunk(slot)}, /*lazy=*/true));
      }
    } else if (region.name == "chunk checksums") {
      // Their own checksum is in the header: the open compares it.
      d.push_back(Flip(file, off, region.name, {"chunk checksums", OffsetWord(sums)}));
    }
  }
  return d;
}

std::vector<Damage> SnapshotCuts(const std::string& file, uint32_t version) {
  using namespace format;  // NOLINT: the format's names
  const uint64_t header_size = version == 1 ? kSnapHeaderSizeV1 : kSnapHeaderSize;
  std::vector<Damage> d;
  // Shorter than the first page: the reader names what is missing of it.
  for (uint64_t size : {uint64_t{0}, uint64_t{5}, uint64_t{8}, header_size / 2, header_size - 1}) {
    d.push_back(Cut(file, size, "inside the header", {"header", OffsetWord(size)}));
  }
  for (uint64_t size : {header_size, (header_size + kSnapDataStart) / 2}) {
    d.push_back(Cut(file, size, "inside the header padding", {"header padding", OffsetWord(size)}));
  }
  // From the data on the header is whole, and names where the file now ends.
  for (const Region& region : SnapshotRegions(file, version)) {
    if (region.begin < kSnapDataStart) continue;
    d.push_back(Cut(file, region.begin, "at the start of the " + region.name,
                    {"truncated at the start of the " + region.name, OffsetWord(region.begin)}));
    const uint64_t mid = region.begin + (region.end - region.begin) / 2;
    if (mid != region.begin) {
      d.push_back(Cut(file, mid, "inside the " + region.name,
                      {"truncated inside the " + region.name, OffsetWord(mid)}));
    }
  }
  d.push_back(Cut(file, file.size() - 1, "its last byte",
                  {"chunk checksums", OffsetWord(file.size() - 1)}));
  d.push_back(Append(file, {"extended", OffsetWord(file.size())}));
  return d;
}

std::vector<Damage> DetsFlips(const std::string& file, uint32_t version) {
  using namespace format;  // NOLINT: the format's names
  const uint8_t* f = Bytes(file);
  const uint64_t header_size = version == 1 ? kDetsHeaderSizeV1 : kDetsHeaderSize;
  const uint64_t header_off = file.size() - kDetsFooterSize - header_size;
  EXPECT_EQ(Load64(f + file.size() - kDetsFooterSize), header_off);
  const uint8_t* h = f + header_off;
  const uint64_t header_sum = header_off + header_size - 8;
  const uint64_t fixed = version == 1 ? kDetsEntryFixedV1 : kDetsEntryFixed;
  std::vector<Damage> d;
  d.push_back(Flip(file, 0, "prefix magic", {"prefix", OffsetWord(0)}));
  d.push_back(Flip(file, 8, "prefix version", {"prefix", OffsetWord(8)}));
  d.push_back(Flip(file, 30, "prefix padding", {"prefix", OffsetWord(30)}));

  // Buckets: the first one used, and the largest (it holds data/blob).
  uint32_t first = kDetsBuckets, largest = kDetsBuckets;
  uint64_t largest_bytes = 0;
  for (uint32_t t = 0; t < kDetsBuckets; ++t) {
    const uint8_t* desc = h + kDHBuckets + t * kDetsBucketDescSize;
    if (Load64(desc + kBCount) == 0) continue;
    if (first == kDetsBuckets) first = t;
    const uint64_t bytes = Load64(desc + kBEntriesEnd) - Load64(desc + kBEntriesOff);
    if (bytes > largest_bytes) largest = t, largest_bytes = bytes;
  }
  if (first == kDetsBuckets) {
    ADD_FAILURE() << "no bucket in use";
    return {};
  }
  for (uint32_t t : {first, largest}) {
    const uint8_t* desc = h + kDHBuckets + t * kDetsBucketDescSize;
    const uint64_t entries = Load64(desc + kBEntriesOff), entries_end = Load64(desc + kBEntriesEnd);
    const uint64_t index = Load64(desc + kBIndexOff);
    const uint64_t bloom = index + (uint64_t{kDetsSlotSize} << Load32(desc + kBSlotBits));
    const uint64_t sums = bloom + kDetsBloomBlockBytes * Load64(desc + kBBloomBlocks);
    const uint64_t chunks = (sums - entries + kDetsChunkSize - 1) / kDetsChunkSize;
    const uint64_t end = Align64(sums + 8 * chunks);
    const std::string bucket = "bucket " + std::to_string(t);
    // A byte of [entries, sums) is caught by its chunk's checksum; the open verifies only
    // the chunks that hold the bloom filter (FORMAT.md 3.9), the first read the others.
    const auto in_chunk = [&](uint64_t off, const std::string& what, const std::string& name) {
      const uint64_t c = (off - entries) / kDetsChunkSize;
      const bool lazy = c < (bloom - entries) / kDetsChunkSize;
      d.push_back(Flip(file, off, bucket + " " + what,
                       {bucket, name, OffsetWord(entries + c * kDetsChunkSize)}, lazy));
    };
    const uint64_t klen = Load16(f + entries + kEKeyLen);
    const uint64_t size = Load64(f + entries + kESize);
    in_chunk(entries + kEHash + 1, "entry hash", "entries");
    in_chunk(entries + kESize, "entry size", "entries");
    in_chunk(entries + kEMtime + 3, "entry mtime", "entries");
    in_chunk(entries + kEType, "entry type", "entries");
    in_chunk(entries + kEKeyLen, "entry key length", "entries");
    if (version >= 2) {
      in_chunk(entries + kEAtime, "entry atime", "entries");
      in_chunk(entries + kESubdirs, "entry child count", "entries");
    }
    in_chunk(entries + fixed, "entry key", "entries");
    if (size > fixed + klen) in_chunk(entries + fixed + klen, "entry value", "entries");
    if (index > entries_end) in_chunk(entries_end, "padding before the hash table", "padding");
    for (uint64_t slot = index, seen = 0; slot < bloom && seen != 3; slot += kDetsSlotSize) {
      const bool used = Load64(f + slot + 8) != 0;
      if (seen & (used ? 1 : 2)) continue;
      seen |= used ? 1 : 2;
      in_chunk(slot + (used ? 8 : 1), used ? "used hash slot" : "empty hash slot", "hash table");
    }
    in_chunk(bloom + 5, "bloom filter", "bloom filter");
    for (uint64_t c = 0; c < chunks; ++c) {
      d.push_back(Flip(file, sums + 8 * c + 4, bucket + " chunk checksum",
                       {bucket, "chunk checksum", OffsetWord(sums + 8 * c)},
                       c < (bloom - entries) / kDetsChunkSize));
    }
    for (uint64_t off : {sums + 8 * chunks, end - 1}) {
      if (off < end) {
        d.push_back(Flip(file, off, bucket + " padding after its checksums",
                         {"padding after " + bucket, OffsetWord(off)}));
      }
    }
  }
  // Key index: its blocks are verified on first use, its directory by the open.
  const uint64_t key_index = Load64(h + kDHKeyIndexOff), key_dir = Load64(h + kDHKeyDirOff);
  d.push_back(Flip(file, key_index + 2, "key index block 0",
                   {"key index block 0", OffsetWord(key_index)}, /*lazy=*/true));
  d.push_back(Flip(file, key_dir - 1, "key index block 0, its last byte",
                   {"key index block 0", OffsetWord(key_index)}, /*lazy=*/true));
  d.push_back(
      Flip(file, key_dir + 1, "key index directory", {"key index directory", OffsetWord(key_dir)}));
  d.push_back(Flip(file, key_dir + kDetsKeyDirEntrySize - 1, "key index directory checksum",
                   {"key index directory", OffsetWord(key_dir)}));
  // Header (its bucket descriptors and the root's metadata included) and footer.
  const std::vector<std::string> header = {"header", OffsetWord(header_sum)};
  d.push_back(Flip(file, header_off + kDHMagic, "header magic",
                   {"header", OffsetWord(header_off + kDHMagic)}));
  d.push_back(Flip(file, header_off + kDHVersion, "header version",
                   {"header", OffsetWord(header_off + kDHVersion)}));
  d.push_back(Flip(file, header_off + kDHHeaderSize, "header size field",
                   {"header", OffsetWord(header_off + kDHHeaderSize)}));
  d.push_back(Flip(file, header_off + kDHEntryCount, "header entry count", header));
  d.push_back(Flip(file, header_off + kDHKeyDirChecksum, "header key directory checksum", header));
  d.push_back(Flip(file, header_off + kDHBuckets + first * kDetsBucketDescSize + kBCount,
                   "bucket descriptor count", header));
  d.push_back(Flip(file, header_off + kDHBuckets + largest * kDetsBucketDescSize + kBEntriesOff,
                   "bucket descriptor offset", header));
  if (version >= 2) {
    d.push_back(Flip(file, header_off + kDHRootMtime + 2, "header root metadata", header));
  }
  d.push_back(Flip(file, header_sum, "header checksum", header));
  for (uint64_t off : {file.size() - kDetsFooterSize, file.size() - 1}) {
    d.push_back(Flip(file, off, "footer", {"footer", OffsetWord(file.size() - kDetsFooterSize)}));
  }
  return d;
}

std::vector<Damage> DetsCuts(const std::string& file, uint32_t version) {
  using namespace format;  // NOLINT: the format's names
  const uint8_t* f = Bytes(file);
  const uint64_t header_size = version == 1 ? kDetsHeaderSizeV1 : kDetsHeaderSize;
  const uint64_t header_off = file.size() - kDetsFooterSize - header_size;
  const uint8_t* h = f + header_off;
  // Every structure's start and middle. The header is found only through the footer (the
  // file's last 8 bytes): a cut file has no footer, and the reader can say no more than
  // that, or that the file is too short to hold a header and a footer.
  std::vector<std::pair<std::string, uint64_t>> cuts = {
      {"at the start", 0},
      {"inside the prefix magic", 5},
      {"inside the prefix", 8},
      {"inside the prefix", 32},
      {"at the end of the prefix", kDetsPrefixSize}};
  for (uint32_t t = 0, used = 0; t < kDetsBuckets && used < 3; ++t) {  // three are enough
    const uint8_t* desc = h + kDHBuckets + t * kDetsBucketDescSize;
    if (Load64(desc + kBCount) == 0) continue;
    ++used;
    const uint64_t entries = Load64(desc + kBEntriesOff), entries_end = Load64(desc + kBEntriesEnd);
    const uint64_t index = Load64(desc + kBIndexOff);
    const uint64_t bloom = index + (uint64_t{kDetsSlotSize} << Load32(desc + kBSlotBits));
    const uint64_t sums = bloom + kDetsBloomBlockBytes * Load64(desc + kBBloomBlocks);
    const std::string bucket = "bucket " + std::to_string(t);
    cuts.insert(cuts.end(), {{"at the start of " + bucket, entries},
                             {"inside the entries of " + bucket, (entries + entries_end) / 2},
                             {"at the end of the entries of " + bucket, entries_end},
                             {"at the hash table of " + bucket, index},
                             {"at the bloom filter of " + bucket, bloom},
                             {"at the chunk checksums of " + bucket, sums},
                             {"after the chunk checksums of " + bucket, sums + 8}});
  }
  const uint64_t key_index = Load64(h + kDHKeyIndexOff), key_dir = Load64(h + kDHKeyDirOff);
  cuts.insert(cuts.end(), {{"at the key index", key_index},
                           {"inside the key index", (key_index + key_dir) / 2},
                           {"at the key index directory", key_dir},
                           {"at the header", header_off},
                           {"inside the header", header_off + header_size / 2},
                           {"at the footer", header_off + header_size},
                           {"inside the footer", file.size() - 1}});
  std::vector<Damage> d;
  const uint64_t min_size = kDetsPrefixSize + kDetsHeaderSizeV1 + kDetsFooterSize;
  std::set<uint64_t> sizes;
  for (const auto& [what, size] : cuts) {
    if (!sizes.insert(size).second) continue;  // the end of one structure is the next's start
    if (size < kDetsPrefixSize) {
      d.push_back(Cut(file, size, what, {"prefix", OffsetWord(size)}));
    } else if (size < min_size) {
      d.push_back(Cut(file, size, what, {"header and footer", OffsetWord(size)}));
    } else {
      d.push_back(Cut(file, size, what, {"footer", OffsetWord(size - kDetsFooterSize)}));
    }
  }
  d.push_back(Append(file, {"footer", OffsetWord(file.size() + 1 - kDetsFooterSize)}));
  return d;
}

// Reads every entry (Get) and every directory (List) of `e` as `f` holds them: each answer
// must be right (else it goes into *wrong) or a Corruption. Returns the first Corruption,
// or OK if every answer was right.
Status ReadBack(const Engine& e, const CheckedInFile& f, std::string* wrong) {
  const auto want = Expected(f);
  Status first;
  const auto note = [&](const std::string& what, const Status& s) {
    if (s.IsCorruption()) {
      if (first.ok()) first = s;
    } else if (!s.ok()) {
      *wrong += what + ": " + s.ToString() + "\n";
    }
  };
  for (const auto& [key, w] : want) {
    auto r = e.Get(key);
    note("Get('" + key + "')", r.status());
    if (r.ok() &&
        (r->meta.type != w.type || r->meta.mode != w.mode || r->meta.uid != w.uid ||
         r->meta.gid != w.gid || r->meta.subdirs != w.subdirs || r->meta.mtime_ns != w.mtime ||
         r->meta.atime_ns != w.atime || r->value != w.value)) {
      *wrong += "Get('" + key + "'): not what was written\n";
    }
    if (w.type != EntryType::kDir) continue;
    std::vector<std::string> names, want_names;
    for (const auto& [k, unused] : want) {
      if (!k.empty() && ParentKey(k) == key) want_names.emplace_back(BaseName(k));
    }
    Status s = e.List(key, "", [&](const DirEntry& d) {
      names.emplace_back(d.name);
      return true;
    });
    note("List('" + key + "')", s);
    if (s.ok() && names != want_names) *wrong += "List('" + key + "'): not what was written\n";
  }
  return first;
}

// `s` is a Corruption whose message holds each of `names`.
void ExpectNames(const Status& s, const std::vector<std::string>& names, const char* who) {
  EXPECT_TRUE(s.IsCorruption()) << who << ": " << s.ToString();
  for (const std::string& n : names) {
    EXPECT_NE(s.ToString().find(n), std::string::npos)
        << who << ": the message does not name '" << n << "': " << s.ToString();
  }
}

// Each checked-in file, of every format version and engine.
class FormatCompat : public ::testing::TestWithParam<CheckedInFile> {
 protected:
  void SetUp() override {
    original_ = ReadAll(TestData(GetParam().name));
    ASSERT_GT(original_.size(), 64u);
    ASSERT_EQ(VersionOf(original_), GetParam().version)
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

  // Writes `d` as the store and expects every reader to refuse it (see below).
  void ExpectRefused(const Damage& d);

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
    std::string wrong;  // ReadBack, which judges the reads of damaged copies, agrees
    EXPECT_OK(ReadBack(**e, f, &wrong));
    EXPECT_EQ(wrong, "");
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
    EXPECT_EQ(VersionOf(now), current);
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

// A damaged copy is refused, by VerifyStore and by a read-only and a read-write open, with
// a Corruption that names the structure (as FORMAT.md names it) and the offset; where the
// open legitimately does not look (FORMAT.md: checked on first use), it opens but serves
// no damaged byte, and the reads that meet the damage say the same. No open rewrites a
// damaged file (a read-write open of a version-1 file would upgrade a sound one).
void FormatCompat::ExpectRefused(const Damage& d) {
  SCOPED_TRACE(d.what);
  WriteAll(path_, d.bytes);
  ExpectNames(VerifyStore(path_), d.names, "VerifyStore");
  for (bool read_only : {true, false}) {
    SCOPED_TRACE(read_only ? "read-only open" : "read-write open");
    auto e = Open(read_only);
    if (!e.ok()) {
      ExpectNames(e.status(), d.names, "open");
      continue;
    }
    EXPECT_TRUE(d.lazy) << "opened, but FORMAT.md says the open checks this";
    std::string wrong;
    const Status first = ReadBack(**e, GetParam(), &wrong);
    EXPECT_EQ(wrong, "") << "served damaged data";
    ExpectNames(first, d.names, "reads after the open");
  }
  EXPECT_TRUE(ReadAll(path_) == d.bytes) << "a damaged file was rewritten";
  for (const std::string& name : DirNames(dir_.path())) {
    EXPECT_TRUE(name == "STORE" || name == "STORE.lock") << "left behind: " << name;
  }
}

TEST_P(FormatCompat, AByteFlippedInEachStructureIsRefused) {
  const std::vector<Damage> damages = GetParam().kind == EngineKind::kSnapshot
                                          ? SnapshotFlips(original_, GetParam().version)
                                          : DetsFlips(original_, GetParam().version);
  ASSERT_FALSE(damages.empty());
  for (const Damage& d : damages) ASSERT_NO_FATAL_FAILURE(ExpectRefused(d));
}

TEST_P(FormatCompat, TruncatedOrExtendedCopiesAreRefused) {
  const std::vector<Damage> damages = GetParam().kind == EngineKind::kSnapshot
                                          ? SnapshotCuts(original_, GetParam().version)
                                          : DetsCuts(original_, GetParam().version);
  ASSERT_FALSE(damages.empty());
  for (const Damage& d : damages) ASSERT_NO_FATAL_FAILURE(ExpectRefused(d));
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
  EXPECT_EQ((*e)->Stats().format_version, format::kSnapVersion);
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
