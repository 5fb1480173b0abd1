// Golden-output tests of keyfsctl: each runs the built binary (KEYFSCTL_PATH) in a fresh
// temporary directory and compares its exit status, stdout and stderr exactly; only text
// that the store chooses (corruption details, extra info lines) is matched by pattern.
// Every failing input is also checked to leave the store file byte-for-byte unchanged.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

#ifndef KEYFSCTL_PATH
#error "KEYFSCTL_PATH must name the keyfsctl binary under test"
#endif

namespace keyfs {
namespace {

namespace fs = std::filesystem;

// ---- running the binary ----------------------------------------------------------------

struct Result {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
  bool operator==(const Result&) const = default;
};

void PrintTo(const Result& r, std::ostream* os) {
  *os << "{status " << r.status << ", stdout " << testing::PrintToString(r.out) << ", stderr "
      << testing::PrintToString(r.err) << "}";
}

std::string ReadFile(const std::string& path) {
  std::string data;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<cannot open " + path + ": " + std::strerror(errno) + ">";
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) data.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return data;
}

void WriteFile(const std::string& path, std::string_view data, mode_t mode = 0644) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(::fchmod(fd, mode), 0);
  ::close(fd);
}

// Runs `exe args...` with cwd `cwd` and `input` on stdin; stdout and stderr go to files in
// `io_dir`, so no output size can deadlock the test.
Result RunBinary(const std::string& exe, const std::vector<std::string>& args,
                 const std::string& input, const std::string& cwd, const std::string& io_dir) {
  std::string in = io_dir + "/stdin", out = io_dir + "/stdout", err = io_dir + "/stderr";
  WriteFile(in, input);
  pid_t pid = ::fork();
  if (pid == 0) {
    int i = ::open(in.c_str(), O_RDONLY);
    int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (i < 0 || o < 0 || e < 0 || ::dup2(i, 0) < 0 || ::dup2(o, 1) < 0 || ::dup2(e, 2) < 0 ||
        ::chdir(cwd.c_str()) != 0) {
      ::_exit(126);
    }
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(exe.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  Result r;
  int wstatus = 0;
  if (pid < 0 || ::waitpid(pid, &wstatus, 0) != pid) return r;
  r.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

// Removes a tree however deep (rm uses openat, so paths beyond PATH_MAX are fine).
void RemoveTree(const std::string& path) {
  if (path.empty()) return;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execlp("rm", "rm", "-rf", "--", path.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int ws;
  if (pid > 0) ::waitpid(pid, &ws, 0);
}

std::string MakeTempDir() {
  const char* base = ::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/keyfsctl-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

// ---- trees on disk ---------------------------------------------------------------------

int64_t MtimeNs(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
}

// One line per entry below `root` (root itself excluded), sorted: path, type, permission
// bits, mtime in ns, uid, gid, and the content (file) or target (symlink). Two trees
// that describe equal are equal in everything export and import promise to keep.
std::vector<std::string> DescribeTree(const std::string& root) {
  std::vector<std::string> lines;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    std::string path = e.path().string();
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
      lines.push_back(path + ": lstat failed");
      continue;
    }
    std::string rel = path.substr(root.size() + 1);
    char head[160];
    std::snprintf(head, sizeof head, " %c %04o %lld %u %u ",
                  S_ISDIR(st.st_mode)   ? 'd'
                  : S_ISLNK(st.st_mode) ? 'l'
                  : S_ISREG(st.st_mode) ? 'f'
                                        : '?',
                  st.st_mode & 07777, static_cast<long long>(MtimeNs(st)), st.st_uid, st.st_gid);
    std::string body;
    if (S_ISREG(st.st_mode)) body = testing::PrintToString(ReadFile(path));
    if (S_ISLNK(st.st_mode)) body = fs::read_symlink(path).string();
    lines.push_back(rel + head + body);
  }
  std::sort(lines.begin(), lines.end());
  return lines;
}

// The brief's own yardstick: `find -printf` of both trees, sorted.
std::string FindListing(const std::string& root) {
  std::string cmd = "cd '" + root +
                    "' && find . -mindepth 1 -printf '%p %m %T@ %y %l %U %G %s\\n' | LC_ALL=C sort";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "<popen failed>";
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

void SetMtime(const std::string& path, int64_t ns) {
  struct timespec ts[2];
  ts[0].tv_sec = 0;
  ts[0].tv_nsec = UTIME_OMIT;
  ts[1].tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts[1].tv_nsec = static_cast<long>(ns % 1'000'000'000);
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0)
      << path << ": " << std::strerror(errno);
}

std::string Repeat(char c, size_t n) { return std::string(n, c); }

// `text` split after each '\n'; false if it does not end in one.
bool SplitLines(const std::string& text, std::vector<std::string>* lines) {
  lines->clear();
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) return false;
    lines->push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return true;
}

// True if `err` is exactly one line "<prefix><something more>\n" mentioning `word`.
// For messages whose details the store words (corruption, conflicts).
bool IsOneLine(const std::string& err, const std::string& prefix, const std::string& word = "") {
  std::vector<std::string> lines;
  return SplitLines(err, &lines) && lines.size() == 1 && lines[0].size() > prefix.size() &&
         lines[0].starts_with(prefix) && lines[0].find(word, prefix.size()) != std::string::npos;
}

// ---- the fixture -----------------------------------------------------------------------

class KeyfsctlTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    io_ = MakeTempDir();
  }
  void TearDown() override {
    RemoveTree(dir_);
    RemoveTree(io_);
  }

  // keyfsctl ARGS, run in the test's directory, so relative names ("s") appear in messages.
  Result Ctl(const std::vector<std::string>& args, const std::string& input = "") {
    return RunBinary(KEYFSCTL_PATH, args, input, dir_, io_);
  }
  static Result Ok(std::string out = "") { return {0, std::move(out), ""}; }
  // Exit 1 with the one line "keyfsctl: <line>".
  static Result Fails(const std::string& line) { return {1, "", "keyfsctl: " + line + "\n"}; }
  // Exit 2 with the one line "keyfsctl: <line>; try 'keyfsctl --help'".
  static Result UsageError(const std::string& line) {
    return {2, "", "keyfsctl: " + line + "; try 'keyfsctl --help'\n"};
  }

  std::string Path(const std::string& rel) const { return dir_ + "/" + rel; }
  bool Exists(const std::string& rel) const {
    struct stat st;
    return ::lstat(Path(rel).c_str(), &st) == 0;
  }

  // A new store of the engine under test.
  void CreateStore(const std::string& store = "s") {
    ASSERT_EQ(Ctl({"create", store, "--engine", engine_}), Ok());
  }

  // The store file's inode and bytes: equal before and after means nothing was committed.
  std::string StoreState(const std::string& store = "s") const {
    struct stat st;
    if (::stat(Path(store).c_str(), &st) != 0) return "<missing>";
    return std::to_string(st.st_ino) + ":" + ReadFile(Path(store));
  }

  // Direct engine access, to set up what keyfsctl cannot write (symlinks, owners) and to
  // check metadata that keyfsctl does not print.
  std::unique_ptr<Engine> OpenEngine(bool read_only, const std::string& store = "s") {
    OpenOptions o;
    o.read_only = read_only;
    StatusOr<std::unique_ptr<Engine>> e = OpenStore(Path(store), o);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(e).value() : nullptr;
  }
  void CommitDirect(const Batch& b, const std::string& store = "s") {
    std::unique_ptr<Engine> e = OpenEngine(false, store);
    ASSERT_NE(e, nullptr);
    Status s = e->Commit(b);
    ASSERT_TRUE(s.ok()) << s.ToString();
    s = e->Sync();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  Meta MetaOf(const std::string& key, const std::string& store = "s") {
    std::unique_ptr<Engine> e = OpenEngine(true, store);
    if (!e) return {};
    StatusOr<Record> r = e->Get(key);
    EXPECT_TRUE(r.ok()) << key << ": " << r.status().ToString();
    return r.ok() ? r->meta : Meta{};
  }

  std::string dir_, io_;
  std::string engine_ = "snapshot";
};

// Suites that run once per engine: keyfsctl reaches both through the one Engine API and
// must behave the same on each.
class EngineTest : public KeyfsctlTest, public testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    KeyfsctlTest::SetUp();
    engine_ = GetParam();
  }
};
#define KEYFSCTL_ON_EVERY_ENGINE(suite)                                        \
  INSTANTIATE_TEST_SUITE_P(Engine, suite, testing::Values("snapshot", "dets"), \
                           [](const testing::TestParamInfo<std::string>& i) { return i.param; })

// One suite per subcommand, so ctest names read "keyfsctl.Cli.Version" or, for the suites
// run on every engine, "keyfsctl.Engine/Get.AbsentKey/dets".
class Cli : public KeyfsctlTest {};
class Create : public KeyfsctlTest {};
class MissingStore : public KeyfsctlTest {};
class Get : public EngineTest {};
class Put : public EngineTest {};
class Del : public EngineTest {};
class InvalidKey : public EngineTest {};
class List : public EngineTest {};
class Import : public EngineTest {};
class Export : public EngineTest {};
class RoundTrip : public EngineTest {};
class Info : public EngineTest {};
class Verify : public EngineTest {};
class Merge : public EngineTest {};
class VerifySnapshot : public KeyfsctlTest {};
class Bench : public KeyfsctlTest {};
KEYFSCTL_ON_EVERY_ENGINE(Get);
KEYFSCTL_ON_EVERY_ENGINE(Put);
KEYFSCTL_ON_EVERY_ENGINE(Del);
KEYFSCTL_ON_EVERY_ENGINE(InvalidKey);
KEYFSCTL_ON_EVERY_ENGINE(List);
KEYFSCTL_ON_EVERY_ENGINE(Import);
KEYFSCTL_ON_EVERY_ENGINE(Export);
KEYFSCTL_ON_EVERY_ENGINE(RoundTrip);
KEYFSCTL_ON_EVERY_ENGINE(Info);
KEYFSCTL_ON_EVERY_ENGINE(Verify);
KEYFSCTL_ON_EVERY_ENGINE(Merge);

// ---- command line ----------------------------------------------------------------------

TEST_F(Cli, Version) { EXPECT_EQ(Ctl({"--version"}), Ok("keyfsctl 0.1.0\n")); }

TEST_F(Cli, HelpNamesEverySubcommand) {
  Result r = Ctl({"--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(r.out.starts_with("usage: keyfsctl SUBCOMMAND [ARGS...]\n")) << r.out;
  for (const char* line :
       {"\n  create STORE [--engine snapshot|dets]\n", "\n  get STORE KEY ",
        "\n  put STORE KEY [VALUE] ", "\n  del STORE KEY ", "\n  list STORE [PREFIX] ",
        "\n  import STORE DIR ", "\n  export STORE DIR ", "\n  info STORE ", "\n  verify STORE ",
        "\n  bench [ARGS...] ", "for a symlink, write its target",
        "exit status: 0 success, 1 failure"}) {
    EXPECT_NE(r.out.find(line), std::string::npos) << "missing: " << line;
  }
  EXPECT_EQ(Ctl({"-h"}), r);
  EXPECT_EQ(Ctl({"get", "--help"}), r);
  EXPECT_EQ(Ctl({"put", "s", "k", "-h"}), r);
}

TEST_F(Cli, MissingSubcommand) { EXPECT_EQ(Ctl({}), UsageError("missing subcommand")); }

TEST_F(Cli, UnknownSubcommand) {
  EXPECT_EQ(Ctl({"frob", "s"}), UsageError("unknown subcommand 'frob'"));
  EXPECT_EQ(Ctl({"GET", "s", "k"}), UsageError("unknown subcommand 'GET'"));
}

TEST_F(Cli, UnknownOption) {
  CreateStore();
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"--frob"}), UsageError("unknown option '--frob'"));
  EXPECT_EQ(Ctl({"get", "s", "k", "--frob"}), UsageError("get: unknown option '--frob'"));
  EXPECT_EQ(Ctl({"put", "-x", "s", "k", "v"}), UsageError("put: unknown option '-x'"));
  EXPECT_EQ(Ctl({"put", "s", "k", "-1"}), UsageError("put: unknown option '-1'"));
  EXPECT_EQ(Ctl({"del", "s", "k", "--engine", "dets"}),
            UsageError("del: unknown option '--engine'"));
  // Checked before the store is looked at: a usage error wins over a missing store.
  EXPECT_EQ(Ctl({"list", "nope", "--all"}), UsageError("list: unknown option '--all'"));
  EXPECT_EQ(StoreState(), before);
}

TEST_F(Cli, WrongArgumentCount) {
  CreateStore();
  std::string before = StoreState();
  struct Case {
    std::vector<std::string> args;
    const char* expected;
  };
  const Case cases[] = {
      {{"create"}, "create: expected STORE [--engine snapshot|dets]"},
      {{"create", "a", "b"}, "create: expected STORE [--engine snapshot|dets]"},
      {{"get", "s"}, "get: expected STORE KEY"},
      {{"get", "s", "k", "x"}, "get: expected STORE KEY"},
      {{"put", "s"}, "put: expected STORE KEY [VALUE]"},
      {{"put", "s", "k", "v", "w"}, "put: expected STORE KEY [VALUE]"},
      {{"del", "s"}, "del: expected STORE KEY"},
      {{"del", "s", "k", "x"}, "del: expected STORE KEY"},
      {{"list"}, "list: expected STORE [PREFIX]"},
      {{"list", "s", "a", "b"}, "list: expected STORE [PREFIX]"},
      {{"import", "s"}, "import: expected STORE DIR"},
      {{"import", "s", "d", "e"}, "import: expected STORE DIR"},
      {{"export", "s"}, "export: expected STORE DIR"},
      {{"info"}, "info: expected STORE"},
      {{"info", "s", "x"}, "info: expected STORE"},
      {{"verify"}, "verify: expected STORE"},
      {{"verify", "s", "x"}, "verify: expected STORE"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Ctl(c.args), UsageError(c.expected)) << testing::PrintToString(c.args);
  }
  EXPECT_EQ(StoreState(), before);
  EXPECT_FALSE(Exists("a"));
}

TEST_F(Cli, DoubleDashEndsOptions) {
  CreateStore();
  EXPECT_EQ(Ctl({"put", "s", "--", "-k", "-v"}), Ok());
  EXPECT_EQ(Ctl({"get", "--", "s", "-k"}), Ok("-v"));
  EXPECT_EQ(Ctl({"list", "s", "--", "-"}), Ok("-k\n"));
}

// ---- create ----------------------------------------------------------------------------

TEST_F(Create, NewStoreIsEmptyAndSound) {
  EXPECT_EQ(Ctl({"create", "s"}), Ok());
  EXPECT_EQ(Ctl({"list", "s"}), Ok());
  Result v = Ctl({"verify", "s"});
  EXPECT_EQ(v.status, 0) << v.err;
  EXPECT_TRUE(v.out.ends_with("\nok\n")) << v.out;
  Result info = Ctl({"info", "s"});
  EXPECT_TRUE(info.out.starts_with("engine: snapshot\nformat_version: 3\nentries: 0\n"))
      << info.out;
}

TEST_F(Create, EngineOption) {
  EXPECT_EQ(Ctl({"create", "s1", "--engine", "snapshot"}), Ok());
  EXPECT_EQ(Ctl({"create", "--engine=snapshot", "s2"}), Ok());
  EXPECT_EQ(Ctl({"create", "d1", "--engine", "dets"}), Ok());
  EXPECT_EQ(Ctl({"create", "--engine=dets", "d2"}), Ok());
  EXPECT_TRUE(Ctl({"info", "s1"}).out.starts_with("engine: snapshot\n"));
  EXPECT_TRUE(Ctl({"info", "s2"}).out.starts_with("engine: snapshot\n"));
  EXPECT_TRUE(Ctl({"info", "d1"}).out.starts_with("engine: dets\n"));
  EXPECT_TRUE(Ctl({"info", "d2"}).out.starts_with("engine: dets\n"));
  EXPECT_EQ(Ctl({"create", "d1", "--engine", "dets"}), Fails("d1: store already exists"));
  EXPECT_EQ(Ctl({"create", "d1"}), Fails("d1: store already exists"));
}

TEST_F(Create, BadEngineIsUsageError) {
  EXPECT_EQ(Ctl({"create", "s", "--engine"}),
            UsageError("create: --engine needs a value (snapshot or dets)"));
  EXPECT_EQ(Ctl({"create", "s", "--engine", "lmdb"}),
            UsageError("create: unknown engine 'lmdb' (expected snapshot or dets)"));
  EXPECT_EQ(Ctl({"create", "s", "--engine="}),
            UsageError("create: unknown engine '' (expected snapshot or dets)"));
  EXPECT_FALSE(Exists("s"));
}

TEST_F(Create, ExistingStoreFails) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "v"}), Ok());
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"create", "s"}), Fails("s: store already exists"));
  EXPECT_EQ(Ctl({"create", "s", "--engine", "snapshot"}), Fails("s: store already exists"));
  EXPECT_EQ(StoreState(), before);
  EXPECT_EQ(Ctl({"get", "s", "k"}), Ok("v"));
}

TEST_F(Create, ExistingOtherFileFails) {
  WriteFile(Path("notes.txt"), "not a store\n");
  EXPECT_EQ(Ctl({"create", "notes.txt"}), Fails("notes.txt: store already exists"));
  EXPECT_EQ(ReadFile(Path("notes.txt")), "not a store\n");
  ASSERT_EQ(::mkdir(Path("d").c_str(), 0755), 0);
  EXPECT_EQ(Ctl({"create", "d"}), Fails("d: store already exists"));
}

TEST_F(Create, MissingParentDirectoryFails) {
  Result r = Ctl({"create", "nodir/s"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(IsOneLine(r.err, "keyfsctl: nodir/s: ")) << r.err;
  EXPECT_FALSE(Exists("nodir"));
}

// ---- a missing store -------------------------------------------------------------------

TEST_F(MissingStore, EveryCommandFailsAndCreatesNothing) {
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  WriteFile(Path("src/f"), "x");
  const std::vector<std::vector<std::string>> commands = {
      {"get", "nope", "k"},      {"put", "nope", "k", "v"}, {"put", "nope", "k"},
      {"del", "nope", "k"},      {"list", "nope"},          {"list", "nope", "a"},
      {"import", "nope", "src"}, {"export", "nope", "out"}, {"info", "nope"},
      {"verify", "nope"},
  };
  for (const auto& args : commands) {
    EXPECT_EQ(Ctl(args, "stdin value"), Fails("nope: no such store")) << args[0];
  }
  EXPECT_FALSE(Exists("nope"));
  EXPECT_FALSE(Exists("nope.lock"));
  EXPECT_FALSE(Exists("out"));
}

// ---- get -------------------------------------------------------------------------------

TEST_P(Get, RawValueNoNewlineAdded) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "greeting", "hello"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "two/lines", "a\nb\n"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "empty", ""}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "greeting"}), Ok("hello"));
  EXPECT_EQ(Ctl({"get", "s", "two/lines"}), Ok("a\nb\n"));
  EXPECT_EQ(Ctl({"get", "s", "empty"}), Ok(""));
}

TEST_P(Get, BinaryValue) {
  CreateStore();
  std::string value;
  for (int round = 0; round < 300; ++round) {
    for (int c = 0; c < 256; ++c) value += static_cast<char>(c);
  }
  ASSERT_EQ(Ctl({"put", "s", "blob"}, value), Ok());
  Result r = Ctl({"get", "s", "blob"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(r.out == value) << "got " << r.out.size() << " bytes, want " << value.size();
}

TEST_P(Get, AbsentKey) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "a/b", "x"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "nope"}), Fails("nope: key not found"));
  EXPECT_EQ(Ctl({"get", "s", "a/nope"}), Fails("a/nope: key not found"));
  EXPECT_EQ(Ctl({"get", "s", "x/y/z"}), Fails("x/y/z: key not found"));
  // Control bytes in a key are shown escaped, so the message stays one line.
  EXPECT_EQ(Ctl({"get", "s", "line\nbreak"}), Fails("line\\x0abreak: key not found"));
}

TEST_P(Get, DirectoryIsAnError) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "d/f", "x"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "d"}), Fails("d: is a directory"));
}

TEST_P(Get, SymlinkPrintsItsTarget) {
  CreateStore();
  CommitDirect(Batch().Put("target", "content").Symlink("link", "../somewhere/target"));
  EXPECT_EQ(Ctl({"get", "s", "link"}), Ok("../somewhere/target"));
}

TEST_P(Get, BelowAFile) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "f", "x"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "f/x"}), Fails("f/x: not a directory"));
}

// ---- put -------------------------------------------------------------------------------

TEST_P(Put, CreatesMissingParents) {
  CreateStore();
  EXPECT_EQ(Ctl({"put", "s", "a/b/c", "v"}), Ok());
  EXPECT_EQ(Ctl({"list", "s"}), Ok("a/\na/b/\na/b/c\n"));
  Meta f = MetaOf("a/b/c");
  EXPECT_EQ(f.type, EntryType::kFile);
  EXPECT_EQ(f.mode, 0644u);
  EXPECT_EQ(f.uid, ::geteuid());
  EXPECT_EQ(f.gid, ::getegid());
  EXPECT_NE(f.mtime_ns, 0);
  Meta d = MetaOf("a/b");
  EXPECT_EQ(d.type, EntryType::kDir);
  EXPECT_EQ(d.mode, 0755u);
}

TEST_P(Put, ReservedNameIsRefused) {
  CreateStore();
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"put", "s", ".keyfs/sync", "1"}),
            Fails(".keyfs/sync: invalid key: '.keyfs/sync': .keyfs is reserved for the mount's "
                  "control directory"));
  EXPECT_EQ(Ctl({"put", "s", ".keyfs", "1"}),
            Fails(".keyfs: invalid key: '.keyfs': .keyfs is reserved for the mount's control "
                  "directory"));
  EXPECT_EQ(StoreState(), before);
  EXPECT_EQ(Ctl({"put", "s", "d/.keyfs", "1"}), Ok());  // only as the first component
}

TEST_P(Put, ValueFromStdin) {
  CreateStore();
  std::string value("bin\0ary\n\xff", 9);
  EXPECT_EQ(Ctl({"put", "s", "k"}, value), Ok());
  EXPECT_EQ(Ctl({"get", "s", "k"}), Ok(value));
  EXPECT_EQ(Ctl({"put", "s", "empty"}, ""), Ok());
  EXPECT_EQ(Ctl({"get", "s", "empty"}), Ok(""));
  // A VALUE argument wins; stdin is not read.
  EXPECT_EQ(Ctl({"put", "s", "k", "arg"}, "stdin"), Ok());
  EXPECT_EQ(Ctl({"get", "s", "k"}), Ok("arg"));
}

TEST_P(Put, OverwriteKeepsModeAndOwner) {
  CreateStore();
  Meta m = Meta::File(0600);
  m.uid = 1234;
  m.gid = 5678;
  CommitDirect(Batch().Put("conf", "old", m));
  EXPECT_EQ(Ctl({"put", "s", "conf", "new"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "conf"}), Ok("new"));
  Meta after = MetaOf("conf");
  EXPECT_EQ(after.mode, 0600u);
  EXPECT_EQ(after.uid, 1234u);
  EXPECT_EQ(after.gid, 5678u);
}

TEST_P(Put, ReplacesASymlinkWithAFile) {
  CreateStore();
  Meta m = Meta::Symlink();
  m.uid = 1234;
  CommitDirect(Batch().Symlink("link", "elsewhere", m));
  EXPECT_EQ(Ctl({"put", "s", "link", "now a file"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "link"}), Ok("now a file"));
  Meta after = MetaOf("link");
  EXPECT_EQ(after.type, EntryType::kFile);
  EXPECT_EQ(after.mode, 0644u);
  EXPECT_EQ(after.uid, ::geteuid());
}

TEST_P(Put, OntoADirectoryFails) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "d/f", "x"}), Ok());
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"put", "s", "d", "x"}), Fails("d: is a directory"));
  EXPECT_EQ(StoreState(), before);
}

TEST_P(Put, BelowAFileFails) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "f", "x"}), Ok());
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"put", "s", "f/x", "y"}), Fails("f/x: not a directory"));
  EXPECT_EQ(Ctl({"put", "s", "f/x/y", "y"}), Fails("f/x/y: not a directory"));
  EXPECT_EQ(StoreState(), before);
}

// ---- del -------------------------------------------------------------------------------

TEST_P(Del, FileSymlinkAndEmptyDirectory) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "d/f", "x"}), Ok());
  CommitDirect(Batch().Symlink("l", "d/f").Mkdir("empty"));
  EXPECT_EQ(Ctl({"del", "s", "d/f"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", "d/f"}), Fails("d/f: key not found"));
  EXPECT_EQ(Ctl({"del", "s", "l"}), Ok());
  EXPECT_EQ(Ctl({"del", "s", "empty"}), Ok());
  EXPECT_EQ(Ctl({"del", "s", "d"}), Ok());
  EXPECT_EQ(Ctl({"list", "s"}), Ok());
}

TEST_P(Del, AbsentKey) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "f", "x"}), Ok());
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"del", "s", "nope"}), Fails("nope: key not found"));
  EXPECT_EQ(Ctl({"del", "s", "a/b"}), Fails("a/b: key not found"));
  EXPECT_EQ(StoreState(), before);
}

TEST_P(Del, NonEmptyDirectoryFails) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "d/f", "x"}), Ok());
  std::string before = StoreState();
  EXPECT_EQ(Ctl({"del", "s", "d"}), Fails("d: directory not empty"));
  EXPECT_EQ(StoreState(), before);
  EXPECT_EQ(Ctl({"get", "s", "d/f"}), Ok("x"));
}

// ---- invalid keys (get, put, del) -------------------------------------------------------

TEST_P(InvalidKey, RejectedAndNothingChanges) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "a/b", "x"}), Ok());
  std::string before = StoreState();
  std::string long_name = Repeat('n', 256);
  std::string long_key;  // 16 components of 255 bytes and "/z": 4097 bytes, each part valid
  for (int i = 0; i < 16; ++i) long_key += Repeat('k', 255) + "/";
  long_key += "z";
  ASSERT_EQ(long_key.size(), 4097u);
  struct Case {
    std::string key;
    std::string shown;
    const char* why;
  };
  const Case cases[] = {
      {"a//b", "a//b", "empty path component in key"},
      {"/a", "/a", "empty path component in key"},
      {"a/", "a/", "empty path component in key"},
      {"../x", "../x", "'.' or '..' component in key"},
      {"a/./b", "a/./b", "'.' or '..' component in key"},
      {"a/..", "a/..", "'.' or '..' component in key"},
      {".", ".", "'.' or '..' component in key"},
      {"", "", "empty key"},
      {long_name, long_name, "path component longer than 255 bytes"},
      // Keys longer than 256 bytes are shown by their first 64 bytes and their length.
      {"a/" + long_name, "a/" + Repeat('n', 62) + "...(258 bytes)",
       "path component longer than 255 bytes"},
      {long_key, Repeat('k', 64) + "...(4097 bytes)", "key longer than 4096 bytes"},
  };
  for (const Case& c : cases) {
    Result want = Fails(c.shown + ": invalid key: " + c.why);
    EXPECT_EQ(Ctl({"get", "s", c.key}), want) << c.shown;
    EXPECT_EQ(Ctl({"put", "s", c.key, "v"}), want) << c.shown;
    EXPECT_EQ(Ctl({"put", "s", c.key}, "from stdin"), want) << c.shown;
    EXPECT_EQ(Ctl({"del", "s", c.key}), want) << c.shown;
  }
  EXPECT_EQ(StoreState(), before);
}

TEST_P(InvalidKey, ComponentOfExactly255BytesIsFine) {
  CreateStore();
  std::string key = Repeat('n', 255) + "/" + Repeat('m', 255);
  EXPECT_EQ(Ctl({"put", "s", key, "v"}), Ok());
  EXPECT_EQ(Ctl({"get", "s", key}), Ok("v"));
}

// ---- list ------------------------------------------------------------------------------

TEST_P(List, SortedAsPrinted) {
  CreateStore();
  for (const char* k : {"b", "a/x", "a-b", "a.c", "a/y/z", "a0", "\xc3\xa9t\xc3\xa9", "z"}) {
    ASSERT_EQ(Ctl({"put", "s", k, "v"}), Ok()) << k;
  }
  CommitDirect(Batch().Symlink("a/link", "x").Mkdir("empty"));
  // '-' and '.' sort before '/', so "a-b" and "a.c" come before "a/"; bytes compare
  // unsigned, so "été" (0xc3...) comes after "z".
  EXPECT_EQ(Ctl({"list", "s"}),
            Ok("a-b\na.c\na/\na/link\na/x\na/y/\na/y/z\na0\nb\nempty/\nz\n\xc3\xa9t\xc3\xa9\n"));
}

TEST_P(List, Prefix) {
  CreateStore();
  for (const char* k : {"b", "a/x", "a-b", "a.c", "a/y/z", "a0", "ab/c"}) {
    ASSERT_EQ(Ctl({"put", "s", k, "v"}), Ok()) << k;
  }
  EXPECT_EQ(Ctl({"list", "s", "a"}), Ok("a-b\na.c\na/\na/x\na/y/\na/y/z\na0\nab/\nab/c\n"));
  EXPECT_EQ(Ctl({"list", "s", "a/"}), Ok("a/x\na/y/\na/y/z\n"));
  EXPECT_EQ(Ctl({"list", "s", "a/y"}), Ok("a/y/\na/y/z\n"));
  EXPECT_EQ(Ctl({"list", "s", "a/y/z"}), Ok("a/y/z\n"));
  EXPECT_EQ(Ctl({"list", "s", "a/x"}), Ok("a/x\n"));
  EXPECT_EQ(Ctl({"list", "s", "ab"}), Ok("ab/\nab/c\n"));
  EXPECT_EQ(Ctl({"list", "s", ""}), Ctl({"list", "s"}));
  // No match is not an error.
  EXPECT_EQ(Ctl({"list", "s", "zz"}), Ok());
  EXPECT_EQ(Ctl({"list", "s", "a/q"}), Ok());
  EXPECT_EQ(Ctl({"list", "s", "nodir/x"}), Ok());
  EXPECT_EQ(Ctl({"list", "s", "a-b/"}), Ok());  // a file
  EXPECT_EQ(Ctl({"list", "s", "/a"}), Ok());
  EXPECT_EQ(Ctl({"list", "s", "a//"}), Ok());
  EXPECT_EQ(Ctl({"list", "s", "../"}), Ok());
}

TEST_P(List, EmptyStore) {
  CreateStore();
  EXPECT_EQ(Ctl({"list", "s"}), Ok());
  EXPECT_EQ(Ctl({"list", "s", "a"}), Ok());
}

// ---- import ----------------------------------------------------------------------------

TEST_P(Import, MergesIntoTheStore) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "keep", "kept"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "etc/app.conf", "old"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "etc/other", "kept too"}), Ok());
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(Path("src/etc").c_str(), 0750), 0);
  WriteFile(Path("src/etc/app.conf"), "new", 0600);
  WriteFile(Path("src/new"), "added");
  EXPECT_EQ(Ctl({"import", "s", "src"}), Ok());
  EXPECT_EQ(Ctl({"list", "s"}), Ok("etc/\netc/app.conf\netc/other\nkeep\nnew\n"));
  EXPECT_EQ(Ctl({"get", "s", "etc/app.conf"}), Ok("new"));
  EXPECT_EQ(Ctl({"get", "s", "keep"}), Ok("kept"));
  EXPECT_EQ(Ctl({"get", "s", "etc/other"}), Ok("kept too"));
  EXPECT_EQ(MetaOf("etc/app.conf").mode, 0600u);
  EXPECT_EQ(MetaOf("etc").mode, 0750u);  // an existing directory takes the imported meta
}

TEST_P(Import, EmptyDirectoryChangesNothing) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "v"}), Ok());
  std::string before = StoreState();
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  EXPECT_EQ(Ctl({"import", "s", "src"}), Ok());
  EXPECT_EQ(StoreState(), before);
}

TEST_P(Import, SpecialFilesAreRefusedAndNothingIsImported) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "v"}), Ok());
  std::string before = StoreState();
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(Path("src/a").c_str(), 0755), 0);
  WriteFile(Path("src/a/1-before"), "x");
  WriteFile(Path("src/z-after"), "x");
  ASSERT_EQ(::mkfifo(Path("src/a/fifo").c_str(), 0644), 0);
  EXPECT_EQ(Ctl({"import", "s", "src"}),
            Fails("src/a/fifo: cannot import a fifo (only files, directories and symlinks)"));
  EXPECT_EQ(StoreState(), before);
  ASSERT_EQ(::unlink(Path("src/a/fifo").c_str()), 0);

  int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(sock, 0);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::string sock_path = Path("src/sock");
  ASSERT_LT(sock_path.size(), sizeof addr.sun_path);
  std::strcpy(addr.sun_path, sock_path.c_str());
  ASSERT_EQ(::bind(sock, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(Ctl({"import", "s", "src/"}),
            Fails("src/sock: cannot import a socket (only files, directories and symlinks)"));
  ::close(sock);
  EXPECT_EQ(StoreState(), before);
  ASSERT_EQ(::unlink(sock_path.c_str()), 0);

  if (::mknod(Path("src/a/null").c_str(), S_IFCHR | 0600, makedev(1, 3)) == 0) {
    EXPECT_EQ(Ctl({"import", "s", "src"}),
              Fails("src/a/null: cannot import a character device (only files, directories "
                    "and symlinks)"));
    EXPECT_EQ(StoreState(), before);
  }
}

TEST_P(Import, KeyTooLongIsRefusedAndNothingIsImported) {
  CreateStore();
  std::string before = StoreState();
  // 21 nested directories with 200-byte names: the 21st's key is 4220 bytes (> 4096),
  // built with mkdirat/openat since its path is longer than PATH_MAX.
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  WriteFile(Path("src/fine"), "x");
  std::string name = Repeat('d', 200);
  int fd = ::open(Path("src").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  for (int depth = 0; depth < 21; ++depth) {
    ASSERT_EQ(::mkdirat(fd, name.c_str(), 0755), 0) << std::strerror(errno);
    int sub = ::openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY);
    ::close(fd);
    ASSERT_GE(sub, 0);
    fd = sub;
  }
  ::close(fd);
  EXPECT_EQ(Ctl({"import", "s", "src"}),
            Fails("src/" + Repeat('d', 60) +
                  "...(4224 bytes): cannot import: invalid key: key longer than 4096 bytes"));
  EXPECT_EQ(StoreState(), before);
}

TEST_P(Import, ReservedNameIsRefusedAndNothingIsImported) {
  CreateStore();
  std::string before = StoreState();
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(Path("src/.keyfs").c_str(), 0755), 0);
  WriteFile(Path("src/.keyfs/stats"), "x");
  WriteFile(Path("src/fine"), "x");
  EXPECT_EQ(Ctl({"import", "s", "src"}),
            Fails("s: invalid argument: '.keyfs': .keyfs is reserved for the mount's control "
                  "directory"));
  EXPECT_EQ(StoreState(), before);
}

TEST_P(Import, BadDirectory) {
  CreateStore();
  std::string before = StoreState();
  WriteFile(Path("file"), "x");
  EXPECT_EQ(Ctl({"import", "s", "nodir"}), Fails("nodir: No such file or directory"));
  EXPECT_EQ(Ctl({"import", "s", "file"}), Fails("file: Not a directory"));
  EXPECT_EQ(StoreState(), before);
}

TEST_P(Import, TypeConflictWithTheStoreChangesNothing) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "etc", "a file in the store"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "dir/f", "x"}), Ok());
  std::string before = StoreState();
  ASSERT_EQ(::mkdir(Path("src").c_str(), 0755), 0);
  WriteFile(Path("src/a-first"), "x");
  ASSERT_EQ(::mkdir(Path("src/etc").c_str(), 0755), 0);  // a directory here
  WriteFile(Path("src/etc/app.conf"), "x");
  Result r = Ctl({"import", "s", "src"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(IsOneLine(r.err, "keyfsctl: s: ", "etc")) << r.err;
  EXPECT_EQ(StoreState(), before);

  ASSERT_EQ(::mkdir(Path("src2").c_str(), 0755), 0);
  WriteFile(Path("src2/dir"), "a file where the store has a directory");
  r = Ctl({"import", "s", "src2"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneLine(r.err, "keyfsctl: s: ", "dir")) << r.err;
  EXPECT_EQ(StoreState(), before);
}

// ---- export ----------------------------------------------------------------------------

TEST_P(Export, IntoAbsentOrEmptyDirectory) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "a/b", "hello"}), Ok());
  EXPECT_EQ(Ctl({"export", "s", "out"}), Ok());
  EXPECT_EQ(ReadFile(Path("out/a/b")), "hello");
  ASSERT_EQ(::mkdir(Path("empty").c_str(), 0700), 0);
  EXPECT_EQ(Ctl({"export", "s", "empty/"}), Ok());
  EXPECT_EQ(ReadFile(Path("empty/a/b")), "hello");
  // An empty store gives an empty directory.
  CreateStore("s2");
  EXPECT_EQ(Ctl({"export", "s2", "out2"}), Ok());
  EXPECT_TRUE(fs::is_directory(Path("out2")));
  EXPECT_TRUE(fs::is_empty(Path("out2")));
}

TEST_P(Export, NonEmptyDirectoryFails) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "a", "new"}), Ok());
  ASSERT_EQ(::mkdir(Path("out").c_str(), 0755), 0);
  WriteFile(Path("out/a"), "old");
  EXPECT_EQ(Ctl({"export", "s", "out"}),
            Fails("out: not empty (export needs an absent or empty directory)"));
  EXPECT_EQ(DescribeTree(Path("out")).size(), 1u);
  EXPECT_EQ(ReadFile(Path("out/a")), "old");
  // A lone dot file counts.
  ASSERT_EQ(::mkdir(Path("dots").c_str(), 0755), 0);
  WriteFile(Path("dots/.hidden"), "");
  EXPECT_EQ(Ctl({"export", "s", "dots"}),
            Fails("dots: not empty (export needs an absent or empty directory)"));
}

TEST_P(Export, BadDirectory) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "a", "x"}), Ok());
  WriteFile(Path("file"), "x");
  EXPECT_EQ(Ctl({"export", "s", "file"}), Fails("file: Not a directory"));
  EXPECT_EQ(Ctl({"export", "s", "no/out"}), Fails("no/out: No such file or directory"));
  EXPECT_EQ(ReadFile(Path("file")), "x");
  EXPECT_FALSE(Exists("no"));
}

TEST_P(Export, NeverWritesOutside) {
  CreateStore();
  ASSERT_EQ(::mkdir(Path("a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(Path("a/b").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(Path("a/outside").c_str(), 0755), 0);
  std::string abs_target = Path("a/outside") + "/abs";
  CommitDirect(Batch()
                   .Symlink("up", "../../outside/x")
                   .Symlink("abs", abs_target)
                   .Mkdir("d")
                   .Symlink("d/up", "../../../outside")
                   .Put("d/f", "data")
                   .Put("z", "last"));
  EXPECT_EQ(Ctl({"export", "s", "a/b/dst"}), Ok());
  EXPECT_TRUE(fs::is_empty(Path("a/outside")));
  EXPECT_EQ(DescribeTree(Path("a")).size(), 9u) << testing::PrintToString(DescribeTree(Path("a")));
  EXPECT_TRUE(fs::is_symlink(Path("a/b/dst/up")));
  EXPECT_EQ(fs::read_symlink(Path("a/b/dst/up")).string(), "../../outside/x");
  EXPECT_TRUE(fs::is_symlink(Path("a/b/dst/abs")));
  EXPECT_EQ(fs::read_symlink(Path("a/b/dst/abs")).string(), abs_target);
  EXPECT_TRUE(fs::is_symlink(Path("a/b/dst/d/up")));
  EXPECT_EQ(fs::read_symlink(Path("a/b/dst/d/up")).string(), "../../../outside");
  EXPECT_EQ(ReadFile(Path("a/b/dst/d/f")), "data");
  EXPECT_EQ(ReadFile(Path("a/b/dst/z")), "last");
}

// ---- import then export ----------------------------------------------------------------

TEST_P(RoundTrip, ImportThenExportKeepsEverything) {
  CreateStore();
  const std::string src = Path("src");
  constexpr int64_t kT = 981'173'106'123'456'789;  // 2001-02-03T04:05:06.123456789Z
  ASSERT_EQ(::mkdir(src.c_str(), 0755), 0);
  for (const char* d : {"etc", "etc/empty", "bin", "deep", "deep/a", "deep/a/b", "ro"}) {
    ASSERT_EQ(::mkdir((src + "/" + d).c_str(), 0755), 0);
  }
  WriteFile(src + "/etc/app.conf", "key = value\n", 0600);
  WriteFile(src + "/etc/empty.txt", "", 0644);
  WriteFile(src + "/bin/run.sh", "#!/bin/sh\necho hi\n", 0755);
  WriteFile(src + "/deep/a/b/leaf", "deep", 0640);
  WriteFile(src + "/ro/inside", "in a read-only directory", 0444);
  WriteFile(src + "/naïve file -x", "unicode and spaces", 0604);
  std::string blob;
  for (int i = 0; i < 100'000; ++i) blob += static_cast<char>((i * 7919) >> 3);
  WriteFile(src + "/data.bin", blob, 0644);
  ASSERT_EQ(::symlink("etc/app.conf", (src + "/link").c_str()), 0);
  ASSERT_EQ(::symlink("../../outside", (src + "/deep/dangling").c_str()), 0);
  ASSERT_EQ(::chmod((src + "/etc/empty").c_str(), 0700), 0);
  ASSERT_EQ(::chmod((src + "/bin").c_str(), 0711), 0);
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown((src + "/etc/app.conf").c_str(), 1234, 5678), 0);
    ASSERT_EQ(::chown((src + "/bin").c_str(), 4321, 8765), 0);
    ASSERT_EQ(::lchown((src + "/link").c_str(), 1111, 2222), 0);
  }
  // Leaves first, then directories bottom-up, so adding children does not touch them.
  int64_t t = kT;
  for (const char* p : {"etc/app.conf", "etc/empty.txt", "bin/run.sh", "deep/a/b/leaf", "ro/inside",
                        "naïve file -x", "data.bin", "link", "deep/dangling", "etc/empty",
                        "deep/a/b", "deep/a", "deep", "etc", "bin", "ro"}) {
    SetMtime(src + "/" + p, t);
    t += 86'400'000'000'001;  // a day and a nanosecond apart
  }
  ASSERT_EQ(::chmod((src + "/ro").c_str(), 0555), 0);  // chmod does not change the mtime
  // Access times are kept too (a symlink's and a directory's included).
  constexpr int64_t kAtime = 1'262'304'000'987'654'321;  // 2010-01-01T00:00:00.987654321Z
  for (const char* p : {"etc/app.conf", "link", "deep/a"}) {
    struct timespec ts[2] = {{kAtime / 1'000'000'000, kAtime % 1'000'000'000}, {0, UTIME_OMIT}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (src + "/" + p).c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << p;
  }

  EXPECT_EQ(Ctl({"import", "s", "src"}), Ok());
  for (const char* p : {"etc/app.conf", "link", "deep/a"}) {
    EXPECT_EQ(MetaOf(p).atime_ns, kAtime) << p;
  }
  EXPECT_EQ(Ctl({"list", "s"}),
            Ok("bin/\nbin/run.sh\ndata.bin\ndeep/\ndeep/a/\ndeep/a/b/\ndeep/a/b/leaf\n"
               "deep/dangling\netc/\netc/app.conf\netc/empty.txt\netc/empty/\nlink\n"
               "naïve file -x\nro/\nro/inside\n"));
  EXPECT_EQ(Ctl({"get", "s", "link"}), Ok("etc/app.conf"));
  EXPECT_EQ(MetaOf("etc/app.conf").mtime_ns, kT);

  EXPECT_EQ(Ctl({"export", "s", "dst"}), Ok());
  for (const char* p : {"etc/app.conf", "link", "deep/a"}) {
    struct stat st;
    ASSERT_EQ(::lstat(Path(std::string("dst/") + p).c_str(), &st), 0) << p;
    EXPECT_EQ(int64_t{st.st_atim.tv_sec} * 1'000'000'000 + st.st_atim.tv_nsec, kAtime) << p;
    EXPECT_EQ(int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec, MetaOf(p).mtime_ns)
        << p;
  }
  std::vector<std::string> want = DescribeTree(src);
  EXPECT_EQ(want.size(), 16u);
  EXPECT_EQ(DescribeTree(Path("dst")), want);
  EXPECT_EQ(FindListing(Path("dst")), FindListing(src));

  // And back again into a second store: the same listing and metadata.
  CreateStore("s2");
  EXPECT_EQ(Ctl({"import", "s2", "dst"}), Ok());
  EXPECT_EQ(Ctl({"list", "s2"}), Ctl({"list", "s"}));
  for (const char* key : {"ro", "etc/app.conf", "link", "bin"}) {
    Meta a = MetaOf(key, "s2"), b = MetaOf(key, "s");
    a.ctime_ns = b.ctime_ns = 0;  // ctime is the commit's, by design
    // Reading dst above (DescribeTree) moved its atimes (relatime); they are checked above.
    a.atime_ns = b.atime_ns = 0;
    EXPECT_EQ(a, b) << key;
  }
  ASSERT_EQ(::chmod((src + "/ro").c_str(), 0755), 0);  // so the cleanup may remove it
  ASSERT_EQ(::chmod(Path("dst/ro").c_str(), 0755), 0);
}

// ---- info ------------------------------------------------------------------------------

TEST_P(Info, Golden) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "hello"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "d/f", "xy"}), Ok());
  CommitDirect(Batch().Symlink("l", "k"));
  struct stat st;
  ASSERT_EQ(::stat(Path("s").c_str(), &st), 0);
  // A snapshot store's bytes are its base table's and its commit log's.
  struct stat log;
  const off_t file_bytes =
      st.st_size + (::stat(Path("s.log").c_str(), &log) == 0 ? log.st_size : 0);
  Result r = Ctl({"info", "s"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.err, "");
  std::string fixed = "engine: " + engine_ +
                      "\nformat_version: " + (engine_ == "snapshot" ? "3" : "2") +
                      "\nentries: 4\nfiles: 2\ndirs: 1\n"
                      "symlinks: 1\nvalue_bytes: 8\nfile_bytes: " +
                      std::to_string(file_bytes) + "\n";
  ASSERT_TRUE(r.out.starts_with(fixed)) << r.out;
  std::vector<std::string> rest;
  ASSERT_TRUE(SplitLines(r.out.substr(fixed.size()), &rest)) << r.out;
  ASSERT_GE(rest.size(), 2u);
  // A snapshot store publishes one table per commit: create and three commits.
  if (engine_ == "snapshot") {
    EXPECT_EQ(rest[0], "generation: 4");
  }
  EXPECT_TRUE(rest[0].starts_with("generation: ") && rest[0].size() > 12 &&
              rest[0].find_first_not_of("0123456789", 12) == std::string::npos)
      << rest[0];
  rest.erase(rest.begin());
  // last_commit: ISO-8601 UTC with nanoseconds, and it is now.
  struct tm tm = {};
  char z = 0;
  ASSERT_EQ(
      std::sscanf(rest[0].c_str(), "last_commit: %4d-%2d-%2dT%2d:%2d:%2d.%*9[0-9]%c", &tm.tm_year,
                  &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &z),
      7)
      << rest[0];
  EXPECT_EQ(rest[0].size(), std::string("last_commit: 2001-02-03T04:05:06.123456789Z").size())
      << rest[0];
  EXPECT_EQ(z, 'Z') << rest[0];
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  EXPECT_LE(std::abs(static_cast<long long>(::timegm(&tm) - ::time(nullptr))), 600)
      << "last_commit is not now, in UTC: " << rest[0];
  // last_sync: the same form (snapshot: the last commit; dets: when the file was written).
  ASSERT_GE(rest.size(), 2u);
  EXPECT_TRUE(rest[1].starts_with("last_sync: ")) << rest[1];
  EXPECT_EQ(rest[1].size(), std::string("last_sync: 2001-02-03T04:05:06.123456789Z").size())
      << rest[1];
  EXPECT_TRUE(rest[1].ends_with("Z")) << rest[1];
  // The root directory: a new store's belongs to its creator, mode 0755; "d" is its one
  // subdirectory; its mtime is that of the last entry added to it (the symlink "l").
  ASSERT_GE(rest.size(), 6u);
  EXPECT_EQ(rest[2], "root_mode: 0755");
  EXPECT_EQ(rest[3],
            "root_owner: " + std::to_string(::geteuid()) + ":" + std::to_string(::getegid()));
  EXPECT_TRUE(rest[4].starts_with("root_mtime: ") && rest[4].ends_with("Z")) << rest[4];
  EXPECT_EQ(rest[5], "root_subdirs: 1");
  // The engine's own pairs follow, one "key: value" a line.
  for (size_t i = 6; i < rest.size(); ++i) {
    size_t colon = rest[i].find(": ");
    EXPECT_TRUE(colon != std::string::npos && colon > 0) << rest[i];
  }
}

// ---- merge -----------------------------------------------------------------------------

// snapshot: the commit log is folded into STORE, which then holds the store alone (a copy of
// it is a backup); dets: a sync. The content is the same before and after.
TEST_P(Merge, LeavesTheStoreInOneFile) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "v"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "dir/f", "x"}), Ok());
  if (engine_ == "snapshot") {
    EXPECT_TRUE(Exists("s.log")) << "the puts did not go to the log";
  }
  EXPECT_EQ(Ctl({"merge", "s"}), Ok());
  EXPECT_FALSE(Exists("s.log"));
  ASSERT_EQ(::rename(Path("s").c_str(), Path("copy").c_str()), 0);  // STORE alone
  EXPECT_EQ(Ctl({"get", "copy", "dir/f"}), Ok("x"));
  EXPECT_EQ(Ctl({"get", "copy", "k"}), Ok("v"));
  EXPECT_EQ(Ctl({"verify", "copy"}).status, 0);
  EXPECT_EQ(Ctl({"merge", "copy"}), Ok());  // nothing to merge: still fine
  Result missing = Ctl({"merge", "absent"});
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("absent"), std::string::npos) << missing.err;
}

// ---- verify ----------------------------------------------------------------------------

TEST_P(Verify, SoundStore) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "v"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "dir/f", "x"}), Ok());
  Result r = Ctl({"verify", "s"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.err, "");
  std::vector<std::string> lines;
  ASSERT_TRUE(SplitLines(r.out, &lines)) << r.out;
  ASSERT_GE(lines.size(), 2u) << r.out;  // what was checked, then "ok"
  EXPECT_EQ(lines.back(), "ok");
  for (const std::string& l : lines) EXPECT_FALSE(l.empty()) << r.out;
}

// Sibling names that sort between a directory and its children ("a-b" between "a" and
// "a/b") must not confuse the tree check.
TEST_P(Verify, SoundStoreWithInterleavedSiblings) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "a/b", "x"}), Ok());
  ASSERT_EQ(Ctl({"put", "s", "a-b", "y"}), Ok());
  Result r = Ctl({"verify", "s"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(r.out.ends_with("\nok\n")) << r.out;
}

// Flips one byte in the middle of the store file (inside the 64 KiB value).
void FlipMiddleByte(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  off_t mid = st.st_size / 2;
  unsigned char c;
  ASSERT_EQ(::pread(fd, &c, 1, mid), 1);
  c ^= 0x5a;
  ASSERT_EQ(::pwrite(fd, &c, 1, mid), 1);
  ::close(fd);
}

TEST_P(Verify, CorruptStore) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "big"}, Repeat('v', 64 * 1024)), Ok());
  ASSERT_EQ(Ctl({"put", "s", "small", "x"}), Ok());
  FlipMiddleByte(Path("s"));
  const std::string corruption = "keyfsctl: s: corruption: ";
  Result r = Ctl({"verify", "s"});
  EXPECT_EQ(r.status, 1);
  EXPECT_FALSE(r.out.ends_with("ok\n")) << r.out;
  EXPECT_TRUE(IsOneLine(r.err, corruption)) << r.err;
  // Reading the damaged value is refused too, never served.
  r = Ctl({"get", "s", "big"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(IsOneLine(r.err, corruption)) << r.err;
}

TEST_F(VerifySnapshot, CorruptHeaderFailsEveryCommand) {
  CreateStore();
  ASSERT_EQ(Ctl({"put", "s", "k", "v"}), Ok());
  int fd = ::open(Path("s").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, "\x07", 1, 20), 1);  // inside the file-size field
  ::close(fd);
  std::string before = StoreState();
  const std::string corruption = "keyfsctl: s: corruption: ";
  for (const auto& args : std::vector<std::vector<std::string>>{{"verify", "s"},
                                                                {"get", "s", "k"},
                                                                {"put", "s", "k", "w"},
                                                                {"list", "s"},
                                                                {"info", "s"}}) {
    Result r = Ctl(args);
    EXPECT_EQ(r.status, 1) << args[0];
    EXPECT_TRUE(IsOneLine(r.err, corruption)) << args[0] << ": " << r.err;
  }
  EXPECT_EQ(StoreState(), before);
}

TEST_F(VerifySnapshot, NotAStore) {
  WriteFile(Path("notes.txt"), std::string(8192, 'x'));
  Result r = Ctl({"verify", "notes.txt"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneLine(r.err, "keyfsctl: notes.txt: corruption: ")) << r.err;
}

// ---- bench -----------------------------------------------------------------------------

// Each runs a copy of keyfsctl in its own directory, so what lies beside it is up to the test.
TEST_F(Bench, RunsKeyfsBenchBesideItWithTheArguments) {
  ASSERT_EQ(::mkdir(Path("bin").c_str(), 0755), 0);
  fs::copy_file(KEYFSCTL_PATH, Path("bin/keyfsctl"));
  ASSERT_EQ(::chmod(Path("bin/keyfsctl").c_str(), 0755), 0);
  WriteFile(Path("bin/keyfs_bench"), "#!/bin/sh\nfor a; do printf '[%s]' \"$a\"; done\nexit 7\n",
            0755);
  Result r =
      RunBinary(Path("bin/keyfsctl"), {"bench", "snapshot", "a b", "--quick"}, "", dir_, io_);
  EXPECT_EQ(r, (Result{7, "[snapshot][a b][--quick]", ""}));
  r = RunBinary(Path("bin/keyfsctl"), {"bench"}, "", dir_, io_);
  EXPECT_EQ(r, (Result{7, "", ""}));
}

TEST_F(Bench, MissingKeyfsBench) {
  ASSERT_EQ(::mkdir(Path("bin").c_str(), 0755), 0);
  fs::copy_file(KEYFSCTL_PATH, Path("bin/keyfsctl"));
  ASSERT_EQ(::chmod(Path("bin/keyfsctl").c_str(), 0755), 0);
  Result r = RunBinary(Path("bin/keyfsctl"), {"bench", "--quick"}, "", dir_, io_);
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "");
  std::string fs_dir = fs::canonical(Path("bin")).string();
  EXPECT_TRUE(IsOneLine(r.err, "keyfsctl: bench: keyfs_bench not found (looked in " + fs_dir))
      << r.err;
  EXPECT_TRUE(r.err.ends_with(")\n")) << r.err;
}

}  // namespace
}  // namespace keyfs
