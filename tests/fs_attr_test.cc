// The attribute rules of the daemon (fs/attr.h) without a kernel: what stat shows, who may
// chmod/chown/utimensat, and what a write by someone else does to setuid/setgid.
#include <fuse_lowlevel.h>
#include <gtest/gtest.h>

#include "attr.h"

namespace keyfs::fs {
namespace {

Meta FileOwnedBy(uid_t uid, gid_t gid, uint32_t mode) {
  Meta m = Meta::File(mode);
  m.uid = uid;
  m.gid = gid;
  m.atime_ns = 111;
  m.mtime_ns = 222;
  m.ctime_ns = 333;
  return m;
}

Caller User(uid_t uid, gid_t gid, std::vector<gid_t> groups = {}) {
  Caller c;
  c.uid = uid;
  c.gid = gid;
  c.pid = 1;
  c.groups = std::move(groups);
  return c;
}

TEST(FillAttr, TimesLinksAndTypes) {
  struct stat st;
  Meta f = FileOwnedBy(7, 8, 04755);
  f.atime_ns = -1'500'000'001;                           // before 1970, with nanoseconds
  f.mtime_ns = int64_t{4294967296} * 1'000'000'000 + 5;  // past 2^32 seconds
  FillAttr(42, f, 10, false, &st);
  EXPECT_EQ(st.st_mode, S_IFREG | 04755);
  EXPECT_EQ(st.st_nlink, 1u);
  EXPECT_EQ(st.st_atim.tv_sec, -2);
  EXPECT_EQ(st.st_atim.tv_nsec, 499'999'999);
  EXPECT_EQ(st.st_mtim.tv_sec, 4294967296);
  EXPECT_EQ(st.st_mtim.tv_nsec, 5);
  EXPECT_EQ(st.st_ctim.tv_nsec, 333);
  EXPECT_EQ(st.st_size, 10);
  FillAttr(42, f, 10, true, &st);
  EXPECT_EQ(st.st_nlink, 0u) << "a file unlinked while open has no links";
  Meta d = Meta::Dir();
  d.subdirs = 3;
  FillAttr(43, d, 0, false, &st);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0755);
  EXPECT_EQ(st.st_nlink, 5u) << "2 + subdirectories";
  Meta old = FileOwnedBy(0, 0, 0644);
  old.atime_ns = kTimeNow;  // a store written before atime was kept
  FillAttr(44, old, 0, false, &st);
  EXPECT_EQ(st.st_atim.tv_nsec, 222) << "mtime stands in for a missing atime";
}

TEST(PlanMetaChange, ChmodNeedsTheOwnerButAnyoneMayDropPrivileges) {
  const Meta cur = FileOwnedBy(1000, 1000, 06755);
  Meta out;
  AttrRequest a;
  a.to_set = FUSE_SET_ATTR_MODE;
  a.mode = 0700;
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), EPERM);
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, a, 0, &out), 0);
  EXPECT_EQ(out.mode, 0700u);
  EXPECT_EQ(PlanMetaChange(User(0, 0), cur, a, 0, &out), 0);
  // What the kernel sends with a truncate or chown by someone else.
  a.mode = 0755;
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), 0);
  EXPECT_EQ(out.mode, 0755u);
  a.mode = 04755;
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), 0);
  a.mode = 06777;  // adds bits: not a drop
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), EPERM);
  a.mode = 06755;  // the same mode: a chmod like any other, the owner's
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), EPERM);
  a.mode = 0644;  // drops privileges and more
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), EPERM);
}

TEST(PlanMetaChange, SetgidOfADirectoryNeedsTheGroupToo) {
  Meta dir = Meta::Dir(0755);
  dir.uid = 1000;
  dir.gid = 50;
  Meta out;
  AttrRequest a;
  a.to_set = FUSE_SET_ATTR_MODE;
  a.mode = 02755;
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), dir, a, 0, &out), 0);
  EXPECT_EQ(out.mode, 0755u);
  EXPECT_EQ(PlanMetaChange(User(1000, 1000, {50}), dir, a, 0, &out), 0);
  EXPECT_EQ(out.mode, 02755u);
}

TEST(PlanMetaChange, SetgidNeedsTheGroup) {
  const Meta cur = FileOwnedBy(1000, 50, 0755);
  Meta out;
  AttrRequest a;
  a.to_set = FUSE_SET_ATTR_MODE;
  a.mode = 02755;
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, a, 0, &out), 0);
  EXPECT_EQ(out.mode, 0755u) << "the owner outside the file's group cannot set setgid";
  EXPECT_EQ(PlanMetaChange(User(1000, 1000, {50}), cur, a, 0, &out), 0);
  EXPECT_EQ(out.mode, 02755u);
}

TEST(PlanMetaChange, ChownRules) {
  const Meta cur = FileOwnedBy(1000, 1000, 0644);
  Meta out;
  AttrRequest a;
  a.to_set = FUSE_SET_ATTR_UID;
  a.uid = 2000;
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, a, 0, &out), EPERM) << "give away a file";
  EXPECT_EQ(PlanMetaChange(User(0, 0), cur, a, 0, &out), 0);
  EXPECT_EQ(out.uid, 2000u);
  a.uid = 1000;
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, a, 0, &out), 0) << "to itself";
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, a, 0, &out), EPERM) << "not the owner";
  a.to_set = FUSE_SET_ATTR_GID;
  a.gid = 60;
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, a, 0, &out), EPERM) << "not its group";
  EXPECT_EQ(PlanMetaChange(User(1000, 1000, {60}), cur, a, 0, &out), 0);
  EXPECT_EQ(out.gid, 60u);
  EXPECT_EQ(PlanMetaChange(User(2000, 60), cur, a, 0, &out), EPERM) << "not the owner";
}

TEST(PlanMetaChange, TouchNeedsWritePermissionExplicitTimesOwnership) {
  const Meta cur = FileOwnedBy(1000, 50, 0664);
  Meta out;
  AttrRequest now;
  now.to_set =
      FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW;
  EXPECT_EQ(PlanMetaChange(User(2000, 50), cur, now, 999, &out), 0) << "group writer";
  EXPECT_EQ(out.atime_ns, 999);
  EXPECT_EQ(out.mtime_ns, 999);
  EXPECT_EQ(PlanMetaChange(User(2000, 2000, {50}), cur, now, 999, &out), 0) << "via groups";
  EXPECT_EQ(PlanMetaChange(User(2000, 2000), cur, now, 999, &out), EPERM) << "others: r--";
  AttrRequest set;
  set.to_set = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME;
  set.atime_ns = -5;
  set.mtime_ns = 0;
  EXPECT_EQ(PlanMetaChange(User(2000, 50), cur, set, 999, &out), EPERM);
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, set, 999, &out), 0);
  EXPECT_EQ(out.atime_ns, -5);
  EXPECT_EQ(out.mtime_ns, 0) << "the epoch is a time like any other";
  AttrRequest only_mtime;
  only_mtime.to_set = FUSE_SET_ATTR_MTIME;
  only_mtime.mtime_ns = 7;
  EXPECT_EQ(PlanMetaChange(User(1000, 1000), cur, only_mtime, 999, &out), 0);
  EXPECT_EQ(out.atime_ns, cur.atime_ns) << "UTIME_OMIT keeps atime";
}

TEST(WithoutPrivs, AsLinuxDoes) {
  EXPECT_EQ(WithoutPrivs(04777, true), 0777u);
  EXPECT_EQ(WithoutPrivs(02777, true), 0777u) << "setgid with group execute goes";
  EXPECT_EQ(WithoutPrivs(02767, true), 02767u) << "mandatory-locking style setgid stays";
  EXPECT_EQ(WithoutPrivs(02767, false), 0767u) << "unless the writer is not in the group";
  EXPECT_FALSE(WriteDropsPrivs(User(0, 0)));
  EXPECT_TRUE(WriteDropsPrivs(User(1000, 1000)));
  EXPECT_TRUE(PrivsNeedGroups(02767));
  EXPECT_FALSE(PrivsNeedGroups(02777));
}

TEST(MayWrite, ByOwnerGroupAndOthers) {
  const Meta m = FileOwnedBy(1000, 50, 0620);
  EXPECT_TRUE(MayWrite(User(1000, 1), m));
  EXPECT_TRUE(MayWrite(User(2000, 50), m));
  EXPECT_FALSE(MayWrite(User(2000, 51), m));
  EXPECT_TRUE(MayWrite(User(0, 0), m));
  EXPECT_FALSE(MayWrite(User(1000, 50), FileOwnedBy(1000, 50, 0464)))
      << "the owner's own bits decide for the owner";
}

}  // namespace
}  // namespace keyfs::fs
