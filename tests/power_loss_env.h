// PowerLossEnv: an Env that knows what a power cut would keep (leveldb's
// FaultInjectionTestEnv and DropUnsyncedData, with directories held to the same rule).
//
// Every call passes through to Env::Default(), so the engine reads what it wrote, and is
// also recorded in a model of one directory (the store's):
//   - a file's content is durable as of its last Sync(); writes and truncations since then
//     are kept as a list of changes, split at 4 KiB page boundaries as a disk writes them;
//   - the directory's names are durable as of its last SyncDir(); creations, renames, links
//     and removals since then are kept as a list of operations.
// Each call that changes the disk or makes a change durable is a numbered step.
// CutPowerAt(n) makes step n and everything after it fail with EIO without touching the
// disk: the power is off. Once the engine is closed, ApplyPowerLoss() rewrites the
// directory to what the disk would hold after the cut: the durable state plus a prefix of
// the unsynced changes of each file and of the directory, chosen by the Survival mode (a
// real disk may have written any prefix of what it was given).
//
// Files the engine does not write through the Env (lock files, `*.lock`) are left alone.
// Thread-safe: the engine's committer or syncer calls it while the test thread reads it.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "keyfs/store/env.h"
#include "testutil.h"

namespace keyfs::test {

class PowerLossEnv final : public Env {
 public:
  // What survives of the changes that were not made durable.
  enum class Survival {
    kNone,        // nothing: the strict reading of fsync's contract
    kDataOnly,    // every unsynced write, no unsynced directory operation
    kNamesOnly,   // every unsynced directory operation, no unsynced write (delayed
                  // allocation: a renamed file whose data never reached the disk)
    kEverything,  // all of it (what a process crash leaves)
    kRandom,      // a random prefix of each file's writes and of the directory's operations
    kReordered,   // a random prefix of each file's writes; ANY subset of the directory's
                  // operations (a filesystem without a journal writes directory blocks in
                  // no particular order: only a directory fsync orders them)
  };
  static constexpr Survival kAllSurvivals[] = {Survival::kNone,      Survival::kDataOnly,
                                               Survival::kNamesOnly, Survival::kEverything,
                                               Survival::kRandom,    Survival::kReordered};
  static const char* SurvivalName(Survival s) {
    switch (s) {
      case Survival::kNone:
        return "none";
      case Survival::kReordered:
        return "reordered directory operations";
      case Survival::kDataOnly:
        return "data-only";
      case Survival::kNamesOnly:
        return "names-only";
      case Survival::kEverything:
        return "everything";
      case Survival::kRandom:
        return "random";
    }
    return "?";
  }

  // Models `dir` (no trailing slash) as it is now, all of it durable.
  explicit PowerLossEnv(std::string dir) : dir_(std::move(dir)) {
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) return;
    while (dirent* de = ::readdir(d)) {
      std::string name = de->d_name;
      if (!Tracked(name)) continue;
      struct stat st;
      if (::stat((dir_ + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      const int ino = NewInode();
      inodes_[ino].durable = inodes_[ino].current = ReadAll(dir_ + "/" + name);
      durable_names_[name] = names_[name] = ino;
    }
    ::closedir(d);
  }

  // Step `n` (1 = the first step from the start) and all later ones fail: 0 = never.
  void CutPowerAt(int n) {
    std::lock_guard<std::mutex> l(mu_);
    cut_at_ = n;
  }
  bool power_off() const {
    std::lock_guard<std::mutex> l(mu_);
    return off_;
  }
  int steps() const {
    std::lock_guard<std::mutex> l(mu_);
    return static_cast<int>(log_.size());
  }
  // "fsync STORE.tmp-1-2" for step n (1-based).
  std::string StepName(int n) const {
    std::lock_guard<std::mutex> l(mu_);
    return n >= 1 && n <= static_cast<int>(log_.size()) ? log_[n - 1] : "(none)";
  }
  int count(const std::string& kind) const {
    std::lock_guard<std::mutex> l(mu_);
    int n = 0;
    for (const std::string& s : log_) n += s.compare(0, kind.size() + 1, kind + " ") == 0;
    return n;
  }

  // Rewrites the directory to what survives the cut. Call once the engine is closed; may
  // be called again (with another mode) to start over from the same cut.
  void ApplyPowerLoss(Survival mode, uint64_t seed = 0) const {
    std::lock_guard<std::mutex> l(mu_);
    std::mt19937_64 rng(seed);
    auto keep = [&](size_t n, bool data) -> size_t {
      switch (mode) {
        case Survival::kNone:
          return 0;
        case Survival::kDataOnly:
          return data ? n : 0;
        case Survival::kNamesOnly:
          return data ? 0 : n;
        case Survival::kEverything:
          return n;
        case Survival::kRandom:
        case Survival::kReordered:
          return static_cast<size_t>(rng() % (n + 1));
      }
      return 0;
    };
    std::map<std::string, int> names = durable_names_;
    if (mode == Survival::kReordered) {
      for (const DirOp& op : dir_ops_) {
        if (rng() % 2 == 0) op.ApplyTo(&names, /*lenient=*/true);
      }
    } else {
      const size_t ops = keep(dir_ops_.size(), false);
      for (size_t i = 0; i < ops; ++i) dir_ops_[i].ApplyTo(&names);
    }

    // Remove what is there, then write what survived.
    DIR* d = ::opendir(dir_.c_str());
    while (dirent* de = d ? ::readdir(d) : nullptr) {
      if (Tracked(de->d_name)) ::unlink((dir_ + "/" + de->d_name).c_str());
    }
    if (d) ::closedir(d);
    std::map<int, std::string> written;  // inode -> the name it was written under
    for (const auto& [name, ino] : names) {
      const std::string path = dir_ + "/" + name;
      if (auto w = written.find(ino); w != written.end()) {
        if (::link(w->second.c_str(), path.c_str()) != 0) abort();
        continue;
      }
      const Inode& in = inodes_.at(ino);
      std::string content = in.durable;
      const size_t changes = keep(in.unsynced.size(), true);
      for (size_t i = 0; i < changes; ++i) in.unsynced[i].ApplyTo(&content);
      int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0 ||
          ::write(fd, content.data(), content.size()) != static_cast<ssize_t>(content.size())) {
        abort();
      }
      ::close(fd);
      written[ino] = path;
    }
  }

  // The Env.
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string name;
    KEYFS_RETURN_IF_ERROR(Step("create", path, &name));
    auto f = Env::Default()->NewExclusiveFile(path);
    if (!f.ok()) return f.status();
    const int ino = NewInode();
    names_[name] = ino;
    dir_ops_.push_back({DirOp::kBind, name, "", ino});
    return std::unique_ptr<WritableFile>(new File(this, std::move(*f), ino, name));
  }
  StatusOr<std::unique_ptr<WritableFile>> ReopenForRewrite(const std::string& path) override {
    std::lock_guard<std::mutex> l(mu_);
    if (off_) return Status::FromErrno(EIO, "power is off: reopen " + path);
    std::string name;
    KEYFS_RETURN_IF_ERROR(NameOf(path, &name));
    auto it = names_.find(name);
    if (it == names_.end()) return Status::NotFound("PowerLossEnv: no file " + path);
    auto f = Env::Default()->ReopenForRewrite(path);
    if (!f.ok()) return f.status();
    return std::unique_ptr<WritableFile>(new File(this, std::move(*f), it->second, name));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    return Move(from, to, false);
  }
  Status RenameNoReplace(const std::string& from, const std::string& to) override {
    return Move(from, to, true);
  }
  Status Link(const std::string& from, const std::string& to) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string a, b;
    KEYFS_RETURN_IF_ERROR(NameOf(from, &a));
    KEYFS_RETURN_IF_ERROR(Step("link", to, &b));
    KEYFS_RETURN_IF_ERROR(Env::Default()->Link(from, to));
    names_[b] = names_.at(a);
    dir_ops_.push_back({DirOp::kBind, b, "", names_[b]});
    return Status::OK();
  }
  Status RemoveFile(const std::string& path) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string name;
    KEYFS_RETURN_IF_ERROR(Step("remove", path, &name));
    KEYFS_RETURN_IF_ERROR(Env::Default()->RemoveFile(path));
    names_.erase(name);
    dir_ops_.push_back({DirOp::kUnbind, name, "", 0});
    return Status::OK();
  }
  Status SyncDir(const std::string& dir) override {
    std::lock_guard<std::mutex> l(mu_);
    if (dir != dir_) return Status::InvalidArgument("PowerLossEnv models " + dir_ + ", not " + dir);
    KEYFS_RETURN_IF_ERROR(Step("fsync-dir", dir + "/.", nullptr));
    KEYFS_RETURN_IF_ERROR(Env::Default()->SyncDir(dir));
    durable_names_ = names_;
    dir_ops_.clear();
    return Status::OK();
  }

 private:
  // One change of a file not yet made durable: data at an offset, or a new size.
  struct Change {
    bool truncate = false;
    uint64_t offset = 0;  // truncate: the new size
    std::string data;
    void ApplyTo(std::string* content) const {
      if (truncate) {
        content->resize(offset, '\0');
        return;
      }
      if (content->size() < offset + data.size()) content->resize(offset + data.size(), '\0');
      content->replace(offset, data.size(), data);
    }
  };
  struct Inode {
    std::string durable, current;
    std::vector<Change> unsynced;
  };
  // One directory operation not yet made durable.
  struct DirOp {
    enum Kind { kBind, kUnbind, kMove } kind;
    std::string name, to;  // kMove: name -> to
    int ino = 0;           // kBind; kMove: the inode moved
    // lenient: a move whose source name did not survive still binds its inode to `to`
    // (the directory block holding the new name reached the disk, the old one's did not).
    void ApplyTo(std::map<std::string, int>* names, bool lenient = false) const {
      switch (kind) {
        case kBind:
          (*names)[name] = ino;
          break;
        case kUnbind:
          names->erase(name);
          break;
        case kMove: {
          auto it = names->find(name);
          if (it == names->end() && !lenient) abort();  // the model is inconsistent
          if (it != names->end()) names->erase(it);
          (*names)[to] = ino;
          break;
        }
      }
    }
  };

  class File final : public WritableFile {
   public:
    File(PowerLossEnv* env, std::unique_ptr<WritableFile> base, int ino, std::string name)
        : env_(env), base_(std::move(base)), ino_(ino), name_(std::move(name)) {}
    Status Append(std::string_view data) override {
      KEYFS_RETURN_IF_ERROR(WriteAt(offset_, data));
      offset_ += data.size();
      return Status::OK();
    }
    Status WriteAt(uint64_t offset, std::string_view data) override {
      std::lock_guard<std::mutex> l(env_->mu_);
      KEYFS_RETURN_IF_ERROR(env_->Step("write", env_->dir_ + "/" + name_, nullptr));
      KEYFS_RETURN_IF_ERROR(base_->WriteAt(offset, data));
      Inode& in = env_->inodes_[ino_];
      // Page by page: a disk may keep any prefix of the pages it was given.
      while (!data.empty()) {
        const size_t n = std::min<size_t>(data.size(), kPage - offset % kPage);
        Change c{false, offset, std::string(data.substr(0, n))};
        c.ApplyTo(&in.current);
        in.unsynced.push_back(std::move(c));
        data.remove_prefix(n);
        offset += n;
      }
      return Status::OK();
    }
    Status Truncate(uint64_t size) override {
      std::lock_guard<std::mutex> l(env_->mu_);
      KEYFS_RETURN_IF_ERROR(env_->Step("truncate", env_->dir_ + "/" + name_, nullptr));
      KEYFS_RETURN_IF_ERROR(base_->Truncate(size));
      Inode& in = env_->inodes_[ino_];
      Change c{true, size, {}};
      c.ApplyTo(&in.current);
      in.unsynced.push_back(std::move(c));
      return Status::OK();
    }
    Status Sync() override {
      std::lock_guard<std::mutex> l(env_->mu_);
      KEYFS_RETURN_IF_ERROR(env_->Step("fsync", env_->dir_ + "/" + name_, nullptr));
      KEYFS_RETURN_IF_ERROR(base_->Sync());
      Inode& in = env_->inodes_[ino_];
      in.durable = in.current;
      in.unsynced.clear();
      return Status::OK();
    }
    Status Close() override { return base_->Close(); }
    int fd() const override { return base_->fd(); }

   private:
    static constexpr uint64_t kPage = 4096;
    PowerLossEnv* const env_;
    std::unique_ptr<WritableFile> base_;
    const int ino_;
    const std::string name_;
    uint64_t offset_ = 0;
  };

  static bool Tracked(const std::string& name) {
    return name != "." && name != ".." &&
           !(name.size() > 5 && name.compare(name.size() - 5, 5, ".lock") == 0);
  }
  int NewInode() {
    inodes_.emplace(next_ino_, Inode{});
    return next_ino_++;
  }
  // REQUIRES: mu_ held. `path` must be in the modelled directory.
  Status NameOf(const std::string& path, std::string* name) const {
    const size_t slash = path.rfind('/');
    if (slash == std::string::npos || path.substr(0, slash) != dir_) {
      return Status::InvalidArgument("PowerLossEnv models " + dir_ + ", not " + path);
    }
    *name = path.substr(slash + 1);
    return Status::OK();
  }
  // REQUIRES: mu_ held. Counts a step; EIO if the power is (now) off.
  Status Step(const std::string& kind, const std::string& path, std::string* name) {
    std::string n;
    KEYFS_RETURN_IF_ERROR(NameOf(path, &n));
    if (name) *name = n;
    if (off_) return Status::FromErrno(EIO, "power is off: " + kind + " " + path);
    log_.push_back(kind + " " + n);
    if (cut_at_ > 0 && static_cast<int>(log_.size()) >= cut_at_) {
      off_ = true;
      return Status::FromErrno(EIO, "power cut at: " + kind + " " + path);
    }
    return Status::OK();
  }
  Status Move(const std::string& from, const std::string& to, bool no_replace) {
    std::lock_guard<std::mutex> l(mu_);
    std::string a, b;
    KEYFS_RETURN_IF_ERROR(NameOf(from, &a));
    KEYFS_RETURN_IF_ERROR(Step("rename", to, &b));
    KEYFS_RETURN_IF_ERROR(no_replace ? Env::Default()->RenameNoReplace(from, to)
                                     : Env::Default()->Rename(from, to));
    if (names_.count(a) == 0) return Status::Corruption("PowerLossEnv: unknown file " + from);
    const int ino = names_[a];
    names_.erase(a);
    names_[b] = ino;
    dir_ops_.push_back({DirOp::kMove, a, b, ino});
    return Status::OK();
  }

  const std::string dir_;
  mutable std::mutex mu_;
  std::map<int, Inode> inodes_;
  int next_ino_ = 1;
  std::map<std::string, int> names_, durable_names_;
  std::vector<DirOp> dir_ops_;
  std::vector<std::string> log_;  // every step taken, "kind name"
  int cut_at_ = 0;
  bool off_ = false;
};

}  // namespace keyfs::test
