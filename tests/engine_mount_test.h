// EngineMountTest and the helpers the mount tests share (mount_test.cc, mount_posix_test.cc):
// errno and byte-string helpers, self-checking values (Versioned/CheckVersioned), TreeMeta and
// kMakeTree for copies of whole trees, and the engine-aware helpers of EngineMountTest (Seed,
// SyncIfDets, CtlRead, CtlWrite, MountExpectingRefusal). See mount_fixture.h for MountTest.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "mount_fixture.h"

namespace keyfs::test {

inline std::string Err(int e) { return e == 0 ? "OK" : std::strerror(e); }

// `s` quoted for /bin/sh.
inline std::string ShellQuote(const std::string& s) {
  std::string r = "'";
  for (char c : s) {
    if (c == '\'') {
      r += "'\\''";
    } else {
      r += c;
    }
  }
  return r + "'";
}

// errno of a call that returns -1 on failure, 0 if it succeeded.
template <class T>
inline int ErrnoOf(T r) {
  return r < 0 ? errno : 0;
}

inline int Renameat2(const std::string& from, const std::string& to, unsigned flags) {
  long r = syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags);
  return r == 0 ? 0 : errno;
}

// Reads everything from `fd` starting at offset 0 with pread in `chunk`-sized calls.
inline std::string PreadAll(int fd, size_t chunk = 65536) {
  std::string data;
  std::string buf(chunk, '\0');
  off_t off = 0;
  while (true) {
    ssize_t n = pread(fd, buf.data(), chunk, off);
    if (n <= 0) break;
    data.append(buf.data(), static_cast<size_t>(n));
    off += n;
  }
  return data;
}

inline std::string ReadLink(const std::string& path) {
  char buf[4096];
  ssize_t n = readlink(path.c_str(), buf, sizeof buf);
  return n < 0 ? "<error: " + Err(errno) + ">" : std::string(buf, static_cast<size_t>(n));
}

// A self-checking value: "<len>:" then `len` copies of `letter`.
inline std::string Versioned(size_t len, char letter) {
  return std::to_string(len) + ":" + std::string(len, letter);
}
// Run-length summary of `v`, e.g. "\"300:\" + 'q' x300 + '\\0' x8701".
inline std::string Runs(const std::string& v, size_t from) {
  std::string r = ::testing::PrintToString(v.substr(0, from));
  int runs = 0;
  for (size_t i = from; i < v.size() && runs < 6; ++runs) {
    size_t j = i;
    while (j < v.size() && v[j] == v[i]) ++j;
    r += " + " + ::testing::PrintToString(v[i]) + " x" + std::to_string(j - i);
    i = j;
  }
  return r;
}

// "" if `v` is a whole Versioned value, else what is wrong with it.
inline std::string CheckVersioned(const std::string& v) {
  if (v.empty()) return "empty read";
  size_t colon = v.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 10 ||
      v.find_first_not_of("0123456789") != colon) {
    return "no length header: " + Runs(v, 0);
  }
  size_t len = std::stoul(v.substr(0, colon));
  bool whole = v.size() == colon + 1 + len;
  for (size_t i = colon + 2; whole && i < v.size(); ++i) whole = v[i] == v[colon + 1];
  if (whole && (len == 0 || v[colon + 1] != '\0')) return "";
  return "torn: " + std::to_string(v.size()) + " bytes: " + Runs(v, colon + 1);
}

// A number field of the stats JSON ("name": 123); -1 if absent.
inline int64_t JsonNumber(const std::string& json, const std::string& name) {
  std::string k = "\"" + name + "\"";
  size_t p = json.find(k);
  if (p == std::string::npos) return -1;
  p = json.find(':', p + k.size());
  if (p == std::string::npos) return -1;
  ++p;
  while (p < json.size() && json[p] == ' ') ++p;
  size_t end = p;
  while (end < json.size() && isdigit(static_cast<unsigned char>(json[end]))) ++end;
  if (end == p) return -1;
  return std::stoll(json.substr(p, end - p));
}

// One line "keyfs: ...\n" on stderr, as SPEC §2 requires of every start-up failure.
inline ::testing::AssertionResult IsOneKeyfsLine(const std::string& err) {
  if (err.rfind("keyfs: ", 0) != 0 || err.empty() || err.back() != '\n' ||
      std::count(err.begin(), err.end(), '\n') != 1) {
    return ::testing::AssertionFailure()
           << "stderr is not one line starting with \"keyfs: \": " << ::testing::PrintToString(err);
  }
  return ::testing::AssertionSuccess();
}

// Compares byte strings; on a mismatch says where they differ instead of printing megabytes.
inline ::testing::AssertionResult SameBytes(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto around = [&](const std::string& s) {
    return ::testing::PrintToString(s.substr(i < 8 ? 0 : i - 8, 24));
  };
  return ::testing::AssertionFailure()
         << "got " << got.size() << " bytes, want " << want.size() << "; first difference at " << i
         << ": got " << around(got) << ", want " << around(want);
}

inline std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return s;
}

// Metadata of a tree, for comparing copies: relative path -> description.
inline std::map<std::string, std::string> TreeMeta(const std::string& root,
                                                   bool with_owner = true) {
  std::map<std::string, std::string> m;
  std::error_code ec;
  auto describe = [&](const std::string& path) {
    struct stat st = Lstat(path);
    std::ostringstream d;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
    d << (S_ISDIR(st.st_mode)   ? "dir"
          : S_ISLNK(st.st_mode) ? "symlink"
                                : "file")
      << " mode " << mode;
    if (with_owner) d << " uid " << st.st_uid << " gid " << st.st_gid;
    d << " mtime " << st.st_mtim.tv_sec << "." << st.st_mtim.tv_nsec;
    if (S_ISREG(st.st_mode)) d << " size " << st.st_size;
    if (S_ISLNK(st.st_mode)) d << " -> " << ReadLink(path);
    return d.str();
  };
  m["."] = describe(root);
  for (auto it = std::filesystem::recursive_directory_iterator(root, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    m[it->path().lexically_relative(root).string()] = describe(it->path().string());
  }
  if (ec) m["<error>"] = ec.message();
  return m;
}

// A small tree on local disk with every kind of entry and metadata `cp -a`, `rsync -a`
// and `tar` must carry: modes, owners, nanosecond mtimes, symlinks, an empty directory,
// a binary file and an empty file.
inline const char* const kMakeTree = R"(set -e
t=$SRC/tree
mkdir -p $t/etc/app/conf.d $t/empty $t/bin $t/var/lib
printf 'listen=80\nname=demo\n' > $t/etc/app/app.conf
printf '[main]\nkey = value\n' > $t/etc/app/conf.d/10-main.ini
printf 'secret\n' > $t/etc/app/secret
chmod 0600 $t/etc/app/secret
printf '#!/bin/sh\necho hi\n' > $t/bin/run.sh
chmod 0755 $t/bin/run.sh
head -c 300000 /dev/urandom > $t/var/lib/blob
: > $t/var/lib/empty-file
printf 'owned\n' > $t/var/lib/owned
chown 1234:5678 $t/var/lib/owned
chmod 0751 $t/var/lib
ln -s app.conf $t/etc/app/current
ln -s ../../var/lib/blob $t/etc/app/blob-link
ln -s /nonexistent/target $t/bin/dangling
find $t -exec touch -h -d '2001-02-03 04:05:06.123456789' {} +
touch -d '2010-01-01 00:00:00.5' $t/etc/app/app.conf
)";

// The pid of the keyfs process whose command line names `mountpoint` (0 if none): a
// daemon that detached from us.
inline pid_t FindKeyfsServing(const std::string& mountpoint) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline;
    if (ReadFile(e.path().string() + "/cmdline", &cmdline) != 0 || cmdline.empty()) continue;
    std::vector<std::string> args;
    std::istringstream in(cmdline);
    std::string a;
    while (std::getline(in, a, '\0')) args.push_back(a);
    if (args.empty() || std::filesystem::path(args[0]).filename() != "keyfs") continue;
    if (std::find(args.begin(), args.end(), mountpoint) != args.end()) return std::stoi(name);
  }
  return 0;
}

// Writes "1" to MOUNTPOINT/.keyfs/sync, which returns once every write closed before it is
// durable (SPEC §5; at once on snapshot). Returns 0 or the errno of the failing step.
inline int SyncErr(const std::string& mountpoint) {
  return WriteFile(mountpoint + "/.keyfs/sync", "1");
}

// Every test runs on both engines: the file semantics of SPEC §3 do not depend on the
// engine. Where the engines differ, the helpers below hide it, and the few tests whose subject
// differs (several writers of one store, keyfsctl writes while mounted, what kill -9 and a
// full disk may cost) hold each engine to its own contract:
// - snapshot: every close() commits durably; several processes (mounts, keyfsctl) write one
//   store, and each mount follows the others' commits.
// - dets: one writer per store; close() makes a value visible to every new open through the
//   mount, durable only at the next sync (timer, fsync, MNT/.keyfs/sync, unmount). keyfsctl
//   and -o ro mounts see the last sync; keyfsctl writes are refused while a rw mount holds it.
class EngineMountTest : public MountTest, public ::testing::WithParamInterface<std::string> {
 protected:
  EngineMountTest() { engine_ = GetParam(); }
  bool dets() const { return engine_ == "dets"; }

  // /bin/sh -c `script` as uid:gid without supplementary groups, through Sh() (so MNT, STORE,
  // ... are in its environment).
  CommandResult AsUser(uid_t uid, gid_t gid, const std::string& script) {
    return Sh("exec setpriv --reuid=" + std::to_string(uid) + " --regid=" + std::to_string(gid) +
              " --clear-groups -- /bin/sh -c " + ShellQuote(script));
  }

  // Syncs the mount at `mountpoint` (default mnt()) through .keyfs/sync and expects success.
  // Use as ASSERT_NO_FATAL_FAILURE(SyncMount()).
  void SyncMount(const std::string& mountpoint = "") {
    const std::string m = mountpoint.empty() ? mnt() : mountpoint;
    int e = SyncErr(m);
    ASSERT_EQ(e, 0) << "echo 1 > " << m << "/.keyfs/sync: " << Err(e);
  }

  // What the mount closed reaches keyfsctl and -o ro mounts of the store: on dets only at a
  // sync, so sync; on snapshot every close already published it, so nothing.
  void SyncIfDets() {
    if (dets()) {
      ASSERT_NO_FATAL_FAILURE(SyncMount());
    }
  }

  // keyfsctl reading the store while it is mounted (get, list, export). On snapshot it runs as
  // is: every close committed to the store file. On dets keyfsctl sees the last sync, so the
  // mount syncs first; an open writer's data stays unpublished by that sync, which keeps
  // "not visible before close" checks meaningful.
  CommandResult CtlRead(const std::vector<std::string>& args) {
    if (dets()) {
      int e = SyncErr(mnt());
      EXPECT_EQ(e, 0) << "sync before keyfsctl " << args[0] << ": " << Err(e);
    }
    return Ctl(args);
  }

  // keyfsctl put/del/import while the store is mounted. On snapshot it runs beside the mount
  // (a second writer of the store, which the mount must follow). dets has one writer and
  // refuses keyfsctl writes while mounted, so there the mount steps aside: unmount (which
  // syncs), run keyfsctl, mount again (with Mount()'s default options).
  // Use as ASSERT_NO_FATAL_FAILURE(r = CtlWrite(...)).
  CommandResult CtlWrite(const std::vector<std::string>& args, const std::string& input = "") {
    if (!dets()) return Ctl(args, input);
    CommandResult r;
    Unmount();
    if (HasFatalFailure()) return r;
    r = Ctl(args, input);
    Mount();
    return r;
  }

  // Puts `value` at `key` the way `keyfsctl put` does: durable, visible to keyfsctl and to
  // every mount. On snapshot it IS `keyfsctl put` while mounted (the mount learns of it as of
  // any other process's commit: callers wait for it to show). On dets, where keyfsctl may not
  // write a mounted store, it goes through the mount, parents made with mkdir, then synced.
  // Use as ASSERT_NO_FATAL_FAILURE(Seed(...)).
  void Seed(const std::string& key, const std::string& value) {
    if (!dets()) {
      CommandResult r = Ctl({"put", store(), key, value});
      ASSERT_EQ(r.status, 0) << r.err;
      return;
    }
    for (size_t slash = key.find('/'); slash != std::string::npos;
         slash = key.find('/', slash + 1)) {
      const std::string dir = P(key.substr(0, slash));
      ASSERT_TRUE(mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) << dir << ": " << Err(errno);
    }
    int e = WriteFile(P(key), value);
    ASSERT_EQ(e, 0) << key << ": " << Err(e);
    ASSERT_NO_FATAL_FAILURE(SyncMount());
  }

  // `keyfs STORE MOUNTPOINT -o OPTIONS` in the background mode, which returns once it is
  // mounted or has failed to start. For mounts that must be refused: one that mounts after
  // all is unmounted and its daemon killed, so that nothing is left behind.
  CommandResult MountExpectingRefusal(const std::string& mountpoint, const std::string& options) {
    CommandResult r = Keyfs({store(), mountpoint, "-o", options});
    if (r.status == 0) {
      RunCommand({"fusermount3", "-u", "-z", mountpoint});
      if (pid_t p = FindKeyfsServing(mountpoint)) kill(p, SIGKILL);
    }
    return r;
  }
};

}  // namespace keyfs::test
