// A small pool of threads for requests that block (a commit waits for a durable write, a
// sync for a whole merge), so libfuse's loop thread keeps answering lookups and reads.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "keyfs/base/mutex.h"

namespace keyfs::fs {

// Thread-safety: Submit may be called from any thread; Start and Stop from one.
class WorkerPool {
 public:
  ~WorkerPool() { Stop(); }
  void Start(unsigned n);
  // Runs fn on a worker; jobs run in no particular order. fn must not throw.
  void Submit(std::function<void()> fn);
  // Runs every queued job, then joins the threads.
  void Stop();

 private:
  void Run();

  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  std::vector<std::thread> threads_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
};

}  // namespace keyfs::fs
