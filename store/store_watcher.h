// StoreWatcher: a thread that wakes whenever the file at a path may have been replaced by
// another process (inotify on its directory: a rename onto the name, or a close after
// writing it), and at least once a second in case inotify missed it (a replacement from
// another mount namespace, or a full event queue). Both engines follow other writers
// with it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "keyfs/store/status.h"

namespace keyfs {

class StoreWatcher {
 public:
  // Calls `on_wake(changed)` on the watcher's thread: changed is true when inotify
  // reported the file's name (or on the periodic wake-up), false after events about
  // other names in the directory. Starts the thread; IOError if inotify is unavailable.
  // `also`: names of other files in the same directory whose changes count as the file's
  // (written to, created, renamed onto or removed), e.g. the snapshot engine's commit log.
  static StatusOr<std::unique_ptr<StoreWatcher>> Start(const std::string& path,
                                                       std::function<void(bool changed)> on_wake,
                                                       std::vector<std::string> also = {});
  // Stops and joins the thread (waits for a running on_wake to return).
  ~StoreWatcher();
  StoreWatcher(const StoreWatcher&) = delete;
  StoreWatcher& operator=(const StoreWatcher&) = delete;

 private:
  StoreWatcher() = default;
  void Loop();

  std::string name_;  // the file's name within its directory
  std::vector<std::string> also_;
  std::function<void(bool)> on_wake_;
  int inotify_fd_ = -1, stop_fd_ = -1;
  std::thread thread_;
};

}  // namespace keyfs
