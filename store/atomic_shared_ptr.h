// AtomicSharedPtr: a shared_ptr one thread replaces now and then and many threads copy all the
// time (the snapshot engine's current table). Internal to store/.
//
// Why not std::atomic<std::shared_ptr>: libstdc++ 12 implements it with a lock bit too, and
// its load() releases that bit with a relaxed operation, so the reader's plain read of the
// stored pointer is not ordered before the next store's write of it. That is a data race by
// the C++ memory model (benign on x86, where every read-modify-write is a full barrier) and
// ThreadSanitizer reports it (google/sanitizers#1558). Here the same algorithm, a spin lock
// held for one reference-count increment, releases with release order on every path.
//
// Readers never wait for the writer's work: the writer holds the lock for a pointer swap
// and drops the old pointer after unlocking. (A per-thread cached copy would save the lock
// but let an idle thread pin an old table, and its file, indefinitely.)
#pragma once

#include <atomic>
#include <memory>
#include <thread>
#include <utility>

#include "keyfs/base/thread_annotations.h"

namespace keyfs {

// A test-and-test-and-set spin lock for critical sections of a few instructions that never
// block. Yields to the scheduler if the holder seems preempted.
class CAPABILITY("spin lock") SpinLock {
 public:
  void Lock() ACQUIRE() {
    for (int spins = 0; locked_.exchange(true, std::memory_order_acquire);) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  void Unlock() RELEASE() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

// Thread-safety: every method may be called from any number of threads at once.
template <class T>
class AtomicSharedPtr {
 public:
  AtomicSharedPtr() = default;
  AtomicSharedPtr(const AtomicSharedPtr&) = delete;
  AtomicSharedPtr& operator=(const AtomicSharedPtr&) = delete;

  // A reference to the pointer published last (null before the first Exchange).
  std::shared_ptr<T> Load() const {
    lock_.Lock();
    std::shared_ptr<T> p = ptr_;
    lock_.Unlock();
    return p;
  }

  // Publishes `p`; returns the pointer it replaced, for the caller to drop where dropping
  // it costs nobody (the last reference to a table unmaps it).
  std::shared_ptr<T> Exchange(std::shared_ptr<T> p) {
    lock_.Lock();
    ptr_.swap(p);
    lock_.Unlock();
    return p;
  }

 private:
  mutable SpinLock lock_;
  std::shared_ptr<T> ptr_ GUARDED_BY(lock_);
};

}  // namespace keyfs
