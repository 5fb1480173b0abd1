// The daemon's state and its request handlers. Internal to fs/.
//
// Isolation and caching, the design in one page (SPEC §3, FUSE-NOTES.md):
// - Every committed version of a file or symlink has its own nodeid (InodeTable), with
//   long entry/attr timeouts and keep_cache: the kernel's pages of a version are never
//   reused for another, so an open reader reads one version from open to close.
// - Writers write through a kernel inode too, and the kernel grows that inode's i_size
//   with their writes. So nodes come in two kinds: clean nodes, which readers open
//   through the page cache, and writer nodes ("tainted"), which only writers open
//   (direct_io). A writer opening a clean node that no reader has open makes it a writer
//   node for good (a rewrite costs no extra round trip). A writer whose path resolved to a
//   clean node that is open for reading gets ESTALE once, with a reservation for its
//   thread; the VFS retries the open with LOOKUP_REVAL and that lookup answers a writer
//   node. A reader whose path resolved to a writer node gets ESTALE once too and its retry
//   answers a clean node (should a writer take that one first, the retried open reads the
//   committed value through direct I/O). Writer nodes never become clean, so no retry is
//   ever sent back again: no program ever sees ESTALE. Readers use the page cache, so mmap
//   works on every file.
// - A commit made through this mount invalidates the key's dentry before close()/fsync()
//   returns: a worker commits, then the invalidator answers the FLUSH (invalidator.h).
//   Only the writer's own close publishes: a FLUSH from another file table (a forked
//   child's inherited copy) does not. Commits made elsewhere (keyfsctl, another mount)
//   reach us through the engine's change listener.
// - Truncation: atomic_o_trunc is off, so open(O_TRUNC) arrives as OPEN then SETATTR
//   (size 0) without a handle; it is applied to the calling thread's write handle. bash's
//   `echo x > k` FLUSHes before writing, so FLUSH commits only when data was written
//   since the last commit; a truncate-only handle commits at RELEASE or fsync.
// - On a -o ro mount OPEN answers ENOSYS: the kernel stops sending OPEN/RELEASE and
//   serves reads from the page cache of each version's node (no round trip at all).
//
// Threads: libfuse's loop thread runs every handler that does not block; handlers that
// commit or sync run on the worker pool and reply themselves; the invalidator's thread
// sends invalidations and the replies that must follow them.
// Lock order: WriteHandle::commit_mu -> WriteHandle::mu -> InodeTable -> (WriterRegistry,
// Invalidator): the last two are leaves; no lock is held while replying to the kernel.
// InodeTable's RenameGate (KeysInUse) comes after commit_mu (mu released) and before
// InodeTable's mutex.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/statvfs.h>

#include <string>

#include "attr.h"
#include "control_files.h"
#include "handles.h"
#include "inode_table.h"
#include "invalidator.h"
#include "keyfs/fs/filesystem.h"
#include "keyfs/store/engine.h"
#include "worker_pool.h"
#include "write_path.h"

namespace keyfs::fs {

// Runs a handler so that no exception reaches libfuse: bad_alloc -> ENOMEM, else EIO.
// Only for handlers that have not replied yet when they throw (they reply last).
template <class Fn>
void Guard(fuse_req_t req, Fn&& fn) {
  try {
    fn();
  } catch (const std::bad_alloc&) {
    fuse_reply_err(req, ENOMEM);
  } catch (...) {
    fuse_reply_err(req, EIO);
  }
}

// The caller of `req`; its supplementary groups only `with_groups`.
Caller CallerOf(fuse_req_t req, bool with_groups = false);

struct Filesystem::Impl {
  Impl(Engine* e, Config c)
      : engine(e),
        config(std::move(c)),
        invalidator(&table, e),
        write_path(
            e, &table, &counters,
            config.write_budget_bytes != 0 ? config.write_budget_bytes : DefaultWriteBudget()) {}

  Engine* const engine;
  const Config config;
  fuse_session* session = nullptr;
  InodeTable table;
  WorkerPool workers;
  WriterRegistry writers;
  FsCounters counters;
  Invalidator invalidator;
  WritePath write_path;

  double timeout() const { return config.cache_timeout_s; }

  // Hands a request to the worker pool; the job replies itself.
  template <class Fn>
  void Async(fuse_req_t req, Fn fn) {
    workers.Submit([req, fn = std::move(fn)]() mutable { Guard(req, fn); });
  }

  // ---- names (ops_entry.cc) ----
  // The key of directory node `parent`; 0 or ENOENT / ENOTDIR / EPERM (the control dir).
  int DirKey(uint64_t parent, std::string* key);
  // The key of `name` in `parent`; 0 or an errno (EPERM for the reserved .keyfs).
  int ChildKey(uint64_t parent, const char* name, std::string* key);
  // ChildKey for a request that changes the name: EROFS first on a -o ro mount.
  int KeyToChange(uint64_t parent, const char* name, std::string* key);
  // A lookup's answer for `key` as `rec` shows it (one more lookup on the node).
  void EntryFor(const std::string& key, const Record& rec, pid_t tid, fuse_entry_param* e);
  Meta NewMeta(const Caller& c, Meta m) const;

  // ---- entries (ops_entry.cc): 0 and *e filled, or an errno ----
  int DoLookup(const Caller& c, uint64_t parent, const char* name, fuse_entry_param* e);
  void DoForget(uint64_t ino, uint64_t n);
  // Commits `b` and answers the new entry at `key` (MKDIR, SYMLINK, MKNOD). Worker.
  int CommitNewEntry(const std::string& key, const Batch& b, fuse_entry_param* e);
  // CREATE (worker): commits the new file and opens a write handle on it in *fi.
  int DoCreate(const Caller& c, const std::string& key, const Meta& meta, fuse_entry_param* e,
               fuse_file_info* fi);
  int DoUnlink(const std::string& key, bool dir);                                // worker
  int DoRename(const std::string& from, const std::string& to, uint32_t flags);  // worker

  // ---- attributes (ops_attr.cc) ----
  int DoGetAttr(const Caller& c, uint64_t ino, uint64_t fh, struct stat* st, double* timeout);
  // SETATTR on a worker; `wh` (referenced by the caller) is the write handle it applies
  // to, if any.
  int DoSetAttr(const Caller& c, uint64_t ino, const AttrRequest& a, int64_t size, WriteHandle* wh,
                struct stat* st);
  int DoReadLink(uint64_t ino, std::string* target);
  int DoStatFs(struct statvfs* st);

  // ---- files (ops_file.cc) ----
  int DoOpen(const Caller& c, uint64_t ino, fuse_file_info* fi);
  // The bytes a READ answers: a view into the handle's data, into the node's version
  // (kept alive by *pin), or into *scratch; valid while the caller holds both.
  int DoRead(uint64_t ino, size_t size, off_t off, uint64_t fh, std::string* scratch, Record* pin,
             std::string_view* out);
  // Commits a write handle (FLUSH, fsync); *key gets the key to invalidate ("" if nothing
  // was committed). Worker.
  int CommitForClose(WriteHandle* h, std::string* key);
  // RELEASE: closes the handle, committing what a truncate-only writer left.
  void DoRelease(uint64_t ino, Handle* h);
  std::string Stats();

  // ---- directories (ops_dir.cc) ----
  int DoOpenDir(uint64_t ino, fuse_file_info* fi);
  // Fills a READDIR(PLUS) answer into buf (at most `size` bytes); *used says how much.
  int DoReadDir(fuse_req_t req, uint64_t ino, size_t size, off_t off, DirHandle* h, bool plus,
                std::string* buf, size_t* used);

  // ---- request entry points (ops_*.cc): each replies exactly once ----
  void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi);
  void ReadLink(fuse_req_t req, fuse_ino_t ino);
  void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name);
  void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi);
  void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir);
  void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags);
  void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  void Write(fuse_req_t req, const char* buf, size_t size, off_t off, fuse_file_info* fi);
  void Flush(fuse_req_t req, fuse_file_info* fi);
  void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void Fsync(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
               bool plus);
  void StatFs(fuse_req_t req);
};

}  // namespace keyfs::fs
