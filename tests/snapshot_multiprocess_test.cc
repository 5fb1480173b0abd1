// Several processes on one snapshot store (SPEC §2, FORMAT.md §2.8): commits are serialised
// by flock on STORE.lock and each applies its batch to the newest table on disk, so no
// process loses another's commits; watching engines follow commits made elsewhere and tell
// their listener; read-only engines never write and follow new files.
//
// Children are fork()ed before the parent opens any engine (so no engine thread exists at
// fork time), use no gtest macros, and leave with _exit so they never run gtest's teardown.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"
#include "keyfs/store/snapshot.h"
#include "testutil.h"

namespace keyfs {
namespace {

using test::TempDir;
using Clock = std::chrono::steady_clock;

// How long to wait for something that should happen "promptly" (SPEC: well under a second).
// Only a bound on waiting, never a measurement.
constexpr auto kDeadline = std::chrono::seconds(5);
// Bound on a child's whole run, so a hung child fails the test instead of hanging it.
constexpr int kChildSeconds = 300;

// A forked child that waits at a start line until Go() (or destruction), runs `body` and
// leaves with _exit(body's result).
class ChildProcess {
 public:
  explicit ChildProcess(std::function<int()> body) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(fds[1]);
      char c;
      ssize_t n;
      while ((n = ::read(fds[0], &c, 1)) < 0 && errno == EINTR) {
      }
      if (n != 1) ::_exit(99);  // the parent went away without starting us
      ::_exit(body());
    }
    ::close(fds[0]);
    go_fd_ = fds[1];
  }
  ~ChildProcess() {
    Go();
    if (pid_ > 0 && !reaped_) Wait();
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  // Releases the child. A byte, not EOF: children forked later hold copies of this pipe.
  void Go() {
    if (go_fd_ < 0) return;
    (void)!::write(go_fd_, "g", 1);
    ::close(go_fd_);
    go_fd_ = -1;
  }
  // Waits for the child (killing it after kChildSeconds). "" if it exited with status 0.
  std::string Wait() {
    Go();
    reaped_ = true;
    const auto end = Clock::now() + std::chrono::seconds(kChildSeconds);
    int status = 0;
    while (true) {
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (r < 0 && errno != EINTR) return "waitpid failed";
      if (Clock::now() > end) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        return "child hung and was killed";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (WIFSIGNALED(status)) return "child killed by signal " + std::to_string(WTERMSIG(status));
    if (WEXITSTATUS(status) != 0) return "child exited with " + std::to_string(WEXITSTATUS(status));
    return "";
  }

 private:
  pid_t pid_ = -1;
  int go_fd_ = -1;
  bool reaped_ = false;
};

// Prints why a child fails (its stderr goes to the test log) and returns its exit status.
int ChildFail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "child %d: %s: %s\n", static_cast<int>(::getpid()), what.c_str(),
               s.ToString().c_str());
  return 1;
}

// Records listener calls; waits for one that matches.
class EventLog {
 public:
  ChangeListener Listener() {
    return [this](const ChangeEvent& ev) {
      std::lock_guard<std::mutex> l(mu_);
      events_.push_back(ev);
      cv_.notify_all();
    };
  }
  // True once an event with `key` in `changed` and `external` as given has been recorded.
  bool WaitFor(const std::string& key, bool external) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, kDeadline, [&] {
      for (const ChangeEvent& ev : events_) {
        if (ev.external == external &&
            std::find(ev.changed.begin(), ev.changed.end(), key) != ev.changed.end()) {
          return true;
        }
      }
      return false;
    });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ChangeEvent> events_;
};

// Polls eng.Get(key) until it returns `value` or the deadline passes.
bool EventuallyHas(const Engine& eng, const std::string& key, const std::string& value) {
  const auto end = Clock::now() + kDeadline;
  while (true) {
    auto r = eng.Get(key);
    if (r.ok() && r->value == value) return true;
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string Value(int child, int i) {
  return "value of child " + std::to_string(child) + " #" + std::to_string(i);
}

// Two processes, each with its own engine, commit 200 one-key batches each at the same time.
// Afterwards every key is there, the file verifies, and the generation counts every one of
// the 400 rebuilds: no commit was applied to a stale table and then overwritten.
TEST(SnapshotMultiProcess, TwoProcessesCommitWithoutLosingEachOther) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  constexpr int kChildren = 2, kCommits = 200;
  {
    OpenOptions o;
    o.create = true;
    auto eng = OpenStore(path, o);
    ASSERT_OK(eng.status());
    ASSERT_OK((*eng)->Commit(Batch().Mkdir("c0").Mkdir("c1")));
    ASSERT_EQ((*eng)->Stats().generation, 2u);
  }

  // Each child reports its rebuild count through a pipe.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::vector<std::unique_ptr<ChildProcess>> children;
  for (int c = 0; c < kChildren; ++c) {
    children.push_back(std::make_unique<ChildProcess>([&, c]() -> int {
      ::close(fds[0]);
      auto eng = OpenStore(path, OpenOptions{});
      if (!eng.ok()) return ChildFail("open", eng.status());
      for (int i = 0; i < kCommits; ++i) {
        const std::string key = "c" + std::to_string(c) + "/key-" + std::to_string(i);
        Status s = (*eng)->Commit(Batch().Put(key, Value(c, i)));
        if (!s.ok()) return ChildFail("commit " + key, s);
        auto r = (*eng)->Get(key);  // its own commit is served at once
        if (!r.ok() || r->value != Value(c, i)) return ChildFail("read back " + key, r.status());
      }
      const uint64_t rebuilds = (*eng)->Stats().syncs;  // durable writes: log records
      eng->reset();
      return ::write(fds[1], &rebuilds, sizeof(rebuilds)) == sizeof(rebuilds) ? 0 : 2;
    }));
    ASSERT_TRUE(children.back()->started());
  }
  ::close(fds[1]);
  for (auto& c : children) c->Go();  // both start together
  for (auto& c : children) EXPECT_EQ(c->Wait(), "");
  uint64_t rebuilds = 0, r = 0;
  while (::read(fds[0], &r, sizeof(r)) == sizeof(r)) rebuilds += r;
  ::close(fds[0]);
  ASSERT_FALSE(HasFailure());

  EXPECT_OK(VerifyStore(path));
  auto eng = OpenStore(path, OpenOptions{.read_only = true});
  ASSERT_OK(eng.status());
  std::set<uint64_t> versions;
  for (int c = 0; c < kChildren; ++c) {
    for (int i = 0; i < kCommits; ++i) {
      const std::string key = "c" + std::to_string(c) + "/key-" + std::to_string(i);
      auto rec = (*eng)->Get(key);
      ASSERT_OK(rec.status());
      EXPECT_EQ(rec->value, Value(c, i)) << key;
      versions.insert(rec->version);
    }
  }
  EXPECT_EQ(rebuilds, uint64_t{kChildren * kCommits}) << "one durable write per one-key commit";
  EXPECT_EQ((*eng)->Stats().generation, 2 + rebuilds) << "a published table was lost";
  EXPECT_EQ((*eng)->Stats().entries, 2u + kChildren * kCommits);
  EXPECT_EQ(versions.size(), size_t{kChildren * kCommits}) << "two commits shared a generation";
  EXPECT_EQ(*versions.begin(), 3u);
  EXPECT_EQ(*versions.rbegin(), 2 + rebuilds);
}

// A writer that has not seen another process's commit still applies its batch on top of it
// (it re-reads STORE under the lock), instead of overwriting it with its stale table.
TEST(SnapshotMultiProcess, CommitAppliesToNewestTableOnDisk) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  ASSERT_OK(CreateStore(path, EngineKind::kSnapshot));
  ChildProcess child([&]() -> int {
    auto eng = OpenStore(path, OpenOptions{});
    if (!eng.ok()) return ChildFail("open", eng.status());
    Status s = (*eng)->Commit(Batch().Put("from-child", "c").Delete("a1"));
    return s.ok() ? 0 : ChildFail("commit", s);
  });
  ASSERT_TRUE(child.started());

  auto eng = OpenStore(path, OpenOptions{});  // no watch: only a commit makes it look
  ASSERT_OK(eng.status());
  Engine& a = **eng;
  ASSERT_OK(a.Commit(Batch().Put("a1", "1")));
  ASSERT_EQ(child.Wait(), "");

  ASSERT_OK(a.Commit(Batch().Put("a2", "2")));
  EXPECT_TRUE(a.Get("a1").status().IsNotFound()) << "the child's delete was undone";
  auto r = a.Get("from-child");
  ASSERT_OK(r.status());
  EXPECT_EQ(r->value, "c");
  EXPECT_EQ(a.Stats().generation, 4u);
  EXPECT_GE(a.Stats().external_reloads, 1u);
  eng->reset();
  auto fresh = OpenStore(path, OpenOptions{.read_only = true});
  ASSERT_OK(fresh.status());
  EXPECT_TRUE((*fresh)->Get("a1").status().IsNotFound());
  EXPECT_OK((*fresh)->Get("from-child").status());
  EXPECT_OK((*fresh)->Get("a2").status());
  EXPECT_OK(VerifyStore(path));
}

// Engine A watches the store; another process commits "x". A serves it without being asked
// and tells its listener, marked external.
TEST(SnapshotMultiProcess, WatcherFollowsCommitOfAnotherProcess) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  ASSERT_OK(CreateStore(path, EngineKind::kSnapshot));
  ChildProcess child([&]() -> int {
    auto eng = OpenStore(path, OpenOptions{});
    if (!eng.ok()) return ChildFail("open", eng.status());
    Status s = (*eng)->Commit(Batch().Put("x", "from another process"));
    return s.ok() ? 0 : ChildFail("commit", s);
  });
  ASSERT_TRUE(child.started());

  OpenOptions o;
  o.watch = true;
  auto eng = OpenStore(path, o);
  ASSERT_OK(eng.status());
  EventLog log;
  (*eng)->SetChangeListener(log.Listener());
  ASSERT_TRUE((*eng)->Get("x").status().IsNotFound());

  child.Go();
  ASSERT_EQ(child.Wait(), "");
  EXPECT_TRUE(EventuallyHas(**eng, "x", "from another process"));
  EXPECT_TRUE(log.WaitFor("x", /*external=*/true)) << "listener not told of the external commit";
  EXPECT_GE((*eng)->Stats().external_reloads, 1u);
}

// The same with the second engine in this process: a commit by another engine object is
// external to A just the same.
TEST(SnapshotMultiProcess, WatcherFollowsCommitOfAnotherEngine) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  ASSERT_OK(CreateStore(path, EngineKind::kSnapshot));
  OpenOptions o;
  o.watch = true;
  auto a = OpenStore(path, o);
  ASSERT_OK(a.status());
  EventLog log_a;
  (*a)->SetChangeListener(log_a.Listener());
  auto b = OpenStore(path, OpenOptions{});
  ASSERT_OK(b.status());
  EventLog log_b;
  (*b)->SetChangeListener(log_b.Listener());

  ASSERT_OK((*b)->Commit(Batch().Put("x", "1")));
  EXPECT_TRUE(log_b.WaitFor("x", /*external=*/false)) << "B's own commit is not external";
  EXPECT_TRUE(EventuallyHas(**a, "x", "1"));
  EXPECT_TRUE(log_a.WaitFor("x", /*external=*/true));

  // And the other way round, through A's own commit on top of B's.
  ASSERT_OK((*a)->Commit(Batch().Put("y", "2")));
  auto r = (*a)->Get("x");
  ASSERT_OK(r.status());
  EXPECT_EQ(r->value, "1");
  ASSERT_OK((*b)->Refresh());
  EXPECT_TRUE(EventuallyHas(**b, "y", "2"));
}

// A read-only engine refuses commits, creates no lock file, serves its table until told to
// look (Refresh) and then follows the newest file; with watch it follows on its own.
TEST(SnapshotMultiProcess, ReadOnlyEngineFollowsNewFiles) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  ASSERT_OK(CreateStore(path, EngineKind::kSnapshot));

  // Another process will commit (forked now, before any engine thread exists here).
  ChildProcess child([&]() -> int {
    auto eng = OpenStore(path, OpenOptions{});
    if (!eng.ok()) return ChildFail("open", eng.status());
    Status cs = (*eng)->Commit(Batch().Put("k", "v1"));
    return cs.ok() ? 0 : ChildFail("commit", cs);
  });
  ASSERT_TRUE(child.started());

  OpenOptions ro;
  ro.read_only = true;
  auto reader = OpenStore(path, ro);
  ASSERT_OK(reader.status());
  Engine& r = **reader;
  Status s = r.Commit(Batch().Put("k", "v"));
  EXPECT_EQ(s.code(), Status::Code::kReadOnly) << s.ToString();
  EXPECT_EQ(::access(dir.Join("STORE.lock").c_str(), F_OK), -1) << "a reader created the lock";
  EXPECT_OK(r.Refresh());  // nothing new: OK

  ro.watch = true;
  auto watcher = OpenStore(path, ro);
  ASSERT_OK(watcher.status());
  EventLog log;
  (*watcher)->SetChangeListener(log.Listener());

  ASSERT_EQ(child.Wait(), "");

  // Without watch, nothing changes until Refresh.
  EXPECT_TRUE(r.Get("k").status().IsNotFound());
  EXPECT_EQ(r.Stats().generation, 1u);
  ASSERT_OK(r.Refresh());
  auto got = r.Get("k");
  ASSERT_OK(got.status());
  EXPECT_EQ(got->value, "v1");
  EXPECT_EQ(r.Stats().generation, 2u);
  EXPECT_EQ(r.Commit(Batch().Put("k", "v2")).code(), Status::Code::kReadOnly);

  // With watch, it follows on its own and tells its listener.
  EXPECT_TRUE(EventuallyHas(**watcher, "k", "v1"));
  EXPECT_TRUE(log.WaitFor("k", /*external=*/true));

  // A value held from the old table stays readable after the reader moves on.
  auto pinned = r.Get("k");
  ASSERT_OK(pinned.status());
  {
    auto w = OpenStore(path, OpenOptions{});
    ASSERT_OK(w.status());
    ASSERT_OK((*w)->Commit(Batch().Put("k", "v3")));
  }
  ASSERT_OK(r.Refresh());
  EXPECT_EQ(pinned->value, "v1");
  auto now = r.Get("k");
  ASSERT_OK(now.status());
  EXPECT_EQ(now->value, "v3");
  EXPECT_TRUE(EventuallyHas(**watcher, "k", "v3"));
}

// Passes everything to Env::Default(); the first rename of a recycled spare over STORE
// (after Arm) first runs `before_rename` (a test's hook), then renames.
class SpareRenameHookEnv final : public Env {
 public:
  void Arm(std::function<void()> hook) { before_rename_ = std::move(hook); }
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path) override {
    return Env::Default()->NewExclusiveFile(path);
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (before_rename_ && from.find(".old-") != std::string::npos) {
      ++hooked_;
      std::exchange(before_rename_, nullptr)();
    }
    return Env::Default()->Rename(from, to);
  }
  Status RenameNoReplace(const std::string& from, const std::string& to) override {
    return Env::Default()->RenameNoReplace(from, to);
  }
  Status SyncDir(const std::string& dir) override { return Env::Default()->SyncDir(dir); }
  Status RemoveFile(const std::string& path) override { return Env::Default()->RemoveFile(path); }
  StatusOr<std::unique_ptr<WritableFile>> ReopenForRewrite(const std::string& path) override {
    return Env::Default()->ReopenForRewrite(path);
  }
  Status Link(const std::string& from, const std::string& to) override {
    return Env::Default()->Link(from, to);
  }
  int hooked() const { return hooked_; }

 private:
  std::function<void()> before_rename_;
  int hooked_ = 0;
};

// A writer that closes the store removes its spare files (STORE.old-*), which include other
// writers' spares it found at open. It must not remove one that another writer is rewriting
// for its commit at that moment: that commit's rename over STORE then failed with "No such
// file or directory" (a keyfsctl put ending while a mount committed: the writer's close()
// got ENOENT). Removal waits for the store lock, which the committing writer holds.
TEST(SnapshotMultiProcess, ClosingWriterLeavesTheSpareAnotherWriterRecycles) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  ASSERT_OK(CreateStore(path, EngineKind::kSnapshot));
  SpareRenameHookEnv env;
  OpenOptions o;
  o.env = &env;
  o.merge_threshold = 1;  // whole tables: the path that makes and recycles spares
  auto a = OpenStore(path, o);
  ASSERT_OK(a.status());
  // A few commits leave A spares nobody maps.
  for (int i = 0; i < 4; ++i) ASSERT_OK((*a)->Commit(Batch().Put("k", std::to_string(i))));
  // B opens the store read-write: it takes A's spares for its own list.
  auto b = OpenStore(path, OpenOptions{});
  ASSERT_OK(b.status());
  std::thread closer;
  std::atomic<bool> closed{false};
  env.Arm([&] {
    // A holds the store lock and has rewritten a spare; B closes now. Give it time to
    // remove what it would (it must wait for the lock instead).
    closer = std::thread([&] {
      b->reset();
      closed = true;
    });
    const auto end = Clock::now() + std::chrono::milliseconds(300);
    while (!closed && Clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  EXPECT_OK((*a)->Commit(Batch().Put("k", "after")));
  ASSERT_EQ(env.hooked(), 1) << "A wrote a fresh file instead of recycling a spare";
  closer.join();
  auto r = (*a)->Get("k");
  ASSERT_OK(r.status());
  EXPECT_EQ(r->value, "after");
  a->reset();
  EXPECT_OK(VerifyStore(path));
}

}  // namespace
}  // namespace keyfs
