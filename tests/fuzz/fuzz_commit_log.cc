// libFuzzer target: arbitrary bytes as the commit log (STORE.log, FORMAT.md 2.10) beside a
// sound snapshot table.
//
// The bytes go through everything that reads a log: `verify`, a read-only open and a walk of
// the tree it makes (listings, lookups of every name listed); when `verify` calls the pair
// sound, the walk must serve every entry it lists, and a writer must open it (cutting off a
// torn tail), commit on top of it and leave a store that verifies. Nothing may crash, hang
// or allocate without bound.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "keyfs/store/engine.h"

namespace {

struct Paths {
  std::string store, log, base;
};

// A directory with a sound empty table, made once; each input starts from a copy of it.
const Paths& Files() {
  static const Paths paths = [] {
    static char dir[] = "/tmp/keyfs-fuzz-log-XXXXXX";
    if (mkdtemp(dir) == nullptr) std::abort();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    });
    Paths p{std::string(dir) + "/store", std::string(dir) + "/store.log",
            std::string(dir) + "/base"};
    if (!keyfs::CreateStore(p.base, keyfs::EngineKind::kSnapshot).ok()) std::abort();
    return p;
  }();
  return paths;
}

[[noreturn]] void Fail(const std::string& what, const keyfs::Status& s) {
  std::fprintf(stderr, "fuzz_commit_log: %s: %s\n", what.c_str(), s.ToString().c_str());
  std::abort();
}

void Walk(const keyfs::Engine& e, const std::string& dir, int depth, bool sound, int* budget) {
  std::vector<std::pair<std::string, keyfs::EntryType>> children;
  keyfs::Status s = e.List(dir, "", [&](const keyfs::DirEntry& c) {
    children.emplace_back(std::string(c.name), c.meta.type);
    return --*budget > 0;
  });
  if (!s.ok() && sound) Fail("listing '" + dir + "' of a sound store", s);
  for (const auto& [name, type] : children) {
    const std::string key = dir.empty() ? name : dir + "/" + name;
    auto rec = e.Get(key);
    if (sound && !rec.ok()) Fail("lookup of listed '" + key + "' in a sound store", rec.status());
    if (type == keyfs::EntryType::kDir && depth < 16 && *budget > 0) {
      Walk(e, key, depth + 1, sound, budget);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Paths& p = Files();
  std::error_code ec;
  std::filesystem::copy_file(p.base, p.store, std::filesystem::copy_options::overwrite_existing,
                             ec);
  if (ec) std::abort();
  {
    std::ofstream out(p.log, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) std::abort();
  }
  const bool sound = keyfs::VerifyStore(p.store).ok();
  {
    keyfs::OpenOptions ro;
    ro.read_only = true;
    auto engine = keyfs::OpenStore(p.store, ro);
    if (!engine.ok()) {
      if (sound) Fail("read-only open of a sound store", engine.status());
      return 0;
    }
    (void)(*engine)->Stats();
    int budget = 4096;
    Walk(**engine, "", 0, sound, &budget);
  }
  if (sound) {
    auto engine = keyfs::OpenStore(p.store, keyfs::OpenOptions{});
    if (!engine.ok()) Fail("read-write open of a sound store", engine.status());
    keyfs::Status s = (*engine)->Commit(keyfs::Batch().Put("fuzz-after", "x"));
    // The log may hold a tree where the root's name is taken: only its sanity matters.
    (void)s;
    engine->reset();
    keyfs::Status v = keyfs::VerifyStore(p.store);
    if (!v.ok()) Fail("verify after a commit on a sound store", v);
  }
  return 0;
}
