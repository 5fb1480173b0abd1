// `keyfs_bench snapshot`: the snapshot engine measured against references run in the same
// process and the same interleaved rounds: lookups against std::unordered_map and
// absl::flat_hash_map holding the same keys, lookups through the engine against the table's
// own, durable commits against the raw cost of the same durable write on the same disk, and
// opening a large store against a small one.
#include "bench_snapshot.h"

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "keyfs/store/status.h"
#include "report.h"
#include "timing.h"
#include "util.h"

namespace keyfs::bench {
namespace {

constexpr size_t kValueSize = 32;
constexpr int kWriters = 16;
// What ModuleStore, the store keyfs replaces, sustained: its historical figure, not
// measured here.
constexpr double kModuleStoreLow = 15, kModuleStoreHigh = 30;

// How much work one run does; --quick shrinks it to a smoke test.
struct Sizes {
  size_t small_keys;  // the "1k" store: lookups and commit throughput
  size_t big_keys;    // the "1M" store: lookups and commit latency
  size_t mid_keys;    // a third store for commit latency only; 0: none
  int small_passes;   // passes over the small store's keys per timed sample
  int lookup_rounds;
  int commit_rounds;       // rounds of the small store's commit phase
  double commit_seconds;   // each contender's share of one commit round
  int mid_latency_rounds;  // commits (and reference writes) timed on the mid store
  int big_latency_rounds;
  int open_rounds;
  size_t huge_keys;      // 0: no 10M-key store
  size_t import_files;   // files in the tree keyfsctl import is timed on
  double merge_seconds;  // the sustained load that the merges are measured under
};

Sizes SizesFor(bool quick) {
  if (quick) return {1000, 100'000, 0, 100, 3, 3, 0.1, 0, 50, 5, 0, 2000, 1.0};
  return {1000, 1'000'000, 100'000, 1000, 11, 15, 0.25, 21, 1001, 11, 10'000'000, 100'000, 8.0};
}

// splitmix64: fast, seeded, the same keys on every run.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  uint64_t Uniform(uint64_t n) { return Next() % n; }

 private:
  uint64_t state_;
};

std::string RandomHex(Rng& rng, std::string prefix, size_t len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = std::move(prefix);
  s.reserve(len);
  uint64_t bits = 0;
  int left = 0;
  while (s.size() < len) {
    if (left == 0) {
      bits = rng.Next();
      left = 16;
    }
    s.push_back(kHex[bits & 15]);
    bits >>= 4;
    --left;
  }
  return s;
}

// A flat name "k/<hex>" of 16 to 24 bytes: longer than std::string's inline buffer, as
// real config keys are.
std::string RandomKey(Rng& rng) { return RandomHex(rng, "k/", 16 + rng.Uniform(9)); }
std::string RandomValue(Rng& rng) { return RandomHex(rng, "", kValueSize); }

// The keys of one store and the orders they are looked up in.
struct Workload {
  std::vector<std::string> keys;    // in the store, in generation order
  std::vector<std::string> values;  // values[i] belongs to keys[i]
  // keys in a random order, each copy allocated in that order so reading the key bytes
  // costs every contender the same.
  std::vector<std::string> hits;
  // distinct random keys of the same shape that are not in the store, in random order.
  std::vector<std::string> misses;
};

Workload MakeWorkload(size_t n, size_t misses, uint64_t seed) {
  Rng rng(seed);
  Workload w;
  absl::flat_hash_set<std::string> seen;
  seen.reserve(n + misses);
  w.keys.reserve(n);
  w.values.reserve(n);
  while (w.keys.size() < n) {
    std::string key = RandomKey(rng);
    if (!seen.insert(key).second) continue;
    w.keys.push_back(std::move(key));
    w.values.push_back(RandomValue(rng));
  }
  w.misses.reserve(misses);
  while (w.misses.size() < misses) {
    std::string key = RandomKey(rng);
    if (seen.insert(key).second) w.misses.push_back(std::move(key));
  }
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed ^ 0x5eed));
  w.hits.reserve(n);
  for (size_t i : order) w.hits.push_back(w.keys[i]);
  return w;
}

// The references for lookups, filled with the store's keys and values.
struct Maps {
  std::unordered_map<std::string, std::string> unordered;
  absl::flat_hash_map<std::string, std::string> flat;

  explicit Maps(const Workload& w) {
    for (size_t i = 0; i < w.keys.size(); ++i) {
      unordered.emplace(w.keys[i], w.values[i]);
      flat.emplace(w.keys[i], w.values[i]);
    }
  }
};

// ---- stores ----

// Creates the store at `path` holding the workload, written by ONE batch commit (the
// directory "k" and a Put per key). *seconds receives the commit's duration.
StatusOr<std::unique_ptr<Engine>> BuildStore(const std::string& path, const Workload& w,
                                             double* seconds) {
  OpenOptions options;
  options.create = true;
  options.kind = EngineKind::kSnapshot;
  options.kind_given = true;
  StatusOr<std::unique_ptr<Engine>> engine = OpenStore(path, options);
  if (!engine.ok()) return engine.status().WithContext("create " + path);
  Batch batch;
  batch.Mkdir("k");
  for (size_t i = 0; i < w.keys.size(); ++i) batch.Put(w.keys[i], w.values[i]);
  const Clock::time_point start = Clock::now();
  Status s = (*engine)->Commit(batch);
  *seconds = Seconds(start);
  if (!s.ok()) return s.WithContext("commit of " + std::to_string(batch.size()) + " mutations");
  return std::move(engine).value();
}

StatusOr<std::unique_ptr<Engine>> ReopenStore(const std::string& path) {
  StatusOr<std::unique_ptr<Engine>> engine = OpenStore(path, OpenOptions{});
  if (!engine.ok()) return engine.status().WithContext("open " + path);
  return engine;
}

// The store's table with every commit merged into it (the commit log folded in first).
StatusOr<TableRef> CurrentTable(Engine& engine) {
  auto* snapshot = dynamic_cast<SnapshotEngine*>(&engine);
  if (snapshot == nullptr) {
    return Status::InvalidArgument("engine " + std::string(engine.name()) +
                                   " is not a SnapshotEngine");
  }
  KEYFS_RETURN_IF_ERROR(snapshot->Merge());
  return snapshot->Current();
}

// ---- lookups ----

struct LookupCount {
  uint64_t found = 0;
  uint64_t errors = 0;  // neither found nor NotFound
};

// The measured loops. Out of line so each is compiled on its own, as a caller's would be.
[[gnu::noinline]] LookupCount FindInTable(const SnapshotTable& table,
                                          const std::vector<std::string>& keys, int passes) {
  LookupCount count;
  uint64_t sink = 0;
  EntryRef ref;
  for (int p = 0; p < passes; ++p) {
    for (const std::string& key : keys) {
      Status s = table.Find(key, &ref);
      if (s.ok()) {
        ++count.found;
        sink += ref.value.size();
      } else if (!s.IsNotFound()) {
        ++count.errors;
      }
    }
  }
  KeepAlive(sink);
  return count;
}

template <class Map>
[[gnu::noinline]] LookupCount FindInMap(const Map& map, const std::vector<std::string>& keys,
                                        int passes) {
  LookupCount count;
  uint64_t sink = 0;
  for (int p = 0; p < passes; ++p) {
    for (const std::string& key : keys) {
      auto it = map.find(key);
      if (it != map.end()) {
        ++count.found;
        sink += it->second.size();
      }
    }
  }
  KeepAlive(sink);
  return count;
}

[[gnu::noinline]] LookupCount GetFromEngine(const Engine& engine,
                                            const std::vector<std::string>& keys, int passes) {
  LookupCount count;
  uint64_t sink = 0;
  for (int p = 0; p < passes; ++p) {
    for (const std::string& key : keys) {
      StatusOr<Record> r = engine.Get(key);
      if (r.ok()) {
        ++count.found;
        sink += r->value.size();
      } else if (!r.status().IsNotFound()) {
        ++count.errors;
      }
    }
  }
  KeepAlive(sink);
  return count;
}

// Engine::Get against SnapshotTable::Find on the table the engine serves, in interleaved
// rounds: what a lookup through the engine adds (the key check, taking the current table,
// the Record's reference to it). Every key must be found. Informational: no target.
Status MeasureEngineGets(const std::string& metric, const Engine& engine,
                         const SnapshotTable& table, const std::vector<std::string>& keys,
                         int passes, int rounds, Report* report) {
  const uint64_t ops = keys.size() * static_cast<uint64_t>(passes);
  Status error;
  auto check = [&](const char* who, LookupCount c) {
    if ((c.found == ops && c.errors == 0) || !error.ok()) return;
    error =
        Status::Corruption(std::string(who) + ": found " + std::to_string(c.found) + " of " +
                           std::to_string(ops) + " keys; " + std::to_string(c.errors) + " errors");
  };
  const std::vector<Contender> contenders = {
      {"Engine::Get",
       [&] {
         check("Engine::Get", GetFromEngine(engine, keys, passes));
         return ops;
       }},
      {"SnapshotTable::Find",
       [&] {
         check("SnapshotTable::Find", FindInTable(table, keys, passes));
         return ops;
       }},
  };
  const std::vector<std::vector<double>> ns = MeasureInterleaved(contenders, rounds);
  KEYFS_RETURN_IF_ERROR(error);
  Figure f;
  f.metric = metric;
  f.keyfs = Median(ns[0]);
  f.unit = Unit::kNanos;
  f.reference = Median(ns[1]);
  f.reference_name = "SnapshotTable::Find";
  f.ratio = PairedRatio(ns[0], ns[1]);
  f.samples = rounds;
  report->AddFigure(std::move(f));
  return Status::OK();
}

// Looks `keys` up `passes` times per sample in the table and in both maps, in interleaved
// rounds, and adds two figures: against unordered_map (the target) and flat_hash_map.
// Every contender must find every key (hits) or none (misses).
Status MeasureLookups(const std::string& metric, const SnapshotTable& table, const Maps& maps,
                      const std::vector<std::string>& keys, bool hits, int passes, int rounds,
                      double target, Report* report) {
  const uint64_t ops = keys.size() * static_cast<uint64_t>(passes);
  const uint64_t expected = hits ? ops : 0;
  Status error;
  auto check = [&](const char* who, LookupCount c) {
    if ((c.found == expected && c.errors == 0) || !error.ok()) return;
    error = Status::Corruption(std::string(who) + ": found " + std::to_string(c.found) + " of " +
                               std::to_string(ops) + (hits ? " present" : " absent") +
                               " keys, expected " + std::to_string(expected) + "; " +
                               std::to_string(c.errors) + " errors");
  };
  const std::vector<Contender> contenders = {
      {"SnapshotTable::Find",
       [&] {
         check("SnapshotTable::Find", FindInTable(table, keys, passes));
         return ops;
       }},
      {"unordered_map",
       [&] {
         check("unordered_map", FindInMap(maps.unordered, keys, passes));
         return ops;
       }},
      {"flat_hash_map",
       [&] {
         check("flat_hash_map", FindInMap(maps.flat, keys, passes));
         return ops;
       }},
  };
  const std::vector<std::vector<double>> ns = MeasureInterleaved(contenders, rounds);
  KEYFS_RETURN_IF_ERROR(error);

  const double ratio = PairedRatio(ns[0], ns[1]);
  char target_text[32];
  std::snprintf(target_text, sizeof(target_text), "<= %.2fx", target);
  {
    Figure f;
    f.metric = metric;
    f.keyfs = Median(ns[0]);
    f.unit = Unit::kNanos;
    f.reference = Median(ns[1]);
    f.reference_name = "unordered_map";
    f.ratio = ratio;
    f.target = target_text;
    f.met = ratio <= target;
    f.samples = rounds;
    report->AddFigure(std::move(f));
  }
  {
    Figure f;
    f.metric = metric;
    f.keyfs = Median(ns[0]);
    f.unit = Unit::kNanos;
    f.reference = Median(ns[2]);
    f.reference_name = "flat_hash_map";
    f.ratio = PairedRatio(ns[0], ns[2]);
    f.samples = rounds;
    report->AddFigure(std::move(f));
  }
  return Status::OK();
}

// ---- commits ----

// The raw cost, on this disk, of publishing a file of the store's size the way a commit
// publishes its table: a new file (O_EXCL) written in 1 MiB pieces, fdatasync, rename over
// the previous one, fsync of the directory, in the store's directory. The engine keeps its
// old table mapped until it retires it after answering, so freeing the old file's blocks
// (ext4 with online discard here: milliseconds) is not in its commit latency; likewise the
// reference holds the replaced file open through the publish and frees it after. Its
// latency is the publish alone; its rate (publish + free) is the cycle of one durable write.
class DurableWriteReference {
 public:
  DurableWriteReference(const TempDir& dir, uint64_t size)
      : dir_(dir.path()),
        tmp_path_(dir.File("reference.tmp")),
        path_(dir.File("reference.dat")),
        size_(size),
        piece_(std::min<uint64_t>(size, uint64_t{1} << 20), 'r') {}
  DurableWriteReference(const DurableWriteReference&) = delete;
  DurableWriteReference& operator=(const DurableWriteReference&) = delete;
  ~DurableWriteReference() {
    if (held_fd_ >= 0) ::close(held_fd_);
    ::unlink(tmp_path_.c_str());
    ::unlink(path_.c_str());
  }

  // One durable publish of size() bytes, then the free of the file it replaced.
  // *publish_ms receives the duration of the publish alone.
  Status Write(double* publish_ms) {
    const Clock::time_point start = Clock::now();
    const int fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno(errno, "create " + tmp_path_);
    Status s = WriteAll(fd);
    if (s.ok() && ::fdatasync(fd) != 0) s = Status::FromErrno(errno, "fdatasync " + tmp_path_);
    if (s.ok() && ::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
      s = Status::FromErrno(errno, "rename " + tmp_path_);
    }
    if (!s.ok()) {
      ::close(fd);
      ::unlink(tmp_path_.c_str());
      return s;
    }
    const int dir_fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) s = Status::FromErrno(errno, "open " + dir_);
    if (dir_fd >= 0 && ::fsync(dir_fd) != 0) s = Status::FromErrno(errno, "fsync " + dir_);
    if (dir_fd >= 0) ::close(dir_fd);
    *publish_ms = Seconds(start) * 1e3;
    // Retire the replaced file: its last reference goes, ext4 frees its blocks.
    if (held_fd_ >= 0) ::close(held_fd_);
    held_fd_ = fd;
    return s;
  }

 private:
  Status WriteAll(int fd) {
    uint64_t off = 0;
    while (off < size_) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(piece_.size(), size_ - off));
      const ssize_t n = ::pwrite(fd, piece_.data(), len, static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::FromErrno(n < 0 ? errno : EIO, "write " + tmp_path_);
      off += static_cast<uint64_t>(n);
    }
    return Status::OK();
  }

  std::string dir_, tmp_path_, path_;
  uint64_t size_;
  std::string piece_;
  int held_fd_ = -1;  // the file last published, open until the next Write replaces it
};

// Rate and per-operation latencies of one timed stretch.
struct Stretch {
  double per_second = 0;
  std::vector<double> latency_ms;
};

// Repeats `op` for at least `seconds` (and at least 3 times). op(&ms) does one operation
// and reports its latency in ms.
template <class Op>
Status TimeStretch(double seconds, Op op, Stretch* out) {
  const Clock::time_point start = Clock::now();
  uint64_t done = 0;
  while (done < 3 || Seconds(start) < seconds) {
    double ms = 0;
    KEYFS_RETURN_IF_ERROR(op(&ms));
    out->latency_ms.push_back(ms);
    ++done;
  }
  out->per_second = static_cast<double>(done) / Seconds(start);
  return Status::OK();
}

// One one-key Put batch overwriting a random key of the store; *ms receives its latency.
Status CommitOne(Engine& engine, const std::vector<std::string>& keys, Rng& rng, double* ms) {
  Batch batch;
  batch.Put(keys[rng.Uniform(keys.size())], RandomValue(rng));
  const Clock::time_point start = Clock::now();
  Status s = engine.Commit(batch);
  *ms = Seconds(start) * 1e3;
  return s;
}

// One writer committing one-key Put batches that overwrite random keys of the store.
Status SerialCommits(Engine& engine, const std::vector<std::string>& keys, Rng& rng, double seconds,
                     Stretch* out) {
  return TimeStretch(
      seconds, [&](double* ms) { return CommitOne(engine, keys, rng, ms); }, out);
}

// `writers` threads, each overwriting its own keys (keys[i] with i % writers == thread)
// with one-key batches, for `seconds`. *per_second receives the total commits per second.
Status ConcurrentCommits(Engine& engine, const std::vector<std::string>& keys, int writers,
                         double seconds, double* per_second) {
  std::atomic<bool> stop{false};
  std::latch ready(writers + 1);
  std::vector<uint64_t> commits(static_cast<size_t>(writers), 0);
  std::mutex mu;
  Status first_error;  // guarded by mu
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(writers));
  for (int t = 0; t < writers; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(0x7700 + static_cast<uint64_t>(t));
      std::vector<const std::string*> own;
      for (size_t i = static_cast<size_t>(t); i < keys.size(); i += static_cast<size_t>(writers)) {
        own.push_back(&keys[i]);
      }
      ready.arrive_and_wait();
      for (size_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        Batch batch;
        batch.Put(*own[i % own.size()], RandomValue(rng));
        Status s = engine.Commit(batch);
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.ok()) first_error = s.WithContext("writer " + std::to_string(t));
          return;
        }
        ++commits[static_cast<size_t>(t)];
      }
    });
  }
  ready.arrive_and_wait();
  const Clock::time_point start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (std::thread& thread : threads) thread.join();
  const double elapsed = Seconds(start);
  KEYFS_RETURN_IF_ERROR(first_error);
  uint64_t total = 0;
  for (uint64_t c : commits) total += c;
  *per_second = static_cast<double>(total) / elapsed;
  return Status::OK();
}

void AddLatencyFigures(const std::string& label, const std::vector<double>& keyfs_ms,
                       const std::vector<double>& raw_ms, Report* report) {
  for (double p : {50.0, 99.0}) {
    const double k = p == 50 ? Median(keyfs_ms) : Percentile(keyfs_ms, p);
    const double r = p == 50 ? Median(raw_ms) : Percentile(raw_ms, p);
    Figure f;
    f.metric = std::string("commit latency ") + (p == 50 ? "p50" : "p99") + ", 1 key into " +
               label + " keys";
    f.keyfs = k;
    f.unit = Unit::kMillis;
    f.reference = r;
    f.reference_name = "raw publish";
    f.ratio = k / r;
    f.samples = static_cast<int>(keyfs_ms.size());
    report->AddFigure(std::move(f));
  }
}

// Commit throughput on the small store, one writer and kWriters writers, against the raw
// durable write of a file of its size; the three take turns in every round.
Status MeasureCommitThroughput(Engine& engine, const Workload& w, const TempDir& dir,
                               const Sizes& sizes, Report* report) {
  const std::string label = CountLabel(w.keys.size());
  DurableWriteReference reference(dir, engine.Stats().file_bytes);
  Rng rng(0xc0ffee);
  std::vector<double> serial_rate, raw_rate, concurrent_rate;
  std::vector<double> serial_ms, raw_ms;
  for (int r = 0; r < sizes.commit_rounds; ++r) {
    for (int i = 0; i < 3; ++i) {
      switch ((i + r) % 3) {
        case 0: {
          Stretch s;
          KEYFS_RETURN_IF_ERROR(SerialCommits(engine, w.keys, rng, sizes.commit_seconds, &s));
          serial_rate.push_back(s.per_second);
          serial_ms.insert(serial_ms.end(), s.latency_ms.begin(), s.latency_ms.end());
          break;
        }
        case 1: {
          Stretch s;
          KEYFS_RETURN_IF_ERROR(TimeStretch(
              sizes.commit_seconds, [&](double* ms) { return reference.Write(ms); }, &s));
          raw_rate.push_back(s.per_second);
          raw_ms.insert(raw_ms.end(), s.latency_ms.begin(), s.latency_ms.end());
          break;
        }
        case 2: {
          double rate = 0;
          KEYFS_RETURN_IF_ERROR(
              ConcurrentCommits(engine, w.keys, kWriters, sizes.commit_seconds, &rate));
          concurrent_rate.push_back(rate);
          break;
        }
      }
    }
  }
  const double serial = Median(serial_rate);
  const double concurrent = Median(concurrent_rate);
  report->AddNote("commits: on the " + label + "-key store's file, a raw publish takes " +
                  Printf("%.2f ms", Median(raw_ms)) + " and publish+free cycles at " +
                  Printf("%.0f/s", Median(raw_rate)) + "; " + std::to_string(kWriters) +
                  " writers in groups of at most " + std::to_string(kWriters) +
                  " batches per durable write would reach " +
                  Printf("%.0f/s", kWriters * Median(raw_rate)));
  {
    Figure f;
    f.metric = "commits/s, 1 writer, 1-key batches, " + label + " keys";
    f.keyfs = serial;
    f.unit = Unit::kPerSecond;
    f.reference = Median(raw_rate);
    f.reference_name = "raw publish+free";
    f.ratio = PairedRatio(serial_rate, raw_rate);
    f.target = ">= 1000/s";
    f.met = serial >= 1000;
    f.samples = sizes.commit_rounds;
    report->AddFigure(std::move(f));
  }
  {
    Figure f;
    f.metric =
        "writes/s, " + std::to_string(kWriters) + " writers, 1-key batches, " + label + " keys";
    f.keyfs = concurrent;
    f.unit = Unit::kPerSecond;
    f.reference = Median(raw_rate);
    f.reference_name = "raw publish+free";
    f.ratio = PairedRatio(concurrent_rate, raw_rate);
    f.target = ">= 10000/s";
    f.met = concurrent >= 10000;
    f.samples = sizes.commit_rounds;
    report->AddFigure(std::move(f));
  }
  char historical[32];
  std::snprintf(historical, sizeof(historical), "%.0f-%.0f/s", kModuleStoreLow, kModuleStoreHigh);
  {
    Figure f;
    f.metric = "commits/s, 1 writer (ratio vs ModuleStore's 30/s)";
    f.keyfs = serial;
    f.unit = Unit::kPerSecond;
    f.reference = kModuleStoreHigh;
    f.reference_name = "ModuleStore (historical)";
    f.reference_text = historical;
    f.ratio = serial / kModuleStoreHigh;
    f.samples = sizes.commit_rounds;
    report->AddFigure(std::move(f));
  }
  AddLatencyFigures(label, serial_ms, raw_ms, report);
  return Status::OK();
}

// Latency of one-key commits into `engine`'s store, alternating with the raw durable write
// of a file of its size (at most 11 rounds: each costs a store-sized write). With `samples`,
// first `rounds` commits back to back, whose latencies it receives.
Status MeasureCommitLatency(Engine& engine, const std::vector<std::string>& keys,
                            const TempDir& dir, int rounds, Report* report,
                            std::vector<double>* samples = nullptr) {
  DurableWriteReference reference(dir, engine.Stats().file_bytes);
  Rng rng(0xbeef + keys.size());
  if (samples != nullptr) {
    // Back to back, before any store-sized reference write: its writeback and the freeing
    // of its blocks would slow the commits that follow by what the store's size costs.
    samples->clear();
    for (int r = 0; r < rounds; ++r) {
      double ms = 0;
      KEYFS_RETURN_IF_ERROR(CommitOne(engine, keys, rng, &ms));
      samples->push_back(ms);
    }
  }
  std::vector<double> keyfs_ms, raw_ms;
  for (int r = 0; r < std::min(rounds, 11); ++r) {
    for (int i = 0; i < 2; ++i) {
      double ms = 0;
      if ((i + r) % 2 == 0) {
        KEYFS_RETURN_IF_ERROR(CommitOne(engine, keys, rng, &ms));
        keyfs_ms.push_back(ms);
      } else {
        KEYFS_RETURN_IF_ERROR(reference.Write(&ms));
        raw_ms.push_back(ms);
      }
    }
  }
  AddLatencyFigures(CountLabel(keys.size()), keyfs_ms, raw_ms, report);
  return Status::OK();
}

// ---- engines at scale: the commit log, its merges, bulk loads ----

// A 1-key commit's latency into a big store against the same into the small one: a commit
// should cost what it changes, not what the store holds.
void AddScalingFigures(const std::string& label, const std::vector<double>& big_ms,
                       const std::string& small_label, const std::vector<double>& small_ms,
                       Report* report) {
  for (double p : {50.0, 99.0}) {
    Figure f;
    f.metric = std::string("commit ") + (p == 50 ? "p50" : "p99") + ", 1 key into " + label +
               " keys vs into " + small_label;
    f.keyfs = p == 50 ? Median(big_ms) : Percentile(big_ms, p);
    f.unit = Unit::kMillis;
    f.reference = p == 50 ? Median(small_ms) : Percentile(small_ms, p);
    f.reference_name = "same into " + small_label + " keys";
    f.ratio = f.keyfs / f.reference;
    f.target = p == 50 ? "<= 2.00x" : "<= 3.00x";
    f.met = f.ratio <= (p == 50 ? 2.0 : 3.0);
    f.samples = static_cast<int>(big_ms.size());
    report->AddFigure(std::move(f));
  }
}

[[gnu::noinline]] uint64_t MissInEngine(const Engine& engine, const std::vector<std::string>& keys,
                                        LookupCount* count) {
  uint64_t sink = 0;
  for (const std::string& key : keys) {
    StatusOr<Record> r = engine.Get(key);
    if (r.ok()) {
      ++count->found;
    } else if (!r.status().IsNotFound()) {
      ++count->errors;
    }
    sink += r.ok();
  }
  KeepAlive(sink);
  return keys.size();
}

// Engine::Get hits and misses on the big store with a commit log of 10k keys pending,
// against the same on the merged store, in interleaved rounds.
Status MeasureDeltaLookups(const std::string& big_path, const Workload& big, const TempDir& dir,
                           int rounds, Report* report) {
  const std::string delta_path = dir.File("delta.keyfs");
  std::error_code ec;
  std::filesystem::copy_file(big_path, delta_path, ec);
  if (ec) return Status::IOError("copy " + big_path + ": " + ec.message());
  StatusOr<std::unique_ptr<Engine>> merged = ReopenStore(big_path);
  KEYFS_RETURN_IF_ERROR(merged.status());
  OpenOptions o;
  o.merge_threshold = uint64_t{1} << 40;  // keep the log
  StatusOr<std::unique_ptr<Engine>> delta = OpenStore(delta_path, o);
  KEYFS_RETURN_IF_ERROR(delta.status());
  constexpr size_t kDelta = 10'000;
  Rng rng(0xde17a);
  for (size_t i = 0; i < kDelta; i += 100) {
    Batch b;
    for (size_t j = i; j < i + 100 && j < big.keys.size(); ++j) {
      b.Put(big.keys[j * 7 % big.keys.size()], RandomValue(rng));
    }
    KEYFS_RETURN_IF_ERROR((*delta)->Commit(b));
  }
  const uint64_t pending = (*delta)->Stats().delta_keys;
  report->AddNote("delta lookups: the " + CountLabel(big.keys.size()) + "-key store with " +
                  std::to_string(pending) +
                  " keys in its commit log (100 commits of 100 overwrites), against a merged "
                  "copy; Engine::Get both");
  const int passes = 1;
  for (int kind = 0; kind < 2; ++kind) {
    const bool hits = kind == 0;
    const std::vector<std::string>& keys = hits ? big.hits : big.misses;
    LookupCount counts[2];
    const std::vector<Contender> contenders = {
        {"with delta", [&] { return MissInEngine(**delta, keys, &counts[0]); }},
        {"merged", [&] { return MissInEngine(**merged, keys, &counts[1]); }},
    };
    const std::vector<std::vector<double>> ns = MeasureInterleaved(contenders, rounds);
    for (const LookupCount& c : counts) {
      if (c.errors != 0 || c.found != (hits ? (rounds + 1) * keys.size() * passes : 0)) {
        return Status::Corruption("delta lookups: found " + std::to_string(c.found) + ", " +
                                  std::to_string(c.errors) + " errors");
      }
    }
    Figure f;
    f.metric = std::string("engine get ") + (hits ? "hit" : "miss") + ", " +
               CountLabel(big.keys.size()) + " keys, 10k-key log pending";
    f.keyfs = Median(ns[0]);
    f.unit = Unit::kNanos;
    f.reference = Median(ns[1]);
    f.reference_name = "merged store";
    f.ratio = PairedRatio(ns[0], ns[1]);
    f.target = "<= 1.15x";
    f.met = f.ratio <= 1.15;
    f.samples = rounds;
    report->AddFigure(std::move(f));
  }
  return Status::OK();
}

// A sustained load of one writer (10-key batches) with one reader on a copy of the big
// store, once with merges (threshold `threshold` keys) and once with merges held off: the
// write amplification, and the p99 of commits and of reads with merges against without.
Status MeasureMerges(const std::string& big_path, const Workload& big, const TempDir& dir,
                     double seconds, Report* report) {
  struct Run {
    std::vector<double> commit_ms, read_us;
    EngineStats before, after;
  };
  const uint64_t threshold = std::max<uint64_t>(4096, big.keys.size() / 50);
  auto run = [&](bool merges, Run* out) -> Status {
    const std::string path = dir.File(merges ? "merging.keyfs" : "unmerged.keyfs");
    std::error_code ec;
    std::filesystem::copy_file(big_path, path, ec);
    if (ec) return Status::IOError("copy " + big_path + ": " + ec.message());
    OpenOptions o;
    o.merge_threshold = merges ? threshold : uint64_t{1} << 40;
    StatusOr<std::unique_ptr<Engine>> engine = OpenStore(path, o);
    KEYFS_RETURN_IF_ERROR(engine.status());
    out->before = (*engine)->Stats();
    std::atomic<bool> stop{false};
    std::thread reader([&] {
      Rng rng(0x4ead);
      while (!stop.load(std::memory_order_relaxed)) {
        const std::string& key = big.keys[rng.Uniform(big.keys.size())];
        const Clock::time_point start = Clock::now();
        StatusOr<Record> r = (*engine)->Get(key);
        out->read_us.push_back(Seconds(start) * 1e6);
        KeepAlive(r.ok());
      }
    });
    Rng rng(0x3e76e);
    Status s;
    const Clock::time_point start = Clock::now();
    while (s.ok() && Seconds(start) < seconds) {
      Batch b;
      for (int i = 0; i < 10; ++i) b.Put(big.keys[rng.Uniform(big.keys.size())], RandomValue(rng));
      const Clock::time_point c = Clock::now();
      s = (*engine)->Commit(b);
      out->commit_ms.push_back(Seconds(c) * 1e3);
    }
    stop = true;
    reader.join();
    KEYFS_RETURN_IF_ERROR(s);
    out->after = (*engine)->Stats();
    return Status::OK();
  };
  Run with, without;
  KEYFS_RETURN_IF_ERROR(run(true, &with));
  KEYFS_RETURN_IF_ERROR(run(false, &without));
  const uint64_t merges = with.after.merges - with.before.merges;
  const double written = static_cast<double>(with.after.bytes_written - with.before.bytes_written);
  const double committed =
      static_cast<double>(with.after.bytes_committed - with.before.bytes_committed);
  const double log_only =
      static_cast<double>(without.after.bytes_written - without.before.bytes_written) /
      static_cast<double>(without.after.bytes_committed - without.before.bytes_committed);
  report->AddNote("merges: " + Printf("%.0f s", seconds) +
                  " of 1 writer (10-key batches) and 1 reader on the " +
                  CountLabel(big.keys.size()) + "-key store, merge threshold " +
                  std::to_string(threshold) + " keys: " + std::to_string(merges) + " merges, " +
                  Megabytes(static_cast<uint64_t>(written)) + " written for " +
                  Megabytes(static_cast<uint64_t>(committed)) +
                  " of keys and values committed; the log alone writes " +
                  Printf("%.1fx", log_only) + " (record headers, metadata, padding)");
  {
    Figure f;
    f.metric =
        "write amplification, 1 writer with merges, " + CountLabel(big.keys.size()) + " keys";
    f.keyfs = written / committed;
    f.unit = Unit::kBytes;
    f.reference = log_only;
    f.reference_name = "the log alone";
    f.ratio = f.keyfs / log_only;
    f.samples = static_cast<int>(merges);
    report->AddFigure(std::move(f));
  }
  auto p99 = [&](const char* what, const std::vector<double>& a, const std::vector<double>& b,
                 Unit unit) {
    Figure f;
    f.metric = std::string(what) + " p99 during merges, " + CountLabel(big.keys.size()) + " keys";
    f.keyfs = Percentile(a, 99);
    f.unit = unit;
    f.reference = Percentile(b, 99);
    f.reference_name = "no merge running";
    f.ratio = f.keyfs / f.reference;
    f.samples = static_cast<int>(a.size());
    report->AddFigure(std::move(f));
  };
  p99("commit (10 keys)", with.commit_ms, without.commit_ms, Unit::kMillis);
  p99("engine get", with.read_us, without.read_us, Unit::kMicros);
  return Status::OK();
}

// Seconds to write `bytes` to a new file and fdatasync it: the floor of a bulk load.
StatusOr<double> RawWriteSeconds(const TempDir& dir, uint64_t bytes) {
  const std::string path = dir.File("raw-write.dat");
  std::vector<double> s;
  const std::string piece(1 << 20, 'r');
  for (int r = 0; r < 3; ++r) {
    const Clock::time_point start = Clock::now();
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno(errno, "create " + path);
    for (uint64_t done = 0; done < bytes;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(piece.size(), bytes - done));
      if (::write(fd, piece.data(), n) != static_cast<ssize_t>(n)) {
        ::close(fd);
        return Status::FromErrno(errno, "write " + path);
      }
      done += n;
    }
    if (::fdatasync(fd) != 0) {
      ::close(fd);
      return Status::FromErrno(errno, "fdatasync " + path);
    }
    ::close(fd);
    s.push_back(Seconds(start));
    ::unlink(path.c_str());
  }
  return Median(s);
}

void AddBulkFigure(const std::string& label, double seconds, double raw_seconds, uint64_t bytes,
                   Report* report) {
  Figure f;
  f.metric = "bulk load: one batch of " + label + " puts, durable";
  f.keyfs = seconds * 1e3;
  f.unit = Unit::kMillis;
  f.reference = raw_seconds * 1e3;
  f.reference_name = "write+fdatasync " + Megabytes(bytes);
  f.ratio = seconds / raw_seconds;
  f.target = "<= 3.00x";
  f.met = f.ratio <= 3.0;
  f.samples = 1;
  report->AddFigure(std::move(f));
}

// keyfsctl beside this program, or where the build tree puts it; empty if neither.
std::string FindKeyfsctl() {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  const std::filesystem::path dir = std::filesystem::path(std::string(self, n)).parent_path();
  for (const std::filesystem::path& p : {dir / "keyfsctl", dir / ".." / "tools" / "keyfsctl",
                                         dir / ".." / ".." / "bin" / "keyfsctl"}) {
    if (::access(p.c_str(), X_OK) == 0) return p.lexically_normal().string();
  }
  return "";
}

// Seconds `argv` takes to run to success.
StatusOr<double> TimeCommand(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const Clock::time_point start = Clock::now();
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
    return Status::IOError("cannot run " + argv[0]);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::IOError(argv[0] + " failed");
  }
  return Seconds(start);
}

// `keyfsctl import` of a tree of `files` small files against `cp -r` of it to the same disk,
// then sync(1) for both (import is durable when it returns; cp is not until a sync).
Status MeasureImport(const TempDir& dir, size_t files, Report* report) {
  const std::string keyfsctl = FindKeyfsctl();
  if (keyfsctl.empty()) {
    report->AddNote("import: keyfsctl not found beside keyfs_bench; not measured");
    return Status::OK();
  }
  const std::string tree = dir.File("tree");
  Rng rng(0x1e9);
  const size_t per_dir = 1000;
  for (size_t i = 0; i < files; ++i) {
    const std::string d = tree + "/d" + std::to_string(i / per_dir);
    if (i % per_dir == 0) std::filesystem::create_directories(d);
    const std::string f = d + "/f" + std::to_string(i % per_dir) + ".conf";
    const int fd = ::open(f.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno(errno, "create " + f);
    const std::string v = RandomValue(rng);
    const bool ok = ::write(fd, v.data(), v.size()) == static_cast<ssize_t>(v.size());
    ::close(fd);
    if (!ok) return Status::IOError("write " + f);
  }
  ::sync();
  std::vector<double> cp_s, import_s;
  for (int r = 0; r < 3; ++r) {
    const std::string copy = dir.File("tree-copy"), store = dir.File("import.keyfs");
    std::filesystem::remove_all(copy);
    std::filesystem::remove(store);
    std::filesystem::remove(store + ".log");
    ::sync();
    StatusOr<double> cp = TimeCommand({"sh", "-c", "cp -r '" + tree + "' '" + copy + "' && sync"});
    KEYFS_RETURN_IF_ERROR(cp.status());
    KEYFS_RETURN_IF_ERROR(TimeCommand({keyfsctl, "create", store}).status());
    ::sync();
    StatusOr<double> imp = TimeCommand({keyfsctl, "import", store, tree});
    KEYFS_RETURN_IF_ERROR(imp.status());
    cp_s.push_back(*cp);
    import_s.push_back(*imp);
  }
  Figure f;
  f.metric = "keyfsctl import of " + CountLabel(files) + " files (durable)";
  f.keyfs = Median(import_s) * 1e3;
  f.unit = Unit::kMillis;
  f.reference = Median(cp_s) * 1e3;
  f.reference_name = "cp -r + sync";
  f.ratio = PairedRatio(import_s, cp_s);
  f.target = "<= 3.00x";
  f.met = f.ratio <= 3.0;
  f.samples = 3;
  report->AddFigure(std::move(f));
  return Status::OK();
}

// ---- opening ----

// Opening is timed in a fresh process (`keyfs_bench open-probe`), as a mount opens its
// store: after this process freed a million small objects, glibc's malloc spends ~1 ms
// sorting free chunks in each large allocation (opendir's buffer in OpenStore), which
// would be measured as the store's cost.
constexpr int kOpenKinds = 4;  // [read_only * 2 + big]

// Runs this program with `args`; returns what it wrote on stdout. Error if it fails.
StatusOr<std::string> RunSelf(const std::vector<std::string>& args) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int err = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (err != 0) {
    ::close(fds[0]);
    return Status::FromErrno(err, "run /proc/self/exe");
  }
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::IOError(args[1] + " failed (wait status " + std::to_string(status) + ")");
  }
  return out;
}

// OpenStore of the big store against the small one, read-write (a mount, keyfsctl) and
// read-only (an `-o ro` mount), timed in a fresh process where the four take turns in
// every round.
Status MeasureOpen(const std::string& small_path, size_t small_keys, const std::string& big_path,
                   size_t big_keys, int rounds, Report* report) {
  StatusOr<std::string> out =
      RunSelf({"keyfs_bench", "open-probe", std::to_string(rounds), small_path, big_path});
  KEYFS_RETURN_IF_ERROR(out.status());
  std::vector<double> us[kOpenKinds];
  std::istringstream in(*out);
  for (int kind = 0; kind < kOpenKinds; ++kind) {
    for (int r = 0; r < rounds; ++r) {
      double v = 0;
      if (!(in >> v)) return Status::IOError("open-probe: unexpected output: " + *out);
      us[kind].push_back(v);
    }
  }
  for (int read_only = 0; read_only < 2; ++read_only) {
    const std::vector<double>& small = us[read_only * 2];
    const std::vector<double>& big = us[read_only * 2 + 1];
    const std::string mode = read_only ? " read-only" : "";
    Figure f;
    f.metric = "OpenStore" + mode + ", " + CountLabel(big_keys) + " keys";
    f.keyfs = Median(big);
    f.unit = Unit::kMicros;
    f.reference = Median(small);
    f.reference_name = CountLabel(small_keys) + " keys";
    f.ratio = PairedRatio(big, small);
    f.samples = rounds;
    report->AddFigure(std::move(f));
  }
  return Status::OK();
}

// ---- the run ----

Status Run(const SnapshotBenchOptions& options, Report* report) {
  const Sizes sizes = SizesFor(options.quick);
  TempDir dir;
  KEYFS_RETURN_IF_ERROR(dir.Create(options.dir));
  const std::string small_label = CountLabel(sizes.small_keys);
  const std::string big_label = CountLabel(sizes.big_keys);

  report->AddNote("host: " + std::to_string(std::thread::hardware_concurrency()) + " CPUs, " +
                  CpuModel() + "; one run, no warm machine assumed");
  report->AddNote("stores in " + dir.path() + " (" + FilesystemType(dir.path()) + ")");
  report->AddNote("keys: \"k/<hex>\", 16-24 bytes, random; values " + std::to_string(kValueSize) +
                  " bytes; lookups in a random order");
  report->AddNote(
      "each figure: the median over interleaved rounds (reference and keyfs alternate, order "
      "rotated); ratio = median over rounds of keyfs/reference within the round");

  // Lookups in the small store.
  Progress("building the " + small_label + "-key store");
  const Workload small = MakeWorkload(sizes.small_keys, 0, 1);
  const std::string small_path = dir.File("small.keyfs");
  double build_seconds = 0;
  {
    StatusOr<std::unique_ptr<Engine>> engine = BuildStore(small_path, small, &build_seconds);
    KEYFS_RETURN_IF_ERROR(engine.status());
    StatusOr<TableRef> table = CurrentTable(**engine);
    KEYFS_RETURN_IF_ERROR(table.status());
    const Maps maps(small);
    Progress("lookups in the " + small_label + "-key store");
    CpuPin pin;
    report->AddNote(pin.ok() ? "lookups: the measuring thread pinned to CPU " +
                                   std::to_string(pin.cpu()) + " (sched_setaffinity)"
                             : "lookups: NOT pinned (sched_setaffinity failed)");
    report->AddNote("lookups: " + std::to_string(sizes.lookup_rounds) + " rounds; " + small_label +
                    " keys: " + std::to_string(sizes.small_passes) + " passes per sample; " +
                    big_label + " keys: every key once per sample");
    KEYFS_RETURN_IF_ERROR(MeasureLookups("find hit, " + small_label + " keys", **table, maps,
                                         small.hits, true, sizes.small_passes, sizes.lookup_rounds,
                                         0.5, report));
    KEYFS_RETURN_IF_ERROR(MeasureEngineGets("engine get hit, " + small_label + " keys", **engine,
                                            **table, small.hits, sizes.small_passes,
                                            sizes.lookup_rounds, report));
  }

  // Lookups in the big store.
  Progress("building the " + big_label + "-key store (one batch)");
  Workload big = MakeWorkload(sizes.big_keys, sizes.big_keys, 2);
  const std::string big_path = dir.File("big.keyfs");
  {
    StatusOr<std::unique_ptr<Engine>> engine = BuildStore(big_path, big, &build_seconds);
    KEYFS_RETURN_IF_ERROR(engine.status());
    const EngineStats stats = (*engine)->Stats();
    report->AddNote(big_label + "-key store: built by one batch commit of " +
                    std::to_string(big.keys.size()) + " Puts in " +
                    Printf("%.2f s", build_seconds) + "; file " + Megabytes(stats.file_bytes));
    StatusOr<TableRef> table = CurrentTable(**engine);
    KEYFS_RETURN_IF_ERROR(table.status());
    const Maps maps(big);
    Progress("lookups in the " + big_label + "-key store");
    CpuPin pin;
    KEYFS_RETURN_IF_ERROR(MeasureLookups("find hit, " + big_label + " keys", **table, maps,
                                         big.hits, true, 1, sizes.lookup_rounds, 0.75, report));
    KEYFS_RETURN_IF_ERROR(MeasureLookups("find miss, " + big_label + " keys", **table, maps,
                                         big.misses, false, 1, sizes.lookup_rounds, 0.15, report));
    StatusOr<double> raw = RawWriteSeconds(dir, stats.file_bytes);
    KEYFS_RETURN_IF_ERROR(raw.status());
    AddBulkFigure(big_label, build_seconds, *raw, stats.file_bytes, report);
  }
  Progress("lookups with a pending commit log in the " + big_label + "-key store");
  KEYFS_RETURN_IF_ERROR(MeasureDeltaLookups(big_path, big, dir, sizes.lookup_rounds, report));
  big.hits = {};
  big.misses = {};

  // Opening, before the commits: their replaced files are freed by ext4 (with online
  // discard here) and that stalls metadata operations for milliseconds.
  Progress("opening the " + small_label + "- and " + big_label + "-key stores");
  report->AddNote(
      "open: OpenStore timed alone (closing is not) in a fresh process, "
      "interleaved; the files are in the page cache");
  KEYFS_RETURN_IF_ERROR(MeasureOpen(small_path, sizes.small_keys, big_path, sizes.big_keys,
                                    sizes.open_rounds, report));

  std::vector<double> small_ms;  // 1-key commit latencies into the small store
  // Commits: unpinned, the committer and the writers need both CPUs.
  report->AddNote(
      "commits: unpinned; durable when Commit returns. Reference: a file of the store's size "
      "written + fdatasync + rename over the previous + fsync(dir), same directory (\"raw "
      "publish\"), then the replaced file, held open meanwhile as the engine holds its old "
      "table, closed and freed (\"publish+free\": one durable write's full cycle)");
  {
    Progress("commits into the " + small_label + "-key store");
    StatusOr<std::unique_ptr<Engine>> engine = ReopenStore(small_path);
    KEYFS_RETURN_IF_ERROR(engine.status());
    report->AddNote(small_label + "-key store file " + Megabytes((*engine)->Stats().file_bytes) +
                    "; " + std::to_string(sizes.commit_rounds) + " rounds of " +
                    Printf("%.2g", sizes.commit_seconds) + " s per contender");
    KEYFS_RETURN_IF_ERROR(MeasureCommitThroughput(**engine, small, dir, sizes, report));
    Progress("commit latency in the " + small_label + "-key store");
    KEYFS_RETURN_IF_ERROR(MeasureCommitLatency(**engine, small.keys, dir, sizes.big_latency_rounds,
                                               report, &small_ms));
  }
  if (sizes.mid_keys != 0) {
    const std::string label = CountLabel(sizes.mid_keys);
    Progress("building the " + label + "-key store (one batch)");
    const Workload mid = MakeWorkload(sizes.mid_keys, 0, 3);
    StatusOr<std::unique_ptr<Engine>> engine =
        BuildStore(dir.File("mid.keyfs"), mid, &build_seconds);
    KEYFS_RETURN_IF_ERROR(engine.status());
    Progress("commit latency in the " + label + "-key store");
    KEYFS_RETURN_IF_ERROR(
        MeasureCommitLatency(**engine, mid.keys, dir, sizes.mid_latency_rounds, report));
  }
  {
    Progress("commit latency in the " + big_label + "-key store");
    StatusOr<std::unique_ptr<Engine>> engine = ReopenStore(big_path);
    KEYFS_RETURN_IF_ERROR(engine.status());
    std::vector<double> big_ms;
    KEYFS_RETURN_IF_ERROR(
        MeasureCommitLatency(**engine, big.keys, dir, sizes.big_latency_rounds, report, &big_ms));
    AddScalingFigures(big_label, big_ms, small_label, small_ms, report);
    Progress("commits into the " + big_label + "-key store");
    KEYFS_RETURN_IF_ERROR(MeasureCommitThroughput(**engine, big, dir, sizes, report));
  }
  Progress("merges under a sustained load on the " + big_label + "-key store");
  KEYFS_RETURN_IF_ERROR(MeasureMerges(big_path, big, dir, sizes.merge_seconds, report));
  big = {};
  if (sizes.huge_keys != 0) {
    const std::string label = CountLabel(sizes.huge_keys);
    Progress("building the " + label + "-key store (one batch)");
    const Workload huge = MakeWorkload(sizes.huge_keys, 0, 4);
    StatusOr<std::unique_ptr<Engine>> engine =
        BuildStore(dir.File("huge.keyfs"), huge, &build_seconds);
    KEYFS_RETURN_IF_ERROR(engine.status());
    const uint64_t bytes = (*engine)->Stats().file_bytes;
    StatusOr<double> raw = RawWriteSeconds(dir, bytes);
    KEYFS_RETURN_IF_ERROR(raw.status());
    AddBulkFigure(label, build_seconds, *raw, bytes, report);
    Progress("commit latency in the " + label + "-key store");
    std::vector<double> huge_ms;
    KEYFS_RETURN_IF_ERROR(
        MeasureCommitLatency(**engine, huge.keys, dir, sizes.big_latency_rounds, report, &huge_ms));
    AddScalingFigures(label, huge_ms, small_label, small_ms, report);
  }
  Progress("keyfsctl import of " + CountLabel(sizes.import_files) + " files against cp -r");
  KEYFS_RETURN_IF_ERROR(MeasureImport(dir, sizes.import_files, report));

  return Status::OK();
}

}  // namespace

int RunOpenProbe(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: keyfs_bench open-probe ROUNDS SMALL_STORE BIG_STORE\n");
    return 2;
  }
  const int rounds = std::max(1, std::atoi(argv[0]));
  const std::string paths[2] = {argv[1], argv[2]};
  std::vector<double> us[kOpenKinds];
  for (int r = -1; r < rounds; ++r) {  // round -1 warms up, untimed
    for (int i = 0; i < kOpenKinds; ++i) {
      const int kind = (i + std::max(r, 0)) % kOpenKinds;
      OpenOptions options;
      options.read_only = kind / 2 == 1;
      const std::string& path = paths[kind % 2];
      const Clock::time_point start = Clock::now();
      StatusOr<std::unique_ptr<Engine>> engine = OpenStore(path, options);
      const double elapsed = Seconds(start) * 1e6;
      if (!engine.ok()) {
        std::fprintf(stderr, "keyfs_bench: open %s: %s\n", path.c_str(),
                     engine.status().ToString().c_str());
        return 1;
      }
      if (r >= 0) us[kind].push_back(elapsed);
    }  // closed here, untimed
  }
  for (const std::vector<double>& samples : us) {
    for (double v : samples) std::printf("%.3f ", v);
    std::printf("\n");
  }
  return 0;
}

int RunSnapshotBench(const SnapshotBenchOptions& options) {
  Report report(std::string("keyfs_bench snapshot") + (options.quick ? " --quick" : "") +
                ": snapshot engine figures as ratios against references from the same run");
  Status s = Run(options, &report);
  if (!s.ok()) {
    std::fprintf(stderr, "keyfs_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  report.Print(stdout);
  std::fflush(stdout);
  if (!options.json_path.empty()) {
    s = report.WriteJson(options.json_path);
    if (!s.ok()) {
      std::fprintf(stderr, "keyfs_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace keyfs::bench
