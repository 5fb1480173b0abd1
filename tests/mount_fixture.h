// MountTest: runs the real keyfs daemon (KEYFS_BIN) on a temporary directory so that tests
// can go through a kernel mount with real syscalls and real tools (SPEC §2, §3, §5).
//
// Each test gets a fresh TempDir holding the store ("store"), the mountpoint ("mnt") and
// scratch space. SetUp() mounts `keyfs STORE MNT -f -o create,engine=<engine_>`; TearDown()
// always unmounts (`fusermount3 -u -z`) and reaps every daemon it started (SIGTERM, then
// SIGKILL after a deadline), also when the test failed or hung: a watchdog kills the daemons
// of a test that runs too long, so blocked syscalls fail with ENOTCONN instead of hanging.
// If FUSE is not usable here (no /dev/fuse, no fusermount3) every test is SKIPPED loudly.
//
// Engines: engine_ is passed as `-o engine=`. To run the same tests over every engine, derive
//   class EngineMountTest : public MountTest, public testing::WithParamInterface<std::string>
// and set engine_ = GetParam() in its constructor.
//
// Not thread-safe: call the fixture's methods from the test's main thread; the free helpers
// (ReadFile, WriteFile, ...) are safe from any thread.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "testutil.h"

namespace keyfs::test {

// ---- processes -----------------------------------------------------------------------------

struct CommandResult {
  int status = -1;  // exit status, 128 + signal if killed, -1 if it could not be run
  std::string out;
  std::string err;
};
void PrintTo(const CommandResult& r, std::ostream* os);

// Runs argv[0] (looked up in PATH) with `input` on stdin, `env` added to the environment
// ("NAME=value") and cwd `cwd` (empty: inherited); captures stdout and stderr. A command still
// running after `timeout_s` is killed with its process group (status 128 + SIGKILL).
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& input = "",
                         const std::vector<std::string>& env = {}, const std::string& cwd = "",
                         int timeout_s = 60);

// waitpid() with a deadline. Returns the exit status (128 + signal if killed), or -1 if the
// process is still running when the deadline passes (or is not our child).
int WaitPid(pid_t pid, std::chrono::milliseconds timeout);

// ---- files (errno-returning, thread-safe) ----------------------------------------------------

// Reads the whole file. Returns 0 or the errno of the failing open/read/close.
int ReadFile(const std::string& path, std::string* out);
// The file's content, or "<error: ...>" (so that EXPECT_EQ shows what happened).
std::string Cat(const std::string& path);
// open(flags, mode), write everything, close. Returns 0 or the errno of the failing step
// (close's errno counts: that is where keyfs commits).
int WriteFile(const std::string& path, std::string_view data, int flags = 0, mode_t mode = 0644);
// Names in a directory (without "." and ".."), sorted. *err gets 0 or an errno.
std::vector<std::string> ListDir(const std::string& path, int* err = nullptr);
// lstat(); st_mode 0 if it fails.
struct stat Lstat(const std::string& path);
bool Exists(const std::string& path);  // lstat succeeds
// Polls `pred` every 10 ms until it holds or `timeout` passes. Returns the last result.
bool WaitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds timeout = std::chrono::seconds(5));

// ---- one daemon --------------------------------------------------------------------------------

// One keyfs process and the mountpoint it serves. Its stdout and stderr go to a log file.
class KeyfsDaemon {
 public:
  KeyfsDaemon(std::string store, std::string mountpoint, std::string log_path);
  ~KeyfsDaemon();  // Cleanup()
  KeyfsDaemon(const KeyfsDaemon&) = delete;
  KeyfsDaemon& operator=(const KeyfsDaemon&) = delete;

  // Starts `keyfs STORE MOUNTPOINT -f [extra_args...] [-o options]` and waits up to 10 s for
  // the mount. Returns "" once mounted, else what went wrong (with the daemon's output); on
  // failure nothing is left running.
  std::string Start(const std::string& options, const std::vector<std::string>& extra_args = {});
  // `fusermount3 -u`, retried while busy (up to 10 s), then reaps the daemon (10 s).
  // Returns its exit status, 128 + signal, or -1 (still running / unmount refused).
  int Unmount();
  // SIGKILL, reap (aborting the FUSE connection if a daemon thread is stuck in the kernel),
  // lazy unmount. Returns the status (128 + SIGKILL).
  int Kill();
  // Sends `sig` and reaps with a deadline; returns the status or -1.
  int SignalAndWait(int sig, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Always safe, idempotent: lazy unmount, SIGTERM, reap within 10 s, else SIGKILL.
  void Cleanup();
  // Marks `pid` (a child of ours, e.g. via PR_SET_CHILD_SUBREAPER) as this mount's daemon.
  void Adopt(pid_t pid) { pid_ = pid; }
  // SIGKILL and abort of the FUSE connection, without reaping (safe from the watchdog).
  void KillFromWatchdog();

  bool mounted() const;  // listed in /proc/self/mountinfo as a FUSE mount
  pid_t pid() const { return pid_; }
  const std::string& mountpoint() const { return mountpoint_; }
  const std::string& store() const { return store_; }
  std::string Log() const;

 private:
  int ReapOrAbort();

  std::string store_, mountpoint_, log_path_;
  std::atomic<pid_t> pid_{0};
  std::atomic<unsigned> conn_{0};  // FUSE connection number while mounted
};

// ---- the fixture
// ---------------------------------------------------------------------------------

class MountTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  // Tests of the command line override this to start daemons themselves.
  virtual bool MountInSetUp() const { return true; }

  const std::string& dir() const { return dir_.path(); }
  const std::string& store() const { return store_; }
  const std::string& mnt() const { return mnt_; }
  // MNT/rel.
  std::string P(const std::string& rel) const { return mnt_ + "/" + rel; }
  // A path in the temp dir, outside every mount.
  std::string Local(const std::string& rel) const { return dir_.Join(rel); }

  // -o create,engine=<engine_>[,extra] (create dropped when extra has "ro"), at mnt().
  // Use as ASSERT_NO_FATAL_FAILURE(Mount(...)).
  void Mount(const std::string& extra = "");
  // Unmounts mnt() with fusermount3 -u and expects the daemon to exit with status 0.
  void Unmount();
  void Remount(const std::string& extra = "") {
    ASSERT_NO_FATAL_FAILURE(Unmount());
    ASSERT_NO_FATAL_FAILURE(Mount(extra));
  }
  // Another mount of the same store at a new mountpoint (options as given, plus engine=).
  // Returns the mountpoint, "" after a fatal failure.
  std::string MountSecond(const std::string& options = "ro");
  KeyfsDaemon* daemon() { return main_.get(); }
  KeyfsDaemon* Daemon(const std::string& mountpoint);
  // The options Mount() passes for `extra`.
  std::string MountOptions(const std::string& extra) const;

  // /bin/sh -c `script` in dir(), with MNT, STORE, KEYFS, KEYFSCTL and SRC (= dir()/src)
  // in the environment.
  CommandResult Sh(const std::string& script, const std::string& input = "", int timeout_s = 60);
  // keyfsctl args... on this test's files.
  CommandResult Ctl(const std::vector<std::string>& args, const std::string& input = "");
  // keyfs args... (the binary under test, run directly).
  CommandResult Keyfs(const std::vector<std::string>& args, int timeout_s = 15);

  std::string engine_ = "snapshot";
  // Per-test budget: past it the watchdog kills the daemons and fails the test.
  std::chrono::seconds watchdog_timeout_{30};

 private:
  void StartWatchdog();
  void StopWatchdog();

  TempDir dir_;
  std::string store_, mnt_;
  std::unique_ptr<KeyfsDaemon> main_;
  std::vector<std::unique_ptr<KeyfsDaemon>> others_;
  int mount_count_ = 0;

  std::mutex watchdog_mu_;
  std::condition_variable watchdog_cv_;
  bool watchdog_stop_ = false;
  std::thread watchdog_;
};

}  // namespace keyfs::test
