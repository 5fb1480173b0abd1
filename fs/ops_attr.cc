// Requests on attributes: GETATTR, SETATTR (chmod, chown, utimensat, truncate), READLINK,
// STATFS.
#include <spdlog/spdlog.h>

#include <cstring>

#include "fs_impl.h"

namespace keyfs::fs {

int Filesystem::Impl::DoGetAttr(const Caller& c, uint64_t ino, uint64_t fh, struct stat* st,
                                double* attr_timeout) {
  if (IsControlNode(ino)) {
    ControlAttr(ino, config.read_only, st);
    *attr_timeout = 1;
    return 0;
  }
  // fstat comes without a handle (the kernel sends none for it): the writing thread gets
  // its own handle's size, uncached, as on a local filesystem; everyone else the committed.
  WriteHandle* writer = WriterOf(fh);
  if (writer != nullptr) {
    Ref(writer);
  } else {
    writer = writers.FindLastChanged(ino, c.pid);
  }
  Node copy;
  bool found = table.WithNode(ino, [&](Node& n) {
    copy.key = n.key;
    copy.ino = n.ino;
    copy.type = n.type;
    copy.unlinked = n.unlinked;
    copy.tainted = n.tainted;
    copy.rec.meta = n.rec.meta;
    copy.rec.value = n.rec.value;
    copy.rec.pin = n.rec.pin;
  });
  if (!found) {
    if (writer != nullptr) Unref(writer);
    return ENOENT;
  }
  if (writer != nullptr) {
    {
      MutexLock l(&writer->mu);
      FillAttr(copy.ino, copy.rec.meta, writer->buf.size(), copy.unlinked, st);
    }
    Unref(writer);
    *attr_timeout = 0;
    return 0;
  }
  if (copy.type == EntryType::kDir && !copy.unlinked) {
    auto rec = engine->Get(copy.key);  // a directory's node follows its key
    if (rec.ok() && rec->meta.type == EntryType::kDir) {
      copy.rec.meta = rec->meta;
      table.WithNode(ino, [&](Node& n) { n.rec.meta = rec->meta; });
    }
  }
  FillAttr(copy.ino, copy.rec.meta, copy.rec.value.size(), copy.unlinked, st);
  // A writer node's size is the writer's business: its own fstat and lseek(SEEK_END) must
  // ask again, so nobody else's answer is cached on it.
  *attr_timeout = copy.tainted ? 0 : timeout();
  return 0;
}

int Filesystem::Impl::DoSetAttr(const Caller& c, uint64_t ino, const AttrRequest& a, int64_t size,
                                WriteHandle* wh, struct stat* st) {
  std::string key;
  EntryType type;
  if (!table.KeyOf(ino, &key, &type)) return ENOENT;
  const bool set_size = a.to_set & FUSE_SET_ATTR_SIZE;
  const int meta_bits = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
                        FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
                        FUSE_SET_ATTR_MTIME_NOW;
  if (set_size && type != EntryType::kFile) return type == EntryType::kDir ? EISDIR : EINVAL;
  bool unlinked = false;
  Meta node_meta;
  table.WithNode(ino, [&](Node& n) {
    unlinked = n.unlinked;
    node_meta = n.rec.meta;
  });
  if (unlinked) {
    // Unlinked while open (fchmod, ftruncate of the descriptor): nothing is committed;
    // the open file changes until it is closed, as on any filesystem.
    Meta meta = node_meta;
    if (a.to_set & meta_bits) {
      if (int err = PlanMetaChange(c, node_meta, a, NowNs(), &meta)) return err;
    }
    if (set_size && wh != nullptr) {
      if (int err = write_path.Resize(wh, c, size)) return err;
      writers.Changed(wh);
    }
    uint64_t node_ino = 0, shown_size = 0;
    table.WithNode(ino, [&](Node& n) {
      n.rec.meta = meta;
      node_ino = n.ino;
      shown_size = n.rec.value.size();
    });
    if (wh != nullptr) {
      MutexLock l(&wh->mu);
      shown_size = wh->buf.size();
    }
    FillAttr(node_ino, meta, shown_size, true, st);
    return 0;
  }
  auto cur = engine->Get(key);
  if (!cur.ok()) return StatusToErrno(cur.status());
  Meta meta = cur->meta;
  if (a.to_set & meta_bits) {
    if (int err = PlanMetaChange(c, cur->meta, a, NowNs(), &meta)) return err;
  }
  if (set_size && wh != nullptr) {
    if (int err = write_path.Resize(wh, c, size)) return err;
    writers.Changed(wh);
  } else if (set_size) {
    // truncate(2) with no write handle of the caller: a commit of its own, metadata with it.
    if (WriteDropsPrivs(c)) meta.mode = WithoutPrivs(meta.mode, c.InGroup(meta.gid));
    if (!(a.to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW))) meta.mtime_ns = kTimeNow;
    if (int err = write_path.TruncateKey(key, size, meta)) return err;
  }
  if ((a.to_set & meta_bits) && !(set_size && wh == nullptr)) {
    Status s = write_path.CommitBatch(Batch().SetMeta(key, meta));
    if (!s.ok()) return StatusToErrno(s);
    if (wh != nullptr) {
      MutexLock l(&wh->mu);
      wh->create_meta = meta;
      if (a.to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
        wh->explicit_mtime = meta.mtime_ns;  // cp -a / tar set times before close
      }
    }
  }
  // Answer with what the key now is. A directory's node and a writer node follow the key
  // (the kernel applies the answer to this inode anyway). A clean node keeps its version's
  // pages in the page cache: it takes the new metadata only if its value is the key's
  // value; else it stays what it is, and the key's dentry is dropped so that new opens
  // find the new version.
  auto rec = engine->Get(key);
  if (!rec.ok()) return StatusToErrno(rec.status());
  Record shown;
  bool clean_file = false;
  table.WithNode(ino, [&](Node& n) {
    clean_file = n.type != EntryType::kDir && !n.tainted;
    shown = n.rec;
  });
  const bool same_value = clean_file && shown.value == rec->value;
  uint64_t node_ino = 0;
  table.WithNode(ino, [&](Node& n) {
    node_ino = n.ino;
    unlinked = n.unlinked;
    if (n.type == EntryType::kDir) {
      n.rec.meta = rec->meta;
    } else if (n.tainted || (same_value && n.rec.value.data() == shown.value.data())) {
      n.version = rec->version;
      n.rec = CompactRecord(*rec);
    }
  });
  uint64_t shown_size = rec->value.size();
  if (clean_file && !same_value) {
    shown_size = shown.value.size();
    invalidator.InvalidateKey(key);
  }
  if (wh != nullptr) {
    MutexLock l(&wh->mu);
    shown_size = wh->buf.size();
  }
  FillAttr(node_ino, rec->meta, shown_size, unlinked, st);
  return 0;
}

int Filesystem::Impl::DoReadLink(uint64_t ino, std::string* target) {
  EntryType type = EntryType::kFile;
  bool found = table.WithNode(ino, [&](Node& n) {
    type = n.type;
    target->assign(n.rec.value);
  });
  if (!found) return ENOENT;
  return type == EntryType::kSymlink ? 0 : EINVAL;
}

int Filesystem::Impl::DoStatFs(struct statvfs* st) {
  // Space and inodes are those of the filesystem holding the store; the entries of every
  // kind count as the files in use.
  std::memset(st, 0, sizeof(*st));
  const std::string dir = config.store_path.empty()
                              ? std::string(".")
                              : config.store_path.substr(0, config.store_path.rfind('/') + 1);
  struct statvfs host;
  if (statvfs(dir.empty() ? "/" : dir.c_str(), &host) != 0) {
    std::memset(&host, 0, sizeof(host));
    host.f_bsize = host.f_frsize = 4096;
  }
  const EngineStats s = engine->Stats();
  st->f_bsize = host.f_bsize;
  st->f_frsize = host.f_frsize;
  st->f_blocks = host.f_blocks;
  st->f_bfree = host.f_bfree;
  st->f_bavail = host.f_bavail;
  // A filesystem without an inode limit (f_files 0, e.g. btrfs) leaves no count to mirror:
  // then there is room for as many entries as there are free blocks.
  const uint64_t free_inodes = host.f_files != 0 ? host.f_ffree : host.f_bavail;
  st->f_files = s.entries + free_inodes;
  st->f_ffree = free_inodes;
  st->f_favail = host.f_files != 0 ? host.f_favail : free_inodes;
  st->f_namemax = kMaxNameLength;
  return 0;
}

// ---- request entry points ----

void Filesystem::Impl::GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  struct stat st;
  double t = 0;
  int err = DoGetAttr(CallerOf(req), ino, fi != nullptr ? fi->fh : 0, &st, &t);
  if (err) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_attr(req, &st, t);
  }
}

void Filesystem::Impl::SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                               fuse_file_info* fi) {
  if (ino == kSyncFileId && to_set == FUSE_SET_ATTR_SIZE) {  // `echo 1 > sync` truncates
    struct stat st;
    ControlAttr(ino, config.read_only, &st);
    fuse_reply_attr(req, &st, 1);
    return;
  }
  if (IsControlNode(ino)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (config.read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  const bool groups =
      to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_GID | FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME |
                FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW);
  const Caller c = CallerOf(req, groups);
  // The write handle it applies to: the one it came with (ftruncate, futimens), else the
  // calling thread's own on that node (open with O_TRUNC sends none).
  WriteHandle* wh = fi != nullptr ? WriterOf(fi->fh) : nullptr;
  if (wh != nullptr) {
    Ref(wh);
  } else {
    wh = writers.Find(ino, c.pid);
  }
  AttrRequest a;
  a.to_set = to_set;
  a.mode = attr->st_mode;
  a.uid = attr->st_uid;
  a.gid = attr->st_gid;
  a.atime_ns = FromTimespec(attr->st_atim);
  a.mtime_ns = FromTimespec(attr->st_mtim);
  const int64_t size = attr->st_size;
  if (to_set == FUSE_SET_ATTR_SIZE && wh != nullptr) {
    // open(O_TRUNC) or ftruncate on a write handle: its private copy only, no commit.
    HandleRef keep(wh);
    int err = write_path.Resize(wh, c, size);
    if (err == 0) writers.Changed(wh);
    struct stat st;
    double t;
    if (err == 0) err = DoGetAttr(c, ino, reinterpret_cast<uint64_t>(wh), &st, &t);
    if (err == 0) {
      fuse_reply_attr(req, &st, 0);
    } else {
      fuse_reply_err(req, err);
    }
    return;
  }
  Async(req, [this, req, c, ino, a, size, wh, keep = HandleRef(wh)] {
    struct stat st;
    int err = DoSetAttr(c, ino, a, size, wh, &st);
    if (err) {
      fuse_reply_err(req, err);
    } else {
      bool writer_node = wh != nullptr;
      table.WithNode(ino, [&](Node& n) { writer_node = writer_node || n.tainted; });
      fuse_reply_attr(req, &st, writer_node ? 0 : timeout());
    }
  });
}

void Filesystem::Impl::ReadLink(fuse_req_t req, fuse_ino_t ino) {
  std::string target;
  if (int err = DoReadLink(ino, &target)) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_readlink(req, target.c_str());
  }
}

void Filesystem::Impl::StatFs(fuse_req_t req) {
  struct statvfs st;
  if (int err = DoStatFs(&st)) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_statfs(req, &st);
  }
}

}  // namespace keyfs::fs
