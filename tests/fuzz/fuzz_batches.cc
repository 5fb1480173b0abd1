// libFuzzer target: arbitrary bytes as a sequence of batches (puts, symlinks, mkdirs,
// deletes, metadata changes, renames with their flags, over a small tree of keys), applied
// to a fresh store of either engine and to the model of tests/engine_model.h. Every commit
// must return what the model says, and the engine's whole tree must equal the model's
// after the sequence and again after the store is reopened (snapshot: every commit is
// durable; dets: after Sync).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "engine_model.h"
#include "keyfs/store/engine.h"

namespace {

using keyfs::model::Code;

// On tmpfs when there is one: every snapshot commit is fsynced.
char dir_buf[] = "/dev/shm/keyfs-fuzz-batches-XXXXXX";

const std::string& Dir() {
  static const std::string dir = [] {
    if (mkdtemp(dir_buf) == nullptr) {
      std::snprintf(dir_buf, sizeof dir_buf, "%s", "/tmp/keyfs-fuzz-batches-XXXXXX");
      if (mkdtemp(dir_buf) == nullptr) std::abort();
    }
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir_buf, ec);
    });
    return std::string(dir_buf);
  }();
  return dir;
}

// Reads the input a byte at a time; past its end, zeros.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const uint8_t* data_;
  size_t size_, pos_ = 0;
};

// A key of 1-3 components from {a, b, c, dd}: a small tree, so that mutations collide.
std::string Key(Reader* r) {
  static const char* kNames[] = {"a", "b", "c", "dd"};
  const uint8_t b = r->Byte();
  std::string k;
  for (int i = 0, depth = 1 + b % 3; i < depth; ++i) {
    if (!k.empty()) k += '/';
    k += kNames[(b >> (2 + 2 * i)) & 3];
  }
  return k;
}

keyfs::Mutation NextMutation(Reader* r) {
  keyfs::Mutation m;
  const uint8_t op = r->Byte();
  m.key = Key(r);
  switch (op % 7) {
    case 0:
    case 1: {
      m.op = keyfs::Mutation::Op::kPut;
      m.meta = keyfs::Meta::File(0600 | (op & 077));
      const size_t len = r->Byte() % 64;
      for (size_t i = 0; i < len; ++i) m.value += static_cast<char>(r->Byte());
      m.exclusive = op & 0x80;
      break;
    }
    case 2:
      m.op = keyfs::Mutation::Op::kPut;
      m.meta = keyfs::Meta::Symlink();
      m.value = "../" + Key(r);
      break;
    case 3:
      m.op = keyfs::Mutation::Op::kMkdir;
      m.meta = keyfs::Meta::Dir(0700 | (op & 077));
      break;
    case 4:
      m.op = keyfs::Mutation::Op::kDelete;
      break;
    case 5:
      m.op = keyfs::Mutation::Op::kSetMeta;
      m.meta = keyfs::Meta::File(r->Byte() | ((op & 1) << 8));
      if (op & 0x80) m.key = "";  // the root's own metadata
      break;
    default: {
      m.op = keyfs::Mutation::Op::kRename;
      m.target = Key(r);
      const uint8_t f = op >> 5;
      m.rename_flags = f == 1   ? keyfs::kRenameNoReplace
                       : f == 2 ? keyfs::kRenameExchange
                       : f == 3 ? keyfs::kRenameNoReplace | keyfs::kRenameExchange
                                : keyfs::kRenameNone;
      break;
    }
  }
  return m;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_batches: %s\n", what.c_str());
  std::abort();
}

void CheckSame(const keyfs::Engine& e, const keyfs::model::Model& model, const char* when) {
  keyfs::model::Tree got;
  keyfs::Status s = keyfs::model::Dump(e, "", &got);
  if (!s.ok()) Fail(std::string(when) + ": walking the engine: " + s.ToString());
  if (got.size() != model.tree().size()) {
    Fail(std::string(when) + ": " + std::to_string(got.size()) + " entries, the model has " +
         std::to_string(model.tree().size()));
  }
  for (const auto& [k, v] : model.tree()) {
    auto it = got.find(k);
    if (it == got.end()) Fail(std::string(when) + ": missing " + k);
    if (it->second.type != v.type || it->second.value != v.value || it->second.mode != v.mode) {
      Fail(std::string(when) + ": " + k + " differs from the model");
    }
    const uint32_t subdirs = v.type == keyfs::EntryType::kDir ? model.Subdirs(k) : 0;
    if (it->second.subdirs != subdirs) Fail(std::string(when) + ": subdirs of " + k);
  }
  auto root = e.Get("");
  if (!root.ok() || root->meta.mode != model.root_mode() ||
      root->meta.subdirs != model.Subdirs("")) {
    Fail(std::string(when) + ": the root differs from the model");
  }
}

std::unique_ptr<keyfs::Engine> Open(const std::string& path, keyfs::EngineKind kind) {
  keyfs::OpenOptions o;
  o.create = true;
  o.kind = kind;
  auto e = keyfs::OpenStore(path, o);
  if (!e.ok()) Fail("open: " + e.status().ToString());
  return std::move(*e);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Reader r(data, size);
  const keyfs::EngineKind kind =
      r.Byte() & 1 ? keyfs::EngineKind::kDets : keyfs::EngineKind::kSnapshot;
  const std::string path = Dir() + "/store";
  ::unlink(path.c_str());
  ::unlink((path + ".lock").c_str());
  ::unlink((path + ".log").c_str());
  keyfs::model::Model model;
  {
    auto engine = Open(path, kind);
    for (int batches = 0; !r.done() && batches < 16; ++batches) {
      keyfs::Batch b;
      const int n = 1 + r.Byte() % 3;
      for (int i = 0; i < n; ++i) b.Add(NextMutation(&r));
      const Code want = model.Apply(b);
      const keyfs::Status got = engine->Commit(b);
      if (got.code() != want) {
        Fail("batch " + std::to_string(batches) + ": the engine says " + got.ToString() +
             ", the model " + keyfs::Status::CodeName(want));
      }
    }
    CheckSame(*engine, model, "after the batches");
    if (!engine->Sync().ok()) Fail("sync");
  }
  CheckSame(*Open(path, kind), model, "after reopening");
  return 0;
}
