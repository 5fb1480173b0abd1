// `keyfs_bench dets`: the dets engine's figures (issue 4), each against tinycdb or a file
// copy measured in the same run.
#pragma once

#include <string>

namespace keyfs::bench {

struct DetsBenchOptions {
  bool quick = false;     // small stores, few rounds: a smoke test, seconds not minutes
  std::string json_path;  // also write the figures as JSON here when not empty
  std::string dir;        // parent of the temp directory; empty: $TMPDIR or /tmp
};

// Builds temporary stores under options.dir, measures, prints the table on stdout and
// progress on stderr, and removes the stores. Returns the exit status: 0 once the figures
// are printed (a missed target is a result, not an error), 1 on any error.
int RunDetsBench(const DetsBenchOptions& options);

// The child process of the memory figure (`keyfs_bench dets-rss STORE N`): opens STORE,
// buffers N new keys, syncs, and prints "buffer_bytes peak_rss_bytes" on stdout.
int RunDetsRssChild(const std::string& store, uint64_t n);

}  // namespace keyfs::bench
