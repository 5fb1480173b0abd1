// Loading and following the store's files: builds the served version from STORE and
// STORE.log, catches up with what other processes wrote, publishes and announces it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "format.h"
#include "snapshot/engine_impl.h"

namespace keyfs {

Status ReadAt(int fd, uint64_t off, uint64_t len, std::string* out, const std::string& path) {
  out->resize(len);
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, out->data() + done, len - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  out->resize(done);
  return Status::OK();
}

StatusOr<ViewRef> SnapshotEngineImpl::LoadFromDisk(uint64_t since,
                                                   std::vector<std::string>* changed,
                                                   bool* covered) {
  for (int attempt = 0;; ++attempt) {
    auto t = SnapshotTable::Open(path_);
    if (!t.ok()) return t.status();
    CloseLog();
    int fd = ::open(log_path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) return Status::FromErrno(errno, "open " + log_path_);
    ResetDelta(*t);
    if (changed != nullptr) changed->clear();
    if (covered != nullptr) *covered = (*t)->generation() <= since;
    if (fd < 0) return MakeView();
    log_fd_ = fd;
    struct stat st;
    if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + log_path_);
    log_dev_ = st.st_dev;
    log_ino_ = st.st_ino;
    if (static_cast<uint64_t>(st.st_size) > kMaxLogBytes) {
      return Status::Corruption(log_path_ + ": commit log of " + std::to_string(st.st_size) +
                                " bytes, more than any writer makes");
    }
    std::string header;
    KEYFS_RETURN_IF_ERROR(ReadAt(fd, 0, format::kLogHeaderSize, &header, log_path_));
    uint64_t log_base = 0;
    KEYFS_RETURN_IF_ERROR(ParseLogHeader(header, log_path_, &log_base));
    if (log_base > (*t)->generation()) {
      // A merge by another process replaced both files between our two opens.
      if (attempt < 5) continue;
      return Status::Corruption(log_path_ + ": commit log starts after generation " +
                                std::to_string(log_base) + ", newer than the table's " +
                                std::to_string((*t)->generation()));
    }
    log_end_ = format::kLogHeaderSize;
    log_bytes_.store(static_cast<uint64_t>(st.st_size), std::memory_order_relaxed);
    KEYFS_RETURN_IF_ERROR(ReadNewRecords(static_cast<uint64_t>(st.st_size), since, changed));
    return MakeView();
  }
}

Status SnapshotEngineImpl::ReadNewRecords(uint64_t size, uint64_t since,
                                          std::vector<std::string>* changed) {
  if (size <= log_end_) return Status::OK();
  std::string buf;
  KEYFS_RETURN_IF_ERROR(ReadAt(log_fd_, log_end_, size - log_end_, &buf, log_path_));
  std::string_view rest(buf);
  LogRecord rec;
  Status why;
  while (true) {
    const LogParse p = ParseLogRecord(rest, log_end_, log_path_, &rec, &why);
    if (p == LogParse::kEnd) break;
    if (p == LogParse::kBad) return why;
    if (p == LogParse::kTorn) {
      if (IntactRecordFollows(rest)) {
        return Status::Corruption(std::string(why.message()) +
                                  " (intact commit records follow it)");
      }
      break;
    }
    if (rec.generation > gen_) {
      if (rec.generation != gen_ + 1) {
        return Status::Corruption(log_path_ + ": commit log jumps from generation " +
                                  std::to_string(gen_) + " to " + std::to_string(rec.generation) +
                                  " at offset " + std::to_string(log_end_));
      }
      record_offsets_.emplace_back(rec.generation, log_end_);
      ApplyRecord(rec);
      if (changed != nullptr && rec.generation > since) {
        if (rec.root) changed->emplace_back();
        for (const LogEntry& e : rec.entries) changed->emplace_back(e.key);
      }
    }
    log_end_ += rec.size;
    rest.remove_prefix(rec.size);
  }
  return Status::OK();
}

void SnapshotEngineImpl::ResetDelta(TableRef base) {
  base_ = std::move(base);
  delta_ = std::make_unique<DeltaWriter>();
  adjust_ = ViewCounts();
  record_offsets_.clear();
  gen_ = base_->generation();
  auto root = base_->RootMeta();
  root_ = root.ok() ? *root : Meta::Dir();
  root_version_ = base_->root_version();
  commit_time_ = base_->commit_time_ns();
  log_bytes_.store(0, std::memory_order_relaxed);
}

void SnapshotEngineImpl::ApplyRecord(const LogRecord& rec) {
  for (const LogEntry& e : rec.entries) {
    const uint64_t h = format::HashKey(e.key);
    // The counts move by what the key held before.
    const DeltaKey* k = delta_->index()->FindKey(e.key, h);
    const DeltaState* prev = k ? k->newest.load(std::memory_order_relaxed) : nullptr;
    if (prev != nullptr) {
      if (prev->live) adjust_.Count(prev->meta, prev->value.size(), -1);
    } else {
      EntryRef old;
      if (base_->FindHashed(e.key, h, &old).ok()) adjust_.Count(old.meta, old.value.size(), -1);
    }
    if (e.live) adjust_.Count(e.meta, e.value.size(), +1);
    DeltaState s;
    s.gen = rec.generation;
    s.live = e.live;
    s.meta = e.meta;
    s.version = e.version;
    s.value = e.value;
    delta_->Add(e.key, h, s);
  }
  if (rec.root) {
    root_ = *rec.root;
    root_version_ = rec.root_version;
  }
  gen_ = rec.generation;
  commit_time_ = rec.commit_time_ns;
}

ViewRef SnapshotEngineImpl::MakeView() {
  return std::make_shared<const SnapshotView>(base_, delta_->index(), gen_, root_, root_version_,
                                              commit_time_, adjust_, delta_->key_count());
}

void SnapshotEngineImpl::CloseLog() {
  log_writer_.reset();
  if (log_fd_ >= 0) ::close(log_fd_);
  log_fd_ = -1;
  log_dev_ = 0;
  log_ino_ = 0;
  log_end_ = 0;
}

Status SnapshotEngineImpl::CatchUp(bool notify) {
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path_);
  ViewRef cur = View();
  bool reload = stale_ || st.st_dev != cur->base()->dev() || st.st_ino != cur->base()->ino();
  struct stat lst;
  const bool have_log = ::stat(log_path_.c_str(), &lst) == 0;
  if (!have_log && errno != ENOENT) return Status::FromErrno(errno, "stat " + log_path_);
  // A log shorter than what we read was cut back by a writer whose append failed after we
  // read it: read everything again rather than keep serving a commit that never happened.
  if (have_log != (log_fd_ >= 0) ||
      (have_log && (lst.st_dev != log_dev_ || lst.st_ino != log_ino_ ||
                    static_cast<uint64_t>(lst.st_size) < log_end_))) {
    reload = true;
  }
  std::vector<std::string> changed;
  if (reload) {
    bool covered = false;
    auto v = LoadFromDisk(cur->generation(), &changed, &covered);
    if (!v.ok()) {
      MarkStale();  // serve on what we had
      return v.status();
    }
    stale_ = false;
    // Files older than what we serve (a store restored from a backup under a running
    // mount) are served too: they are what is durable, and the diff says what changed.
    const bool same = (*v)->generation() == cur->generation();
    if ((*v)->generation() < cur->generation()) covered = false;
    Publish(*v);
    if (same) return Status::OK();  // a merge: the same content on a new base
    external_reloads_.fetch_add(1, std::memory_order_relaxed);
    if (notify) {
      if (covered) {
        NotifyKeys(cur->generation(), (*v)->generation(), std::move(changed), true);
      } else {
        NotifyDiff(*cur, **v);
      }
    }
    return Status::OK();
  }
  if (!have_log || static_cast<uint64_t>(lst.st_size) <= log_end_) return Status::OK();
  const uint64_t before = gen_;
  Status s = ReadNewRecords(static_cast<uint64_t>(lst.st_size), before, &changed);
  log_bytes_.store(static_cast<uint64_t>(lst.st_size), std::memory_order_relaxed);
  if (gen_ != before) {
    Publish(MakeView());
    external_reloads_.fetch_add(1, std::memory_order_relaxed);
    if (notify) NotifyKeys(before, gen_, std::move(changed), true);
  }
  return s;
}

void SnapshotEngineImpl::MarkStale() {
  CloseLog();
  stale_ = true;
}

void SnapshotEngineImpl::Publish(ViewRef v) {
  ViewRef old = current_.Exchange(std::move(v));
  MutexLock l(&retire_mu_);
  retired_.push_back(std::move(old));
}

void SnapshotEngineImpl::ReapRetired() {
  std::vector<ViewRef> drop;
  {
    MutexLock l(&retire_mu_);
    for (auto it = retired_.begin(); it != retired_.end();) {
      if (it->use_count() == 1) {
        drop.push_back(std::move(*it));
        it = retired_.erase(it);
      } else {
        ++it;
      }
    }
  }
  drop.clear();  // munmap + close: the file's blocks are freed here
}

void SnapshotEngineImpl::Notify(ChangeEvent ev) {
  MutexLock l(&listener_mu_);
  if (listener_) listener_(ev);
}

void SnapshotEngineImpl::NotifyKeys(uint64_t from, uint64_t to, std::vector<std::string> keys,
                                    bool external) {
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  ChangeEvent ev;
  ev.old_generation = from;
  ev.new_generation = to;
  ev.external = external;
  ev.changed = std::move(keys);
  Notify(std::move(ev));
}

void SnapshotEngineImpl::NotifyDiff(const SnapshotView& a, const SnapshotView& b) {
  {
    MutexLock l(&listener_mu_);
    if (!listener_) return;
  }
  ChangeEvent ev;
  ev.old_generation = a.generation();
  ev.new_generation = b.generation();
  ev.external = true;
  if (a.root() != b.root() || a.root_version() != b.root_version()) {
    ev.changed.emplace_back();  // the root ("" sorts first)
  }
  std::vector<std::pair<std::string, uint64_t>> xs, ys;
  (void)a.Scan("", [&](const EntryRef& e) {
    xs.emplace_back(std::string(e.key), e.version);
    return true;
  });
  (void)b.Scan("", [&](const EntryRef& e) {
    ys.emplace_back(std::string(e.key), e.version);
    return true;
  });
  size_t i = 0, j = 0;
  while (i < xs.size() || j < ys.size()) {
    if (j == ys.size() || (i < xs.size() && xs[i].first < ys[j].first)) {
      ev.changed.push_back(std::move(xs[i++].first));
    } else if (i == xs.size() || ys[j].first < xs[i].first) {
      ev.changed.push_back(std::move(ys[j++].first));
    } else {
      if (xs[i].second != ys[j].second) ev.changed.push_back(xs[i].first);
      ++i;
      ++j;
    }
  }
  Notify(std::move(ev));
}

}  // namespace keyfs
