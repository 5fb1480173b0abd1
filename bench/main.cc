// keyfs_bench: the performance figures of SPEC.md §6, each a ratio against a reference
// measured in the same run. `keyfsctl bench` execs it.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench_dets.h"
#include "bench_mount.h"
#include "bench_mount_large.h"
#include "bench_snapshot.h"

namespace {

constexpr char kUsage[] =
    "usage: keyfs_bench snapshot|dets|mount|mount-large [--quick] [--json FILE] [--dir DIR]\n"
    "  snapshot     the snapshot engine: lookups vs std::unordered_map and\n"
    "               absl::flat_hash_map, durable commits vs the raw durable write,\n"
    "               open cost of a large vs a small store\n"
    "  dets         the dets engine: bulk load vs tinycdb's cdb_make, lookups vs\n"
    "               cdb_find, one insert + sync vs a file copy, peak RSS of a sync\n"
    "  mount        through real keyfs mounts (read-write and -o ro) vs tmpfs:\n"
    "               open+read+close, stat, readdir (pinned and unpinned), and\n"
    "               durable writes from 1 and 16 writers [--keyfs PATH]\n"
    "  mount-large  through -o ro and read-write mounts of a dets and a snapshot store\n"
    "               of N keys (default 10M) vs tmpfs: stat of existing and missing keys,\n"
    "               open+read+close; build time, file sizes, daemon memory\n"
    "               [--keys N] [--tmpfs-keys M (default min(N, 1M))] [--keyfs PATH]\n"
    "               (N, M: a number, optionally with a k or M suffix)\n"
    "  --quick      small stores and few rounds (a smoke test, seconds)\n"
    "  --json FILE  also write the figures as JSON to FILE\n"
    "  --dir DIR    create the temporary stores under DIR (default $TMPDIR or /tmp)\n"
    "Exit status: 0 when the figures are printed (missed targets included), 1 on an\n"
    "error, 2 on a usage error.\n";

int Usage() {
  std::fputs(kUsage, stderr);
  return 2;
}

// "250000", "100k", "10M" -> the count; false if it is not one.
bool ParseCount(const std::string& text, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || text[0] == '-') return false;
  uint64_t scale = 1;
  if (*end == 'k' || *end == 'M') {
    scale = *end == 'k' ? 1000 : 1'000'000;
    ++end;
  }
  if (*end != '\0' || n == 0 || n > UINT64_MAX / scale) return false;
  *out = n * scale;
  return true;
}

// Parses a mode's options (argv[2..]) into `o`: every mode takes --quick, --json and
// --dir; --keyfs, --keys and --tmpfs-keys only where its options have the field.
template <class Options>
bool ParseOptions(int argc, char** argv, Options* o) {
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--quick") {
      o->quick = true;
    } else if (arg == "--json" && has_value) {
      o->json_path = argv[++i];
    } else if (arg == "--dir" && has_value) {
      o->dir = argv[++i];
    } else if (arg == "--keyfs" && has_value && requires { o->keyfs_bin; }) {
      if constexpr (requires { o->keyfs_bin; }) o->keyfs_bin = argv[++i];
    } else if ((arg == "--keys" || arg == "--tmpfs-keys") && has_value && requires { o->keys; }) {
      if constexpr (requires { o->keys; }) {
        if (!ParseCount(argv[++i], arg == "--keys" ? &o->keys : &o->tmpfs_keys)) {
          std::fprintf(stderr, "keyfs_bench: %s wants a positive count, not '%s'\n", arg.c_str(),
                       argv[i]);
          return false;
        }
      }
    } else {
      std::fprintf(stderr, "keyfs_bench: unknown argument '%s'\n", arg.c_str());
      return false;
    }
  }
  return true;
}

template <class Options>
int Run(int argc, char** argv, int (*run)(const Options&)) {
  Options options;
  if (!ParseOptions(argc, argv, &options)) return Usage();
  return run(options);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "open-probe") == 0) {
    return keyfs::bench::RunOpenProbe(argc - 2, argv + 2);
  }
  if (argc == 4 && std::strcmp(argv[1], "dets-rss") == 0) {  // the memory figure's child
    return keyfs::bench::RunDetsRssChild(argv[2], std::strtoull(argv[3], nullptr, 10));
  }
  if (argc < 2) return Usage();
  const std::string mode = argv[1];
  if (mode == "dets") return Run(argc, argv, keyfs::bench::RunDetsBench);
  if (mode == "mount") return Run(argc, argv, keyfs::bench::RunMountBench);
  if (mode == "mount-large") {
    return Run(argc, argv, keyfs::bench::RunMountLargeBench);
  }
  if (mode == "snapshot") return Run(argc, argv, keyfs::bench::RunSnapshotBench);
  return Usage();
}
