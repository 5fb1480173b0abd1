// WorkerPool (worker_pool.h).
#include "worker_pool.h"

namespace keyfs::fs {

void WorkerPool::Start(unsigned n) {
  MutexLock l(&mu_);
  stopping_ = false;
  for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { Run(); });
}

void WorkerPool::Submit(std::function<void()> fn) {
  {
    MutexLock l(&mu_);
    queue_.push_back(std::move(fn));
  }
  cv_.NotifyOne();
}

void WorkerPool::Stop() {
  std::vector<std::thread> threads;
  {
    MutexLock l(&mu_);
    stopping_ = true;
    threads.swap(threads_);
  }
  cv_.NotifyAll();
  for (auto& t : threads) t.join();
}

void WorkerPool::Run() {
  while (true) {
    std::function<void()> fn;
    {
      MutexLock l(&mu_);
      cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

}  // namespace keyfs::fs
