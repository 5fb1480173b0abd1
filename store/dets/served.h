// The dets engine's served state as one reader or committer sees it while holding the
// engine's mu_: the active write buffer, the frozen ones and the file (see
// dets_engine_impl.h). Internal to store/.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dets/buffer.h"
#include "dets/file.h"
#include "format.h"
#include "keyfs/store/engine.h"
#include "tree.h"

namespace keyfs::dets {

using BufRecord = WriteBuffer::Record;
using Node = WriteBuffer::Node;
using BufferRef = std::shared_ptr<const WriteBuffer>;

inline bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// The prefix of `dir`'s children: "dir/", or "" for the root.
inline std::string ChildPrefix(std::string_view dir) {
  std::string p(dir);
  if (!p.empty()) p += '/';
  return p;
}

// The served layers, as seen by one reader or committer holding mu_.
struct Layers {
  const WriteBuffer* active = nullptr;
  const std::vector<BufferRef>* frozen = nullptr;  // oldest first
  const DetsFile* file = nullptr;

  // The newest buffered record of `key` (maybe a tombstone) and its layer, or nullptr if
  // no buffer knows the key.
  const BufRecord* Buffered(std::string_view key, uint64_t h,
                            const WriteBuffer** layer = nullptr) const {
    if (!active->empty()) {
      const Node* n = active->Find(key, h);
      if (n != nullptr && n->record != nullptr) {
        if (layer) *layer = active;
        return n->record;
      }
    }
    for (auto it = frozen->rbegin(); it != frozen->rend(); ++it) {
      const Node* n = (*it)->Find(key, h);
      if (n != nullptr && n->record != nullptr) {
        if (layer) *layer = it->get();
        return n->record;
      }
    }
    return nullptr;
  }

  // The root directory: as the newest buffer that changed it says, else as the file does.
  Status Root(TreeValue* out) const {
    const BufRecord* r = active->root();
    for (auto it = frozen->rbegin(); r == nullptr && it != frozen->rend(); ++it) r = (*it)->root();
    if (r != nullptr) {
      *out = TreeValue{r->meta(), r->version, {}};
      return Status::OK();
    }
    auto m = file->RootMeta();
    if (!m.ok()) return m.status();
    *out = TreeValue{*m, file->root_version(), {}};
    return Status::OK();
  }

  // The merged entry at `key` (not the root). NotFound if absent.
  Status Lookup(std::string_view key, TreeValue* out) const {
    const uint64_t h = format::HashKey(key);
    if (const BufRecord* r = Buffered(key, h)) {
      if (r->tombstone) return Status::NotFound();
      *out = TreeValue{r->meta(), r->version, r->value_view()};
      return Status::OK();
    }
    DetsEntry e;
    KEYFS_RETURN_IF_ERROR(file->Find(key, h, &e));
    *out = TreeValue{e.meta, e.version, e.value};
    return Status::OK();
  }

  // NotDirectory if an ancestor of `key` is a file or symlink, else NotFound.
  Status MissingReason(std::string_view key) const {
    TreeValue v;
    for (std::string_view a = ParentKey(key); !a.empty(); a = ParentKey(a)) {
      Status s = Lookup(a, &v);
      if (s.ok()) {
        if (v.meta.type != EntryType::kDir) return Status::NotDirectory();
        break;
      }
      if (!s.IsNotFound()) return s;
    }
    return Status::NotFound();
  }

  // Whether `key` is live in the merged state, given it is listed by the file's key index.
  bool FileKeyLive(std::string_view key) const {
    const BufRecord* r = Buffered(key, format::HashKey(key));
    return r == nullptr || !r->tombstone;
  }
};

}  // namespace keyfs::dets
