// Small helpers the engines share: clocks and the parts of a store's path.
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>

namespace keyfs {

// Wall clock, for times stored in files and shown to users.
inline int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Monotonic clock, for durations.
inline int64_t MonoNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "dir/name" -> "dir"; "name" -> "."; "/name" -> "/".
inline std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// "dir/name" -> "name".
inline std::string FileName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace keyfs
