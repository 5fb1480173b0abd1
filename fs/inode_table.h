// InodeTable: the FUSE nodeids the kernel knows, and the key each one stands for.
//
// The model (SPEC §3): every committed version of a file or symlink gets its own nodeid,
// so the kernel's page cache of one version is never reused for another; a key keeps one
// st_ino across versions. A directory has one node per key (its children change, it does
// not). Nodes live while the kernel holds lookups on them (or handles are open), so old
// readers keep their own immutable version.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "keyfs/base/mutex.h"
#include "keyfs/store/engine.h"

namespace keyfs::fs {

// Reserved nodeids (FUSE_ROOT_ID is 1).
constexpr uint64_t kRootId = 1;
constexpr uint64_t kControlDirId = 2;  // MOUNT/.keyfs
constexpr uint64_t kStatsFileId = 3;   // MOUNT/.keyfs/stats
constexpr uint64_t kSyncFileId = 4;    // MOUNT/.keyfs/sync
constexpr uint64_t kFirstDynamicId = 16;
constexpr std::string_view kControlDirName = ".keyfs";

struct Node {
  uint64_t id = 0;
  std::string key;  // "" for the root; follows renames made through this mount
  uint64_t ino = 0;
  EntryType type = EntryType::kFile;
  uint64_t version = 0;  // files and symlinks: the version this node shows
  Record rec;            // files and symlinks: that version, pinned; dirs: last seen meta
  uint64_t nlookup = 0;
  uint32_t open_handles = 0;    // handles of any kind (the node must outlive them)
  uint32_t cached_readers = 0;  // open handles reading through the page cache
  uint32_t writers = 0;         // open write handles
  bool tainted = false;         // a writer node (from birth, or since a writer opened it
                                // while no reader had it open), for good: writers write
                                // through it and the kernel may grow its i_size, so no
                                // reader opens it through the page cache (a reader that
                                // finds one is sent to a clean node, ESTALE)
  bool unlinked = false;        // removed through this mount: pending writes are dropped
};

// The st_ino of `key`: a 64-bit hash of the key, so it is stable across versions, remounts
// and daemons without a table that grows with every key ever listed (a `find` over 10M
// keys). Never one of the reserved ids. Two keys share one only with probability ~n^2/2^65.
uint64_t KeyIno(std::string_view key);

// The record a node keeps: small values copied (so nodes the kernel keeps for long do not
// pin whole store tables), large ones pinned in place.
Record CompactRecord(const Record& rec);

// A rename through this mount commits, then moves the keys of the nodes below it
// (InodeTable::Renamed). A request that reads a node's key and then acts on the store by
// that key must not straddle the two: it would act on the old name (a write commit gets
// ENOENT, or lands in the other directory of an exchange; a LOOKUP caches a negative or
// wrong entry in the moved directory for the whole entry timeout). The gate keeps them
// apart per key: a rename waits for the requests using a key it covers, and requests for
// such keys wait for the rename (and for a waiting one, so that a steady stream cannot
// starve it). A rename covers the keys at or below its source (and its target, for an
// exchange); for a commit, also those at or below its target, whose nodes it unlinks.
// Requests on other keys never wait, nor do readers' opens (a version that changed under
// one sends it back once, ESTALE, whatever the cause). (A rename and a LOOKUP or READDIR in
// the same directory never overlap: the kernel holds the directory's lock for both.) Never
// entered twice by one thread, never held across a hand-off to another thread.
// Thread-safe; its mutex is a leaf.
class RenameGate {
 public:
  // Waits until no rename covering `key` (a commit's: `commit`) is waiting or under way,
  // then counts `key` as in use. Returns the ticket ExitShared takes.
  uint64_t EnterShared(const std::string& key, bool commit);
  // EnterShared without waiting: 0 if it would have to wait.
  uint64_t TryEnterShared(const std::string& key, bool commit);
  void ExitShared(uint64_t ticket);
  // Waits until no key it covers is in use and no earlier rename above or below `from` or
  // `to` is under way. Returns the ticket ExitRename takes.
  uint64_t EnterRename(const std::string& from, const std::string& to, bool exchange);
  void ExitRename(uint64_t ticket);

 private:
  struct Use {
    std::string key;
    bool commit;
  };
  struct Move {
    std::string from, to;
    bool exchange;
    bool Covers(const Use& u) const;
  };
  bool CoveredLocked(const Use& u) const;

  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_ticket_ = 1;
  std::map<uint64_t, Use> users_;   // ticket -> key in use
  std::map<uint64_t, Move> moves_;  // renames waiting or under way, in arrival order
};

// Thread-safety: every method locks the table's mutex; Node fields are protected by it
// too (callers use WithNode / Locked for multi-field updates). rename_gate() is the
// RenameGate of this table's keys; it comes before the table's mutex in the lock order.
class InodeTable {
 public:
  InodeTable();

  // The node for `key` as `rec` shows it, adding one lookup. For readers: the clean node
  // of that version (one is made if none exists). For a file, to thread `tid` while it
  // holds a writer reservation (ReserveForWriter): a writer node of the key (tainted),
  // whatever version it last showed, now showing `rec`. Returns its id.
  uint64_t Acquire(const std::string& key, const Record& rec, pid_t tid = 0);
  // A fresh writer node for `key`/`rec` (tainted from birth) even if one exists: for a
  // file just created, which no reader can share.
  uint64_t AcquireFresh(const std::string& key, const Record& rec);

  // Thread `tid` tried to open a file for writing through a clean node and was sent back
  // (ESTALE): the VFS retries the open once, looking the path up again with LOOKUP_REVAL
  // from the same thread, and that lookup must answer a writer node. A reservation is the
  // thread's, not a key's: the path may name another key by then (a rename through this
  // mount moved the file or its directory, or exchanged it), and a thread has one open
  // under way at a time. Reservations not used within a second (the open was abandoned)
  // are dropped.
  void ReserveForWriter(pid_t tid);
  // The writer's retried open succeeded (or the thread did something else, or its retry
  // found nothing): its reservation is used up.
  void WriterOpened(pid_t tid);
  // Whether thread `tid` holds a live reservation (its open is a retry).
  bool HasWriterReservation(pid_t tid);
  // A reader on thread `tid` was sent back (ESTALE) from a node that is not the newest
  // version: its retry takes whichever clean node its lookup answered, even if a commit
  // superseded that one meanwhile (TakeReaderRetry says so once), so that a reader is never
  // sent back twice. Per thread, as reservations are.
  void MarkReaderRetry(pid_t tid);
  bool TakeReaderRetry(pid_t tid);

  // Drops `n` lookups; erases the node at zero lookups and no open handles.
  // Aborts if the count would go negative (a kernel/daemon accounting bug).
  void Forget(uint64_t id, uint64_t n);

  // Runs fn(node) under the lock; returns false if the node is unknown.
  template <class Fn>
  bool WithNode(uint64_t id, Fn&& fn) {
    MutexLock l(&mu_);
    Node* n = FindLocked(id);
    if (n == nullptr) return false;
    fn(*n);
    return true;
  }

  // Copy of a node's key and type; false if unknown.
  bool KeyOf(uint64_t id, std::string* key, EntryType* type = nullptr);

  // After a rename through this mount: nodes of `from` and below now stand for `to`
  // (and with exchange, the reverse).
  void Renamed(const std::string& from, const std::string& to, bool exchange);
  // After an unlink/rmdir through this mount.
  void Unlinked(const std::string& key);

  // The nodeid of the directory node for `key`, if the kernel knows it (0 otherwise).
  uint64_t DirId(const std::string& key);

  // Handle accounting; the node is kept while handles are open.
  void CloseHandle(uint64_t id, bool cached_reader, bool writer);

  size_t size();

  RenameGate& rename_gate() { return rename_gate_; }

 private:
  Node* FindLocked(uint64_t id) REQUIRES(mu_);
  bool LiveReservationLocked(pid_t tid) REQUIRES(mu_);
  Node* NewNodeLocked(const std::string& key, const Record& rec) REQUIRES(mu_);
  void MaybeEraseLocked(Node* n) REQUIRES(mu_);

  Mutex mu_;  // guards the members below and every Node's fields
  uint64_t next_id_ GUARDED_BY(mu_) = kFirstDynamicId;
  std::unordered_map<uint64_t, std::unique_ptr<Node>> nodes_ GUARDED_BY(mu_);
  // Nodes showing each key.
  std::unordered_map<std::string, std::vector<Node*>> by_key_ GUARDED_BY(mu_);
  // Writer reservations and reader retries: thread -> when it was made.
  using Retries = std::map<pid_t, std::chrono::steady_clock::time_point>;
  Retries writer_pending_ GUARDED_BY(mu_);
  Retries reader_retry_ GUARDED_BY(mu_);
  RenameGate rename_gate_;
};

// Holds `table`'s RenameGate for the key of node `id` while it lives (`commit`: for a
// commit by that key): that key (and those below it) stays what the store says. (Nothing
// is held for an unknown node.) With `wait` false it gives up instead of waiting for a
// rename: held() says whether it holds. The loop thread never waits (every request would
// wait behind it): it hands a request that would to a worker.
class KeysInUse {
 public:
  KeysInUse(InodeTable* table, uint64_t id, bool wait = true, bool commit = false);
  ~KeysInUse() {
    if (ticket_ != 0) gate_->ExitShared(ticket_);
  }
  KeysInUse(const KeysInUse&) = delete;
  KeysInUse& operator=(const KeysInUse&) = delete;
  bool held() const { return held_; }

 private:
  RenameGate* gate_;
  uint64_t ticket_ = 0;
  bool held_ = true;
};

}  // namespace keyfs::fs
