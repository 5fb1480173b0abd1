// Who may do what through a mount, and what keyfs leaves on disk, tried as another user
// (uid/gid 65534 via setpriv) on both engines: a default mount is private to the user who
// mounted it; with allow_other,default_permissions the stored mode, owner and group decide;
// the store's files never let anyone else write them, whatever the umask.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "engine_mount_test.h"
#include "mount_fixture.h"

namespace keyfs::test {
namespace {

constexpr uid_t kNobody = 65534;

class SecurityMountTest : public EngineMountTest {
 protected:
  // Every file in dir() that belongs to the store (STORE, STORE.lock, temp and retired
  // files next to it), with its mode.
  std::vector<std::pair<std::string, mode_t>> StoreFiles() {
    const std::string base = store().substr(store().rfind('/') + 1);
    std::vector<std::pair<std::string, mode_t>> out;
    DIR* d = opendir(dir().c_str());
    if (d == nullptr) return out;
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.compare(0, base.size(), base) != 0) continue;
      struct stat st;
      if (lstat(Local(name).c_str(), &st) == 0) out.emplace_back(name, st.st_mode);
    }
    closedir(d);
    return out;
  }

  void ExpectNoneWritableByOthers(const std::string& when) {
    auto files = StoreFiles();
    EXPECT_FALSE(files.empty()) << when;
    for (const auto& [name, mode] : files) {
      EXPECT_EQ(mode & 022, 0u) << when << ": " << name << " has mode " << std::oct
                                << (mode & 07777);
    }
  }
};

// Without allow_other the kernel keeps every other user out of the mount, -o ro mounts
// included: they can neither look, nor read, nor write.
TEST_P(SecurityMountTest, DefaultMountIsPrivateToTheMountingUser) {
  ASSERT_EQ(chmod(dir().c_str(), 0755), 0) << Err(errno);
  ASSERT_EQ(WriteFile(P("f"), "secret\n"), 0);
  ASSERT_EQ(chmod(P("f").c_str(), 0666), 0);
  ASSERT_NO_FATAL_FAILURE(SyncIfDets());
  std::string ro = MountSecond("ro");
  ASSERT_FALSE(ro.empty());
  for (const std::string& m : {mnt(), ro}) {
    CommandResult r = AsUser(kNobody, kNobody,
                             "ls '" + m + "' && exit 10; cat '" + m + "/f' && exit 11; " +
                                 "echo x > '" + m + "/f' && exit 12; " + "echo x > '" + m +
                                 "/new' && exit 13; " + "stat '" + m + "/f' && exit 14; exit 0");
    EXPECT_EQ(r.status, 0) << m << ": " << r.out << r.err;
    EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << r.err;
  }
  EXPECT_EQ(Cat(P("f")), "secret\n");
  EXPECT_FALSE(Exists(P("new")));
}

// With allow_other,default_permissions the stored mode, owner and group are what the
// kernel checks, for files and directories, and a refused write changes nothing.
TEST_P(SecurityMountTest, StoredModesOwnersAndGroupsAreEnforced) {
  ASSERT_EQ(chmod(dir().c_str(), 0755), 0) << Err(errno);
  ASSERT_NO_FATAL_FAILURE(Remount("allow_other,default_permissions"));
  ASSERT_EQ(WriteFile(P("private"), "p\n"), 0);
  ASSERT_EQ(chmod(P("private").c_str(), 0600), 0);
  ASSERT_EQ(WriteFile(P("public"), "q\n"), 0);
  ASSERT_EQ(chmod(P("public").c_str(), 0644), 0);
  ASSERT_EQ(WriteFile(P("group"), "g\n"), 0);
  ASSERT_EQ(chown(P("group").c_str(), 0, kNobody), 0);
  ASSERT_EQ(chmod(P("group").c_str(), 0660), 0);
  ASSERT_EQ(mkdir(P("closed").c_str(), 0700), 0);
  ASSERT_EQ(WriteFile(P("closed/inner"), "i\n"), 0);
  ASSERT_EQ(chmod(P("closed/inner").c_str(), 0666), 0);
  CommandResult r = AsUser(kNobody, kNobody,
                           "cd \"$MNT\" || exit 9; "
                           "cat private && exit 10; echo x > private && exit 11; "
                           "cat public >/dev/null || exit 12; echo x > public && exit 13; "
                           "rm -f public && exit 14; "
                           "cat group >/dev/null || exit 15; echo mine > group || exit 16; "
                           "ls closed && exit 17; cat closed/inner && exit 18; "
                           "echo x > closed/inner && exit 19; "
                           "chmod 0666 private && exit 20; exit 0");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(Cat(P("private")), "p\n");
  EXPECT_EQ(Cat(P("public")), "q\n");
  EXPECT_EQ(Cat(P("group")), "mine\n");
  EXPECT_EQ(Cat(P("closed/inner")), "i\n");
  EXPECT_EQ(Lstat(P("private")).st_mode & 07777, 0600u);
}

// The store, its lock file and every temp or retired file the daemon and keyfsctl write
// are never writable by group or others, even under umask 000.
TEST_P(SecurityMountTest, StoreFilesAreNeverWritableByOthers) {
  ASSERT_NO_FATAL_FAILURE(Unmount());
  for (const auto& [name, mode] : StoreFiles()) ASSERT_EQ(unlink(Local(name).c_str()), 0) << name;
  const mode_t old = umask(0);
  Mount();                                                     // creates the store with umask 000
  CommandResult c = Ctl({"put", store() + "-ctl", "k", "v"});  // keyfsctl creates one too
  umask(old);
  ASSERT_FALSE(HasFatalFailure());
  for (int i = 0; i < 20; ++i) ASSERT_EQ(WriteFile(P("k" + std::to_string(i)), "v"), 0);
  ASSERT_NO_FATAL_FAILURE(SyncMount());
  ExpectNoneWritableByOthers("while mounted");
  ASSERT_NO_FATAL_FAILURE(Unmount());
  ExpectNoneWritableByOthers("after unmount");
  ASSERT_NO_FATAL_FAILURE(Mount());
}

INSTANTIATE_TEST_SUITE_P(Engine, SecurityMountTest, ::testing::Values("snapshot", "dets"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace keyfs::test
