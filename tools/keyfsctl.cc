// keyfsctl: reads, writes, imports, exports, inspects and verifies keyfs stores without
// mounting them (SPEC §2). Every store access goes through the Engine API, so each
// subcommand works on every engine.
//
// Exit status: 0 success, 1 failure (not found, invalid key, store error), 2 usage error.
// A failure prints exactly one line "keyfsctl: <what is wrong>" on stderr; a usage error
// adds the hint to try --help on that same line.
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "error_text.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "keyfs/store/status.h"
#include "tree_export.h"
#include "tree_import.h"

#ifndef KEYFS_VERSION
#define KEYFS_VERSION "0.0.0"
#endif
#ifndef KEYFS_BENCH_INSTALLED_DIR
#define KEYFS_BENCH_INSTALLED_DIR "../libexec/keyfs"
#endif
#ifndef KEYFS_BENCH_BUILT_DIR
#define KEYFS_BENCH_BUILT_DIR "../bench"
#endif

namespace keyfs::ctl {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

constexpr char kHelp[] = R"(usage: keyfsctl SUBCOMMAND [ARGS...]
       keyfsctl --help | --version

Reads and writes keyfs stores (the files keyfs mounts) without mounting them.

subcommands:
  create STORE [--engine snapshot|dets]
                        create an empty store (default engine: snapshot);
                        fails if STORE exists
  get STORE KEY         write KEY's value to stdout as it is (no newline added);
                        for a symlink, write its target; a directory is an error
  put STORE KEY [VALUE] set KEY's value, read from stdin when VALUE is omitted;
                        missing parent directories are created; an existing KEY
                        keeps its mode, uid and gid, a new one gets mode 0644 and
                        your uid and gid
  del STORE KEY         delete a file, a symlink or an empty directory
  list STORE [PREFIX]   print the keys that start with PREFIX, sorted bytewise,
                        one a line; directories end in '/'
  import STORE DIR      copy every file, directory and symlink below DIR into the
                        store in one atomic commit, keeping modes, owners, atimes,
                        mtimes and symlinks; keys not in DIR stay
  export STORE DIR      write the store below DIR, which must be absent or empty,
                        keeping modes, atimes, mtimes, symlinks (and owners when
                        run as root); never writes outside DIR
  info STORE            print engine, format version, entry counts, sizes,
                        generation, last commit time and the root directory's
                        mode, owner, mtime and subdirectories as 'key: value' lines
  verify STORE          check every checksum and structure; print what was
                        checked and 'ok'; exit status 0 only if the store is sound
  merge STORE           snapshot: fold the commit log (STORE.log) into the table
                        now, so that STORE alone holds the store (keyfs does it
                        in the background as the log grows); dets: sync
  bench [ARGS...]       run the benchmarks: keyfs_bench ARGS (installed with
                        keyfsctl)

Keys are relative paths such as 'etc/app.conf': no leading or trailing '/', no
empty, '.' or '..' component, components of at most 255 bytes, at most 4096
bytes in all. Put '--' before a KEY or VALUE that starts with '-'.

exit status: 0 success, 1 failure (not found, invalid key, store error),
             2 usage error
)";

// Prints "keyfsctl: <text>" and returns the failure exit status.
int Fail(std::string_view text) {
  std::string line = "keyfsctl: ";
  line += text;
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  return kExitFailure;
}

int UsageError(std::string_view text) {
  std::string line = "keyfsctl: ";
  line += text;
  line += "; try 'keyfsctl --help'\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  return kExitUsage;
}

// Everything keyfsctl prints on stdout goes through here: large values written as they
// are, lines buffered, and one place to notice a failed write (ENOSPC, EIO). Not
// thread-safe.
class Output {
 public:
  void Append(std::string_view s) {
    if (buf_.size() + s.size() > kFlushAt) Flush();
    if (s.size() >= kFlushAt) {
      WriteOut(s);
    } else {
      buf_.append(s);
    }
  }
  void Line(std::string_view s) {
    Append(s);
    Append("\n");
  }
  void Flush() {
    WriteOut(buf_);
    buf_.clear();
  }
  // Flushes; returns 0 or the errno of the first failed write.
  int Finish() {
    Flush();
    return err_;
  }

 private:
  static constexpr size_t kFlushAt = 64 * 1024;
  void WriteOut(std::string_view s) {
    while (!s.empty() && err_ == 0) {
      ssize_t n = ::write(STDOUT_FILENO, s.data(), s.size());
      if (n < 0) {
        if (errno != EINTR) err_ = errno;
        continue;
      }
      s.remove_prefix(static_cast<size_t>(n));
    }
  }
  std::string buf_;
  int err_ = 0;
};

int FinishOutput(Output& out) {
  if (int err = out.Finish(); err != 0) return Fail(ErrnoText("write error", err));
  return kExitOk;
}

// ---- arguments -------------------------------------------------------------------------

struct Args {
  std::vector<std::string> positional;
  std::optional<std::string> engine;  // create --engine
};

struct Command {
  const char* name;
  const char* synopsis;  // the arguments, for "expected ..." messages
  size_t min_args, max_args;
  bool takes_engine;
  int (*run)(const Args&);
};

// ---- store access ----------------------------------------------------------------------

// Prints why `store` could not be opened.
void FailOpen(const std::string& store, const Status& s) {
  Fail(s.IsNotFound() ? Printable(store) + ": no such store" : StoreErrorText(store, s));
}

// Opens an existing store; on failure prints the error and returns nullptr.
std::unique_ptr<Engine> Open(const std::string& store, bool read_only) {
  OpenOptions options;
  options.read_only = read_only;
  StatusOr<std::unique_ptr<Engine>> engine = OpenStore(store, options);
  if (!engine.ok()) {
    FailOpen(store, engine.status());
    return nullptr;
  }
  return std::move(engine).value();
}

// Fails fast on a missing (or foreign) store before slow or interactive work: reading
// stdin, scanning a tree. That work comes before the store is opened for writing, so no
// writer lock is held meanwhile. Prints the error and returns false.
bool StoreExists(const std::string& store) {
  StatusOr<EngineKind> kind = DetectEngine(store);
  if (!kind.ok()) FailOpen(store, kind.status());
  return kind.ok();
}

// Reports a failed operation on `key`: the key's own trouble, or the store's.
int FailKey(const std::string& store, const std::string& key, const Status& s) {
  return Fail(IsKeyError(s) ? KeyErrorText(key, s) : StoreErrorText(store, s));
}

// Commits `batch` and returns once it is durable: a dets engine only buffers a commit until
// its next sync, and keyfsctl's exit status promises the write is on disk.
Status CommitDurably(Engine& engine, const Batch& batch) {
  KEYFS_RETURN_IF_ERROR(engine.Commit(batch));
  return engine.Sync();
}

// Checks `key` against the key rules; prints the error and returns false if it breaks one.
bool CheckKey(const std::string& key) {
  Status s = ValidateKey(key);
  if (s.ok()) return true;
  Fail(KeyErrorText(key, s));
  return false;
}

// ---- subcommands -----------------------------------------------------------------------

int RunCreate(const Args& a) {
  const std::string& store = a.positional[0];
  EngineKind kind = EngineKind::kSnapshot;
  if (a.engine) kind = *ParseEngineKind(*a.engine);  // checked while parsing
  Status s = CreateStore(store, kind);
  if (s.code() == Status::Code::kAlreadyExists) {
    return Fail(Printable(store) + ": store already exists");
  }
  if (!s.ok()) return Fail(StoreErrorText(store, s));
  return kExitOk;
}

int RunGet(const Args& a) {
  const std::string &store = a.positional[0], &key = a.positional[1];
  if (!CheckKey(key)) return kExitFailure;
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/true);
  if (!engine) return kExitFailure;
  StatusOr<Record> rec = engine->Get(key);
  if (!rec.ok()) return FailKey(store, key, rec.status());
  if (rec->meta.type == EntryType::kDir) return Fail(Printable(key) + ": is a directory");
  Output out;
  out.Append(rec->value);  // a file's content or a symlink's target
  return FinishOutput(out);
}

// Reads all of stdin (binary safe).
int ReadStdin(std::string* value) {
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(ErrnoText("stdin", errno));
    }
    if (n == 0) return kExitOk;
    value->append(buf, static_cast<size_t>(n));
  }
}

int RunPut(const Args& a) {
  const std::string &store = a.positional[0], &key = a.positional[1];
  if (!CheckKey(key)) return kExitFailure;
  Mutation m;
  m.op = Mutation::Op::kPut;
  m.key = key;
  m.make_parents = true;
  if (a.positional.size() > 2) {
    m.value = a.positional[2];
  } else {
    if (!StoreExists(store)) return kExitFailure;
    if (int rc = ReadStdin(&m.value); rc != kExitOk) return rc;
  }
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/false);
  if (!engine) return kExitFailure;
  // An existing file keeps its mode and owner (like writing into it would); anything else
  // gets a new file's defaults. Times 0: the engine stamps the commit time.
  m.meta = Meta::File();
  m.meta.uid = ::geteuid();
  m.meta.gid = ::getegid();
  StatusOr<Record> old = engine->Get(key);
  if (old.ok()) {
    if (old->meta.type == EntryType::kDir) return Fail(Printable(key) + ": is a directory");
    if (old->meta.type == EntryType::kFile) {
      m.meta.mode = old->meta.mode;
      m.meta.uid = old->meta.uid;
      m.meta.gid = old->meta.gid;
    }
  } else if (!old.status().IsNotFound() && old.status().code() != Status::Code::kNotDirectory) {
    return FailKey(store, key, old.status());
  }
  Batch batch;
  batch.Add(std::move(m));
  if (Status s = CommitDurably(*engine, batch); !s.ok()) return FailKey(store, key, s);
  return kExitOk;
}

int RunDel(const Args& a) {
  const std::string &store = a.positional[0], &key = a.positional[1];
  if (!CheckKey(key)) return kExitFailure;
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/false);
  if (!engine) return kExitFailure;
  Batch batch;
  batch.Delete(key);
  if (Status s = CommitDurably(*engine, batch); !s.ok()) return FailKey(store, key, s);
  return kExitOk;
}

// Prints every entry below directory `dir` ("" = root) whose name, at this level only,
// starts with `name_prefix`, sorted by the printed string: a directory prints as "key/", so
// "a-b" and "a.c" come before "a/" and "a/x". Sorting each directory's children by their
// printed names gives that global order, since a subtree's lines all start with "key/".
// Memory: one directory's children per level of depth.
Status ListTree(const Engine& engine, const std::string& dir, std::string_view name_prefix,
                Output* out) {
  struct Child {
    std::string printed;  // name, plus '/' for a directory
    bool is_dir;
  };
  std::vector<Child> children;
  // Names starting with name_prefix form one run in name order; start just before it.
  std::string_view start_after =
      name_prefix.empty() ? name_prefix : name_prefix.substr(0, name_prefix.size() - 1);
  Status s = engine.List(dir, start_after, [&](const DirEntry& e) {
    if (!e.name.starts_with(name_prefix)) return e.name < name_prefix;  // past the run: stop
    bool is_dir = e.meta.type == EntryType::kDir;
    children.push_back({std::string(e.name) + (is_dir ? "/" : ""), is_dir});
    return true;
  });
  if (!s.ok()) return s;
  std::sort(children.begin(), children.end(),
            [](const Child& x, const Child& y) { return x.printed < y.printed; });
  std::string base = dir.empty() ? std::string() : dir + "/";
  for (const Child& c : children) {
    out->Line(base + c.printed);
    if (!c.is_dir) continue;
    std::string sub = base + c.printed;
    sub.pop_back();  // the '/'
    s = ListTree(engine, sub, "", out);
    if (s.IsNotFound()) continue;  // removed since the parent was listed
    if (!s.ok()) return s;
  }
  return Status::OK();
}

int RunList(const Args& a) {
  const std::string& store = a.positional[0];
  std::string prefix = a.positional.size() > 1 ? a.positional[1] : std::string();
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/true);
  if (!engine) return kExitFailure;
  // Start at the deepest directory that holds every match: the prefix up to its last '/'.
  size_t slash = prefix.rfind('/');
  std::string dir = slash == std::string::npos ? std::string() : prefix.substr(0, slash);
  std::string_view name_prefix = slash == std::string::npos
                                     ? std::string_view(prefix)
                                     : std::string_view(prefix).substr(slash + 1);
  Output out;
  // A prefix whose directory part is no valid key ("/x", "a//b", "../x") matches nothing.
  if (slash != std::string::npos && !ValidateKey(dir).ok()) return FinishOutput(out);
  Status s = ListTree(*engine, dir, name_prefix, &out);
  if (!s.ok() && !s.IsNotFound() && s.code() != Status::Code::kNotDirectory) {
    out.Finish();
    return Fail(StoreErrorText(store, s));
  }
  return FinishOutput(out);
}

int RunImport(const Args& a) {
  const std::string &store = a.positional[0], &dir = a.positional[1];
  if (!StoreExists(store)) return kExitFailure;
  Batch batch;
  if (Status s = ScanTree(dir, &batch); !s.ok()) return Fail(s.message());
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/false);
  if (!engine) return kExitFailure;
  if (batch.empty()) return kExitOk;
  if (Status s = CommitDurably(*engine, batch); !s.ok()) return Fail(StoreErrorText(store, s));
  return kExitOk;
}

int RunExport(const Args& a) {
  const std::string &store = a.positional[0], &dir = a.positional[1];
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/true);
  if (!engine) return kExitFailure;
  if (Status s = ExportTree(*engine, store, dir); !s.ok()) return Fail(s.message());
  return kExitOk;
}

// ISO-8601 UTC with nanoseconds, "2024-05-01T12:00:00.000000123Z"; "-" for 0 (never).
std::string FormatUtc(int64_t ns) {
  if (ns == 0) return "-";
  constexpr int64_t kNsPerSec = 1'000'000'000;
  int64_t sec = ns / kNsPerSec, rem = ns % kNsPerSec;
  if (rem < 0) {
    rem += kNsPerSec;
    --sec;
  }
  time_t t = static_cast<time_t>(sec);
  struct tm tm;
  if (::gmtime_r(&t, &tm) == nullptr) return std::to_string(ns) + "ns";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09lldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(rem));
  return buf;
}

int RunInfo(const Args& a) {
  const std::string& store = a.positional[0];
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/true);
  if (!engine) return kExitFailure;
  EngineStats st = engine->Stats();
  Output out;
  auto line = [&out](std::string_view k, const std::string& v) {
    out.Line(std::string(k) + ": " + v);
  };
  line("engine", st.engine);
  line("format_version", std::to_string(st.format_version));
  line("entries", std::to_string(st.entries));
  line("files", std::to_string(st.files));
  line("dirs", std::to_string(st.dirs));
  line("symlinks", std::to_string(st.symlinks));
  line("value_bytes", std::to_string(st.value_bytes));
  line("file_bytes", std::to_string(st.file_bytes));
  line("generation", std::to_string(st.generation));
  line("last_commit", FormatUtc(st.last_commit_ns));
  line("last_sync", FormatUtc(st.last_sync_ns));
  // The root directory's own metadata (the mount point's mode, owner and times).
  auto root = engine->Get("");
  if (!root.ok()) {
    (void)FinishOutput(out);
    return Fail(StoreErrorText(store, root.status()));
  }
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", root->meta.mode);
  line("root_mode", mode);
  line("root_owner", std::to_string(root->meta.uid) + ":" + std::to_string(root->meta.gid));
  line("root_mtime", FormatUtc(root->meta.mtime_ns));
  line("root_subdirs", std::to_string(root->meta.subdirs));
  for (const auto& [k, v] : st.extra) line(k, v);
  return FinishOutput(out);
}

int RunVerify(const Args& a) {
  const std::string& store = a.positional[0];
  std::vector<std::string> report;
  Status s = VerifyStore(store, &report);
  Output out;
  for (const std::string& r : report) out.Line(r);
  if (s.ok()) out.Line("ok");
  if (int rc = FinishOutput(out); rc != kExitOk) return rc;
  if (s.IsNotFound()) return Fail(Printable(store) + ": no such store");
  if (!s.ok()) return Fail(StoreErrorText(store, s));
  return kExitOk;
}

// Folds a snapshot store's commit log into its table (so that STORE alone holds it);
// makes a dets store's buffered writes durable.
int RunMerge(const Args& a) {
  const std::string& store = a.positional[0];
  std::unique_ptr<Engine> engine = Open(store, /*read_only=*/false);
  if (!engine) return kExitFailure;
  auto* snapshot = dynamic_cast<SnapshotEngine*>(engine.get());
  Status s = snapshot != nullptr ? snapshot->Merge() : engine->Sync();
  if (!s.ok()) return Fail(StoreErrorText(store, s));
  return kExitOk;
}

// Replaces this process with keyfs_bench, passing `argv` on; returns only on failure.
// keyfs_bench is looked for beside keyfsctl, then where the install tree (libexec) and the
// build tree (bench/) put it, both relative to keyfsctl's own executable.
int RunBench(int argc, char** argv) {
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n < 0) return Fail(ErrnoText("/proc/self/exe", errno));
  std::filesystem::path exe_dir = std::filesystem::path(std::string(self, n)).parent_path();
  std::vector<std::filesystem::path> dirs = {exe_dir};
  for (const char* rel : {KEYFS_BENCH_INSTALLED_DIR, KEYFS_BENCH_BUILT_DIR}) {
    std::filesystem::path dir = (exe_dir / rel).lexically_normal();
    if (!dir.empty() && std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) {
      dirs.push_back(dir);
    }
  }
  std::string looked;
  for (const std::filesystem::path& dir : dirs) {
    std::string path = (dir / "keyfs_bench").string();
    std::vector<char*> args;
    args.push_back(path.data());
    for (int i = 0; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    std::fflush(stdout);
    ::execv(path.c_str(), args.data());
    if (errno != ENOENT) return Fail("bench: " + ErrnoText(path, errno));
    looked += (looked.empty() ? "" : ", ") + Printable(dir.string());
  }
  return Fail("bench: keyfs_bench not found (looked in " + looked + ")");
}

constexpr Command kCommands[] = {
    {"create", "STORE [--engine snapshot|dets]", 1, 1, true, RunCreate},
    {"get", "STORE KEY", 2, 2, false, RunGet},
    {"put", "STORE KEY [VALUE]", 2, 3, false, RunPut},
    {"del", "STORE KEY", 2, 2, false, RunDel},
    {"list", "STORE [PREFIX]", 1, 2, false, RunList},
    {"import", "STORE DIR", 2, 2, false, RunImport},
    {"export", "STORE DIR", 2, 2, false, RunExport},
    {"info", "STORE", 1, 1, false, RunInfo},
    {"verify", "STORE", 1, 1, false, RunVerify},
    {"merge", "STORE", 1, 1, false, RunMerge},
};

int PrintHelp() {
  std::fwrite(kHelp, 1, sizeof kHelp - 1, stdout);
  return std::fflush(stdout) == 0 ? kExitOk : Fail(ErrnoText("write error", errno));
}

// ParseArgs's answer to --help / -h.
constexpr int kShowHelp = -1;

// Parses a subcommand's arguments: options anywhere before "--", positionals elsewhere.
// Returns kExitOk with *args filled, kShowHelp for --help, or prints the usage error and
// returns kExitUsage.
int ParseArgs(const Command& cmd, int argc, char** argv, Args* args) {
  bool options_done = false;
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (options_done || arg.size() < 2 || arg[0] != '-') {
      args->positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
    } else if (arg == "--help" || arg == "-h") {
      return kShowHelp;
    } else if (cmd.takes_engine && (arg == "--engine" || arg.starts_with("--engine="))) {
      std::string value;
      if (arg == "--engine") {
        if (i + 1 >= argc) {
          return UsageError(std::string(cmd.name) + ": --engine needs a value (snapshot or dets)");
        }
        value = argv[++i];
      } else {
        value = arg.substr(std::strlen("--engine="));
      }
      if (!ParseEngineKind(value).ok()) {
        return UsageError(std::string(cmd.name) + ": unknown engine '" + Printable(value) +
                          "' (expected snapshot or dets)");
      }
      args->engine = value;
    } else {
      return UsageError(std::string(cmd.name) + ": unknown option '" + Printable(arg) + "'");
    }
  }
  if (args->positional.size() < cmd.min_args || args->positional.size() > cmd.max_args) {
    return UsageError(std::string(cmd.name) + ": expected " + cmd.synopsis);
  }
  return kExitOk;
}

// File descriptors: import and export hold one per directory level (up to 2048 for a
// 4096-byte key), more than the usual soft limit of 1024.
void RaiseFdLimit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int Main(int argc, char** argv) {
  if (argc < 2) return UsageError("missing subcommand");
  std::string_view sub = argv[1];
  if (sub == "--help" || sub == "-h") return PrintHelp();
  if (sub == "--version") {
    std::fputs("keyfsctl " KEYFS_VERSION "\n", stdout);
    return std::fflush(stdout) == 0 ? kExitOk : Fail(ErrnoText("write error", errno));
  }
  // bench's arguments are keyfs_bench's, passed through untouched.
  if (sub == "bench") return RunBench(argc - 2, argv + 2);
  for (const Command& cmd : kCommands) {
    if (sub != cmd.name) continue;
    Args args;
    int rc = ParseArgs(cmd, argc - 2, argv + 2, &args);
    if (rc == kShowHelp) return PrintHelp();
    if (rc != kExitOk) return rc;
    RaiseFdLimit();
    return cmd.run(args);
  }
  if (sub.starts_with("-")) return UsageError("unknown option '" + Printable(sub) + "'");
  return UsageError("unknown subcommand '" + Printable(sub) + "'");
}

}  // namespace
}  // namespace keyfs::ctl

int main(int argc, char** argv) {
  try {
    return keyfs::ctl::Main(argc, argv);
  } catch (const std::bad_alloc&) {
    return keyfs::ctl::Fail("out of memory");
  } catch (const std::exception& e) {
    return keyfs::ctl::Fail(e.what());
  } catch (...) {
    return keyfs::ctl::Fail("unexpected error");
  }
}
