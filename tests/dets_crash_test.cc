// Crash safety of the dets engine: a child process writes rounds of keys and syncs after
// each, telling the parent through a pipe which round's Sync() returned; the parent kills it
// with SIGKILL at a random moment (often in the middle of merging a large buffer), then
// checks that the store verifies clean, opens read-write again (the lock was released, temp
// files are cleaned up), holds every round whose sync returned, and holds the next round
// either completely or not at all.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keyfs/store/engine.h"
#include "testutil.h"

namespace keyfs {
namespace {

constexpr int kKeysPerRound = 20000;
constexpr int kShared = 200;

std::string RoundDir(int r) { return "r" + std::to_string(r); }
std::string RoundKey(int r, int i) { return RoundDir(r) + "/k" + std::to_string(i); }
std::string RoundValue(int r, int i) {
  return "round " + std::to_string(r) + " key " + std::to_string(i) + std::string(i % 97, '.');
}

// The child: rounds first..forever; after each round's Sync() returns, writes the round
// number to `fd`. Before each Sync() it writes -1 - round (so the parent can aim at syncs).
[[noreturn]] void Child(const std::string& path, int first, int fd) {
  OpenOptions o;
  o.sync_interval_s = 0;
  o.buffer_limit_bytes = uint64_t{1} << 30;
  auto e = OpenStore(path, o);
  if (!e.ok()) _exit(3);
  for (int r = first;; ++r) {
    Batch dir;
    dir.Mkdir(RoundDir(r));
    if (!(*e)->Commit(dir).ok()) _exit(4);
    for (int i = 0; i < kKeysPerRound;) {
      Batch b;
      for (int j = 0; j < 1000 && i < kKeysPerRound; ++j, ++i)
        b.Put(RoundKey(r, i), RoundValue(r, i));
      if (!(*e)->Commit(b).ok()) _exit(5);
    }
    Batch shared;
    for (int j = 0; j < kShared; ++j) {
      Mutation m;
      m.op = Mutation::Op::kPut;
      m.key = "shared/s" + std::to_string(j);
      m.value = std::to_string(r);
      m.make_parents = true;
      shared.Add(m);
    }
    if (r > 0) shared.Delete(RoundKey(r - 1, 0));  // a delete per round too
    if (!(*e)->Commit(shared).ok()) _exit(6);
    int32_t mark = -1 - r;
    if (::write(fd, &mark, sizeof(mark)) != sizeof(mark)) _exit(7);
    if (!(*e)->Sync().ok()) _exit(8);
    mark = r;
    if (::write(fd, &mark, sizeof(mark)) != sizeof(mark)) _exit(7);
  }
}

bool HasTemps(const std::string& dir) {
  bool found = false;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    if (std::string(e->d_name).find(".tmp-") != std::string::npos) found = true;
  }
  if (d) ::closedir(d);
  return found;
}

// Checks the store after a crash. `done` is the last round whose Sync() returned (-1: none).
// Returns the number of rounds present.
int CheckStore(const std::string& path, int done, int trial) {
  Status verified = VerifyStore(path);
  EXPECT_TRUE(verified.ok()) << "trial " << trial << ": " << verified.ToString();
  OpenOptions o;
  o.sync_interval_s = 0;
  auto e = OpenStore(path, o);  // read-write: the dead child's lock is gone
  EXPECT_TRUE(e.ok()) << "trial " << trial << ": " << e.status().ToString();
  if (!e.ok()) return 0;
  EXPECT_FALSE(HasTemps(path.substr(0, path.rfind('/'))))
      << "trial " << trial << ": temp files left after a read-write open";
  const Engine& s = **e;
  int present = 0;
  for (int r = 0;; ++r) {
    auto d = s.Get(RoundDir(r));
    if (!d.ok()) {
      EXPECT_GT(r, done) << "trial " << trial << ": round " << r << " was synced but is missing";
      break;
    }
    // All or nothing, and right.
    int found = 0;
    for (int i = 0; i < kKeysPerRound; ++i) {
      auto v = s.Get(RoundKey(r, i));
      if (v.ok()) {
        ++found;
        if (v->value != RoundValue(r, i)) {
          ADD_FAILURE() << "trial " << trial << ": wrong value of " << RoundKey(r, i);
          return r;
        }
      }
    }
    // Round r's key 0 is deleted by round r + 1.
    const bool next_present = s.Get(RoundDir(r + 1)).ok();
    EXPECT_EQ(found, kKeysPerRound - (next_present ? 1 : 0))
        << "trial " << trial << ": round " << r << " is partly present";
    ++present;
  }
  EXPECT_GE(present, done + 1) << "trial " << trial;
  EXPECT_LE(present, done + 2) << "trial " << trial;
  if (present > 0) {
    for (int j = 0; j < kShared; j += 17) {
      auto v = s.Get("shared/s" + std::to_string(j));
      EXPECT_TRUE(v.ok() && v->value == std::to_string(present - 1))
          << "trial " << trial << ": shared key " << j;
    }
  }
  return present;
}

TEST(DetsCrash, KillAtRandomMoments) {
  test::TempDir dir;
  const std::string path = dir.Join("store");
  {
    OpenOptions o;
    o.create = true;
    o.kind = EngineKind::kDets;
    auto e = OpenStore(path, o);
    ASSERT_TRUE(e.ok());
  }
  std::mt19937_64 rng(GTEST_FLAG_GET(random_seed) + 99);
  int rounds = 0;  // present in the store
  int kills_in_sync = 0;
  constexpr int kTrials = 16;
  for (int trial = 0; trial < kTrials; ++trial) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      Child(path, rounds, fds[1]);
    }
    ::close(fds[1]);
    // Three trials in four aim at a sync: wait for a round's "syncing" mark, then a short
    // delay. The others kill at any moment within the first second or so.
    const bool aim = trial % 4 != 3;
    int done = rounds - 1;
    bool in_sync = false;
    auto read_mark = [&](int32_t* m) { return ::read(fds[0], m, sizeof(*m)) == sizeof(*m); };
    if (aim) {
      int32_t m;
      const int target = static_cast<int>(rng() % 2);  // the first or second sync
      int seen = 0;
      while (read_mark(&m)) {
        if (m >= 0) {
          done = m;
        } else if (seen++ == target) {
          in_sync = true;  // until a later mark says the sync returned
          break;
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (trial % 2 ? 60000 : 8000)));
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1500000));
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "trial " << trial << ": child exited with " << status;
    int32_t m;
    while (read_mark(&m)) {
      if (m >= 0) {
        done = m;
        in_sync = false;
      } else {
        in_sync = true;
      }
    }
    ::close(fds[0]);
    if (in_sync) ++kills_in_sync;
    rounds = CheckStore(path, done, trial);
    if (HasFailure()) return;
  }
  RecordProperty("kills_in_sync", kills_in_sync);
  EXPECT_GE(kills_in_sync, kTrials / 4) << "too few kills landed during a sync to mean much";
  std::printf("dets crash test: %d of %d kills landed during a sync, %d rounds survived\n",
              kills_in_sync, kTrials, rounds);
  EXPECT_GT(rounds, 2);
}

}  // namespace
}  // namespace keyfs
