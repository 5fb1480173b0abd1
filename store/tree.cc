// Tree semantics of a mutation (ApplyMutation), shared by both engines.
#include "tree.h"

namespace keyfs {

namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// True if `key` lies strictly below `dir` ("a/b" below "a").
bool IsBelow(std::string_view key, std::string_view dir) {
  return key.size() > dir.size() && key[dir.size()] == '/' && StartsWith(key, dir);
}

std::string Quote(std::string_view key) { return "'" + std::string(key) + "'"; }

// The first component of a key the filesystem shows its control directory under: the
// store refuses to create keys there (a mount could never reach them). Keys that an older
// store already holds stay readable, deletable and movable out.
constexpr std::string_view kReservedName = ".keyfs";

bool IsReserved(std::string_view key) {
  return StartsWith(key, kReservedName) &&
         (key.size() == kReservedName.size() || key[kReservedName.size()] == '/');
}

Status Reserved(std::string_view key) {
  return Status::InvalidArgument(Quote(key) + ": " + std::string(kReservedName) +
                                 " is reserved for the mount's control directory");
}

// Records that directory `dir` ("" = the root) gained or lost entries in this commit: its
// mtime and ctime become the commit's time and its count of child directories moves by
// `subdir_delta`.
Status TouchDir(MutableTree& tree, std::string_view dir, int subdir_delta, uint64_t version,
                int64_t now_ns) {
  TreeValue v;
  KEYFS_RETURN_IF_ERROR(tree.Lookup(dir, &v));
  if (v.meta.type != EntryType::kDir) return Status::NotDirectory(Quote(dir));
  v.meta.mtime_ns = v.meta.ctime_ns = now_ns;
  if (subdir_delta < 0 && v.meta.subdirs < static_cast<uint32_t>(-subdir_delta)) {
    return Status::Corruption(Quote(dir) + ": child directory count below zero");
  }
  v.meta.subdirs = static_cast<uint32_t>(static_cast<int64_t>(v.meta.subdirs) + subdir_delta);
  v.version = version;
  v.value = {};
  tree.Set(dir, v);
  return Status::OK();
}

int DirDelta(const Meta& m) { return m.type == EntryType::kDir ? 1 : 0; }

// OK if `key`'s parent exists as a directory (creating it, and its missing ancestors, with
// mode 0755 and the owner of `meta` if make_parents).
Status CheckParent(MutableTree& tree, std::string_view key, bool make_parents, const Meta& meta,
                   uint64_t version, int64_t now_ns) {
  std::string_view parent = ParentKey(key);
  if (parent.empty()) return Status::OK();
  TreeValue v;
  Status s = tree.Lookup(parent, &v);
  if (s.ok()) {
    if (v.meta.type != EntryType::kDir) return Status::NotDirectory(Quote(parent));
    return Status::OK();
  }
  if (!s.IsNotFound()) return s;
  if (!make_parents) {
    // ENOTDIR if some ancestor is a file or symlink, ENOENT otherwise (as the kernel says).
    for (std::string_view a = ParentKey(parent); !a.empty(); a = ParentKey(a)) {
      Status as = tree.Lookup(a, &v);
      if (as.ok()) {
        if (v.meta.type != EntryType::kDir) return Status::NotDirectory(Quote(a));
        break;
      }
      if (!as.IsNotFound()) return as;
    }
    return Status::NotFound("parent directory of " + Quote(key) + " does not exist");
  }
  if (IsReserved(parent)) return Reserved(parent);
  KEYFS_RETURN_IF_ERROR(CheckParent(tree, parent, true, meta, version, now_ns));
  Meta dir = Meta::Dir();
  dir.uid = meta.uid;
  dir.gid = meta.gid;
  dir.mtime_ns = dir.ctime_ns = dir.atime_ns = now_ns;
  dir.subdirs = 0;
  tree.Set(parent, TreeValue{dir, version, {}});
  return TouchDir(tree, ParentKey(parent), 1, version, now_ns);
}

// The metadata a mutation stores: the type and subdirectory count are the engine's, the
// ctime is the commit's, kTimeNow times are resolved (an atime of kTimeNow keeps `cur`'s
// when there is one).
Meta Resolve(const Meta& given, EntryType type, const TreeValue* cur, int64_t now_ns) {
  Meta meta = given;
  meta.type = type;
  meta.mode &= 07777;
  if (meta.mtime_ns == kTimeNow) meta.mtime_ns = now_ns;
  if (meta.atime_ns == kTimeNow) meta.atime_ns = cur != nullptr ? cur->meta.atime_ns : now_ns;
  meta.ctime_ns = now_ns;
  meta.subdirs = cur != nullptr && cur->meta.type == EntryType::kDir ? cur->meta.subdirs : 0;
  return meta;
}

}  // namespace

Status ApplyMutation(MutableTree& tree, const Mutation& m, uint64_t version, int64_t now_ns) {
  // The root exists always and only its metadata can change.
  const bool root_ok = m.op == Mutation::Op::kSetMeta;
  if (Status vs = ValidateKey(m.key, root_ok); !vs.ok()) return vs.WithContext(Quote(m.key));
  TreeValue cur;
  Status found = tree.Lookup(m.key, &cur);
  if (!found.ok() && !found.IsNotFound()) return found;
  const bool exists = found.ok();

  switch (m.op) {
    case Mutation::Op::kPut: {
      if (m.meta.type == EntryType::kDir) return Status::InvalidArgument("put of a directory");
      if (m.value.size() > kMaxValueSize) {
        return Status::TooLarge(Quote(m.key) + ": value of " + std::to_string(m.value.size()) +
                                " bytes is over the limit of " + std::to_string(kMaxValueSize));
      }
      if (!exists && IsReserved(m.key)) return Reserved(m.key);
      KEYFS_RETURN_IF_ERROR(CheckParent(tree, m.key, m.make_parents, m.meta, version, now_ns));
      if (exists && cur.meta.type == EntryType::kDir) return Status::IsDirectory(Quote(m.key));
      if (exists && m.exclusive) return Status::AlreadyExists(Quote(m.key));
      tree.Set(m.key, TreeValue{Resolve(m.meta, m.meta.type, exists ? &cur : nullptr, now_ns),
                                version, m.value});
      // Overwriting a file changes only the file; a new one changes its directory.
      if (!exists) return TouchDir(tree, ParentKey(m.key), 0, version, now_ns);
      return Status::OK();
    }
    case Mutation::Op::kMkdir: {
      if (!exists && IsReserved(m.key)) return Reserved(m.key);
      KEYFS_RETURN_IF_ERROR(CheckParent(tree, m.key, m.make_parents, m.meta, version, now_ns));
      if (exists && !(m.exist_ok && cur.meta.type == EntryType::kDir)) {
        return Status::AlreadyExists(Quote(m.key));
      }
      tree.Set(m.key,
               TreeValue{
                   Resolve(m.meta, EntryType::kDir, exists ? &cur : nullptr, now_ns), version, {}});
      if (!exists) return TouchDir(tree, ParentKey(m.key), 1, version, now_ns);
      return Status::OK();
    }
    case Mutation::Op::kDelete: {
      if (!exists) return Status::NotFound(Quote(m.key));
      if (cur.meta.type == EntryType::kDir) {
        auto has = tree.HasChildren(m.key);
        if (!has.ok()) return has.status();
        if (*has) return Status::NotEmpty(Quote(m.key));
      }
      tree.Set(m.key, std::nullopt);
      return TouchDir(tree, ParentKey(m.key), -DirDelta(cur.meta), version, now_ns);
    }
    case Mutation::Op::kSetMeta: {
      if (!exists) return Status::NotFound(Quote(m.key));
      tree.Set(m.key, TreeValue{Resolve(m.meta, cur.meta.type, &cur, now_ns), version, cur.value});
      return Status::OK();
    }
    case Mutation::Op::kRename:
      break;
  }

  // Rename.
  const std::string_view from = m.key, to = m.target;
  if (Status vs = ValidateKey(to); !vs.ok()) return vs.WithContext(Quote(to));
  if (!exists) return Status::NotFound(Quote(from));
  const bool exchange = m.rename_flags & kRenameExchange;
  if (exchange && (m.rename_flags & kRenameNoReplace)) {
    return Status::InvalidArgument("RENAME_EXCHANGE with RENAME_NOREPLACE");
  }
  if (m.rename_flags & ~uint32_t{kRenameNoReplace | kRenameExchange}) {
    return Status::InvalidArgument("unknown rename flags");
  }
  if (IsBelow(to, from))
    return Status::InvalidArgument("cannot move " + Quote(from) + " into itself");
  KEYFS_RETURN_IF_ERROR(CheckParent(tree, to, false, cur.meta, version, now_ns));
  TreeValue dst;
  Status ds = tree.Lookup(to, &dst);
  if (!ds.ok() && !ds.IsNotFound()) return ds;
  const bool dst_exists = ds.ok();
  if (from == to) return Status::OK();
  // Whatever lands under the reserved name is a new key there.
  if (IsReserved(to) || (exchange && IsReserved(from))) {
    return Reserved(IsReserved(to) ? to : from);
  }

  std::vector<std::pair<std::string, TreeValue>> src_tree, dst_tree;
  KEYFS_RETURN_IF_ERROR(tree.CollectSubtree(from, &src_tree));
  // Child directories each parent gains (+) or loses (-).
  int from_parent_delta = -DirDelta(cur.meta), to_parent_delta = DirDelta(cur.meta);
  if (exchange) {
    if (!dst_exists) return Status::NotFound(Quote(to));
    if (IsBelow(from, to)) return Status::InvalidArgument("cannot exchange with an ancestor");
    KEYFS_RETURN_IF_ERROR(tree.CollectSubtree(to, &dst_tree));
    from_parent_delta += DirDelta(dst.meta);
    to_parent_delta -= DirDelta(dst.meta);
  } else if (dst_exists) {
    if (m.rename_flags & kRenameNoReplace) return Status::AlreadyExists(Quote(to));
    if (cur.meta.type == EntryType::kDir) {
      if (dst.meta.type != EntryType::kDir) return Status::NotDirectory(Quote(to));
      auto has = tree.HasChildren(to);
      if (!has.ok()) return has.status();
      if (*has) return Status::NotEmpty(Quote(to));
    } else if (dst.meta.type == EntryType::kDir) {
      return Status::IsDirectory(Quote(to));
    }
    tree.Set(to, std::nullopt);
    to_parent_delta -= DirDelta(dst.meta);  // the replaced directory
  }
  for (const auto& [k, v] : src_tree) tree.Set(k, std::nullopt);
  for (const auto& [k, v] : dst_tree) tree.Set(k, std::nullopt);
  auto move = [&](const std::vector<std::pair<std::string, TreeValue>>& subtree,
                  std::string_view old_root, std::string_view new_root) {
    for (const auto& [k, v] : subtree) {
      TreeValue nv = v;
      nv.version = version;
      if (k.size() == old_root.size()) nv.meta.ctime_ns = now_ns;
      tree.Set(std::string(new_root) + k.substr(old_root.size()), nv);
    }
  };
  move(src_tree, from, to);
  move(dst_tree, to, from);
  // Both parents (one, when they are the same directory) changed.
  const std::string_view from_parent = ParentKey(from), to_parent = ParentKey(to);
  if (from_parent == to_parent) {
    return TouchDir(tree, from_parent, from_parent_delta + to_parent_delta, version, now_ns);
  }
  KEYFS_RETURN_IF_ERROR(TouchDir(tree, from_parent, from_parent_delta, version, now_ns));
  return TouchDir(tree, to_parent, to_parent_delta, version, now_ns);
}

}  // namespace keyfs
