// The dets engine: a DetsPlus-style hash file (FORMAT.md §3) under an in-memory write
// buffer. Commits go into the buffer and are visible at once; a sync merges the buffer into
// a new file in one streaming pass and renames it over the store.
//
// Served state (readers see it through mu_):
//   active  the write buffer commits go to (puts and tombstones), newest;
//   frozen  buffers being synced (normally zero or one; more only after failed syncs),
//           immutable, oldest first;
//   file    the last published store file (DetsFile, mapped).
// A lookup asks active, then frozen newest to oldest, then the file: the bloom filter (in
// memory) answers most misses; a thread whose recent lookups mostly hit skips the filter
// and goes straight to the hash table (one cache miss less per hit). The first layer that
// knows the key answers (a tombstone answers "absent"). Commits read the file with pread,
// never through the mapping, so writing into a file far larger than memory does not grow
// the process's resident mapping.
//
// Sync state machine (one sync at a time, on the syncer thread):
//
//   IDLE --(timer / Sync() / buffer over its limit / close)--> FREEZING
//   FREEZING   Under mu_ (exclusive, microseconds): the active buffer becomes the newest
//              frozen buffer and an empty one takes its place; committers and readers go
//              on at once. Durable: the old file only. (The active buffer is not frozen
//              while a backlog of failed syncs already holds a full buffer's worth, so
//              memory stays bounded; the sync then runs twice, see PUBLISHED.)
//   MERGING    Without locks: the old file (read with pread through a fixed window, every
//              4 KiB chunk verified) and the frozen buffers (sorted by (hash, key) here and
//              by key on a helper thread) are merged into STORE.tmp-<pid>-<n> (O_EXCL) in
//              one sequential write, appended by a second helper thread so copying into the
//              page cache overlaps the merge, writeback started every 64 MiB; then
//              fdatasync. Buckets and key index blocks no buffered key falls into are
//              copied unchanged. Durable: the old file only; the temp is garbage until
//              renamed.
//   RENAMING   rename(temp, STORE), then fsync of the directory. Durable: the old file
//              until the directory fsync returns, the new one after; a crash in between
//              leaves one of the two complete files under STORE.
//   PUBLISHED  Under mu_: the new file replaces the old one for readers and the merged
//              frozen buffers are dropped. Every commit made before FREEZING is durable;
//              Sync() callers waiting for it are released. Then, still on the syncer, the
//              old file is released (unmapping it frees its blocks, which with online
//              discard costs ~0.5 s per 300 MB: no caller waits for that; Stats().syncing
//              stays true until it is done). -> IDLE, or FREEZING again within the same
//              attempt if the backlog rule left a waiting Sync() caller's commits in the
//              active buffer.
//
//   ERROR      Any failure (ENOSPC, EIO, a damaged old file) in MERGING or RENAMING before
//              the rename: the temp file is removed; STORE, the served file and the frozen
//              buffers are untouched, so every commit stays visible and is merged by the
//              next sync; the Sync() callers get the error. A failed fdatasync is never
//              retried on the same file (its dirty pages may be gone): the next sync writes
//              a new temp from scratch. If the rename succeeded but the directory fsync
//              failed (twice), the new file is published (STORE names it) and the
//              durability is still owed: the next sync fsyncs the directory first. -> IDLE;
//              the timer or the next Sync() retries.
//
// Durability is tracked by counting commits: a frozen buffer records how many commits had
// been applied when it was frozen; publishing it makes that many durable. Sync() waits for
// an attempt that starts after it is called and returns OK iff every commit applied before
// the call is durable.
//
// Back-pressure: a commit that finds the active buffer over its limit asks for a sync and
// waits until the buffer is frozen (writers are never dropped). If a sync attempt that began
// after it asked fails and the buffer is still over the limit, the commit fails with that
// error rather than growing memory without bound.
//
// Closing (the destructor) runs a last sync; its error cannot be returned, so callers that
// care call Sync() first.
//
// Lock order: commit_mu_ -> sync_mu_, commit_mu_ -> mu_, refresh_mu_ -> mu_, and
// listener_mu_ after commit_mu_ or refresh_mu_; sync_mu_ and mu_ are never held together.
// Readers take only mu_ (shared); the syncer takes sync_mu_ and mu_ one at a time, never
// while merging.
#include "dets_engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <new>
#include <set>
#include <thread>

#include "dets_buffer.h"
#include "dets_file.h"
#include "dets_merge.h"
#include "failpoint.h"
#include "file_util.h"
#include "format.h"
#include "hazard_slots.h"
#include "keyfs/base/mutex.h"
#include "tree.h"
#include "publish.h"
#include "store_watcher.h"

namespace keyfs {
namespace {

using BufRecord = WriteBuffer::Record;
using Node = WriteBuffer::Node;
using BufferRef = std::shared_ptr<const WriteBuffer>;

constexpr uint64_t kDefaultBufferLimit = uint64_t{512} << 20;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

std::string ChildPrefix(std::string_view dir) {
  std::string p(dir);
  if (!p.empty()) p += '/';
  return p;
}

// Which way this thread's recent file lookups went: with mostly hits the bloom filter is
// skipped (it would be one more cache miss per hit), with misses it answers them alone.
struct LookupStats {
  uint32_t lookups = 0, hits = 0;
  bool use_bloom = true;
  void Count(bool hit) {
    ++lookups;
    hits += hit;
    if (lookups == 64) {
      use_bloom = hits < 48;  // more than a quarter misses: the filter pays for itself
      lookups = hits = 0;
    }
  }
};
thread_local LookupStats tl_lookup_stats;

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

// The dets engine's MutableTree: a batch applied straight to the active buffer, with an
// undo log. REQUIRES: mu_ held exclusively for the tree's lifetime.
class BufferTree final : public MutableTree {
 public:
  BufferTree(WriteBuffer* active, const Layers& layers, bool collect_changed)
      : active_(active), layers_(layers), collect_changed_(collect_changed) {}

  // The hash of the key of the mutation about to be applied, computed by the caller already
  // (a key is recognised by its address, so views of other strings are hashed anew).
  void SetHashHint(std::string_view key, uint64_t hash) {
    hint_key_ = key;
    hint_hash_ = hash;
  }

  Status Lookup(std::string_view key, TreeValue* out) const override {
    if (key.empty()) return layers_.Root(out);
    // ApplyMutation looks a key up and then usually sets it: remember what was found where,
    // so Set needs neither a second probe of the buffer nor a second look below it.
    const uint64_t h = Hash(key);
    last_.key.assign(key);
    last_.hash = h;
    last_.probe = active_->ProbeKey(key, h);
    last_.valid = true;
    if (last_.probe.node != nullptr && last_.probe.node->record != nullptr) {
      last_.below_known = false;
      const BufRecord* r = last_.probe.node->record;
      if (r->tombstone) return Status::NotFound();
      *out = TreeValue{r->meta(), r->version, r->value_view()};
      return Status::OK();
    }
    Status s = LookupBelow(key, h, &last_.below);
    last_.below_known = s.ok() || s.IsNotFound();
    last_.below_found = s.ok();
    if (s.ok()) *out = last_.below;
    return s;
  }

  StatusOr<bool> HasChildren(std::string_view dir) const override {
    // A live child in some buffer...
    for (const WriteBuffer* l : BufferLayers()) {
      for (const Node* n : l->SortedChildren(dir)) {
        if (n->record == nullptr) continue;
        const BufRecord* top = layers_.Buffered(n->key(), n->hash);
        if (top != nullptr && !top->tombstone) return true;
      }
    }
    // ...or a key below it in the file that no buffer deleted. (A deleted key's own subtree
    // is deleted too, so the scan jumps over it.)
    const std::string prefix = ChildPrefix(dir);
    DetsFile::KeyCursor c(layers_.file);
    KEYFS_RETURN_IF_ERROR(c.Seek(prefix));
    while (c.Valid() && StartsWith(c.key(), prefix)) {
      if (layers_.FileKeyLive(c.key())) return true;
      std::string next(c.key());
      next += '0';  // the byte after '/'
      KEYFS_RETURN_IF_ERROR(c.Seek(next));
    }
    return false;
  }

  Status CollectSubtree(std::string_view key,
                        std::vector<std::pair<std::string, TreeValue>>* out) const override {
    TreeValue root;
    KEYFS_RETURN_IF_ERROR(Lookup(key, &root));
    out->emplace_back(std::string(key), root);
    if (root.meta.type != EntryType::kDir) return Status::OK();
    // Candidates: every key below `key` in the file or in any buffer (whatever its state);
    // a buffer lists a key under its parent, which may live in another layer, so every
    // candidate is expanded in every buffer.
    std::set<std::string, std::less<>> cands;
    std::vector<std::string> todo{std::string(key)};
    const std::string prefix = ChildPrefix(key);
    DetsFile::KeyCursor c(layers_.file);
    KEYFS_RETURN_IF_ERROR(c.Seek(prefix));
    while (c.Valid() && StartsWith(c.key(), prefix)) {
      if (cands.emplace(c.key()).second) todo.emplace_back(c.key());
      KEYFS_RETURN_IF_ERROR(c.Next());
    }
    const auto layers = BufferLayers();
    while (!todo.empty()) {
      const std::string k = std::move(todo.back());
      todo.pop_back();
      for (const WriteBuffer* l : layers) {
        for (const Node* n : l->SortedChildren(k)) {
          if (cands.emplace(n->key()).second) todo.emplace_back(n->key());
        }
      }
    }
    for (const std::string& k : cands) {
      TreeValue v;
      Status s = LookupMerged(k, &v);
      if (s.IsNotFound()) continue;
      KEYFS_RETURN_IF_ERROR(s);
      out->emplace_back(k, v);
    }
    return Status::OK();
  }

  void Set(std::string_view key, std::optional<TreeValue> v) override {
    if (key.empty()) {  // the root: never deleted
      if (!v) return;
      const BufRecord* cur = active_->root();
      if (cur != nullptr && cur->version == v->version) {
        WriteBuffer::Rewrite(cur, v->meta, v->version);  // made by this batch
      } else {
        undo_.emplace_back(nullptr, cur);
        active_->SetRoot(active_->NewRecord(true, v->meta, v->version, {}));
      }
      if (collect_changed_) changed_.emplace_back();
      return;
    }
    const uint64_t h = Hash(key);
    const bool cached = last_.valid && last_.hash == h && last_.key == key;
    Node* node = active_->AddAt(cached ? last_.probe : active_->ProbeKey(key, h), key, h);
    // The merged state before, for the exact totals.
    bool was_live = false;
    EntryType was_type = EntryType::kFile;
    uint64_t was_size = 0;
    if (const BufRecord* r = node->record) {
      was_live = !r->tombstone;
      was_type = r->type;
      was_size = r->value_len;
    } else {
      TreeValue below;
      bool found;
      if (cached && last_.below_known) {
        found = last_.below_found;
        below = last_.below;
      } else {
        found = LookupBelow(key, h, &below).ok();
      }
      if (found) {
        was_live = true;
        was_type = below.meta.type;
        was_size = below.value.size();
      }
    }
    last_.valid = false;
    const BufRecord* old = node->record;
    if (v && v->meta.type == EntryType::kDir && old != nullptr && !old->tombstone &&
        old->type == EntryType::kDir && old->version == v->version) {
      // A directory this batch already wrote (a commit's version is new to the buffer,
      // and a rolled-back batch's records are unreachable): every put into it touches it,
      // so rewrite its record rather than add one per put.
      WriteBuffer::Rewrite(old, v->meta, v->version);
    } else {
      const BufRecord* rec = v ? active_->NewRecord(true, v->meta, v->version, v->value)
                               : active_->NewRecord(false, Meta(), 0, {});
      undo_.emplace_back(node, old);
      active_->SetRecord(node, rec);
    }
    if (was_live) Count(was_type, was_size, -1);
    if (v) Count(v->meta.type, v->value.size(), +1);
    if (collect_changed_) changed_.emplace_back(key);
  }

  void Rollback() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
      if (it->first == nullptr) {
        active_->SetRoot(it->second);
      } else {
        active_->SetRecord(it->first, it->second);
      }
    }
    undo_.clear();
    delta_ = WriteBuffer::Totals();
    changed_.clear();
  }

  // Adds the batch's totals to the active buffer's.
  void Keep() {
    WriteBuffer::Totals& t = active_->totals();
    t.entries += delta_.entries;
    t.files += delta_.files;
    t.dirs += delta_.dirs;
    t.symlinks += delta_.symlinks;
    t.value_bytes += delta_.value_bytes;
    undo_.clear();
  }

  std::vector<std::string> TakeChanged() {
    std::sort(changed_.begin(), changed_.end());
    changed_.erase(std::unique(changed_.begin(), changed_.end()), changed_.end());
    return std::move(changed_);
  }

 private:
  // The merged entry at `key` (not the root), reading the file like LookupBelow.
  Status LookupMerged(std::string_view key, TreeValue* out) const {
    const uint64_t h = format::HashKey(key);
    if (const BufRecord* r = layers_.Buffered(key, h)) {
      if (r->tombstone) return Status::NotFound();
      *out = TreeValue{r->meta(), r->version, r->value_view()};
      return Status::OK();
    }
    return LookupBelow(key, h, out);
  }

  uint64_t Hash(std::string_view key) const {
    if (key.data() == hint_key_.data() && key.size() == hint_key_.size()) return hint_hash_;
    return format::HashKey(key);
  }

  // The entry below the active buffer: frozen buffers, newest first, then the file.
  Status LookupBelow(std::string_view key, uint64_t h, TreeValue* out) const {
    for (auto it = layers_.frozen->rbegin(); it != layers_.frozen->rend(); ++it) {
      const Node* n = (*it)->Find(key, h);
      if (n != nullptr && n->record != nullptr) {
        if (n->record->tombstone) return Status::NotFound();
        *out = TreeValue{n->record->meta(), n->record->version, n->record->value_view()};
        return Status::OK();
      }
    }
    DetsEntry e;
    scratch_.emplace_back();
    Status s = layers_.file->FindCopy(key, h, &e, &scratch_.back());
    if (!s.ok()) {
      scratch_.pop_back();
      return s;
    }
    *out = TreeValue{e.meta, e.version, e.value};  // valid while the batch is applied
    return Status::OK();
  }

  std::vector<const WriteBuffer*> BufferLayers() const {
    std::vector<const WriteBuffer*> v{active_};
    for (const BufferRef& f : *layers_.frozen) v.push_back(f.get());
    return v;
  }

  void Count(EntryType type, uint64_t size, int64_t sign) {
    delta_.entries += sign;
    delta_.value_bytes += sign * static_cast<int64_t>(size);
    switch (type) {
      case EntryType::kFile:
        delta_.files += sign;
        break;
      case EntryType::kDir:
        delta_.dirs += sign;
        break;
      case EntryType::kSymlink:
        delta_.symlinks += sign;
        break;
    }
  }

  WriteBuffer* active_;
  const Layers& layers_;
  const bool collect_changed_;
  std::vector<std::pair<Node*, const BufRecord*>> undo_;  // node nullptr: the root
  WriteBuffer::Totals delta_;
  // The last Lookup (see there).
  struct LastLookup {
    bool valid = false;
    std::string key;
    uint64_t hash = 0;
    WriteBuffer::Probe probe{};
    bool below_known = false, below_found = false;
    TreeValue below;
  };
  mutable LastLookup last_;
  std::string_view hint_key_;
  uint64_t hint_hash_ = 0;
  // Copies of file entries read during the batch (TreeValue views point into them).
  mutable std::deque<std::string> scratch_;
  std::vector<std::string> changed_;
};

class DetsEngineImpl final : public Engine {
 public:
  DetsEngineImpl(std::string path, const OpenOptions& o)
      : path_(std::move(path)),
        dir_(DirName(path_)),
        lock_path_(path_ + ".lock"),
        env_(o.env ? o.env : Env::Default()),
        read_only_(o.read_only),
        interval_s_(o.sync_interval_s),
        limit_(o.buffer_limit_bytes ? o.buffer_limit_bytes : kDefaultBufferLimit),
        active_(std::make_shared<WriteBuffer>()) {}

  ~DetsEngineImpl() override {
    {
      MutexLock l(&sync_mu_);
      stopping_ = true;
    }
    sync_cv_.NotifyAll();
    done_cv_.NotifyAll();
    if (syncer_.joinable()) syncer_.join();  // the syncer's last act is a final sync
    watcher_.reset();
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  Status Init(bool watch) {
    if (!read_only_) KEYFS_RETURN_IF_ERROR(TakeWriterLock());
    auto f = DetsFile::Open(path_);
    if (!f.ok()) return f.status();
    version_.store((*f)->last_version());
    {
      WriterMutexLock l(&mu_);  // no other thread yet: for the analysis' sake
      file_ = *f;
      last_commit_ns_ = file_->sync_time_ns();
      PublishQuietLocked();
    }
    if (!read_only_) {
      RemoveStaleTemps();
      KEYFS_RETURN_IF_ERROR(UpgradeIfOld());
      syncer_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "dets-sync");
        SyncerLoop();
      });
    }
    if (watch && read_only_) {
      // A writer is the only one writing its store; readers follow its syncs.
      auto w = StoreWatcher::Start(path_, [this](bool changed) {
        if (changed) (void)RefreshFile(/*notify=*/true);
      });
      if (!w.ok()) return w.status();
      watcher_ = std::move(*w);
    }
    return Status::OK();
  }

  std::string_view name() const override { return "dets"; }

  StatusOr<keyfs::Record> Get(std::string_view key) const override { return Find(key, true); }
  StatusOr<keyfs::Record> GetInDirectory(std::string_view key) const override {
    return Find(key, false);
  }

  // Get; with `why_missing`, a miss below the top level looks at the ancestors to tell
  // NotDirectory from NotFound.
  StatusOr<keyfs::Record> Find(std::string_view key, bool why_missing) const {
    KEYFS_RETURN_IF_ERROR(ValidateKey(key, /*allow_root=*/true));
    if (key.empty()) {  // the root: its metadata is in the file's header or a buffer
      ReaderMutexLock l(&mu_);
      TreeValue v;
      KEYFS_RETURN_IF_ERROR(LayersLocked().Root(&v));
      return keyfs::Record{v.meta, v.version, {}, nullptr};
    }
    const uint64_t h = format::HashKey(key);
    // Lock-free: with nothing buffered the file is the whole state, and its bloom filter
    // answers most misses. A possible hit, or a miss that must look at the ancestors, goes
    // the locked way below.
    bool bloom_passed = false;
    if (tl_lookup_stats.use_bloom) {
      if (const DetsFile* quiet = quiet_file_.load(std::memory_order_seq_cst)) {
        HazardSlots<DetsFile>::Guard g;
        hazards_.Protect(quiet_file_, quiet, &g);
        if (g) {
          Status s = quiet->MayContain(h);
          if (s.IsNotFound() && (!why_missing || key.find('/') == std::string_view::npos)) {
            tl_lookup_stats.Count(false);
            return s;
          }
          if (!s.ok() && !s.IsNotFound()) return s;
          bloom_passed = s.ok();
        }
      }
    }
    DetsFileRef file;
    {
      ReaderMutexLock l(&mu_);
      const Layers layers = LayersLocked();
      const WriteBuffer* layer = nullptr;
      if (const BufRecord* r = layers.Buffered(key, h, &layer)) {
        if (r->tombstone) return why_missing ? layers.MissingReason(key) : Status::NotFound();
        return keyfs::Record{r->meta(), r->version, r->value_view(), PinOf(layer)};
      }
      // Misses usually end at the bloom filter, here, without touching the file's reference
      // count; a possible hit pins the file and reads its hash table outside the lock.
      // The bloom filter costs one more memory access on every hit, so a thread whose recent
      // lookups mostly hit goes straight to the hash table (which answers misses too).
      // (A filter that passed the key above need not be asked again: the hash table
      // answers misses too, whichever file is served now.)
      if (tl_lookup_stats.use_bloom && !bloom_passed) {
        Status s = file_->MayContain(h);
        if (s.IsNotFound()) {
          tl_lookup_stats.Count(false);
          if (!why_missing || key.find('/') == std::string_view::npos) return s;
          return layers.MissingReason(key);
        }
        if (!s.ok()) return s;
      }
      file = file_;
    }
    DetsEntry e;
    Status s = file->FindInTable(key, h, &e);
    tl_lookup_stats.Count(s.ok());
    if (s.ok()) {
      if (file->legacy()) [[unlikely]]
        KEYFS_RETURN_IF_ERROR(FillLegacy(*file, &e.meta, key));
      return keyfs::Record{e.meta, e.version, e.value, std::move(file)};
    }
    if (!s.IsNotFound()) return s;
    if (!why_missing || key.find('/') == std::string_view::npos) return s;
    ReaderMutexLock l(&mu_);
    return LayersLocked().MissingReason(key);
  }

  Status List(std::string_view dir, std::string_view start_after, const ListFn& fn) const override {
    KEYFS_RETURN_IF_ERROR(ValidateKey(dir, /*allow_root=*/true));
    // The whole listing comes from one state: mu_ is held (shared) throughout, so `fn` may
    // call Get or List (glibc's rwlock prefers readers) but must not call Commit.
    ReaderMutexLock l(&mu_);
    const Layers layers = LayersLocked();
    if (!dir.empty()) {
      TreeValue v;
      Status s = layers.Lookup(dir, &v);
      if (s.IsNotFound()) return layers.MissingReason(dir);
      if (!s.ok()) return s;
      if (v.meta.type != EntryType::kDir) return Status::NotDirectory();
    }
    const std::string prefix = ChildPrefix(dir);
    std::string after;
    if (!start_after.empty()) after = prefix + std::string(start_after);

    // Sources: each buffer's sorted children, and the file's key index.
    struct Run {
      std::span<const Node* const> nodes;
      size_t i = 0;
    };
    std::vector<Run> runs;
    auto add_run = [&](const WriteBuffer* b) {
      Run r{b->SortedChildren(dir)};
      if (!after.empty()) {
        r.i = static_cast<size_t>(
            std::upper_bound(r.nodes.begin(), r.nodes.end(), std::string_view(after),
                             [](std::string_view k, const Node* n) { return k < n->key(); }) -
            r.nodes.begin());
      }
      runs.push_back(r);
    };
    add_run(layers.active);
    for (const BufferRef& f : *layers.frozen) add_run(f.get());
    DetsFile::KeyCursor c(layers.file);
    std::string seek = after.empty() ? prefix : after + '\0';
    KEYFS_RETURN_IF_ERROR(c.Seek(seek));
    // Moves the cursor to the next immediate child of `dir` (or past the prefix).
    auto settle = [&]() -> Status {
      while (c.Valid() && StartsWith(c.key(), prefix)) {
        std::string_view rest = c.key().substr(prefix.size());
        size_t slash = rest.find('/');
        if (slash == std::string_view::npos) return Status::OK();
        std::string skip = prefix;
        skip.append(rest.substr(0, slash));
        skip += '0';  // the byte after '/'
        KEYFS_RETURN_IF_ERROR(c.Seek(skip));
      }
      return Status::OK();
    };
    KEYFS_RETURN_IF_ERROR(settle());
    std::string key;
    while (true) {
      // The smallest next key among the sources.
      bool have = false;
      for (Run& r : runs) {
        while (r.i < r.nodes.size() && r.nodes[r.i]->record == nullptr) ++r.i;
        if (r.i < r.nodes.size()) {
          std::string_view k = r.nodes[r.i]->key();
          if (!have || k < key) key.assign(k);
          have = true;
        }
      }
      const bool file_has = c.Valid() && StartsWith(c.key(), prefix);
      if (file_has && (!have || c.key() < key)) key.assign(c.key());
      if (!have && !file_has) break;
      // Advance every source past it.
      bool from_file = false;
      for (Run& r : runs) {
        if (r.i < r.nodes.size() && r.nodes[r.i]->key() == key) ++r.i;
      }
      if (file_has && c.key() == key) {
        from_file = true;
        KEYFS_RETURN_IF_ERROR(c.Next());
        KEYFS_RETURN_IF_ERROR(settle());
      }
      const uint64_t h = format::HashKey(key);
      DirEntry d;
      d.name = std::string_view(key).substr(prefix.size());
      if (const BufRecord* r = layers.Buffered(key, h)) {
        if (r->tombstone) continue;
        d.meta = r->meta();
        d.size = r->value_len;
        d.version = r->version;
      } else {
        if (!from_file) continue;
        DetsEntry e;
        Status s = layers.file->Find(key, h, &e);
        if (s.IsNotFound()) {
          return Status::Corruption(path_ + ": key index lists '" + key +
                                    "' but the hash table does not find it");
        }
        KEYFS_RETURN_IF_ERROR(s);
        if (layers.file->legacy()) KEYFS_RETURN_IF_ERROR(FillLegacy(*layers.file, &e.meta, key));
        d.meta = e.meta;
        d.size = e.value.size();
        d.version = e.version;
      }
      if (!fn(d)) break;
    }
    return Status::OK();
  }

  Status Commit(const Batch& batch) override {
    if (read_only_) return Status::ReadOnly("store opened read-only");
    if (batch.empty()) return Status::OK();
    MutexLock cl(&commit_mu_);
    KEYFS_RETURN_IF_ERROR(WaitForRoom());
    const int64_t start = MonoNs();
    const uint64_t version = version_.load(std::memory_order_relaxed) + 1;
    bool listening;
    {
      MutexLock l(&listener_mu_);
      listening = static_cast<bool>(listener_);
    }
    std::vector<std::string> changed;
    Status s;
    const int64_t now = NowNs();
    {
      WriterMutexLock l(&mu_);
      quiet_file_.store(nullptr, std::memory_order_seq_cst);  // before the buffer changes
      const Layers layers = LayersLocked();
      BufferTree tree(active_.get(), layers, listening);
      try {
        // The buffer's hash slots are cache misses: ask for a few mutations ahead.
        const auto& ms = batch.mutations();
        constexpr size_t kAhead = 8;
        uint64_t hashes[kAhead];
        for (size_t i = 0; i < std::min(kAhead, ms.size()); ++i) {
          hashes[i] = format::HashKey(ms[i].key);
          active_->PrefetchSlot(hashes[i]);
        }
        for (size_t i = 0; i < ms.size(); ++i) {
          tree.SetHashHint(ms[i].key, hashes[i % kAhead]);
          if (i + kAhead < ms.size()) {
            hashes[i % kAhead] = format::HashKey(ms[i + kAhead].key);
            active_->PrefetchSlot(hashes[i % kAhead]);
          }
          s = ApplyMutation(tree, ms[i], version, now);
          if (!s.ok()) break;
        }
      } catch (const std::bad_alloc&) {
        s = Status::IOError("out of memory applying a batch");
      }
      if (!s.ok()) {
        tree.Rollback();
      } else {
        tree.Keep();
        if (listening) changed = tree.TakeChanged();
        version_.store(version, std::memory_order_relaxed);
        ++commits_applied_;
        last_commit_ns_ = std::max(last_commit_ns_, now);
      }
      active_bytes_.store(active_->bytes(), std::memory_order_relaxed);
      PublishQuietLocked();  // a rolled-back batch may have left the buffer empty
    }
    if (!s.ok()) {
      if (s.code() == Status::Code::kIOError) commit_errors_.fetch_add(1);
      return s;
    }
    commits_.fetch_add(1, std::memory_order_relaxed);
    last_commit_duration_ns_.store(MonoNs() - start, std::memory_order_relaxed);
    if (active_bytes_.load(std::memory_order_relaxed) >= limit_) {
      MutexLock l(&sync_mu_);
      limit_hit_ = true;
      sync_cv_.NotifyAll();
    }
    if (listening) {
      ChangeEvent ev;
      ev.old_generation = version - 1;
      ev.new_generation = version;
      ev.changed = std::move(changed);
      MutexLock l(&listener_mu_);
      if (listener_) listener_(ev);
    }
    return Status::OK();
  }

  Status Sync() override {
    if (read_only_) return Status::OK();
    MutexLock l(&sync_mu_);
    const uint64_t target = CommitsApplied();
    if (durable_commits_ >= target && !dir_sync_owed_) return Status::OK();
    if (stopping_) return Status::IOError("engine is shutting down");
    const uint64_t attempt = started_ + 1;  // the next attempt covers every commit so far
    requested_ = std::max(requested_, attempt);
    sync_cv_.NotifyAll();
    done_cv_.Wait(&sync_mu_, [&]() REQUIRES(sync_mu_) { return finished_ >= attempt; });
    if (durable_commits_ >= target && !dir_sync_owed_) return Status::OK();
    return last_error_.ok() ? Status::IOError("sync did not complete") : last_error_;
  }

  Status Refresh() override {
    if (!read_only_) return Status::OK();  // the only writer: nobody else changes STORE
    return RefreshFile(/*notify=*/true);
  }

  EngineStats Stats() const override {
    EngineStats s;
    s.engine = "dets";
    DetsFileRef file;
    WriteBuffer::Totals t;
    uint64_t buffered = 0, buffered_bytes = 0, frozen_layers = 0;
    {
      ReaderMutexLock l(&mu_);
      file = file_;
      auto add = [&](const WriteBuffer& b) {
        t.entries += b.totals().entries;
        t.files += b.totals().files;
        t.dirs += b.totals().dirs;
        t.symlinks += b.totals().symlinks;
        t.value_bytes += b.totals().value_bytes;
        buffered += b.nodes();
        buffered_bytes += b.bytes();
      };
      add(*active_);
      for (const BufferRef& f : frozen_) add(*f);
      frozen_layers = frozen_.size();
    }
    s.format_version = file->format_version();
    s.entries = static_cast<uint64_t>(static_cast<int64_t>(file->entry_count()) + t.entries);
    s.files = static_cast<uint64_t>(static_cast<int64_t>(file->files()) + t.files);
    s.dirs = static_cast<uint64_t>(static_cast<int64_t>(file->dirs()) + t.dirs);
    s.symlinks = static_cast<uint64_t>(static_cast<int64_t>(file->symlinks()) + t.symlinks);
    s.value_bytes =
        static_cast<uint64_t>(static_cast<int64_t>(file->value_bytes()) + t.value_bytes);
    s.file_bytes = file->file_size();
    s.generation = file->generation();
    s.commits = commits_.load(std::memory_order_relaxed);
    s.commit_errors = commit_errors_.load(std::memory_order_relaxed);
    s.rebuilds = syncs_.load(std::memory_order_relaxed);
    s.external_reloads = external_reloads_.load(std::memory_order_relaxed);
    {
      ReaderMutexLock l(&mu_);
      s.last_commit_ns = last_commit_ns_;
    }
    s.last_commit_duration_ns = last_commit_duration_ns_.load(std::memory_order_relaxed);
    s.buffered_writes = buffered;
    s.syncs = syncs_.load(std::memory_order_relaxed);
    s.sync_errors = sync_errors_.load(std::memory_order_relaxed);
    s.bloom_fp_estimate = file->bloom_fp_estimate();
    Status last_error;
    int64_t last_sync_ns;
    {
      MutexLock l(&sync_mu_);
      s.syncing = syncing_;
      last_error = last_error_;
      last_sync_ns = last_sync_duration_ns_;
      s.last_sync_ns = last_sync_end_ns_;
      s.last_sync_duration_ns = last_sync_duration_ns_;
    }
    if (s.last_sync_ns == 0) s.last_sync_ns = file->mtime_ns();  // none by this object yet
    auto& x = s.extra;
    x.emplace_back("entries in file", std::to_string(file->entry_count()));
    x.emplace_back("file size", std::to_string(file->file_size()));
    x.emplace_back("hash tables", "256, " + std::to_string(file->hash_slots()) + " slots");
    uint32_t min_bits = 64, max_bits = 0;
    for (uint32_t i = 0; i < format::kDetsBuckets; ++i) {
      if (file->bucket(i).count == 0) continue;
      min_bits = std::min(min_bits, file->bucket(i).slot_bits);
      max_bits = std::max(max_bits, file->bucket(i).slot_bits);
    }
    if (max_bits > 0) {
      x.emplace_back("hash table slot bits",
                     std::to_string(min_bits) + "-" + std::to_string(max_bits));
    }
    x.emplace_back("bloom bits", std::to_string(file->bloom_bits()));
    x.emplace_back("bloom k", std::to_string(file->bloom_k()));
    x.emplace_back("key index", std::to_string(file->key_blocks().size()) + " blocks, " +
                                    std::to_string(file->key_index_bytes()) + " bytes");
    if (!read_only_) {
      x.emplace_back("last sync duration", std::to_string(last_sync_ns / 1000000) + " ms");
      x.emplace_back("sync interval", interval_s_ ? std::to_string(interval_s_) + " s" : "off");
      x.emplace_back("buffer limit", std::to_string(limit_) + " bytes");
      x.emplace_back("buffered keys", std::to_string(buffered));
      x.emplace_back("buffered bytes", std::to_string(buffered_bytes));
      if (frozen_layers > 0) x.emplace_back("buffers being synced", std::to_string(frozen_layers));
      x.emplace_back("syncs", std::to_string(syncs_.load()) + " (" +
                                  std::to_string(sync_errors_.load()) + " failed)");
      if (!last_error.ok()) x.emplace_back("last sync error", last_error.ToString());
    }
    return s;
  }

  void SetChangeListener(ChangeListener listener) override {
    MutexLock l(&listener_mu_);
    listener_ = std::move(listener);
  }

 private:
  // A version-1 file stores no child directory counts: a directory's is counted.
  static Status FillLegacy(const DetsFile& file, Meta* meta, std::string_view key) {
    if (meta->type != EntryType::kDir) return Status::OK();
    auto n = file.CountChildDirs(key);
    if (!n.ok()) return n.status();
    meta->subdirs = *n;
    return Status::OK();
  }

  // A version-1 file opened read-write is rewritten as version 2 before anything else
  // (every entry converted, every directory's child count computed), through the sync's
  // publish path: temp file, fdatasync, rename, directory fsync. Its commit time, and the
  // root's metadata a v1 reader implies, are kept.
  Status UpgradeIfOld() {
    DetsFileRef old;
    {
      ReaderMutexLock l(&mu_);
      old = file_;
    }
    if (!old->legacy()) return Status::OK();
    const std::string tmp =
        path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++temp_counter_);
    auto file = env_->NewExclusiveFile(tmp);
    if (!file.ok()) return file.status();
    WritableFile* f = file->get();
    MergeInput in;
    in.old_file = old.get();
    in.generation = old->generation() + 1;
    in.sync_time_ns = old->sync_time_ns();
    in.last_version = old->last_version();
    auto root = old->RootMeta();
    Status s = root.status();
    if (s.ok()) {
      in.root = *root;
      in.root_version = old->root_version();
      s = WriteMergedFile(in, f, nullptr);
    }
    if (s.ok()) s = f->Sync();
    if (s.ok()) s = env_->Rename(tmp, path_);
    if (!s.ok()) {
      (void)f->Close();
      (void)env_->RemoveFile(tmp);
      return s.WithContext("upgrade " + path_ + " to format version 2");
    }
    int fd = ::dup(f->fd());
    Status sync_dir = env_->SyncDir(dir_);
    (void)f->Close();
    if (fd < 0) return Status::FromErrno(errno, "dup");
    auto opened = DetsFile::OpenFd(fd, path_);
    if (!opened.ok()) return opened.status();
    {
      WriterMutexLock l(&mu_);
      file_ = *opened;
      PublishQuietLocked();
    }
    hazards_.WaitUnused(old.get());
    syncs_.fetch_add(1, std::memory_order_relaxed);
    return sync_dir;
  }

  // Publishes the file for lock-free lookups if it is the whole served state (no buffer
  // holds anything), else withdraws it.
  void PublishQuietLocked() REQUIRES(mu_) {
    quiet_file_.store(active_->empty() && frozen_.empty() ? file_.get() : nullptr,
                      std::memory_order_seq_cst);
  }

  // Valid while mu_ is held (shared or exclusive).
  Layers LayersLocked() const REQUIRES_SHARED(mu_) {
    return Layers{active_.get(), &frozen_, file_.get()};
  }

  // The owner of `layer` (active or frozen), to pin a Record's memory.
  std::shared_ptr<const void> PinOf(const WriteBuffer* layer) const REQUIRES_SHARED(mu_) {
    if (layer == active_.get()) return active_;
    for (const BufferRef& f : frozen_) {
      if (f.get() == layer) return f;
    }
    return nullptr;
  }

  uint64_t CommitsApplied() const { return commits_applied_.load(std::memory_order_acquire); }

  Status TakeWriterLock() {
    lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd_ < 0) return Status::FromErrno(errno, "open lock file " + lock_path_);
    while (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno == EINTR) continue;
      if (errno != EWOULDBLOCK) return Status::FromErrno(errno, "lock " + lock_path_);
      char buf[32] = {};
      ssize_t n = ::pread(lock_fd_, buf, sizeof(buf) - 1, 0);
      std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      return Status::Busy(path_ + ": in use by " +
                          (pid.empty() ? std::string("another process") : "pid " + pid));
    }
    const std::string me = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock_fd_, 0) != 0 ||
        ::pwrite(lock_fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
      return Status::FromErrno(errno, "write " + lock_path_);
    }
    return Status::OK();
  }

  // Holding the writer lock, every temp file of STORE is a leftover of a crash.
  void RemoveStaleTemps() {
    const std::string prefix = FileName(path_) + ".tmp-";
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) return;
    while (dirent* de = ::readdir(d)) {
      if (std::string_view(de->d_name).substr(0, prefix.size()) == prefix) {
        (void)env_->RemoveFile(dir_ + "/" + de->d_name);
      }
    }
    ::closedir(d);
  }

  // Back-pressure.
  Status WaitForRoom() REQUIRES(commit_mu_) {
    if (active_bytes_.load(std::memory_order_relaxed) < limit_) return Status::OK();
    MutexLock l(&sync_mu_);
    const uint64_t attempt = started_ + 1;
    limit_hit_ = true;
    sync_cv_.NotifyAll();
    done_cv_.Wait(&sync_mu_, [&]() REQUIRES(sync_mu_) {
      return stopping_ || active_bytes_.load(std::memory_order_relaxed) < limit_ ||
             finished_ >= attempt;
    });
    if (active_bytes_.load(std::memory_order_relaxed) < limit_) return Status::OK();
    if (stopping_) return Status::IOError("engine is shutting down");
    commit_errors_.fetch_add(1, std::memory_order_relaxed);
    return Status(last_error_.ok()
                      ? Status::IOError("write buffer full")
                      : last_error_.WithContext("write buffer full and the last sync failed"));
  }

  void SyncerLoop() EXCLUDES(sync_mu_) {
    MutexLock l(&sync_mu_);
    auto next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(interval_s_);
    while (true) {
      auto due = [&]() REQUIRES(sync_mu_) {
        return stopping_ || requested_ > started_ || limit_hit_ ||
               (interval_s_ > 0 && std::chrono::steady_clock::now() >= next_tick);
      };
      if (interval_s_ > 0) {
        sync_cv_.WaitUntil(&sync_mu_, next_tick, due);
      } else {
        sync_cv_.Wait(&sync_mu_, due);
      }
      if (interval_s_ > 0 && std::chrono::steady_clock::now() >= next_tick) {
        next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(interval_s_);
      }
      const bool final_round = stopping_;
      // Over the limit counts even without a commit: failed batches leave nodes behind.
      const bool needed =
          CommitsApplied() > durable_commits_ || dir_sync_owed_ || frozen_count_ > 0 || limit_hit_;
      if (!needed && !(requested_ > started_)) {
        limit_hit_ = false;
        if (final_round) return;
        continue;
      }
      const uint64_t attempt = ++started_;
      limit_hit_ = false;
      syncing_ = true;
      l.Unlock();
      const int64_t t0 = MonoNs();
      Status s;
      try {
        s = RunSync();
      } catch (const std::bad_alloc&) {
        s = Status::IOError("out of memory during a sync");
      }
      l.Lock();
      if (s.ok()) {
        last_sync_duration_ns_ = MonoNs() - t0;
        last_sync_end_ns_ = NowNs();
      }
      finished_ = attempt;
      last_error_ = s;
      if (!s.ok()) sync_errors_.fetch_add(1, std::memory_order_relaxed);
      done_cv_.NotifyAll();
      if (!retired_.empty()) {
        l.Unlock();
        for (const DetsFileRef& f : retired_) hazards_.WaitUnused(f.get());
        retired_.clear();  // Stats().syncing stays true until the old file is gone
        l.Lock();
      }
      syncing_ = false;
      if (final_round) return;
    }
  }

  // One sync attempt: make every commit applied before it began durable. Runs on the
  // syncer thread only.
  Status RunSync() {
    const uint64_t target = CommitsApplied();
    if (dir_sync_owed()) {
      KEYFS_RETURN_IF_ERROR(env_->SyncDir(dir_));
      MutexLock l(&sync_mu_);
      dir_sync_owed_ = false;
      durable_commits_ = std::max(durable_commits_, owed_commits_);
    }
    for (int round = 0; round < 3; ++round) {
      {
        // Done when every commit so far is durable, unless the buffer is over its limit
        // (it may hold only the leftovers of failed batches: freeze it all the same).
        MutexLock l(&sync_mu_);
        if (durable_commits_ >= target &&
            (round > 0 || active_bytes_.load(std::memory_order_relaxed) < limit_)) {
          return Status::OK();
        }
      }
      KEYFS_RETURN_IF_ERROR(SyncRound());
    }
    MutexLock l(&sync_mu_);
    return durable_commits_ >= target ? Status::OK() : Status::IOError("sync fell behind");
  }

  bool dir_sync_owed() {
    MutexLock l(&sync_mu_);
    return dir_sync_owed_;
  }

  // FREEZING -> MERGING -> RENAMING -> PUBLISHED (see the top of the file).
  Status SyncRound() {
    // FREEZING.
    std::vector<BufferRef> layers;
    DetsFileRef old;
    const BufRecord* root_rec = nullptr;  // lives in a frozen buffer held by `layers`
    TreeValue root;
    uint64_t upto;  // every commit up to this count is in `layers` or `old`
    int64_t newest_ns;
    {
      WriterMutexLock l(&mu_);
      uint64_t backlog = 0;
      for (const BufferRef& f : frozen_) backlog += f->bytes();
      if (!active_->empty() && (frozen_.empty() || backlog < limit_)) {
        // Allocate first: out of memory here must leave the two lists the same length
        // and the active buffer active.
        auto fresh = std::make_shared<WriteBuffer>();
        frozen_.reserve(frozen_.size() + 1);
        frozen_marks_.reserve(frozen_marks_.size() + 1);
        frozen_.push_back(std::move(active_));
        frozen_marks_.push_back({CommitsApplied(), last_commit_ns_});
        active_ = std::move(fresh);
        active_bytes_.store(active_->bytes(), std::memory_order_relaxed);
      }
      layers = frozen_;
      old = file_;
      // The root as the newest frozen buffer that changed it says, else as the old file.
      for (auto it = frozen_.rbegin(); it != frozen_.rend() && root_rec == nullptr; ++it) {
        root_rec = (*it)->root();
        if (root_rec != nullptr) root = TreeValue{root_rec->meta(), root_rec->version, {}};
      }
      // The new file is dated by the newest commit it holds, so `info`'s last commit stays
      // what it was when the file is reopened.
      newest_ns = frozen_marks_.empty() ? old->sync_time_ns() : frozen_marks_.back().newest_ns;
      // With the active buffer empty and nothing frozen, the file holds every commit.
      upto = !frozen_marks_.empty() ? frozen_marks_.back().upto
                                    : (active_->empty() ? CommitsApplied() : 0);
    }
    {
      MutexLock l(&sync_mu_);
      frozen_count_ = layers.size();
      done_cv_.NotifyAll();  // the active buffer has room again
    }
    if (layers.empty()) {
      MutexLock l(&sync_mu_);
      durable_commits_ = std::max(durable_commits_, upto);
      return Status::OK();
    }

    (void)FailPoint("dets.frozen");
    // MERGING.
    const std::string tmp =
        path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++temp_counter_);
    auto file = env_->NewExclusiveFile(tmp);
    if (!file.ok()) return file.status();
    WritableFile* f = file->get();
    MergeInput in;
    in.old_file = old.get();
    for (const BufferRef& b : layers) in.layers.push_back(b.get());
    in.generation = old->generation() + 1;
    in.sync_time_ns = newest_ns;
    in.last_version = version_.load(std::memory_order_relaxed);
    if (root_rec == nullptr) {
      auto m = old->RootMeta();
      if (!m.ok()) {
        (void)f->Close();
        (void)env_->RemoveFile(tmp);
        return m.status();
      }
      root = TreeValue{*m, old->root_version(), {}};
    }
    in.root = root.meta;
    in.root_version = root.version;
    MergeStats stats;
    Status s;
    try {
      s = WriteMergedFile(in, f, &stats);
    } catch (const std::bad_alloc&) {
      s = Status::IOError("out of memory during a sync");
    }
    // RENAMING.
    if (s.ok()) s = FailPoint("dets.merged");
    if (s.ok()) s = f->Sync();
    if (s.ok()) s = FailPoint("dets.file_synced");
    if (s.ok()) s = env_->Rename(tmp, path_);
    if (!s.ok()) {
      (void)f->Close();
      (void)env_->RemoveFile(tmp);
      return s;
    }
    (void)FailPoint("dets.renamed");
    int fd = ::dup(f->fd());
    Status sync_dir = env_->SyncDir(dir_);
    if (!sync_dir.ok()) sync_dir = env_->SyncDir(dir_);  // once more before giving up
    if (sync_dir.ok()) sync_dir = FailPoint("dets.dir_synced");
    (void)f->Close();
    if (fd < 0) return Status::FromErrno(errno, "dup");
    auto opened = DetsFile::OpenFd(fd, path_);
    if (!opened.ok()) return opened.status();  // the frozen buffers stay served

    // PUBLISHED.
    {
      WriterMutexLock l(&mu_);
      file_ = *opened;
      frozen_.erase(frozen_.begin(), frozen_.begin() + static_cast<ptrdiff_t>(layers.size()));
      frozen_marks_.erase(frozen_marks_.begin(),
                          frozen_marks_.begin() + static_cast<ptrdiff_t>(layers.size()));
      PublishQuietLocked();
    }
    syncs_.fetch_add(1, std::memory_order_relaxed);
    {
      MutexLock l(&sync_mu_);
      frozen_count_ -= std::min<uint64_t>(frozen_count_, layers.size());
      if (sync_dir.ok()) {
        durable_commits_ = std::max(durable_commits_, upto);
      } else {
        dir_sync_owed_ = true;
        owed_commits_ = std::max(owed_commits_, upto);
      }
    }
    layers.clear();
    (void)FailPoint("dets.published");
    // Usually the last reference: unmapped (and its blocks freed, which takes a while for a
    // big file) once the Sync() callers have their answer, on this thread, not a reader's.
    retired_.push_back(std::move(old));
    return sync_dir;
  }

  // Serves the file STORE names now if it is not the current one (read-only engines).
  Status RefreshFile(bool notify) {
    MutexLock rl(&refresh_mu_);
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path_);
    DetsFileRef cur;
    {
      ReaderMutexLock l(&mu_);
      cur = file_;
    }
    if (st.st_dev == cur->dev() && st.st_ino == cur->ino()) return Status::OK();
    auto f = DetsFile::Open(path_);
    if (!f.ok()) return f.status();
    if ((*f)->generation() < cur->generation()) return Status::OK();
    {
      WriterMutexLock l(&mu_);
      file_ = *f;
      last_commit_ns_ = file_->sync_time_ns();  // a reader has no commits of its own
      PublishQuietLocked();
    }
    external_reloads_.fetch_add(1, std::memory_order_relaxed);
    if (notify) NotifyDiff(*cur, **f);
    hazards_.WaitUnused(cur.get());
    return Status::OK();
  }

  // Tells the listener which keys differ between two files (by version).
  void NotifyDiff(const DetsFile& a, const DetsFile& b) {
    {
      MutexLock l(&listener_mu_);
      if (!listener_) return;
    }
    ChangeEvent ev;
    ev.old_generation = a.generation();
    ev.new_generation = b.generation();
    ev.external = true;
    auto ra = a.RootMeta(), rb = b.RootMeta();
    if (!ra.ok() || !rb.ok() || *ra != *rb || a.root_version() != b.root_version()) {
      ev.changed.emplace_back();  // the root ("" sorts first)
    }
    DetsFile::KeyCursor x(&a), y(&b);
    if (!x.SeekToFirst().ok() || !y.SeekToFirst().ok()) return;
    while (x.Valid() || y.Valid()) {
      if (x.Valid() && (!y.Valid() || x.key() < y.key())) {
        ev.changed.emplace_back(x.key());
        if (!x.Next().ok()) break;
      } else if (y.Valid() && (!x.Valid() || y.key() < x.key())) {
        ev.changed.emplace_back(y.key());
        if (!y.Next().ok()) break;
      } else {
        DetsEntry ea, eb;
        const uint64_t h = format::HashKey(x.key());
        if (!a.Find(x.key(), h, &ea).ok() || !b.Find(y.key(), h, &eb).ok() ||
            ea.version != eb.version) {
          ev.changed.emplace_back(x.key());
        }
        if (!x.Next().ok() || !y.Next().ok()) break;
      }
    }
    MutexLock l(&listener_mu_);
    if (listener_) listener_(ev);
  }

  const std::string path_, dir_, lock_path_;
  Env* const env_;
  const bool read_only_;
  const uint32_t interval_s_;
  const uint64_t limit_;
  int lock_fd_ = -1;
  uint64_t temp_counter_ = 0;         // syncer only
  std::vector<DetsFileRef> retired_;  // syncer only: files replaced by the last sync

  Mutex commit_mu_;                   // serialises Commit: apply, then the listener
  std::atomic<uint64_t> version_{0};  // the last version given to a commit

  Mutex refresh_mu_;  // serialises RefreshFile

  // The served state. Readers hold mu_ shared; commits, freezing and publishing exclusive.
  mutable SharedMutex mu_ ACQUIRED_AFTER(commit_mu_, refresh_mu_);
  std::shared_ptr<WriteBuffer> active_ GUARDED_BY(mu_);
  std::vector<BufferRef> frozen_ GUARDED_BY(mu_);  // oldest first
  // Per frozen buffer (same length as frozen_, which readers walk alone): what it holds.
  struct FrozenMark {
    uint64_t upto;      // commits_applied_ when it was frozen
    int64_t newest_ns;  // last_commit_ns_ then
  };
  std::vector<FrozenMark> frozen_marks_ GUARDED_BY(mu_);
  int64_t last_commit_ns_ GUARDED_BY(mu_) = 0;  // wall clock of the newest commit served
  DetsFileRef file_ GUARDED_BY(mu_);
  std::atomic<uint64_t> commits_applied_{0};  // successful commits; written under mu_
  // file_ while it is the whole served state (active_ and frozen_ empty), else nullptr:
  // lookups read it without mu_, announcing it in hazards_. Written under mu_ (exclusive);
  // a file it named is dropped only after hazards_.WaitUnused.
  std::atomic<const DetsFile*> quiet_file_{nullptr};
  mutable HazardSlots<DetsFile> hazards_;
  std::atomic<uint64_t> active_bytes_{0};

  // Sync coordination. Never held together with mu_.
  mutable Mutex sync_mu_ ACQUIRED_AFTER(commit_mu_);
  CondVar sync_cv_;  // wakes the syncer
  CondVar done_cv_;  // an attempt finished, or the buffer was frozen
  bool stopping_ GUARDED_BY(sync_mu_) = false;
  bool limit_hit_ GUARDED_BY(sync_mu_) = false;
  bool syncing_ GUARDED_BY(sync_mu_) = false;
  // The highest attempt a Sync() caller waits for.
  uint64_t requested_ GUARDED_BY(sync_mu_) = 0;
  uint64_t started_ GUARDED_BY(sync_mu_) = 0, finished_ GUARDED_BY(sync_mu_) = 0;
  // Every commit up to this count is durable.
  uint64_t durable_commits_ GUARDED_BY(sync_mu_) = 0;
  bool dir_sync_owed_ GUARDED_BY(sync_mu_) = false;  // renamed, but the directory fsync failed
  uint64_t owed_commits_ GUARDED_BY(sync_mu_) = 0;   // durable once the directory fsync succeeds
  uint64_t frozen_count_ GUARDED_BY(sync_mu_) = 0;
  Status last_error_ GUARDED_BY(sync_mu_);
  int64_t last_sync_duration_ns_ GUARDED_BY(sync_mu_) = 0;
  // Wall clock; 0 until a sync of this object completes.
  int64_t last_sync_end_ns_ GUARDED_BY(sync_mu_) = 0;
  std::thread syncer_;

  Mutex listener_mu_ ACQUIRED_AFTER(commit_mu_, refresh_mu_);
  ChangeListener listener_ GUARDED_BY(listener_mu_);

  std::unique_ptr<StoreWatcher> watcher_;

  std::atomic<uint64_t> commits_{0}, commit_errors_{0}, syncs_{0}, sync_errors_{0},
      external_reloads_{0};
  std::atomic<int64_t> last_commit_duration_ns_{0};
};

}  // namespace

StatusOr<std::unique_ptr<Engine>> OpenDetsEngine(const std::string& path,
                                                 const OpenOptions& options) {
  auto e = std::make_unique<DetsEngineImpl>(path, options);
  KEYFS_RETURN_IF_ERROR(e->Init(options.watch));
  return std::unique_ptr<Engine>(std::move(e));
}

Status CreateDetsStore(const std::string& path, Env* env) {
  return CreateFileAtomically(env ? env : Env::Default(), path,
                              [](WritableFile* f) { return WriteEmptyFile(f, NowNs()); });
}

Status VerifyDetsStore(const std::string& path, std::vector<std::string>* report) {
  auto f = DetsFile::Open(path);
  if (!f.ok()) return f.status();
  if (report) {
    report->push_back("engine: dets, format version " + std::to_string((*f)->format_version()) +
                      ", generation " + std::to_string((*f)->generation()));
    report->push_back("header: ok, " + std::to_string((*f)->file_size()) + " bytes");
  }
  return (*f)->VerifyAll(report);
}

}  // namespace keyfs
