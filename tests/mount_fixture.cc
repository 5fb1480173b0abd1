// MountTest and its process and file helpers; see mount_fixture.h.
#include "mount_fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#ifndef KEYFS_BIN
#error "KEYFS_BIN must name the keyfs daemon under test"
#endif
#ifndef KEYFSCTL_BIN
#error "KEYFSCTL_BIN must name keyfsctl"
#endif

extern char** environ;

namespace keyfs::test {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int StatusOf(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return -1;
}

std::string Errno(int err) { return std::strerror(err); }

// Finds `name` in PATH; "" if absent.
std::string FindInPath(const std::string& name) {
  const char* path = getenv("PATH");
  std::string p = path != nullptr ? path : "/usr/bin:/bin";
  p += ":/usr/sbin:/sbin";
  std::stringstream ss(p);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// The mountinfo mount point field undoes octal escapes (\040 for a space, ...).
std::string Unescape(const std::string& s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && isdigit(s[i + 1])) {
      r += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      r += s[i];
    }
  }
  return r;
}

// True if `mountpoint` is a FUSE mount in /proc/self/mountinfo (reads no file in the mount,
// so it cannot hang on a stuck daemon). *conn gets its FUSE connection number, the minor
// of its device (the name of its directory under /sys/fs/fuse/connections).
bool IsFuseMount(const std::string& mountpoint, unsigned* conn = nullptr) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  bool found = false;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, point;
    fields >> id >> parent >> devno >> root >> point;
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::string fstype = line.substr(sep + 3, line.find(' ', sep + 3) - (sep + 3));
    if (Unescape(point) == mountpoint && fstype.rfind("fuse", 0) == 0) {
      found = true;
      size_t colon = devno.find(':');
      if (conn != nullptr && colon != std::string::npos && devno.substr(0, colon) == "0") {
        *conn = static_cast<unsigned>(std::stoul(devno.substr(colon + 1)));
      }
    }
  }
  return found;
}

// The daemon's threads as "state wchan" counts, e.g. "4 D fuse_reverse_inval_entry", for
// reports about a daemon that does not die.
std::string ThreadStates(pid_t pid) {
  std::map<std::string, int> counts;
  std::error_code ec;
  for (const auto& t :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::string stat, wchan;
    ReadFile(t.path().string() + "/stat", &stat);
    ReadFile(t.path().string() + "/wchan", &wchan);
    size_t paren = stat.rfind(')');
    std::string state =
        paren != std::string::npos && paren + 2 < stat.size() ? stat.substr(paren + 2, 1) : "?";
    ++counts[state + " " + wchan];
  }
  std::string r;
  for (const auto& [what, n] : counts) r += "  " + std::to_string(n) + " " + what + "\n";
  return r;
}

// Aborts FUSE connection `conn` of `mountpoint`: every request the daemon has not answered
// fails with ENOTCONN, which frees client threads (and the directory locks they hold) that a
// dead or deadlocked daemon would otherwise hold forever; even SIGKILL cannot end a daemon
// thread blocked in the kernel on such a lock. fusectl is mounted in a private mount
// namespace, so nothing outside this call changes. Refuses if another mountpoint now uses
// that device number (connection numbers are reused). Safe from any thread.
void AbortConnection(unsigned conn, const std::string& mountpoint) {
  if (conn == 0) return;
  {
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    const std::string dev = "0:" + std::to_string(conn);
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string id, parent, devno, root, point;
      fields >> id >> parent >> devno >> root >> point;
      if (devno == dev && Unescape(point) != mountpoint) {
        std::fprintf(stderr, "not aborting FUSE connection %u: it now serves %s\n", conn,
                     point.c_str());
        return;
      }
    }
  }
  char path[96];
  std::snprintf(path, sizeof path, "/sys/fs/fuse/connections/%u/abort", conn);
  pid_t pid = fork();
  if (pid == 0) {
    if (unshare(CLONE_NEWNS) != 0) _exit(1);
    mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
    mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, nullptr);  // may be there
    int fd = open(path, O_WRONLY);
    if (fd < 0) _exit(2);
    _exit(write(fd, "1", 1) == 1 ? 0 : 3);
  }
  if (pid > 0) {
    std::fprintf(stderr, "aborting FUSE connection %u (%s)\n", conn, mountpoint.c_str());
    WaitPid(pid, std::chrono::seconds(5));
  }
}

void LazyUnmount(const std::string& mountpoint) {
  // Repeat: a mountpoint can carry stacked mounts.
  for (int i = 0; i < 4 && IsFuseMount(mountpoint); ++i) {
    RunCommand({"fusermount3", "-u", "-z", "-q", mountpoint}, "", {}, "", 10);
  }
}

}  // namespace

void PrintTo(const CommandResult& r, std::ostream* os) {
  *os << "{status " << r.status << ", stdout " << testing::PrintToString(r.out) << ", stderr "
      << testing::PrintToString(r.err) << "}";
}

CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& input,
                         const std::vector<std::string>& env, const std::string& cwd,
                         int timeout_s) {
  CommandResult r;
  if (argv.empty()) return r;
  // Everything the child needs is built before fork (the test may be multi-threaded).
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings(env);
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (const std::string& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  std::string exe = argv[0].find('/') != std::string::npos ? argv[0] : FindInPath(argv[0]);
  if (exe.empty()) {
    r.err = argv[0] + ": not found in PATH";
    return r;
  }

  int in_fd = memfd_create("stdin", MFD_CLOEXEC);
  if (in_fd < 0) return r;
  if (!input.empty() &&
      write(in_fd, input.data(), input.size()) != static_cast<ssize_t>(input.size())) {
    close(in_fd);
    return r;
  }
  lseek(in_fd, 0, SEEK_SET);
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return r;
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return r;

  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    dup2(in_fd, 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(126);
    execve(exe.c_str(), args.data(), envp.data());
    _exit(127);
  }
  close(in_fd);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return r;
  }
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  bool exited = false, killed = false;
  int wstatus = 0;
  Clock::time_point exited_at;
  while (true) {
    if (!exited) {
      pid_t w = waitpid(pid, &wstatus, WNOHANG);
      if (w == pid) {
        exited = true;
        exited_at = Clock::now();
      }
    }
    // Stop reading once the command is gone and its pipes are closed, or 2 s after it
    // exited (a daemon it left behind may hold them).
    if (exited && (open_fds == 0 || Clock::now() - exited_at > std::chrono::seconds(2))) break;
    if (!killed && Clock::now() > deadline) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      killed = true;
    }
    if (open_fds == 0) {
      usleep(2000);
      continue;
    }
    int n = poll(fds, 2, 20);
    if (n <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[65536];
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  r.status = killed ? 128 + SIGKILL : StatusOf(wstatus);
  return r;
}

int WaitPid(pid_t pid, milliseconds timeout) {
  if (pid <= 0) return -1;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int wstatus = 0;
    pid_t w = waitpid(pid, &wstatus, WNOHANG);
    if (w == pid) return StatusOf(wstatus);
    if (w < 0 && errno != EINTR) return -1;
    if (Clock::now() > deadline) return -1;
    usleep(5000);
  }
}

int ReadFile(const std::string& path, std::string* out) {
  out->clear();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  char buf[65536];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return err;
    }
    out->append(buf, static_cast<size_t>(n));
  }
  return close(fd) == 0 ? 0 : errno;
}

std::string Cat(const std::string& path) {
  std::string data;
  int err = ReadFile(path, &data);
  return err == 0 ? data : "<error: " + Errno(err) + ">";
}

int WriteFile(const std::string& path, std::string_view data, int flags, mode_t mode) {
  if (flags == 0) flags = O_WRONLY | O_CREAT | O_TRUNC;
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return errno;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return err;
    }
    done += static_cast<size_t>(n);
  }
  return close(fd) == 0 ? 0 : errno;
}

std::vector<std::string> ListDir(const std::string& path, int* err) {
  std::vector<std::string> names;
  if (err != nullptr) *err = 0;
  DIR* d = opendir(path.c_str());
  if (d == nullptr) {
    if (err != nullptr) *err = errno;
    return names;
  }
  errno = 0;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
    errno = 0;
  }
  if (errno != 0 && err != nullptr) *err = errno;
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

struct stat Lstat(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) std::memset(&st, 0, sizeof st);
  return st;
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool WaitFor(const std::function<bool()>& pred, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (pred()) return true;
    if (Clock::now() > deadline) return pred();
    usleep(10000);
  }
}

// ---- KeyfsDaemon ----------------------------------------------------------------------------

KeyfsDaemon::KeyfsDaemon(std::string store, std::string mountpoint, std::string log_path)
    : store_(std::move(store)),
      mountpoint_(std::move(mountpoint)),
      log_path_(std::move(log_path)) {}

KeyfsDaemon::~KeyfsDaemon() { Cleanup(); }

std::string KeyfsDaemon::Start(const std::string& options,
                               const std::vector<std::string>& extra_args) {
  if (pid_ != 0) return "already running";
  std::vector<std::string> argv = {KEYFS_BIN, store_, mountpoint_, "-f"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  if (!options.empty()) {
    argv.push_back("-o");
    argv.push_back(options);
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int log = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return "cannot open " + log_path_ + ": " + Errno(errno);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    // The daemon dies with the test process, so a crashed test leaves no daemon behind.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(125);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(log, 1);
    dup2(log, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(log);
  if (pid < 0) return "fork: " + Errno(errno);
  pid_ = pid;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (true) {
    unsigned conn = 0;
    if (IsFuseMount(mountpoint_, &conn)) {
      conn_ = conn;
      return "";
    }
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      pid_ = 0;
      return "keyfs exited with status " + std::to_string(StatusOf(wstatus)) +
             " before mounting; its output:\n" + Log();
    }
    if (Clock::now() > deadline) {
      std::string log_text = Log();
      Cleanup();
      return "not mounted after 10 s; keyfs's output:\n" + log_text;
    }
    usleep(5000);
  }
}

int KeyfsDaemon::Unmount() {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (IsFuseMount(mountpoint_)) {
    CommandResult r = RunCommand({"fusermount3", "-u", mountpoint_}, "", {}, "", 10);
    if (r.status == 0) break;
    if (Clock::now() > deadline) {
      std::fprintf(stderr, "fusermount3 -u %s keeps failing: %s\n", mountpoint_.c_str(),
                   r.err.c_str());
      return -1;
    }
    usleep(50000);  // busy: something still has a file open
  }
  int status = WaitPid(pid_, std::chrono::seconds(10));
  if (status != -1) pid_ = 0;
  return status;
}

int KeyfsDaemon::Kill() {
  int status = -1;
  if (pid_ != 0) {
    kill(pid_, SIGKILL);
    status = ReapOrAbort();
  }
  LazyUnmount(mountpoint_);
  return status;
}

int KeyfsDaemon::ReapOrAbort() {
  int status = WaitPid(pid_, std::chrono::seconds(3));
  if (status == -1) {
    std::fprintf(stderr, "keyfs (pid %d) does not die; its threads:\n%s", pid_.load(),
                 ThreadStates(pid_).c_str());
    AbortConnection(conn_, mountpoint_);
    status = WaitPid(pid_, std::chrono::seconds(10));
  }
  pid_ = 0;
  return status;
}

int KeyfsDaemon::SignalAndWait(int sig, milliseconds timeout) {
  if (pid_ == 0) return -1;
  kill(pid_, sig);
  int status = WaitPid(pid_, timeout);
  if (status != -1) pid_ = 0;
  return status;
}

void KeyfsDaemon::Cleanup() {
  LazyUnmount(mountpoint_);
  if (pid_ == 0) return;
  kill(pid_, SIGTERM);
  if (WaitPid(pid_, std::chrono::seconds(10)) == -1) {
    std::fprintf(stderr, "keyfs (pid %d) ignored SIGTERM for 10 s: SIGKILL\n", pid_.load());
    kill(pid_, SIGKILL);
    ReapOrAbort();
  }
  pid_ = 0;
  LazyUnmount(mountpoint_);
}

void KeyfsDaemon::KillFromWatchdog() {
  pid_t pid = pid_;
  if (pid != 0) {
    std::fprintf(stderr, "keyfs (pid %d) threads when the watchdog fired:\n%s", pid,
                 ThreadStates(pid).c_str());
    kill(pid, SIGKILL);
  }
  AbortConnection(conn_, mountpoint_);
}

bool KeyfsDaemon::mounted() const { return IsFuseMount(mountpoint_); }

std::string KeyfsDaemon::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- MountTest --------------------------------------------------------------------------------

void MountTest::SetUp() {
  std::string why;
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    why = "/dev/fuse is not usable (" + Errno(errno) + ")";
  } else if (FindInPath("fusermount3").empty()) {
    why = "fusermount3 is not installed (apt-get install fuse3)";
  } else if (access(KEYFS_BIN, X_OK) != 0) {
    why = std::string(KEYFS_BIN) + " is missing: build the keyfs target";
  }
  if (!why.empty()) {
    std::fprintf(stderr, "\n*** MOUNT TESTS SKIPPED: %s. They did NOT run. ***\n\n", why.c_str());
    GTEST_SKIP() << "MOUNT TESTS SKIPPED: " << why;
  }
  store_ = dir_.Join("store");
  mnt_ = dir_.Join("mnt");
  ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0) << Errno(errno);
  ASSERT_EQ(mkdir(Local("src").c_str(), 0755), 0) << Errno(errno);
  {
    std::lock_guard<std::mutex> l(watchdog_mu_);
    main_ = std::make_unique<KeyfsDaemon>(store_, mnt_, dir_.Join("keyfs.log"));
  }
  StartWatchdog();
  if (MountInSetUp()) {
    ASSERT_NO_FATAL_FAILURE(Mount());
  }
}

void MountTest::TearDown() {
  StopWatchdog();
  const bool failed = HasFailure();
  std::lock_guard<std::mutex> l(watchdog_mu_);
  for (auto& d : others_) d->Cleanup();
  if (main_ != nullptr) main_->Cleanup();
  if (failed) {
    auto dump = [](const KeyfsDaemon& d) {
      std::string log = d.Log();
      if (log.size() > 8000) log = "...\n" + log.substr(log.size() - 8000);
      if (!log.empty()) {
        std::fprintf(stderr, "---- keyfs output for %s ----\n%s\n", d.mountpoint().c_str(),
                     log.c_str());
      }
    };
    if (main_ != nullptr) dump(*main_);
    for (auto& d : others_) dump(*d);
  }
  others_.clear();
  main_.reset();
}

void MountTest::StartWatchdog() {
  watchdog_stop_ = false;
  watchdog_ = std::thread([this] {
    std::unique_lock<std::mutex> l(watchdog_mu_);
    if (watchdog_cv_.wait_for(l, watchdog_timeout_, [this] { return watchdog_stop_; })) return;
    ADD_FAILURE() << "watchdog: the test ran longer than " << watchdog_timeout_.count()
                  << " s; killing its keyfs daemons so that blocked calls return";
    if (main_ != nullptr) main_->KillFromWatchdog();
    for (auto& d : others_) d->KillFromWatchdog();
  });
}

void MountTest::StopWatchdog() {
  {
    std::lock_guard<std::mutex> l(watchdog_mu_);
    watchdog_stop_ = true;
  }
  watchdog_cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
}

std::string MountTest::MountOptions(const std::string& extra) const {
  const bool ro = ("," + extra + ",").find(",ro,") != std::string::npos;
  std::string o = ro ? "" : "create,";
  o += "engine=" + engine_;
  if (!extra.empty()) o += "," + extra;
  return o;
}

void MountTest::Mount(const std::string& extra) {
  ASSERT_NE(main_, nullptr);
  std::string err = main_->Start(MountOptions(extra));
  ASSERT_EQ(err, "") << "mounting " << mnt_ << " with -o " << MountOptions(extra);
}

void MountTest::Unmount() {
  ASSERT_NE(main_, nullptr);
  int status = main_->Unmount();
  ASSERT_EQ(status, 0) << "keyfs's exit status after fusermount3 -u; its output:\n" << main_->Log();
}

std::string MountTest::MountSecond(const std::string& options) {
  std::string point = dir_.Join("mnt" + std::to_string(++mount_count_ + 1));
  EXPECT_EQ(mkdir(point.c_str(), 0755), 0) << Errno(errno);
  auto d = std::make_unique<KeyfsDaemon>(store_, point, point + ".log");
  std::string o = "engine=" + engine_ + (options.empty() ? "" : "," + options);
  std::string err = d->Start(o);
  EXPECT_EQ(err, "") << "second mount with -o " << o;
  if (!err.empty()) return "";
  std::lock_guard<std::mutex> l(watchdog_mu_);
  others_.push_back(std::move(d));
  return point;
}

KeyfsDaemon* MountTest::Daemon(const std::string& mountpoint) {
  if (main_ != nullptr && main_->mountpoint() == mountpoint) return main_.get();
  for (auto& d : others_) {
    if (d->mountpoint() == mountpoint) return d.get();
  }
  return nullptr;
}

CommandResult MountTest::Sh(const std::string& script, const std::string& input, int timeout_s) {
  std::vector<std::string> env = {"MNT=" + mnt_,         "STORE=" + store_,
                                  "KEYFS=" KEYFS_BIN,    "KEYFSCTL=" KEYFSCTL_BIN,
                                  "SRC=" + Local("src"), "LC_ALL=C"};
  return RunCommand({"/bin/sh", "-c", script}, input, env, dir_.path(), timeout_s);
}

CommandResult MountTest::Ctl(const std::vector<std::string>& args, const std::string& input) {
  std::vector<std::string> argv = {KEYFSCTL_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, input, {}, dir_.path(), 60);
}

CommandResult MountTest::Keyfs(const std::vector<std::string>& args, int timeout_s) {
  std::vector<std::string> argv = {KEYFS_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, "", {}, dir_.path(), timeout_s);
}

}  // namespace keyfs::test
