// Timing for keyfs_bench; see timing.h.
#include "timing.h"

#include <algorithm>
#include <cmath>

namespace keyfs::bench {

double Seconds(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double>(end - start).count();
}

double Median(std::vector<double> v) {
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(mid), v.end());
  const double upper = v[mid];
  if (v.size() % 2 == 1) return upper;
  const double lower = *std::max_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(mid));
  return (lower + upper) / 2;
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

double PairedRatio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> ratios;
  ratios.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) ratios.push_back(a[i] / b[i]);
  return Median(std::move(ratios));
}

std::vector<std::vector<double>> MeasureInterleaved(const std::vector<Contender>& contenders,
                                                    int rounds) {
  for (const Contender& c : contenders) c.run();
  std::vector<std::vector<double>> ns(contenders.size());
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < contenders.size(); ++i) {
      const size_t which = (i + static_cast<size_t>(r)) % contenders.size();
      const Clock::time_point start = Clock::now();
      const uint64_t ops = contenders[which].run();
      const double seconds = Seconds(start);
      ns[which].push_back(seconds * 1e9 / static_cast<double>(std::max<uint64_t>(ops, 1)));
    }
  }
  return ns;
}

CpuPin::CpuPin(int cpu) {
  CPU_ZERO(&previous_);
  have_previous_ = sched_getaffinity(0, sizeof(previous_), &previous_) == 0;
  if (cpu < 0) cpu = sched_getcpu();
  if (!have_previous_ || cpu < 0) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(0, sizeof(one), &one) != 0) return;
  ok_ = true;
  cpu_ = cpu;
}

CpuPin::~CpuPin() {
  if (ok_ && have_previous_) sched_setaffinity(0, sizeof(previous_), &previous_);
}

}  // namespace keyfs::bench
