// The snapshot engine's commit log, STORE.log (FORMAT.md §2.10): what each commit since the
// base table changed, one checksummed record per commit, appended and fdatasynced before the
// commit is answered. This file encodes and parses records; the engine decides what to
// append and when. Internal to store/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "keyfs/store/engine.h"
#include "keyfs/store/status.h"

namespace keyfs {

// One changed key of a record: its new state, or its removal.
struct LogEntry {
  std::string_view key;
  bool live = false;
  Meta meta;  // live only
  uint64_t version = 0;
  std::string_view value;
};

// A parsed record; views point into the buffer it was parsed from.
struct LogRecord {
  uint64_t generation = 0;
  int64_t commit_time_ns = 0;
  std::optional<Meta> root;  // set when the commit changed the root's metadata
  uint64_t root_version = 0;
  std::vector<LogEntry> entries;  // sorted by key, no key twice
  uint64_t size = 0;              // bytes on disk
};

// The 64-byte header of a new log started after the table of `base_generation`.
std::string EncodeLogHeader(uint64_t base_generation, int64_t create_time_ns);
// Checks a header; Corruption naming `path` if it is not one.
Status ParseLogHeader(std::string_view bytes, const std::string& path, uint64_t* base_generation);

// Builds one record. REQUIRES: entries added in key order.
class LogRecordWriter {
 public:
  LogRecordWriter(uint64_t generation, int64_t commit_time_ns);
  void SetRoot(const Meta& root, uint64_t root_version);
  void Add(const LogEntry& e);
  // The record's bytes, checksum included.
  std::string Finish();
  uint64_t size_so_far() const { return buf_.size() + 8; }

 private:
  std::string buf_;
  uint64_t count_ = 0;
};

// How a record at an offset parsed.
enum class LogParse {
  kOk,    // *out filled
  kTorn,  // not a complete, intact record: the log ends here unless Corrupted follows
  kEnd,   // no bytes left
  kBad,   // intact (checksum matches) but breaking the format's rules: Corruption
};

// Parses the record at the start of `bytes` (which holds the rest of the file from there).
// kTorn covers a short tail and a bad length, magic or checksum; *why says which (Corruption
// naming `path` and the offset, `file_offset` being where `bytes` starts in the file).
LogParse ParseLogRecord(std::string_view bytes, uint64_t file_offset, const std::string& path,
                        LogRecord* out, Status* why);

// True if some 8-aligned offset of `bytes` starts an intact record: after a torn record, that
// means the damage is not a crash's torn tail but lost acknowledged commits.
bool IntactRecordFollows(std::string_view bytes);

}  // namespace keyfs
