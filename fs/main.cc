// keyfs: mount a key-value store as a directory.
//   keyfs STORE MOUNTPOINT [-f] [-d] [-s] [-o OPTION[,OPTION...]]
// Start-up checks (store, engine, mountpoint, /dev/fuse) are ours and come first, so a
// failure is one line "keyfs: ..." and a non-zero exit. Without -f the command returns
// only once the mount is ready: a child does the work and reports back through a pipe.
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "keyfs/fs/filesystem.h"
#include "keyfs/store/engine.h"

namespace {

constexpr const char* kVersion = "0.1.0";

struct Options {
  char* store = nullptr;       // first non-option argument
  char* mountpoint = nullptr;  // second (also left for libfuse)
  int create = 0;
  char* engine = nullptr;
  char* sync_interval = nullptr;
  char* write_buffer = nullptr;
  char* merge_threshold = nullptr;
  int fsname_given = 0;  // -o fsname= / subtype= of the user's win over ours
  int subtype_given = 0;
  int ro = 0;
  char* log_level = nullptr;
  char* log_file = nullptr;
  int show_help = 0;
  int show_version = 0;
};

enum { kKeyHelp, kKeyVersion };

#define KEYFS_OPT(t, p) \
  { t, offsetof(Options, p), 1 }
const fuse_opt kOptSpec[] = {
    KEYFS_OPT("create", create),
    KEYFS_OPT("engine=%s", engine),
    KEYFS_OPT("sync_interval=%s", sync_interval),
    KEYFS_OPT("write_buffer=%s", write_buffer),
    KEYFS_OPT("merge_threshold=%s", merge_threshold),
    KEYFS_OPT("log_level=%s", log_level),
    KEYFS_OPT("log_file=%s", log_file),
    FUSE_OPT_KEY("-h", kKeyHelp),
    FUSE_OPT_KEY("--help", kKeyHelp),
    FUSE_OPT_KEY("-V", kKeyVersion),
    FUSE_OPT_KEY("--version", kKeyVersion),
    FUSE_OPT_END,
};

int OptProc(void* data, const char* arg, int key, fuse_args*) {
  auto* o = static_cast<Options*>(data);
  switch (key) {
    case FUSE_OPT_KEY_NONOPT:
      if (o->store == nullptr) {
        o->store = strdup(arg);
        return 0;  // ours: libfuse only sees the mountpoint
      }
      if (o->mountpoint == nullptr) o->mountpoint = strdup(arg);
      return 1;
    case FUSE_OPT_KEY_OPT:
      if (std::strcmp(arg, "ro") == 0) o->ro = 1;  // ours, and the kernel's too
      if (std::strncmp(arg, "fsname=", 7) == 0) o->fsname_given = 1;
      if (std::strncmp(arg, "subtype=", 8) == 0) o->subtype_given = 1;
      return 1;
    case kKeyHelp:
      o->show_help = 1;
      return 0;
    case kKeyVersion:
      o->show_version = 1;
      return 0;
  }
  return 1;
}

void Usage(const char* prog) {
  std::printf(
      "usage: %s STORE MOUNTPOINT [-f] [-d] [-s] [-o OPTION[,OPTION...]]\n"
      "       %s --help | --version\n\n"
      "Mounts the key-value store STORE at MOUNTPOINT: every key is a file, its value the\n"
      "file's content.\n\n"
      "keyfs options:\n"
      "    -o create              create STORE if it does not exist\n"
      "    -o engine=NAME         snapshot (default) or dets; must match an existing STORE\n"
      "    -o sync_interval=SECS  dets: seconds between syncs (default 30, 0 = fsync/unmount)\n"
      "    -o merge_threshold=N   snapshot: keys in the commit log that start a merge into a\n"
      "                           new table (default: 16384 or 1/8 of the keys, the larger;\n"
      "                           1 = write a whole table per commit)\n"
      "    -o write_buffer=SIZE   bytes the copies of all files open for writing may hold\n"
      "                           together (K, M, G suffixes; default half the memory);\n"
      "                           past it writes get ENOSPC\n"
      "    -o ro                  read-only mount (the fast path for programs that only read)\n"
      "    -o log_level=LEVEL     trace, debug, info (default), warn, error\n"
      "    -o log_file=PATH       log there instead of stderr (-f) or syslog\n"
      "    -f                     stay in the foreground\n"
      "    -d                     debug: foreground, log_level=debug and libfuse's trace\n"
      "    -s                     accepted for compatibility (requests that commit always\n"
      "                           run on worker threads)\n\n"
      "libfuse options (-o allow_other, default_permissions, ...):\n",
      prog, prog);
  fuse_lowlevel_help();
}

// What libfuse says while the daemon starts is kept and folded into keyfs's one line;
// once the mount is up it goes to keyfs's log.
std::string g_libfuse_said;
bool g_libfuse_to_log = false;

void LibfuseLog(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  if (g_libfuse_to_log) {
    std::string line(buf);
    while (!line.empty() && line.back() == '\n') line.pop_back();
    spdlog::log(level <= FUSE_LOG_ERR ? spdlog::level::err : spdlog::level::info, "libfuse: {}",
                line);
  } else {
    g_libfuse_said += buf;  // one message may come in several calls
  }
}

// " (libfuse: ...)" when libfuse said something, else "": its lines joined with "; ".
std::string LibfuseSaid() {
  std::string said;
  size_t start = 0;
  while (start < g_libfuse_said.size()) {
    size_t end = g_libfuse_said.find('\n', start);
    if (end == std::string::npos) end = g_libfuse_said.size();
    std::string line = g_libfuse_said.substr(start, end - start);
    if (line.rfind("fuse: ", 0) == 0) line.erase(0, 6);
    if (!line.empty()) said += (said.empty() ? "" : "; ") + line;
    start = end + 1;
  }
  return said.empty() ? std::string() : " (libfuse: " + said + ")";
}

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "keyfs: %s\n", msg.c_str());
  std::exit(1);
}

std::string AbsolutePath(const std::string& p) {
  if (!p.empty() && p[0] == '/') return p;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) return p;
  return std::string(cwd) + "/" + p;
}

void SetUpLogging(const Options& o, bool foreground, bool debug) {
  if (o.log_file != nullptr) {
    // spdlog would create missing directories and fail later in the background: refuse a
    // log file that cannot be opened now, with the reason.
    int fd = open(o.log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) Die(std::string("cannot open log file ") + o.log_file + ": " + strerror(errno));
    close(fd);
  }
  std::shared_ptr<spdlog::logger> logger;
  try {
    if (o.log_file != nullptr) {
      logger = spdlog::basic_logger_mt("keyfs", o.log_file);
    } else if (foreground) {
      logger = spdlog::stderr_color_mt("keyfs");
    } else {
      logger = spdlog::syslog_logger_mt("keyfs", "keyfs", LOG_PID);
    }
  } catch (const std::exception& e) {
    Die(std::string("cannot open log: ") + e.what());
  }
  spdlog::set_default_logger(logger);
  spdlog::level::level_enum level = debug ? spdlog::level::debug : spdlog::level::info;
  if (o.log_level != nullptr) {
    std::string l = o.log_level;
    if (l == "trace")
      level = spdlog::level::trace;
    else if (l == "debug")
      level = spdlog::level::debug;
    else if (l == "info")
      level = spdlog::level::info;
    else if (l == "warn")
      level = spdlog::level::warn;
    else if (l == "error")
      level = spdlog::level::err;
    else
      Die("unknown log_level '" + l + "' (trace, debug, info, warn, error)");
  }
  spdlog::set_level(level);
  spdlog::flush_on(spdlog::level::warn);
}

// The running part, after the checks: open the engine, mount, serve. Reports start-up
// success or failure through `ready_fd` (-1 in the foreground). Returns the exit status.
int Serve(fuse_args* args, const std::string& store, const std::string& mountpoint,
          const keyfs::OpenOptions& open_options, bool read_only, uint64_t write_budget,
          int ready_fd, bool foreground) {
  auto fail = [&](const std::string& msg) {
    std::string line = "keyfs: " + msg + "\n";
    if (ready_fd >= 0) {
      (void)!write(ready_fd, line.data(), line.size());
    } else {
      std::fputs(line.c_str(), stderr);
    }
    return 1;
  };
  auto engine = keyfs::OpenStore(store, open_options);
  if (!engine.ok()) return fail(store + ": " + engine.status().ToString());

  keyfs::fs::Config config;
  config.read_only = read_only;
  config.store_path = store;
  config.write_budget_bytes = write_budget;
  keyfs::fs::Filesystem fs(engine->get(), config);
  fuse_session* se = fuse_session_new(args, keyfs::fs::Filesystem::Ops(), sizeof(fuse_lowlevel_ops),
                                      fs.SessionData());
  if (se == nullptr) return fail("bad libfuse options" + LibfuseSaid() + " (see keyfs --help)");
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    return fail("cannot install signal handlers");
  }
  if (fuse_session_mount(se, mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return fail("cannot mount " + mountpoint + LibfuseSaid() +
                " (is FUSE available? is it already mounted?)");
  }
  fs.Start(se);
  g_libfuse_to_log = true;
  spdlog::info("mounted {} ({}) at {}{}", store, (*engine)->name(), mountpoint,
               read_only ? " read-only" : "");
  if (ready_fd >= 0) {
    (void)!write(ready_fd, "ok\n", 3);
    close(ready_fd);
  }
  if (!foreground) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      if (null > 2) close(null);
    }
  }
  int r = fuse_session_loop(se);
  spdlog::info("unmounting {}", mountpoint);
  // Workers and the invalidator reply and notify until fs.Stop() returns, and commits and
  // syncs they finish open store files meanwhile. libfuse's unmount closes the device
  // before it forgets the descriptor's number, so a reply sent in between went to whatever
  // file took the number (found in a dets store: FUSE replies at offset 0 of the file a
  // sync published). /dev/null takes the number in one step instead: the device is closed
  // (which aborts the connection, so nothing stays blocked on the kernel), late replies go
  // nowhere, and the unmount below closes /dev/null once nobody writes to it any more.
  // Whether the kernel side is gone already (unmounted or aborted from outside: then there
  // is nothing to unmount) is libfuse's own test, made on the device while it is ours.
  const int dev = fuse_session_fd(se);
  pollfd pfd = {dev, 0, 0};
  const bool gone = poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR) != 0;
  if (int null = open("/dev/null", O_WRONLY | O_CLOEXEC); null >= 0) {
    if (dup3(null, dev, O_CLOEXEC) < 0) {
      spdlog::warn("cannot retire the FUSE device descriptor: {}", strerror(errno));
    }
    close(null);
  }
  fs.Stop();
  if (!gone) fuse_session_unmount(se);  // else fuse_session_destroy closes /dev/null
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  keyfs::Status s = (*engine)->Sync();
  engine->reset();  // dets: the final sync happens here
  if (!s.ok()) {
    spdlog::error("final sync failed: {}", s.ToString());
    return 1;
  }
  return r < 0 ? 1 : 0;
}

}  // namespace

// The seconds of -o sync_interval: digits only, at most a year.
unsigned ParseSyncInterval(const char* text) {
  const std::string t = text;
  if (t.empty() || t.size() > 8 || t.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(t) > 365u * 86400) {
    Die("bad sync_interval '" + t + "': a number of seconds from 0 (only on fsync) to 31536000");
  }
  return static_cast<unsigned>(std::stoul(t));
}

// The keys of -o merge_threshold: digits only, 1 to 2^40.
uint64_t ParseMergeThreshold(const char* text) {
  const std::string t = text;
  if (t.empty() || t.size() > 13 || t.find_first_not_of("0123456789") != std::string::npos ||
      std::stoull(t) == 0 || std::stoull(t) > (uint64_t{1} << 40)) {
    Die("bad merge_threshold '" + t + "': a number of keys from 1 to 1099511627776");
  }
  return std::stoull(t);
}

// The bytes of -o write_buffer: digits with an optional K, M or G suffix, at least 1 MiB.
uint64_t ParseSize(const char* option, const char* text) {
  std::string t = text;
  uint64_t unit = 1;
  if (!t.empty()) {
    switch (t.back()) {
      case 'K':
      case 'k':
        unit = uint64_t{1} << 10;
        break;
      case 'M':
      case 'm':
        unit = uint64_t{1} << 20;
        break;
      case 'G':
      case 'g':
        unit = uint64_t{1} << 30;
        break;
      default:
        break;
    }
    if (unit != 1) t.pop_back();
  }
  if (t.empty() || t.size() > 12 || t.find_first_not_of("0123456789") != std::string::npos ||
      std::stoull(t) * unit < (uint64_t{1} << 20)) {
    Die(std::string("bad ") + option + " '" + text + "': a size of at least 1M (K, M, G suffixes)");
  }
  return std::stoull(t) * unit;
}

int main(int argc, char** argv) {
  fuse_set_log_func(LibfuseLog);
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  Options o;
  if (fuse_opt_parse(&args, &o, kOptSpec, OptProc) != 0) {
    Die("bad options" + LibfuseSaid() + " (see keyfs --help)");
  }
  if (o.show_help) {
    Usage(argv[0]);
    return 0;
  }
  if (o.show_version) {
    std::printf("keyfs %s (libfuse %s)\n", kVersion, fuse_pkgversion());
    return 0;
  }
  if (o.store == nullptr || o.mountpoint == nullptr) {
    std::fprintf(stderr, "keyfs: usage: keyfs STORE MOUNTPOINT [-f] [-o OPTIONS] (see --help)\n");
    return 2;
  }
  {
    // Before libfuse looks at it, so the one line is ours.
    struct stat mst;
    if (stat(o.mountpoint, &mst) != 0) {
      if (errno == ENOTCONN) {
        Die(std::string("mountpoint ") + o.mountpoint +
            ": the daemon that served it is gone (a dead mount): run `fusermount3 -u -z " +
            o.mountpoint + "` and mount again");
      }
      Die(std::string("mountpoint ") + o.mountpoint + ": " + strerror(errno));
    }
    if (!S_ISDIR(mst.st_mode))
      Die(std::string("mountpoint ") + o.mountpoint + " is not a directory");
  }
  const std::string store = AbsolutePath(o.store);
  {
    // findmnt, df and mount -a name the store: the mount's source is its absolute path,
    // its type fuse.keyfs.
    char* opts = nullptr;
    if (!o.fsname_given && fuse_opt_add_opt_escaped(&opts, ("fsname=" + store).c_str()) != 0) {
      Die("out of memory");
    }
    if (!o.subtype_given && fuse_opt_add_opt(&opts, "subtype=keyfs") != 0) Die("out of memory");
    if (opts != nullptr) {
      if (fuse_opt_add_arg(&args, "-o") != 0 || fuse_opt_add_arg(&args, opts) != 0) {
        Die("out of memory");
      }
      free(opts);
    }
  }
  fuse_cmdline_opts cmd;
  std::memset(&cmd, 0, sizeof(cmd));
  if (fuse_parse_cmdline(&args, &cmd) != 0) {
    Die("bad options" + LibfuseSaid() + " (see keyfs --help)");
  }
  const std::string mountpoint = cmd.mountpoint;
  const bool foreground = cmd.foreground || cmd.debug;
  SetUpLogging(o, foreground, cmd.debug);

  // ---- our checks, before libfuse's ----
  keyfs::OpenOptions open_options;
  open_options.read_only = o.ro;
  open_options.watch = true;
  open_options.create = o.create;
  if (o.sync_interval != nullptr) open_options.sync_interval_s = ParseSyncInterval(o.sync_interval);
  if (o.merge_threshold != nullptr) {
    open_options.merge_threshold = ParseMergeThreshold(o.merge_threshold);
  }
  const uint64_t write_budget =
      o.write_buffer != nullptr ? ParseSize("write_buffer", o.write_buffer) : 0;
  if (o.engine != nullptr) {
    auto kind = keyfs::ParseEngineKind(o.engine);
    if (!kind.ok()) Die(std::string(kind.status().message()));
    open_options.kind = *kind;
    open_options.kind_given = true;
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    Die(std::string("FUSE unavailable: /dev/fuse: ") + strerror(errno));
  }
  auto kind = keyfs::DetectEngine(store);
  if (!kind.ok()) {
    if (!kind.status().IsNotFound()) Die(kind.status().ToString());
    if (!o.create) Die(store + " does not exist (use -o create to create it)");
    if (o.ro) Die("cannot create " + store + " on a read-only mount");
    keyfs::Status s = keyfs::CreateStore(store, open_options.kind);
    if (!s.ok() && s.code() != keyfs::Status::Code::kAlreadyExists) {
      Die("cannot create " + store + ": " + s.ToString());
    }
    kind = keyfs::DetectEngine(store);
    if (!kind.ok()) Die(kind.status().ToString());
  }
  if (o.engine != nullptr && *kind != open_options.kind) {
    Die(store + " is a " + keyfs::EngineKindName(*kind) + " store, not " + o.engine);
  }
  {
    // Check the file now (header, checksums of the index) with no threads running.
    keyfs::OpenOptions probe;
    probe.read_only = true;
    auto e = keyfs::OpenStore(store, probe);
    if (!e.ok()) Die(store + ": " + e.status().ToString());
  }

  int status;
  if (foreground) {
    status = Serve(&args, store, mountpoint, open_options, o.ro, write_budget, -1, true);
  } else {
    int p[2];
    if (pipe(p) != 0) Die(std::string("pipe: ") + strerror(errno));
    pid_t pid = fork();
    if (pid < 0) Die(std::string("fork: ") + strerror(errno));
    if (pid == 0) {
      close(p[0]);
      setsid();
      if (chdir("/") != 0) _exit(1);
      _exit(Serve(&args, store, mountpoint, open_options, o.ro, write_budget, p[1], false));
    }
    close(p[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) > 0) {
      msg.append(buf, static_cast<size_t>(n));
      if (msg.find('\n') != std::string::npos) break;
    }
    if (msg.rfind("ok", 0) == 0) return 0;
    if (msg.empty()) msg = "keyfs: the daemon died while starting\n";
    std::fputs(msg.c_str(), stderr);
    waitpid(pid, nullptr, 0);
    status = 1;
  }
  fuse_opt_free_args(&args);
  free(o.store);
  free(o.mountpoint);
  free(cmd.mountpoint);
  return status;
}
