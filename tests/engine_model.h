// The model of the tree semantics (SPEC §3) that engine_model_test and the fuzz_batches
// fuzz target hold both engines to: a std::map of keys, each mutation written out from the
// spec without looking at the engines' code.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

namespace keyfs::model {

using Code = Status::Code;

struct ModelEntry {
  EntryType type;
  std::string value;
  uint32_t mode;
  uint32_t subdirs = 0;  // directories: child directories (the engine's count; the model
                         // counts its own in CheckSame)
  bool operator==(const ModelEntry&) const = default;
};
using Tree = std::map<std::string, ModelEntry>;

inline bool Below(const std::string& key, const std::string& dir) {
  return key.size() > dir.size() && key.compare(0, dir.size(), dir) == 0 && key[dir.size()] == '/';
}

inline std::string Parent(const std::string& k) {
  size_t s = k.rfind('/');
  return s == std::string::npos ? "" : k.substr(0, s);
}

// The model: what SPEC §3 says each mutation does, written without looking at Overlay.
class Model {
 public:
  Code Apply(const Batch& b) {
    Tree saved = tree_;
    const uint32_t saved_root = root_mode_;
    for (const Mutation& m : b.mutations()) {
      Code c = ApplyOne(m);
      if (c != Code::kOk) {
        tree_ = std::move(saved);
        root_mode_ = saved_root;
        return c;
      }
    }
    return Code::kOk;
  }
  const Tree& tree() const { return tree_; }
  uint32_t root_mode() const { return root_mode_; }
  // Child directories of `dir` ("" = root), counted.
  uint32_t Subdirs(const std::string& dir) const {
    uint32_t n = 0;
    for (const auto& [k, v] : tree_) n += v.type == EntryType::kDir && Parent(k) == dir;
    return n;
  }

 private:
  bool Exists(const std::string& k) const { return k.empty() || tree_.count(k); }
  bool IsDir(const std::string& k) const {
    return k.empty() || (tree_.count(k) && tree_.at(k).type == EntryType::kDir);
  }
  bool HasChildren(const std::string& d) const {
    for (const auto& [k, v] : tree_) {
      if (Below(k, d)) return true;
    }
    return false;
  }
  Code ParentOk(const std::string& k) const {
    std::string p = Parent(k);
    if (IsDir(p)) return Code::kOk;
    if (Exists(p)) return Code::kNotDirectory;
    for (std::string a = Parent(p); !a.empty(); a = Parent(a)) {
      if (Exists(a)) return IsDir(a) ? Code::kNotFound : Code::kNotDirectory;
    }
    return Code::kNotFound;
  }
  Code ApplyOne(const Mutation& m) {
    const std::string& k = m.key;
    switch (m.op) {
      case Mutation::Op::kPut: {
        if (Code c = ParentOk(k); c != Code::kOk) return c;
        if (IsDir(k)) return Code::kIsDirectory;
        if (m.exclusive && Exists(k)) return Code::kAlreadyExists;
        tree_[k] = {m.meta.type, m.value, m.meta.mode};
        return Code::kOk;
      }
      case Mutation::Op::kMkdir: {
        if (Code c = ParentOk(k); c != Code::kOk) return c;
        if (Exists(k)) return Code::kAlreadyExists;
        tree_[k] = {EntryType::kDir, "", m.meta.mode};
        return Code::kOk;
      }
      case Mutation::Op::kDelete:
        if (!Exists(k)) return Code::kNotFound;
        if (IsDir(k) && HasChildren(k)) return Code::kNotEmpty;
        tree_.erase(k);
        return Code::kOk;
      case Mutation::Op::kSetMeta:
        if (!Exists(k)) return Code::kNotFound;
        if (k.empty()) {
          root_mode_ = m.meta.mode;
        } else {
          tree_[k].mode = m.meta.mode;
        }
        return Code::kOk;
      case Mutation::Op::kRename:
        return Rename(k, m.target, m.rename_flags);
    }
    return Code::kInvalidArgument;
  }
  Tree TakeSubtree(const std::string& root) {
    Tree out;
    for (auto it = tree_.begin(); it != tree_.end();) {
      if (it->first == root || Below(it->first, root)) {
        out.insert(*it);
        it = tree_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }
  void PutSubtree(const Tree& t, const std::string& from, const std::string& to) {
    for (const auto& [k, v] : t) tree_[to + k.substr(from.size())] = v;
  }
  Code Rename(const std::string& from, const std::string& to, uint32_t flags) {
    if (!Exists(from)) return Code::kNotFound;
    const bool exchange = flags & kRenameExchange;
    if (exchange && (flags & kRenameNoReplace)) return Code::kInvalidArgument;
    if (Below(to, from)) return Code::kInvalidArgument;
    if (Code c = ParentOk(to); c != Code::kOk) return c;
    if (from == to) return Code::kOk;
    if (exchange) {
      if (!Exists(to)) return Code::kNotFound;
      if (Below(from, to)) return Code::kInvalidArgument;
      Tree a = TakeSubtree(from), b = TakeSubtree(to);
      PutSubtree(a, from, to);
      PutSubtree(b, to, from);
      return Code::kOk;
    }
    if (Exists(to)) {
      if (flags & kRenameNoReplace) return Code::kAlreadyExists;
      if (IsDir(from)) {
        if (!IsDir(to)) return Code::kNotDirectory;
        if (HasChildren(to)) return Code::kNotEmpty;
      } else if (IsDir(to)) {
        return Code::kIsDirectory;
      }
      tree_.erase(to);
    }
    Tree a = TakeSubtree(from);
    PutSubtree(a, from, to);
    return Code::kOk;
  }

  Tree tree_;
  uint32_t root_mode_ = 0755;
};

// Every entry of the engine, by walking List from the root.
inline Status Dump(const Engine& e, const std::string& dir, Tree* out) {
  std::vector<std::pair<std::string, EntryType>> children;
  Status s = e.List(dir, "", [&](const DirEntry& d) {
    children.emplace_back(std::string(d.name), d.meta.type);
    return true;
  });
  if (!s.ok()) return s;
  for (const auto& [name, type] : children) {
    std::string key = dir.empty() ? name : dir + "/" + name;
    auto r = e.Get(key);
    if (!r.ok()) return r.status().WithContext("get " + key);
    if (r->meta.type != type) return Status::Corruption("list and get disagree on " + key);
    (*out)[key] = {r->meta.type, std::string(r->value), r->meta.mode, r->meta.subdirs};
    if (type == EntryType::kDir) KEYFS_RETURN_IF_ERROR(Dump(e, key, out));
  }
  return Status::OK();
}

}  // namespace keyfs::model
