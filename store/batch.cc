// Batch: an ordered list of mutations, built by callers and applied by an engine.
#include "keyfs/store/engine.h"

namespace keyfs {

Batch& Batch::Put(std::string key, std::string value, Meta meta) {
  meta.type = EntryType::kFile;
  Mutation m;
  m.op = Mutation::Op::kPut;
  m.key = std::move(key);
  m.value = std::move(value);
  m.meta = meta;
  return Add(std::move(m));
}

Batch& Batch::Symlink(std::string key, std::string target, Meta meta) {
  meta.type = EntryType::kSymlink;
  Mutation m;
  m.op = Mutation::Op::kPut;
  m.key = std::move(key);
  m.value = std::move(target);
  m.meta = meta;
  return Add(std::move(m));
}

Batch& Batch::Mkdir(std::string key, Meta meta) {
  meta.type = EntryType::kDir;
  Mutation m;
  m.op = Mutation::Op::kMkdir;
  m.key = std::move(key);
  m.meta = meta;
  return Add(std::move(m));
}

Batch& Batch::Delete(std::string key) {
  Mutation m;
  m.op = Mutation::Op::kDelete;
  m.key = std::move(key);
  return Add(std::move(m));
}

Batch& Batch::SetMeta(std::string key, Meta meta) {
  Mutation m;
  m.op = Mutation::Op::kSetMeta;
  m.key = std::move(key);
  m.meta = meta;
  return Add(std::move(m));
}

Batch& Batch::Rename(std::string from, std::string to, uint32_t flags) {
  Mutation m;
  m.op = Mutation::Op::kRename;
  m.key = std::move(from);
  m.target = std::move(to);
  m.rename_flags = flags;
  return Add(std::move(m));
}

Batch& Batch::Add(Mutation m) {
  mutations_.push_back(std::move(m));
  return *this;
}

}  // namespace keyfs
