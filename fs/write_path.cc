// The write path (write_path.h).
#include "write_path.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "keyfs/fs/filesystem.h"

namespace keyfs::fs {

namespace {
// A size the copy may grow to: EFBIG past the largest value a store takes.
int CheckSize(uint64_t size) { return size > kMaxValueSize ? EFBIG : 0; }

// What a write gets when the writers' copies together would pass the budget.
int NoRoom(uint64_t size) {
  spdlog::warn("a write handle's copy of {} bytes does not fit the write budget: ENOSPC", size);
  return ENOSPC;
}
}  // namespace

Status WritePath::CommitBatch(const Batch& b) {
  Status s = engine_->Commit(b);
  if (s.ok()) {
    FsCounters::Bump(counters_->commits);
  } else if (s.code() == Status::Code::kIOError || s.code() == Status::Code::kNoSpace ||
             s.IsCorruption()) {
    FsCounters::Bump(counters_->errors);
    spdlog::error("commit failed: {}", s.ToString());
  }
  return s;
}

int WritePath::Write(WriteHandle* h, const Caller& c, const char* data, size_t size, off_t off,
                     uint64_t lock_owner) {
  if (off < 0) return EINVAL;
  MutexLock l(&h->mu);
  const uint64_t at = h->append ? h->buf.size() : static_cast<uint64_t>(off);
  if (int err = CheckSize(at + size)) return err;
  if (at + size > h->buf.size()) {
    if (!h->Charge(at + size)) return NoRoom(at + size);
    h->buf.resize(at + size);
  }
  std::memcpy(h->buf.data() + at, data, size);
  h->dirty = true;
  if (WriteDropsPrivs(c)) {
    h->drop_privs = true;
    h->writer_in_group = h->writer_in_group && c.InGroup(h->create_meta.gid);
  }
  h->explicit_mtime = kTimeNow;  // a write after utimens makes the mtime "now" again
  if (lock_owner != 0) h->write_owner = lock_owner;
  ++h->edits;
  return 0;
}

bool WritePath::MustDropPrivs(WriteHandle* h, const Caller& c) {
  if (!WriteDropsPrivs(c)) return false;
  MutexLock l(&h->mu);
  return !h->privs_dropped && (h->create_meta.mode & (S_ISUID | S_ISGID));
}

int WritePath::DropPrivs(WriteHandle* h, const Caller& c) {
  std::string key;
  bool unlinked = false;
  table_->WithNode(h->node, [&](Node& n) {
    key = n.key;
    unlinked = n.unlinked;
  });
  Meta meta;
  {
    MutexLock l(&h->mu);
    meta = h->create_meta;
  }
  const bool in_group = c.InGroup(meta.gid);
  if (!unlinked) {
    auto cur = engine_->Get(key);
    if (!cur.ok()) return StatusToErrno(cur.status());
    meta = cur->meta;
    const uint32_t mode = WithoutPrivs(meta.mode, in_group);
    if (mode != meta.mode) {
      meta.mode = mode;
      Status s = CommitBatch(Batch().SetMeta(key, meta));
      if (!s.ok()) return StatusToErrno(s);
    }
  } else {
    meta.mode = WithoutPrivs(meta.mode, in_group);
  }
  table_->WithNode(h->node, [&](Node& n) { n.rec.meta.mode = meta.mode; });
  MutexLock l(&h->mu);
  h->create_meta.mode = meta.mode;
  h->privs_dropped = true;
  return 0;
}

int WritePath::Resize(WriteHandle* h, const Caller& c, int64_t size) {
  if (size < 0) return EINVAL;
  if (int err = CheckSize(static_cast<uint64_t>(size))) return err;
  MutexLock l(&h->mu);
  if (!h->Charge(static_cast<uint64_t>(size))) return NoRoom(static_cast<uint64_t>(size));
  h->buf.resize(static_cast<size_t>(size));
  h->truncated = true;
  if (WriteDropsPrivs(c)) {
    h->drop_privs = true;
    h->writer_in_group = h->writer_in_group && c.InGroup(h->create_meta.gid);
  }
  ++h->edits;
  return 0;
}

uint64_t DefaultWriteBudget() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const uint64_t ram = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
  // Half the machine's memory, and at least room for one value of the largest size.
  return std::max<uint64_t>(ram / 2, kMaxValueSize + (uint64_t{64} << 20));
}

int WritePath::Commit(WriteHandle* h, bool* committed) {
  *committed = false;
  MutexLock in_order(&h->commit_mu);
  std::string value;
  uint64_t edits;
  int64_t mtime;
  bool drop_privs, writer_in_group;
  Meta meta;
  {
    MutexLock l(&h->mu);
    if (!h->dirty && !h->truncated) return 0;
    value = h->buf;
    edits = h->edits;
    mtime = h->explicit_mtime;
    drop_privs = h->drop_privs;
    writer_in_group = h->writer_in_group;
    meta = h->create_meta;  // SETATTR and DropPrivs change it on other threads
  }
  // From reading the node's key until the commit is applied, no rename may move it.
  KeysInUse keys_in_use(table_, h->node, /*wait=*/true, /*commit=*/true);
  std::string key;
  bool unlinked = false;
  table_->WithNode(h->node, [&](Node& n) {
    key = n.key;
    unlinked = n.unlinked;
  });
  if (key.empty() && !unlinked) return EIO;
  if (!unlinked) {
    auto cur = engine_->Get(key);
    if (cur.ok() && cur->meta.type == EntryType::kFile) meta = cur->meta;
    meta.type = EntryType::kFile;
    meta.mtime_ns = mtime;  // kTimeNow: the commit's time
    if (drop_privs) meta.mode = WithoutPrivs(meta.mode, writer_in_group);
    Status s = CommitBatch(Batch().Put(key, std::move(value), meta));
    if (!s.ok()) return StatusToErrno(s);
    spdlog::debug("committed {}", key);
    *committed = true;
    // The writer's node (no page-cache reader ever uses it) now shows the value it
    // committed, for stat and for the writer's own reads.
    auto now = engine_->Get(key);
    if (now.ok()) {
      table_->WithNode(h->node, [&](Node& n) {
        n.version = now->version;
        n.rec = CompactRecord(*now);
      });
    }
  }
  MutexLock l(&h->mu);
  if (h->edits == edits) {
    h->dirty = h->truncated = h->drop_privs = false;
    h->writer_in_group = true;
  }
  return 0;
}

int WritePath::TruncateKey(const std::string& key, int64_t size, const Meta& meta) {
  if (size < 0) return EINVAL;
  if (int err = CheckSize(static_cast<uint64_t>(size))) return err;
  auto cur = engine_->Get(key);
  if (!cur.ok()) return StatusToErrno(cur.status());
  if (cur->meta.type != EntryType::kFile) {
    return cur->meta.type == EntryType::kDir ? EISDIR : EINVAL;
  }
  std::string v(cur->value.substr(0, std::min<uint64_t>(cur->value.size(), size)));
  v.resize(static_cast<size_t>(size));
  Meta m = meta;
  m.type = EntryType::kFile;
  Status s = CommitBatch(Batch().Put(key, std::move(v), m));
  return s.ok() ? 0 : StatusToErrno(s);
}

Status WritePath::Rename(const std::string& from, const std::string& to, uint32_t flags) {
  struct Alone {
    RenameGate* gate;
    uint64_t ticket;
    ~Alone() { gate->ExitRename(ticket); }
  } alone{&table_->rename_gate(),
          table_->rename_gate().EnterRename(from, to, flags & kRenameExchange)};
  Status s = CommitBatch(Batch().Rename(from, to, flags));
  if (s.ok()) {
    const bool exchange = flags & kRenameExchange;
    if (!exchange && from != to) table_->Unlinked(to);
    table_->Renamed(from, to, exchange);
  }
  return s;
}

}  // namespace keyfs::fs
