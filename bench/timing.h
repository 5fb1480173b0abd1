// Timing for keyfs_bench: a steady clock, medians and percentiles, measurements repeated in
// interleaved rounds, and CPU pinning. On a shared VM the host's noise moves every figure, so
// keyfs and its references run alternately in the same rounds and are compared per round.
#pragma once

#include <sched.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace keyfs::bench {

using Clock = std::chrono::steady_clock;

// Seconds from `start` to `end` (default: now).
double Seconds(Clock::time_point start, Clock::time_point end = Clock::now());

// The median of `v` (the mean of the middle two for an even size). REQUIRES: !v.empty().
double Median(std::vector<double> v);
// Nearest-rank percentile, p in (0, 100]: the smallest sample with at least p% of the
// samples <= it. REQUIRES: !v.empty().
double Percentile(std::vector<double> v, double p);
// The median over rounds of a[r] / b[r]: the ratio of two contenders measured in the same
// round, so noise that hits a whole round cancels. REQUIRES: a.size() == b.size() > 0.
double PairedRatio(const std::vector<double>& a, const std::vector<double>& b);

// Keeps `value` observable so the compiler cannot drop the work that produced it.
template <class T>
inline void KeepAlive(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

// One side of an interleaved measurement: `run` does the work once and returns how many
// operations it did.
struct Contender {
  std::string name;
  std::function<uint64_t()> run;
};

// Runs each contender once untimed (warm-up: page faults, lazily verified chunks, caches),
// then `rounds` rounds in which every contender runs once, the order rotated by one each
// round. Returns nanoseconds per operation, indexed [contender][round].
std::vector<std::vector<double>> MeasureInterleaved(const std::vector<Contender>& contenders,
                                                    int rounds);

// Pins the calling thread to `cpu` (-1: the CPU it is running on) for the object's
// lifetime, then restores its previous affinity. Threads created meanwhile inherit the pin,
// so create none. If sched_setaffinity fails the thread runs unpinned and ok() is false.
class CpuPin {
 public:
  explicit CpuPin(int cpu = -1);
  ~CpuPin();
  CpuPin(const CpuPin&) = delete;
  CpuPin& operator=(const CpuPin&) = delete;

  bool ok() const { return ok_; }
  int cpu() const { return cpu_; }

 private:
  cpu_set_t previous_;
  bool have_previous_ = false;
  bool ok_ = false;
  int cpu_ = -1;
};

}  // namespace keyfs::bench
