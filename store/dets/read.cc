// The dets engine's read path: point lookups and listings over the served state
// (dets_engine_impl.h), and the lock-free view of a quiet store.
#include <algorithm>
#include <span>

#include "dets/engine_impl.h"
#include "keyfs/store/status.h"

namespace keyfs::dets {

namespace {

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

}  // namespace

StatusOr<keyfs::Record> DetsEngineImpl::GetInDirectory(std::string_view key) const {
  return Find(key, false);
}

StatusOr<keyfs::Record> DetsEngineImpl::Find(std::string_view key, bool why_missing) const {
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

Status DetsEngineImpl::List(std::string_view dir, std::string_view start_after,
                            const ListFn& fn) const {
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

Status DetsEngineImpl::FillLegacy(const DetsFile& file, Meta* meta, std::string_view key) {
  if (meta->type != EntryType::kDir) return Status::OK();
  auto n = file.CountChildDirs(key);
  if (!n.ok()) return n.status();
  meta->subdirs = *n;
  return Status::OK();
}

void DetsEngineImpl::PublishQuietLocked() {
  quiet_file_.store(active_->empty() && frozen_.empty() ? file_.get() : nullptr,
                    std::memory_order_seq_cst);
}

Layers DetsEngineImpl::LayersLocked() const { return Layers{active_.get(), &frozen_, file_.get()}; }

std::shared_ptr<const void> DetsEngineImpl::PinOf(const WriteBuffer* layer) const {
  if (layer == active_.get()) return active_;
  for (const BufferRef& f : frozen_) {
    if (f.get() == layer) return f;
  }
  return nullptr;
}

}  // namespace keyfs::dets
