// Attributes and the SETATTR rules (attr.h).
#include "attr.h"

#include <fuse_lowlevel.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace keyfs::fs {

namespace {

mode_t TypeBits(EntryType t) {
  switch (t) {
    case EntryType::kDir:
      return S_IFDIR;
    case EntryType::kSymlink:
      return S_IFLNK;
    case EntryType::kFile:
      break;
  }
  return S_IFREG;
}

}  // namespace

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return FromTimespec(ts);
}

timespec ToTimespec(int64_t ns) {
  timespec ts;
  ts.tv_sec = ns / 1000000000;
  ts.tv_nsec = ns % 1000000000;
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    --ts.tv_sec;
  }
  return ts;
}

int64_t FromTimespec(const timespec& ts) { return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec; }

bool Caller::InGroup(gid_t g) const {
  return g == gid || std::find(groups.begin(), groups.end(), g) != groups.end();
}

void FillAttr(uint64_t ino, const Meta& m, uint64_t size, bool unlinked, struct stat* st) {
  std::memset(st, 0, sizeof(*st));
  st->st_ino = ino;
  st->st_mode = TypeBits(m.type) | (m.mode & 07777);
  if (m.type == EntryType::kDir) {
    st->st_nlink = unlinked ? 0 : 2 + m.subdirs;
  } else {
    st->st_nlink = unlinked ? 0 : 1;
  }
  st->st_uid = m.uid;
  st->st_gid = m.gid;
  st->st_size = static_cast<off_t>(size);
  st->st_blksize = 4096;
  st->st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  st->st_mtim = ToTimespec(m.mtime_ns);
  // A store written before atime was kept has none: its mtime stands in.
  st->st_atim = ToTimespec(m.atime_ns == kTimeNow ? m.mtime_ns : m.atime_ns);
  st->st_ctim = ToTimespec(m.ctime_ns);
}

bool MayWrite(const Caller& c, const Meta& m) {
  if (c.uid == 0) return true;
  if (c.uid == m.uid) return m.mode & S_IWUSR;
  if (c.InGroup(m.gid)) return m.mode & S_IWGRP;
  return m.mode & S_IWOTH;
}

int PlanMetaChange(const Caller& c, const Meta& cur, const AttrRequest& a, int64_t now_ns,
                   Meta* out) {
  const bool root = c.uid == 0;
  const bool owner = root || c.uid == cur.uid;
  Meta m = cur;
  if (a.to_set & FUSE_SET_ATTR_MODE) {
    const uint32_t mode = a.mode & 07777;
    // What the kernel sends with a truncate or chown by someone else: the same mode
    // without setuid and/or setgid. Nothing else may be changed by a non-owner.
    const uint32_t had = cur.mode & 07777;
    const bool only_drops_privs = mode != had && (had & ~mode) == (had ^ mode) &&
                                  ((had ^ mode) & ~uint32_t{S_ISUID | S_ISGID}) == 0;
    if (!owner && !only_drops_privs) return EPERM;
    m.mode = mode;
    // chmod by someone outside the entry's group cannot set setgid (Linux drops it).
    if (!root && (m.mode & S_ISGID)) {
      const gid_t new_gid = (a.to_set & FUSE_SET_ATTR_GID) ? a.gid : cur.gid;
      if (!c.InGroup(new_gid)) m.mode &= ~uint32_t{S_ISGID};
    }
  }
  // chown: root; the owner may "change" the owner to itself and the group to one of its own.
  const bool is_owner = c.uid == cur.uid;
  if (a.to_set & FUSE_SET_ATTR_UID) {
    if (!root && !(is_owner && a.uid == cur.uid)) return EPERM;
    m.uid = a.uid;
  }
  if (a.to_set & FUSE_SET_ATTR_GID) {
    if (!root && !(is_owner && (a.gid == cur.gid || c.InGroup(a.gid)))) return EPERM;
    m.gid = a.gid;
  }
  const bool atime = a.to_set & FUSE_SET_ATTR_ATIME;
  const bool mtime = a.to_set & FUSE_SET_ATTR_MTIME;
  const bool atime_now = a.to_set & FUSE_SET_ATTR_ATIME_NOW;
  const bool mtime_now = a.to_set & FUSE_SET_ATTR_MTIME_NOW;
  const bool explicit_time = (atime && !atime_now) || (mtime && !mtime_now);
  if (atime || mtime || atime_now || mtime_now) {
    if (explicit_time ? !owner : !(owner || MayWrite(c, cur))) return EPERM;
  }
  if (atime_now) {
    m.atime_ns = now_ns;
  } else if (atime) {
    m.atime_ns = a.atime_ns;
  }
  if (mtime_now) {
    m.mtime_ns = now_ns;
  } else if (mtime) {
    m.mtime_ns = a.mtime_ns;
  }
  *out = m;
  return 0;
}

uint32_t WithoutPrivs(uint32_t mode, bool writer_in_group) {
  mode &= ~uint32_t{S_ISUID};
  if ((mode & S_IXGRP) || !writer_in_group) mode &= ~uint32_t{S_ISGID};
  return mode;
}

}  // namespace keyfs::fs
