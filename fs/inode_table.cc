// InodeTable: nodeid <-> (key, version) bookkeeping, kept apart from the store.
#include "inode_table.h"

#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace keyfs::fs {

namespace {
constexpr size_t kCopyValueBytes = 64 * 1024;

bool AtOrBelow(std::string_view key, std::string_view root) {
  if (key.size() < root.size() || key.compare(0, root.size(), root) != 0) return false;
  return key.size() == root.size() || key[root.size()] == '/';
}
}  // namespace

Record CompactRecord(const Record& rec) {
  Record r = rec;
  if (rec.meta.type == EntryType::kDir) {
    r.pin.reset();  // dirs keep no table alive
  } else if (rec.value.size() <= kCopyValueBytes) {
    // The kernel may keep a node for a long time; a small value is copied so the node
    // does not keep a whole store table (and its file) alive.
    auto copy = std::make_shared<const std::string>(rec.value);
    r.value = *copy;
    r.pin = std::move(copy);
  }
  return r;
}

bool RenameGate::Move::Covers(const Use& u) const {
  return AtOrBelow(u.key, from) || ((exchange || u.commit) && AtOrBelow(u.key, to));
}

bool RenameGate::CoveredLocked(const Use& u) const {
  for (const auto& [t, m] : moves_) {
    if (m.Covers(u)) return true;
  }
  return false;
}

uint64_t RenameGate::EnterShared(const std::string& key, bool commit) {
  Use u{key, commit};
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !CoveredLocked(u); });
  const uint64_t ticket = next_ticket_++;
  users_.emplace(ticket, std::move(u));
  return ticket;
}

uint64_t RenameGate::TryEnterShared(const std::string& key, bool commit) {
  Use u{key, commit};
  std::lock_guard<std::mutex> l(mu_);
  if (CoveredLocked(u)) return 0;
  const uint64_t ticket = next_ticket_++;
  users_.emplace(ticket, std::move(u));
  return ticket;
}

void RenameGate::ExitShared(uint64_t ticket) {
  std::lock_guard<std::mutex> l(mu_);
  users_.erase(ticket);
  if (!moves_.empty()) cv_.notify_all();
}

uint64_t RenameGate::EnterRename(const std::string& from, const std::string& to, bool exchange) {
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t ticket = next_ticket_++;
  const Move& me = moves_.emplace(ticket, Move{from, to, exchange}).first->second;
  // Another rename overlaps if one's source or target is at or below the other's.
  auto overlaps = [](const Move& a, const Move& b) {
    return AtOrBelow(a.from, b.from) || AtOrBelow(a.from, b.to) || AtOrBelow(a.to, b.from) ||
           AtOrBelow(a.to, b.to) || AtOrBelow(b.from, a.from) || AtOrBelow(b.from, a.to) ||
           AtOrBelow(b.to, a.from) || AtOrBelow(b.to, a.to);
  };
  cv_.wait(l, [&] {
    for (const auto& [t, u] : users_) {
      if (me.Covers(u)) return false;
    }
    for (const auto& [t, m] : moves_) {
      if (t >= ticket) break;
      if (overlaps(me, m)) return false;
    }
    return true;
  });
  return ticket;
}

void RenameGate::ExitRename(uint64_t ticket) {
  std::lock_guard<std::mutex> l(mu_);
  moves_.erase(ticket);
  cv_.notify_all();
}

KeysInUse::KeysInUse(InodeTable* table, uint64_t id, bool wait, bool commit)
    : gate_(&table->rename_gate()) {
  std::string key;
  if (!table->KeyOf(id, &key)) return;
  while (true) {
    ticket_ = wait ? gate_->EnterShared(key, commit) : gate_->TryEnterShared(key, commit);
    if (ticket_ == 0) {
      held_ = false;
      return;
    }
    // A rename that moved the node before we entered shows as a new key: use that one.
    std::string now;
    if (!table->KeyOf(id, &now) || now == key) return;
    gate_->ExitShared(ticket_);
    ticket_ = 0;
    key = std::move(now);
  }
}

InodeTable::InodeTable() {
  auto root = std::make_unique<Node>();
  root->id = kRootId;
  root->ino = kRootId;
  root->type = EntryType::kDir;
  root->rec.meta = Meta::Dir();
  root->nlookup = 1;  // never erased
  by_key_[""].push_back(root.get());
  nodes_[kRootId] = std::move(root);
}

Node* InodeTable::FindLocked(uint64_t id) {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : it->second.get();
}

uint64_t KeyIno(std::string_view key) {
  if (key.empty()) return kRootId;
  const uint64_t h = XXH3_64bits(key.data(), key.size());
  return h < kFirstDynamicId ? h + kFirstDynamicId : h;
}

Node* InodeTable::NewNodeLocked(const std::string& key, const Record& rec) {
  auto n = std::make_unique<Node>();
  n->id = next_id_++;
  n->key = key;
  n->ino = KeyIno(key);
  n->type = rec.meta.type;
  n->version = rec.version;
  n->rec = CompactRecord(rec);
  Node* raw = n.get();
  by_key_[key].push_back(raw);
  nodes_[raw->id] = std::move(n);
  return raw;
}

uint64_t InodeTable::Acquire(const std::string& key, const Record& rec, pid_t tid) {
  MutexLock l(&mu_);
  const bool for_writer = rec.meta.type == EntryType::kFile && LiveReservationLocked(tid);
  auto it = by_key_.find(key);
  if (it != by_key_.end()) {
    for (Node* n : it->second) {
      if (n->type != rec.meta.type || n->unlinked) continue;
      if (n->type == EntryType::kDir) {
        n->rec.meta = rec.meta;
        ++n->nlookup;
        return n->id;
      }
      if (for_writer && n->tainted) {
        // Writers share writer nodes: each keeps its own copy of the value, and the node
        // follows the newest committed version.
        n->version = rec.version;
        n->rec = CompactRecord(rec);
        ++n->nlookup;
        return n->id;
      }
      if (!for_writer && !n->tainted && n->version == rec.version) {
        ++n->nlookup;
        return n->id;
      }
    }
  }
  Node* n = NewNodeLocked(key, rec);
  n->nlookup = 1;
  n->tainted = for_writer;
  return n->id;
}

namespace {
// Adds `tid` to `m`, first forgetting marks whose open was abandoned (the process died
// between the ESTALE and the retry): a retry comes within microseconds.
template <class Map>
void AddRetry(Map& m, pid_t tid) {
  const auto now = std::chrono::steady_clock::now();
  for (auto it = m.begin(); it != m.end();) {
    it = now - it->second > std::chrono::seconds(1) ? m.erase(it) : std::next(it);
  }
  m[tid] = now;
}
}  // namespace

void InodeTable::ReserveForWriter(pid_t tid) {
  MutexLock l(&mu_);
  AddRetry(writer_pending_, tid);
}

void InodeTable::MarkReaderRetry(pid_t tid) {
  MutexLock l(&mu_);
  AddRetry(reader_retry_, tid);
}

bool InodeTable::TakeReaderRetry(pid_t tid) {
  MutexLock l(&mu_);
  if (reader_retry_.empty()) return false;
  auto it = reader_retry_.find(tid);
  if (it == reader_retry_.end()) return false;
  const bool live = std::chrono::steady_clock::now() - it->second <= std::chrono::seconds(1);
  reader_retry_.erase(it);
  return live;
}

void InodeTable::WriterOpened(pid_t tid) {
  MutexLock l(&mu_);
  if (!writer_pending_.empty()) writer_pending_.erase(tid);
}

bool InodeTable::HasWriterReservation(pid_t tid) {
  MutexLock l(&mu_);
  return LiveReservationLocked(tid);
}

bool InodeTable::LiveReservationLocked(pid_t tid) {
  if (writer_pending_.empty()) return false;
  auto it = writer_pending_.find(tid);
  if (it == writer_pending_.end()) return false;
  // A retry comes within microseconds; an older reservation belongs to an open that never
  // came back (and thread ids are reused).
  if (std::chrono::steady_clock::now() - it->second > std::chrono::seconds(1)) {
    writer_pending_.erase(it);
    return false;
  }
  return true;
}

uint64_t InodeTable::AcquireFresh(const std::string& key, const Record& rec) {
  MutexLock l(&mu_);
  Node* n = NewNodeLocked(key, rec);
  n->nlookup = 1;
  n->tainted = true;
  return n->id;
}

void InodeTable::MaybeEraseLocked(Node* n) {
  if (n->id == kRootId || n->nlookup > 0 || n->open_handles > 0) return;
  auto it = by_key_.find(n->key);
  if (it != by_key_.end()) {
    auto& v = it->second;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] == n) {
        v[i] = v.back();
        v.pop_back();
        break;
      }
    }
    if (v.empty()) by_key_.erase(it);
  }
  nodes_.erase(n->id);
}

void InodeTable::Forget(uint64_t id, uint64_t count) {
  MutexLock l(&mu_);
  Node* n = FindLocked(id);
  if (n == nullptr || id == kRootId) return;
  if (count > n->nlookup) {
    std::fprintf(stderr, "keyfs: FORGET of %llu lookups on node %llu that has %llu\n",
                 static_cast<unsigned long long>(count), static_cast<unsigned long long>(id),
                 static_cast<unsigned long long>(n->nlookup));
    std::abort();
  }
  n->nlookup -= count;
  MaybeEraseLocked(n);
}

bool InodeTable::KeyOf(uint64_t id, std::string* key, EntryType* type) {
  MutexLock l(&mu_);
  Node* n = FindLocked(id);
  if (n == nullptr) return false;
  *key = n->key;
  if (type) *type = n->type;
  return true;
}

void InodeTable::Renamed(const std::string& from, const std::string& to, bool exchange) {
  MutexLock l(&mu_);
  std::vector<Node*> a, b;
  // Nodes below a key exist only while the kernel holds the key's directory node (a
  // dentry pins its parent), so a key without one moves alone. A directory's subtree is
  // found by a scan of every known key: lookups far outnumber directory renames, so the
  // index is a hash map, not an ordered one.
  auto collect = [&](const std::string& root, std::vector<Node*>* out) REQUIRES(mu_) {
    auto exact = by_key_.find(root);
    if (exact == by_key_.end()) return;
    bool dir = false;
    for (Node* n : exact->second) dir = dir || n->type == EntryType::kDir;
    if (!dir) {
      *out = std::move(exact->second);
      by_key_.erase(exact);
      return;
    }
    for (auto it = by_key_.begin(); it != by_key_.end();) {
      if (!AtOrBelow(it->first, root)) {
        ++it;
        continue;
      }
      for (Node* n : it->second) out->push_back(n);
      it = by_key_.erase(it);
    }
  };
  collect(from, &a);
  if (exchange) collect(to, &b);
  auto move = [&](std::vector<Node*>& nodes, const std::string& old_root,
                  const std::string& new_root) REQUIRES(mu_) {
    for (Node* n : nodes) {
      n->key = new_root + n->key.substr(old_root.size());
      by_key_[n->key].push_back(n);
    }
  };
  move(a, from, to);
  move(b, to, from);
}

void InodeTable::Unlinked(const std::string& key) {
  MutexLock l(&mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return;
  for (Node* n : it->second) n->unlinked = true;
}

uint64_t InodeTable::DirId(const std::string& key) {
  MutexLock l(&mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return 0;
  for (Node* n : it->second) {
    if (n->type == EntryType::kDir && !n->unlinked) return n->id;
  }
  return 0;
}

void InodeTable::CloseHandle(uint64_t id, bool cached_reader, bool writer) {
  MutexLock l(&mu_);
  Node* n = FindLocked(id);
  if (n == nullptr) return;
  if (n->open_handles > 0) --n->open_handles;
  if (cached_reader && n->cached_readers > 0) --n->cached_readers;
  if (writer && n->writers > 0) --n->writers;
  MaybeEraseLocked(n);
}

size_t InodeTable::size() {
  MutexLock l(&mu_);
  return nodes_.size();
}

}  // namespace keyfs::fs
