// Reading a directory tree into one Batch for `keyfsctl import` (see tree_import.h).
// The walk goes through directory descriptors (openat/fstatat relative to the parent), so a
// path is never resolved twice and a symlink is never followed.
#include "tree_import.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>
#include <vector>

#include "dir_names.h"
#include "error_text.h"
#include "unique_fd.h"

namespace keyfs::ctl {
namespace {

Meta MetaOf(const struct stat& st, EntryType type) {
  Meta m;
  m.type = type;
  m.mode = st.st_mode & 07777;
  m.uid = st.st_uid;
  m.gid = st.st_gid;
  m.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  m.atime_ns = int64_t{st.st_atim.tv_sec} * 1'000'000'000 + st.st_atim.tv_nsec;
  return m;  // the engine stamps the ctime with the commit time
}

const char* KindOf(mode_t mode) {
  if (S_ISFIFO(mode)) return "a fifo";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "a file of unknown type";
}

// The names in the directory open at `dfd` (without "." and ".."), sorted bytewise, so the
// batch and the first error reported do not depend on readdir order.
Status ReadNames(int dfd, const std::string& path, std::vector<std::string>* names) {
  KEYFS_RETURN_IF_ERROR(ForEachName(dfd, path, [&](std::string_view name) {
    names->emplace_back(name);
    return true;
  }));
  std::sort(names->begin(), names->end());
  return Status::OK();
}

class TreeScanner {
 public:
  TreeScanner(std::string root, Batch* batch) : root_(std::move(root)), batch_(batch) {}

  // Adds the entries below the directory open at `dfd`, whose key is `dir_key` ("" = root).
  Status ScanDir(int dfd, const std::string& dir_key) {
    std::vector<std::string> names;
    KEYFS_RETURN_IF_ERROR(ReadNames(dfd, PathOf(dir_key), &names));
    for (const std::string& name : names) {
      std::string key = dir_key.empty() ? name : dir_key + "/" + name;
      if (Status v = ValidateKey(key); !v.ok()) {
        return Failure(Printable(PathOf(key)) +
                       ": cannot import: invalid key: " + std::string(v.message()));
      }
      struct stat st;
      if (::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return Failure(ErrnoText(PathOf(key), errno));
      }
      if (S_ISDIR(st.st_mode)) {
        KEYFS_RETURN_IF_ERROR(AddDir(dfd, name, key));
      } else if (S_ISREG(st.st_mode)) {
        KEYFS_RETURN_IF_ERROR(AddFile(dfd, name, key));
      } else if (S_ISLNK(st.st_mode)) {
        KEYFS_RETURN_IF_ERROR(AddSymlink(dfd, name, key, st));
      } else {
        return Unsupported(key, st.st_mode);
      }
    }
    return Status::OK();
  }

  // Sets every directory's metadata again, children before parents, after all the puts.
  void FinishDirs() {
    for (auto& [key, meta] : dirs_) batch_->SetMeta(std::move(key), meta);
    dirs_.clear();
  }

 private:
  std::string PathOf(const std::string& key) const {
    if (key.empty()) return root_;
    return root_.ends_with('/') ? root_ + key : root_ + "/" + key;
  }

  Status Unsupported(const std::string& key, mode_t mode) const {
    return Failure(Printable(PathOf(key)) + ": cannot import " + KindOf(mode) +
                   " (only files, directories and symlinks)");
  }

  Status AddDir(int dfd, const std::string& name, const std::string& key) {
    UniqueFd sub(::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.valid()) return Failure(ErrnoText(PathOf(key), errno));
    struct stat st;
    if (::fstat(sub.get(), &st) != 0) return Failure(ErrnoText(PathOf(key), errno));
    Meta meta = MetaOf(st, EntryType::kDir);
    Mutation m;
    m.op = Mutation::Op::kMkdir;
    m.key = key;
    m.meta = meta;
    m.exist_ok = true;
    m.make_parents = true;
    batch_->Add(std::move(m));
    KEYFS_RETURN_IF_ERROR(ScanDir(sub.get(), key));
    dirs_.emplace_back(key, meta);
    return Status::OK();
  }

  Status AddFile(int dfd, const std::string& name, const std::string& key) {
    // O_NONBLOCK: if the file was swapped for a fifo since fstatat, open must not hang.
    UniqueFd fd(
        ::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (!fd.valid()) return Failure(ErrnoText(PathOf(key), errno));
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Failure(ErrnoText(PathOf(key), errno));
    if (!S_ISREG(st.st_mode)) return Unsupported(key, st.st_mode);
    std::string value;
    value.reserve(static_cast<size_t>(st.st_size));
    char buf[1 << 16];
    while (true) {
      ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Failure(ErrnoText(PathOf(key), errno));
      }
      if (n == 0) break;
      value.append(buf, static_cast<size_t>(n));
    }
    Mutation m;
    m.op = Mutation::Op::kPut;
    m.key = key;
    m.value = std::move(value);
    m.meta = MetaOf(st, EntryType::kFile);
    m.make_parents = true;
    batch_->Add(std::move(m));
    return Status::OK();
  }

  Status AddSymlink(int dfd, const std::string& name, const std::string& key,
                    const struct stat& st) {
    // st_size is the target's length on most file systems, 0 on some (procfs): grow as needed.
    std::string target(std::max<size_t>(static_cast<size_t>(st.st_size) + 1, 256), '\0');
    while (true) {
      ssize_t n = ::readlinkat(dfd, name.c_str(), target.data(), target.size());
      if (n < 0) return Failure(ErrnoText(PathOf(key), errno));
      if (static_cast<size_t>(n) < target.size()) {
        target.resize(static_cast<size_t>(n));
        break;
      }
      target.resize(target.size() * 2);
    }
    Mutation m;
    m.op = Mutation::Op::kPut;
    m.key = key;
    m.value = std::move(target);
    m.meta = MetaOf(st, EntryType::kSymlink);
    m.make_parents = true;
    batch_->Add(std::move(m));
    return Status::OK();
  }

  std::string root_;
  Batch* batch_;
  std::vector<std::pair<std::string, Meta>> dirs_;  // post-order: children before parents
};

}  // namespace

Status ScanTree(const std::string& dir, Batch* batch) {
  UniqueFd root(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return Failure(ErrnoText(dir, errno));
  TreeScanner scanner(dir, batch);
  KEYFS_RETURN_IF_ERROR(scanner.ScanDir(root.get(), ""));
  scanner.FinishDirs();
  return Status::OK();
}

}  // namespace keyfs::ctl
