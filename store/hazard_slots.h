// HazardSlots: lets readers use an object through a raw pointer, without a lock or a
// reference count, while a writer may replace it (hazard pointers, after M. Michael 2004).
// Internal to store/.
//
// A reader announces the object it is about to read in a slot of its own (one compare-and-
// swap on a cache line no other thread normally writes), re-reads the published pointer
// and, if it is unchanged, reads the object until it clears the slot. A writer that has
// unpublished an object calls WaitUnused before dropping it: every reader that could still
// see it has announced it by then (both sides use sequentially consistent operations, so
// either the writer sees the announcement or the reader sees the new pointer).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>

namespace keyfs {

template <class T>
class HazardSlots {
 public:
  // More readers at once than slots take the caller's slow path.
  static constexpr size_t kSlots = 64;

  // A slot held by this reader, or none (then use the slow path).
  class Guard {
   public:
    Guard() = default;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() {
      if (slot_ != nullptr) slot_->store(nullptr, std::memory_order_release);
    }
    explicit operator bool() const { return slot_ != nullptr; }

   private:
    friend class HazardSlots;
    std::atomic<const T*>* slot_ = nullptr;
  };

  // Announces `p`, then checks that `published` still holds it. On success *g holds a slot
  // and *p may be read until *g is destroyed; on failure (the pointer changed, or every slot
  // is taken) *g holds nothing. REQUIRES: p != nullptr.
  void Protect(const std::atomic<const T*>& published, const T* p, Guard* g) {
    const size_t start = Home();
    for (size_t i = 0; i < kSlots; ++i) {
      std::atomic<const T*>& s = slots_[(start + i) % kSlots].ptr;
      const T* expected = nullptr;
      if (s.load(std::memory_order_relaxed) != nullptr ||
          !s.compare_exchange_strong(expected, p, std::memory_order_seq_cst)) {
        continue;
      }
      if (published.load(std::memory_order_seq_cst) == p) {
        g->slot_ = &s;
      } else {
        s.store(nullptr, std::memory_order_release);
      }
      return;
    }
  }

  // Returns once no reader holds `p`. REQUIRES: `p` is no longer published (the store that
  // unpublished it happened before this call).
  void WaitUnused(const T* p) const {
    for (const Slot& s : slots_) {
      while (s.ptr.load(std::memory_order_seq_cst) == p) std::this_thread::yield();
    }
  }

 private:
  struct alignas(64) Slot {
    std::atomic<const T*> ptr{nullptr};
  };
  // Where this thread starts looking: threads spread over the slots.
  static size_t Home() {
    static std::atomic<size_t> next{0};
    static thread_local const size_t home = next.fetch_add(1, std::memory_order_relaxed) % kSlots;
    return home;
  }
  Slot slots_[kSlots];
};

}  // namespace keyfs
