// keyfs_bench mount: SPEC §6 "how to measure through the mount". The references are the
// same files on tmpfs, measured in the same interleaved rounds; first with the client and
// both daemons pinned to one CPU (this VM's cross-CPU wake-ups swing every round trip
// 5-10x), then unpinned.
#include "bench_mount.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "daemon.h"
#include "keyfs/store/engine.h"
#include "report.h"
#include "timing.h"

namespace keyfs::bench {
namespace {

constexpr int kKeys = 1000;
constexpr int kValueBytes = 100;

std::string KeyName(int i) {
  char b[32];
  std::snprintf(b, sizeof(b), "k%04d", i);
  return b;
}

uint64_t OpenReadClose(const std::string& dir) {
  char buf[4096];
  for (int i = 0; i < kKeys; ++i) {
    std::string p = dir + "/" + KeyName(i);
    int fd = open(p.c_str(), O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof(buf)) != kValueBytes) std::abort();
    close(fd);
  }
  return kKeys;
}

uint64_t StatAll(const std::string& dir) {
  struct stat st;
  for (int i = 0; i < kKeys; ++i) {
    if (stat((dir + "/" + KeyName(i)).c_str(), &st) != 0) std::abort();
  }
  return kKeys;
}

uint64_t ListBig(const std::string& dir) {
  DIR* d = opendir((dir + "/big").c_str());
  if (d == nullptr) std::abort();
  uint64_t n = 0;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

// Writes (open O_TRUNC, write 100 B, close) for `seconds` from `threads` threads, each
// on its own keys. Returns writes per second.
// Durable rewrites per second by `threads` writers (open O_TRUNC, write, close) of the
// 1,000 keys in turn, or all of them of key 0 (`one_key`), while `readers` threads read
// key 0 over and over.
double WriteRate(const std::string& dir, int threads, double seconds, bool one_key = false,
                 int readers = 0) {
  std::atomic<uint64_t> total{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  const std::string value(kValueBytes, 'w');
  auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const int key = one_key ? 0 : (t * 61 + static_cast<int>(n)) % kKeys;
        std::string p = dir + "/" + KeyName(key);
        int fd = open(p.c_str(), O_WRONLY | O_TRUNC);
        if (fd < 0 || write(fd, value.data(), value.size()) != kValueBytes || close(fd) != 0) {
          std::abort();
        }
        ++n;
      }
      total += n;
    });
  }
  for (int r = 0; r < readers; ++r) {
    ts.emplace_back([&] {
      const std::string p = dir + "/" + KeyName(0);
      char buf[4096];
      while (!stop.load(std::memory_order_relaxed)) {
        int fd = open(p.c_str(), O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf) < 0 || close(fd) != 0) std::abort();
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  return static_cast<double>(total.load()) / Seconds(start);
}

void AddRatio(Report* r, const std::string& metric, const std::vector<double>& keyfs,
              const std::vector<double>& ref, Unit unit, const std::string& target, double bound) {
  Figure f;
  f.metric = metric;
  f.keyfs = Median(keyfs);
  f.unit = unit;
  f.reference = Median(ref);
  f.reference_name = "tmpfs";
  f.ratio = PairedRatio(keyfs, ref);
  f.target = target;
  if (!std::isnan(bound)) f.met = f.ratio <= bound;
  f.samples = static_cast<int>(keyfs.size());
  r->AddFigure(f);
}

}  // namespace

int RunMountBench(const MountBenchOptions& o) {
  const std::string bin = FindKeyfs(o.keyfs_bin);
  const char* tmp = getenv("TMPDIR");
  std::string base = !o.dir.empty() ? o.dir : (tmp && *tmp ? tmp : "/tmp");
  std::string root = base + "/keyfs-mount-bench-XXXXXX";
  if (mkdtemp(root.data()) == nullptr) {
    std::fprintf(stderr, "keyfs_bench: mkdtemp %s: %s\n", root.c_str(), strerror(errno));
    return 1;
  }
  // The reference lives on tmpfs: /dev/shm, or a tmpfs mounted here (root only).
  std::string ref = "/dev/shm/keyfs-mount-bench-ref-" + std::to_string(getpid());
  std::filesystem::create_directories(ref + "/big");
  const std::string store = root + "/store.keyfs", rw = root + "/rw", ro = root + "/ro";
  std::filesystem::create_directories(rw);
  std::filesystem::create_directories(ro);
  {
    OpenOptions oo;
    oo.create = true;
    auto e = OpenStore(store, oo);
    if (!e.ok()) {
      std::fprintf(stderr, "keyfs_bench: %s\n", e.status().ToString().c_str());
      return 1;
    }
    Batch b;
    const std::string value(kValueBytes, 'v');
    for (int i = 0; i < kKeys; ++i) {
      b.Put(KeyName(i), value);
      FILE* f = fopen((ref + "/" + KeyName(i)).c_str(), "w");
      fwrite(value.data(), 1, value.size(), f);
      fclose(f);
    }
    b.Mkdir("big");
    for (int i = 0; i < 10000; ++i) {
      std::string name = "entry-" + std::to_string(i);
      b.Put("big/" + name, "x");
      FILE* f = fopen((ref + "/big/" + name).c_str(), "w");
      fputc('x', f);
      fclose(f);
    }
    Status s = (*e)->Commit(b);
    if (!s.ok()) {
      std::fprintf(stderr, "keyfs_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }

  Report report("keyfs_bench mount: keyfs mounts vs the same files on tmpfs, one run");
  report.AddNote("daemon: " + bin + "; store " + store + "; tmpfs reference " + ref);
  report.AddNote(
      "reads: open + read + close of each of 1,000 keys of 100 B; stat: stat of each "
      "(cached); readdir: a 10,000-entry directory; ratio = median over interleaved rounds "
      "of keyfs/tmpfs within the round");
  const int rounds = o.quick ? 3 : 15;
  int status = 0;
  for (bool pinned : {true, false}) {
    const std::string how = pinned ? " (pinned, CPU 0)" : " (unpinned)";
    const int cpu = pinned ? 0 : -1;
    Daemon drw(bin, store, rw, "", cpu, root + "/rw.log");
    Daemon dro(bin, store, ro, "ro", cpu, root + "/ro.log");
    if (!drw.ok() || !dro.ok()) {
      std::fprintf(stderr, "keyfs_bench: %s\n", (drw.ok() ? dro : drw).error().c_str());
      status = 1;
      break;
    }
    std::optional<CpuPin> pin;  // the client on the daemons' CPU
    if (pinned) pin.emplace(0);
    auto reads = MeasureInterleaved({{"tmpfs", [&] { return OpenReadClose(ref); }},
                                     {"ro", [&] { return OpenReadClose(ro); }},
                                     {"rw", [&] { return OpenReadClose(rw); }}},
                                    rounds);
    AddRatio(&report, "open+read+close, -o ro" + how, reads[1], reads[0], Unit::kNanos,
             pinned ? "<= 1.60x" : "", pinned ? 1.6 : NAN);
    AddRatio(&report, "open+read+close, read-write" + how, reads[2], reads[0], Unit::kNanos,
             pinned ? "<= 6.00x" : "", pinned ? 6.0 : NAN);
    auto stats = MeasureInterleaved({{"tmpfs", [&] { return StatAll(ref); }},
                                     {"ro", [&] { return StatAll(ro); }},
                                     {"rw", [&] { return StatAll(rw); }}},
                                    rounds);
    AddRatio(&report, "stat of a cached key, -o ro" + how, stats[1], stats[0], Unit::kNanos,
             pinned ? "<= 1.10x" : "", pinned ? 1.1 : NAN);
    AddRatio(&report, "stat of a cached key, read-write" + how, stats[2], stats[0], Unit::kNanos,
             pinned ? "<= 1.10x" : "", pinned ? 1.1 : NAN);
    auto lists = MeasureInterleaved({{"tmpfs", [&] { return ListBig(ref); }},
                                     {"ro", [&] { return ListBig(ro); }},
                                     {"rw", [&] { return ListBig(rw); }}},
                                    rounds);
    AddRatio(&report, "readdir, 10,000 entries, -o ro" + how, lists[1], lists[0], Unit::kNanos,
             pinned ? "<= 2.00x" : "", pinned ? 2.0 : NAN);
    AddRatio(&report, "readdir, 10,000 entries, read-write" + how, lists[2], lists[0], Unit::kNanos,
             pinned ? "<= 2.00x" : "", pinned ? 2.0 : NAN);
    pin.reset();
    if (!pinned) {
      // Writes: durable when close returns; many threads, so measured unpinned, on a
      // store of just the 1,000 keys (a commit rewrites the table).
      const std::string wstore = root + "/writes.keyfs", wmnt = root + "/w";
      std::filesystem::create_directories(wmnt);
      {
        OpenOptions oo;
        oo.create = true;
        auto e = OpenStore(wstore, oo);
        Batch b;
        for (int i = 0; i < kKeys; ++i) b.Put(KeyName(i), std::string(kValueBytes, 'v'));
        if (!e.ok() || !(*e)->Commit(b).ok()) {
          std::fprintf(stderr, "keyfs_bench: cannot create %s\n", wstore.c_str());
          status = 1;
          break;
        }
      }
      Daemon dw(bin, wstore, wmnt, "", -1, root + "/w.log");
      if (!dw.ok()) {
        std::fprintf(stderr, "keyfs_bench: %s\n", dw.error().c_str());
        status = 1;
        break;
      }
      const double secs = o.quick ? 1 : 4;
      for (int threads : {1, 16}) {
        double ref_rate = WriteRate(ref, threads, secs / 2);
        double rate = WriteRate(wmnt, threads, secs);
        Figure f;
        f.metric = "writes/s through the mount, " + std::to_string(threads) +
                   (threads == 1 ? " writer" : " writers") + ", 1k keys, durable";
        f.keyfs = rate;
        f.unit = Unit::kPerSecond;
        f.reference = ref_rate;
        f.reference_name = "tmpfs (not durable)";
        f.ratio = rate / ref_rate;
        f.target = threads == 1 ? ">= 1000/s" : ">= 5000/s";
        f.met = rate >= (threads == 1 ? 1000 : 5000);
        report.AddFigure(f);
      }
      // Writers of one key go at the speed of their commits, readers or not: 4 writers
      // rewriting one key while 2 threads read it, against 4 writers of distinct keys
      // with the same readers, interleaved.
      std::vector<double> one, distinct;
      for (int round = 0; round < (o.quick ? 1 : 3); ++round) {
        distinct.push_back(WriteRate(wmnt, 4, secs / 2, false, 2));
        one.push_back(WriteRate(wmnt, 4, secs / 2, true, 2));
      }
      Figure f;
      f.metric = "writes/s, 4 writers of one key + 2 readers of it, durable";
      f.keyfs = Median(one);
      f.unit = Unit::kPerSecond;
      f.reference = Median(distinct);
      f.reference_name = "4 writers of distinct keys";
      f.ratio = PairedRatio(one, distinct);
      f.target = ">= 0.80x";
      f.met = f.ratio >= 0.8;
      f.samples = static_cast<int>(one.size());
      report.AddFigure(f);
    }
  }
  report.Print(stdout);
  if (!o.json_path.empty()) {
    Status s = report.WriteJson(o.json_path);
    if (!s.ok()) std::fprintf(stderr, "keyfs_bench: %s\n", s.ToString().c_str());
  }
  std::error_code ec;
  std::filesystem::remove_all(ref, ec);
  std::filesystem::remove_all(root, ec);
  return status;
}

}  // namespace keyfs::bench
