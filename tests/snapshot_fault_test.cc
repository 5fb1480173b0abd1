// Injected I/O failures during snapshot commits (SPEC §4: "Disk full or I/O error during a
// commit: the failing write returns the error, the previous state stays served, the daemon
// runs on"). A FaultEnv wraps Env::Default() and fails chosen calls; after each failure the
// store file must be byte-identical, the old state served, no temp file left behind, and the
// next commit must work.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/env.h"
#include "keyfs/store/snapshot.h"
#include "testutil.h"

namespace keyfs {
namespace {

using test::TempDir;

// Env::Default() with failures on demand. Thread-safe: the engine's committer calls it while
// the test thread arms it.
class FaultEnv final : public Env {
 public:
  enum Op { kCreate, kAppend, kWriteAt, kSync, kRename, kSyncDir, kOpCount };

  // The `nth` call of `op` from now on (1 = the next one) fails with `err`, and so do the
  // `times - 1` calls of `op` after it. A failing Append first writes half of its data, as a
  // write(2) that runs out of space midway does.
  void Arm(Op op, int nth, int err, int times = 1) {
    std::lock_guard<std::mutex> l(mu_);
    faults_[op] = Fault{nth, times, err};
  }
  void Clear() {
    std::lock_guard<std::mutex> l(mu_);
    for (Fault& f : faults_) f = Fault{};
  }
  int calls(Op op) const {
    std::lock_guard<std::mutex> l(mu_);
    return calls_[op];
  }
  int injected(Op op) const {
    std::lock_guard<std::mutex> l(mu_);
    return injected_[op];
  }

  // 0 if this call of `op` proceeds, else the errno to fail it with.
  int Next(Op op) {
    std::lock_guard<std::mutex> l(mu_);
    ++calls_[op];
    Fault& f = faults_[op];
    if (f.countdown == 0 || --f.countdown > 0) return 0;
    ++injected_[op];
    if (--f.times > 0) f.countdown = 1;
    return f.err;
  }

  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path) override {
    if (int err = Next(kCreate)) return Status::FromErrno(err, "injected: create " + path);
    auto f = base_->NewExclusiveFile(path);
    if (!f.ok()) return f.status();
    return std::unique_ptr<WritableFile>(new File(this, std::move(*f), path));
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (int err = Next(kRename)) return Status::FromErrno(err, "injected: rename " + from);
    return base_->Rename(from, to);
  }
  Status RenameNoReplace(const std::string& from, const std::string& to) override {
    if (int err = Next(kRename)) return Status::FromErrno(err, "injected: rename " + from);
    return base_->RenameNoReplace(from, to);
  }
  Status SyncDir(const std::string& dir) override {
    if (int err = Next(kSyncDir)) return Status::FromErrno(err, "injected: fsync " + dir);
    return base_->SyncDir(dir);
  }
  Status RemoveFile(const std::string& path) override { return base_->RemoveFile(path); }
  // Reopening a file to write into it (what the snapshot engine's commit log needs) only
  // after AllowRewrite(): without it the engine writes a whole table per commit.
  void AllowRewrite() { rewrite_ = true; }
  StatusOr<std::unique_ptr<WritableFile>> ReopenForRewrite(const std::string& path) override {
    if (!rewrite_) return Status::NotSupported("rewrite in place");
    auto f = base_->ReopenForRewrite(path);
    if (!f.ok()) return f.status();
    return std::unique_ptr<WritableFile>(new File(this, std::move(*f), path));
  }

 private:
  struct Fault {
    int countdown = 0;  // 0: off
    int times = 0;
    int err = 0;
  };

  class File final : public WritableFile {
   public:
    File(FaultEnv* env, std::unique_ptr<WritableFile> base, std::string path)
        : env_(env), base_(std::move(base)), path_(std::move(path)) {}
    Status Append(std::string_view data) override {
      if (int err = env_->Next(kAppend)) {
        (void)base_->Append(data.substr(0, data.size() / 2));
        return Status::FromErrno(err, "injected: write " + path_);
      }
      return base_->Append(data);
    }
    Status WriteAt(uint64_t offset, std::string_view data) override {
      if (int err = env_->Next(kWriteAt)) {
        (void)base_->WriteAt(offset, data.substr(0, data.size() / 2));  // a short write
        return Status::FromErrno(err, "injected: pwrite " + path_);
      }
      return base_->WriteAt(offset, data);
    }
    Status Truncate(uint64_t size) override { return base_->Truncate(size); }
    Status Sync() override {
      if (int err = env_->Next(kSync)) return Status::FromErrno(err, "injected: fsync " + path_);
      return base_->Sync();
    }
    Status Close() override { return base_->Close(); }
    int fd() const override { return base_->fd(); }

   private:
    FaultEnv* env_;
    std::unique_ptr<WritableFile> base_;
    std::string path_;
  };

  Env* const base_ = Env::Default();
  std::atomic<bool> rewrite_{false};
  mutable std::mutex mu_;
  std::array<Fault, kOpCount> faults_{};
  std::array<int, kOpCount> calls_{};
  std::array<int, kOpCount> injected_{};
};

std::string ReadAll(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<cannot open " + path + ">";
  char buf[1 << 16];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// The directory's entries, less the spares (STORE.old-*) a commit keeps on purpose to
// recycle: those are part of the design (FORMAT.md §2.8), temp files are not.
std::vector<std::string> DirNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* de = ::readdir(d)) {
    std::string n = de->d_name;
    if (n != "." && n != ".." && n.find(".old-") == std::string::npos) names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

const std::vector<std::string> kOnlyStore = {"STORE", "STORE.lock"};

// Every file of `dir` and its value, read through the engine (one level deep: enough here).
std::map<std::string, std::string> Snapshot(const Engine& e) {
  std::map<std::string, std::string> out;
  std::vector<std::string> dirs = {""};
  while (!dirs.empty()) {
    std::string dir = dirs.back();
    dirs.pop_back();
    std::vector<std::pair<std::string, bool>> kids;
    Status s = e.List(dir, "", [&](const DirEntry& d) {
      kids.emplace_back(std::string(d.name), d.meta.type == EntryType::kDir);
      return true;
    });
    if (!s.ok()) {
      out["<list " + dir + ">"] = s.ToString();
      continue;
    }
    for (const auto& [name, is_dir] : kids) {
      std::string key = dir.empty() ? name : dir + "/" + name;
      if (is_dir) {
        out[key + "/"] = "";
        dirs.push_back(key);
      } else {
        auto r = e.Get(key);
        out[key] = r.ok() ? std::string(r->value) : "<" + r.status().ToString() + ">";
      }
    }
  }
  return out;
}

// ---- one failing commit at a time ----

struct FaultCase {
  const char* name;
  FaultEnv::Op op;
  int nth;  // which call of op (within the failing commit) fails
  int err;
  Status::Code want;
};
void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.name; }

// A store of ~3 MiB with a few small files, and a FaultEnv to open it with.
class SnapshotFaultStore : public testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.Join("STORE");
    OpenOptions o;
    o.create = true;
    o.merge_threshold = 1;  // every commit writes a whole table: STORE holds everything
    auto eng = OpenStore(path_, o);
    ASSERT_OK(eng.status());
    // Three 1 MiB values make the table ~3 MiB: the builder appends it in several writes,
    // so an Append can fail in the middle of the file.
    std::mt19937_64 rng(7);
    Batch b;
    b.Mkdir("a");
    for (int i = 0; i < 20; ++i) b.Put("a/" + std::to_string(i), "old-" + std::to_string(i));
    for (int i = 0; i < 3; ++i) b.Put("big" + std::to_string(i), test::RandomBytes(rng, 1 << 20));
    b.Symlink("link", "a/1");
    ASSERT_OK((*eng)->Commit(b));
  }

  // The whole-table commit path (the commit log's faults: snapshot_log_fault_test.cc).
  OpenOptions WithFaults() {
    OpenOptions o;
    o.env = &env_;
    o.merge_threshold = 1;
    return o;
  }

  TempDir dir_;
  std::string path_;
  FaultEnv env_;
};

class SnapshotFault : public SnapshotFaultStore, public testing::WithParamInterface<FaultCase> {};
class SnapshotFaultSyncDir : public SnapshotFaultStore {};

// The failing commit returns the injected error; STORE, the served state and the directory
// are exactly as before; the next commit works and sees the old state plus its own change.
TEST_P(SnapshotFault, FailedCommitLeavesNoTrace) {
  const FaultCase& c = GetParam();
  auto eng = OpenStore(path_, WithFaults());
  ASSERT_OK(eng.status());
  Engine& e = **eng;
  std::vector<ChangeEvent> events;
  std::mutex events_mu;
  e.SetChangeListener([&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(events_mu);
    events.push_back(ev);
  });

  const std::string before_bytes = ReadAll(path_);
  const auto before = Snapshot(e);
  const uint64_t gen = e.Stats().generation;
  ASSERT_EQ(before.at("a/1"), "old-1");

  env_.Arm(c.op, c.nth, c.err);
  Status s = e.Commit(Batch().Put("a/1", "new-1").Put("a/new", "x").Delete("a/2"));
  EXPECT_EQ(env_.injected(c.op), 1) << "the fault did not fire: the test is not testing anything";
  EXPECT_EQ(s.code(), c.want) << s.ToString();
  EXPECT_EQ(s.sys_errno(), c.err) << s.ToString();

  EXPECT_TRUE(ReadAll(path_) == before_bytes) << "STORE changed on disk";
  EXPECT_EQ(Snapshot(e), before) << "the served state changed";
  EXPECT_EQ(e.Stats().generation, gen);
  EXPECT_EQ(DirNames(dir_.path()), kOnlyStore) << "a temp file was left behind";
  {
    std::lock_guard<std::mutex> l(events_mu);
    EXPECT_TRUE(events.empty()) << "a change was reported for a failed commit";
  }

  // The fault is gone (it fired once): the next commit works on the old state.
  ASSERT_OK(e.Commit(Batch().Put("a/3", "after")));
  auto after = before;
  after["a/3"] = "after";
  EXPECT_EQ(Snapshot(e), after);
  EXPECT_EQ(e.Stats().generation, gen + 1);
  EXPECT_EQ(DirNames(dir_.path()), kOnlyStore);
  EXPECT_OK(VerifyStore(path_));

  eng->reset();
  auto fresh = OpenStore(path_, OpenOptions{});
  ASSERT_OK(fresh.status());
  EXPECT_EQ(Snapshot(**fresh), after) << "the state on disk differs from the one served";
}

// A fault that persists: several commits in a row fail, none leaves a trace, and the engine
// recovers as soon as the disk does.
TEST_P(SnapshotFault, RepeatedFailuresThenRecovery) {
  const FaultCase& c = GetParam();
  auto eng = OpenStore(path_, WithFaults());
  ASSERT_OK(eng.status());
  Engine& e = **eng;
  const std::string before_bytes = ReadAll(path_);
  const auto before = Snapshot(e);

  env_.Arm(c.op, c.nth, c.err, /*times=*/1000);
  for (int i = 0; i < 5; ++i) {
    Status s = e.Commit(Batch().Put("a/fail-" + std::to_string(i), "x"));
    EXPECT_EQ(s.code(), c.want) << "attempt " << i << ": " << s.ToString();
  }
  EXPECT_GE(env_.injected(c.op), 5);
  EXPECT_EQ(e.Stats().commit_errors, 5u);
  EXPECT_TRUE(ReadAll(path_) == before_bytes) << "STORE changed on disk";
  EXPECT_EQ(Snapshot(e), before);
  EXPECT_EQ(DirNames(dir_.path()), kOnlyStore);

  env_.Clear();
  ASSERT_OK(e.Commit(Batch().Put("a/ok", "y")));
  auto r = e.Get("a/ok");
  ASSERT_OK(r.status());
  EXPECT_EQ(r->value, "y");
  EXPECT_TRUE(e.Get("a/fail-0").status().IsNotFound());
  EXPECT_OK(VerifyStore(path_));
}

INSTANTIATE_TEST_SUITE_P(
    Faults, SnapshotFault,
    testing::Values(
        FaultCase{"CreateTempNoSpace", FaultEnv::kCreate, 1, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"FirstAppendNoSpace", FaultEnv::kAppend, 1, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"MidFileAppendNoSpace", FaultEnv::kAppend, 2, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"LastAppendQuota", FaultEnv::kAppend, 3, EDQUOT, Status::Code::kNoSpace},
        FaultCase{"AppendEIO", FaultEnv::kAppend, 2, EIO, Status::Code::kIOError},
        FaultCase{"HeaderWriteEIO", FaultEnv::kWriteAt, 1, EIO, Status::Code::kIOError},
        FaultCase{"SyncEIO", FaultEnv::kSync, 1, EIO, Status::Code::kIOError},
        FaultCase{"SyncNoSpace", FaultEnv::kSync, 1, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"RenameEIO", FaultEnv::kRename, 1, EIO, Status::Code::kIOError},
        FaultCase{"RenameNoSpace", FaultEnv::kRename, 1, ENOSPC, Status::Code::kNoSpace}),
    [](const testing::TestParamInfo<FaultCase>& info) { return std::string(info.param.name); });

// The commit log's path (FORMAT.md 2.10): a fault while creating the log, writing a record
// or fdatasyncing it fails the commit with the error and leaves STORE, STORE.log (its bytes:
// a written record is cut off again), the served state and the directory as they were; the
// next commit works, and a fresh open sees what was served.
class SnapshotLogFault : public SnapshotFaultStore, public testing::WithParamInterface<FaultCase> {
 protected:
  // "Record*" cases fail an append to an existing log; the others the log's creation.
  bool log_exists() const { return std::string(GetParam().name).rfind("Record", 0) == 0; }
};

TEST_P(SnapshotLogFault, FailedAppendLeavesNoTrace) {
  const FaultCase& c = GetParam();
  env_.AllowRewrite();
  OpenOptions o = WithFaults();
  o.merge_threshold = 0;  // the commit log
  auto eng = OpenStore(path_, o);
  ASSERT_OK(eng.status());
  Engine& e = **eng;
  const std::string log = path_ + ".log";
  if (log_exists()) {
    ASSERT_OK(e.Commit(Batch().Put("a/warm", "w")));
    ASSERT_EQ(::access(log.c_str(), F_OK), 0) << "the commit did not go to the log";
  }
  std::vector<ChangeEvent> events;
  std::mutex events_mu;
  e.SetChangeListener([&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(events_mu);
    events.push_back(ev);
  });
  const std::string store_bytes = ReadAll(path_), log_bytes = ReadAll(log);
  const auto before = Snapshot(e);
  const auto names = DirNames(dir_.path());
  const uint64_t gen = e.Stats().generation;

  env_.Arm(c.op, c.nth, c.err);
  Status s = e.Commit(Batch().Put("a/1", "new-1").Put("a/new", "x").Delete("a/2"));
  EXPECT_EQ(env_.injected(c.op), 1) << "the fault did not fire: the test is not testing anything";
  EXPECT_EQ(s.code(), c.want) << s.ToString();
  EXPECT_TRUE(ReadAll(path_) == store_bytes) << "STORE changed on disk";
  EXPECT_TRUE(ReadAll(log) == log_bytes) << "STORE.log changed on disk";
  EXPECT_EQ(Snapshot(e), before) << "the served state changed";
  EXPECT_EQ(e.Stats().generation, gen);
  EXPECT_EQ(DirNames(dir_.path()), names) << "a temp file was left behind";
  {
    std::lock_guard<std::mutex> l(events_mu);
    EXPECT_TRUE(events.empty()) << "a change was reported for a failed commit";
  }
  {
    auto other = OpenStore(path_, OpenOptions{.read_only = true});
    ASSERT_OK(other.status());
    EXPECT_EQ(Snapshot(**other), before) << "another process sees the failed commit";
  }

  ASSERT_OK(e.Commit(Batch().Put("a/3", "after")));
  auto after = before;
  after["a/3"] = "after";
  EXPECT_EQ(Snapshot(e), after);
  EXPECT_EQ(e.Stats().generation, gen + 1);
  EXPECT_OK(VerifyStore(path_));
  eng->reset();
  auto fresh = OpenStore(path_, OpenOptions{});
  ASSERT_OK(fresh.status());
  EXPECT_EQ(Snapshot(**fresh), after) << "the state on disk differs from the one served";
}

INSTANTIATE_TEST_SUITE_P(
    Faults, SnapshotLogFault,
    testing::Values(
        FaultCase{"CreateTempNoSpace", FaultEnv::kCreate, 1, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"HeaderAppendEIO", FaultEnv::kAppend, 1, EIO, Status::Code::kIOError},
        FaultCase{"CreateSyncEIO", FaultEnv::kSync, 1, EIO, Status::Code::kIOError},
        FaultCase{"CreateRenameNoSpace", FaultEnv::kRename, 1, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"RecordWriteNoSpace", FaultEnv::kWriteAt, 1, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"RecordWriteEIO", FaultEnv::kWriteAt, 1, EIO, Status::Code::kIOError},
        FaultCase{"RecordSyncEIO", FaultEnv::kSync, 1, EIO, Status::Code::kIOError},
        FaultCase{"RecordSyncNoSpace", FaultEnv::kSync, 1, ENOSPC, Status::Code::kNoSpace}),
    [](const testing::TestParamInfo<FaultCase>& i) { return std::string(i.param.name); });

// The table the builder writes for the fixture is big enough for the mid-file cases.
TEST_F(SnapshotFaultStore, TableNeedsSeveralAppends) {
  auto eng = OpenStore(path_, WithFaults());
  ASSERT_OK(eng.status());
  ASSERT_OK((*eng)->Commit(Batch().Put("a/x", "x")));
  EXPECT_GE(env_.calls(FaultEnv::kAppend), 3);
  EXPECT_EQ(env_.calls(FaultEnv::kSync), 1);
  EXPECT_EQ(env_.calls(FaultEnv::kRename), 1);
  EXPECT_GE(env_.calls(FaultEnv::kSyncDir), 1);
}

// ---- the directory fsync after the rename ----
//
// Once STORE has been renamed, a failed directory fsync cannot be undone: the new table is
// on disk (perhaps not durably). The engine documents this as "in doubt": the batches get
// the error, the new table is served (snapshot_engine.cc, step 5). What must hold whatever
// the outcome: the error is returned, STORE is a sound table, what is served is what is on
// disk, no temp file remains, and the engine keeps working.

TEST_F(SnapshotFaultSyncDir, FailureIsReportedAndServedStateMatchesDisk) {
  auto eng = OpenStore(path_, WithFaults());
  ASSERT_OK(eng.status());
  Engine& e = **eng;
  env_.Arm(FaultEnv::kSyncDir, 1, EIO, /*times=*/1000);  // every retry fails too
  Status s = e.Commit(Batch().Put("a/1", "new-1"));
  EXPECT_EQ(s.code(), Status::Code::kIOError) << s.ToString();
  EXPECT_GE(env_.injected(FaultEnv::kSyncDir), 1);
  env_.Clear();

  EXPECT_OK(VerifyStore(path_));
  EXPECT_EQ(DirNames(dir_.path()), kOnlyStore);
  const auto served = Snapshot(e);
  {
    auto fresh = OpenStore(path_, OpenOptions{.read_only = true});
    ASSERT_OK(fresh.status());
    EXPECT_EQ(Snapshot(**fresh), served) << "served state and STORE disagree";
  }
  ASSERT_OK(e.Commit(Batch().Put("a/2", "new-2")));
  auto after = served;
  after["a/2"] = "new-2";
  EXPECT_EQ(Snapshot(e), after);
  EXPECT_OK(VerifyStore(path_));
}

// A single failed directory fsync: the engine may retry it. Either way the outcome must be
// consistent: OK means the change is served and on disk.
TEST_F(SnapshotFaultSyncDir, FailingOnceIsConsistent) {
  auto eng = OpenStore(path_, WithFaults());
  ASSERT_OK(eng.status());
  Engine& e = **eng;
  env_.Arm(FaultEnv::kSyncDir, 1, EIO);
  Status s = e.Commit(Batch().Put("a/1", "new-1"));
  EXPECT_TRUE(s.ok() || s.code() == Status::Code::kIOError) << s.ToString();
  auto r = e.Get("a/1");
  ASSERT_OK(r.status());
  if (s.ok()) {
    EXPECT_EQ(r->value, "new-1");
  }
  const auto served = Snapshot(e);
  auto fresh = OpenStore(path_, OpenOptions{.read_only = true});
  ASSERT_OK(fresh.status());
  EXPECT_EQ(Snapshot(**fresh), served);
  EXPECT_EQ(DirNames(dir_.path()), kOnlyStore);
}

// The change listener is how fs/ learns that the served state changed (and drops the
// kernel's caches). If a failed directory fsync leaves the NEW table served, the listener
// must hear of it like of any other change, or the kernel keeps serving the old values.
TEST_F(SnapshotFaultSyncDir, FailureThatChangesServedStateNotifiesListener) {
  auto eng = OpenStore(path_, WithFaults());
  ASSERT_OK(eng.status());
  Engine& e = **eng;
  std::vector<ChangeEvent> events;
  std::mutex mu;
  e.SetChangeListener([&](const ChangeEvent& ev) {
    std::lock_guard<std::mutex> l(mu);
    events.push_back(ev);
  });
  const uint64_t gen = e.Stats().generation;
  env_.Arm(FaultEnv::kSyncDir, 1, EIO, /*times=*/1000);
  Status s = e.Commit(Batch().Put("a/1", "new-1"));
  env_.Clear();
  EXPECT_FALSE(s.ok());
  auto r = e.Get("a/1");
  ASSERT_OK(r.status());
  if (e.Stats().generation == gen) {
    EXPECT_EQ(r->value, "old-1");
    GTEST_SKIP() << "the old table is still served; nothing to report";
  }
  ASSERT_EQ(r->value, "new-1");
  // Give a (hypothetical) asynchronous notification the chance a later commit gives it.
  ASSERT_OK(e.Commit(Batch().Put("a/5", "new-5")));
  std::lock_guard<std::mutex> l(mu);
  bool reported = false;
  for (const ChangeEvent& ev : events) {
    reported |= std::find(ev.changed.begin(), ev.changed.end(), "a/1") != ev.changed.end();
  }
  EXPECT_TRUE(reported) << "generation " << gen << " -> " << e.Stats().generation
                        << " served 'a/1' = new-1, but the listener never heard of 'a/1' ("
                        << events.size() << " events)";
}

// ---- temp files ----

// Temp files of a writer that died (a crash between create and rename) are removed by the
// next writer that opens the store; other files are left alone.
TEST(SnapshotTempFiles, StaleTempsAreRemovedOnOpen) {
  TempDir dir;
  const std::string path = dir.Join("STORE");
  ASSERT_OK(CreateStore(path, EngineKind::kSnapshot));
  for (const char* name : {"STORE.tmp-99999-1", "STORE.tmp-1-create"}) {
    int fd = ::open(dir.Join(name).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "junk", 4), 4);
    ::close(fd);
  }
  int fd = ::open(dir.Join("OTHER.tmp-1-1").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  {
    OpenOptions ro;
    ro.read_only = true;
    auto eng = OpenStore(path, ro);  // readers never touch the directory
    ASSERT_OK(eng.status());
    EXPECT_EQ(DirNames(dir.path()).size(), 4u);
  }
  auto eng = OpenStore(path, OpenOptions{});
  ASSERT_OK(eng.status());
  EXPECT_EQ(DirNames(dir.path()),
            (std::vector<std::string>{"OTHER.tmp-1-1", "STORE", "STORE.lock"}));
}

// ---- many committers, one failing rebuild ----

// 8 threads commit their own keys while rebuilds fail now and then. Every commit answered OK
// must be in the store after a reopen, every commit answered with an error must not be.
class SnapshotFaultConcurrent : public testing::TestWithParam<FaultCase> {};

TEST_P(SnapshotFaultConcurrent, NoAcknowledgedWriteLostNoFailedWriteApplied) {
  const FaultCase& c = GetParam();
  TempDir dir;
  const std::string path = dir.Join("STORE");
  {
    OpenOptions o;
    o.create = true;
    auto eng = OpenStore(path, o);
    ASSERT_OK(eng.status());
    Batch b;
    for (int t = 0; t < 8; ++t) b.Mkdir("t" + std::to_string(t));
    ASSERT_OK((*eng)->Commit(b));
  }
  FaultEnv env;
  OpenOptions o;
  o.env = &env;
  auto eng = OpenStore(path, o);
  ASSERT_OK(eng.status());
  Engine& e = **eng;

  constexpr int kThreads = 8, kCommits = 25;
  // Fail one rebuild early on (while all threads are busy) and another one later.
  env.Arm(c.op, c.nth, c.err);
  std::atomic<int> done{0};
  std::vector<std::vector<Status>> results(kThreads, std::vector<Status>(kCommits));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCommits; ++i) {
        const std::string key = "t" + std::to_string(t) + "/k" + std::to_string(i);
        results[t][i] = e.Commit(Batch().Put(key, "v" + std::to_string(t * 1000 + i)));
        if (t == 0 && i == kCommits / 2) env.Arm(c.op, 1, c.err);
      }
      done.fetch_add(1);
    });
  }
  for (std::thread& th : threads) th.join();
  ASSERT_EQ(done.load(), kThreads);
  EXPECT_EQ(env.injected(c.op), 2) << "the faults did not fire";

  int failed = 0;
  auto check = [&](const Engine& eng, const char* when) {
    for (int t = 0; t < kThreads; ++t) {
      for (int i = 0; i < kCommits; ++i) {
        const std::string key = "t" + std::to_string(t) + "/k" + std::to_string(i);
        const Status& s = results[t][i];
        auto r = eng.Get(key);
        if (s.ok()) {
          EXPECT_TRUE(r.ok() && r->value == "v" + std::to_string(t * 1000 + i))
              << when << ": acknowledged write of " << key << " lost: " << r.status().ToString();
        } else {
          EXPECT_EQ(s.code(), c.want) << key << ": " << s.ToString();
          EXPECT_TRUE(r.status().IsNotFound())
              << when << ": " << key << " failed (" << s.ToString() << ") but is present";
        }
      }
    }
  };
  for (const auto& row : results) {
    for (const Status& s : row) failed += !s.ok();
  }
  EXPECT_GE(failed, 2) << "each failed rebuild fails at least one commit";
  EXPECT_LT(failed, kThreads * kCommits);
  check(e, "served");
  EXPECT_EQ(e.Stats().commit_errors, static_cast<uint64_t>(failed));
  eng->reset();
  EXPECT_EQ(DirNames(dir.path()), kOnlyStore);
  EXPECT_OK(VerifyStore(path));
  auto fresh = OpenStore(path, OpenOptions{.read_only = true});
  ASSERT_OK(fresh.status());
  check(**fresh, "after reopen");
}

INSTANTIATE_TEST_SUITE_P(
    Faults, SnapshotFaultConcurrent,
    testing::Values(
        FaultCase{"SyncEIO", FaultEnv::kSync, 3, EIO, Status::Code::kIOError},
        FaultCase{"AppendNoSpace", FaultEnv::kAppend, 3, ENOSPC, Status::Code::kNoSpace},
        FaultCase{"RenameEIO", FaultEnv::kRename, 3, EIO, Status::Code::kIOError},
        FaultCase{"CreateNoSpace", FaultEnv::kCreate, 3, ENOSPC, Status::Code::kNoSpace}),
    [](const testing::TestParamInfo<FaultCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace keyfs
