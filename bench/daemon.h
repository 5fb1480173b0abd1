// A real keyfs daemon for the benchmarks that measure through the mount: started in the
// foreground (optionally pinned to one CPU, SPEC §6), unmounted and reaped when done.
#pragma once

#include <sys/types.h>

#include <string>

namespace keyfs::bench {

// The keyfs daemon to run: `given` if not empty, else the one beside keyfs_bench in the
// build tree or the install tree, else "keyfs" from PATH.
std::string FindKeyfs(const std::string& given);

// Runs `bin STORE MNT -f [-o opts]` and waits until MNT is a mount. Not thread-safe.
class Daemon {
 public:
  // `cpu` >= 0 pins the daemon (and every thread it starts) to that CPU. The daemon's
  // stderr goes to `log` (empty: /dev/null), whose first line error() then reports.
  Daemon(const std::string& bin, const std::string& store, const std::string& mnt,
         const std::string& opts, int cpu, const std::string& log = "");
  // Unmounts (lazily, so a busy mount cannot hang the benchmark) and reaps the daemon.
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  bool ok() const { return ok_; }
  pid_t pid() const { return pid_; }
  // Why the mount is not there, as one line (meaningful when !ok()).
  std::string error() const;

 private:
  std::string mnt_;
  std::string log_;
  pid_t pid_ = -1;
  bool ok_ = false;
  bool timed_out_ = false;
};

}  // namespace keyfs::bench
