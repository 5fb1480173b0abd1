// Stress through real mounts (issue 10, item 6), and the regressions it found.
#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine_mount_test.h"

namespace keyfs::test {
namespace {

using namespace std::chrono_literals;

// ---- self-describing values -----------------------------------------------------------------

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// "<name>|<seq>|<len>|<checksum>|<body>": <len> is the whole value's length (10 digits),
// <checksum> the FNV-1a of <body> (16 hex digits), and the body's bytes derive from name and
// seq, so a mix of two versions, a cut, zeros after the value or a stale length all fail.
std::string MakeValue(const std::string& name, uint64_t seq, size_t body_len) {
  std::string body(body_len, 'a');
  uint64_t x = (Fnv1a(name) ^ (seq * 0x9E3779B97F4A7C15ull)) | 1;
  for (char& c : body) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>('a' + x % 26);
  }
  const std::string head = name + "|" + std::to_string(seq) + "|";
  const size_t len = head.size() + 10 + 1 + 16 + 1 + body_len;
  char mid[40];
  std::snprintf(mid, sizeof mid, "%010zu|%016" PRIx64 "|", len, Fnv1a(body));
  return head + mid + body;
}

// A short printable picture of a bad value.
std::string Describe(std::string_view v) {
  std::string r = std::to_string(v.size()) + " bytes: \"";
  for (char c : v.substr(0, 48)) {
    r += isprint(static_cast<unsigned char>(c)) ? std::string(1, c) : "\\" + std::to_string(c);
  }
  r += v.size() > 48 ? "\"..." : "\"";
  size_t zeros = 0;
  while (zeros < v.size() && v[v.size() - 1 - zeros] == '\0') ++zeros;
  if (zeros > 0) r += " ending in " + std::to_string(zeros) + " NULs";
  return r;
}

// "" if `v` is a whole value; then *name and *seq say which. Else what is wrong.
std::string ParseValue(std::string_view v, std::string* name, uint64_t* seq) {
  const size_t bar1 = v.find('|');
  if (bar1 == std::string_view::npos || bar1 == 0) return "no name: " + Describe(v);
  const size_t bar2 = v.find('|', bar1 + 1);
  if (bar2 == std::string_view::npos || bar2 == bar1 + 1 || bar2 - bar1 > 20) {
    return "no sequence number: " + Describe(v);
  }
  const std::string_view seq_text = v.substr(bar1 + 1, bar2 - bar1 - 1);
  if (seq_text.find_first_not_of("0123456789") != std::string_view::npos) {
    return "bad sequence number: " + Describe(v);
  }
  const size_t body_at = bar2 + 1 + 10 + 1 + 16 + 1;
  if (v.size() < body_at || v[bar2 + 11] != '|' || v[body_at - 1] != '|') {
    return "short header: " + Describe(v);
  }
  const std::string len_text(v.substr(bar2 + 1, 10));
  const std::string sum_text(v.substr(bar2 + 12, 16));
  if (len_text.find_first_not_of("0123456789") != std::string::npos ||
      sum_text.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return "bad header: " + Describe(v);
  }
  if (std::stoull(len_text) != v.size()) {
    return "torn: header says " + std::to_string(std::stoull(len_text)) + " bytes, read " +
           Describe(v);
  }
  if (std::stoull(sum_text, nullptr, 16) != Fnv1a(v.substr(body_at))) {
    return "torn: checksum mismatch, " + Describe(v);
  }
  *name = std::string(v.substr(0, bar1));
  *seq = std::stoull(std::string(seq_text));
  return "";
}

// ---- file helpers ------------------------------------------------------------------------------

// open + write `v` in `pieces` writes + (fsync) + close. 0 or errno; *step names the failing one.
int WriteValue(const std::string& path, const std::string& v, int flags, int pieces, bool fsync_it,
               const char** step) {
  *step = "open";
  int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  const size_t piece = v.size() / pieces + 1;
  for (size_t done = 0; done < v.size();) {
    *step = "write";
    ssize_t n = write(fd, v.data() + done, std::min(piece, v.size() - done));
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      return e;
    }
    done += static_cast<size_t>(n);
  }
  if (fsync_it && fsync(fd) != 0) {
    *step = "fsync";
    int e = errno;
    close(fd);
    return e;
  }
  *step = "close";
  return close(fd) == 0 ? 0 : errno;
}

class MountStressTest : public EngineMountTest {};

// ---- regressions the stress test found --------------------------------------------------------

// §3: a file open for writing keeps its identity when its directory is renamed: close()
// commits it under the directory's new name. (The commit used to read the file's key before a
// concurrent rename applied and write to the old name: close() got ENOENT and the value was
// lost; with RENAME_EXCHANGE it would have landed in the other directory.)
TEST_P(MountStressTest, WritesCommitWhileTheirDirectoryIsRenamed) {
  ASSERT_EQ(mkdir(P("a").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("a/k"), MakeValue("k", 0, 100)), 0);
  std::atomic<bool> stop{false};
  std::atomic<int> renames{0};
  std::string rename_error;
  std::thread renamer([&] {
    for (bool at_a = true; !stop; at_a = !at_a) {
      if (rename(P(at_a ? "a" : "b").c_str(), P(at_a ? "b" : "a").c_str()) != 0) {
        rename_error = Err(errno);
        return;
      }
      ++renames;
    }
  });
  uint64_t acked = 0, failed = 0;
  std::string first_failure;
  std::string dir = "a";
  const auto end = std::chrono::steady_clock::now() + 3s;
  for (uint64_t seq = 1; std::chrono::steady_clock::now() < end; ++seq) {
    const char* step = "";
    int e = ENOENT;
    for (int attempt = 0; attempt < 100 && e == ENOENT && std::strcmp(step, "close") != 0;
         ++attempt) {
      e = WriteValue(P(dir + "/k"), MakeValue("k", seq, 100 + seq % 5000), O_WRONLY | O_TRUNC, 2,
                     seq % 3 == 0, &step);
      if (e == ENOENT && std::strcmp(step, "open") == 0) dir = dir == "a" ? "b" : "a";
    }
    if (e == 0) {
      acked = seq;
    } else if (failed++ == 0) {
      first_failure = "seq " + std::to_string(seq) + ": " + step + ": " + Err(e);
    }
  }
  stop = true;
  renamer.join();
  EXPECT_EQ(rename_error, "");
  EXPECT_GT(renames.load(), 10);
  EXPECT_EQ(failed, 0u) << "first: " << first_failure;
  const std::string at = Exists(P("a")) ? "a" : "b";
  EXPECT_FALSE(Exists(P(at == "a" ? "b" : "a")));
  std::string v, name;
  uint64_t seq = 0;
  ASSERT_EQ(ReadFile(P(at + "/k"), &v), 0);
  ASSERT_EQ(ParseValue(v, &name, &seq), "");
  EXPECT_EQ(seq, acked);
  std::printf("[ info ] %lu writes, %d renames of their directory\n",
              static_cast<unsigned long>(acked), renames.load());
}

// Names in one getdents64 call on `fd` (without "." and ".."); -1 in *n on error.
std::vector<std::string> Getdents(int fd, long* n) {
  alignas(8) char buf[65536];
  *n = syscall(SYS_getdents64, fd, buf, sizeof buf);
  std::vector<std::string> names;
  for (long off = 0; off < *n;) {
    const auto* d = reinterpret_cast<const struct dirent64*>(buf + off);
    if (std::strcmp(d->d_name, ".") != 0 && std::strcmp(d->d_name, "..") != 0) {
      names.emplace_back(d->d_name);
    }
    off += d->d_reclen;
  }
  return names;
}

// §3 "every mount lists what the last commit it knows of contains": a listing that one
// READDIR answer held whole ends there. The kernel asks once more to see the end; that
// answer resumed after the last name in the newest table and returned names committed
// since, so `ls` of a directory whose x was renamed to y could show both x and y.
TEST_P(MountStressTest, ListingThatOneAnswerHeldEndsThere) {
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("d/p"), "p"), 0);
  ASSERT_EQ(WriteFile(P("d/x"), "x"), 0);
  if (dets()) {
    ASSERT_NO_FATAL_FAILURE(Remount("sync_interval=1"));  // the ro mount follows syncs
  }
  const std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  // Each rename's new name sorts after the old one, where a resumed listing looks.
  for (const std::string& m : {mnt(), ro}) {
    const bool on_ro = m == ro;
    const std::string from = on_ro ? "d/y" : "d/x", to = on_ro ? "d/z" : "d/y";
    if (on_ro) {
      EXPECT_TRUE(WaitFor([&] { return Exists(ro + "/d/y") && !Exists(ro + "/d/x"); }));
    }
    int fd = open((m + "/d").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << Err(errno);
    long n = 0;
    EXPECT_EQ(Getdents(fd, &n), (std::vector<std::string>{"p", from.substr(2)})) << m;
    ASSERT_EQ(rename(P(from).c_str(), P(to).c_str()), 0) << Err(errno);
    if (on_ro) {
      ASSERT_NO_FATAL_FAILURE(SyncIfDets());
      EXPECT_TRUE(WaitFor([&] { return Exists(m + "/" + to); })) << "the ro mount never saw it";
    }
    std::vector<std::string> more = Getdents(fd, &n);
    EXPECT_EQ(n, 0) << m << ": the listing went on with " << ::testing::PrintToString(more);
    close(fd);
  }
}

std::string EngineName(const ::testing::TestParamInfo<std::string>& info) { return info.param; }
INSTANTIATE_TEST_SUITE_P(Engine, MountStressTest, ::testing::Values("snapshot", "dets"),
                         EngineName);

}  // namespace
}  // namespace keyfs::test
