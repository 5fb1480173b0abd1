// `keyfs_bench dets`: the dets engine against references run in the same process: tinycdb's
// cdb_make for bulk loading and tinycdb's cdb_find for lookups (the CDB design DetsPlus
// follows), and a plain copy of the store file for a sync that changes one key. The memory
// figure runs in a fresh child process so that nothing of the parent counts.
#include "bench_dets.h"

#include <cdb.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"
#include "report.h"
#include "timing.h"
#include "util.h"

namespace keyfs::bench {
namespace {

constexpr size_t kKeySize = 16;
constexpr size_t kValueSize = 100;
constexpr size_t kBatch = 1000;                       // puts per commit when loading
constexpr uint64_t kBufferLimit = uint64_t{8} << 30;  // holds a whole bulk load
constexpr uint64_t kMissBase = uint64_t{1} << 62;     // indices of keys never stored
constexpr uint64_t kRssBase = uint64_t{1} << 61;      // indices of the memory figure's keys

struct Sizes {
  uint64_t bulk;  // entries of the bulk load (and of the lookup store)
  uint64_t copy;  // entries of the store for "one insert + sync"
  uint64_t rss;   // buffered writes of the memory figure
  int bulk_rounds;
  int copy_rounds;
  size_t lookup_keys;  // distinct keys per lookup sample
  int lookup_rounds;
};

Sizes SizesFor(bool quick) {
  if (quick) return {100'000, 50'000, 10'000, 1, 2, 20'000, 2};
  return {10'000'000, 1'500'000, 1'000'000, 2, 5, 1'000'000, 7};
}

uint64_t Mix(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Key i: 16 hex digits of a bijective mix of i, so distinct indices give distinct keys
// (and a valid keyfs key in the root directory).
void MakeKey(uint64_t i, char* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  uint64_t v = Mix(i);
  for (size_t j = 0; j < kKeySize; ++j, v >>= 4) out[j] = kHex[v & 15];
}
std::string Key(uint64_t i) {
  std::string k(kKeySize, '\0');
  MakeKey(i, k.data());
  return k;
}
void MakeValue(uint64_t i, char* out) {
  uint64_t v = ~i;
  for (size_t j = 0; j < kValueSize; j += 8) {
    v = Mix(v);
    std::memcpy(out + j, &v, std::min<size_t>(8, kValueSize - j));
  }
}

// Flushes every dirty page of the system, so one contender's writeback does not land on the
// next one's clock.
void Settle() { ::sync(); }

// Waits until the engine's syncer is idle: after Sync() returns it still frees the replaced
// file (with online discard that takes a while), which must not land on the next clock.
void WaitIdle(const Engine& engine) {
  while (engine.Stats().syncing) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

// ---- stores ----

StatusOr<std::unique_ptr<Engine>> OpenDets(const std::string& path, bool create) {
  OpenOptions o;
  o.create = create;
  o.kind = EngineKind::kDets;
  o.kind_given = true;
  o.sync_interval_s = 0;
  o.buffer_limit_bytes = kBufferLimit;
  auto e = OpenStore(path, o);
  if (!e.ok()) return e.status().WithContext("open " + path);
  return e;
}

// Commits keys [first, first + n) in batches of kBatch puts.
Status LoadDets(Engine& engine, uint64_t first, uint64_t n) {
  char value[kValueSize];
  for (uint64_t i = first; i < first + n;) {
    Batch batch;
    for (size_t j = 0; j < kBatch && i < first + n; ++j, ++i) {
      MakeValue(i, value);
      batch.Put(Key(i), std::string(value, kValueSize));
    }
    KEYFS_RETURN_IF_ERROR(engine.Commit(batch));
  }
  return Status::OK();
}

// cdb_make of keys [0, n) into a new file `path`; *make_s is the cdb_make time, *sync_s the
// fdatasync after it.
Status BuildCdb(const std::string& path, uint64_t n, double* make_s, double* sync_s) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "create " + path);
  const Clock::time_point t0 = Clock::now();
  struct cdb_make cm;
  Status s;
  if (cdb_make_start(&cm, fd) != 0) s = Status::FromErrno(errno, "cdb_make_start");
  char key[kKeySize], value[kValueSize];
  for (uint64_t i = 0; s.ok() && i < n; ++i) {
    MakeKey(i, key);
    MakeValue(i, value);
    if (cdb_make_add(&cm, key, kKeySize, value, kValueSize) != 0) {
      s = Status::FromErrno(errno, "cdb_make_add");
    }
  }
  if (s.ok() && cdb_make_finish(&cm) != 0) s = Status::FromErrno(errno, "cdb_make_finish");
  const Clock::time_point t1 = Clock::now();
  if (s.ok() && ::fdatasync(fd) != 0) s = Status::FromErrno(errno, "fdatasync " + path);
  *make_s = Seconds(t0, t1);
  *sync_s = Seconds(t1);
  ::close(fd);
  return s;
}

// Copies `from` to the new file `to` in 1 MiB pieces and fdatasyncs it.
Status CopyFile(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return Status::FromErrno(errno, "open " + from);
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    ::close(in);
    return Status::FromErrno(errno, "create " + to);
  }
  std::vector<char> buf(1 << 20);
  Status s;
  while (s.ok()) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) s = Status::FromErrno(errno, "read " + from);
    if (n <= 0) break;
    for (ssize_t done = 0; done < n && s.ok();) {
      ssize_t w = ::write(out, buf.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) s = Status::FromErrno(w < 0 ? errno : EIO, "write " + to);
      if (w > 0) done += w;
    }
  }
  if (s.ok() && ::fdatasync(out) != 0) s = Status::FromErrno(errno, "fdatasync " + to);
  ::close(in);
  ::close(out);
  return s;
}

Figure RatioFigure(std::string metric, const std::vector<double>& keyfs,
                   const std::vector<double>& ref, std::string ref_name, Unit unit, double target,
                   bool lower_is_better = true) {
  Figure f;
  f.metric = std::move(metric);
  f.keyfs = Median(keyfs);
  f.unit = unit;
  f.reference = Median(ref);
  f.reference_name = std::move(ref_name);
  f.ratio = PairedRatio(keyfs, ref);
  if (target > 0) {
    f.target = Printf("<= %.2fx", target);
    f.met = lower_is_better ? f.ratio <= target : f.ratio >= target;
  }
  f.samples = static_cast<int>(keyfs.size());
  return f;
}

// ---- lookups ----

struct LookupCount {
  uint64_t found = 0, errors = 0;
};

[[gnu::noinline]] LookupCount GetFromEngine(const Engine& engine,
                                            const std::vector<std::string>& keys) {
  LookupCount c;
  uint64_t sink = 0;
  for (const std::string& k : keys) {
    StatusOr<Record> r = engine.Get(k);
    if (r.ok()) {
      ++c.found;
      sink += static_cast<unsigned char>(r->value[0]);
    } else if (!r.status().IsNotFound()) {
      ++c.errors;
    }
  }
  KeepAlive(sink);
  return c;
}

[[gnu::noinline]] LookupCount GetFromCdb(struct cdb* db, const std::vector<std::string>& keys) {
  LookupCount c;
  uint64_t sink = 0;
  for (const std::string& k : keys) {
    int r = cdb_find(db, k.data(), static_cast<unsigned>(k.size()));
    if (r > 0) {
      ++c.found;
      const void* v = cdb_get(db, cdb_datalen(db), cdb_datapos(db));
      if (v == nullptr) {
        ++c.errors;
      } else {
        sink += *static_cast<const unsigned char*>(v);
      }
    } else if (r < 0) {
      ++c.errors;
    }
  }
  KeepAlive(sink);
  return c;
}

Status MeasureLookups(const Engine& engine, struct cdb* db, const std::vector<std::string>& keys,
                      bool hits, int rounds, const std::string& label, Report* report) {
  const uint64_t expected = hits ? keys.size() : 0;
  Status error;
  auto check = [&](const char* who, LookupCount c) {
    if ((c.found == expected && c.errors == 0) || !error.ok()) return;
    error =
        Status::Corruption(std::string(who) + ": found " + std::to_string(c.found) + ", expected " +
                           std::to_string(expected) + ", " + std::to_string(c.errors) + " errors");
  };
  const std::vector<Contender> contenders = {
      {"dets Get",
       [&] {
         check("dets Get", GetFromEngine(engine, keys));
         return keys.size();
       }},
      {"cdb_find",
       [&] {
         check("cdb_find", GetFromCdb(db, keys));
         return keys.size();
       }},
  };
  const std::vector<std::vector<double>> ns = MeasureInterleaved(contenders, rounds);
  KEYFS_RETURN_IF_ERROR(error);
  report->AddFigure(
      RatioFigure(std::string("lookup ") + (hits ? "hit" : "miss") + ", " + label + " keys", ns[0],
                  ns[1], "tinycdb cdb_find", Unit::kNanos, hits ? 1.2 : 0.5));
  return Status::OK();
}

// ---- memory ----

// Runs `keyfs_bench dets-rss STORE N` and parses its "buffer peak" line.
Status RunRssChild(const std::string& store, uint64_t n, uint64_t* buffer, uint64_t* peak,
                   uint64_t* peak_anon) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  const std::string count = std::to_string(n);
  const pid_t pid = ::fork();
  if (pid < 0) return Status::FromErrno(errno, "fork");
  if (pid == 0) {
    ::dup2(pipefd[1], STDOUT_FILENO);
    const char* argv[] = {"keyfs_bench", "dets-rss", store.c_str(), count.c_str(), nullptr};
    ::execv("/proc/self/exe", const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[256];
  ssize_t r;
  while ((r = ::read(pipefd[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(r));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::IOError("dets-rss child failed (status " + std::to_string(status) + ")");
  }
  unsigned long long b = 0, p = 0, a = 0;
  if (std::sscanf(out.c_str(), "%llu %llu %llu", &b, &p, &a) != 3) {
    return Status::IOError("dets-rss child printed '" + out + "'");
  }
  *buffer = b;
  *peak = p;
  *peak_anon = a;
  return Status::OK();
}

}  // namespace

int RunDetsRssChild(const std::string& store, uint64_t n) {
  auto engine = OpenDets(store, false);
  if (!engine.ok()) {
    std::fprintf(stderr, "keyfs_bench dets-rss: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  Status s = LoadDets(**engine, kRssBase, n);
  uint64_t buffer = 0;
  for (const auto& [k, v] : (*engine)->Stats().extra) {
    if (k == "buffered bytes") buffer = std::strtoull(v.c_str(), nullptr, 10);
  }
  // From here on VmHWM is the peak of the sync (writing "5" resets it to the current RSS).
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> peak_anon{ProcStatusBytes(0, "RssAnon")};
  std::thread sampler([&] {
    while (!stop.load()) {
      uint64_t a = ProcStatusBytes(0, "RssAnon");
      if (a > peak_anon.load()) peak_anon.store(a);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  if (s.ok()) s = (*engine)->Sync();
  stop.store(true);
  sampler.join();
  const uint64_t peak = ProcStatusBytes(0, "VmHWM");
  if (!s.ok()) {
    std::fprintf(stderr, "keyfs_bench dets-rss: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("%llu %llu %llu\n", static_cast<unsigned long long>(buffer),
              static_cast<unsigned long long>(peak),
              static_cast<unsigned long long>(peak_anon.load()));
  return 0;
}

int RunDetsBench(const DetsBenchOptions& options) {
  const Sizes sizes = SizesFor(options.quick);
  TempDir dir;
  Status s = dir.Create(options.dir);
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "keyfs_bench: %s\n", st.ToString().c_str());
    return 1;
  };
  if (!s.ok()) return fail(s);
  Report report("keyfs_bench dets" + std::string(options.quick ? " --quick" : ""));
  report.AddNote("CPU: " + CpuModel() + ", " + std::to_string(std::thread::hardware_concurrency()) +
                 " threads; stores in " + dir.path() + " (" + FilesystemType(dir.path()) + ")");
  report.AddNote("keys: " + std::to_string(kKeySize) + " B (random hex, one directory), values: " +
                 std::to_string(kValueSize) + " B; dets commits batches of " +
                 std::to_string(kBatch) + " puts; buffer limit " + Megabytes(kBufferLimit));
  report.AddNote(
      "every time includes making the result durable: dets Sync() (fdatasync, "
      "rename, directory fsync), cdb_make and the copy followed by fdatasync; "
      "sync(2) runs before each timed step so no writeback debt carries over");

  // 1. Bulk load: dets inserts + Sync against cdb_make + fdatasync, alternating.
  const std::string bulk_label = CountLabel(sizes.bulk);
  std::vector<double> dets_s, cdb_s, cdb_make_only_s;
  std::unique_ptr<Engine> big;
  std::string big_path, cdb_path;
  uint64_t dets_bytes = 0, cdb_bytes = 0;
  for (int r = 0; r < sizes.bulk_rounds; ++r) {
    const bool last = r + 1 == sizes.bulk_rounds;
    for (int turn = 0; turn < 2; ++turn) {
      if ((turn + r) % 2 == 0) {
        const std::string path = dir.File("bulk-" + std::to_string(r) + ".dets");
        Progress("bulk " + bulk_label + ": dets, round " + std::to_string(r + 1));
        Settle();
        const Clock::time_point t0 = Clock::now();
        auto e = OpenDets(path, true);
        if (!e.ok()) return fail(e.status());
        s = LoadDets(**e, 0, sizes.bulk);
        if (s.ok()) s = (*e)->Sync();
        const double secs = Seconds(t0);
        if (!s.ok()) return fail(s);
        dets_s.push_back(secs);
        dets_bytes = FileSize(path);
        if (last) {
          big = std::move(*e);
          big_path = path;
        } else {
          e->reset();
          ::unlink(path.c_str());
        }
      } else {
        const std::string path = dir.File("bulk-" + std::to_string(r) + ".cdb");
        Progress("bulk " + bulk_label + ": tinycdb, round " + std::to_string(r + 1));
        Settle();
        double make_s = 0, sync_s = 0;
        s = BuildCdb(path, sizes.bulk, &make_s, &sync_s);
        if (!s.ok()) return fail(s);
        cdb_s.push_back(make_s + sync_s);
        cdb_make_only_s.push_back(make_s);
        cdb_bytes = FileSize(path);
        if (last) {
          cdb_path = path;
        } else {
          ::unlink(path.c_str());
        }
      }
    }
  }
  for (double& v : dets_s) v *= 1e3;
  for (double& v : cdb_s) v *= 1e3;
  for (double& v : cdb_make_only_s) v *= 1e3;
  report.AddFigure(RatioFigure("bulk load " + bulk_label + " + sync", dets_s, cdb_s,
                               "cdb_make + fdatasync", Unit::kMillis, 1.5));
  report.AddFigure(RatioFigure("bulk load " + bulk_label + " + sync", dets_s, cdb_make_only_s,
                               "cdb_make alone", Unit::kMillis, 0));
  report.AddNote("file sizes: dets " + Megabytes(dets_bytes) + ", tinycdb " + Megabytes(cdb_bytes));

  // 2. Lookups on the bulk store, warm page cache, random keys.
  {
    Progress("lookups on " + bulk_label + " keys");
    const int fd = ::open(cdb_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(Status::FromErrno(errno, "open " + cdb_path));
    struct cdb db;
    if (cdb_init(&db, fd) != 0) return fail(Status::IOError("cdb_init " + cdb_path));
    std::vector<std::string> hits, misses;
    hits.reserve(sizes.lookup_keys);
    misses.reserve(sizes.lookup_keys);
    for (size_t i = 0; i < sizes.lookup_keys; ++i) {
      hits.push_back(Key(Mix(i * 7 + 3) % sizes.bulk));
      misses.push_back(Key(kMissBase + i));
    }
    s = MeasureLookups(*big, &db, hits, true, sizes.lookup_rounds, bulk_label, &report);
    if (s.ok())
      s = MeasureLookups(*big, &db, misses, false, sizes.lookup_rounds, bulk_label, &report);
    cdb_free(&db);
    ::close(fd);
    if (!s.ok()) return fail(s);
    ::unlink(cdb_path.c_str());
  }
  big.reset();  // releases the writer lock for the memory figure's child

  // 3. Memory: a sync of the bulk store with buffered writes, in a fresh process.
  {
    Progress("peak RSS: sync of " + bulk_label + " + " + CountLabel(sizes.rss) +
             " buffered writes (child process)");
    uint64_t buffer = 0, peak = 0, peak_anon = 0;
    s = RunRssChild(big_path, sizes.rss, &buffer, &peak, &peak_anon);
    if (!s.ok()) return fail(s);
    Figure f;
    f.metric = "peak RSS, sync of " + bulk_label + " + " + CountLabel(sizes.rss) + " buffered";
    f.keyfs = static_cast<double>(peak);
    f.unit = Unit::kBytes;
    f.reference = static_cast<double>(buffer);
    f.reference_name = "write buffer";
    f.ratio = static_cast<double>(peak) / static_cast<double>(buffer);
    f.target = "<= buffer + 128 MiB";
    f.met = peak <= buffer + (uint64_t{128} << 20);
    f.samples = 1;
    report.AddFigure(std::move(f));
    report.AddNote("memory: buffer " + Megabytes(buffer) + ", peak RSS during the sync " +
                   Megabytes(peak) + " (anonymous memory alone: " + Megabytes(peak_anon) +
                   "; the rest is mapped pages of the store file)");
    ::unlink(big_path.c_str());
  }

  // 4. One insert + sync on a mid-size store against copying its file.
  {
    const std::string label = CountLabel(sizes.copy);
    const std::string path = dir.File("copy.dets");
    Progress("one insert + sync on " + label + " keys vs copying the file");
    auto e = OpenDets(path, true);
    if (!e.ok()) return fail(e.status());
    s = LoadDets(**e, 0, sizes.copy);
    if (s.ok()) s = (*e)->Sync();
    if (!s.ok()) return fail(s);
    std::vector<double> sync_ms, copy_ms;
    char value[kValueSize];
    for (int r = 0; r < sizes.copy_rounds; ++r) {
      for (int turn = 0; turn < 2; ++turn) {
        Settle();
        const Clock::time_point t0 = Clock::now();
        if ((turn + r) % 2 == 0) {
          MakeValue(r, value);
          s = (*e)->Commit(Batch().Put(Key(kMissBase + 1000 + r), std::string(value, kValueSize)));
          if (s.ok()) s = (*e)->Sync();
          sync_ms.push_back(Seconds(t0) * 1e3);
          WaitIdle(**e);
        } else {
          const std::string copy = dir.File("copy.bin");
          s = CopyFile(path, copy);
          copy_ms.push_back(Seconds(t0) * 1e3);
          ::unlink(copy.c_str());
        }
        if (!s.ok()) return fail(s);
      }
    }
    report.AddFigure(RatioFigure(label + " store + 1 insert + sync", sync_ms, copy_ms,
                                 "copy + fdatasync", Unit::kMillis, 2.0));
    report.AddNote(label + " store file: " + Megabytes(FileSize(path)));
  }

  report.Print(stdout);
  if (!options.json_path.empty()) {
    s = report.WriteJson(options.json_path);
    if (!s.ok()) return fail(s);
  }
  return 0;
}

}  // namespace keyfs::bench
