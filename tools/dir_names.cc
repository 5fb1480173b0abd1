// ForEachName; see dir_names.h.
#include "dir_names.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "error_text.h"

namespace keyfs::ctl {

Status ForEachName(int fd, const std::string& path,
                   const std::function<bool(std::string_view name)>& fn) {
  const int dup_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return Failure(ErrnoText(path, errno));
  DIR* d = ::fdopendir(dup_fd);
  if (d == nullptr) {
    const int err = errno;
    ::close(dup_fd);
    return Failure(ErrnoText(path, err));
  }
  while (true) {
    errno = 0;
    const struct dirent* e = ::readdir(d);
    if (e == nullptr) break;
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    if (!fn(name)) {
      errno = 0;
      break;
    }
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) return Failure(ErrnoText(path, err));
  return Status::OK();
}

}  // namespace keyfs::ctl
