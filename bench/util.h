// Small helpers shared by the keyfs_bench modes: temporary directories, progress lines,
// labels and sizes for the notes, and figures read from /proc.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "keyfs/store/status.h"

namespace keyfs::bench {

// A directory of its own under a parent, removed with everything in it.
class TempDir {
 public:
  TempDir() = default;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  // Creates `parent`/keyfs-bench-XXXXXX; an empty parent means $TMPDIR or /tmp.
  Status Create(std::string parent);
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// One "keyfs_bench: ..." line on stderr, flushed: long runs show where they are.
void Progress(const std::string& what);

// snprintf of one number into a std::string.
std::string Printf(const char* fmt, double v);

// "1k", "100k", "1.5M", "10M"; other counts in full.
std::string CountLabel(uint64_t n);

// "12.3 MB" (decimal megabytes).
std::string Megabytes(uint64_t bytes);

// The size of the file at `path`, 0 if it cannot be stat'ed.
uint64_t FileSize(const std::string& path);

// "ext4", "xfs", ... for the notes; tmpfs says that its fsync is free.
std::string FilesystemType(const std::string& path);

// The "model name" of /proc/cpuinfo.
std::string CpuModel();

// A "<field>: N kB" line of /proc/<pid>/status in bytes (pid 0: this process), e.g.
// "VmHWM" or "RssAnon". 0 if the process or the field is missing.
uint64_t ProcStatusBytes(pid_t pid, const char* field);

}  // namespace keyfs::bench
