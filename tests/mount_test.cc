// Tests through a real mount: the keyfs daemon on a temporary directory, driven with real
// syscalls and the tools users run (sh, cat, sed -i, cp -a, rsync, tar, find, grep, mv, ln,
// python3). Each test names the SPEC line it holds the daemon to (§2 command line, §3
// filesystem semantics, §5 observability). Every test runs on both engines, snapshot and
// dets (see EngineMountTest for how their contracts differ and how the tests hold each to its
// own). No test asserts anything about time: deadlines only bound how long we wait for
// something that must happen.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "engine_mount_test.h"
#include "mount_fixture.h"

namespace keyfs::test {
namespace {

using namespace std::chrono_literals;
namespace stdfs = std::filesystem;

class MountCommandLineTest : public EngineMountTest {
 protected:
  bool MountInSetUp() const override { return false; }
};

// ---- §3 layout, names ----

// §3: key a/b/c is MOUNT/a/b/c; a and a/b are directories. keyfsctl put creates parents.
TEST_P(EngineMountTest, KeyIsAFileAndItsPrefixesAreDirectories) {
  CommandResult put;
  ASSERT_NO_FATAL_FAILURE(put = CtlWrite({"put", store(), "a/b/c", "hello"}));
  ASSERT_EQ(put.status, 0) << put.err;
  ASSERT_TRUE(WaitFor([&] { return Cat(P("a/b/c")) == "hello"; })) << Cat(P("a/b/c"));
  EXPECT_TRUE(S_ISDIR(Lstat(P("a")).st_mode));
  EXPECT_TRUE(S_ISDIR(Lstat(P("a/b")).st_mode));
  EXPECT_TRUE(S_ISREG(Lstat(P("a/b/c")).st_mode));
  EXPECT_EQ(Lstat(P("a")).st_mode & 07777, 0755u);
  EXPECT_EQ(Lstat(P("a/b/c")).st_mode & 07777, 0644u);
  EXPECT_EQ(ListDir(P("a")), std::vector<std::string>{"b"});

  // And the other way: what is written through the mount is the key.
  ASSERT_EQ(mkdir(P("x").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("x/y"), "value"), 0);
  CommandResult r = CtlRead({"get", store(), "x/y"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "value");
  r = CtlRead({"list", store()});
  EXPECT_EQ(r.out, "a/\na/b/\na/b/c\nx/\nx/y\n");
}

// §3: components at most 255 bytes: ENAMETOOLONG and nothing changes.
TEST_P(EngineMountTest, NameOf256BytesIsEnametoolongAndNothingIsCreated) {
  const std::string ok(255, 'n'), too_long(256, 'n');
  ASSERT_EQ(WriteFile(P(ok), "fits"), 0);
  EXPECT_EQ(Cat(P(ok)), "fits");
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);

  EXPECT_EQ(WriteFile(P(too_long), "x"), ENAMETOOLONG);
  EXPECT_EQ(WriteFile(P("d/" + too_long), "x"), ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(mkdir(P(too_long).c_str(), 0755)), ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(symlink("t", P(too_long).c_str())), ENAMETOOLONG);
  EXPECT_EQ(Renameat2(P(ok), P(too_long), 0), ENAMETOOLONG);

  EXPECT_EQ(ListDir(P("")), (std::vector<std::string>{"d", ok}));
  EXPECT_EQ(ListDir(P("d")), std::vector<std::string>{});
  EXPECT_EQ(CtlRead({"list", store()}).out, "d/\n" + ok + "\n");
}

// §3: a whole key is at most 4096 bytes. Paths relative to a deep directory's fd reach the
// daemon with a key longer than that (the kernel's PATH_MAX never sees the whole key).
TEST_P(EngineMountTest, KeyLongerThan4096BytesIsRejected) {
  int dir = open(mnt().c_str(), O_DIRECTORY | O_RDONLY);
  ASSERT_GE(dir, 0);
  std::string key;
  for (int i = 0; i < 16; ++i) {  // 16 components of 250 bytes: a 4015-byte key
    std::string name(250, static_cast<char>('a' + i));
    ASSERT_EQ(mkdirat(dir, name.c_str(), 0755), 0) << "level " << i << ": " << Err(errno);
    int sub = openat(dir, name.c_str(), O_DIRECTORY | O_RDONLY);
    ASSERT_GE(sub, 0) << Err(errno);
    close(dir);
    dir = sub;
    key += (key.empty() ? "" : "/") + name;
  }
  const std::string fits(4096 - key.size() - 1, 'z');  // exactly 4096
  const std::string too_long(fits.size() + 1, 'z');    // 4097
  int fd = openat(dir, fits.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  EXPECT_GE(fd, 0) << "a 4096-byte key must work: " << Err(errno);
  if (fd >= 0) {
    EXPECT_EQ(close(fd), 0);
  }
  fd = openat(dir, too_long.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  const int open_errno = fd < 0 ? errno : 0;
  EXPECT_EQ(open_errno, ENAMETOOLONG);
  if (fd >= 0) close(fd);
  EXPECT_EQ(ErrnoOf(mkdirat(dir, too_long.c_str(), 0755)), ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(symlinkat("t", dir, too_long.c_str())), ENAMETOOLONG);
  close(dir);
  CommandResult r = CtlRead({"list", store()});
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 17) << "16 dirs and one file";
  EXPECT_EQ(r.out.find(too_long), std::string::npos);
}

// §3/§5: MOUNT/.keyfs is reachable by path, never listed; stats is JSON, sync succeeds.
TEST_P(EngineMountTest, KeyfsDirIsReachableButNeverListed) {
  ASSERT_EQ(WriteFile(P("k"), "v"), 0);
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"k"});
  EXPECT_TRUE(S_ISDIR(Lstat(P(".keyfs")).st_mode));
  std::string stats = Cat(P(".keyfs/stats"));
  EXPECT_NE(stats.find("\"engine\""), std::string::npos) << stats;
  EXPECT_NE(stats.find("\"" + engine_ + "\""), std::string::npos) << stats;
  size_t first = stats.find_first_not_of(" \n");
  size_t last = stats.find_last_not_of(" \n");
  ASSERT_NE(first, std::string::npos);
  EXPECT_EQ(stats[first], '{');
  EXPECT_EQ(stats[last], '}');
  EXPECT_GE(JsonNumber(stats, "entries"), 1) << stats;

  CommandResult r = Sh("echo 1 > $MNT/.keyfs/sync");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(WriteFile(P(".keyfs/sync"), "1"), 0);

  // Not creatable, not listed, not found by tools walking the mount.
  EXPECT_NE(ErrnoOf(mkdir(P(".keyfs").c_str(), 0755)), 0);
  EXPECT_NE(WriteFile(P(".keyfs/new"), "x"), 0);
  r = Sh("ls -a $MNT; cd $MNT && find . | grep -c keyfs");
  EXPECT_EQ(r.out, ".\n..\nk\n0\n");
  EXPECT_EQ(Ctl({"list", store()}).out, "k\n");
}

// §3: a symlink is a leaf: a key below it gets ENOTDIR.
TEST_P(EngineMountTest, KeyBelowASymlinkIsEnotdir) {
  ASSERT_EQ(WriteFile(P("file"), "content"), 0);
  ASSERT_EQ(symlink("file", P("link").c_str()), 0);
  EXPECT_EQ(WriteFile(P("link/x"), "v"), ENOTDIR);
  EXPECT_EQ(ErrnoOf(mkdir(P("link/x").c_str(), 0755)), ENOTDIR);
  // (On dets the mount steps aside, so that keyfsctl fails for the symlink, not the lock.)
  CommandResult r;
  ASSERT_NO_FATAL_FAILURE(r = CtlWrite({"put", store(), "link/x", "v"}));
  EXPECT_NE(r.status, 0) << "keyfsctl put below a symlink must fail";
  EXPECT_TRUE(S_ISLNK(Lstat(P("link")).st_mode));
  EXPECT_EQ(Cat(P("link")), "content");
  EXPECT_EQ(CtlRead({"list", store()}).out, "file\nlink\n");
}

// §3: keys are byte strings: any byte but NUL and '/' in a name, as on any filesystem.
TEST_P(EngineMountTest, NamesAreByteStrings) {
  const std::vector<std::string> names = {
      "with space",    "tab\there",   "new\nline", "caf\xc3\xa9", "\xff\xfe raw bytes",
      "-leading-dash", "...",         ".hidden",   "..x",         "a=b;c&d|e",
      "*?[glob]",      "\\backslash", "'\"quotes"};
  for (const std::string& n : names) {
    ASSERT_EQ(WriteFile(P(n), "value of " + n), 0) << testing::PrintToString(n);
  }
  ASSERT_EQ(mkdir(P("dir \xe2\x98\x83").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("dir \xe2\x98\x83/inner \x01"), "x"), 0);
  std::vector<std::string> want = names;
  want.push_back("dir \xe2\x98\x83");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(ListDir(P("")), want);
  for (const std::string& n : names) EXPECT_EQ(Cat(P(n)), "value of " + n);
  EXPECT_EQ(ListDir(P("dir \xe2\x98\x83")), std::vector<std::string>{"inner \x01"});
  CommandResult r = CtlRead({"get", store(), "caf\xc3\xa9"});
  EXPECT_EQ(r.out, "value of caf\xc3\xa9");
  ASSERT_NO_FATAL_FAILURE(Remount());
  EXPECT_EQ(ListDir(P("")), want);
  EXPECT_EQ(Cat(P("\xff\xfe raw bytes")), "value of \xff\xfe raw bytes");
}

// ---- lookup, getattr ----

// §3: st_size is the value's length, modes default to 0644/0755, st_ino is stable per key
// across new versions and distinct between keys.
TEST_P(EngineMountTest, StatOfFilesDirectoriesAndSymlinks) {
  ASSERT_EQ(mkdir(P("dir").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("dir/file"), "12345"), 0);
  ASSERT_EQ(symlink("dir/file", P("sym").c_str()), 0);

  struct stat d = Lstat(P("dir")), f = Lstat(P("dir/file")), s = Lstat(P("sym"));
  EXPECT_TRUE(S_ISDIR(d.st_mode));
  EXPECT_TRUE(S_ISREG(f.st_mode));
  EXPECT_TRUE(S_ISLNK(s.st_mode));
  EXPECT_EQ(f.st_size, 5);
  EXPECT_EQ(s.st_size, 8) << "a symlink's size is its target's length";
  EXPECT_EQ(f.st_mode & 07777, 0644u);
  EXPECT_EQ(d.st_mode & 07777, 0755u);
  EXPECT_EQ(f.st_nlink, 1u);
  EXPECT_GE(d.st_nlink, 1u);
  EXPECT_EQ(f.st_uid, getuid());
  std::set<ino_t> inos = {d.st_ino, f.st_ino, s.st_ino, Lstat(mnt()).st_ino};
  EXPECT_EQ(inos.size(), 4u) << "distinct keys have distinct st_ino";

  struct stat through;
  ASSERT_EQ(stat(P("sym").c_str(), &through), 0);
  EXPECT_EQ(through.st_ino, f.st_ino);

  // A new version of the key: new size, same st_ino.
  ASSERT_EQ(WriteFile(P("dir/file"), "a longer value"), 0);
  struct stat f2 = Lstat(P("dir/file"));
  EXPECT_EQ(f2.st_size, 14);
  EXPECT_EQ(f2.st_ino, f.st_ino);
  int fd = open(P("dir/file").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  struct stat fs;
  ASSERT_EQ(fstat(fd, &fs), 0);
  EXPECT_EQ(fs.st_size, 14);
  EXPECT_EQ(fs.st_ino, f.st_ino);
  close(fd);

  struct stat missing;
  EXPECT_EQ(ErrnoOf(lstat(P("nothing").c_str(), &missing)), ENOENT);
  EXPECT_EQ(ErrnoOf(lstat(P("dir/nothing/deeper").c_str(), &missing)), ENOENT);
}

// ---- readdir ----

TEST_P(EngineMountTest, ReaddirOfSmallDirectoryHasNamesAndTypes) {
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(P("d/sub").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("d/file"), "x"), 0);
  ASSERT_EQ(symlink("file", P("d/link").c_str()), 0);
  ASSERT_EQ(WriteFile(P("d/sub/inner"), "y"), 0);
  ASSERT_EQ(WriteFile(P("top"), "z"), 0);

  std::map<std::string, unsigned char> seen;
  DIR* dir = opendir(P("d").c_str());
  ASSERT_NE(dir, nullptr);
  while (dirent* e = readdir(dir)) seen[e->d_name] = e->d_type;
  closedir(dir);
  std::map<std::string, unsigned char> want = {
      {".", DT_DIR}, {"..", DT_DIR}, {"file", DT_REG}, {"link", DT_LNK}, {"sub", DT_DIR}};
  EXPECT_EQ(seen, want);
  EXPECT_EQ(ListDir(P("")), (std::vector<std::string>{"d", "top"}));
  EXPECT_EQ(ListDir(P("d/sub")), std::vector<std::string>{"inner"});
  int err = 0;
  ListDir(P("top"), &err);
  EXPECT_EQ(err, ENOTDIR);
  ListDir(P("nothing"), &err);
  EXPECT_EQ(err, ENOENT);

  // A listing follows changes.
  ASSERT_EQ(unlink(P("d/file").c_str()), 0);
  ASSERT_EQ(WriteFile(P("d/new"), "n"), 0);
  EXPECT_EQ(ListDir(P("d")), (std::vector<std::string>{"link", "new", "sub"}));
}

// Large directories stream completely, in order, on rw and ro mounts; seekdir works.
TEST_P(EngineMountTest, ReaddirOf10000EntriesIsComplete) {
  constexpr int kEntries = 10000;
  ASSERT_NO_FATAL_FAILURE(Unmount());
  std::vector<std::string> names;
  ASSERT_EQ(mkdir(Local("big").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(Local("big/d").c_str(), 0755), 0);
  for (int i = 0; i < kEntries; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "entry-%05d%s", i, std::string(i % 40, 'x').c_str());
    names.emplace_back(name);
    ASSERT_EQ(WriteFile(Local("big/d/") + name, std::to_string(i)), 0);
  }
  std::sort(names.begin(), names.end());
  CommandResult r = Ctl({"import", store(), Local("big")});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_NO_FATAL_FAILURE(Mount());

  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"d"}) << "and never .keyfs";
  std::vector<std::string> got = ListDir(P("d"));
  EXPECT_EQ(got.size(), names.size());
  EXPECT_TRUE(got == names) << "the listing differs from the 10,000 names";
  EXPECT_EQ(Cat(P("d/" + names[7777])), Cat(Local("big/d/" + names[7777])));

  // Unsorted order as returned, no duplicates; telldir/seekdir resume at the same entry.
  DIR* dir = opendir(P("d").c_str());
  ASSERT_NE(dir, nullptr);
  std::vector<std::string> order;
  std::vector<long> pos;
  while (true) {
    long p = telldir(dir);
    dirent* e = readdir(dir);
    if (e == nullptr) break;
    order.emplace_back(e->d_name);
    pos.push_back(p);
  }
  ASSERT_EQ(order.size(), names.size() + 2);
  std::set<std::string> unique(order.begin(), order.end());
  EXPECT_EQ(unique.size(), order.size()) << "a name was listed twice";
  for (size_t i : {size_t{1234}, size_t{9000}, size_t{3}}) {
    seekdir(dir, pos[i]);
    for (size_t j = i; j < i + 5; ++j) {
      dirent* e = readdir(dir);
      ASSERT_NE(e, nullptr);
      EXPECT_EQ(e->d_name, order[j]) << "after seekdir to entry " << i;
    }
  }
  closedir(dir);

  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  std::vector<std::string> ro_names = ListDir(ro + "/d");
  EXPECT_TRUE(ro_names == names) << "ro listing has " << ro_names.size() << " names";
  CommandResult ls = Sh("ls $MNT/d | wc -l");
  EXPECT_EQ(ls.out, "10000\n");
}

// ---- reads ----

// §3: reads at any offset and size.
TEST_P(EngineMountTest, PreadAtAnyOffsetAndSize) {
  std::mt19937_64 rng(42);
  const std::string value = RandomBytes(rng, 200000);
  ASSERT_EQ(WriteFile(P("blob"), value), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());  // a -o ro mount serves the store's synced state
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  ASSERT_TRUE(WaitFor([&] { return Lstat(ro + "/blob").st_size == 200000; }));
  for (const std::string& path : {P("blob"), ro + "/blob"}) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << path;
    for (off_t off : {0, 1, 511, 4095, 4096, 4097, 65535, 65536, 131071, 199999, 200000, 250000}) {
      for (size_t size : {0, 1, 100, 4096, 4097, 65536, 131072, 200000}) {
        std::string buf(size, '\0');
        ssize_t n = pread(fd, buf.data(), size, off);
        std::string want = off < 200000 ? value.substr(off, size) : "";
        ASSERT_EQ(n, static_cast<ssize_t>(want.size()))
            << path << " offset " << off << " size " << size << ": " << Err(errno);
        buf.resize(static_cast<size_t>(n));
        ASSERT_TRUE(buf == want) << path << " offset " << off << " size " << size;
      }
    }
    // Sequential reads of odd sizes, and lseek.
    EXPECT_EQ(lseek(fd, 0, SEEK_END), 200000);
    EXPECT_EQ(lseek(fd, 1000, SEEK_SET), 1000);
    std::string seq;
    char buf[777];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) seq.append(buf, static_cast<size_t>(n));
    EXPECT_TRUE(seq == value.substr(1000)) << path;
    close(fd);
  }
}

// §3: an open handle reads ONE committed version from open to close (rw mount).
TEST_P(EngineMountTest, OpenHandleKeepsReadingItsVersion) {
  const std::string v1 = Versioned(10000, 'a');
  ASSERT_EQ(WriteFile(P("k"), v1), 0);
  int r1 = open(P("k").c_str(), O_RDONLY);
  ASSERT_GE(r1, 0);
  char head[100];
  ASSERT_EQ(pread(r1, head, sizeof head, 0), 100);  // fill part of its page cache

  const std::string v2 = Versioned(100, 'b');  // shrink
  ASSERT_EQ(WriteFile(P("k"), v2), 0);
  int r2 = open(P("k").c_str(), O_RDONLY);
  ASSERT_GE(r2, 0);
  const std::string v3 = Versioned(30000, 'c');  // grow
  ASSERT_EQ(WriteFile(P("k"), v3), 0);

  EXPECT_EQ(CheckVersioned(PreadAll(r1, 1000)), "");
  EXPECT_TRUE(PreadAll(r1) == v1);
  EXPECT_TRUE(PreadAll(r2) == v2) << CheckVersioned(PreadAll(r2));
  struct stat st;
  ASSERT_EQ(fstat(r1, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(v1.size()));
  ASSERT_EQ(fstat(r2, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(v2.size()));
  EXPECT_TRUE(Cat(P("k")) == v3);
  close(r1);
  close(r2);
}

// FUSE-NOTES: a writer writes through the kernel inode its path resolved to and can grow
// its size under an earlier reader, who then reads its value followed by zeros.
TEST_P(EngineMountTest, WriterGrowingTheFileDoesNotPadAnEarlierReader) {
  const std::string old_value = Versioned(50, 'o');
  ASSERT_NO_FATAL_FAILURE(Seed("k", old_value));
  ASSERT_TRUE(WaitFor([&] { return Cat(P("k")) == old_value; }));
  int reader = open(P("k").c_str(), O_RDONLY);
  ASSERT_GE(reader, 0);
  EXPECT_TRUE(PreadAll(reader) == old_value);  // its pages are cached

  for (int flags : {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND}) {
    int writer = open(P("k").c_str(), flags);
    ASSERT_GE(writer, 0) << Err(errno);
    const std::string big(20000, 'w');
    ASSERT_EQ(pwrite(writer, big.data(), big.size(), 0), static_cast<ssize_t>(big.size()));
    // While the writer is open, and after it committed, the reader reads its version.
    struct stat st;
    ASSERT_EQ(fstat(reader, &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(old_value.size())) << "flags " << flags;
    std::string seen = PreadAll(reader);
    EXPECT_TRUE(seen == old_value) << "flags " << flags << ": " << CheckVersioned(seen);
    ASSERT_EQ(close(writer), 0);
    seen = PreadAll(reader);
    EXPECT_TRUE(seen == old_value) << "flags " << flags << ": " << CheckVersioned(seen);
    ASSERT_EQ(fstat(reader, &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(old_value.size())) << "flags " << flags;
  }
  close(reader);
}

// FUSE-NOTES: open(O_TRUNC) arrives as SETATTR(size 0) without a handle; its reply must not
// empty the inode other readers share.
TEST_P(EngineMountTest, OTruncDoesNotEmptyAnEarlierReader) {
  const std::string old_value = "hello world, the old value";
  ASSERT_NO_FATAL_FAILURE(Seed("k", old_value));
  ASSERT_TRUE(WaitFor([&] { return Cat(P("k")) == old_value; }));
  int reader = open(P("k").c_str(), O_RDONLY);
  ASSERT_GE(reader, 0);
  EXPECT_EQ(PreadAll(reader), old_value);
  int writer = open(P("k").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(writer, 0);
  struct stat st;
  ASSERT_EQ(fstat(reader, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(old_value.size()));
  EXPECT_EQ(PreadAll(reader), old_value);
  EXPECT_EQ(Cat(P("k")), old_value) << "a new open before close sees the committed value";
  ASSERT_EQ(write(writer, "hi", 2), 2);
  ASSERT_EQ(close(writer), 0);
  EXPECT_EQ(PreadAll(reader), old_value);
  EXPECT_EQ(Cat(P("k")), "hi");
  close(reader);
}

// §3: the same isolation on a -o ro mount, with commits made through another mount. (On dets
// the ro mount follows the store file, which changes at each sync.)
TEST_P(EngineMountTest, RoMountHandleKeepsReadingItsVersion) {
  ASSERT_EQ(WriteFile(P("k"), Versioned(5000, 'a')), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  int r1 = open((ro + "/k").c_str(), O_RDONLY);
  ASSERT_GE(r1, 0);
  char c;
  ASSERT_EQ(pread(r1, &c, 1, 0), 1);
  ASSERT_EQ(WriteFile(P("k"), Versioned(20, 'b')), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());
  ASSERT_TRUE(WaitFor([&] { return Cat(ro + "/k") == Versioned(20, 'b'); })) << Cat(ro + "/k");
  int r2 = open((ro + "/k").c_str(), O_RDONLY);
  ASSERT_GE(r2, 0);
  ASSERT_EQ(WriteFile(P("k"), Versioned(70000, 'c')), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());
  ASSERT_TRUE(WaitFor([&] { return Cat(ro + "/k") == Versioned(70000, 'c'); }));
  EXPECT_TRUE(PreadAll(r1, 3000) == Versioned(5000, 'a')) << CheckVersioned(PreadAll(r1));
  EXPECT_TRUE(PreadAll(r2) == Versioned(20, 'b')) << CheckVersioned(PreadAll(r2));
  close(r1);
  close(r2);
}

// Programs map files: a private read-only mapping shows the value.
TEST_P(EngineMountTest, MmapShowsTheValue) {
  std::mt19937_64 rng(7);
  const std::string value = RandomBytes(rng, 12345);
  ASSERT_EQ(WriteFile(P("m"), value), 0);
  int fd = open(P("m").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, value.size(), PROT_READ, MAP_PRIVATE, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << Err(errno);
  EXPECT_TRUE(std::string(static_cast<const char*>(p), value.size()) == value);
  munmap(p, value.size());
  close(fd);
}

// ---- writes ----

// §3: write at any offset; a write past the end leaves zeros in between.
TEST_P(EngineMountTest, WriteAtOffsetsAndPastTheEnd) {
  ASSERT_EQ(WriteFile(P("f"), "0123456789"), 0);
  int fd = open(P("f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "AB", 2, 3), 2);
  ASSERT_EQ(pwrite(fd, "Z", 1, 15), 1);
  ASSERT_EQ(lseek(fd, 0, SEEK_SET), 0);
  ASSERT_EQ(write(fd, "xy", 2), 2);
  const std::string want = std::string("xy2AB56789") + std::string(5, '\0') + "Z";
  EXPECT_EQ(PreadAll(fd), want) << "the writer reads its own writes";
  // The writer's own view of the size follows its writes, as on any filesystem.
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 16) << "fstat of the writer's fd";
  EXPECT_EQ(lseek(fd, 0, SEEK_END), 16) << "lseek(SEEK_END) of the writer's fd";
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("f")), want);
  EXPECT_EQ(CtlRead({"get", store(), "f"}).out, want);

  // A large write at a large offset into a new file.
  std::mt19937_64 rng(3);
  std::string chunk = RandomBytes(rng, 100000);
  fd = open(P("g").c_str(), O_WRONLY | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, chunk.data(), chunk.size(), 1 << 20), static_cast<ssize_t>(chunk.size()));
  ASSERT_EQ(close(fd), 0);
  std::string got = Cat(P("g"));
  ASSERT_EQ(got.size(), (1u << 20) + chunk.size());
  EXPECT_TRUE(got.substr(1 << 20) == chunk);
  EXPECT_EQ(got.find_first_not_of('\0'), size_t{1} << 20);
}

// §3: O_APPEND writes at the end of the value, also after a truncation on the same handle.
TEST_P(EngineMountTest, AppendWritesAtTheEnd) {
  ASSERT_EQ(WriteFile(P("log"), "abc"), 0);
  int fd = open(P("log").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "def", 3), 3);
  ASSERT_EQ(pwrite(fd, "ghi", 3, 0), 3) << "pwrite on O_APPEND appends on Linux";
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("log")), "abcdefghi");

  fd = open(P("log").c_str(), O_RDWR | O_APPEND);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 2), 0);
  ASSERT_EQ(write(fd, "X", 1), 1);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("log")), "abX");

  // Two appends in a row from separate opens (what `>>` does).
  ASSERT_EQ(WriteFile(P("log"), "1", O_WRONLY | O_APPEND), 0);
  ASSERT_EQ(WriteFile(P("log"), "2", O_WRONLY | O_APPEND | O_CREAT), 0);
  EXPECT_EQ(Cat(P("log")), "abX12");
  ASSERT_EQ(WriteFile(P("new-log"), "first", O_WRONLY | O_APPEND | O_CREAT), 0);
  EXPECT_EQ(Cat(P("new-log")), "first");
}

// FUSE-NOTES: O_TRUNC must not be lost (`echo hi > k` keeping the old tail).
TEST_P(EngineMountTest, OTruncReplacesTheWholeValue) {
  ASSERT_EQ(WriteFile(P("k"), "a long old value"), 0);
  ASSERT_EQ(WriteFile(P("k"), "hi", O_WRONLY | O_TRUNC), 0);
  EXPECT_EQ(Cat(P("k")), "hi");
  ASSERT_EQ(WriteFile(P("k"), "x", O_WRONLY | O_TRUNC | O_CREAT), 0);
  EXPECT_EQ(Cat(P("k")), "x");
  EXPECT_EQ(Lstat(P("k")).st_size, 1);
  // Without O_TRUNC the tail stays.
  ASSERT_EQ(WriteFile(P("k"), "abc"), 0);
  ASSERT_EQ(WriteFile(P("k"), "Z", O_WRONLY), 0);
  EXPECT_EQ(Cat(P("k")), "Zbc");
}

// FUSE-NOTES: a truncate-only handle commits (at release): the key becomes empty.
TEST_P(EngineMountTest, OTruncWithoutWriteCommitsAnEmptyValue) {
  ASSERT_EQ(WriteFile(P("k"), "something"), 0);
  int fd = open(P("k").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(close(fd), 0);
  // Visible when close returns, like any other new value.
  EXPECT_EQ(Cat(P("k")), "");
  EXPECT_EQ(Lstat(P("k")).st_size, 0);
  CommandResult r = CtlRead({"get", store(), "k"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "");
  // What users type to empty a log file.
  ASSERT_EQ(WriteFile(P("k"), "again"), 0);
  r = Sh(": > $MNT/k && wc -c < $MNT/k");
  EXPECT_EQ(r.out, "0\n") << r.err;
  ASSERT_EQ(WriteFile(P("k"), "again"), 0);
  r = Sh("truncate -s 0 $MNT/k && wc -c < $MNT/k");
  EXPECT_EQ(r.out, "0\n") << r.err;
}

// §3: O_CREAT|O_EXCL creates once, then EEXIST; O_CREAT alone opens without truncating.
TEST_P(EngineMountTest, CreateExclusive) {
  int fd = open(P("new").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0) << Err(errno);
  EXPECT_TRUE(S_ISREG(Lstat(P("new")).st_mode)) << "visible once create returns";
  ASSERT_EQ(write(fd, "v", 1), 1);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Lstat(P("new")).st_mode & 07777, 0600u);
  EXPECT_EQ(ErrnoOf(open(P("new").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644)), EEXIST);
  ASSERT_EQ(mkdir(P("dir").c_str(), 0755), 0);
  EXPECT_EQ(ErrnoOf(open(P("dir").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644)), EEXIST);
  ASSERT_EQ(symlink("nowhere", P("sym").c_str()), 0);
  EXPECT_EQ(ErrnoOf(open(P("sym").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644)), EEXIST);
  EXPECT_EQ(Cat(P("new")), "v");
  fd = open(P("new").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("new")), "v");
  // An empty file created and closed exists, empty.
  ASSERT_EQ(WriteFile(P("empty"), "", O_WRONLY | O_CREAT | O_EXCL), 0);
  EXPECT_EQ(CtlRead({"get", store(), "empty"}).status, 0);
  EXPECT_EQ(Lstat(P("empty")).st_size, 0);
}

// §3: truncate(2) shrinks and grows with zeros.
TEST_P(EngineMountTest, TruncateShrinksAndGrowsWithZeros) {
  ASSERT_EQ(WriteFile(P("t"), "0123456789"), 0);
  ASSERT_EQ(truncate(P("t").c_str(), 4), 0) << Err(errno);
  EXPECT_EQ(Cat(P("t")), "0123");
  EXPECT_EQ(Lstat(P("t")).st_size, 4);
  ASSERT_EQ(truncate(P("t").c_str(), 9000), 0);
  EXPECT_TRUE(SameBytes(Cat(P("t")), "0123" + std::string(8996, '\0')));
  EXPECT_EQ(Lstat(P("t")).st_size, 9000);
  EXPECT_EQ(CtlRead({"get", store(), "t"}).out.size(), 9000u);
  ASSERT_EQ(truncate(P("t").c_str(), 0), 0);
  EXPECT_EQ(Cat(P("t")), "");
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  EXPECT_EQ(ErrnoOf(truncate(P("d").c_str(), 0)), EISDIR);
  EXPECT_EQ(ErrnoOf(truncate(P("missing").c_str(), 0)), ENOENT);
}

// §3: ftruncate on a write handle, the result committed at close.
TEST_P(EngineMountTest, FtruncateShrinksAndGrowsWithZeros) {
  ASSERT_EQ(WriteFile(P("t"), "0123456789"), 0);
  int fd = open(P("t").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 3), 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 3);
  EXPECT_EQ(PreadAll(fd), "012");
  ASSERT_EQ(ftruncate(fd, 6), 0);
  EXPECT_EQ(PreadAll(fd), std::string("012\0\0\0", 6));
  EXPECT_EQ(Cat(P("t")), "0123456789") << "not visible before close";
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("t")), std::string("012\0\0\0", 6));
  EXPECT_EQ(Lstat(P("t")).st_size, 6);
}

// §3: the new value is invisible to others until close; visible to a new open right after
// close returns (no waiting), and to keyfsctl.
TEST_P(EngineMountTest, NewValueIsInvisibleUntilCloseThenVisibleAtOnce) {
  for (int round = 0; round < 20; ++round) {
    const std::string old_value = "old-" + std::to_string(round);
    const std::string new_value = "new value " + std::string(round * 300, 'n');
    ASSERT_EQ(WriteFile(P("k"), old_value), 0);
    int early = open(P("k").c_str(), O_RDONLY);
    ASSERT_GE(early, 0);
    int w = open(P("k").c_str(), round % 2 ? O_WRONLY | O_TRUNC : O_RDWR);
    ASSERT_GE(w, 0);
    if (round % 2 == 0) {
      ASSERT_EQ(ftruncate(w, 0), 0);
    }
    ASSERT_EQ(write(w, new_value.data(), new_value.size()), static_cast<ssize_t>(new_value.size()));
    EXPECT_EQ(Cat(P("k")), old_value) << "round " << round;
    // Anyone else sees the committed size. (The writing thread itself is answered its
    // own size: the kernel sends fstat and stat alike, without a handle. A child process
    // would inherit `w` and commit it when it exits, so ask from another thread.)
    off_t other_size = -1;
    std::thread([&] { other_size = Lstat(P("k")).st_size; }).join();
    EXPECT_EQ(other_size, static_cast<off_t>(old_value.size())) << "round " << round;
    EXPECT_EQ(PreadAll(early), old_value);
    if (round < 3) {
      EXPECT_EQ(CtlRead({"get", store(), "k"}).out, old_value);
    }
    ASSERT_EQ(close(w), 0);
    EXPECT_EQ(Cat(P("k")), new_value) << "round " << round;
    EXPECT_EQ(Lstat(P("k")).st_size, static_cast<off_t>(new_value.size()));
    EXPECT_EQ(PreadAll(early), old_value);
    if (round < 3) {
      EXPECT_EQ(CtlRead({"get", store(), "k"}).out, new_value);
    }
    close(early);
  }
}

// §3: fsync makes the new value visible and durable before close.
TEST_P(EngineMountTest, FsyncPublishesAndPersistsTheValue) {
  ASSERT_EQ(WriteFile(P("k"), "old"), 0);
  int w = open(P("k").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(w, 0);
  ASSERT_EQ(write(w, "synced", 6), 6);
  ASSERT_EQ(fsync(w), 0);
  EXPECT_EQ(Cat(P("k")), "synced");
  EXPECT_EQ(Ctl({"get", store(), "k"}).out, "synced") << "in the store file";
  ASSERT_EQ(write(w, "+more", 5), 5);
  ASSERT_EQ(fdatasync(w), 0);
  EXPECT_EQ(Ctl({"get", store(), "k"}).out, "synced+more");
  // Crash with the handle still open: what fsync returned for stays.
  ASSERT_EQ(write(w, "+lost?", 6), 6);
  daemon()->Kill();
  close(w);
  ASSERT_NO_FATAL_FAILURE(Mount());
  std::string v = Cat(P("k"));
  EXPECT_TRUE(v == "synced+more" || v == "synced+more+lost?") << v;
  int d = open(P("").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(d, 0);
  EXPECT_EQ(fsync(d), 0) << "fsync of a directory";
  close(d);
}

// FUSE-NOTES: bash's `echo x > k` dup2()s and closes the original fd before writing: the
// FLUSH of a handle that only truncated must not publish an empty value.
TEST_P(EngineMountTest, FlushOfADupedTruncatingFdDoesNotPublishEmpty) {
  ASSERT_EQ(WriteFile(P("k"), "old value"), 0);
  int fd = open(P("k").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  int dup_fd = dup(fd);
  ASSERT_GE(dup_fd, 0);
  ASSERT_EQ(close(fd), 0);  // FLUSH, no data written yet
  EXPECT_EQ(Cat(P("k")), "old value");
  EXPECT_EQ(CtlRead({"get", store(), "k"}).out, "old value");
  ASSERT_EQ(write(dup_fd, "new\n", 4), 4);
  ASSERT_EQ(close(dup_fd), 0);
  EXPECT_EQ(Cat(P("k")), "new\n");

  // Same with data written before the first close: that FLUSH commits, the last one too.
  fd = open(P("k").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  dup_fd = dup(fd);
  ASSERT_EQ(write(fd, "one", 3), 3);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("k")), "one");
  ASSERT_EQ(write(dup_fd, "+two", 4), 4);
  ASSERT_EQ(close(dup_fd), 0);
  EXPECT_EQ(Cat(P("k")), "one+two");
}

// §3: two writers to one key: the last close wins, whole, never interleaved.
TEST_P(EngineMountTest, TwoWritersLastCloseWins) {
  ASSERT_EQ(WriteFile(P("k"), "original"), 0);
  for (bool first_closes_last : {true, false}) {
    int w1 = open(P("k").c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(w1, 0);
    int w2 = open(P("k").c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(w2, 0);
    const std::string a = "first writer, a long value";
    const std::string b = "second";
    ASSERT_EQ(write(w1, a.data(), a.size()), static_cast<ssize_t>(a.size()));
    ASSERT_EQ(write(w2, b.data(), b.size()), static_cast<ssize_t>(b.size()));
    if (first_closes_last) {
      ASSERT_EQ(close(w2), 0);
      EXPECT_EQ(Cat(P("k")), b);
      ASSERT_EQ(close(w1), 0);
      EXPECT_EQ(Cat(P("k")), a);
    } else {
      ASSERT_EQ(close(w1), 0);
      EXPECT_EQ(Cat(P("k")), a);
      ASSERT_EQ(close(w2), 0);
      EXPECT_EQ(Cat(P("k")), b);
    }
  }
}

// §3: writers to different keys never lose each other's updates.
TEST_P(EngineMountTest, ConcurrentWritersToDifferentKeysLoseNothing) {
  constexpr int kThreads = 6, kRounds = 40;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        std::string key = P("w" + std::to_string(t));
        if (WriteFile(key, "thread " + std::to_string(t) + " round " + std::to_string(i)) != 0) {
          ++failures;
        }
        if (WriteFile(P("w" + std::to_string(t) + "-" + std::to_string(i)), "x") != 0) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(Cat(P("w" + std::to_string(t))),
              "thread " + std::to_string(t) + " round " + std::to_string(kRounds - 1));
  }
  EXPECT_EQ(ListDir(P("")).size(), static_cast<size_t>(kThreads * (kRounds + 1)));
  ASSERT_NO_FATAL_FAILURE(Remount());
  EXPECT_EQ(ListDir(P("")).size(), static_cast<size_t>(kThreads * (kRounds + 1)));
  EXPECT_EQ(Cat(P("w0")), "thread 0 round " + std::to_string(kRounds - 1));
}

// §3 concurrency: more concurrent writers in one directory than the daemon has worker
// threads. Every commit invalidates a dentry of that directory while creators hold its lock
// and wait for a worker: the daemon must not run out of threads that can answer them.
TEST_P(EngineMountTest, ManyConcurrentCreatorsInOneDirectoryDoNotDeadlock) {
  constexpr int kThreads = 48, kRounds = 4;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  std::atomic<int> first_error{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        for (const std::string& key :
             {"c" + std::to_string(t) + "-" + std::to_string(i), "c" + std::to_string(t)}) {
          int e = WriteFile(P(key), key);
          if (e != 0) {
            ++failures;
            int zero = 0;
            first_error.compare_exchange_strong(zero, e);
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0) << "first error: " << Err(first_error.load());
  EXPECT_EQ(ListDir(P("")).size(), static_cast<size_t>(kThreads * (kRounds + 1)));
}

// ---- directories ----

// §3: mkdir persists an empty directory; rmdir removes an empty one, ENOTEMPTY otherwise.
TEST_P(EngineMountTest, MkdirPersistsAndRmdirNeedsAnEmptyDirectory) {
  ASSERT_EQ(mkdir(P("empty").c_str(), 0700), 0);
  ASSERT_EQ(mkdir(P("full").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("full/f"), "x"), 0);
  EXPECT_EQ(ErrnoOf(mkdir(P("empty").c_str(), 0755)), EEXIST);
  EXPECT_EQ(ErrnoOf(mkdir(P("full/f").c_str(), 0755)), EEXIST);
  EXPECT_EQ(Lstat(P("empty")).st_mode & 07777, 0700u);
  EXPECT_EQ(CtlRead({"list", store()}).out, "empty/\nfull/\nfull/f\n");
  ASSERT_NO_FATAL_FAILURE(Remount());
  EXPECT_TRUE(S_ISDIR(Lstat(P("empty")).st_mode)) << "an empty directory persists";
  EXPECT_EQ(Lstat(P("empty")).st_mode & 07777, 0700u);

  EXPECT_EQ(ErrnoOf(rmdir(P("full").c_str())), ENOTEMPTY);
  EXPECT_EQ(Cat(P("full/f")), "x");
  EXPECT_EQ(ErrnoOf(rmdir(P("full/f").c_str())), ENOTDIR);
  EXPECT_EQ(ErrnoOf(unlink(P("full").c_str())), EISDIR);
  EXPECT_EQ(ErrnoOf(rmdir(P("missing").c_str())), ENOENT);
  ASSERT_EQ(rmdir(P("empty").c_str()), 0);
  EXPECT_FALSE(Exists(P("empty")));
  ASSERT_EQ(unlink(P("full/f").c_str()), 0);
  ASSERT_EQ(rmdir(P("full").c_str()), 0);
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{});
  EXPECT_EQ(CtlRead({"list", store()}).out, "");
}

// §3: `echo x > a/b` needs a to exist (ENOENT), and nothing is created.
TEST_P(EngineMountTest, MissingParentIsEnoent) {
  EXPECT_EQ(WriteFile(P("a/b"), "x"), ENOENT);
  EXPECT_EQ(ErrnoOf(mkdir(P("a/b").c_str(), 0755)), ENOENT);
  EXPECT_EQ(ErrnoOf(symlink("t", P("a/b").c_str())), ENOENT);
  CommandResult r = Sh("echo x > $MNT/a/b");
  EXPECT_NE(r.status, 0);
  r = Sh("bash -c 'echo x > $MNT/a/b'");
  EXPECT_NE(r.err.find("No such file or directory"), std::string::npos) << r.err;
  EXPECT_FALSE(Exists(P("a")));
  EXPECT_EQ(CtlRead({"list", store()}).out, "");
}

// §3: a key under a file gets ENOTDIR.
TEST_P(EngineMountTest, KeyUnderAFileIsEnotdir) {
  ASSERT_EQ(WriteFile(P("f"), "file"), 0);
  EXPECT_EQ(WriteFile(P("f/x"), "v"), ENOTDIR);
  EXPECT_EQ(ErrnoOf(mkdir(P("f/x").c_str(), 0755)), ENOTDIR);
  EXPECT_EQ(ErrnoOf(symlink("t", P("f/x").c_str())), ENOTDIR);
  struct stat st;
  EXPECT_EQ(ErrnoOf(stat(P("f/x").c_str(), &st)), ENOTDIR);
  CommandResult r = Sh("bash -c 'echo x > $MNT/f/x'");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("Not a directory"), std::string::npos) << r.err;
  EXPECT_EQ(CtlRead({"list", store()}).out, "f\n");
  EXPECT_EQ(Cat(P("f")), "file");
}

// §3: unlink deletes the key; an open reader keeps its version.
TEST_P(EngineMountTest, UnlinkDeletesTheKey) {
  ASSERT_EQ(WriteFile(P("k"), "value"), 0);
  int r = open(P("k").c_str(), O_RDONLY);
  ASSERT_GE(r, 0);
  ASSERT_EQ(unlink(P("k").c_str()), 0);
  EXPECT_FALSE(Exists(P("k")));
  EXPECT_EQ(Cat(P("k")), "<error: " + Err(ENOENT) + ">");
  EXPECT_EQ(CtlRead({"get", store(), "k"}).status, 1);
  EXPECT_EQ(PreadAll(r), "value");
  close(r);
  EXPECT_EQ(ErrnoOf(unlink(P("k").c_str())), ENOENT);
  ASSERT_EQ(symlink("x", P("s").c_str()), 0);
  ASSERT_EQ(unlink(P("s").c_str()), 0);
  EXPECT_FALSE(Exists(P("s")));
  // Re-created at once after the delete.
  ASSERT_EQ(WriteFile(P("k"), "again"), 0);
  EXPECT_EQ(Cat(P("k")), "again");
}

// ---- rename ----

// §3: rename is atomic and replaces the target; an open reader of the target keeps reading.
TEST_P(EngineMountTest, RenameReplacesTheTarget) {
  ASSERT_EQ(WriteFile(P("a"), "from a"), 0);
  ASSERT_EQ(WriteFile(P("b"), "old b"), 0);
  int rb = open(P("b").c_str(), O_RDONLY);
  ASSERT_GE(rb, 0);
  ASSERT_EQ(rename(P("a").c_str(), P("b").c_str()), 0);
  EXPECT_FALSE(Exists(P("a")));
  EXPECT_EQ(Cat(P("b")), "from a");
  EXPECT_EQ(PreadAll(rb), "old b");
  close(rb);
  EXPECT_EQ(CtlRead({"list", store()}).out, "b\n");

  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(rename(P("b").c_str(), P("d/c").c_str()), 0);
  EXPECT_EQ(Cat(P("d/c")), "from a");
  ASSERT_EQ(symlink("d/c", P("l").c_str()), 0);
  ASSERT_EQ(rename(P("l").c_str(), P("d/l").c_str()), 0);
  EXPECT_EQ(ReadLink(P("d/l")), "d/c");
  EXPECT_EQ(ErrnoOf(rename(P("missing").c_str(), P("x").c_str())), ENOENT);
  EXPECT_EQ(ListDir(P("d")), (std::vector<std::string>{"c", "l"}));
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"d"});
}

TEST_P(EngineMountTest, RenameNoreplace) {
  ASSERT_EQ(WriteFile(P("a"), "A"), 0);
  ASSERT_EQ(WriteFile(P("b"), "B"), 0);
  EXPECT_EQ(Renameat2(P("a"), P("b"), RENAME_NOREPLACE), EEXIST);
  EXPECT_EQ(Cat(P("a")), "A");
  EXPECT_EQ(Cat(P("b")), "B");
  EXPECT_EQ(Renameat2(P("a"), P("c"), RENAME_NOREPLACE), 0);
  EXPECT_FALSE(Exists(P("a")));
  EXPECT_EQ(Cat(P("c")), "A");
}

TEST_P(EngineMountTest, RenameExchange) {
  ASSERT_EQ(WriteFile(P("a"), "A"), 0);
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("d/inner"), "I"), 0);
  ASSERT_EQ(WriteFile(P("b"), "BB"), 0);
  int err = Renameat2(P("a"), P("b"), RENAME_EXCHANGE);
  ASSERT_TRUE(err == 0 || err == EINVAL) << Err(err);
  if (err == EINVAL) GTEST_SKIP() << "RENAME_EXCHANGE answered EINVAL (allowed by SPEC §3)";
  EXPECT_EQ(Cat(P("a")), "BB");
  EXPECT_EQ(Cat(P("b")), "A");
  EXPECT_EQ(Lstat(P("a")).st_size, 2);
  // A file and a directory swap, with the directory's children.
  ASSERT_EQ(Renameat2(P("a"), P("d"), RENAME_EXCHANGE), 0);
  EXPECT_EQ(Cat(P("d")), "BB");
  EXPECT_EQ(Cat(P("a/inner")), "I");
  EXPECT_EQ(Renameat2(P("a"), P("missing"), RENAME_EXCHANGE), ENOENT);
  EXPECT_EQ(Renameat2(P("a"), P("b"), RENAME_EXCHANGE | RENAME_NOREPLACE), EINVAL);
  EXPECT_EQ(CtlRead({"list", store()}).out, "a/\na/inner\nb\nd\n");
}

// §3: renaming a directory moves every key below it in one atomic step.
TEST_P(EngineMountTest, RenameDirectoryMovesEveryKeyAtomically) {
  constexpr int kKeys = 200;
  ASSERT_NO_FATAL_FAILURE(Unmount());
  for (int i = 0; i < kKeys; ++i) {
    std::string rel = "src/tree/d/s" + std::to_string(i % 7) + "/k" + std::to_string(i);
    std::error_code ec;
    stdfs::create_directories(stdfs::path(Local(rel)).parent_path(), ec);
    ASSERT_FALSE(ec) << ec.message();
    ASSERT_EQ(WriteFile(Local(rel), std::to_string(i)), 0);
  }
  ASSERT_EQ(Ctl({"import", store(), Local("src/tree")}).status, 0);
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_EQ(Cat(P("d/s3/k3")), "3");

  // Rename back and forth while keyfsctl lists the store: always all under one name. (On
  // dets each listing follows a sync, which must catch every rename whole as well.)
  std::atomic<bool> stop{false};
  std::atomic<int> renames{0}, rename_errors{0};
  std::thread mover([&] {
    bool at_d = true;
    while (!stop) {
      int e = Renameat2(P(at_d ? "d" : "e"), P(at_d ? "e" : "d"), 0);
      if (e != 0) {
        ++rename_errors;
        break;
      }
      at_d = !at_d;
      ++renames;
    }
  });
  int listings = 0;
  for (int i = 0; i < 15; ++i) {
    CommandResult r = CtlRead({"list", store()});
    ASSERT_EQ(r.status, 0);
    int under_d = 0, under_e = 0;
    std::istringstream lines(r.out);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("d/", 0) == 0 && line.back() != '/') ++under_d;
      if (line.rfind("e/", 0) == 0 && line.back() != '/') ++under_e;
    }
    EXPECT_TRUE((under_d == kKeys && under_e == 0) || (under_d == 0 && under_e == kKeys))
        << "d/ has " << under_d << " keys, e/ has " << under_e;
    ++listings;
  }
  stop = true;
  mover.join();
  EXPECT_EQ(rename_errors.load(), 0);
  EXPECT_GT(renames.load(), 0);
  const std::string at = Exists(P("d")) ? "d" : "e";
  const std::string gone = at == "d" ? "e" : "d";
  EXPECT_FALSE(Exists(P(gone)));
  EXPECT_EQ(Cat(P(at + "/s5/k12")), "12");
  EXPECT_EQ(ListDir(P(at + "/s0")).size(), static_cast<size_t>((kKeys + 6) / 7));
  ASSERT_EQ(rename(P(at).c_str(), P("moved").c_str()), 0);
  EXPECT_EQ(Cat(P("moved/s3/k199")), "199");
  EXPECT_EQ(CtlRead({"get", store(), "moved/s1/k1"}).out, "1");
  EXPECT_EQ(CtlRead({"get", store(), at + "/s1/k1"}).status, 1);
}

// Rename's errors, as a real filesystem gives them.
TEST_P(EngineMountTest, RenameErrors) {
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(P("d/sub").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(P("full").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("full/f"), "x"), 0);
  ASSERT_EQ(mkdir(P("empty").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("file"), "y"), 0);
  EXPECT_EQ(ErrnoOf(rename(P("d").c_str(), P("full").c_str())), ENOTEMPTY);
  EXPECT_EQ(ErrnoOf(rename(P("d").c_str(), P("d/sub/inside").c_str())), EINVAL);
  EXPECT_EQ(ErrnoOf(rename(P("file").c_str(), P("empty").c_str())), EISDIR);
  EXPECT_EQ(ErrnoOf(rename(P("d").c_str(), P("file").c_str())), ENOTDIR);
  EXPECT_EQ(Renameat2(P("file"), P("other"), RENAME_WHITEOUT), EINVAL);
  EXPECT_EQ(CtlRead({"list", store()}).out, "d/\nd/sub/\nempty/\nfile\nfull/\nfull/f\n");
  // A directory replaces an empty one.
  ASSERT_EQ(rename(P("d").c_str(), P("empty").c_str()), 0);
  EXPECT_TRUE(S_ISDIR(Lstat(P("empty/sub")).st_mode));
  EXPECT_FALSE(Exists(P("d")));
}

// ---- links, special files ----

// §3: symbolic links are entries (ln -s, readlink) and persist.
TEST_P(EngineMountTest, SymlinkAndReadlink) {
  ASSERT_EQ(mkdir(P("sites-available").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(P("sites-enabled").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("sites-available/default"), "server {}\n"), 0);
  ASSERT_EQ(symlink("../sites-available/default", P("sites-enabled/default").c_str()), 0);
  ASSERT_EQ(symlink("/etc/hostname", P("absolute").c_str()), 0);
  ASSERT_EQ(symlink("nowhere/target", P("dangling").c_str()), 0);
  EXPECT_EQ(ReadLink(P("sites-enabled/default")), "../sites-available/default");
  EXPECT_EQ(Cat(P("sites-enabled/default")), "server {}\n");
  EXPECT_EQ(ReadLink(P("absolute")), "/etc/hostname");
  EXPECT_EQ(Cat(P("dangling")), "<error: " + Err(ENOENT) + ">");
  EXPECT_EQ(ErrnoOf(symlink("x", P("absolute").c_str())), EEXIST);
  char buf[16];
  EXPECT_EQ(ErrnoOf(readlink(P("sites-available/default").c_str(), buf, sizeof buf)), EINVAL);
  EXPECT_EQ(CtlRead({"get", store(), "absolute"}).out, "/etc/hostname");
  ASSERT_NO_FATAL_FAILURE(Remount());
  EXPECT_TRUE(S_ISLNK(Lstat(P("sites-enabled/default")).st_mode));
  EXPECT_EQ(ReadLink(P("sites-enabled/default")), "../sites-available/default");
  EXPECT_EQ(Cat(P("sites-enabled/default")), "server {}\n");
}

// §3: hard links: EPERM, nothing created.
TEST_P(EngineMountTest, HardLinkIsEperm) {
  ASSERT_EQ(WriteFile(P("f"), "x"), 0);
  EXPECT_EQ(ErrnoOf(link(P("f").c_str(), P("g").c_str())), EPERM);
  EXPECT_EQ(ErrnoOf(linkat(AT_FDCWD, P("f").c_str(), AT_FDCWD, P("h").c_str(), 0)), EPERM);
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"f"});
  EXPECT_EQ(Lstat(P("f")).st_nlink, 1u);
}

// §3: special files: EPERM, nothing created.
TEST_P(EngineMountTest, SpecialFilesAreEperm) {
  EXPECT_EQ(ErrnoOf(mknod(P("fifo").c_str(), S_IFIFO | 0644, 0)), EPERM);
  EXPECT_EQ(ErrnoOf(mkfifo(P("fifo2").c_str(), 0644)), EPERM);
  EXPECT_EQ(ErrnoOf(mknod(P("chr").c_str(), S_IFCHR | 0644, makedev(1, 3))), EPERM);
  EXPECT_EQ(ErrnoOf(mknod(P("blk").c_str(), S_IFBLK | 0644, makedev(7, 0))), EPERM);
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(s, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string sock = P("sock");
  ASSERT_LT(sock.size(), sizeof addr.sun_path);
  std::memcpy(addr.sun_path, sock.c_str(), sock.size() + 1);
  EXPECT_EQ(ErrnoOf(bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr)), EPERM);
  close(s);
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{});
  EXPECT_EQ(CtlRead({"list", store()}).out, "");
  // A regular file through mknod is allowed (it is what mknod(1) of a file means).
  int e = ErrnoOf(mknod(P("regular").c_str(), S_IFREG | 0600, 0));
  EXPECT_TRUE(e == 0 || e == EPERM) << Err(e);
}

// ---- metadata ----

// §3: chmod, chown, utimensat persist (nanoseconds), through remount and in the store.
TEST_P(EngineMountTest, ChmodChownUtimensPersist) {
  ASSERT_EQ(WriteFile(P("f"), "content"), 0);
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(symlink("f", P("l").c_str()), 0);
  const timespec before_chmod = [] {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts;
  }();
  ASSERT_EQ(chmod(P("f").c_str(), 0640), 0) << Err(errno);
  ASSERT_EQ(chown(P("f").c_str(), 1234, 5678), 0) << Err(errno);
  timespec times[2] = {{1000, 0}, {1500000000, 123456789}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("f").c_str(), times, 0), 0) << Err(errno);
  ASSERT_EQ(chmod(P("d").c_str(), 0711), 0);
  ASSERT_EQ(chown(P("d").c_str(), 42, 43), 0);
  timespec dtimes[2] = {{1000, 0}, {1200000000, 1}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("d").c_str(), dtimes, 0), 0);
  ASSERT_EQ(lchown(P("l").c_str(), 7, 8), 0) << Err(errno);
  timespec ltimes[2] = {{1000, 0}, {1100000000, 999999999}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("l").c_str(), ltimes, AT_SYMLINK_NOFOLLOW), 0) << Err(errno);

  auto check = [&](const char* when) {
    struct stat f = Lstat(P("f")), d = Lstat(P("d")), l = Lstat(P("l"));
    EXPECT_EQ(f.st_mode, S_IFREG | 0640u) << when;
    EXPECT_EQ(f.st_uid, 1234u) << when;
    EXPECT_EQ(f.st_gid, 5678u) << when;
    EXPECT_EQ(f.st_mtim.tv_sec, 1500000000) << when;
    EXPECT_EQ(f.st_mtim.tv_nsec, 123456789) << when;
    EXPECT_GE(f.st_ctim.tv_sec, before_chmod.tv_sec) << when << ": ctime follows chmod";
    EXPECT_EQ(f.st_size, 7) << when;
    EXPECT_EQ(d.st_mode, S_IFDIR | 0711u) << when;
    EXPECT_EQ(d.st_uid, 42u) << when;
    EXPECT_EQ(d.st_gid, 43u) << when;
    EXPECT_EQ(d.st_mtim.tv_sec, 1200000000) << when;
    EXPECT_EQ(d.st_mtim.tv_nsec, 1) << when;
    EXPECT_TRUE(S_ISLNK(l.st_mode)) << when;
    EXPECT_EQ(l.st_uid, 7u) << when;
    EXPECT_EQ(l.st_mtim.tv_sec, 1100000000) << when;
    EXPECT_EQ(l.st_mtim.tv_nsec, 999999999) << when;
    EXPECT_EQ(Cat(P("f")), "content") << when;
  };
  check("mounted");
  // In the store: keyfsctl sees the value, and export carries mode and mtime.
  EXPECT_EQ(CtlRead({"get", store(), "f"}).out, "content");
  CommandResult r = CtlRead({"export", store(), Local("export")});
  ASSERT_EQ(r.status, 0) << r.err;
  struct stat e = Lstat(Local("export/f"));
  EXPECT_EQ(e.st_mode & 07777, 0640u);
  EXPECT_EQ(e.st_mtim.tv_sec, 1500000000);
  EXPECT_EQ(e.st_mtim.tv_nsec, 123456789);
  EXPECT_EQ(Lstat(Local("export/d")).st_mode & 07777, 0711u);
  ASSERT_NO_FATAL_FAILURE(Remount());
  check("after remount");
  // Metadata changes alone keep the value; a write keeps mode and owner.
  ASSERT_EQ(WriteFile(P("f"), "new content", O_WRONLY | O_TRUNC), 0);
  struct stat f = Lstat(P("f"));
  EXPECT_EQ(f.st_mode, S_IFREG | 0640u);
  EXPECT_EQ(f.st_uid, 1234u);
  EXPECT_EQ(f.st_gid, 5678u);
  // Permission bits above 0777 survive.
  ASSERT_EQ(chmod(P("d").c_str(), 01777), 0);
  EXPECT_EQ(Lstat(P("d")).st_mode & 07777, 01777u);
  ASSERT_EQ(chmod(P("f").c_str(), 04755), 0);
  EXPECT_EQ(Lstat(P("f")).st_mode & 07777, 04755u);
  // utimensat(UTIME_NOW) and futimens.
  timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("f").c_str(), now, 0), 0);
  EXPECT_GE(Lstat(P("f")).st_mtim.tv_sec, before_chmod.tv_sec);
}

// §3: chown is for root; a non-owner changes nothing.
TEST_P(EngineMountTest, NonOwnerCannotChangeMetadata) {
  ASSERT_EQ(chmod(dir().c_str(), 0755), 0);  // let the other user reach the mount
  ASSERT_NO_FATAL_FAILURE(Remount("allow_other"));
  ASSERT_EQ(WriteFile(P("f"), "root's"), 0);
  ASSERT_EQ(WriteFile(P("mine"), "user's"), 0);
  ASSERT_EQ(chown(P("mine").c_str(), 1000, 1000), 0);
  const std::string f = P("f"), mine = P("mine");
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setresgid(1000, 1000, 1000) != 0 ||
        setresuid(1000, 1000, 1000) != 0) {
      _exit(99);
    }
    if (chmod(f.c_str(), 0777) == 0 || errno != EPERM) _exit(10);
    if (chown(f.c_str(), 1000, 1000) == 0 || errno != EPERM) _exit(11);
    timespec t[2] = {{1, 0}, {1, 0}};
    if (utimensat(AT_FDCWD, f.c_str(), t, 0) == 0 || errno != EPERM) _exit(12);
    if (chmod(mine.c_str(), 0600) != 0) _exit(13);                    // the owner may
    if (chown(mine.c_str(), 0, 0) == 0 || errno != EPERM) _exit(14);  // giving away: no
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  EXPECT_EQ(WaitPid(pid, 10s), 0) << "the unprivileged child failed at step (exit code)";
  EXPECT_EQ(Lstat(P("f")).st_mode & 07777, 0644u);
  EXPECT_EQ(Lstat(P("f")).st_uid, 0u);
  EXPECT_EQ(Lstat(P("mine")).st_mode & 07777, 0600u);
  EXPECT_EQ(Lstat(P("mine")).st_uid, 1000u);
}

// §3: mtime follows writes (the commit's time).
TEST_P(EngineMountTest, WritesUpdateMtime) {
  ASSERT_EQ(WriteFile(P("f"), "v1"), 0);
  timespec old_times[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("f").c_str(), old_times, 0), 0);
  EXPECT_EQ(Lstat(P("f")).st_mtim.tv_sec, 1000);
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  ASSERT_EQ(WriteFile(P("f"), "v2"), 0);
  EXPECT_GE(Lstat(P("f")).st_mtim.tv_sec, now.tv_sec);
  ASSERT_EQ(utimensat(AT_FDCWD, P("f").c_str(), old_times, 0), 0);
  ASSERT_EQ(truncate(P("f").c_str(), 1), 0);
  EXPECT_GE(Lstat(P("f")).st_mtim.tv_sec, now.tv_sec);
}

// §3: times set through an open write handle stick: `cp -a` and `tar x` write, set the
// times with futimens, then close; the commit at close must not stamp its own time.
TEST_P(EngineMountTest, MtimeSetBeforeCloseSurvivesTheCommit) {
  int fd = open(P("f").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "data", 4), 4);
  timespec t[2] = {{1000, 0}, {981173106, 123456789}};
  ASSERT_EQ(futimens(fd, t), 0) << Err(errno);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  ASSERT_EQ(close(fd), 0);
  struct stat st = Lstat(P("f"));
  EXPECT_EQ(st.st_mtim.tv_sec, 981173106);
  EXPECT_EQ(st.st_mtim.tv_nsec, 123456789);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(Cat(P("f")), "data");
  // The same on an existing key, with utimensat by path while the writer is open.
  fd = open(P("f").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "new data", 8), 8);
  timespec t2[2] = {{1000, 0}, {1234567890, 5}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("f").c_str(), t2, 0), 0) << Err(errno);
  ASSERT_EQ(close(fd), 0);
  st = Lstat(P("f"));
  EXPECT_EQ(st.st_mtim.tv_sec, 1234567890);
  EXPECT_EQ(st.st_mtim.tv_nsec, 5);
  EXPECT_EQ(Cat(P("f")), "new data");
  ASSERT_NO_FATAL_FAILURE(Remount());
  EXPECT_EQ(Lstat(P("f")).st_mtim.tv_sec, 1234567890);
}

// §3: statfs reports sensible figures: files = entries of every kind.
TEST_P(EngineMountTest, StatfsIsSane) {
  for (const char* d : {"d1", "d1/d2", "d3"}) ASSERT_EQ(mkdir(P(d).c_str(), 0755), 0);
  for (const char* f : {"a", "b", "d1/c", "d1/d2/e", "d3/f"}) ASSERT_EQ(WriteFile(P(f), f), 0);
  ASSERT_EQ(symlink("a", P("s1").c_str()), 0);
  ASSERT_EQ(symlink("b", P("d3/s2").c_str()), 0);
  struct statvfs st;
  ASSERT_EQ(statvfs(mnt().c_str(), &st), 0) << Err(errno);
  EXPECT_GT(st.f_bsize, 0u);
  EXPECT_GT(st.f_frsize, 0u);
  EXPECT_GE(st.f_files, 10u);
  EXPECT_LE(st.f_ffree, st.f_files);
  EXPECT_LE(st.f_favail, st.f_ffree);
  EXPECT_EQ(st.f_files - st.f_ffree, 10u) << "used inodes = the store's 10 entries";
  EXPECT_LE(st.f_bfree, st.f_blocks);
  EXPECT_LE(st.f_bavail, st.f_bfree);
  EXPECT_EQ(st.f_namemax, 255u);
  CommandResult r = Sh("df -i $MNT | tail -n 1 | awk '{print $3}'");
  EXPECT_EQ(r.out, "10\n") << r.err;
}

// §3: metadata and content persist across unmount and mount.
TEST_P(EngineMountTest, EverythingPersistsAcrossRemount) {
  ASSERT_EQ(mkdir(P("etc").c_str(), 0750), 0);
  ASSERT_EQ(mkdir(P("etc/empty").c_str(), 0700), 0);
  std::mt19937_64 rng(5);
  const std::string blob = RandomBytes(rng, 100000);
  ASSERT_EQ(WriteFile(P("etc/blob"), blob, O_WRONLY | O_CREAT | O_EXCL, 0600), 0);
  ASSERT_EQ(WriteFile(P("etc/conf"), "a=1\n"), 0);
  ASSERT_EQ(WriteFile(P("etc/empty-file"), ""), 0);
  ASSERT_EQ(symlink("conf", P("etc/link").c_str()), 0);
  ASSERT_EQ(chown(P("etc/conf").c_str(), 10, 20), 0);
  timespec t[2] = {{5, 5}, {1234567890, 987654321}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("etc/conf").c_str(), t, 0), 0);
  std::map<std::string, std::string> before = TreeMeta(mnt());
  ASSERT_NO_FATAL_FAILURE(Remount());
  EXPECT_EQ(TreeMeta(mnt()), before);
  EXPECT_TRUE(Cat(P("etc/blob")) == blob);
  EXPECT_EQ(Cat(P("etc/link")), "a=1\n");
  EXPECT_EQ(Cat(P("etc/empty-file")), "");
  // And on a read-only mount of the same store.
  ASSERT_NO_FATAL_FAILURE(Unmount());
  ASSERT_NO_FATAL_FAILURE(Mount("ro"));
  EXPECT_EQ(TreeMeta(mnt()), before);
}

// ---- -o ro, caching, logging ----

TEST_P(EngineMountTest, RoMountRejectsWrites) {
  ASSERT_EQ(WriteFile(P("f"), "v"), 0);
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());  // a -o ro mount serves the store's synced state
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  EXPECT_EQ(Cat(ro + "/f"), "v");
  EXPECT_EQ(WriteFile(ro + "/f", "x", O_WRONLY), EROFS);
  EXPECT_EQ(WriteFile(ro + "/new", "x"), EROFS);
  EXPECT_EQ(ErrnoOf(mkdir((ro + "/d2").c_str(), 0755)), EROFS);
  EXPECT_EQ(ErrnoOf(unlink((ro + "/f").c_str())), EROFS);
  EXPECT_EQ(ErrnoOf(rename((ro + "/f").c_str(), (ro + "/g").c_str())), EROFS);
  EXPECT_EQ(ErrnoOf(chmod((ro + "/f").c_str(), 0600)), EROFS);
  EXPECT_EQ(ErrnoOf(truncate((ro + "/f").c_str(), 0)), EROFS);
  EXPECT_EQ(ErrnoOf(symlink("x", (ro + "/s").c_str())), EROFS);
  EXPECT_EQ(Cat(P("f")), "v");
  EXPECT_EQ(CtlRead({"list", store()}).out, "d/\nf\n");
  CommandResult r = Sh("cat " + ro + "/.keyfs/stats");
  EXPECT_NE(r.out.find("\"engine\""), std::string::npos) << r.out;
}

// §3: a -o ro mount serves repeated reads from the kernel's caches (no READ per open),
// and a read-write mount keeps the pages of an unchanged key.
TEST_P(EngineMountTest, RepeatedReadsAreServedFromKernelCaches) {
  ASSERT_NO_FATAL_FAILURE(Seed("k", std::string(3000, 'v')));
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  for (const std::string& m : {ro, mnt()}) {
    ASSERT_TRUE(WaitFor([&] { return Cat(m + "/k") == std::string(3000, 'v'); })) << m;
    const int64_t before = JsonNumber(Cat(m + "/.keyfs/stats"), "reads");
    ASSERT_GE(before, 0) << Cat(m + "/.keyfs/stats");
    for (int i = 0; i < 200; ++i) ASSERT_EQ(Cat(m + "/k"), std::string(3000, 'v'));
    const int64_t after = JsonNumber(Cat(m + "/.keyfs/stats"), "reads");
    EXPECT_LE(after - before, 20) << m << ": 200 reads of an unchanged key reached the daemon";
    // Lookups of cached entries neither.
    const int64_t lookups_before = JsonNumber(Cat(m + "/.keyfs/stats"), "lookups");
    for (int i = 0; i < 200; ++i) ASSERT_EQ(Lstat(m + "/k").st_size, 3000);
    const int64_t lookups_after = JsonNumber(Cat(m + "/.keyfs/stats"), "lookups");
    EXPECT_LE(lookups_after - lookups_before, 10) << m << ": stat of a cached key";
  }
}

// A -o ro mount has no OPEN: each `cat .keyfs/stats` must show fresh figures, and reading
// them must reach the daemon once, not again and again (dropping the page while the
// kernel copies it out made it read the page once more, in a loop under load).
TEST_P(EngineMountTest, StatsOnARoMountAreFreshAndReadOncePerOpen) {
  ASSERT_NO_FATAL_FAILURE(Seed("k", "v"));
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  // The first open of a file answers ENOSYS: the kernel sends no OPEN from then on.
  ASSERT_TRUE(WaitFor([&] { return Cat(ro + "/k") == "v"; }));
  int64_t last = JsonNumber(Cat(ro + "/.keyfs/stats"), "reads");
  const int64_t first = last;
  ASSERT_GE(first, 0);
  for (int i = 0; i < 100; ++i) {
    const int64_t now = JsonNumber(Cat(ro + "/.keyfs/stats"), "reads");
    ASSERT_GT(now, last) << "open " << i << " read stale figures";
    last = now;
  }
  EXPECT_LE(last - first, 110) << "100 opens of stats made the kernel read it again and again";
}

// §2/§5: log_file and log_level.
TEST_P(EngineMountTest, LogFileAndLogLevel) {
  ASSERT_NO_FATAL_FAILURE(Unmount());
  const std::string log = Local("debug.log");
  ASSERT_NO_FATAL_FAILURE(Mount("log_level=debug,log_file=" + log));
  ASSERT_EQ(WriteFile(P("logged-key"), "v"), 0);
  ASSERT_NO_FATAL_FAILURE(Unmount());
  std::string text = Cat(log);
  EXPECT_NE(text.find("logged-key"), std::string::npos) << "a debug line per commit:\n" << text;
  const std::string quiet = Local("error.log");
  ASSERT_NO_FATAL_FAILURE(Mount("log_level=error,log_file=" + quiet));
  ASSERT_EQ(WriteFile(P("quiet-key"), "v"), 0);
  ASSERT_NO_FATAL_FAILURE(Unmount());
  EXPECT_EQ(Cat(quiet).find("quiet-key"), std::string::npos) << Cat(quiet);
  EXPECT_EQ(Cat(quiet).find("info"), std::string::npos) << Cat(quiet);
  CommandResult r = Keyfs({store(), mnt(), "-f", "-o", "log_level=loud"});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
}

// ---- tools as users run them ----

TEST_P(EngineMountTest, ShellEchoAppendAndCat) {
  CommandResult r = Sh("echo hello > $MNT/f && echo world >> $MNT/f && cat $MNT/f");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nworld\n");
  r = Sh("echo hi > $MNT/f && cat $MNT/f");
  EXPECT_EQ(r.out, "hi\n") << "O_TRUNC must not keep the old tail";
  r = Sh("printf '' > $MNT/empty && wc -c < $MNT/empty");
  EXPECT_EQ(r.out, "0\n");
  r = Sh("cat $MNT/missing");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("No such file or directory"), std::string::npos);
  r = Sh("for i in 1 2 3; do echo line$i >> $MNT/log; done; cat $MNT/log; wc -l < $MNT/log");
  EXPECT_EQ(r.out, "line1\nline2\nline3\n3\n");
  r = Sh("bash -c 'echo from-bash > $MNT/b; cat $MNT/b'");
  EXPECT_EQ(r.out, "from-bash\n") << r.err;
  r = Sh("cat < $MNT/f; cat $MNT/f $MNT/log | wc -l");
  EXPECT_EQ(r.out, "hi\n4\n");
}

TEST_P(EngineMountTest, SedInPlace) {
  ASSERT_EQ(WriteFile(P("app.conf"), "listen=80\nname=foo\n", O_WRONLY | O_CREAT, 0640), 0);
  ASSERT_EQ(chown(P("app.conf").c_str(), 33, 33), 0);
  CommandResult r = Sh("sed -i 's/listen=80/listen=8080/' $MNT/app.conf && cat $MNT/app.conf");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "listen=8080\nname=foo\n");
  EXPECT_EQ(Cat(P("app.conf")), "listen=8080\nname=foo\n");
  struct stat st = Lstat(P("app.conf"));
  EXPECT_EQ(st.st_mode & 07777, 0640u) << "sed -i keeps the mode";
  EXPECT_EQ(st.st_uid, 33u);
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"app.conf"}) << "no temp file left";
  r = Sh("sed -i -e '$a added=1' -e 's/name=foo//' $MNT/app.conf && cat $MNT/app.conf");
  EXPECT_EQ(r.out, "listen=8080\n\nadded=1\n") << r.err;
  EXPECT_EQ(CtlRead({"get", store(), "app.conf"}).out, "listen=8080\n\nadded=1\n");
}

TEST_P(EngineMountTest, CpArchiveRoundTrip) {
  CommandResult r = Sh(kMakeTree);
  ASSERT_EQ(r.status, 0) << r.err;
  r = Sh("cp -a $SRC/tree $MNT/");
  ASSERT_EQ(r.status, 0) << r.err;
  r = Sh("diff -r --no-dereference $SRC/tree $MNT/tree");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(TreeMeta(P("tree")), TreeMeta(Local("src/tree")));

  ASSERT_EQ(mkdir(Local("out").c_str(), 0755), 0);
  r = Sh("cp -a $MNT/tree out/ && cp -a $MNT/. whole/");
  ASSERT_EQ(r.status, 0) << r.err;
  r = Sh("diff -r --no-dereference $SRC/tree out/tree");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(TreeMeta(Local("out/tree")), TreeMeta(Local("src/tree")));
  EXPECT_EQ(ListDir(Local("whole")), std::vector<std::string>{"tree"}) << "no .keyfs copied";
  r = Sh("$MNT/tree/bin/run.sh");
  EXPECT_EQ(r.out, "hi\n") << "an executable script in the mount runs: " << r.err;
}

TEST_P(EngineMountTest, RsyncArchiveRoundTrip) {
  CommandResult r = Sh("command -v rsync");
  if (r.status != 0) GTEST_FAIL() << "rsync is not installed (tools/install-deps.sh installs it)";
  r = Sh(kMakeTree);
  ASSERT_EQ(r.status, 0) << r.err;
  r = Sh("rsync -a $SRC/tree/ $MNT/r/");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(TreeMeta(P("r")), TreeMeta(Local("src/tree")));
  r = Sh("diff -r --no-dereference $SRC/tree $MNT/r");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  // Nothing left to do: sizes, times, modes and owners all match.
  r = Sh("rsync -ai --dry-run $SRC/tree/ $MNT/r/");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "") << "rsync still sees differences";
  r = Sh("rsync -a $MNT/r/ $SRC/../back/");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(TreeMeta(Local("back")), TreeMeta(Local("src/tree")));
  // An update through rsync (temp file + rename) and a delete.
  r =
      Sh("echo changed > $SRC/tree/etc/app/app.conf && rm $SRC/tree/var/lib/owned && "
         "rsync -a --delete $SRC/tree/ $MNT/r/");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(Cat(P("r/etc/app/app.conf")), "changed\n");
  EXPECT_FALSE(Exists(P("r/var/lib/owned")));
  // rsync deletes after it has set a directory's times, so the directory it deleted from
  // keeps the time of that deletion, on keyfs as on any local filesystem; the rest matches.
  auto mounted = TreeMeta(P("r")), source = TreeMeta(Local("src/tree"));
  EXPECT_GE(Lstat(P("r/var/lib")).st_mtim.tv_sec, Lstat(Local("src/tree/var/lib")).st_mtim.tv_sec);
  mounted.erase("var/lib");
  source.erase("var/lib");
  EXPECT_EQ(mounted, source);
  EXPECT_EQ(Sh("ls -a $MNT/r/etc/app").out, ".\n..\napp.conf\nblob-link\nconf.d\ncurrent\nsecret\n")
      << "no rsync temp file left";
  r = Sh("rsync -a $MNT/ whole/ && ls -a whole");
  EXPECT_EQ(r.out, ".\n..\nr\n") << "rsync of the whole mount must not copy .keyfs: " << r.err;
}

TEST_P(EngineMountTest, TarRoundTrip) {
  CommandResult r = Sh(kMakeTree);
  ASSERT_EQ(r.status, 0) << r.err;
  r =
      Sh("tar --format=posix -C $SRC -cf tree.tar tree && mkdir $MNT/t && "
         "tar -C $MNT/t -xpf tree.tar");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(TreeMeta(P("t/tree")), TreeMeta(Local("src/tree")));
  r = Sh("diff -r --no-dereference $SRC/tree $MNT/t/tree");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  r =
      Sh("tar --format=posix -C $MNT/t -cf out.tar tree && mkdir out && "
         "tar -C out -xpf out.tar");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(TreeMeta(Local("out/tree")), TreeMeta(Local("src/tree")));
  r = Sh("tar -C $MNT -cf all.tar . && tar -tf all.tar | grep -c keyfs");
  EXPECT_EQ(r.out, "0\n") << ".keyfs must not be archived";
  // Extracting over existing files replaces them.
  r = Sh("tar -C $MNT/t -xpf tree.tar && cat $MNT/t/tree/etc/app/app.conf");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "listen=80\nname=demo\n");
}

TEST_P(EngineMountTest, FindAndGrep) {
  CommandResult r =
      Sh("mkdir -p $MNT/a/b $MNT/c && echo needle > $MNT/a/x.conf && echo hay > $MNT/a/b/y.txt && "
         "printf 'more\\nneedle here\\n' > $MNT/c/z.conf && ln -s x.conf $MNT/a/link && "
         "mkdir $MNT/empty");
  ASSERT_EQ(r.status, 0) << r.err;
  r = Sh("cd $MNT && find . -type f | sort");
  EXPECT_EQ(r.out, "./a/b/y.txt\n./a/x.conf\n./c/z.conf\n");
  r = Sh("cd $MNT && find . | sort");
  EXPECT_EQ(r.out, ".\n./a\n./a/b\n./a/b/y.txt\n./a/link\n./a/x.conf\n./c\n./c/z.conf\n./empty\n");
  r = Sh("cd $MNT && find . -type l -o -type d -name empty | sort");
  EXPECT_EQ(r.out, "./a/link\n./empty\n");
  r = Sh("cd $MNT && grep -r needle . | sort");
  EXPECT_EQ(r.out, "./a/x.conf:needle\n./c/z.conf:needle here\n");
  r = Sh("grep -rl needle $MNT/c");
  EXPECT_EQ(r.out, mnt() + "/c/z.conf\n");
}

TEST_P(EngineMountTest, MvOfADirectory) {
  CommandResult r =
      Sh("mkdir -p $MNT/proj/src/lib $MNT/other && echo main > $MNT/proj/src/main.c && "
         "echo lib > $MNT/proj/src/lib/lib.c && mv $MNT/proj $MNT/other/proj2 && "
         "cat $MNT/other/proj2/src/main.c $MNT/other/proj2/src/lib/lib.c");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "main\nlib\n");
  EXPECT_FALSE(Exists(P("proj")));
  EXPECT_EQ(CtlRead({"list", store()}).out,
            "other/\nother/proj2/\nother/proj2/src/\nother/proj2/src/lib/\n"
            "other/proj2/src/lib/lib.c\nother/proj2/src/main.c\n");
  // Into and out of the mount (copy and delete across filesystems).
  r =
      Sh("mkdir -p $SRC/local/sub && echo l > $SRC/local/sub/f && mv $SRC/local $MNT/ && "
         "cat $MNT/local/sub/f && mv $MNT/other $SRC/ && cat $SRC/other/proj2/src/main.c");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "l\nmain\n");
  EXPECT_FALSE(Exists(Local("src/local")));
  EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"local"});
}

TEST_P(EngineMountTest, LnSymbolic) {
  CommandResult r = Sh(
      "mkdir $MNT/avail $MNT/enabled && echo site > $MNT/avail/one && echo two > $MNT/avail/two && "
      "ln -s ../avail/one $MNT/enabled/site && readlink $MNT/enabled/site && cat "
      "$MNT/enabled/site");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "../avail/one\nsite\n");
  r =
      Sh("ln -sfn ../avail/two $MNT/enabled/site && readlink $MNT/enabled/site && "
         "cat $MNT/enabled/site");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "../avail/two\ntwo\n");
  r = Sh("ls -l $MNT/enabled");
  EXPECT_NE(r.out.find("site -> ../avail/two"), std::string::npos) << r.out;
  EXPECT_EQ(ReadLink(P("enabled/site")), "../avail/two");
  EXPECT_EQ(ListDir(P("enabled")), std::vector<std::string>{"site"});
  r = Sh("ln -s $MNT/avail $MNT/abs && ls $MNT/abs/");
  EXPECT_EQ(r.out, "one\ntwo\n") << r.err;
  r = Sh("ln $MNT/avail/one $MNT/hard");
  EXPECT_NE(r.status, 0) << "ln without -s makes a hard link: EPERM";
  EXPECT_NE(r.err.find("Operation not permitted"), std::string::npos) << r.err;
}

// A legacy program that reads its config files at start and on reload.
TEST_P(EngineMountTest, PythonProgramReadsItsConfig) {
  const char* program = R"(import configparser, json, sys
base = sys.argv[1]
with open(base + "/config.json") as f:
    cfg = json.load(f)
ini = configparser.ConfigParser()
ini.read(base + "/app.ini")
print(cfg["name"], cfg["port"], ini["db"]["host"], ini.getint("db", "pool"))
)";
  ASSERT_EQ(mkdir(P("app").c_str(), 0755), 0);
  ASSERT_EQ(WriteFile(P("app/main.py"), program), 0);
  ASSERT_EQ(WriteFile(P("app/config.json"), R"({"name": "demo", "port": 8080})"), 0);
  ASSERT_EQ(WriteFile(P("app/app.ini"), "[db]\nhost = db.local\npool = 4\n"), 0);
  const std::string run =
      "PY=$(command -v /usr/bin/python3 || command -v python3); "
      "$PY $MNT/app/main.py $MNT/app";
  CommandResult r = Sh(run);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "demo 8080 db.local 4\n");
  // Reload after an edit.
  r =
      Sh("sed -i 's/pool = 4/pool = 16/' $MNT/app/app.ini && "
         "echo '{\"name\": \"renamed\", \"port\": 9}' > $MNT/app/config.json");
  ASSERT_EQ(r.status, 0) << r.err;
  r = Sh(run);
  EXPECT_EQ(r.out, "renamed 9 db.local 16\n") << r.err;
  // Same through a read-only mount, the way programs that only read should use keyfs.
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());  // a -o ro mount serves the store's synced state
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  ASSERT_TRUE(WaitFor([&] { return Cat(ro + "/app/app.ini").find("16") != std::string::npos; }));
  r = Sh("PY=$(command -v /usr/bin/python3 || command -v python3); $PY " + ro + "/app/main.py " +
         ro + "/app");
  EXPECT_EQ(r.out, "renamed 9 db.local 16\n") << r.err;
}

// ---- concurrency ----

struct HammerResult {
  std::atomic<uint64_t> reads{0}, bad{0}, errors{0}, writes{0}, write_errors{0};
  std::mutex mu;
  std::vector<std::string> samples;  // the first few problems
  std::set<size_t> lengths_seen;
  void Problem(const std::string& what) {
    std::lock_guard<std::mutex> l(mu);
    if (samples.size() < 10) samples.push_back(what);
  }
  std::string Report() {
    std::lock_guard<std::mutex> l(mu);
    std::string s;
    for (auto& x : samples) s += "\n  " + x;
    return s;
  }
};

// Lengths that shrink and grow across page and read-size boundaries.
size_t HammerLength(uint64_t i) {
  static const size_t kLengths[] = {1,    7000, 100,   4090,   4096, 65600, 2,
                                    9000, 300,  20000, 131072, 5,    4097,  50};
  return kLengths[i % (sizeof kLengths / sizeof kLengths[0])];
}

// Readers (open + read in 4 KiB pieces + close) of `read_path` while a writer rewrites
// `write_path` for `duration`, alternating O_TRUNC rewrites with in-place rewrites that
// grow or shrink the value through the old version's inode.
void Hammer(const std::string& write_path, const std::vector<std::string>& read_paths,
            std::chrono::milliseconds duration, HammerResult* res) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 3 * read_paths.size(); ++t) {
    const std::string path = read_paths[t % read_paths.size()];
    threads.emplace_back([&, path] {
      std::string v;
      char buf[4096];
      while (!stop) {
        int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          ++res->errors;
          res->Problem(path + ": open: " + Err(errno));
          continue;
        }
        v.clear();
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) v.append(buf, static_cast<size_t>(n));
        if (n < 0) {
          ++res->errors;
          res->Problem(path + ": read: " + Err(errno));
        }
        close(fd);
        ++res->reads;
        std::string why = CheckVersioned(v);
        if (!why.empty()) {
          ++res->bad;
          res->Problem(path + ": " + why + " (" + std::to_string(v.size()) + " bytes)");
        } else {
          std::lock_guard<std::mutex> l(res->mu);
          res->lengths_seen.insert(v.size());
        }
      }
    });
  }
  const auto end = std::chrono::steady_clock::now() + duration;
  for (uint64_t i = 1; std::chrono::steady_clock::now() < end; ++i) {
    const std::string v = Versioned(HammerLength(i), static_cast<char>('a' + i % 26));
    int e;
    if (i % 2) {
      e = WriteFile(write_path, v, O_WRONLY | O_TRUNC);
    } else {
      int fd = open(write_path.c_str(), O_RDWR | O_CLOEXEC);
      e = fd < 0 ? errno : 0;
      if (e == 0 && pwrite(fd, v.data(), v.size(), 0) != static_cast<ssize_t>(v.size())) e = errno;
      if (e == 0 && ftruncate(fd, static_cast<off_t>(v.size())) != 0) e = errno;
      if (fd >= 0 && close(fd) != 0 && e == 0) e = errno;
    }
    if (e != 0) {
      ++res->write_errors;
      res->Problem("writer: " + Err(e));
    }
    ++res->writes;
  }
  stop = true;
  for (auto& t : threads) t.join();
}

// §3: readers never see a mix, a value followed by zeros, or an empty value, on the
// read-write mount they share with the writer; keyfsctl get neither. On dets keyfsctl reads
// the synced state: a sync every second publishes new versions to it while the readers and
// the writer run.
TEST_P(EngineMountTest, ReadersNeverSeeTornValuesOnTheWritersMount) {
  if (dets()) {
    ASSERT_NO_FATAL_FAILURE(Remount("sync_interval=1"));
  }
  ASSERT_EQ(WriteFile(P("hot"), Versioned(10, 'z')), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());  // keyfsctl get finds the key from the start
  // keyfsctl get in a loop from a separate shell, started before the writer opens anything:
  // a fork of this process while the writer has its file open would send the kernel's FLUSH
  // for it (see ForkExecWhileWritingPublishesNothing). Its result is renamed into place:
  // the test waits for ctl.done to exist, and must not read it half written.
  const char* checker = R"sh(end=$(( $(date +%s) + 5 )); n=0; bad=0
while [ "$(date +%s)" -lt $end ]; do
  if ! v=$("$KEYFSCTL" get "$STORE" hot); then bad=$((bad+1)); echo "get failed" >> ctl.bad; continue; fi
  n=$((n+1)); len=${v%%:*}; body=${v#*:}
  rest=$(printf %s "$body" | tr -d "$(printf %.1s "$body")")
  if [ "${#body}" != "$len" ] || [ -n "$rest" ]; then
    bad=$((bad+1)); echo "torn: ${#body} bytes after header $len" >> ctl.bad
  fi
done
echo "$n $bad" > ctl.tmp && mv ctl.tmp ctl.done
)sh";
  ASSERT_EQ(WriteFile(Local("ctl-check.sh"), checker), 0);
  ASSERT_EQ(Sh("sh ctl-check.sh < /dev/null > /dev/null 2>&1 &").status, 0);
  HammerResult res;
  Hammer(P("hot"), {P("hot")}, 4s, &res);
  EXPECT_EQ(res.bad.load(), 0u) << res.Report();
  EXPECT_EQ(res.errors.load(), 0u) << res.Report();
  EXPECT_EQ(res.write_errors.load(), 0u) << res.Report();
  EXPECT_GT(res.writes.load(), 10u);
  EXPECT_GT(res.lengths_seen.size(), 2u) << "readers saw too few versions to mean anything";
  ASSERT_TRUE(WaitFor([&] { return Exists(Local("ctl.done")); }, 15s));
  std::string ctl = Cat(Local("ctl.done"));
  EXPECT_NE(ctl.rfind("0", 0), 0u) << "keyfsctl get never ran";
  EXPECT_EQ(ctl.substr(ctl.find(' ') + 1), "0\n")
      << "keyfsctl reads: " << ctl << Cat(Local("ctl.bad")).substr(0, 2000);
  std::printf("[ info ] %lu reads, %lu writes, %zu lengths seen; keyfsctl reads, bad: %s",
              static_cast<unsigned long>(res.reads.load()),
              static_cast<unsigned long>(res.writes.load()), res.lengths_seen.size(), ctl.c_str());
}

// §3: "before close nobody else sees partial data" also when the writing process forks and
// execs meanwhile (any multi-threaded program running a command): the child's copy of the
// descriptor is closed at exec, and the kernel sends FLUSH for it.
TEST_P(EngineMountTest, ForkExecWhileWritingPublishesNothing) {
  ASSERT_EQ(WriteFile(P("k"), "old value, long enough"), 0);
  int fd = open(P("k").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "NEW", 3, 0), 3);
  EXPECT_EQ(RunCommand({"true"}).status, 0);  // fork + exec: the child closes its copy
  EXPECT_EQ(Cat(P("k")), "old value, long enough");
  EXPECT_EQ(CtlRead({"get", store(), "k"}).out, "old value, long enough");
  ASSERT_EQ(ftruncate(fd, 3), 0);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(Cat(P("k")), "NEW");
}

// §3: the same for readers on a second, -o ro mount of the store. On dets that mount follows
// the store file, which a sync every second replaces while the readers run.
TEST_P(EngineMountTest, ReadersNeverSeeTornValuesOnARoMount) {
  if (dets()) {
    ASSERT_NO_FATAL_FAILURE(Remount("sync_interval=1"));
  }
  ASSERT_EQ(WriteFile(P("hot"), Versioned(10, 'z')), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  HammerResult res;
  Hammer(P("hot"), {ro + "/hot", P("hot")}, 4s, &res);
  EXPECT_EQ(res.bad.load(), 0u) << res.Report();
  EXPECT_EQ(res.errors.load(), 0u) << res.Report();
  EXPECT_EQ(res.write_errors.load(), 0u) << res.Report();
  EXPECT_GT(res.lengths_seen.size(), 2u);
  std::printf("[ info ] %lu reads, %lu writes, %zu lengths seen\n",
              static_cast<unsigned long>(res.reads.load()),
              static_cast<unsigned long>(res.writes.load()), res.lengths_seen.size());
}

// FUSE-NOTES: bash's early FLUSH under load: `echo > k` in a loop never shows readers an
// empty or partial value.
TEST_P(EngineMountTest, ShellRewritesNeverShowReadersAnEmptyValue) {
  ASSERT_EQ(WriteFile(P("k"), "value-0\n"), 0);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, bad{0};
  std::string first_bad;
  std::mutex mu;
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      while (!stop) {
        std::string v;
        int e = ReadFile(P("k"), &v);
        ++reads;
        bool ok = e == 0 && v.rfind("value-", 0) == 0 && v.back() == '\n' &&
                  v.find('\0') == std::string::npos;
        if (!ok) {
          ++bad;
          std::lock_guard<std::mutex> l(mu);
          if (first_bad.empty()) first_bad = e ? Err(e) : testing::PrintToString(v);
        }
      }
    });
  }
  CommandResult r = Sh("bash -c 'for i in $(seq 1 400); do echo value-$i > $MNT/k; done'", "", 60);
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(bad.load(), 0u) << "first bad read: " << first_bad;
  EXPECT_EQ(Cat(P("k")), "value-400\n");
}

// §2: every mount of a store picks up commits made by another mount promptly. A dets store
// has one writer: a second read-write mount is refused; a -o ro mount follows its syncs.
TEST_P(EngineMountTest, TwoReadWriteMountsSeeEachOthersCommits) {
  if (dets()) {
    ASSERT_EQ(WriteFile(P("k"), "from one"), 0);
    const std::string second = Local("mnt-rw2");
    ASSERT_EQ(mkdir(second.c_str(), 0755), 0);
    CommandResult r = MountExpectingRefusal(second, "engine=dets");
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_TRUE(IsOneKeyfsLine(r.err));
    EXPECT_NE(r.err.find(std::to_string(daemon()->pid())), std::string::npos)
        << "name the pid of the mount that holds the store: " << r.err;
    // The refusal took nothing from the first mount.
    EXPECT_EQ(Cat(P("k")), "from one");
    EXPECT_EQ(WriteFile(P("k2"), "still the writer"), 0);

    // A -o ro mount is no writer: allowed, it serves the synced state and follows syncs.
    ASSERT_NO_FATAL_FAILURE(SyncMount());
    std::string ro = MountSecond("ro");
    ASSERT_FALSE(ro.empty());
    EXPECT_EQ(Cat(ro + "/k"), "from one");
    EXPECT_EQ(Cat(ro + "/k2"), "still the writer");
    EXPECT_FALSE(Exists(ro + "/dir"));  // a cached negative entry
    int early = open((ro + "/k2").c_str(), O_RDONLY);
    ASSERT_GE(early, 0);
    ASSERT_EQ(mkdir(P("dir").c_str(), 0755), 0);
    ASSERT_EQ(rename(P("k").c_str(), P("dir/k").c_str()), 0);
    ASSERT_EQ(WriteFile(P("k2"), "changed, longer"), 0);
    ASSERT_NO_FATAL_FAILURE(SyncMount());
    EXPECT_TRUE(WaitFor([&] { return !Exists(ro + "/k") && Cat(ro + "/dir/k") == "from one"; }));
    EXPECT_TRUE(WaitFor([&] { return Cat(ro + "/k2") == "changed, longer"; })) << Cat(ro + "/k2");
    EXPECT_TRUE(WaitFor([&] { return ListDir(ro) == std::vector<std::string>{"dir", "k2"}; }));
    EXPECT_EQ(PreadAll(early), "still the writer");
    close(early);
    EXPECT_EQ(Daemon(ro)->Unmount(), 0);
    return;
  }
  std::string m2 = MountSecond("");
  ASSERT_FALSE(m2.empty());
  // Prime both mounts' caches, negative entries included.
  EXPECT_FALSE(Exists(m2 + "/k"));
  EXPECT_FALSE(Exists(P("k2")));
  EXPECT_EQ(ListDir(m2), std::vector<std::string>{});
  ASSERT_EQ(WriteFile(P("k"), "from one"), 0);
  EXPECT_TRUE(WaitFor([&] { return Cat(m2 + "/k") == "from one"; })) << Cat(m2 + "/k");
  EXPECT_TRUE(WaitFor([&] { return ListDir(m2) == std::vector<std::string>{"k"}; }));
  int early = open((m2 + "/k").c_str(), O_RDONLY);
  ASSERT_GE(early, 0);
  ASSERT_EQ(WriteFile(m2 + "/k", "from two, longer"), 0);
  EXPECT_TRUE(WaitFor([&] { return Cat(P("k")) == "from two, longer"; })) << Cat(P("k"));
  EXPECT_TRUE(WaitFor([&] { return Lstat(P("k")).st_size == 16; }));
  EXPECT_EQ(PreadAll(early), "from one");
  close(early);
  ASSERT_EQ(WriteFile(m2 + "/k2", "new key"), 0);
  EXPECT_TRUE(WaitFor([&] { return Cat(P("k2")) == "new key"; })) << Cat(P("k2"));
  ASSERT_EQ(mkdir(P("dir").c_str(), 0755), 0);
  EXPECT_TRUE(WaitFor([&] { return S_ISDIR(Lstat(m2 + "/dir").st_mode); }));
  ASSERT_EQ(rename(P("k").c_str(), P("dir/k").c_str()), 0);
  EXPECT_TRUE(
      WaitFor([&] { return !Exists(m2 + "/k") && Cat(m2 + "/dir/k") == "from two, longer"; }));
  ASSERT_EQ(unlink((m2 + "/k2").c_str()), 0);
  EXPECT_TRUE(WaitFor([&] { return !Exists(P("k2")); }));
  ASSERT_EQ(chmod((m2 + "/dir/k").c_str(), 0600), 0);
  EXPECT_TRUE(WaitFor([&] { return (Lstat(P("dir/k")).st_mode & 07777) == 0600; }));
  EXPECT_TRUE(WaitFor([&] { return ListDir(P("")) == std::vector<std::string>{"dir"}; }));
  EXPECT_TRUE(WaitFor([&] { return ListDir(m2) == std::vector<std::string>{"dir"}; }));
  // Both unmount cleanly.
  EXPECT_EQ(Daemon(m2)->Unmount(), 0);
}

// §2: keyfsctl put/del while mounted is seen through rw and ro mounts within 5 s. A dets store
// held by a read-write mount refuses keyfsctl writes, naming the daemon's pid; keyfsctl reads
// are allowed and see the last sync.
TEST_P(EngineMountTest, KeyfsctlWritesWhileMountedAreSeen) {
  if (dets()) {
    // No timer syncs (sync_interval=0): what the test has not synced stays unsynced.
    ASSERT_NO_FATAL_FAILURE(Remount("sync_interval=0"));
    const std::string pid = std::to_string(daemon()->pid());
    std::string ro = MountSecond("ro");
    ASSERT_FALSE(ro.empty());
    EXPECT_FALSE(Exists(ro + "/k"));  // a cached negative entry

    // A closed write is served by the mount at once, by keyfsctl and -o ro after a sync.
    ASSERT_EQ(WriteFile(P("k"), "v1"), 0);
    EXPECT_EQ(Cat(P("k")), "v1");
    CommandResult r = Ctl({"get", store(), "k"});
    EXPECT_EQ(r.status, 1) << "keyfsctl read a write that was never synced: " << r.out;
    EXPECT_EQ(Ctl({"list", store()}).out, "");
    EXPECT_FALSE(Exists(ro + "/k"));
    ASSERT_NO_FATAL_FAILURE(SyncMount());
    r = Ctl({"get", store(), "k"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "v1");
    EXPECT_EQ(Ctl({"list", store()}).out, "k\n");
    EXPECT_TRUE(WaitFor([&] { return Cat(ro + "/k") == "v1"; })) << Cat(ro + "/k");

    // put, del and import are refused, naming the daemon, and change nothing.
    ASSERT_EQ(Sh("mkdir -p imp/x && echo 1 > imp/x/one && echo 2 > imp/two").status, 0);
    const std::vector<std::vector<std::string>> writes = {{"put", store(), "k", "version two"},
                                                          {"put", store(), "a/b/c"},
                                                          {"del", store(), "k"},
                                                          {"import", store(), Local("imp")}};
    for (const std::vector<std::string>& w : writes) {
      r = Ctl(w, "from stdin");
      EXPECT_EQ(r.status, 1) << w[0] << " " << w[2] << ": " << r.out << r.err;
      EXPECT_NE(r.err.find(pid), std::string::npos)
          << w[0] << " must name the daemon's pid " << pid << ": " << r.err;
    }
    EXPECT_EQ(Ctl({"get", store(), "k"}).out, "v1");
    EXPECT_EQ(Ctl({"list", store()}).out, "k\n");
    r = Ctl({"verify", store()});
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(Cat(P("k")), "v1");
    EXPECT_EQ(ListDir(P("")), std::vector<std::string>{"k"});
    EXPECT_EQ(Cat(ro + "/k"), "v1");

    // A delete through the mount reaches keyfsctl and the ro mount at the sync, too.
    ASSERT_EQ(unlink(P("k").c_str()), 0);
    EXPECT_EQ(Ctl({"get", store(), "k"}).out, "v1") << "the delete is not synced yet";
    ASSERT_NO_FATAL_FAILURE(SyncMount());
    EXPECT_EQ(Ctl({"get", store(), "k"}).status, 1);
    EXPECT_TRUE(WaitFor([&] { return !Exists(ro + "/k"); }));
    return;
  }
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  for (const std::string& m : {mnt(), ro}) {
    EXPECT_FALSE(Exists(m + "/k"));  // a cached negative entry
    EXPECT_EQ(ListDir(m), std::vector<std::string>{});
  }
  ASSERT_EQ(Ctl({"put", store(), "k", "v1"}).status, 0);
  for (const std::string& m : {mnt(), ro}) {
    EXPECT_TRUE(WaitFor([&] { return Cat(m + "/k") == "v1"; })) << m << ": " << Cat(m + "/k");
    EXPECT_TRUE(WaitFor([&] { return ListDir(m) == std::vector<std::string>{"k"}; })) << m;
  }
  ASSERT_EQ(Ctl({"put", store(), "k", "version two"}).status, 0);
  ASSERT_EQ(Ctl({"put", store(), "a/b/c"}, "from stdin").status, 0);
  for (const std::string& m : {mnt(), ro}) {
    EXPECT_TRUE(WaitFor([&] { return Cat(m + "/k") == "version two"; })) << m;
    EXPECT_TRUE(WaitFor([&] { return Lstat(m + "/k").st_size == 11; })) << m;
    EXPECT_TRUE(WaitFor([&] { return Cat(m + "/a/b/c") == "from stdin"; })) << m;
  }
  ASSERT_EQ(Ctl({"del", store(), "k"}).status, 0);
  for (const std::string& m : {mnt(), ro}) {
    EXPECT_TRUE(WaitFor([&] { return !Exists(m + "/k"); })) << m;
    EXPECT_TRUE(WaitFor([&] { return ListDir(m) == std::vector<std::string>{"a"}; })) << m;
  }
  // import: one batch, every key visible.
  ASSERT_EQ(Sh("mkdir -p imp/x && echo 1 > imp/x/one && echo 2 > imp/two").status, 0);
  ASSERT_EQ(Ctl({"import", store(), Local("imp")}).status, 0);
  for (const std::string& m : {mnt(), ro}) {
    EXPECT_TRUE(WaitFor([&] { return Cat(m + "/x/one") == "1\n" && Cat(m + "/two") == "2\n"; }));
  }
}

// §4 via the mount: kill -9 at any moment leaves the store verify-clean with every write
// that was acknowledged durable: on snapshot every write whose close() returned; on dets every
// write whose fsync() returned, or closed before a sync through .keyfs/sync that returned.
TEST_P(EngineMountTest, SigkillLosesNoAcknowledgedWrite) {
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<std::string, std::string> acked;  // key -> last value acknowledged durable
  std::vector<std::thread> writers;
  for (int t = 0; t < 3; ++t) {
    writers.emplace_back([&, t] {
      std::map<std::string, std::string> closed;  // dets: closed since this thread's last sync
      for (int i = 0; !stop; ++i) {
        // New keys, and rewrites of one key per thread.
        std::string key = "t" + std::to_string(t) + "-" + std::to_string(i);
        std::string value =
            Versioned(static_cast<size_t>(i % 50) * 100 + 1, static_cast<char>('a' + i % 26));
        std::string hot = "hot" + std::to_string(t);
        if (!dets()) {
          if (WriteFile(P(key), value) != 0) break;
          if (WriteFile(P(hot), value) != 0) break;
          std::lock_guard<std::mutex> l(mu);
          acked[key] = value;
          acked[hot] = value;
          continue;
        }
        // dets: every other new key is fsync()ed, durable once fsync returns...
        if (i % 2 == 0) {
          int fd = open(P(key).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
          if (fd < 0) break;
          bool durable =
              write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size()) &&
              fsync(fd) == 0;
          if (durable) {
            std::lock_guard<std::mutex> l(mu);
            acked[key] = value;
          }
          if (close(fd) != 0 || !durable) break;
        } else {
          if (WriteFile(P(key), value) != 0) break;
          closed[key] = value;
        }
        if (WriteFile(P(hot), value) != 0) break;
        closed[hot] = value;
        // ... the others once a .keyfs/sync begun after their close() has returned.
        if (i % 5 == 4) {
          if (SyncErr(mnt()) != 0) break;
          std::lock_guard<std::mutex> l(mu);
          for (const auto& [k, v] : closed) acked[k] = v;
          closed.clear();
        }
      }
    });
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> l(mu);
        return acked.size() > 60;
      },
      15s));
  const pid_t pid = daemon()->pid();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = WaitPid(pid, 3s);
  if (status == -1) {
    // A daemon thread can be stuck in the kernel in an entry invalidation, waiting for a
    // directory lock that a client holds while it waits for an answer the dead daemon will
    // never send: the process cannot finish dying and its clients hang. What a user does
    // then is `umount -f`, which aborts the FUSE connection. Its system call is made from
    // here: a forked umount(8) would inherit the writer threads' descriptors on the mount and
    // FLUSH them when it execs, waiting forever for the dead daemon before it ever ran.
    std::printf("[ info ] keyfs survived SIGKILL (a thread stuck in the kernel); umount -f\n");
    umount2(mnt().c_str(), MNT_FORCE);  // "busy" while clients hang, but it aborts
    status = WaitPid(pid, 10s);
    EXPECT_NE(status, -1) << "umount -f did not release the killed daemon";
  }
  if (status != -1) daemon()->Adopt(0);  // reaped
  daemon()->Kill();                      // whatever is left, and the mount
  EXPECT_EQ(status, 128 + SIGKILL);
  stop = true;
  for (auto& t : writers) t.join();

  CommandResult v = Ctl({"verify", store()});
  EXPECT_EQ(v.status, 0) << v.out << v.err;
  ASSERT_NO_FATAL_FAILURE(Mount());
  size_t missing = 0;
  for (const auto& [key, value] : acked) {
    std::string got = Cat(P(key));
    if (key.rfind("hot", 0) == 0) {
      // A later write may have become durable after its acknowledgement was cut off: any
      // whole value at least as new is fine, the acknowledged one most likely.
      EXPECT_EQ(CheckVersioned(got), "") << key;
      continue;
    }
    if (got != value) ++missing;
    EXPECT_EQ(got, value) << key;
    if (missing > 5) break;
  }
  std::printf("[ info ] %zu acknowledged keys checked\n", acked.size());
}

// §4 via the mount: a full disk fails the commit's close() with ENOSPC (on dets: the sync's,
// through fsync() or .keyfs/sync), the previous value stays served (dets: stays on disk)
// and the daemon runs on.
TEST_P(EngineMountTest, DiskFullFailsTheCloseAndKeepsServing) {
  const std::string small = Local("small");
  ASSERT_EQ(mkdir(small.c_str(), 0755), 0);
  if (mount("tmpfs", small.c_str(), "tmpfs", 0, "size=2m") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here: " << Err(errno);
  }
  struct Umount {
    std::string path;
    ~Umount() { umount2(path.c_str(), MNT_DETACH); }
  } umount_guard{small};
  const std::string m = Local("mnt-small");
  ASSERT_EQ(mkdir(m.c_str(), 0755), 0);
  {
    KeyfsDaemon d(small + "/store", m, Local("small.log"));
    ASSERT_EQ(d.Start(MountOptions("")), "");
    ASSERT_EQ(WriteFile(m + "/k", "small value"), 0);
    if (!dets()) {
      const std::string big(3 << 20, 'b');
      int e = WriteFile(m + "/k", big);
      EXPECT_EQ(e, ENOSPC) << Err(e);
      EXPECT_EQ(Cat(m + "/k"), "small value");
      // fsync reports it too. (The create may meet a full disk while the failed commit's
      // leftovers are being cleaned up: retry it for a while.)
      int fd = -1;
      EXPECT_TRUE(WaitFor([&] {
        fd = open((m + "/other").c_str(), O_WRONLY | O_CREAT, 0644);
        return fd >= 0;
      })) << Err(errno);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(write(fd, big.data(), big.size()), static_cast<ssize_t>(big.size()));
      EXPECT_EQ(ErrnoOf(fsync(fd)), ENOSPC);
      close(fd);
      EXPECT_EQ(Cat(m + "/k"), "small value");
      ASSERT_TRUE(WaitFor([&] { return WriteFile(m + "/k", "still works") == 0; }))
          << "the daemon runs on: " << Err(WriteFile(m + "/k", "still works"));
      EXPECT_EQ(Cat(m + "/k"), "still works");
    } else {
      // dets: close() only buffers, so the disk fills at the sync, and fsync() and
      // .keyfs/sync return ENOSPC. The store keeps its last synced state, and the daemon runs
      // on with the writes it buffered (close() made them visible), for a later sync.
      ASSERT_EQ(SyncErr(m), 0);
      const std::string big(3 << 20, 'b');
      int e = WriteFile(m + "/k", big);
      ASSERT_EQ(e, 0) << "close() needs no disk space on dets: " << Err(e);
      EXPECT_TRUE(Cat(m + "/k") == big) << "visible once close() returned";
      int fd = open((m + "/other").c_str(), O_WRONLY | O_CREAT, 0644);
      ASSERT_GE(fd, 0) << Err(errno);
      ASSERT_EQ(write(fd, "x", 1), 1);
      EXPECT_EQ(ErrnoOf(fsync(fd)), ENOSPC);
      close(fd);
      EXPECT_EQ(SyncErr(m), ENOSPC);
      // On disk: the last completed sync, whole; keyfsctl reads it while mounted.
      CommandResult v = Ctl({"verify", small + "/store"});
      EXPECT_EQ(v.status, 0) << v.out << v.err;
      EXPECT_EQ(Ctl({"get", small + "/store", "k"}).out, "small value");
      EXPECT_EQ(Ctl({"list", small + "/store"}).out, "k\n");
      // Through the mount: everything close() acknowledged, still served.
      EXPECT_TRUE(Cat(m + "/k") == big);
      EXPECT_EQ(Cat(m + "/other"), "x");
      // Once the big value is replaced, a sync fits again. (It may meet a full disk while the
      // failed sync's leftovers are being cleaned up: retry it for a while.)
      ASSERT_EQ(WriteFile(m + "/k", "still works"), 0);
      ASSERT_TRUE(WaitFor([&] { return SyncErr(m) == 0; }))
          << "a sync after space came back: " << Err(SyncErr(m));
      EXPECT_EQ(Ctl({"get", small + "/store", "k"}).out, "still works");
      EXPECT_EQ(Cat(m + "/k"), "still works");
      ASSERT_EQ(unlink((m + "/other").c_str()), 0);
    }
    EXPECT_EQ(d.Unmount(), 0) << d.Log();
  }
  // Failed commits leave no temporary files behind (they would keep the disk full).
  std::vector<std::string> left;
  for (const std::string& n : ListDir(small)) {
    if (n.find(".old-") == std::string::npos) left.push_back(n);  // spares are by design
  }
  // (The commit log is the store's too.)
  std::erase(left, "store.log");
  EXPECT_EQ(left, (std::vector<std::string>{"store", "store.lock"}));
  CommandResult v = Ctl({"verify", small + "/store"});
  EXPECT_EQ(v.status, 0) << v.out << v.err;
  EXPECT_EQ(Ctl({"get", small + "/store", "k"}).out, "still works");
}

// ---- command line (§2) ----

TEST_P(MountCommandLineTest, MissingStoreWithoutCreateFails) {
  CommandResult r = Keyfs({Local("nostore"), mnt(), "-f"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_NE(r.err.find("nostore"), std::string::npos) << r.err;
  EXPECT_FALSE(Exists(Local("nostore")));
  EXPECT_FALSE(daemon()->mounted());
  // Also in the background mode.
  r = Keyfs({Local("nostore"), mnt()});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_FALSE(daemon()->mounted());
}

TEST_P(MountCommandLineTest, CorruptStoreIsReportedAsCorrupt) {
  ASSERT_EQ(Ctl({"create", store(), "--engine", engine_}).status, 0);
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(
        Ctl({"put", store(), "k" + std::to_string(i), std::string(1000, 'a' + i % 26)}).status, 0);
  }
  // STORE alone holds the store once its commit log is merged into it.
  ASSERT_EQ(Ctl({"merge", store()}).status, 0);
  ASSERT_NE(::access((store() + ".log").c_str(), F_OK), 0);
  std::string good;
  ASSERT_EQ(ReadFile(store(), &good), 0);
  struct Damage {
    std::string what;
    std::string bytes;
  };
  std::vector<Damage> damages = {{"truncated", good.substr(0, good.size() / 2)},
                                 {"garbage", std::string(good.size(), 'x')}};
  if (engine_ == "snapshot") {
    std::string header = good;
    header[40] ^= 0x01;  // the entry count: the header checksum no longer matches
    damages.push_back({"header", header});
  }
  for (const Damage& d : damages) {
    const std::string path = Local("corrupt-" + d.what);
    ASSERT_EQ(WriteFile(path, d.bytes), 0);
    CommandResult r = Keyfs({path, mnt(), "-f"});
    EXPECT_EQ(r.status, 1) << d.what;
    EXPECT_TRUE(IsOneKeyfsLine(r.err)) << d.what;
    EXPECT_NE(Lower(r.err).find("corrupt"), std::string::npos) << d.what << ": " << r.err;
    EXPECT_FALSE(daemon()->mounted()) << d.what;
    std::string after;
    ASSERT_EQ(ReadFile(path, &after), 0);
    EXPECT_TRUE(after == d.bytes) << d.what << ": the store was modified";
  }
  if (engine_ == "snapshot") {
    // A damaged record is caught at start or at first read; it is never served.
    std::string bad = good;
    size_t at = good.find(std::string(1000, 'k'));
    ASSERT_NE(at, std::string::npos);
    bad[at + 500] = 'K';
    const std::string path = Local("corrupt-record");
    ASSERT_EQ(WriteFile(path, bad), 0);
    KeyfsDaemon d(path, mnt(), Local("corrupt.log"));
    std::string err = d.Start("");
    if (err.empty()) {
      std::string v;
      int e = ReadFile(mnt() + "/k10", &v);
      EXPECT_EQ(e, EIO) << "a corrupt value was served: " << v.substr(0, 40);
      EXPECT_EQ(d.Unmount(), 0);
    } else {
      EXPECT_NE(Lower(err).find("corrupt"), std::string::npos) << err;
    }
  }
}

TEST_P(MountCommandLineTest, WrongEngineFails) {
  ASSERT_EQ(Ctl({"create", store(), "--engine", engine_}).status, 0);
  const std::string other = engine_ == "snapshot" ? "dets" : "snapshot";
  CommandResult r = Keyfs({store(), mnt(), "-f", "-o", "engine=" + other});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_NE(r.err.find(engine_), std::string::npos) << r.err;
  r = Keyfs({store(), mnt(), "-f", "-o", "engine=bogus"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_NE(r.err.find("bogus"), std::string::npos) << r.err;
  r = Keyfs({Local("new"), mnt(), "-f", "-o", "create,engine=bogus"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_FALSE(Exists(Local("new")));
  EXPECT_FALSE(daemon()->mounted());
  // The matching engine mounts.
  ASSERT_EQ(daemon()->Start("engine=" + engine_), "");
  EXPECT_EQ(daemon()->Unmount(), 0);
}

TEST_P(MountCommandLineTest, MissingMountpointFails) {
  CommandResult r = Keyfs({store(), Local("nomnt"), "-f", "-o", "create"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_NE(r.err.find("nomnt"), std::string::npos) << r.err;
  ASSERT_EQ(WriteFile(Local("afile"), "x"), 0);
  r = Keyfs({store(), Local("afile"), "-f", "-o", "create"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  r = Keyfs({store()});
  EXPECT_NE(r.status, 0) << "no mountpoint at all";
  EXPECT_EQ(r.err.rfind("keyfs: ", 0), 0u) << r.err;
}

TEST_P(MountCommandLineTest, HelpAndVersion) {
  CommandResult r = Keyfs({"--help"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("STORE"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("create"), std::string::npos);
  r = Keyfs({"--version"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("keyfs ", 0), 0u) << r.out;
  EXPECT_FALSE(Exists(store()));
}

// §2: without -f it returns only once the mount is ready; SIGTERM ends it with status 0.
TEST_P(MountCommandLineTest, BackgroundModeReturnsWhenMountedAndSigtermExitsZero) {
  // Become the daemon's reaper so that its exit status reaches us after it detaches.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  struct ResetReaper {
    ~ResetReaper() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } reset;
  struct stat parent_st = Lstat(dir());
  CommandResult r = Keyfs({store(), mnt(), "-o", "create,engine=" + engine_});
  ASSERT_EQ(r.status, 0) << r.err;
  // Immediately usable, no polling.
  struct stat st;
  ASSERT_EQ(stat(mnt().c_str(), &st), 0);
  EXPECT_NE(st.st_dev, parent_st.st_dev) << "keyfs returned before the mount was ready";
  EXPECT_TRUE(daemon()->mounted());
  EXPECT_NE(Cat(P(".keyfs/stats")).find("\"engine\""), std::string::npos);
  EXPECT_EQ(WriteFile(P("k"), "bg"), 0);

  const pid_t pid = FindKeyfsServing(mnt());
  ASSERT_GT(pid, 0) << "no keyfs process serving " << mnt();
  daemon()->Adopt(pid);
  EXPECT_EQ(daemon()->SignalAndWait(SIGTERM), 0);
  EXPECT_FALSE(daemon()->mounted());
  EXPECT_EQ(Ctl({"get", store(), "k"}).out, "bg");
}

// §2: fusermount3 -u, SIGTERM and SIGINT end a -f daemon with status 0, data synced.
TEST_P(MountCommandLineTest, UnmountAndSignalsEndTheDaemonWithStatusZero) {
  ASSERT_EQ(daemon()->Start(MountOptions("")), "");
  ASSERT_EQ(WriteFile(P("a"), "1"), 0);
  EXPECT_EQ(daemon()->Unmount(), 0) << "after fusermount3 -u";
  for (int sig : {SIGTERM, SIGINT}) {
    ASSERT_EQ(daemon()->Start(MountOptions("")), "");
    ASSERT_EQ(WriteFile(P("s" + std::to_string(sig)), "v"), 0);
    EXPECT_EQ(daemon()->SignalAndWait(sig), 0) << strsignal(sig);
    EXPECT_FALSE(daemon()->mounted()) << strsignal(sig);
    EXPECT_EQ(Ctl({"get", store(), "s" + std::to_string(sig)}).out, "v");
  }
  // umount(8) as well.
  ASSERT_EQ(daemon()->Start(MountOptions("")), "");
  CommandResult r = RunCommand({"umount", mnt()});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(WaitPid(daemon()->pid(), 10s), 0);
  daemon()->Adopt(0);
  EXPECT_EQ(Ctl({"list", store()}).out, "a\ns15\ns2\n");
}

// §2: -s and -d are accepted; -d logs at debug level on stderr.
TEST_P(MountCommandLineTest, SingleThreadAndDebugFlags) {
  ASSERT_EQ(daemon()->Start(MountOptions(""), {"-s"}), "");
  ASSERT_EQ(WriteFile(P("k"), "v"), 0);
  EXPECT_EQ(Cat(P("k")), "v");
  EXPECT_EQ(daemon()->Unmount(), 0);
  ASSERT_EQ(daemon()->Start(MountOptions(""), {"-d"}), "");
  ASSERT_EQ(WriteFile(P("debug-key"), "v"), 0);
  EXPECT_EQ(daemon()->Unmount(), 0);
  EXPECT_NE(daemon()->Log().find("debug"), std::string::npos) << daemon()->Log();
}

// §2: a snapshot store takes several writers (mounts and keyfsctl); a dets store has one,
// and whoever else wants to write is refused with the holder's pid.
TEST_P(MountCommandLineTest, SecondWriterOfTheStore) {
  ASSERT_EQ(daemon()->Start(MountOptions("")), "");
  ASSERT_EQ(WriteFile(P("k"), "v"), 0);
  const std::string second = Local("mnt-second");
  ASSERT_EQ(mkdir(second.c_str(), 0755), 0);
  const std::string pid = std::to_string(daemon()->pid());
  if (engine_ == "dets") {
    CommandResult r = Keyfs({store(), second, "-o", "engine=dets"});
    if (r.status == 0) {  // mounted after all: do not leave it behind
      RunCommand({"fusermount3", "-u", "-z", second});
      if (pid_t p = FindKeyfsServing(second)) kill(p, SIGKILL);
    }
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(IsOneKeyfsLine(r.err));
    EXPECT_NE(r.err.find(pid), std::string::npos) << "name the pid: " << r.err;
    r = Ctl({"put", store(), "x", "y"});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find(pid), std::string::npos) << r.err;
    // Reading is always allowed; it sees the last sync.
    ASSERT_NO_FATAL_FAILURE(SyncMount());
    r = Ctl({"get", store(), "k"});
    EXPECT_EQ(r.status, 0) << "reading is always allowed: " << r.err;
    EXPECT_EQ(r.out, "v");
  } else {
    KeyfsDaemon other(store(), second, Local("second.log"));
    ASSERT_EQ(other.Start("engine=" + engine_), "");
    EXPECT_EQ(WriteFile(second + "/k2", "from the second writer"), 0);
    EXPECT_EQ(Ctl({"put", store(), "k3", "from keyfsctl"}).status, 0);
    EXPECT_TRUE(WaitFor([&] { return Cat(P("k2")) == "from the second writer"; }));
    EXPECT_TRUE(WaitFor([&] { return Cat(second + "/k3") == "from keyfsctl"; }));
    EXPECT_EQ(other.Unmount(), 0);
  }
  EXPECT_EQ(daemon()->Unmount(), 0);
}

// §2: mount(8)'s generic options are accepted; libfuse's pass through.
TEST_P(MountCommandLineTest, GenericMountOptionsAreAccepted) {
  ASSERT_EQ(daemon()->Start(MountOptions("rw,dev,suid,exec,noatime,default_permissions")), "")
      << daemon()->Log();
  EXPECT_EQ(WriteFile(P("k"), "v"), 0);
  EXPECT_EQ(Cat(P("k")), "v");
  EXPECT_EQ(daemon()->Unmount(), 0);
}

// §2: FUSE unavailable is a keyfs line too (a private mount namespace hides /dev/fuse).
TEST_P(MountCommandLineTest, FuseUnavailableFails) {
  CommandResult probe = RunCommand({"unshare", "-m", "--propagation", "private", "true"});
  if (probe.status != 0) GTEST_SKIP() << "unshare -m not possible here: " << probe.err;
  CommandResult r = RunCommand({"unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                                "mount -t tmpfs none /dev && exec \"$0\" \"$@\"", KEYFS_BIN,
                                store(), mnt(), "-f", "-o", "create"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(IsOneKeyfsLine(r.err));
  EXPECT_NE(r.err.find("FUSE"), std::string::npos) << r.err;
}

// §2: the mount helper that `mount -t fuse.keyfs` and fstab lines run: mount.fuse3 starts
// `keyfs STORE MOUNTPOINT -o ...` in the background and returns once it is mounted. (mount(8)
// resets PATH to the system's, so the TYPE#SOURCE form names the keyfs under test.)
TEST_P(MountCommandLineTest, MountHelperTypeKeyfs) {
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  struct ResetReaper {
    ~ResetReaper() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } reset;
  CommandResult r = RunCommand({"mount.fuse3", std::string(KEYFS_BIN) + "#" + store(), mnt(), "-o",
                                "create,rw,nosuid,nodev,engine=" + engine_});
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_TRUE(daemon()->mounted());
  EXPECT_EQ(WriteFile(P("k"), "via mount.fuse3"), 0);
  EXPECT_EQ(Cat(P("k")), "via mount.fuse3");
  daemon()->Adopt(FindKeyfsServing(mnt()));
  r = RunCommand({"umount", mnt()});
  EXPECT_EQ(r.status, 0) << r.err;
  if (daemon()->pid() != 0) {
    EXPECT_EQ(WaitPid(daemon()->pid(), 10s), 0);
    daemon()->Adopt(0);
  }
  EXPECT_EQ(Ctl({"get", store(), "k"}).out, "via mount.fuse3");
}

std::string EngineName(const ::testing::TestParamInfo<std::string>& info) { return info.param; }
INSTANTIATE_TEST_SUITE_P(Engine, EngineMountTest, ::testing::Values("snapshot", "dets"),
                         EngineName);
INSTANTIATE_TEST_SUITE_P(Engine, MountCommandLineTest, ::testing::Values("snapshot", "dets"),
                         EngineName);

}  // namespace
}  // namespace keyfs::test
