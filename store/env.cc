// The default Env: plain POSIX calls, EINTR retried, short writes completed.
#include "keyfs/store/env.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>

#include "failpoint.h"

namespace keyfs {
namespace {

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  Status Append(std::string_view data) override {
    KEYFS_RETURN_IF_ERROR(WriteAt(offset_, data));
    offset_ += data.size();
    return Status::OK();
  }

  Status WriteAt(uint64_t offset, std::string_view data) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.write"));
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      ssize_t n = ::pwrite(fd_, p, left, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, "write " + path_);
      }
      if (n == 0) return Status::IOError("write " + path_ + ": wrote nothing");
      p += n;
      left -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
    return Status::OK();
  }

  Status Sync() override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.fsync"));
    if (::fdatasync(fd_) != 0) return Status::FromErrno(errno, "fsync " + path_);
    return Status::OK();
  }

  Status Close() override {
    if (fd_ < 0) return Status::IOError("close " + path_ + ": already closed");
    int r = ::close(fd_);
    fd_ = -1;
    if (r != 0) return Status::FromErrno(errno, "close " + path_);
    return Status::OK();
  }

  int fd() const override { return fd_; }

  Status Truncate(uint64_t size) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.truncate"));
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return Status::FromErrno(errno, "truncate " + path_);
    }
    return Status::OK();
  }

 private:
  int fd_;
  std::string path_;
  uint64_t offset_ = 0;
};

class PosixEnv final : public Env {
 public:
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.create"));
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno(errno, "create " + path);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
  }

  Status Rename(const std::string& from, const std::string& to) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.rename"));
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return Status::FromErrno(errno, "rename " + from + " to " + to);
    }
    return Status::OK();
  }

  Status RenameNoReplace(const std::string& from, const std::string& to) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.rename"));
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0) {
      if (errno == EEXIST) return Status::AlreadyExists(to + " already exists");
      return Status::FromErrno(errno, "rename " + from + " to " + to);
    }
    return Status::OK();
  }

  Status SyncDir(const std::string& dir) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.fsync_dir"));
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "open directory " + dir);
    int r = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (r != 0) return Status::FromErrno(err, "fsync directory " + dir);
    return Status::OK();
  }

  StatusOr<std::unique_ptr<WritableFile>> ReopenForRewrite(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return Status::FromErrno(errno, "open " + path);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
  }

  Status Link(const std::string& from, const std::string& to) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.link"));
    if (::link(from.c_str(), to.c_str()) != 0) {
      return Status::FromErrno(errno, "link " + from + " to " + to);
    }
    return Status::OK();
  }

  Status RemoveFile(const std::string& path) override {
    KEYFS_RETURN_IF_ERROR(FailPoint("env.remove"));
    if (::unlink(path.c_str()) != 0) return Status::FromErrno(errno, "remove " + path);
    return Status::OK();
  }
};

}  // namespace

Env* Env::Default() {
  static PosixEnv env;
  return &env;
}

}  // namespace keyfs
