// libFuzzer target: arbitrary bytes as a store file of either engine.
//
// The bytes are written to a file and go through everything that reads a store: engine
// detection, `verify`, a read-only open, a walk of the whole tree (listings, lookups of
// every name listed, lookups of names that are not there) and the statistics. Whatever
// the bytes, nothing may crash, hang or allocate without bound (libFuzzer's -rss_limit_mb
// and -timeout catch those), and a file that `verify` calls sound must open and serve
// every entry it lists.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "keyfs/store/engine.h"

namespace {

const std::string& StorePath() {
  static const std::string path = [] {
    static char dir[] = "/tmp/keyfs-fuzz-XXXXXX";
    if (mkdtemp(dir) == nullptr) std::abort();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    });
    return std::string(dir) + "/store";
  }();
  return path;
}

[[noreturn]] void Fail(const std::string& what, const keyfs::Status& s) {
  std::fprintf(stderr, "fuzz_store_file: %s: %s\n", what.c_str(), s.ToString().c_str());
  std::abort();
}

// Lists `dir` and below (at most `budget` entries in all), looks each name up, and checks
// what a sound file must give.
void Walk(const keyfs::Engine& e, const std::string& dir, int depth, bool sound, int* budget) {
  struct Child {
    std::string name;
    keyfs::EntryType type;
    uint64_t size;
  };
  std::vector<Child> children;
  keyfs::Status s = e.List(dir, "", [&](const keyfs::DirEntry& c) {
    children.push_back({std::string(c.name), c.meta.type, c.size});
    return --*budget > 0;
  });
  if (!s.ok() && sound) Fail("listing '" + dir + "' of a sound file", s);
  for (const auto& [name, type, size] : children) {
    const std::string key = dir.empty() ? name : dir + "/" + name;
    auto rec = e.Get(key);
    if (sound && !rec.ok()) Fail("lookup of listed '" + key + "' in a sound file", rec.status());
    if (sound && (rec->meta.type != type || rec->value.size() != size)) std::abort();
    (void)e.GetInDirectory(key);
    (void)e.Get(key + "-absent");
    if (type == keyfs::EntryType::kDir && depth < 16 && *budget > 0) {
      Walk(e, key, depth + 1, sound, budget);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = StorePath();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) std::abort();
  }
  auto kind = keyfs::DetectEngine(path);
  if (!kind.ok()) return 0;
  const bool sound = keyfs::VerifyStore(path).ok();
  keyfs::OpenOptions options;
  options.read_only = true;
  auto engine = keyfs::OpenStore(path, options);
  if (!engine.ok()) {
    if (sound) Fail("open of a sound file", engine.status());
    return 0;
  }
  (void)(*engine)->Stats();
  (void)(*engine)->Get("");
  (void)(*engine)->Get("a/b/c");
  int budget = 4096;
  Walk(**engine, "", 0, sound, &budget);
  return 0;
}
