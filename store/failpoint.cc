#include "failpoint.h"

#ifdef KEYFS_FAILPOINTS

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace keyfs {
namespace {

struct Point {
  std::string name;
  enum Action { kKill, kEio, kEnospc } action = kKill;
  uint64_t nth = 1, count = 1;
  std::atomic<uint64_t> hits{0};
};

struct Config {
  std::vector<Point*> points;  // never freed: a failpoint may fire during exit
  const char* trace = nullptr;
};

// Parses one "NAME:ACTION[:NTH[:COUNT]]"; null (and a line on stderr) if malformed.
Point* Parse(const std::string& spec) {
  std::vector<std::string> f;
  size_t start = 0;
  while (true) {
    const size_t colon = spec.find(':', start);
    f.push_back(spec.substr(start, colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  auto* p = new Point;
  p->name = f[0];
  bool ok = f.size() >= 2 && f.size() <= 4 && !p->name.empty();
  if (ok) {
    if (f[1] == "kill") {
      p->action = Point::kKill;
    } else if (f[1] == "eio") {
      p->action = Point::kEio;
    } else if (f[1] == "enospc") {
      p->action = Point::kEnospc;
    } else {
      ok = false;
    }
  }
  char* end = nullptr;
  if (ok && f.size() >= 3) {
    p->nth = std::strtoull(f[2].c_str(), &end, 10);
    ok = !f[2].empty() && *end == '\0' && p->nth >= 1;
  }
  if (ok && f.size() == 4) {
    p->count = std::strtoull(f[3].c_str(), &end, 10);
    ok = !f[3].empty() && *end == '\0';
  }
  if (!ok) {
    std::string msg = "keyfs: KEYFS_FAILPOINT: ignoring malformed '" + spec +
                      "' (want NAME:kill|eio|enospc[:NTH[:COUNT]])\n";
    (void)!::write(2, msg.data(), msg.size());
    delete p;
    return nullptr;
  }
  return p;
}

const Config* Load() {
  auto* c = new Config;
  c->trace = std::getenv("KEYFS_FAILPOINT_TRACE");
  if (c->trace && !*c->trace) c->trace = nullptr;
  if (const char* env = std::getenv("KEYFS_FAILPOINT")) {
    std::string all = env;
    size_t start = 0;
    while (start <= all.size()) {
      size_t comma = all.find(',', start);
      if (comma == std::string::npos) comma = all.size();
      if (comma > start) {
        if (Point* p = Parse(all.substr(start, comma - start))) c->points.push_back(p);
      }
      start = comma + 1;
    }
  }
  if (c->points.empty() && c->trace == nullptr) {
    delete c;
    return nullptr;
  }
  return c;
}

}  // namespace

Status FailPoint(std::string_view name) {
  static const Config* const config = Load();
  if (config == nullptr) return Status::OK();
  if (config->trace) {
    std::string line(name);
    line += '\n';
    int fd = ::open(config->trace, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
      (void)!::write(fd, line.data(), line.size());
      ::close(fd);
    }
  }
  for (Point* p : config->points) {
    if (p->name != name) continue;
    const uint64_t hit = p->hits.fetch_add(1, std::memory_order_relaxed) + 1;
    if (hit < p->nth || (p->count != 0 && hit >= p->nth + p->count)) continue;
    const std::string what = "failpoint " + p->name + " (hit " + std::to_string(hit) + ")";
    static const char* const kActions[] = {"SIGKILL", "EIO", "ENOSPC"};
    const std::string msg = "keyfs: " + what + ": " + kActions[p->action] + "\n";
    (void)!::write(2, msg.data(), msg.size());  // for the test that set it
    switch (p->action) {
      case Point::kKill:
        ::kill(::getpid(), SIGKILL);
        ::pause();
        break;
      case Point::kEio:
        return Status::FromErrno(EIO, what);
      case Point::kEnospc:
        return Status::FromErrno(ENOSPC, what);
    }
  }
  return Status::OK();
}

}  // namespace keyfs

#endif  // KEYFS_FAILPOINTS
