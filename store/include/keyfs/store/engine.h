// The engine interface: the one seam between fs/ (and keyfsctl) and a store file.
// Both engines (snapshot, dets) implement it; callers never learn which one is behind it
// except through name() and Stats().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keyfs/store/status.h"

namespace keyfs {

class Env;

enum class EntryType : uint8_t { kFile = 1, kDir = 2, kSymlink = 3 };

// A Meta time holding kTimeNow is stamped by the engine with the time of the commit that
// writes it. Every other value (0 and times before 1970 included) is stored as given.
constexpr int64_t kTimeNow = INT64_MIN;

// The largest value (file content) a store accepts: Commit refuses a bigger one with
// TooLarge, and the filesystem answers EFBIG before buffering one.
constexpr uint64_t kMaxValueSize = uint64_t{1} << 30;

// Per-entry metadata, stored with every entry and persisted. The root directory ("") has
// one too. Times are nanoseconds since the epoch, 64-bit.
struct Meta {
  EntryType type = EntryType::kFile;
  uint32_t mode = 0644;  // permission bits only (07777); the type lives in `type`
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t mtime_ns = kTimeNow;  // content; for a directory, its last entry added or removed
  // Set by the engine to the time of the commit that last changed the entry (its value,
  // its metadata, or for a directory its entries); a ctime in a mutation is ignored.
  int64_t ctime_ns = kTimeNow;
  // Last access as set by utimensat: reads do not update it (noatime). kTimeNow in a
  // mutation keeps an existing entry's atime and stamps a new entry's.
  int64_t atime_ns = kTimeNow;
  // Directories: how many child directories it has (st_nlink = 2 + subdirs). Maintained
  // by the engine; ignored in mutations.
  uint32_t subdirs = 0;

  // Defaults for new entries of each type (times kTimeNow: the commit's).
  static Meta File(uint32_t mode = 0644) { return Meta{EntryType::kFile, mode}; }
  static Meta Dir(uint32_t mode = 0755) { return Meta{EntryType::kDir, mode}; }
  static Meta Symlink() { return Meta{EntryType::kSymlink, 0777}; }

  bool operator==(const Meta&) const = default;
};

// A looked-up entry. `value` is the file content or the symlink target (empty for a
// directory); it points into engine-owned memory that stays valid while `pin` is held,
// whatever commits happen meanwhile.
struct Record {
  Meta meta;
  uint64_t version = 0;  // generation of the commit that last wrote this entry
  std::string_view value;
  std::shared_ptr<const void> pin;
};

// One child in a directory listing. Views are valid only during the callback.
struct DirEntry {
  std::string_view name;  // last path component
  Meta meta;
  uint64_t size = 0;  // value length
  uint64_t version = 0;
};
// Return false to stop the listing.
using ListFn = std::function<bool(const DirEntry&)>;

// Rename flags, the semantics of renameat2(2).
enum RenameFlags : uint32_t { kRenameNone = 0, kRenameNoReplace = 1, kRenameExchange = 2 };

// One mutation of a Batch. Keys are validated at commit (see ValidateKey). A new key whose
// first component is ".keyfs" (the mount's control directory) is InvalidArgument, and so
// is a rename onto one; a Put of a value over kMaxValueSize is TooLarge. A new entry, a
// deletion or a rename sets the mtime and ctime of the directories it changes (the root
// included) to the commit's time; overwriting a value or SetMeta does not.
struct Mutation {
  enum class Op : uint8_t {
    kPut,      // file or symlink (meta.type); replaces a file/symlink; IsDirectory on a dir
    kMkdir,    // AlreadyExists if present, unless exist_ok (then only the meta is updated)
    kDelete,   // file, symlink or empty directory; NotFound / NotEmpty
    kSetMeta,  // mode/uid/gid/atime/mtime of an existing entry ("" = the root: the only
               // mutation the root takes, others of "" are InvalidArgument); its type,
               // value and subdirs stay
    kRename,   // key or whole directory subtree to `target`, atomically
  };
  Op op = Op::kPut;
  std::string key;
  std::string value;   // kPut: content or symlink target
  std::string target;  // kRename: the new key
  Meta meta;
  uint32_t rename_flags = kRenameNone;
  bool make_parents = false;  // kPut/kMkdir: create missing parent dirs (mode 0755)
  bool exclusive = false;     // kPut: AlreadyExists if the key exists (O_EXCL)
  bool exist_ok = false;      // kMkdir
};

// An ordered list of mutations applied all-or-nothing: if one fails, none is applied and
// Commit returns that failure (the message names the key).
class Batch {
 public:
  // A file (meta.type is forced to kFile).
  Batch& Put(std::string key, std::string value, Meta meta = Meta::File());
  Batch& Symlink(std::string key, std::string target, Meta meta = Meta::Symlink());
  Batch& Mkdir(std::string key, Meta meta = Meta::Dir());
  Batch& Delete(std::string key);
  Batch& SetMeta(std::string key, Meta meta);
  Batch& Rename(std::string from, std::string to, uint32_t flags = kRenameNone);
  // Escape hatch for flags not covered above.
  Batch& Add(Mutation m);

  const std::vector<Mutation>& mutations() const { return mutations_; }
  bool empty() const { return mutations_.empty(); }
  size_t size() const { return mutations_.size(); }

 private:
  std::vector<Mutation> mutations_;
};

struct EngineStats {
  std::string engine;           // "snapshot" or "dets"
  uint32_t format_version = 0;  // of the store file
  uint64_t entries = 0;         // every entry: files, dirs, symlinks (buffered ones included)
  uint64_t files = 0, dirs = 0, symlinks = 0;
  uint64_t value_bytes = 0;  // sum of value lengths
  uint64_t file_bytes = 0;   // size of the store file
  uint64_t generation = 0;   // of the table/file being served
  uint64_t commits = 0;      // batches committed by this engine object
  uint64_t commit_errors = 0;
  uint64_t rebuilds = 0;                // snapshot: tables written by this engine object
  uint64_t external_reloads = 0;        // newer files written by other processes picked up
  int64_t last_commit_ns = 0;           // wall clock of the served table's commit
  int64_t last_commit_duration_ns = 0;  // by this engine object
  uint64_t buffered_writes = 0;         // dets
  bool syncing = false;                 // dets
  // Durability. Snapshot: every commit is a sync. Dets: merges of the write buffer into
  // the file; before the first one, last_sync_ns is the time the served file was written.
  uint64_t syncs = 0, sync_errors = 0;  // by this engine object
  int64_t last_sync_ns = 0;             // wall clock of the last completed sync
  int64_t last_sync_duration_ns = 0;
  // Expected fraction of lookups of absent keys that the bloom filter lets through.
  double bloom_fp_estimate = 0;
  // snapshot: keys the commit log holds states of beyond the base table, and merges of it
  // into a new base done by this engine object.
  uint64_t delta_keys = 0;
  uint64_t merges = 0, merge_errors = 0;
  // Bytes this engine object wrote to store files (tables, log records, merged files), and
  // bytes of keys and values its commits changed: their ratio is the write amplification.
  uint64_t bytes_written = 0, bytes_committed = 0;
  std::vector<std::pair<std::string, std::string>> extra;  // engine-specific, for `info`
};

// Reported after the served table changes. `changed` lists every key added, removed or
// modified (renamed subtrees included), and every directory whose metadata changed (its
// times and child count, because entries were added to, removed from or renamed in or out
// of it): "" when it is the root, whose SetMeta is listed the same way. For a change by
// another process (external), the keys whose version differs and "" when the root's
// metadata differs. Listeners use it to invalidate caches.
struct ChangeEvent {
  uint64_t old_generation = 0;
  uint64_t new_generation = 0;
  bool external = false;  // written by another process
  std::vector<std::string> changed;
};
using ChangeListener = std::function<void(const ChangeEvent&)>;

// Thread-safety: every method may be called from any thread concurrently.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string_view name() const = 0;

  // The entry at `key` ("" is the root directory, always present). NotFound if absent,
  // NotDirectory if a path component is a file or symlink, Corruption if the store is damaged.
  virtual StatusOr<Record> Get(std::string_view key) const = 0;

  // Get for a caller that knows ParentKey(key) is a directory (a filesystem looking a name
  // up in a directory it holds): a miss is NotFound without the walk over the ancestors
  // that tells NotDirectory apart, so it costs no more than the key's own lookup.
  virtual StatusOr<Record> GetInDirectory(std::string_view key) const { return Get(key); }

  // Calls fn for each immediate child of directory `dir` ("" = root) whose name sorts after
  // `start_after` (bytewise), in sorted order, until fn returns false. All children come from
  // one consistent state, so a listing resumed with the last name seen continues it.
  // NotFound if `dir` is absent, NotDirectory if it is not a directory.
  virtual Status List(std::string_view dir, std::string_view start_after,
                      const ListFn& fn) const = 0;

  // Applies the batch atomically. Snapshot: returns once the batch is durable on disk and
  // visible to every reader. Dets: once it is visible (durable after the next Sync).
  // Errors from validation (NotFound, AlreadyExists, ...) change nothing; an I/O error
  // (IOError, NoSpace) leaves the previous state served and the engine working.
  virtual Status Commit(const Batch& batch) = 0;

  // Returns once everything committed so far is durable.
  virtual Status Sync() = 0;

  // Picks up a newer store file written by another process, if any (engines that watch
  // the store also do this on their own). Returns OK when nothing changed.
  virtual Status Refresh() = 0;

  virtual EngineStats Stats() const = 0;

  // The listener runs on an engine thread after each change of the served state; for a
  // commit of this engine, before Commit returns to its callers. It must not call Commit
  // (or wait for anything that does). REQUIRES: set before concurrent use.
  virtual void SetChangeListener(ChangeListener listener) = 0;
};

enum class EngineKind : uint8_t { kSnapshot, kDets };
const char* EngineKindName(EngineKind k);
// Parses "snapshot" / "dets". InvalidArgument otherwise.
StatusOr<EngineKind> ParseEngineKind(std::string_view s);

struct OpenOptions {
  bool create = false;                      // create STORE if missing (an existing one is opened)
  EngineKind kind = EngineKind::kSnapshot;  // for create; an existing file's magic decides
  bool kind_given = false;  // if true, an existing file of another engine is InvalidArgument
  bool read_only = false;   // Commit returns ReadOnly; no lock file is created
  bool watch = false;       // follow commits of other processes (inotify) and call the listener
  Env* env = nullptr;       // nullptr: Env::Default()
  // dets: seconds between syncs of the write buffer (0 = only on Sync() and close).
  uint32_t sync_interval_s = 30;
  // dets: the write buffer's memory limit in bytes (0 = 512 MiB). Passing it starts a sync;
  // writers wait while the buffer is over it and a sync is still running.
  uint64_t buffer_limit_bytes = 0;
  // snapshot: the number of keys in the commit log that starts a background merge into a
  // new base table (0 = the larger of 16,384 and an eighth of the base's entries). A
  // commit that changes this many keys writes a whole table at once.
  uint64_t merge_threshold = 0;
};

// Opens (or with options.create, creates) the store at `path`.
// NotFound if missing and !create; Corruption with what and where if the file is damaged;
// InvalidArgument if it is of another engine than requested.
StatusOr<std::unique_ptr<Engine>> OpenStore(const std::string& path, const OpenOptions& options);

// Creates an empty store. AlreadyExists if `path` exists.
Status CreateStore(const std::string& path, EngineKind kind, Env* env = nullptr);

// Reads the magic of an existing store. NotFound, or Corruption if no known magic.
StatusOr<EngineKind> DetectEngine(const std::string& path);

// Checks every checksum and structure of the file at `path`. `report` (optional) receives
// human-readable lines describing what was checked. OK only if the file is sound.
Status VerifyStore(const std::string& path, std::vector<std::string>* report = nullptr);

// Key rules (SPEC §3): no NUL, no empty / "." / ".." component, no leading or trailing '/',
// components <= 255 bytes, key <= 4096 bytes. InvalidArgument or NameTooLong.
// The root "" is valid only where allow_root.
Status ValidateKey(std::string_view key, bool allow_root = false);
constexpr size_t kMaxKeyLength = 4096;
constexpr size_t kMaxNameLength = 255;

// "a/b/c" -> "a/b"; "a" -> "".
std::string_view ParentKey(std::string_view key);
// "a/b/c" -> "c".
std::string_view BaseName(std::string_view key);

}  // namespace keyfs
