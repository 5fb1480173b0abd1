// Attributes: how an entry's stored Meta becomes a struct stat, and the rules a SETATTR
// follows (who may change what, and what the new metadata is). Pure functions: no kernel,
// no engine, so the rules are tested without a mount (tests/fs_attr_test.cc).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <ctime>
#include <vector>

#include "keyfs/store/engine.h"

namespace keyfs::fs {

// Wall clock, nanoseconds since the epoch.
int64_t NowNs();
timespec ToTimespec(int64_t ns);
int64_t FromTimespec(const timespec& ts);

// Who sent a request: the kernel's fsuid/fsgid and thread id, and (where a rule needs it)
// the supplementary groups.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  std::vector<gid_t> groups;  // filled only by requests whose rules look at groups
  bool InGroup(gid_t g) const;
};

// Fills *st for an entry shown as inode number `ino`: type and permission bits, owner,
// size, the three times and the link count (files 1, 0 once unlinked; directories
// 2 + subdirectories).
void FillAttr(uint64_t ino, const Meta& m, uint64_t size, bool unlinked, struct stat* st);

// Whether `c` may write an entry with metadata `m` by its permission bits (root may).
bool MayWrite(const Caller& c, const Meta& m);

// What a SETATTR asks for, in the kernel's terms (FUSE_SET_ATTR_* bits of `to_set`).
struct AttrRequest {
  int to_set = 0;
  uint32_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
};

// The metadata an entry gets from a SETATTR's mode, owner and time bits (the size is the
// write path's business), or an errno: EPERM when `c` may not make the change. Linux's
// ownership rules for these changes (checked here whether or not the mount has
// default_permissions; access to open a file is the kernel's check, with
// default_permissions):
// - chmod: the owner or root. Anyone may clear setuid/setgid and nothing else (the kernel
//   sends that with a truncate or chown by someone else).
// - chown: root; the owner may only change the group to one of its groups.
// - explicit times: the owner or root; UTIME_NOW for both: also whoever may write.
// Times asked as "now" get `now_ns`.
int PlanMetaChange(const Caller& c, const Meta& cur, const AttrRequest& a, int64_t now_ns,
                   Meta* out);

// Whether a write or truncate by `c` takes setuid/setgid away (Linux's should_remove_suid:
// everyone but root), and the mode that is left: without setuid, and without setgid when
// the group may execute or the writer is not in the file's group (Linux 6.2 and later).
inline bool WriteDropsPrivs(const Caller& c) { return c.uid != 0; }
uint32_t WithoutPrivs(uint32_t mode, bool writer_in_group);
// Whether deciding WithoutPrivs for a write to a file of mode `mode` needs the writer's
// supplementary groups (setgid without group execute).
inline bool PrivsNeedGroups(uint32_t mode) { return (mode & S_ISGID) && !(mode & S_IXGRP); }

}  // namespace keyfs::fs
