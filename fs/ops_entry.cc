// Requests on names: LOOKUP, FORGET, MKDIR, SYMLINK, MKNOD, CREATE, UNLINK, RMDIR, RENAME.
#include <spdlog/spdlog.h>

#include <cstring>

#include "fs_impl.h"

namespace keyfs::fs {

namespace {

std::string JoinKey(const std::string& dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  std::string k;
  k.reserve(dir.size() + 1 + name.size());
  k.append(dir).append(1, '/').append(name);
  return k;
}

void ControlEntry(uint64_t id, bool read_only, fuse_entry_param* e) {
  std::memset(e, 0, sizeof(*e));
  e->ino = id;
  e->attr_timeout = e->entry_timeout = 1;
  ControlAttr(id, read_only, &e->attr);
}

// Answers an entry; if the kernel did not take it (the request was interrupted), the lookup
// it would have added is dropped again.
void ReplyEntry(Filesystem::Impl* fs, fuse_req_t req, int err, const fuse_entry_param& e) {
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  if (fuse_reply_entry(req, &e) != 0 && e.ino >= kFirstDynamicId) fs->DoForget(e.ino, 1);
}

}  // namespace

Caller CallerOf(fuse_req_t req, bool with_groups) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Caller c;
  c.uid = ctx->uid;
  c.gid = ctx->gid;
  c.pid = ctx->pid;
  if (with_groups && c.uid != 0) {
    gid_t list[256];
    int n = fuse_req_getgroups(req, 256, list);
    if (n > 0) c.groups.assign(list, list + std::min(n, 256));
  }
  return c;
}

int Filesystem::Impl::DirKey(uint64_t parent, std::string* key) {
  if (parent == kControlDirId) return EPERM;
  EntryType type;
  if (!table.KeyOf(parent, key, &type)) return ENOENT;
  if (type != EntryType::kDir) return ENOTDIR;
  return 0;
}

int Filesystem::Impl::ChildKey(uint64_t parent, const char* name, std::string* key) {
  std::string dir;
  if (int err = DirKey(parent, &dir)) return err;
  size_t len = std::strlen(name);
  if (len > kMaxNameLength) return ENAMETOOLONG;
  if (parent == kRootId && name == kControlDirName) return EPERM;  // reserved
  *key = JoinKey(dir, std::string_view(name, len));
  Status s = ValidateKey(*key);
  return s.ok() ? 0 : StatusToErrno(s);
}

int Filesystem::Impl::KeyToChange(uint64_t parent, const char* name, std::string* key) {
  if (config.read_only) return EROFS;
  return ChildKey(parent, name, key);
}

void Filesystem::Impl::EntryFor(const std::string& key, const Record& rec, pid_t tid,
                                fuse_entry_param* e) {
  const uint64_t id = table.Acquire(key, rec, tid);
  uint64_t ino = 0;
  bool writer_node = false;
  table.WithNode(id, [&](Node& n) {
    ino = n.ino;
    writer_node = n.tainted;
  });
  std::memset(e, 0, sizeof(*e));
  e->ino = id;
  e->generation = 1;
  e->entry_timeout = timeout();
  e->attr_timeout = writer_node ? 0 : timeout();  // a writer's size is its own (DoGetAttr)
  FillAttr(ino, rec.meta, rec.value.size(), false, &e->attr);
}

Meta Filesystem::Impl::NewMeta(const Caller& c, Meta m) const {
  m.uid = c.uid;
  m.gid = c.gid;
  return m;
}

int Filesystem::Impl::DoLookup(const Caller& c, uint64_t parent, const char* name,
                               fuse_entry_param* e) {
  FsCounters::Bump(counters.lookups);
  if (parent == kRootId && name == kControlDirName) {
    ControlEntry(kControlDirId, config.read_only, e);
    return 0;
  }
  if (parent == kControlDirId) {
    const uint64_t id = ControlChild(name);
    if (id == 0) return ENOENT;
    ControlEntry(id, config.read_only, e);
    return 0;
  }
  std::string key;
  if (int err = ChildKey(parent, name, &key)) return err == EPERM ? ENOENT : err;
  auto rec = engine->GetInDirectory(key);
  if (rec.status().IsNotFound()) {
    // A retry that finds nothing is over: no later open of this thread is its retry.
    table.WriterOpened(c.pid);
    (void)table.TakeReaderRetry(c.pid);
    std::memset(e, 0, sizeof(*e));  // a negative entry, cached like any other
    e->entry_timeout = timeout();
    return 0;
  }
  if (!rec.ok()) return StatusToErrno(rec.status());
  EntryFor(key, *rec, c.pid, e);
  return 0;
}

void Filesystem::Impl::DoForget(uint64_t ino, uint64_t n) {
  if (ino >= kFirstDynamicId) table.Forget(ino, n);
}

int Filesystem::Impl::CommitNewEntry(const std::string& key, const Batch& b, fuse_entry_param* e) {
  Status s = write_path.CommitBatch(b);
  if (!s.ok()) return StatusToErrno(s);
  auto rec = engine->Get(key);
  if (!rec.ok()) return StatusToErrno(rec.status());
  EntryFor(key, *rec, 0, e);
  return 0;
}

int Filesystem::Impl::DoCreate(const Caller& c, const std::string& key, const Meta& meta,
                               fuse_entry_param* e, fuse_file_info* fi) {
  Mutation m;
  m.key = key;
  m.meta = meta;
  m.exclusive = true;
  Status s = write_path.CommitBatch(Batch().Add(std::move(m)));
  const bool existed = s.code() == Status::Code::kAlreadyExists;
  if (existed && !(fi->flags & O_EXCL)) {
    s = Status::OK();  // created meanwhile by someone else (our negative dentry was stale)
  }
  if (!s.ok()) return StatusToErrno(s);
  auto rec = engine->Get(key);
  if (!rec.ok()) return StatusToErrno(rec.status());
  if (rec->meta.type != EntryType::kFile) {
    return rec->meta.type == EntryType::kDir ? EISDIR : EEXIST;
  }
  // The kernel took the file for a new one: it checked no permission and sends no
  // truncation. Both are ours to do then, as the open of an existing file would.
  if (existed && !MayWrite(c, rec->meta)) return EACCES;
  const bool truncate = existed && (fi->flags & O_TRUNC);
  auto h = std::make_unique<WriteHandle>(0, write_path.budget());
  {
    MutexLock l(&h->mu);  // (nobody else has the handle yet)
    if (!truncate && !h->Charge(rec->value.size())) return ENOSPC;  // write budget
  }
  // A writer node of its own: the dentry was negative, no reader shares it.
  const uint64_t id = table.AcquireFresh(key, *rec);
  h->node = id;
  h->pid = c.pid;
  h->append = fi->flags & O_APPEND;
  uint64_t ino = 0;
  Meta node_meta;
  table.WithNode(id, [&](Node& n) {
    ++n.writers;
    ++n.open_handles;
    ino = n.ino;
    node_meta = n.rec.meta;
  });
  {
    MutexLock l(&h->mu);
    if (!truncate) h->buf.assign(rec->value);
    h->truncated = truncate;
    h->create_meta = node_meta;
  }
  writers.Add(h.get());
  fi->fh = reinterpret_cast<uint64_t>(h.release());
  fi->direct_io = 1;
  std::memset(e, 0, sizeof(*e));
  e->ino = id;
  e->generation = 1;
  e->entry_timeout = timeout();
  e->attr_timeout = 0;  // the writer's size changes with its writes: fstat asks us
  FillAttr(ino, rec->meta, rec->value.size(), false, &e->attr);
  return 0;
}

int Filesystem::Impl::DoUnlink(const std::string& key, bool dir) {
  auto rec = engine->Get(key);
  if (!rec.ok()) return StatusToErrno(rec.status());
  const bool is_dir = rec->meta.type == EntryType::kDir;
  if (is_dir != dir) return dir ? ENOTDIR : EISDIR;
  Status s = write_path.CommitBatch(Batch().Delete(key));
  if (!s.ok()) return StatusToErrno(s);
  table.Unlinked(key);
  return 0;
}

int Filesystem::Impl::DoRename(const std::string& from, const std::string& to, uint32_t flags) {
  Status s = write_path.Rename(from, to, flags);
  return s.ok() ? 0 : StatusToErrno(s);
}

// ---- request entry points ----

void Filesystem::Impl::Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_entry_param e;
  int err;
  {
    // The answer is for the name the store has now, never one a rename is moving.
    KeysInUse keys(&table, parent, /*wait=*/false);
    if (!keys.held()) {
      Async(req, [this, req, parent, name = std::string(name)] {
        fuse_entry_param e;
        int err;
        {
          KeysInUse keys(&table, parent);
          err = DoLookup(CallerOf(req), parent, name.c_str(), &e);
        }
        ReplyEntry(this, req, err, e);
      });
      return;
    }
    err = DoLookup(CallerOf(req), parent, name, &e);
  }
  if (err == 0 && config.read_only && e.ino == kStatsFileId) {
    // -o ro sends no OPEN: every open of `stats` looks it up again (timeouts 0), and the
    // pages the last open read are dropped before the answer, so the read that follows
    // reaches us. Dropping them after a read instead races with that read's own copy,
    // which the kernel then reads again, over and over.
    e.entry_timeout = e.attr_timeout = 0;
    invalidator.InvalidateNodeThen(kStatsFileId, [req, e] { fuse_reply_entry(req, &e); });
    return;
  }
  ReplyEntry(this, req, err, e);
}

void Filesystem::Impl::Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  std::string key;
  if (int err = KeyToChange(parent, name, &key)) {
    fuse_reply_err(req, err);
    return;
  }
  Batch b;
  b.Mkdir(key, NewMeta(CallerOf(req), Meta::Dir(mode & 07777)));
  Async(req, [this, req, key = std::move(key), b = std::move(b)] {
    fuse_entry_param e;
    int err = CommitNewEntry(key, b, &e);
    ReplyEntry(this, req, err, e);
  });
}

void Filesystem::Impl::Symlink(fuse_req_t req, const char* link, fuse_ino_t parent,
                               const char* name) {
  std::string key;
  int err = KeyToChange(parent, name, &key);
  if (err == 0 && std::strlen(link) > 4095) err = ENAMETOOLONG;
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  Batch b;
  b.Symlink(key, link, NewMeta(CallerOf(req), Meta::Symlink()));
  Async(req, [this, req, key = std::move(key), b = std::move(b)] {
    fuse_entry_param e;
    int err = CommitNewEntry(key, b, &e);
    ReplyEntry(this, req, err, e);
  });
}

void Filesystem::Impl::Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  std::string key;
  int err = KeyToChange(parent, name, &key);
  if (err == 0 && !S_ISREG(mode)) err = EPERM;  // devices, fifos, sockets: not values
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  Mutation m;
  m.key = key;
  m.meta = NewMeta(CallerOf(req), Meta::File(mode & 07777));
  m.exclusive = true;
  Batch b;
  b.Add(std::move(m));
  Async(req, [this, req, key = std::move(key), b = std::move(b)] {
    fuse_entry_param e;
    int err = CommitNewEntry(key, b, &e);
    ReplyEntry(this, req, err, e);
  });
}

void Filesystem::Impl::Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                              fuse_file_info* fi) {
  std::string key;
  if (int err = KeyToChange(parent, name, &key)) {
    fuse_reply_err(req, err);
    return;
  }
  const Caller c = CallerOf(req, /*with_groups=*/true);  // if the file exists after all
  const Meta meta = NewMeta(c, Meta::File(mode & 07777));
  fuse_file_info f = *fi;
  Async(req, [this, req, c, key = std::move(key), meta, f]() mutable {
    fuse_entry_param e;
    if (int err = DoCreate(c, key, meta, &e, &f)) {
      fuse_reply_err(req, err);
      return;
    }
    if (fuse_reply_create(req, &e, &f) != 0) {
      // The kernel did not take the handle (interrupted): undo it.
      auto* h = WriterOf(f.fh);
      writers.Remove(h);
      table.CloseHandle(e.ino, false, true);
      table.Forget(e.ino, 1);
      Unref(h);
    }
  });
}

void Filesystem::Impl::Unlink(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir) {
  std::string key;
  if (int err = KeyToChange(parent, name, &key)) {
    fuse_reply_err(req, err);
    return;
  }
  Async(req, [this, req, key = std::move(key), dir] { fuse_reply_err(req, DoUnlink(key, dir)); });
}

void Filesystem::Impl::Rename(fuse_req_t req, fuse_ino_t parent, const char* name,
                              fuse_ino_t newparent, const char* newname, unsigned int flags) {
  std::string from, to;
  int err = KeyToChange(parent, name, &from);
  if (err == 0) err = ChildKey(newparent, newname, &to);
  if (err == 0 && (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))) err = EINVAL;
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  uint32_t f = 0;
  if (flags & RENAME_NOREPLACE) f |= kRenameNoReplace;
  if (flags & RENAME_EXCHANGE) f |= kRenameExchange;
  Async(req, [this, req, from = std::move(from), to = std::move(to), f] {
    fuse_reply_err(req, DoRename(from, to, f));
  });
}

}  // namespace keyfs::fs
