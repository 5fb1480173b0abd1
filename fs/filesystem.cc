// Request handlers of the keyfs daemon (libfuse 3.14 lowlevel API).
//
// Isolation and caching, the design in one page (SPEC §3, FUSE-NOTES.md):
// - Every committed version of a file or symlink has its own nodeid (InodeTable), with
//   long entry/attr timeouts and keep_cache: the kernel's pages of a version are never
//   reused for another, so an open reader reads one version from open to close.
// - A commit made through this mount invalidates the key's dentry before close()/fsync()
//   returns: the worker commits, then the notifier thread invalidates and answers the
//   FLUSH (an invalidation may wait on a directory lock held by a CREATE or RENAME that
//   needs a worker, so workers never wait on one). Only the writer's own close publishes:
//   a FLUSH from another file table (a forked child's inherited copy) does not;
//   commits made elsewhere (keyfsctl, another mount) reach us through the engine's change
//   listener and are invalidated by the notifier thread.
// - A writer writes through the kernel inode its path resolved to, and the kernel grows
//   that inode's i_size under any reader of it. So a node a writer opened is "tainted":
//   it is never again handed to a reader. A writer that finds readers on its node gets
//   ESTALE after tainting it; the VFS then walks the path again with LOOKUP_REVAL and our
//   LOOKUP answers a fresh node, so the writer gets a node of its own. A reader that
//   finds a tainted or superseded node gets ESTALE the same way and lands on a clean node
//   of the committed version.
// - Truncation: atomic_o_trunc is off, so open(O_TRUNC) arrives as OPEN then SETATTR
//   (size 0) without a handle; it is applied to the caller's write handle. bash's
//   `echo x > k` FLUSHes before writing, so FLUSH commits only when data was written
//   since the last commit; a truncate-only handle commits at RELEASE or fsync.
// - On a -o ro mount OPEN answers ENOSYS: the kernel stops sending OPEN/RELEASE and
//   serves reads from the page cache of each version's node (no round trip at all).
#include "keyfs/fs/filesystem.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "inode_table.h"

namespace keyfs::fs {

namespace {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

timespec ToTimespec(int64_t ns) {
  timespec ts;
  ts.tv_sec = ns / 1000000000;
  ts.tv_nsec = ns % 1000000000;
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    --ts.tv_sec;
  }
  return ts;
}

mode_t TypeBits(EntryType t) {
  switch (t) {
    case EntryType::kDir:
      return S_IFDIR;
    case EntryType::kSymlink:
      return S_IFLNK;
    case EntryType::kFile:
      break;
  }
  return S_IFREG;
}

std::string JoinKey(const std::string& dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  std::string k;
  k.reserve(dir.size() + 1 + name.size());
  k.append(dir).append(1, '/').append(name);
  return k;
}

// Runs a handler so that no exception reaches libfuse: bad_alloc -> ENOMEM, else EIO.
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

// A small pool for requests that commit (they block for a durable write).
class WorkerPool {
 public:
  void Start(unsigned n) {
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { Run(); });
  }
  void Submit(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
};

}  // namespace

// One open file or directory. Owned through fuse_file_info::fh.
struct Handle {
  enum class Kind { kReader, kWriter, kStats, kSyncControl, kDir };
  Kind kind = Kind::kReader;
  uint64_t node = 0;
  bool cached = false;  // reader served through the page cache
  Record rec;           // reader: the version it reads
  pid_t pid = 0;
  std::mutex mu;  // writer fields below
  std::string buf;
  bool append = false;
  bool dirty = false;          // written since the last commit
  bool truncated = false;      // size changed since the last commit
  uint64_t edits = 0;          // bumps on every change, to tell if a commit covered them
  Meta create_meta;            // for a file this handle created
  int64_t explicit_mtime = kTimeNow;  // set by utimens after the last write: the commit keeps it
  uint64_t write_owner = 0;    // lock_owner (the writer's file table) of the last WRITE
  std::string text;            // stats
  // References: the kernel's (dropped at RELEASE) plus one per queued job using it, so a
  // FLUSH still committing on a worker never sees the handle freed by a racing RELEASE.
  std::atomic<int> refs{1};
  // Directory cursor: the offset the next readdir continues at, and the last name.
  off_t next_off = 0;
  std::string last_name;
};

constexpr size_t kPaddedStatsSize = 4096;

Handle* Ref(Handle* h) {
  h->refs.fetch_add(1, std::memory_order_relaxed);
  return h;
}
void Unref(Handle* h) {
  if (h->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete h;
}

struct Filesystem::Impl {
  Impl(Engine* e, Config c) : engine(e), config(c) {}

  Engine* engine;
  Config config;
  fuse_session* session = nullptr;
  InodeTable table;
  WorkerPool workers;

  std::mutex writers_mu;
  std::unordered_map<uint64_t, std::vector<Handle*>> writers;  // node -> write handles

  // Invalidations of commits made elsewhere, done by the notifier thread.
  struct Inval {
    uint64_t parent;  // inval_entry(parent, name) if name non-empty, else inval_inode(parent);
                      // 0: nothing to invalidate
    std::string name;
    fuse_req_t reply = nullptr;  // answered with `err` once the invalidation is done
    int err = 0;
  };
  std::mutex inval_mu;
  std::condition_variable inval_cv;
  std::deque<Inval> inval_queue;
  bool inval_stop = false;
  std::thread notifier;

  std::atomic<uint64_t> n_reads{0}, n_writes{0}, n_commits{0}, n_errors{0}, n_opens{0},
      n_lookups{0}, n_estale{0};

  double timeout() const { return config.cache_timeout_s; }

  // Hands a request to the worker pool; the job replies itself, exceptions become errnos.
  template <class Fn>
  void Async(fuse_req_t req, Fn fn) {
    workers.Submit([req, fn = std::move(fn)]() mutable { Guard(req, fn); });
  }

  // ---- attributes ----
  void FillAttr(uint64_t ino, const Meta& m, uint64_t size, struct stat* st) const {
    std::memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_mode = TypeBits(m.type) | (m.mode & 07777);
    st->st_nlink = m.type == EntryType::kDir ? 2 : 1;
    st->st_uid = m.uid;
    st->st_gid = m.gid;
    st->st_size = static_cast<off_t>(size);
    st->st_blksize = 4096;
    st->st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
    st->st_mtim = ToTimespec(m.mtime_ns);
    st->st_atim = st->st_mtim;
    st->st_ctim = ToTimespec(m.ctime_ns);
  }

  void ControlAttr(uint64_t id, struct stat* st) const {
    Meta m = id == kControlDirId ? Meta::Dir(0555) : Meta::File(id == kSyncFileId ? 0200 : 0444);
    m.mtime_ns = m.ctime_ns = NowNs();
    // Without OPEN (-o ro) reads go through the page cache, bounded by the size: the
    // stats file then has a fixed size, its JSON padded with spaces.
    FillAttr(id, m, id == kStatsFileId && config.read_only ? kPaddedStatsSize : 0, st);
  }

  void ReplyEntry(fuse_req_t req, uint64_t id, uint64_t ino, const Meta& m, uint64_t size) {
    fuse_entry_param e;
    std::memset(&e, 0, sizeof(e));
    e.ino = id;
    e.generation = 1;
    e.attr_timeout = e.entry_timeout = timeout();
    FillAttr(ino, m, size, &e.attr);
    fuse_reply_entry(req, &e);
  }

  // Answers the node for `key` as `rec` shows it (one more lookup on it).
  void ReplyEntryFor(fuse_req_t req, const std::string& key, const Record& rec) {
    uint64_t id = table.Acquire(key, rec);
    uint64_t ino = 0;
    table.WithNode(id, [&](Node& n) { ino = n.ino; });
    ReplyEntry(req, id, ino, rec.meta, rec.value.size());
  }

  // The node's key and type; ENOENT-style false for unknown nodes.
  bool NodeKey(uint64_t id, std::string* key, EntryType* type) {
    return table.KeyOf(id, key, type);
  }

  // Directory key for a parent nodeid; errno on failure.
  int DirKey(uint64_t parent, std::string* key) {
    if (parent == kControlDirId) return EPERM;
    EntryType type;
    if (!NodeKey(parent, key, &type)) return ENOENT;
    if (type != EntryType::kDir) return ENOTDIR;
    return 0;
  }

  int ChildKey(uint64_t parent, const char* name, std::string* key) {
    std::string dir;
    if (int err = DirKey(parent, &dir)) return err;
    size_t len = std::strlen(name);
    if (len > kMaxNameLength) return ENAMETOOLONG;
    if (parent == kRootId && name == kControlDirName) return EPERM;  // reserved
    *key = JoinKey(dir, std::string_view(name, len));
    Status s = ValidateKey(*key);
    return s.ok() ? 0 : StatusToErrno(s);
  }

  Status Commit(const Batch& b) {
    Status s = engine->Commit(b);
    if (s.ok()) {
      n_commits.fetch_add(1, std::memory_order_relaxed);
    } else if (s.code() == Status::Code::kIOError || s.code() == Status::Code::kNoSpace ||
               s.IsCorruption()) {
      n_errors.fetch_add(1, std::memory_order_relaxed);
      spdlog::error("commit failed: {}", s.ToString());
    }
    return s;
  }

  // Drops the kernel's dentry for `key` so the next open looks up the new version, then
  // answers `req` with `err`: the caller's close()/fsync() returns after the invalidation.
  // The notifier thread does both: an invalidation can wait on a directory lock held by a
  // request (CREATE, RENAME...) that needs a worker, so no worker ever waits for one.
  void InvalidateThenReply(fuse_req_t req, const std::string& key, int err) {
    Inval iv;
    iv.parent = key.empty() ? 0 : table.DirId(std::string(ParentKey(key)));
    if (iv.parent != 0) iv.name = std::string(BaseName(key));
    iv.reply = req;
    iv.err = err;
    {
      std::lock_guard<std::mutex> l(inval_mu);
      inval_queue.push_back(std::move(iv));
    }
    inval_cv.notify_one();
  }

  void QueueInval(uint64_t parent, std::string name) {
    {
      std::lock_guard<std::mutex> l(inval_mu);
      inval_queue.push_back({parent, std::move(name)});
    }
    inval_cv.notify_one();
  }

  void OnChange(const ChangeEvent& ev) {
    if (!ev.external) return;  // our own commits invalidate in their request handlers
    spdlog::debug("store changed elsewhere: generation {} -> {}, {} keys", ev.old_generation,
                  ev.new_generation, ev.changed.size());
    std::string last_parent;
    for (const std::string& k : ev.changed) {
      std::string parent(ParentKey(k));
      uint64_t pid = table.DirId(parent);
      if (pid == 0) continue;
      QueueInval(pid, std::string(BaseName(k)));
      if (parent != last_parent) QueueInval(pid, "");  // its listing and attributes
      last_parent = parent;
      if (uint64_t self = table.DirId(k)) QueueInval(self, "");
    }
  }

  void NotifierLoop() {
    while (true) {
      Inval iv;
      {
        std::unique_lock<std::mutex> l(inval_mu);
        inval_cv.wait(l, [&] { return inval_stop || !inval_queue.empty(); });
        if (inval_queue.empty()) return;
        iv = std::move(inval_queue.front());
        inval_queue.pop_front();
      }
      if (iv.parent != 0 && !inval_stop) {
        int r = iv.name.empty() ? fuse_lowlevel_notify_inval_inode(session, iv.parent, 0, 0)
                                : fuse_lowlevel_notify_inval_entry(session, iv.parent,
                                                                   iv.name.data(), iv.name.size());
        if (r != 0 && r != -ENOENT) spdlog::debug("invalidation failed: {}", strerror(-r));
      }
      if (iv.reply != nullptr) fuse_reply_err(iv.reply, iv.err);
    }
  }

  // ---- write handles ----
  void RegisterWriter(Handle* h) {
    std::lock_guard<std::mutex> l(writers_mu);
    writers[h->node].push_back(h);
  }
  void UnregisterWriter(Handle* h) {
    std::lock_guard<std::mutex> l(writers_mu);
    auto it = writers.find(h->node);
    if (it == writers.end()) return;
    auto& v = it->second;
    v.erase(std::remove(v.begin(), v.end(), h), v.end());
    if (v.empty()) writers.erase(it);
  }
  // The write handle a handle-less SETATTR (open with O_TRUNC) belongs to: the newest
  // one of the calling process on that node.
  Handle* WriterFor(uint64_t node, pid_t pid) {
    std::lock_guard<std::mutex> l(writers_mu);
    auto it = writers.find(node);
    if (it == writers.end()) return nullptr;
    for (auto h = it->second.rbegin(); h != it->second.rend(); ++h) {
      if ((*h)->pid == pid) return *h;
    }
    return it->second.back();
  }

  // Commits a write handle's content if it changed; *committed says whether it did.
  // Returns 0 or an errno.
  int CommitHandle(Handle* h, bool* committed) {
    *committed = false;
    std::string key;
    std::string value;
    uint64_t edits;
    int64_t mtime;
    bool unlinked = false;
    {
      std::lock_guard<std::mutex> l(h->mu);
      if (!h->dirty && !h->truncated) return 0;
      value = h->buf;
      edits = h->edits;
      mtime = h->explicit_mtime;
    }
    table.WithNode(h->node, [&](Node& n) {
      key = n.key;
      unlinked = n.unlinked;
    });
    if (key.empty() && !unlinked) return EIO;
    if (!unlinked) {
      Meta meta = h->create_meta;
      auto cur = engine->Get(key);
      if (cur.ok() && cur->meta.type == EntryType::kFile) meta = cur->meta;
      meta.type = EntryType::kFile;
      meta.mtime_ns = mtime;  // kTimeNow: the commit's time
      Status s = Commit(Batch().Put(key, std::move(value), meta));
      if (!s.ok()) return StatusToErrno(s);
      spdlog::debug("committed {}", key);
      *committed = true;
      // The writer's node (tainted: no page-cache reader uses it) now shows the value it
      // committed, for stat and for direct-io readers of it.
      auto now = engine->Get(key);
      if (now.ok()) {
        table.WithNode(h->node, [&](Node& n) {
          n.version = now->version;
          n.rec = CompactRecord(*now);
        });
      }
    }
    std::lock_guard<std::mutex> l(h->mu);
    if (h->edits == edits) h->dirty = h->truncated = false;
    return 0;
  }

  // ---- ops ----
  void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    n_lookups.fetch_add(1, std::memory_order_relaxed);
    if (parent == kRootId && name == kControlDirName) {
      fuse_entry_param e;
      std::memset(&e, 0, sizeof(e));
      e.ino = kControlDirId;
      e.attr_timeout = e.entry_timeout = 1;
      ControlAttr(kControlDirId, &e.attr);
      fuse_reply_entry(req, &e);
      return;
    }
    if (parent == kControlDirId) {
      uint64_t id = std::strcmp(name, "stats") == 0  ? kStatsFileId
                    : std::strcmp(name, "sync") == 0 ? kSyncFileId
                                                     : 0;
      if (id == 0) {
        fuse_reply_err(req, ENOENT);
        return;
      }
      fuse_entry_param e;
      std::memset(&e, 0, sizeof(e));
      e.ino = id;
      e.attr_timeout = e.entry_timeout = 1;
      ControlAttr(id, &e.attr);
      fuse_reply_entry(req, &e);
      return;
    }
    std::string key;
    if (int err = ChildKey(parent, name, &key)) {
      if (err == EPERM) err = ENOENT;
      fuse_reply_err(req, err);
      return;
    }
    auto rec = engine->GetInDirectory(key);
    if (rec.status().IsNotFound()) {
      fuse_entry_param e;  // a negative entry, cached like any other
      std::memset(&e, 0, sizeof(e));
      e.entry_timeout = timeout();
      fuse_reply_entry(req, &e);
      return;
    }
    if (!rec.ok()) {
      fuse_reply_err(req, StatusToErrno(rec.status()));
      return;
    }
    ReplyEntryFor(req, key, *rec);
  }

  void Forget(fuse_ino_t ino, uint64_t n) {
    if (ino >= kFirstDynamicId) table.Forget(ino, n);
  }

  void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    struct stat st;
    if (ino == kControlDirId || ino == kStatsFileId || ino == kSyncFileId) {
      ControlAttr(ino, &st);
      fuse_reply_attr(req, &st, 1);
      return;
    }
    // fstat comes without a handle (the kernel sends none for it): the writing process
    // gets its own handle's size, uncached, as on a local filesystem.
    Handle* writer = nullptr;
    {
      std::lock_guard<std::mutex> l(writers_mu);
      auto* own = fi != nullptr ? reinterpret_cast<Handle*>(fi->fh) : nullptr;
      if (own != nullptr && own->kind == Handle::Kind::kWriter) {
        writer = Ref(own);
      } else if (auto it = writers.find(ino); it != writers.end()) {
        // Only the writing process sees its uncommitted size; everyone else the committed.
        const pid_t pid = fuse_req_ctx(req)->pid;
        for (auto h = it->second.rbegin(); h != it->second.rend() && writer == nullptr; ++h) {
          if ((*h)->pid == pid) writer = Ref(*h);
        }
      }
    }
    if (writer != nullptr) {
      Meta meta;
      uint64_t node_ino = 0;
      table.WithNode(ino, [&](Node& n) {
        meta = n.rec.meta;
        node_ino = n.ino;
      });
      {
        std::lock_guard<std::mutex> l(writer->mu);
        FillAttr(node_ino, meta, writer->buf.size(), &st);
      }
      Unref(writer);
      fuse_reply_attr(req, &st, 0);
      return;
    }
    Node copy;
    bool found = table.WithNode(ino, [&](Node& n) {
      copy.key = n.key;
      copy.ino = n.ino;
      copy.type = n.type;
      copy.rec.meta = n.rec.meta;
      copy.rec.value = n.rec.value;
    });
    if (!found) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (copy.type == EntryType::kDir) {
      auto rec = engine->Get(copy.key);  // a directory's node follows its key
      if (rec.ok() && rec->meta.type == EntryType::kDir) {
        copy.rec.meta = rec->meta;
        table.WithNode(ino, [&](Node& n) { n.rec.meta = rec->meta; });
      }
    }
    FillAttr(copy.ino, copy.rec.meta, copy.rec.value.size(), &st);
    fuse_reply_attr(req, &st, timeout());
  }

  int CheckOwner(fuse_req_t req, const Meta& m) {
    const fuse_ctx* c = fuse_req_ctx(req);
    return c->uid == 0 || c->uid == m.uid ? 0 : EPERM;
  }

  void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
    if (ino == kSyncFileId && to_set == FUSE_SET_ATTR_SIZE) {  // `echo 1 > sync` truncates
      struct stat st;
      ControlAttr(ino, &st);
      fuse_reply_attr(req, &st, 1);
      return;
    }
    if (ino < kFirstDynamicId && ino != kRootId) {
      fuse_reply_err(req, EPERM);
      return;
    }
    if (config.read_only) {
      fuse_reply_err(req, EROFS);
      return;
    }
    Handle* wh = nullptr;
    if (fi != nullptr && fi->fh != 0 &&
        reinterpret_cast<Handle*>(fi->fh)->kind == Handle::Kind::kWriter) {
      wh = reinterpret_cast<Handle*>(fi->fh);
    }
    if ((to_set & (FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) &&
        wh == nullptr) {
      wh = WriterFor(ino, fuse_req_ctx(req)->pid);
    }
    const struct stat a = *attr;
    const uid_t caller_uid = fuse_req_ctx(req)->uid;
    if (to_set == FUSE_SET_ATTR_SIZE && wh != nullptr) {
      // open(O_TRUNC) or ftruncate on a write handle: its private copy only, no commit.
      if (int err = DoSetAttr(req, ino, a, to_set, wh, caller_uid)) fuse_reply_err(req, err);
      return;
    }
    if (wh != nullptr) Ref(wh);
    Async(req, [this, req, ino, a, to_set, wh, caller_uid] {
      int err = DoSetAttr(req, ino, a, to_set, wh, caller_uid);
      if (wh != nullptr) Unref(wh);
      if (err) fuse_reply_err(req, err);
    });
  }

  int DoSetAttr(fuse_req_t req, fuse_ino_t ino, const struct stat& a, int to_set, Handle* wh,
                uid_t caller_uid) {
    std::string key;
    EntryType type;
    if (!NodeKey(ino, &key, &type)) return ENOENT;
    if (ino == kRootId) return EPERM;  // the root's metadata is the mount's
    uint64_t size_override = UINT64_MAX;
    if (to_set & FUSE_SET_ATTR_SIZE) {
      if (type != EntryType::kFile) return type == EntryType::kDir ? EISDIR : EINVAL;
      if (a.st_size < 0) return EINVAL;
      if (wh != nullptr) {
        std::lock_guard<std::mutex> l(wh->mu);
        wh->buf.resize(static_cast<size_t>(a.st_size));
        wh->truncated = true;
        ++wh->edits;
        size_override = wh->buf.size();
      } else {
        // truncate(2) on a path with no writer: a commit of its own.
        auto cur = engine->Get(key);
        if (!cur.ok()) return StatusToErrno(cur.status());
        std::string v(cur->value.substr(0, std::min<uint64_t>(cur->value.size(), a.st_size)));
        v.resize(static_cast<size_t>(a.st_size));
        Meta m = cur->meta;
        m.mtime_ns = kTimeNow;
        Status s = Commit(Batch().Put(key, std::move(v), m));
        if (!s.ok()) return StatusToErrno(s);
      }
    }
    const int meta_bits = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
                          FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW;
    if (to_set & meta_bits) {
      auto cur = engine->Get(key);
      if (!cur.ok()) return StatusToErrno(cur.status());
      Meta m = cur->meta;
      bool owner = caller_uid == 0 || caller_uid == m.uid;
      if ((to_set & FUSE_SET_ATTR_MODE) && !owner) return EPERM;
      if ((to_set & FUSE_SET_ATTR_UID) && caller_uid != 0 && a.st_uid != m.uid) return EPERM;
      if ((to_set & FUSE_SET_ATTR_GID) && !owner) return EPERM;
      if ((to_set & FUSE_SET_ATTR_MTIME) && !owner) return EPERM;
      if (to_set & FUSE_SET_ATTR_MODE) m.mode = a.st_mode & 07777;
      if (to_set & FUSE_SET_ATTR_UID) m.uid = a.st_uid;
      if (to_set & FUSE_SET_ATTR_GID) m.gid = a.st_gid;
      if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
        m.mtime_ns = NowNs();
      } else if (to_set & FUSE_SET_ATTR_MTIME) {
        m.mtime_ns = int64_t{a.st_mtim.tv_sec} * 1000000000 + a.st_mtim.tv_nsec;
      }
      Status s = Commit(Batch().SetMeta(key, m));
      if (!s.ok()) return StatusToErrno(s);
      if (wh != nullptr) {
        std::lock_guard<std::mutex> l(wh->mu);
        wh->create_meta = m;
        if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
          wh->explicit_mtime = m.mtime_ns;  // cp -a / tar set times before close
        }
      }
    }
    // Reply with what the key now is; the node follows when its content is unchanged.
    auto rec = engine->Get(key);
    if (!rec.ok()) return StatusToErrno(rec.status());
    uint64_t node_ino = 0;
    table.WithNode(ino, [&](Node& n) {
      // The node now shows what the key is: a setattr changes the file in place, as on
      // any filesystem (the kernel applies our reply to this inode anyway).
      node_ino = n.ino;
      n.version = rec->version;
      n.rec = CompactRecord(*rec);
    });
    struct stat st;
    FillAttr(node_ino, rec->meta, size_override != UINT64_MAX ? size_override : rec->value.size(),
             &st);
    fuse_reply_attr(req, &st, timeout());
    return 0;
  }

  void ReadLink(fuse_req_t req, fuse_ino_t ino) {
    std::string target;
    EntryType type = EntryType::kFile;
    bool found = table.WithNode(ino, [&](Node& n) {
      type = n.type;
      target.assign(n.rec.value);
    });
    if (!found) {
      fuse_reply_err(req, ENOENT);
    } else if (type != EntryType::kSymlink) {
      fuse_reply_err(req, EINVAL);
    } else {
      fuse_reply_readlink(req, target.c_str());
    }
  }

  std::string StatsJson() {
    EngineStats s = engine->Stats();
    std::string j = "{\n";
    auto num = [&](const char* k, uint64_t v, bool last = false) {
      j += "  \"" + std::string(k) + "\": " + std::to_string(v) + (last ? "\n" : ",\n");
    };
    j += "  \"engine\": \"" + s.engine + "\",\n";
    num("format_version", s.format_version);
    num("entries", s.entries);
    num("files", s.files);
    num("dirs", s.dirs);
    num("symlinks", s.symlinks);
    num("value_bytes", s.value_bytes);
    num("file_bytes", s.file_bytes);
    num("table_version", s.generation);
    num("commits", s.commits);
    num("commit_errors", s.commit_errors);
    num("rebuilds", s.rebuilds);
    num("external_reloads", s.external_reloads);
    num("last_commit_unix_ns", static_cast<uint64_t>(s.last_commit_ns));
    num("last_commit_duration_ns", static_cast<uint64_t>(s.last_commit_duration_ns));
    num("buffered_writes", s.buffered_writes);
    j += std::string("  \"syncing\": ") + (s.syncing ? "true" : "false") + ",\n";
    num("syncs", s.syncs);
    num("sync_errors", s.sync_errors);
    num("last_sync_unix_ns", static_cast<uint64_t>(s.last_sync_ns));
    num("last_sync_duration_ns", static_cast<uint64_t>(s.last_sync_duration_ns));
    char fp[32];
    std::snprintf(fp, sizeof fp, "%.3g", s.bloom_fp_estimate);
    j += std::string("  \"bloom_fp_estimate\": ") + fp + ",\n";
    num("reads", n_reads.load());
    num("writes", n_writes.load());
    num("lookups", n_lookups.load());
    num("opens", n_opens.load());
    num("fs_commits", n_commits.load());
    num("stale_reopens", n_estale.load());
    num("nodes", table.size());
    num("errors", n_errors.load(), true);
    j += "}\n";
    return j;
  }

  void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    n_opens.fetch_add(1, std::memory_order_relaxed);
    if (ino == kStatsFileId || ino == kSyncFileId) {
      auto* h = new Handle();
      h->kind = ino == kStatsFileId ? Handle::Kind::kStats : Handle::Kind::kSyncControl;
      if (ino == kStatsFileId) h->text = StatsJson();
      fi->fh = reinterpret_cast<uint64_t>(h);
      fi->direct_io = 1;
      fuse_reply_open(req, fi);
      return;
    }
    if (config.read_only) {
      // Never reached for files once the kernel learns no_open from this answer.
      fuse_reply_err(req, ENOSYS);
      return;
    }
    const bool write = (fi->flags & O_ACCMODE) != O_RDONLY;
    std::string key;
    EntryType type;
    if (!NodeKey(ino, &key, &type)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (type == EntryType::kDir) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    auto cur = engine->Get(key);
    if (!cur.ok() && !cur.status().IsNotFound()) {
      fuse_reply_err(req, StatusToErrno(cur.status()));
      return;
    }
    auto h = std::make_unique<Handle>();
    h->node = ino;
    h->pid = fuse_req_ctx(req)->pid;
    int err = 0;
    table.WithNode(ino, [&](Node& n) {
      const bool superseded = !cur.ok() || cur->version != n.version;
      if (write) {
        // A writer needs the current version and a node no page-cache reader uses.
        if (superseded || n.cached_readers > 0) {
          n.tainted = true;
          err = ESTALE;
          return;
        }
        n.tainted = true;
        ++n.writers;
        ++n.open_handles;
        h->kind = Handle::Kind::kWriter;
        h->buf.assign(n.rec.value);
        h->create_meta = n.rec.meta;
        return;
      }
      // A reader reads the node's own version. Through the page cache unless a writer
      // may have grown this node's i_size; then straight from us (direct_io).
      ++n.open_handles;
      h->kind = Handle::Kind::kReader;
      h->rec = n.rec;
      h->cached = !n.tainted;
      if (h->cached) ++n.cached_readers;
    });
    if (err) {
      // The VFS retries once with LOOKUP_REVAL; that lookup answers a writer's node.
      if (cur.ok()) table.ReserveForWriter(key, cur->version);
      n_estale.fetch_add(1, std::memory_order_relaxed);
      fuse_reply_err(req, err);
      return;
    }
    if (write) {
      table.WriterOpened(key);
      // fstat/lseek on the writer's fd must see its own size: drop the attributes the
      // kernel caches for this node (attributes only: no lock is taken for that).
      if (session != nullptr) fuse_lowlevel_notify_inval_inode(session, ino, -1, 0);
      h->append = fi->flags & O_APPEND;
      fi->direct_io = 1;  // writes come to us; no page cache shared with readers
      RegisterWriter(h.get());
    } else if (h->cached) {
      fi->keep_cache = 1;  // the node's version never changes: its pages stay valid
      fi->noflush = 1;
    } else {
      fi->direct_io = 1;
      fi->noflush = 1;
    }
    fi->fh = reinterpret_cast<uint64_t>(h.release());
    fuse_reply_open(req, fi);
  }

  void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    n_reads.fetch_add(1, std::memory_order_relaxed);
    auto slice = [&](std::string_view v) {
      if (off < 0 || static_cast<uint64_t>(off) >= v.size()) {
        fuse_reply_buf(req, nullptr, 0);
        return;
      }
      v = v.substr(static_cast<size_t>(off), size);
      fuse_reply_buf(req, v.data(), v.size());
    };
    Handle* h = fi != nullptr && fi->fh != 0 ? reinterpret_cast<Handle*>(fi->fh) : nullptr;
    if (h == nullptr) {
      // -o ro (no OPEN): the node's own version.
      if (ino == kStatsFileId) {
        std::string j = StatsJson();
        if (j.size() < kPaddedStatsSize) j.insert(j.size() - 1, kPaddedStatsSize - j.size(), ' ');
        slice(j);
        QueueInval(kStatsFileId, "");  // the next read gets fresh figures
        return;
      }
      Record rec;
      if (!table.WithNode(ino, [&](Node& n) { rec = n.rec; })) {
        fuse_reply_err(req, ENOENT);
        return;
      }
      slice(rec.value);
      return;
    }
    switch (h->kind) {
      case Handle::Kind::kStats:
        slice(h->text);
        return;
      case Handle::Kind::kWriter: {
        std::lock_guard<std::mutex> l(h->mu);
        slice(h->buf);
        return;
      }
      case Handle::Kind::kReader:
        slice(h->rec.value);
        return;
      default:
        fuse_reply_err(req, EINVAL);
        return;
    }
  }

  void Write(fuse_req_t req, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
    n_writes.fetch_add(1, std::memory_order_relaxed);
    auto* h = reinterpret_cast<Handle*>(fi->fh);
    if (h->kind == Handle::Kind::kSyncControl) {
      std::string_view v(buf, size);
      while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.remove_suffix(1);
      if (v != "1") {
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
    if (off < 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    {
      std::lock_guard<std::mutex> l(h->mu);
      size_t at = h->append ? h->buf.size() : static_cast<size_t>(off);
      if (at + size > h->buf.size()) h->buf.resize(at + size);
      std::memcpy(h->buf.data() + at, buf, size);
      h->dirty = true;
      h->explicit_mtime = kTimeNow;  // a write after utimens makes the mtime "now" again
      if (fi->lock_owner != 0) h->write_owner = fi->lock_owner;
      ++h->edits;
    }
    fuse_reply_write(req, size);
  }

  void Flush(fuse_req_t req, fuse_file_info* fi) {
    if (config.read_only) {
      // Nothing is ever written here: ENOSYS tells the kernel to stop sending FLUSH on
      // every close (without OPEN there is no per-handle noflush to set).
      fuse_reply_err(req, ENOSYS);
      return;
    }
    auto* h = reinterpret_cast<Handle*>(fi->fh);
    if (h == nullptr || h->kind != Handle::Kind::kWriter) {
      fuse_reply_err(req, 0);
      return;
    }
    {
      // bash's `echo x > k` flushes a dup'd descriptor before writing: nothing to commit.
      // A FLUSH from another process's file table (a forked child closing its inherited
      // copy, at exit or exec) is not the writer's close: nothing is published for it.
      std::lock_guard<std::mutex> l(h->mu);
      if (!h->dirty || (h->write_owner != 0 && fi->lock_owner != h->write_owner)) {
        fuse_reply_err(req, 0);
        return;
      }
    }
    Ref(h);
    Async(req, [this, req, h] {
      bool committed;
      int err = CommitHandle(h, &committed);
      std::string key;
      if (!committed || !table.KeyOf(h->node, &key)) key.clear();
      Unref(h);
      InvalidateThenReply(req, key, err);
    });
  }

  void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    auto* h = reinterpret_cast<Handle*>(fi->fh);
    if (h == nullptr) {
      fuse_reply_err(req, 0);
      return;
    }
    if (h->kind != Handle::Kind::kWriter) {
      if (h->kind == Handle::Kind::kReader) table.CloseHandle(ino, h->cached, false);
      Unref(h);
      fuse_reply_err(req, 0);
      return;
    }
    bool pending;
    {
      std::lock_guard<std::mutex> l(h->mu);
      pending = h->dirty || h->truncated;
    }
    if (!pending) {  // everything was committed at FLUSH: nothing here blocks
      UnregisterWriter(h);
      table.CloseHandle(ino, false, true);
      Unref(h);
      fuse_reply_err(req, 0);
      return;
    }
    // A truncate-only handle (`: > k`, open(O_TRUNC) + close) commits here. RELEASE is
    // asynchronous to close(), so the commit runs right here on the loop thread: requests
    // that follow the close (a reader's LOOKUP/OPEN) are handled after it. The kernel's
    // dentry is invalidated by the notifier (inval_entry here could wait on a directory
    // lock held by a request queued behind this one).
    bool committed;
    int err = CommitHandle(h, &committed);
    if (err != 0) spdlog::error("release: commit of a closed file failed: {}", strerror(err));
    std::string key;
    if (committed && table.KeyOf(ino, &key)) {
      if (uint64_t parent = table.DirId(std::string(ParentKey(key)))) {
        QueueInval(parent, std::string(BaseName(key)));
      }
    }
    UnregisterWriter(h);
    table.CloseHandle(ino, false, true);
    Unref(h);
    fuse_reply_err(req, 0);
  }

  void Fsync(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    auto* h = fi != nullptr && fi->fh != 0 ? Ref(reinterpret_cast<Handle*>(fi->fh)) : nullptr;
    Async(req, [this, req, ino, h] {
      int err = 0;
      std::string key;
      if (h != nullptr && h->kind == Handle::Kind::kWriter) {
        bool committed;
        err = CommitHandle(h, &committed);
        if (!committed || !table.KeyOf(ino, &key)) key.clear();
      }
      if (h != nullptr) Unref(h);
      if (err == 0) {
        Status s = engine->Sync();
        if (!s.ok()) err = StatusToErrno(s);
      }
      InvalidateThenReply(req, key, err);
    });
  }

  // Commits `b` and answers the new entry at `key` (MKDIR, SYMLINK, MKNOD).
  void CommitAndReplyEntry(fuse_req_t req, std::string key, Batch b) {
    Async(req, [this, req, key = std::move(key), b = std::move(b)] {
      Status s = Commit(b);
      if (!s.ok()) {
        fuse_reply_err(req, StatusToErrno(s));
        return;
      }
      auto rec = engine->Get(key);
      if (!rec.ok()) {
        fuse_reply_err(req, StatusToErrno(rec.status()));
        return;
      }
      ReplyEntryFor(req, key, *rec);
    });
  }

  Meta NewMeta(fuse_req_t req, Meta m) {
    const fuse_ctx* c = fuse_req_ctx(req);
    m.uid = c->uid;
    m.gid = c->gid;
    return m;
  }

  bool RejectIfReadOnly(fuse_req_t req) {
    if (!config.read_only) return false;
    fuse_reply_err(req, EROFS);
    return true;
  }

  // The key of `name` in `parent` for a request that changes it. False after answering
  // the request: EROFS on a read-only mount, or the name's errno (EINVAL, ENAMETOOLONG...).
  bool KeyToChange(fuse_req_t req, fuse_ino_t parent, const char* name, std::string* key) {
    if (RejectIfReadOnly(req)) return false;
    if (int err = ChildKey(parent, name, key)) {
      fuse_reply_err(req, err);
      return false;
    }
    return true;
  }

  void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    std::string key;
    if (!KeyToChange(req, parent, name, &key)) return;
    Batch b;
    b.Mkdir(key, NewMeta(req, Meta::Dir(mode & 07777)));
    CommitAndReplyEntry(req, std::move(key), std::move(b));
  }

  void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
    std::string key;
    if (!KeyToChange(req, parent, name, &key)) return;
    if (std::strlen(link) > 4095) {
      fuse_reply_err(req, ENAMETOOLONG);
      return;
    }
    Batch b;
    b.Symlink(key, link, NewMeta(req, Meta::Symlink()));
    CommitAndReplyEntry(req, std::move(key), std::move(b));
  }

  void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    std::string key;
    if (!KeyToChange(req, parent, name, &key)) return;
    if (!S_ISREG(mode)) {
      fuse_reply_err(req, EPERM);  // devices, fifos, sockets: not values
      return;
    }
    Mutation m;
    m.key = key;
    m.meta = NewMeta(req, Meta::File(mode & 07777));
    m.exclusive = true;
    Batch b;
    b.Add(std::move(m));
    CommitAndReplyEntry(req, std::move(key), std::move(b));
  }

  void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
    std::string key;
    if (!KeyToChange(req, parent, name, &key)) return;
    Meta meta = NewMeta(req, Meta::File(mode & 07777));
    fuse_file_info f = *fi;
    pid_t pid = fuse_req_ctx(req)->pid;
    Async(req, [this, req, key = std::move(key), meta, f, pid]() mutable {
      Mutation m;
      m.key = key;
      m.meta = meta;
      m.exclusive = true;
      Status s = Commit(Batch().Add(std::move(m)));
      if (s.code() == Status::Code::kAlreadyExists && !(f.flags & O_EXCL)) {
        s = Status::OK();  // created meanwhile by someone else: open it
      }
      if (!s.ok()) {
        fuse_reply_err(req, StatusToErrno(s));
        return;
      }
      auto rec = engine->Get(key);
      if (!rec.ok()) {
        fuse_reply_err(req, StatusToErrno(rec.status()));
        return;
      }
      if (rec->meta.type != EntryType::kFile) {
        fuse_reply_err(req, rec->meta.type == EntryType::kDir ? EISDIR : EEXIST);
        return;
      }
      // A node of its own: the dentry was negative, no reader can share it.
      uint64_t id = table.AcquireFresh(key, *rec);
      auto* h = new Handle();
      h->kind = Handle::Kind::kWriter;
      h->node = id;
      h->pid = pid;
      h->append = f.flags & O_APPEND;
      uint64_t ino = 0;
      table.WithNode(id, [&](Node& n) {
        n.tainted = true;
        ++n.writers;
        ++n.open_handles;
        ino = n.ino;
        h->buf.assign(n.rec.value);
        h->create_meta = n.rec.meta;
      });
      RegisterWriter(h);
      f.fh = reinterpret_cast<uint64_t>(h);
      f.direct_io = 1;
      fuse_entry_param e;
      std::memset(&e, 0, sizeof(e));
      e.ino = id;
      e.generation = 1;
      e.entry_timeout = timeout();
      e.attr_timeout = 0;  // the writer's size changes with its writes: fstat asks us
      FillAttr(ino, rec->meta, rec->value.size(), &e.attr);
      if (fuse_reply_create(req, &e, &f) != 0) {
        // The kernel did not take the handle (interrupted): undo it.
        UnregisterWriter(h);
        table.CloseHandle(id, false, true);
        table.Forget(id, 1);
        delete h;
      }
    });
  }

  void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir) {
    std::string key;
    if (!KeyToChange(req, parent, name, &key)) return;
    Async(req, [this, req, key = std::move(key), dir] {
      auto rec = engine->Get(key);
      if (!rec.ok()) {
        fuse_reply_err(req, StatusToErrno(rec.status()));
        return;
      }
      bool is_dir = rec->meta.type == EntryType::kDir;
      if (is_dir != dir) {
        fuse_reply_err(req, dir ? ENOTDIR : EISDIR);
        return;
      }
      Status s = Commit(Batch().Delete(key));
      if (!s.ok()) {
        fuse_reply_err(req, StatusToErrno(s));
        return;
      }
      table.Unlinked(key);
      fuse_reply_err(req, 0);
    });
  }

  void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags) {
    if (RejectIfReadOnly(req)) return;
    std::string from, to;
    int err = ChildKey(parent, name, &from);
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
      Status s = Commit(Batch().Rename(from, to, f));
      if (!s.ok()) {
        fuse_reply_err(req, StatusToErrno(s));
        return;
      }
      const bool exchange = f & kRenameExchange;
      if (!exchange && from != to) table.Unlinked(to);
      table.Renamed(from, to, exchange);
      fuse_reply_err(req, 0);
    });
  }

  void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    if (ino != kControlDirId) {
      std::string key;
      EntryType type;
      if (!NodeKey(ino, &key, &type)) {
        fuse_reply_err(req, ENOENT);
        return;
      }
      if (type != EntryType::kDir) {
        fuse_reply_err(req, ENOTDIR);
        return;
      }
    }
    auto* h = new Handle();
    h->kind = Handle::Kind::kDir;
    h->node = ino;
    fi->fh = reinterpret_cast<uint64_t>(h);
    fi->cache_readdir = 1;  // listings are invalidated on every change
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
  }

  // Streams a directory: offsets are 1 ".", 2 "..", then 3, 4, ... per child; the handle
  // remembers where the last call stopped so the next one resumes with a cursor.
  void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
               bool plus) {
    auto* h = reinterpret_cast<Handle*>(fi->fh);
    std::string buf(size, '\0');
    size_t used = 0;
    auto add = [&](const char* name, const struct stat& st, off_t next,
                   const fuse_entry_param* e) -> bool {
      size_t n = plus ? fuse_add_direntry_plus(req, buf.data() + used, size - used, name, e, next)
                      : fuse_add_direntry(req, buf.data() + used, size - used, name, &st, next);
      if (n > size - used) return false;
      used += n;
      return true;
    };
    fuse_entry_param dot;
    std::memset(&dot, 0, sizeof(dot));
    dot.attr.st_ino = ino;
    dot.attr.st_mode = S_IFDIR;
    // "." and ".." carry no lookup (ino 0 in the entry param means "don't count it").
    if (off < 1) {
      if (!add(".", dot.attr, 1, &dot)) return ReplyDir(req, buf, used);
      off = 1;
    }
    if (off < 2) {
      if (!add("..", dot.attr, 2, &dot)) return ReplyDir(req, buf, used);
      off = 2;
    }
    if (ino == kControlDirId) {
      const char* names[] = {"stats", "sync"};
      for (int i = static_cast<int>(off) - 2; i < 2; ++i) {
        fuse_entry_param e;
        std::memset(&e, 0, sizeof(e));
        ControlAttr(i == 0 ? kStatsFileId : kSyncFileId, &e.attr);
        if (!add(names[i], e.attr, 3 + i, &e)) break;
      }
      return ReplyDir(req, buf, used);
    }
    std::string dir;
    if (!NodeKey(ino, &dir, nullptr)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    std::string after;
    off_t skip = 0;
    if (off == h->next_off && off > 2) {
      after = h->last_name;
    } else {
      skip = off - 2;  // a seek: restart and skip (rare)
    }
    off_t pos = off;
    Status s = engine->List(dir, after, [&](const DirEntry& d) {
      if (skip > 0) {
        --skip;
        return true;
      }
      if (dir.empty() && d.name == kControlDirName) return true;  // reserved, never listed
      std::string name(d.name);
      fuse_entry_param e;
      std::memset(&e, 0, sizeof(e));
      uint64_t id = 0;
      if (plus) {
        std::string key = JoinKey(dir, name);
        auto rec = engine->Get(key);
        if (rec.ok()) {
          id = table.Acquire(key, *rec);
          uint64_t child_ino = 0;
          table.WithNode(id, [&](Node& n) { child_ino = n.ino; });
          e.ino = id;
          e.generation = 1;
          e.attr_timeout = e.entry_timeout = timeout();
          FillAttr(child_ino, rec->meta, rec->value.size(), &e.attr);
        } else {
          FillAttr(KeyIno(key), d.meta, d.size, &e.attr);
        }
      } else {
        FillAttr(KeyIno(JoinKey(dir, name)), d.meta, d.size, &e.attr);
      }
      if (!add(name.c_str(), e.attr, pos + 1, &e)) {
        if (id != 0) table.Forget(id, 1);  // the kernel never saw this entry
        return false;
      }
      ++pos;
      h->last_name = std::move(name);
      return true;
    });
    if (!s.ok() && used == 0) {
      fuse_reply_err(req, StatusToErrno(s));
      return;
    }
    h->next_off = pos;
    ReplyDir(req, buf, used);
  }

  void ReplyDir(fuse_req_t req, const std::string& buf, size_t used) {
    fuse_reply_buf(req, buf.data(), used);
  }

  void StatFs(fuse_req_t req) {
    EngineStats s = engine->Stats();
    struct statvfs st;
    std::memset(&st, 0, sizeof(st));
    st.f_bsize = st.f_frsize = 4096;
    st.f_blocks = (s.file_bytes + 4095) / 4096;
    st.f_bfree = st.f_bavail = 0;
    // A key-value store has no fixed inode table: report every entry as used, and room
    // for as many again.
    st.f_files = s.entries + (uint64_t{1} << 32);
    st.f_ffree = st.f_favail = uint64_t{1} << 32;
    st.f_namemax = kMaxNameLength;
    fuse_reply_statfs(req, &st);
  }
};

// ---- the C entry points: thin, exception-proof, reply exactly once ----
namespace {

Filesystem::Impl* Self(fuse_req_t req) {
  return static_cast<Filesystem::Impl*>(fuse_req_userdata(req));
}

void OpInit(void* userdata, fuse_conn_info* conn) {
  auto* self = static_cast<Filesystem::Impl*>(userdata);
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
  (void)self;
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
      Self(req)->Forget(ino, n);
      fuse_reply_none(req);
    };
    o.forget_multi = [](fuse_req_t req, size_t count, fuse_forget_data* f) {
      for (size_t i = 0; i < count; ++i) Self(req)->Forget(f[i].ino, f[i].nlookup);
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
      fuse_reply_err(req, EPERM);  // hard links: no
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
      delete reinterpret_cast<Handle*>(fi->fh);
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
    : impl_(std::make_unique<Impl>(engine, config)) {}

Filesystem::~Filesystem() { Stop(); }

void Filesystem::Start(fuse_session* session) {
  Impl* s = impl_.get();
  s->session = session;
  s->engine->SetChangeListener([s](const ChangeEvent& ev) { s->OnChange(ev); });
  s->notifier = std::thread([s] { s->NotifierLoop(); });
  s->workers.Start(s->config.workers);
}

void Filesystem::Stop() {
  Impl* s = impl_.get();
  if (s == nullptr) return;
  s->workers.Stop();
  {
    std::lock_guard<std::mutex> l(s->inval_mu);
    s->inval_stop = true;  // the kernel is gone: queued replies are sent, nothing invalidated
  }
  s->inval_cv.notify_all();
  if (s->notifier.joinable()) s->notifier.join();
}

}  // namespace keyfs::fs
