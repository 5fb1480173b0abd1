// StoreWatcher; see store_watcher.h.
#include "store_watcher.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "file_util.h"

namespace keyfs {

StatusOr<std::unique_ptr<StoreWatcher>> StoreWatcher::Start(
    const std::string& path, std::function<void(bool changed)> on_wake,
    std::vector<std::string> also) {
  std::unique_ptr<StoreWatcher> w(new StoreWatcher());
  w->name_ = FileName(path);
  const std::string dir = DirName(path);
  w->on_wake_ = std::move(on_wake);
  w->also_ = std::move(also);
  uint32_t mask = IN_MOVED_TO | IN_CLOSE_WRITE;
  if (!w->also_.empty()) mask |= IN_MODIFY | IN_CREATE | IN_DELETE;
  w->inotify_fd_ = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (w->inotify_fd_ < 0) return Status::FromErrno(errno, "inotify_init1");
  if (::inotify_add_watch(w->inotify_fd_, dir.c_str(), mask) < 0) {
    return Status::FromErrno(errno, "inotify_add_watch " + dir);
  }
  w->stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (w->stop_fd_ < 0) return Status::FromErrno(errno, "eventfd");
  StoreWatcher* raw = w.get();
  w->thread_ = std::thread([raw] { raw->Loop(); });
  return w;
}

StoreWatcher::~StoreWatcher() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

void StoreWatcher::Loop() {
  alignas(inotify_event) char buf[8192];
  while (true) {
    pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    const int r = ::poll(fds, 2, 1000);
    if (r < 0 && errno != EINTR) return;
    if (fds[1].revents) return;
    bool changed = r == 0;
    if (fds[0].revents & POLLIN) {
      ssize_t n;
      while ((n = ::read(inotify_fd_, buf, sizeof(buf))) > 0) {
        for (char* p = buf; p < buf + n;) {
          auto* ev = reinterpret_cast<inotify_event*>(p);
          if (ev->len > 0) {
            if (name_ == ev->name) changed = true;
            for (const std::string& a : also_) changed = changed || a == ev->name;
          }
          p += sizeof(inotify_event) + ev->len;
        }
      }
    }
    on_wake_(changed);
  }
}

}  // namespace keyfs
