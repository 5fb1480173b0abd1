// Requests on open files: OPEN, READ, WRITE, FLUSH, RELEASE, FSYNC (and the .keyfs files).
#include <spdlog/spdlog.h>

#include <cstring>

#include "fs_impl.h"

namespace keyfs::fs {

std::string Filesystem::Impl::Stats() { return StatsJson(engine->Stats(), counters, table.size()); }

int Filesystem::Impl::DoOpen(const Caller& c, uint64_t ino, fuse_file_info* fi) {
  FsCounters::Bump(counters.opens);
  if (ino == kStatsFileId || ino == kSyncFileId) {
    auto* h =
        new ControlHandle(ino == kStatsFileId ? Handle::Kind::kStats : Handle::Kind::kSync, ino);
    if (ino == kStatsFileId) h->text = Stats();
    fi->fh = reinterpret_cast<uint64_t>(h);
    fi->direct_io = 1;
    return 0;
  }
  // Never reached for files once the kernel learns no_open from this answer.
  if (config.read_only) return ENOSYS;
  const bool write = (fi->flags & O_ACCMODE) != O_RDONLY;
  std::string key;
  EntryType type;
  if (!table.KeyOf(ino, &key, &type)) return ENOENT;
  if (type == EntryType::kDir) return EISDIR;
  if (!write) {
    // A reader reads the node's own version through the page cache. It goes back
    // (ESTALE) from a writer node (a writer may have grown its i_size) and from a version
    // that a commit of this mount superseded before the dentry was dropped (a commit at
    // RELEASE is invalidated after close() returned); its retry lands on a clean node of
    // the newest version, and is never sent back again. A retry that lands on a writer
    // node again (a path the VFS does not look up again: /proc/self/fd/N, a bind mount of
    // the file) reads the newest committed version through direct I/O.
    table.WriterOpened(c.pid);  // a reservation of this thread is obsolete
    auto cur = engine->Get(key);
    if (!cur.ok() && !cur.status().IsNotFound()) return StatusToErrno(cur.status());
    const bool retry = table.TakeReaderRetry(c.pid);
    auto h = std::make_unique<ReadHandle>(ino);
    bool opened = false, direct = false;
    table.WithNode(ino, [&](Node& n) {
      if (n.tainted) {
        if (!retry || !cur.ok()) return;
        opened = direct = true;
        ++n.open_handles;
        h->rec = *cur;
        return;
      }
      if (!retry && (!cur.ok() || cur->version != n.version)) return;
      opened = true;
      ++n.open_handles;
      ++n.cached_readers;
      h->rec = n.rec;
    });
    if (!opened) {
      if (retry && !cur.ok()) return ENOENT;  // deleted since the retry looked it up
      table.MarkReaderRetry(c.pid);
      FsCounters::Bump(counters.estale);
      return ESTALE;
    }
    h->direct = direct;
    if (direct) {
      fi->direct_io = 1;
    } else {
      fi->keep_cache = 1;  // the node's version never changes: its pages stay valid
    }
    fi->noflush = 1;
    fi->fh = reinterpret_cast<uint64_t>(h.release());
    return 0;
  }
  // A writer needs a writer node. A clean node nobody reads through becomes one here (the
  // common case, a rewrite: no extra round trip; readers that resolve to it later are sent
  // back once, to a clean node). A clean node open for reading sends the writer back once,
  // and its retried lookup (same thread, LOOKUP_REVAL) answers a writer node. A retry that
  // lands on such a node again (a path the VFS does not look up again, /proc/self/fd/N)
  // gets EBUSY: a reader's pages must never grow under it.
  bool tainted = false, readers = false;
  table.WithNode(ino, [&](Node& n) {
    if (n.unlinked) return;
    if (!n.tainted) {
      readers = n.cached_readers > 0;
      if (readers) return;
      n.tainted = true;
    }
    tainted = true;
  });
  if (!tainted) {
    if (readers && table.HasWriterReservation(c.pid)) {  // a retry, on the same node
      table.WriterOpened(c.pid);
      spdlog::info(
          "open of {} for writing refused (EBUSY): it is open for reading through the "
          "same path",
          key);
      return EBUSY;
    }
    table.ReserveForWriter(c.pid);
    FsCounters::Bump(counters.estale);
    return ESTALE;
  }
  // The copy starts from the newest committed value, whatever version the node showed.
  auto cur = engine->Get(key);
  if (cur.status().IsNotFound()) {  // deleted since its lookup
    table.WriterOpened(c.pid);
    return ENOENT;
  }
  if (!cur.ok()) return StatusToErrno(cur.status());
  if (cur->meta.type != EntryType::kFile)
    return cur->meta.type == EntryType::kDir ? EISDIR : EINVAL;
  auto h = std::make_unique<WriteHandle>(ino, write_path.budget());
  {
    MutexLock l(&h->mu);  // (nobody else has the handle yet)
    // No room for the copy: the write budget.
    if (!h->Charge(cur->value.size())) return ENOSPC;
    h->buf.assign(cur->value);
    h->create_meta = cur->meta;
  }
  h->pid = c.pid;
  h->append = fi->flags & O_APPEND;
  if (!table.WithNode(ino, [&](Node& n) {
        ++n.writers;
        ++n.open_handles;
      })) {
    return ENOENT;
  }
  table.WriterOpened(c.pid);
  // fstat/lseek on the writer's fd must see its own size: drop the attributes the kernel
  // caches for this node (attributes only: no lock is taken for that).
  if (session != nullptr) fuse_lowlevel_notify_inval_inode(session, ino, -1, 0);
  fi->direct_io = 1;  // writes come to us; no page cache shared with anyone
  writers.Add(h.get());
  fi->fh = reinterpret_cast<uint64_t>(h.release());
  return 0;
}

int Filesystem::Impl::DoRead(uint64_t ino, size_t size, off_t off, uint64_t fh,
                             std::string* scratch, Record* pin, std::string_view* out) {
  FsCounters::Bump(counters.reads);
  auto slice = [&](std::string_view v) {
    if (off < 0 || static_cast<uint64_t>(off) >= v.size()) {
      *out = {};
    } else {
      *out = v.substr(static_cast<size_t>(off), size);
    }
    return 0;
  };
  Handle* h = HandleOf(fh);
  if (h == nullptr) {
    // -o ro (no OPEN): the node's own version.
    if (ino == kStatsFileId) {
      *scratch = PadStats(Stats());  // its LOOKUP dropped the pages of the last open (Lookup)
      return slice(*scratch);
    }
    if (!table.WithNode(ino, [&](Node& n) { *pin = n.rec; })) return ENOENT;
    return slice(pin->value);  // the caller holds the pin until it has replied
  }
  switch (h->kind) {
    case Handle::Kind::kStats:
      return slice(static_cast<ControlHandle*>(h)->text);
    case Handle::Kind::kWriter: {
      auto* w = static_cast<WriteHandle*>(h);
      MutexLock l(&w->mu);
      slice(w->buf);
      scratch->assign(out->data(), out->size());
      *out = *scratch;
      return 0;
    }
    case Handle::Kind::kReader:
      return slice(static_cast<ReadHandle*>(h)->rec.value);
    default:
      return EINVAL;
  }
}

int Filesystem::Impl::CommitForClose(WriteHandle* h, std::string* key) {
  bool committed;
  int err = write_path.Commit(h, &committed);
  if (!committed || !table.KeyOf(h->node, key)) key->clear();
  return err;
}

void Filesystem::Impl::DoRelease(uint64_t ino, Handle* h) {
  if (h->kind != Handle::Kind::kWriter) {
    if (h->kind == Handle::Kind::kReader) {
      table.CloseHandle(ino, !static_cast<ReadHandle*>(h)->direct, false);
    }
    Unref(h);
    return;
  }
  auto* w = static_cast<WriteHandle*>(h);
  bool pending;
  {
    MutexLock l(&w->mu);
    pending = w->dirty || w->truncated;
    if (w->dirty && w->close_failed_at == w->edits) {
      // close() returned this commit's error: the writer was told nothing changed, and
      // nothing does (SPEC §4: the previous state stays served).
      pending = false;
      spdlog::info("release: dropped the changes whose close() reported an error");
    }
  }
  if (pending) {
    // A truncate-only handle (`: > k`, open(O_TRUNC) + close) commits here. RELEASE is
    // asynchronous to close(), so the commit runs right here on the loop thread: requests
    // that follow the close (a reader's LOOKUP/OPEN) are handled after it. The dentry is
    // invalidated by the invalidator (here it could wait on a directory lock held by a
    // request queued behind this one).
    std::string key;
    int err = EIO;
    try {
      err = CommitForClose(w, &key);
    } catch (const std::bad_alloc&) {
      err = ENOMEM;  // the handle goes all the same
    } catch (...) {
    }
    if (err != 0) spdlog::error("release: commit of a closed file failed: {}", strerror(err));
    invalidator.InvalidateKey(key);
  }
  writers.Remove(w);
  table.CloseHandle(ino, false, true);
  Unref(w);
}

// ---- request entry points ----

void Filesystem::Impl::Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  // A writer's file keeps its key while the open looks at it (RenameGate). A reader needs
  // no gate: a version that changed under it sends it back once (ESTALE).
  int err;
  if ((fi->flags & O_ACCMODE) == O_RDONLY) {
    err = DoOpen(CallerOf(req), ino, fi);
  } else {
    KeysInUse keys(&table, ino, /*wait=*/false);
    if (!keys.held()) {
      Async(req, [this, req, ino, f = *fi]() mutable {
        int err;
        {
          KeysInUse keys(&table, ino);
          err = DoOpen(CallerOf(req), ino, &f);
        }
        if (err != 0) {
          fuse_reply_err(req, err);
        } else if (fuse_reply_open(req, &f) != 0) {
          DoRelease(ino, HandleOf(f.fh));  // interrupted
        }
      });
      return;
    }
    err = DoOpen(CallerOf(req), ino, fi);
  }
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  if (fuse_reply_open(req, fi) != 0) DoRelease(ino, HandleOf(fi->fh));  // interrupted
}

void Filesystem::Impl::Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                            fuse_file_info* fi) {
  std::string scratch;
  Record pin;
  std::string_view out;
  if (int err = DoRead(ino, size, off, fi != nullptr ? fi->fh : 0, &scratch, &pin, &out)) {
    fuse_reply_err(req, err);
  } else {
    fuse_reply_buf(req, out.data(), out.size());
  }
}

void Filesystem::Impl::Write(fuse_req_t req, const char* buf, size_t size, off_t off,
                             fuse_file_info* fi) {
  FsCounters::Bump(counters.writes);
  Handle* h = HandleOf(fi->fh);
  if (h->kind == Handle::Kind::kSync) {
    if (!IsSyncRequest(std::string_view(buf, size))) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    Async(req, [this, req, size] {
      Status s = engine->Sync();
      if (s.ok()) {
        fuse_reply_write(req, size);
      } else {
        fuse_reply_err(req, StatusToErrno(s));
      }
    });
    return;
  }
  if (h->kind != Handle::Kind::kWriter) {
    fuse_reply_err(req, EBADF);
    return;
  }
  auto* w = static_cast<WriteHandle*>(h);
  bool need_groups = false;
  if (fuse_req_ctx(req)->uid != 0) {
    MutexLock l(&w->mu);
    need_groups = PrivsNeedGroups(w->create_meta.mode);
  }
  const Caller c = CallerOf(req, need_groups);
  const uint64_t lock_owner = fi->lock_owner;
  auto write = [this, req, w, c, off, lock_owner](const char* data, size_t n) {
    int err = write_path.Write(w, c, data, n, off, lock_owner);
    if (err == 0) writers.Changed(w);
    if (err) {
      fuse_reply_err(req, err);
    } else {
      fuse_reply_write(req, n);
    }
  };
  if (write_path.MustDropPrivs(w, c)) {
    // The first write by someone else to a setuid/setgid file commits the mode without
    // them first (a commit: on a worker), and tells the kernel the attributes changed.
    Async(req, [this, req, w, c, write, keep = HandleRef(Ref(w)), data = std::string(buf, size)] {
      int err = write_path.DropPrivs(w, c);
      if (err == 0) {
        invalidator.InvalidateNode(w->node);
        write(data.data(), data.size());
      } else {
        fuse_reply_err(req, err);
      }
    });
    return;
  }
  write(buf, size);
}

void Filesystem::Impl::Flush(fuse_req_t req, fuse_file_info* fi) {
  if (config.read_only) {
    // Nothing is ever written here: ENOSYS tells the kernel to stop sending FLUSH on
    // every close (without OPEN there is no per-handle noflush to set).
    fuse_reply_err(req, ENOSYS);
    return;
  }
  WriteHandle* h = WriterOf(fi->fh);
  if (h == nullptr) {
    fuse_reply_err(req, 0);
    return;
  }
  {
    // bash's `echo x > k` flushes a dup'd descriptor before writing: nothing to commit.
    // A FLUSH from another process's file table (a forked child closing its inherited
    // copy, at exit or exec) is not the writer's close: nothing is published for it.
    MutexLock l(&h->mu);
    if (!h->dirty || (h->write_owner != 0 && fi->lock_owner != h->write_owner)) {
      fuse_reply_err(req, 0);
      return;
    }
  }
  Async(req, [this, req, h, keep = HandleRef(Ref(h))] {
    std::string key;
    int err = CommitForClose(h, &key);
    if (err != 0) {
      MutexLock l(&h->mu);
      if (h->dirty) h->close_failed_at = h->edits;
    }
    invalidator.InvalidateKeyThenReply(req, key, err);
  });
}

void Filesystem::Impl::Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (Handle* h = HandleOf(fi->fh)) DoRelease(ino, h);
  fuse_reply_err(req, 0);
}

void Filesystem::Impl::Fsync(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  WriteHandle* h = fi != nullptr ? WriterOf(fi->fh) : nullptr;
  Async(req, [this, req, h, keep = HandleRef(h != nullptr ? Ref(h) : nullptr)] {
    int err = 0;
    std::string key;
    if (h != nullptr) err = CommitForClose(h, &key);
    if (err == 0) {
      Status s = engine->Sync();
      if (!s.ok()) err = StatusToErrno(s);
    }
    invalidator.InvalidateKeyThenReply(req, key, err);
  });
}

}  // namespace keyfs::fs
