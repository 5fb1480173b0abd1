// keyfs_bench mount: reads, stats, listings and writes through real keyfs mounts
// (read-write and -o ro) against the same files on tmpfs, measured in one run.
#pragma once

#include <string>

namespace keyfs::bench {

struct MountBenchOptions {
  bool quick = false;
  std::string json_path;  // also write the figures as JSON here
  std::string dir;        // where the store and mountpoints go (default $TMPDIR or /tmp)
  std::string keyfs_bin;  // the daemon (default: found beside keyfs_bench or in PATH)
};

// Mounts, measures, unmounts. Returns the process exit status (0 when the figures were
// printed, missed targets included).
int RunMountBench(const MountBenchOptions& options);

}  // namespace keyfs::bench
