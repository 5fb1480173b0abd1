// The invalidator: drops what the kernel caches (dentries, attributes, listings) when a
// commit changes it, on a thread of its own.
//
// Why a thread: fuse_lowlevel_notify_inval_entry takes the parent directory's lock in the
// kernel. A request holding that lock (CREATE, RENAME, a LOOKUP) may be waiting for a worker
// or for the loop thread, so neither may ever wait for an invalidation (FUSE-NOTES: it
// deadlocked inside FLUSH). Requests whose reply must follow the invalidation (FLUSH and
// fsync: close() returns once new opens see the new value) hand the reply to this thread.
#pragma once

#include <fuse_lowlevel.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>

#include "inode_table.h"
#include "keyfs/base/mutex.h"
#include "keyfs/store/engine.h"

namespace keyfs::fs {

// Thread-safety: every method may be called from any thread.
// Lock order: mu_ is a leaf (InodeTable calls happen before it is taken).
class Invalidator {
 public:
  Invalidator(InodeTable* table, const Engine* engine) : table_(table), engine_(engine) {}
  ~Invalidator() { Stop(); }

  // Starts the notifier thread for `session`.
  void Start(fuse_session* session);
  // Answers what is queued without invalidating (the kernel is gone) and joins the thread.
  void Stop();

  // Drops the dentry of `key` (if the kernel knows its directory), then answers `req` with
  // `err`. With nothing to invalidate (an empty key, an unknown directory) the answer is
  // sent at once. REQUIRES: `req`'s caller holds no directory lock when a key is given
  // (FLUSH and fsync of a file: the kernel holds none there).
  void InvalidateKeyThenReply(fuse_req_t req, const std::string& key, int err);
  // Drops the dentry of `key`, if the kernel knows its directory, later.
  void InvalidateKey(const std::string& key);
  // Drops the dentry `name` of directory node `parent`, later.
  void InvalidateEntry(uint64_t parent, std::string name);
  // Drops the attributes and cached pages (a directory: its listing) of node `id`, later.
  void InvalidateNode(uint64_t id);
  // Drops the attributes and cached pages of node `id`, then calls `then` (which answers
  // the request waiting for it). REQUIRES: no reply `then` sends is needed to release a
  // page of `id` (a LOOKUP is fine: the kernel holds no page while it waits for one).
  void InvalidateNodeThen(uint64_t id, std::function<void()> then);

  // The engine's change listener: a commit made elsewhere (another mount, keyfsctl, a
  // dets sync seen by a -o ro mount) changed `ev.changed`; drops everything the kernel may
  // cache about them: each key's dentry (a directory that is still one keeps its dentry,
  // so processes inside it and mounts on it stay put, and loses only its attributes and
  // listing), and the listing of every parent. Our own commits are left alone: the
  // request handlers and the kernel itself invalidate what they change.
  void OnChange(const ChangeEvent& ev);

 private:
  struct Item {
    uint64_t node = 0;           // 0: nothing to invalidate
    std::string name;            // empty: the node's attributes and pages; else its dentry `name`
    std::function<void()> then;  // called once the invalidation is done (answers a request)
  };
  void Push(Item item);
  void Run();

  InodeTable* const table_;
  const Engine* const engine_;
  fuse_session* session_ = nullptr;  // set by Start, before the thread
  Mutex mu_;
  CondVar cv_;
  std::deque<Item> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace keyfs::fs
