// keyfs_bench mount-large: lookups (stat of existing and missing keys) and open+read+close
// through keyfs mounts of a large dets store and a large snapshot store, against tmpfs,
// all measured in the same interleaved rounds (issue 5, deliverable 7).
#pragma once

#include <cstdint>
#include <string>

namespace keyfs::bench {

struct MountLargeBenchOptions {
  bool quick = false;       // 100k keys and few rounds: a smoke test, seconds
  uint64_t keys = 0;        // keys in each store; 0: 10M (100k with quick)
  uint64_t tmpfs_keys = 0;  // files of the tmpfs reference; 0: min(keys, 1M)
  std::string json_path;    // also write the figures as JSON here
  std::string dir;          // where the stores and mountpoints go (default $TMPDIR or /tmp)
  std::string keyfs_bin;    // the daemon (default: found beside keyfs_bench or in PATH)
};

// Builds both stores and the tmpfs tree, mounts, measures, prints the table on stdout and
// progress on stderr, unmounts and removes everything. Returns the exit status: 0 when the
// figures were printed, 1 on an error.
int RunMountLargeBench(const MountLargeBenchOptions& options);

}  // namespace keyfs::bench
