// `keyfs_bench snapshot`: the snapshot engine's figures of SPEC.md §6.
#pragma once

#include <string>

namespace keyfs::bench {

struct SnapshotBenchOptions {
  bool quick = false;     // smaller stores and fewer rounds: a smoke test, seconds not minutes
  std::string json_path;  // also write the figures as JSON here when not empty
  std::string dir;        // parent of the temp directory; empty: $TMPDIR or /tmp
};

// Builds temporary stores under options.dir, measures, prints the table on stdout and
// progress on stderr, and removes the stores. Returns the exit status: 0 once the figures
// are printed (a missed target is a result, not an error), 1 on any error.
int RunSnapshotBench(const SnapshotBenchOptions& options);

// `keyfs_bench open-probe ROUNDS SMALL BIG` (argv without those two words): internal, run by
// RunSnapshotBench in a fresh process. Times OpenStore of both stores, read-write and
// read-only, in rotated rounds after one untimed round; prints four lines of microseconds
// (small rw, big rw, small ro, big ro). Returns the exit status.
int RunOpenProbe(int argc, char** argv);

}  // namespace keyfs::bench
