// The Filesystem's lifecycle and libfuse's operations table: thin C entry points that call
// the request handlers of fs_impl.h (ops_entry.cc, ops_attr.cc, ops_file.cc, ops_dir.cc),
// never let an exception through, and reply exactly once.
#include "keyfs/fs/filesystem.h"

#include <cstring>

#include "fs_impl.h"

namespace keyfs::fs {

namespace {

Filesystem::Impl* Self(fuse_req_t req) {
  return static_cast<Filesystem::Impl*>(fuse_req_userdata(req));
}

void OpInit(void*, fuse_conn_info* conn) {
  // O_TRUNC must not zero a shared inode at open (FUSE-NOTES): truncation arrives as
  // SETATTR and is applied to the writer's private copy.
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;  // versions are immutable; we invalidate
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  conn->want &= ~FUSE_CAP_EXPORT_SUPPORT;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  if (conn->capable & FUSE_CAP_READDIRPLUS) {
    conn->want |= FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO;
  }
}

}  // namespace

const fuse_lowlevel_ops* Filesystem::Ops() {
  static const fuse_lowlevel_ops ops = [] {
    fuse_lowlevel_ops o;
    std::memset(&o, 0, sizeof(o));
    o.init = OpInit;
    o.lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
      Guard(req, [&] { Self(req)->Lookup(req, parent, name); });
    };
    o.forget = [](fuse_req_t req, fuse_ino_t ino, uint64_t n) {
      Self(req)->DoForget(ino, n);
      fuse_reply_none(req);
    };
    o.forget_multi = [](fuse_req_t req, size_t count, fuse_forget_data* f) {
      for (size_t i = 0; i < count; ++i) Self(req)->DoForget(f[i].ino, f[i].nlookup);
      fuse_reply_none(req);
    };
    o.getattr = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->GetAttr(req, ino, fi); });
    };
    o.setattr = [](fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                   fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->SetAttr(req, ino, attr, to_set, fi); });
    };
    o.readlink = [](fuse_req_t req, fuse_ino_t ino) {
      Guard(req, [&] { Self(req)->ReadLink(req, ino); });
    };
    o.mknod = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t) {
      Guard(req, [&] { Self(req)->Mknod(req, parent, name, mode); });
    };
    o.mkdir = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
      Guard(req, [&] { Self(req)->Mkdir(req, parent, name, mode); });
    };
    o.unlink = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
      Guard(req, [&] { Self(req)->Unlink(req, parent, name, false); });
    };
    o.rmdir = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
      Guard(req, [&] { Self(req)->Unlink(req, parent, name, true); });
    };
    o.symlink = [](fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
      Guard(req, [&] { Self(req)->Symlink(req, link, parent, name); });
    };
    o.rename = [](fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                  const char* newname, unsigned int flags) {
      Guard(req, [&] { Self(req)->Rename(req, parent, name, newparent, newname, flags); });
    };
    o.link = [](fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
      fuse_reply_err(req, EPERM);  // hard links: no (README, keyfs(1))
    };
    o.open = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Open(req, ino, fi); });
    };
    o.read = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Read(req, ino, size, off, fi); });
    };
    o.write = [](fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
                 fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Write(req, buf, size, off, fi); });
    };
    o.flush = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Flush(req, fi); });
    };
    o.release = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Release(req, ino, fi); });
    };
    o.fsync = [](fuse_req_t req, fuse_ino_t ino, int, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Fsync(req, ino, fi); });
    };
    o.opendir = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->OpenDir(req, ino, fi); });
    };
    o.readdir = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->ReadDir(req, ino, size, off, fi, false); });
    };
    o.readdirplus = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->ReadDir(req, ino, size, off, fi, true); });
    };
    o.releasedir = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
      if (Handle* h = HandleOf(fi->fh)) Unref(h);
      fuse_reply_err(req, 0);
    };
    o.fsyncdir = [](fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
      Guard(req, [&] { Self(req)->Fsync(req, ino, nullptr); });
    };
    o.statfs = [](fuse_req_t req, fuse_ino_t) { Guard(req, [&] { Self(req)->StatFs(req); }); };
    o.create = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                  fuse_file_info* fi) {
      Guard(req, [&] { Self(req)->Create(req, parent, name, mode, fi); });
    };
    return o;
  }();
  return &ops;
}

Filesystem::Filesystem(Engine* engine, Config config)
    : impl_(std::make_unique<Impl>(engine, std::move(config))) {}

Filesystem::~Filesystem() { Stop(); }

void Filesystem::Start(fuse_session* session) {
  Impl* s = impl_.get();
  s->session = session;
  s->engine->SetChangeListener([s](const ChangeEvent& ev) { s->invalidator.OnChange(ev); });
  s->invalidator.Start(session);
  s->workers.Start(s->config.workers);
}

void Filesystem::Stop() {
  Impl* s = impl_.get();
  if (s == nullptr) return;
  s->workers.Stop();
  s->invalidator.Stop();  // the kernel is gone: queued replies are sent, nothing invalidated
}

}  // namespace keyfs::fs
