// A small pool of threads for requests that block (a commit waits for a durable write, a
// sync for a whole merge), so libfuse's loop thread keeps answering lookups and reads.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
};

}  // namespace keyfs::fs
