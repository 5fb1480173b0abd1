// keyfs_bench mount-large: what a lookup and a read cost through the mount when the store is
// large. Both stores hold the same N keys (default 10M) in directories of 1,000
// (`d%05u/k%04u`, 100 B values), built directly through the store library; each is mounted
// `-o ro` and read-write by the real daemon. The reference is tmpfs with the same layout.
//
// Why the measurements look the way they do:
// - A lookup the kernel has cached never reaches the daemon, so "first lookup" figures use
//   every key once, in random order, on each target; a separate figure repeats keys that
//   are already cached. Missing names are new each time too (negative entries are cached).
// - Client and daemons are pinned to CPU 0 (SPEC §6: cross-CPU wake-ups on these VMs swing a
//   round trip 5-10x), then the whole pass is repeated unpinned with fresh daemons.
// - All five targets run in the same interleaved rounds, so dets/tmpfs, snapshot/tmpfs and
//   dets/snapshot are ratios of the same rounds.
// - tmpfs cannot hold 10M files here (each 100 B file takes a 4 KiB page: ~50 GB), so by
//   default it holds min(N, 1M) files in the same 1,000-per-directory layout. tmpfs keeps
//   every dentry cached, so its lookups cost the same at any size; the notes say so.
#include "bench_mount_large.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "daemon.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"
#include "report.h"
#include "timing.h"
#include "util.h"

namespace keyfs::bench {
namespace {

constexpr uint64_t kPerDir = 1000;  // keys per directory
constexpr size_t kValueBytes = 100;
// Puts per commit while building. A snapshot commit rewrites the whole table, so fewer,
// larger batches build faster; 1M keeps a batch and its overlay at a few hundred MB.
constexpr uint64_t kCommitBatch = 1'000'000;
// The dets write buffer holds a whole 10M build (~2.5 GB), so the build is one sync.
constexpr uint64_t kDetsBufferLimit = uint64_t{8} << 30;
constexpr uint64_t kDefaultKeys = 10'000'000, kQuickKeys = 100'000;
constexpr uint64_t kDefaultTmpfsKeys = 1'000'000;
// Generous estimates for the checks before building: the dets file, the snapshot file and
// the snapshot's next table during a commit; a page, an inode and a dentry per tmpfs file.
constexpr uint64_t kDiskBytesPerKey = 800;
constexpr uint64_t kTmpfsBytesPerKey = 6 << 10;

// Target indices: the reference first, then each engine's -o ro and read-write mounts.
enum : size_t { kTmpfs, kSnapRo, kDetsRo, kSnapRw, kDetsRw, kTargets };
constexpr const char* kTargetNames[kTargets] = {"tmpfs", "snapshot -o ro", "dets -o ro",
                                                "snapshot rw", "dets rw"};
// Index into the daemons of one pass (no daemon for tmpfs).
constexpr size_t DaemonIndex(size_t target) { return target - 1; }

// The measured operations, in the order they run (kStatRepeat repeats kStatHit's keys).
enum Op : size_t { kStatHit, kStatRepeat, kStatMiss, kRead, kOps };
constexpr const char* kOpNames[kOps] = {
    "stat existing key, first lookup", "stat existing key, repeated (cached)",
    "stat missing name, first lookup", "open+read+close, first open"};

struct Sizes {
  int rounds;
  uint64_t per_round;  // operations per target per round
};

void MakeValue(uint64_t i, char* out) {
  for (size_t j = 0; j < kValueBytes; ++j) out[j] = static_cast<char>('a' + (i + j) % 26);
}

std::string DirName(uint64_t d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "d%05llu", static_cast<unsigned long long>(d));
  return buf;
}

// Relative paths at a fixed stride in one buffer, built before the clock starts so that the
// timed loops do nothing but the system calls.
class NameList {
 public:
  static constexpr size_t kStride = 48;

  void AddKey(uint64_t i) { Add("d%05llu/k%04llu", i / kPerDir, i % kPerDir); }
  void AddMissing(uint64_t dir, uint64_t n) { Add("d%05llu/m%07llu", dir, n); }
  const char* at(size_t i) const { return buf_.data() + i * kStride; }
  size_t size() const { return buf_.size() / kStride; }

  // Key i's name into out[kStride].
  static void Key(uint64_t i, char* out) {
    std::snprintf(out, kStride, "d%05llu/k%04llu", static_cast<unsigned long long>(i / kPerDir),
                  static_cast<unsigned long long>(i % kPerDir));
  }

 private:
  void Add(const char* fmt, uint64_t a, uint64_t b) {
    const size_t at = buf_.size();
    buf_.resize(at + kStride);
    std::snprintf(buf_.data() + at, kStride, fmt, static_cast<unsigned long long>(a),
                  static_cast<unsigned long long>(b));
  }
  std::vector<char> buf_;
};

// Distinct keys of [0, n) in a seeded random order, handed out front to back: a key looked
// up twice on one target would be answered by the kernel's dentry cache the second time.
class KeyStream {
 public:
  KeyStream(uint64_t n, uint64_t seed) : order_(n) {
    std::iota(order_.begin(), order_.end(), 0u);
    std::shuffle(order_.begin(), order_.end(), std::mt19937_64(seed));
  }
  uint64_t Next() { return order_[next_++]; }
  uint64_t left() const { return order_.size() - next_; }

 private:
  std::vector<uint32_t> order_;
  size_t next_ = 0;
};

// The names one pass uses on one side (the keyfs stores, or tmpfs): (rounds + 1) slices of
// per_round names per operation; MeasureInterleaved's untimed warm-up takes the first.
struct PassNames {
  NameList hits, misses, reads;  // kStatRepeat reuses the first slice of `hits`
};

PassNames MakeNames(KeyStream* keys, uint64_t dirs, uint64_t* missing_serial, const Sizes& sizes,
                    std::mt19937_64* rng) {
  PassNames n;
  const uint64_t count = sizes.per_round * static_cast<uint64_t>(sizes.rounds + 1);
  for (uint64_t i = 0; i < count; ++i) n.hits.AddKey(keys->Next());
  for (uint64_t i = 0; i < count; ++i) n.reads.AddKey(keys->Next());
  for (uint64_t i = 0; i < count; ++i) n.misses.AddMissing((*rng)() % dirs, (*missing_serial)++);
  return n;
}

uint64_t FreeBytes(const std::string& path) {
  struct statvfs st;
  if (::statvfs(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

// A "<field>: N kB" line of /proc/meminfo in bytes.
uint64_t MeminfoBytes(const char* field) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  const size_t len = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':') {
      return std::strtoull(line.c_str() + len + 1, nullptr, 10) * 1024;
    }
  }
  return 0;
}

uint64_t TreeBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st;
    if (::lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  return total;
}

// ---- building ----

// Creates the store at `path` with keys [0, n) in directories of kPerDir, committed in
// batches of kCommitBatch, synced and closed. *seconds: all of it, open to close.
Status BuildStore(const std::string& path, EngineKind kind, uint64_t n, double* seconds) {
  ::sync();  // earlier writeback must not land on this clock
  const Clock::time_point t0 = Clock::now();
  OpenOptions o;
  o.create = true;
  o.kind = kind;
  o.kind_given = true;
  o.sync_interval_s = 0;
  o.buffer_limit_bytes = kDetsBufferLimit;
  auto engine = OpenStore(path, o);
  if (!engine.ok()) return engine.status().WithContext("create " + path);
  std::string value(kValueBytes, '\0');
  char key[NameList::kStride];
  for (uint64_t i = 0; i < n;) {
    Batch batch;
    for (uint64_t j = 0; j < kCommitBatch && i < n; ++j, ++i) {
      if (i % kPerDir == 0) batch.Mkdir(DirName(i / kPerDir));
      NameList::Key(i, key);
      MakeValue(i, value.data());
      batch.Put(key, value);
    }
    Status s = (*engine)->Commit(batch);
    if (!s.ok()) return s.WithContext("commit to " + path);
    if (n > kCommitBatch) {
      Progress(std::string(EngineKindName(kind)) + ": " + CountLabel(i) + " of " + CountLabel(n) +
               " keys committed");
    }
  }
  Status s = (*engine)->Sync();
  if (!s.ok()) return s.WithContext("sync " + path);
  engine->reset();  // closes it: the read-write daemon takes the writer lock
  *seconds = Seconds(t0);
  return Status::OK();
}

// The same layout as files under `root` (a tmpfs).
Status BuildTmpfs(const std::string& root, uint64_t n, double* seconds) {
  const Clock::time_point t0 = Clock::now();
  char value[kValueBytes];
  char key[NameList::kStride];
  for (uint64_t i = 0; i < n; ++i) {
    if (i % kPerDir == 0) {
      const std::string dir = root + "/" + DirName(i / kPerDir);
      if (::mkdir(dir.c_str(), 0755) != 0) return Status::FromErrno(errno, "mkdir " + dir);
    }
    NameList::Key(i, key);
    const std::string path = root + "/" + key;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno(errno, "create " + path);
    MakeValue(i, value);
    const ssize_t w = ::write(fd, value, kValueBytes);
    const int err = errno;
    ::close(fd);
    if (w != static_cast<ssize_t>(kValueBytes)) {
      return Status::FromErrno(w < 0 ? err : ENOSPC, "write " + path);
    }
  }
  *seconds = Seconds(t0);
  return Status::OK();
}

// ---- measuring ----

// One target during a pass: its top directory (the timed calls are *at() relative to it)
// and the names it uses.
struct Target {
  std::string root;
  int fd = -1;
  const PassNames* names = nullptr;
  size_t next[kOps] = {};  // the next unused name of each operation
};

// The first thing that went wrong in a timed loop, reported after the measurement (the
// loops stay free of anything but the calls being measured).
struct Failures {
  std::string first;
  void Note(const char* target, const char* call, const char* name, int err) {
    if (!first.empty()) return;
    first = std::string(call) + " " + name + " on " + target + ": " +
            (err != 0 ? std::strerror(err) : "wrong size");
  }
};

[[gnu::noinline]] uint64_t RunOp(Op op, size_t which, Target& t, uint64_t count, Failures* f) {
  const NameList& names = op == kStatMiss ? t.names->misses
                          : op == kRead   ? t.names->reads
                                          : t.names->hits;
  // The repeat walks the first slice over and over: names kStatHit looked up already.
  const size_t first = op == kStatRepeat ? 0 : t.next[op];
  if (op != kStatRepeat) t.next[op] += count;
  if (first + count > names.size()) {
    f->Note(kTargetNames[which], "use", "more names than prepared", 0);
    return count;
  }
  struct stat st;
  char buf[4096];
  for (size_t i = first; i < first + count; ++i) {
    const char* name = names.at(i);
    if (op == kRead) {
      const int fd = ::openat(t.fd, name, O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        f->Note(kTargetNames[which], "open", name, errno);
        continue;
      }
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n != static_cast<ssize_t>(kValueBytes)) {
        f->Note(kTargetNames[which], "read", name, n < 0 ? errno : 0);
      }
      ::close(fd);
    } else {
      const int r = ::fstatat(t.fd, name, &st, 0);
      if (op == kStatMiss ? (r == 0 || errno != ENOENT) : r != 0) {
        f->Note(kTargetNames[which], "stat", name, r == 0 ? EEXIST : errno);
      }
    }
  }
  KeepAlive(st.st_size);
  return count;
}

struct PassResult {
  std::vector<std::vector<double>> ns[kOps];  // [op][target][round], ns per operation
  uint64_t vmhwm[kTargets - 1] = {};          // per daemon, after the pass
  uint64_t rss_anon[kTargets - 1] = {};
};

struct Setup {
  std::string bin;
  std::string root;  // the temp directory: stores, mountpoints, daemon logs
  std::string snapshot_store, dets_store, tmpfs_root;
  uint64_t dirs = 0, tmpfs_dirs = 0;
  Sizes sizes;
};

// Mounts both stores -o ro and read-write (pinned to CPU 0 or not), measures every
// operation on the five targets in interleaved rounds, and unmounts.
Status RunPass(const Setup& s, bool pinned, const PassNames& keyfs_names,
               const PassNames& tmpfs_names, PassResult* out) {
  const int cpu = pinned ? 0 : -1;
  const char* how = pinned ? "pinned" : "unpinned";
  const std::string tag[kTargets - 1] = {"snapshot-ro", "dets-ro", "snapshot-rw", "dets-rw"};
  std::unique_ptr<Daemon> daemons[kTargets - 1];
  Target targets[kTargets];
  targets[kTmpfs].root = s.tmpfs_root;
  for (size_t t = kSnapRo; t < kTargets; ++t) {
    const size_t d = DaemonIndex(t);
    const std::string mnt = s.root + "/mnt-" + tag[d];
    std::filesystem::create_directories(mnt);
    const bool dets = t == kDetsRo || t == kDetsRw;
    const bool ro = t == kSnapRo || t == kDetsRo;
    Progress(std::string("mounting ") + kTargetNames[t] + " (" + how + ")");
    daemons[d] = std::make_unique<Daemon>(s.bin, dets ? s.dets_store : s.snapshot_store, mnt,
                                          ro ? "ro" : "", cpu, s.root + "/" + tag[d] + ".log");
    if (!daemons[d]->ok()) return Status::IOError(daemons[d]->error());
    targets[t].root = mnt;
  }
  auto close_all = [&] {
    for (Target& t : targets) {
      if (t.fd >= 0) ::close(t.fd);
      t.fd = -1;
    }
  };
  for (size_t t = 0; t < kTargets; ++t) {
    targets[t].names = t == kTmpfs ? &tmpfs_names : &keyfs_names;
    targets[t].fd = ::open(targets[t].root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (targets[t].fd < 0) {
      Status st = Status::FromErrno(errno, "open " + targets[t].root);
      close_all();
      return st;
    }
  }
  std::optional<CpuPin> pin;  // the client on the daemons' CPU
  if (pinned) pin.emplace(0);
  // Every directory looked up once, untimed: the timed lookups are of the keys alone.
  Failures failures;
  for (size_t t = 0; t < kTargets; ++t) {
    struct stat st;
    const uint64_t dirs = t == kTmpfs ? s.tmpfs_dirs : s.dirs;
    for (uint64_t d = 0; d < dirs; ++d) {
      const std::string name = DirName(d);
      if (::fstatat(targets[t].fd, name.c_str(), &st, 0) != 0) {
        failures.Note(kTargetNames[t], "stat", name.c_str(), errno);
      }
    }
  }
  for (size_t op = 0; op < kOps && failures.first.empty(); ++op) {
    Progress(std::string(kOpNames[op]) + " (" + how + ")");
    std::vector<Contender> contenders;
    for (size_t t = 0; t < kTargets; ++t) {
      contenders.push_back({kTargetNames[t], [&, op, t] {
                              return RunOp(static_cast<Op>(op), t, targets[t], s.sizes.per_round,
                                           &failures);
                            }});
    }
    out->ns[op] = MeasureInterleaved(contenders, s.sizes.rounds);
  }
  pin.reset();
  close_all();
  for (size_t d = 0; d < kTargets - 1; ++d) {
    out->vmhwm[d] = ProcStatusBytes(daemons[d]->pid(), "VmHWM");
    out->rss_anon[d] = ProcStatusBytes(daemons[d]->pid(), "RssAnon");
  }
  Progress(std::string("unmounting (") + how + ")");
  if (!failures.first.empty()) return Status::IOError(failures.first);
  return Status::OK();
}

Figure RatioFigure(const std::string& metric, const std::vector<double>& keyfs,
                   const std::vector<double>& ref, const std::string& ref_name, Unit unit) {
  Figure f;
  f.metric = metric;
  f.keyfs = Median(keyfs);
  f.unit = unit;
  f.reference = Median(ref);
  f.reference_name = ref_name;
  f.ratio = PairedRatio(keyfs, ref);
  f.samples = static_cast<int>(keyfs.size());
  return f;
}

// A single measurement of dets against snapshot (build time, file size, memory).
Figure OnceFigure(const std::string& metric, double dets, double snapshot, Unit unit) {
  Figure f = RatioFigure(metric, {dets}, {snapshot}, "snapshot", unit);
  f.samples = 1;
  return f;
}

void AddPassFigures(const PassResult& r, const std::string& how, Report* report) {
  for (size_t op = 0; op < kOps; ++op) {
    for (bool ro : {true, false}) {
      const size_t snap = ro ? kSnapRo : kSnapRw, dets = ro ? kDetsRo : kDetsRw;
      const std::string what =
          std::string(kOpNames[op]) + " [" + (ro ? "-o ro" : "rw") + ", " + how + "]: ";
      const auto& ns = r.ns[op];
      report->AddFigure(RatioFigure(what + "dets", ns[dets], ns[kTmpfs], "tmpfs", Unit::kNanos));
      report->AddFigure(
          RatioFigure(what + "snapshot", ns[snap], ns[kTmpfs], "tmpfs", Unit::kNanos));
      report->AddFigure(
          RatioFigure(what + "dets vs snapshot", ns[dets], ns[snap], "snapshot", Unit::kNanos));
    }
  }
}

}  // namespace

int RunMountLargeBench(const MountLargeBenchOptions& o) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "keyfs_bench: %s\n", st.ToString().c_str());
    return 1;
  };
  const uint64_t keys = o.keys != 0 ? o.keys : o.quick ? kQuickKeys : kDefaultKeys;
  const uint64_t tmpfs_keys = std::min(keys, o.tmpfs_keys != 0 ? o.tmpfs_keys : kDefaultTmpfsKeys);
  if (keys > uint64_t{0xFFFFFFFF}) return fail(Status::InvalidArgument("--keys must be < 2^32"));
  Sizes sizes = o.quick ? Sizes{3, 1000} : Sizes{9, 20'000};
  // Each pass takes 2 (rounds + 1) slices of existing keys: hits and reads; two passes.
  const uint64_t slices = 4 * static_cast<uint64_t>(sizes.rounds + 1);
  sizes.per_round = std::min(sizes.per_round, tmpfs_keys / slices);
  if (sizes.per_round < 100) {
    return fail(Status::InvalidArgument("too few keys: need at least " +
                                        std::to_string(100 * slices) + " (--keys, --tmpfs-keys)"));
  }

  Setup s;
  s.bin = FindKeyfs(o.keyfs_bin);
  s.sizes = sizes;
  s.dirs = (keys + kPerDir - 1) / kPerDir;
  s.tmpfs_dirs = (tmpfs_keys + kPerDir - 1) / kPerDir;
  TempDir root, shm;
  Status st = root.Create(o.dir);
  if (!st.ok()) return fail(st);
  // The reference lives on tmpfs: /dev/shm is one on every system with glibc's shm_open.
  st = shm.Create("/dev/shm");
  if (!st.ok()) return fail(st);
  s.root = root.path();
  s.snapshot_store = root.File("snapshot.keyfs");
  s.dets_store = root.File("dets.keyfs");
  s.tmpfs_root = shm.path();

  // Refuse early, with the figures, rather than fail after minutes of building.
  const uint64_t disk_need = keys * kDiskBytesPerKey, disk_free = FreeBytes(s.root);
  if (disk_need > disk_free) {
    return fail(Status::NoSpace("need ~" + Megabytes(disk_need) + " free under " + s.root +
                                " for " + CountLabel(keys) + " keys, have " + Megabytes(disk_free) +
                                " (--dir, --keys)"));
  }
  const uint64_t shm_need = tmpfs_keys * kTmpfsBytesPerKey;
  const uint64_t shm_free = std::min(FreeBytes(s.tmpfs_root), MeminfoBytes("MemAvailable") / 2);
  if (shm_need > shm_free) {
    return fail(Status::NoSpace("the tmpfs reference needs ~" + Megabytes(shm_need) +
                                " of memory, have " + Megabytes(shm_free) + " (--tmpfs-keys)"));
  }

  const Clock::time_point start = Clock::now();
  double snapshot_s = 0, dets_s = 0, tmpfs_s = 0;
  Progress("building the snapshot store, " + CountLabel(keys) + " keys");
  st = BuildStore(s.snapshot_store, EngineKind::kSnapshot, keys, &snapshot_s);
  if (!st.ok()) return fail(st);
  Progress("building the dets store, " + CountLabel(keys) + " keys");
  st = BuildStore(s.dets_store, EngineKind::kDets, keys, &dets_s);
  if (!st.ok()) return fail(st);
  const uint64_t disk_used = TreeBytes(s.root);
  Progress("building the tmpfs reference, " + CountLabel(tmpfs_keys) + " files");
  const uint64_t shmem_before = MeminfoBytes("Shmem"), slab_before = MeminfoBytes("Slab");
  st = BuildTmpfs(s.tmpfs_root, tmpfs_keys, &tmpfs_s);
  if (!st.ok()) return fail(st);
  const uint64_t shmem_after = MeminfoBytes("Shmem"), slab_after = MeminfoBytes("Slab");
  // Other jobs on the machine move these too: a rough figure for the notes, never negative.
  const uint64_t shmem_used = shmem_after - std::min(shmem_before, shmem_after);
  const uint64_t slab_used = slab_after - std::min(slab_before, slab_after);
  ::sync();  // the builds' writeback must not land on the measurements

  // The same random keys (each once) on every keyfs target; tmpfs draws from its own files.
  KeyStream keyfs_keys(keys, 1), tmpfs_stream(tmpfs_keys, 2);
  std::mt19937_64 rng(3);
  uint64_t missing_keyfs = 0, missing_tmpfs = 0;
  PassResult results[2];
  for (int pass = 0; pass < 2; ++pass) {
    const bool pinned = pass == 0;
    const PassNames keyfs_names = MakeNames(&keyfs_keys, s.dirs, &missing_keyfs, sizes, &rng);
    const PassNames tmpfs_names =
        MakeNames(&tmpfs_stream, s.tmpfs_dirs, &missing_tmpfs, sizes, &rng);
    st = RunPass(s, pinned, keyfs_names, tmpfs_names, &results[pass]);
    if (!st.ok()) return fail(st);
  }

  Report report("keyfs_bench mount-large" + std::string(o.quick ? " --quick" : "") + ": " +
                CountLabel(keys) + "-key dets and snapshot mounts vs tmpfs, one run");
  report.AddNote("CPU: " + CpuModel() + "; daemon " + s.bin + "; stores in " + s.root + " (" +
                 FilesystemType(s.root) + ")");
  report.AddNote("layout: " + CountLabel(keys) + " keys d%05u/k%04u, " + std::to_string(kPerDir) +
                 " per directory (" + std::to_string(s.dirs) + " directories), " +
                 std::to_string(kValueBytes) +
                 " B values; both stores built through the store "
                 "library in commits of " +
                 CountLabel(kCommitBatch) + " puts, then synced");
  report.AddNote("tmpfs reference: " + CountLabel(tmpfs_keys) + " files in " +
                 std::to_string(s.tmpfs_dirs) + " directories of the same layout" +
                 (tmpfs_keys < keys ? " (FEWER than the stores: every tmpfs dentry stays "
                                      "cached, so its lookups cost the same at any size)"
                                    : "") +
                 "; built in " + Printf("%.1f s", tmpfs_s) + ", Shmem +" + Megabytes(shmem_used) +
                 ", Slab +" + Megabytes(slab_used));
  report.AddNote("each round: " + std::to_string(sizes.per_round) + " operations per target; " +
                 std::to_string(sizes.rounds) +
                 " interleaved rounds after one untimed; 'first lookup' names are each used "
                 "once per target, in random order; 'repeated' re-stats one slice already "
                 "looked up; every directory was looked up before the clock started");
  report.AddNote(
      "pinned: client and all four daemons on CPU 0 (SPEC §6); unpinned: the same with fresh "
      "daemons and new keys. The store files are in the page cache (just written): these are "
      "the costs of the lookup path, not of disk reads. ratio = median over rounds of the "
      "per-round ratio");
  report.AddNote("disk: snapshot file " + Megabytes(FileSize(s.snapshot_store)) + ", dets file " +
                 Megabytes(FileSize(s.dets_store)) + ", everything under " + s.root +
                 " after the builds " + Megabytes(disk_used));
  const std::string tag[kTargets - 1] = {"snapshot -o ro", "dets -o ro", "snapshot rw", "dets rw"};
  for (int pass = 0; pass < 2; ++pass) {
    std::string mem = std::string("daemon memory after the ") +
                      (pass == 0 ? "pinned" : "unpinned") + " pass (VmHWM / RssAnon):";
    for (size_t d = 0; d < kTargets - 1; ++d) {
      mem += (d ? "; " : " ") + tag[d] + " " + Megabytes(results[pass].vmhwm[d]) + " / " +
             Megabytes(results[pass].rss_anon[d]);
    }
    report.AddNote(mem);
  }

  report.AddFigure(OnceFigure("build " + CountLabel(keys) + " keys + sync: dets", dets_s * 1e3,
                              snapshot_s * 1e3, Unit::kMillis));
  report.AddFigure(OnceFigure("store file, " + CountLabel(keys) + " keys: dets",
                              static_cast<double>(FileSize(s.dets_store)),
                              static_cast<double>(FileSize(s.snapshot_store)), Unit::kBytes));
  report.AddFigure(OnceFigure("daemon VmHWM after the pinned pass [-o ro]: dets",
                              static_cast<double>(results[0].vmhwm[DaemonIndex(kDetsRo)]),
                              static_cast<double>(results[0].vmhwm[DaemonIndex(kSnapRo)]),
                              Unit::kBytes));
  report.AddFigure(OnceFigure("daemon VmHWM after the pinned pass [rw]: dets",
                              static_cast<double>(results[0].vmhwm[DaemonIndex(kDetsRw)]),
                              static_cast<double>(results[0].vmhwm[DaemonIndex(kSnapRw)]),
                              Unit::kBytes));
  AddPassFigures(results[0], "pinned", &report);
  AddPassFigures(results[1], "unpinned", &report);
  report.AddNote("total run time " + Printf("%.0f s", Seconds(start)) +
                 " (builds included); removing the stores and the tmpfs tree follows");
  report.Print(stdout);
  std::fflush(stdout);
  if (!o.json_path.empty()) {
    st = report.WriteJson(o.json_path);
    if (!st.ok()) return fail(st);
  }
  Progress("removing " + s.root + " and " + s.tmpfs_root);
  return 0;
}

}  // namespace keyfs::bench
