// A keyfs daemon for the mount benchmarks; see daemon.h.
#include "daemon.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

namespace keyfs::bench {

std::string FindKeyfs(const std::string& given) {
  if (!given.empty()) return given;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    std::string dir = std::filesystem::path(self).parent_path();
    for (const char* rel : {"/../fs/keyfs", "/keyfs", "/../../../bin/keyfs"}) {
      std::string p = dir + rel;
      if (access(p.c_str(), X_OK) == 0) return p;
    }
  }
  return "keyfs";  // from PATH
}

Daemon::Daemon(const std::string& bin, const std::string& store, const std::string& mnt,
               const std::string& opts, int cpu, const std::string& log)
    : mnt_(mnt), log_(log) {
  struct stat before;
  if (stat(mnt.c_str(), &before) != 0) return;  // error() says the mountpoint is missing
  pid_ = fork();
  if (pid_ == 0) {
    if (cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      sched_setaffinity(0, sizeof(set), &set);
    }
    int null = open("/dev/null", O_RDWR);
    int err = log.empty() ? null : open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(null, 1);
    dup2(err >= 0 ? err : null, 2);
    std::vector<const char*> argv = {bin.c_str(), store.c_str(), mnt.c_str(), "-f"};
    if (!opts.empty()) {
      argv.push_back("-o");
      argv.push_back(opts.c_str());
    }
    argv.push_back(nullptr);
    execvp(bin.c_str(), const_cast<char* const*>(argv.data()));
    dprintf(2, "keyfs_bench: cannot run %s\n", bin.c_str());
    _exit(127);
  }
  if (pid_ < 0) return;
  for (int i = 0; i < 3000; ++i) {  // 30 s: opening a store of millions of keys included
    struct stat now;
    if (stat(mnt.c_str(), &now) == 0 && now.st_dev != before.st_dev) {
      ok_ = true;
      return;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    usleep(10000);
  }
  timed_out_ = true;  // the destructor still unmounts and reaps it
}

Daemon::~Daemon() {
  if (pid_ <= 0) return;
  std::string cmd = "fusermount3 -u -z " + mnt_ + " 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) kill(pid_, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    usleep(10000);
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
}

std::string Daemon::error() const {
  std::string what = "could not mount " + mnt_;
  if (timed_out_) return what + ": the daemon did not mount it within 30 s";
  std::string line;
  if (!log_.empty()) {
    std::ifstream in(log_);
    std::getline(in, line);
  }
  return line.empty() ? what + " (is /dev/fuse there? is the mountpoint a directory?)"
                      : what + ": " + line;
}

}  // namespace keyfs::bench
