// Requests on directories: OPENDIR, READDIR, READDIRPLUS.
#include <cstring>
#include <utility>

#include "fs_impl.h"

namespace keyfs::fs {

int Filesystem::Impl::DoOpenDir(uint64_t ino, fuse_file_info* fi) {
  if (ino != kControlDirId) {
    std::string key;
    EntryType type;
    if (!table.KeyOf(ino, &key, &type)) return ENOENT;
    if (type != EntryType::kDir) return ENOTDIR;
  }
  fi->fh = reinterpret_cast<uint64_t>(new DirHandle(ino));
  fi->cache_readdir = 1;  // listings are invalidated on every change
  fi->keep_cache = 1;
  return 0;
}

// Streams a directory: offsets are 1 ".", 2 "..", then 3, 4, ... per child; the handle
// remembers where the last call stopped so the next one resumes with a cursor.
int Filesystem::Impl::DoReadDir(fuse_req_t req, uint64_t ino, size_t size, off_t off, DirHandle* h,
                                bool plus, std::string* buf, size_t* used) {
  buf->assign(size, '\0');
  *used = 0;
  auto add = [&](const char* name, const struct stat& st, off_t next,
                 const fuse_entry_param* e) -> bool {
    char* at = buf->data() + *used;
    const size_t room = size - *used;
    size_t n = plus ? fuse_add_direntry_plus(req, at, room, name, e, next)
                    : fuse_add_direntry(req, at, room, name, &st, next);
    if (n > room) return false;
    *used += n;
    return true;
  };
  fuse_entry_param dot;
  std::memset(&dot, 0, sizeof(dot));
  dot.attr.st_ino = ino;
  dot.attr.st_mode = S_IFDIR;
  // "." and ".." carry no lookup (ino 0 in the entry param means "don't count it").
  if (off < 1) {
    if (!add(".", dot.attr, 1, &dot)) return 0;
    off = 1;
  }
  if (off < 2) {
    if (!add("..", dot.attr, 2, &dot)) return 0;
    off = 2;
  }
  if (ino == kControlDirId) {
    const char* names[] = {"stats", "sync"};
    for (off_t i = off - 2; i >= 0 && i < 2; ++i) {  // any offset past the end: nothing
      fuse_entry_param e;
      std::memset(&e, 0, sizeof(e));
      ControlAttr(i == 0 ? kStatsFileId : kSyncFileId, config.read_only, &e.attr);
      if (!add(names[i], e.attr, 3 + i, &e)) break;
    }
    return 0;
  }
  std::string dir;
  if (!table.KeyOf(ino, &dir)) return ENOENT;
  std::string after;
  off_t skip = 0;
  if (off == h->next_off && off > 2) {
    // The kernel asks once more after a listing that one answer held whole, to see its
    // end: that is the end, not the names committed since (they would mix two commits).
    if (h->at_end) return 0;
    after = h->last_name;
  } else {
    skip = off - 2;  // a seek: restart and skip (rare)
  }
  off_t pos = off;
  bool full = false;
  const std::string prefix = dir.empty() ? std::string() : dir + "/";
  Status s = engine->List(dir, after, [&](const DirEntry& d) {
    if (dir.empty() && d.name == kControlDirName) return true;  // reserved, never listed
    if (skip > 0) {
      --skip;
      return true;
    }
    std::string name(d.name);
    const std::string key = prefix + name;
    fuse_entry_param e;
    std::memset(&e, 0, sizeof(e));
    uint64_t id = 0;
    if (plus) {
      auto rec = engine->Get(key);
      if (rec.ok()) {
        EntryFor(key, *rec, 0, &e);
        id = e.ino;
      } else {
        FillAttr(KeyIno(key), d.meta, d.size, false, &e.attr);
      }
    } else {
      FillAttr(KeyIno(key), d.meta, d.size, false, &e.attr);
    }
    if (!add(name.c_str(), e.attr, pos + 1, &e)) {
      if (id != 0) table.Forget(id, 1);  // the kernel never saw this entry
      full = true;
      return false;
    }
    ++pos;
    h->last_name = std::move(name);
    return true;
  });
  if (!s.ok() && *used == 0) return StatusToErrno(s);
  h->next_off = pos;
  h->at_end = s.ok() && !full;
  return 0;
}

// ---- request entry points ----

void Filesystem::Impl::OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (int err = DoOpenDir(ino, fi)) {
    fuse_reply_err(req, err);
    return;
  }
  if (fuse_reply_open(req, fi) != 0) Unref(HandleOf(fi->fh));  // interrupted
}

void Filesystem::Impl::ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                               fuse_file_info* fi, bool plus) {
  auto* h = static_cast<DirHandle*>(HandleOf(fi->fh));
  auto answer = [this, req, ino, size, off, h, plus](const KeysInUse&) {
    std::string buf;
    size_t used = 0;
    int err = DoReadDir(req, ino, size, off, h, plus, &buf, &used);
    return std::make_pair(err, std::move(buf.erase(used)));
  };
  auto reply = [req](const std::pair<int, std::string>& r) {
    if (r.first != 0) {
      fuse_reply_err(req, r.first);
    } else {
      fuse_reply_buf(req, r.second.data(), r.second.size());
    }
  };
  std::pair<int, std::string> r;
  {
    // The directory's key (readdirplus: its children's nodes) is what the store has now.
    KeysInUse keys(&table, ino, /*wait=*/false);
    if (!keys.held()) {
      Async(req, [this, ino, answer, reply] { reply(answer(KeysInUse(&table, ino))); });
      return;
    }
    r = answer(keys);
  }
  reply(r);
}

}  // namespace keyfs::fs
