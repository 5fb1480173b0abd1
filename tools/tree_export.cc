// Writing a store out as a directory tree for `keyfsctl export` (see tree_export.h).
#include "tree_export.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "dir_names.h"
#include "error_text.h"
#include "unique_fd.h"

namespace keyfs::ctl {
namespace {

constexpr int64_t kNsPerSec = 1'000'000'000;

// {atime, mtime} of an entry, for futimens/utimensat.
struct Times {
  explicit Times(const Meta& m) {
    Set(&times[0], m.atime_ns);
    Set(&times[1], m.mtime_ns);
  }
  static void Set(struct timespec* t, int64_t ns) {
    int64_t sec = ns / kNsPerSec, rem = ns % kNsPerSec;
    if (rem < 0) {  // floor, for times before 1970
      rem += kNsPerSec;
      --sec;
    }
    t->tv_sec = static_cast<time_t>(sec);
    t->tv_nsec = static_cast<long>(rem);
  }
  struct timespec times[2];
};

// True if the directory open at `fd` has no entry but "." and "..".
Status IsEmptyDir(int fd, const std::string& path, bool* empty) {
  *empty = true;
  return ForEachName(fd, path, [&](std::string_view) { return *empty = false; });
}

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Failure(ErrnoText(path, errno));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::OK();
}

class TreeExporter {
 public:
  TreeExporter(const Engine& engine, const std::string& store, const std::string& root)
      : engine_(engine), store_(store), root_(root), chown_(::geteuid() == 0) {}

  // Writes the children of directory `dir_key` ("" = root) into the directory open at `dfd`.
  Status ExportDir(int dfd, const std::string& dir_key) {
    struct Child {
      std::string name;
      Meta meta;
    };
    // Collected first: the engine's listing callback must not re-enter the engine.
    std::vector<Child> children;
    Status s = engine_.List(dir_key, "", [&](const DirEntry& e) {
      children.push_back({std::string(e.name), e.meta});
      return true;
    });
    if (!s.ok()) return Failure(StoreErrorText(store_, s));
    for (const Child& c : children) {
      std::string key = dir_key.empty() ? c.name : dir_key + "/" + c.name;
      // The store checks its keys, but a name that is not one plain component would let
      // openat() leave `dfd`: check it again.
      if (c.name.find('/') != std::string::npos || !ValidateKey(c.name).ok()) {
        return Failure(Printable(store_) + ": corruption: invalid name '" + Printable(c.name) +
                       "' in directory '" + Printable(dir_key) + "'");
      }
      switch (c.meta.type) {
        case EntryType::kDir:
          KEYFS_RETURN_IF_ERROR(MakeDir(dfd, c.name, key, c.meta));
          break;
        case EntryType::kFile:
        case EntryType::kSymlink:
          KEYFS_RETURN_IF_ERROR(MakeLeaf(dfd, c.name, key));
          break;
        default:
          return Failure(Printable(store_) + ": corruption: unknown entry type of '" +
                         Printable(key) + "'");
      }
    }
    return Status::OK();
  }

 private:
  std::string PathOf(const std::string& key) const {
    return root_.ends_with('/') ? root_ + key : root_ + "/" + key;
  }

  // Owner, mode and mtime of the file or directory open at `fd`, in that order: chown clears
  // set-id bits, and chmod must come after it.
  Status ApplyMeta(int fd, const Meta& meta, const std::string& key) {
    if (chown_ && ::fchown(fd, meta.uid, meta.gid) != 0 && errno != EPERM) {
      return Failure(ErrnoText(PathOf(key), errno));
    }
    if (::fchmod(fd, meta.mode & 07777) != 0) return Failure(ErrnoText(PathOf(key), errno));
    Times t(meta);
    if (::futimens(fd, t.times) != 0) return Failure(ErrnoText(PathOf(key), errno));
    return Status::OK();
  }

  Status MakeDir(int dfd, const std::string& name, const std::string& key, const Meta& meta) {
    // 0700 until its children are in: the final mode may forbid writing them.
    if (::mkdirat(dfd, name.c_str(), 0700) != 0) return Failure(ErrnoText(PathOf(key), errno));
    UniqueFd sub(::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.valid()) return Failure(ErrnoText(PathOf(key), errno));
    KEYFS_RETURN_IF_ERROR(ExportDir(sub.get(), key));
    return ApplyMeta(sub.get(), meta, key);
  }

  // A file or symlink: its value comes from Get, so meta and value are of one version.
  Status MakeLeaf(int dfd, const std::string& name, const std::string& key) {
    StatusOr<Record> rec = engine_.Get(key);
    if (!rec.ok()) {
      const Status& s = rec.status();
      return Failure(IsKeyError(s) ? Printable(store_) + ": " + KeyErrorText(key, s)
                                   : StoreErrorText(store_, s));
    }
    if (rec->meta.type == EntryType::kSymlink) return MakeSymlink(dfd, name, key, *rec);
    if (rec->meta.type != EntryType::kFile) {
      return Failure(Printable(store_) + ": '" + Printable(key) + "' changed type during export");
    }
    UniqueFd fd(::openat(dfd, name.c_str(),
                         O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0600));
    if (!fd.valid()) return Failure(ErrnoText(PathOf(key), errno));
    KEYFS_RETURN_IF_ERROR(WriteAll(fd.get(), rec->value, PathOf(key)));
    KEYFS_RETURN_IF_ERROR(ApplyMeta(fd.get(), rec->meta, key));
    if (fd.Close() != 0) return Failure(ErrnoText(PathOf(key), errno));
    return Status::OK();
  }

  Status MakeSymlink(int dfd, const std::string& name, const std::string& key, const Record& rec) {
    std::string target(rec.value);
    if (target.empty() || target.find('\0') != std::string::npos) {
      return Failure(Printable(store_) + ": corruption: invalid symlink target of '" +
                     Printable(key) + "'");
    }
    if (::symlinkat(target.c_str(), dfd, name.c_str()) != 0) {
      return Failure(ErrnoText(PathOf(key), errno));
    }
    if (chown_ &&
        ::fchownat(dfd, name.c_str(), rec.meta.uid, rec.meta.gid, AT_SYMLINK_NOFOLLOW) != 0 &&
        errno != EPERM) {
      return Failure(ErrnoText(PathOf(key), errno));
    }
    // A symlink's own mode cannot be set on Linux; its times can.
    Times t(rec.meta);
    if (::utimensat(dfd, name.c_str(), t.times, AT_SYMLINK_NOFOLLOW) != 0) {
      return Failure(ErrnoText(PathOf(key), errno));
    }
    return Status::OK();
  }

  const Engine& engine_;
  const std::string& store_;
  const std::string& root_;
  const bool chown_;
};

}  // namespace

Status ExportTree(const Engine& engine, const std::string& store, const std::string& dir) {
  UniqueFd root(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) {
    if (errno != ENOENT) return Failure(ErrnoText(dir, errno));
    if (::mkdir(dir.c_str(), 0777) != 0) return Failure(ErrnoText(dir, errno));
    root = UniqueFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!root.valid()) return Failure(ErrnoText(dir, errno));
  } else {
    bool empty = false;
    KEYFS_RETURN_IF_ERROR(IsEmptyDir(root.get(), dir, &empty));
    if (!empty) {
      return Failure(Printable(dir) + ": not empty (export needs an absent or empty directory)");
    }
  }
  TreeExporter exporter(engine, store, dir);
  return exporter.ExportDir(root.get(), "");
}

}  // namespace keyfs::ctl
