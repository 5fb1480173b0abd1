// Encoding and parsing of STORE.log records (FORMAT.md §2.10). A parser never trusts a
// length before checking it against the bytes it was given.
#include "snapshot/commit_log.h"

#include <cstring>

#include "format.h"

namespace keyfs {

using namespace format;

namespace {

void PutMeta(std::string* buf, const Meta& m, uint64_t version) {
  uint8_t b[kMetaSize] = {};
  Store32(b + kMMode, m.mode);
  Store32(b + kMUid, m.uid);
  Store32(b + kMGid, m.gid);
  Store32(b + kMSubdirs, m.subdirs);
  Store64(b + kMMtime, static_cast<uint64_t>(m.mtime_ns));
  Store64(b + kMCtime, static_cast<uint64_t>(m.ctime_ns));
  Store64(b + kMVersion, version);
  Store64(b + kMAtime, static_cast<uint64_t>(m.atime_ns));
  buf->append(reinterpret_cast<const char*>(b), sizeof(b));
}

void GetMeta(const uint8_t* b, Meta* m, uint64_t* version) {
  m->mode = Load32(b + kMMode);
  m->uid = Load32(b + kMUid);
  m->gid = Load32(b + kMGid);
  m->subdirs = Load32(b + kMSubdirs);
  m->mtime_ns = static_cast<int64_t>(Load64(b + kMMtime));
  m->ctime_ns = static_cast<int64_t>(Load64(b + kMCtime));
  *version = Load64(b + kMVersion);
  m->atime_ns = static_cast<int64_t>(Load64(b + kMAtime));
}

void PadTo8(std::string* buf) { buf->append(Align8(buf->size()) - buf->size(), '\0'); }

bool AllZero(const uint8_t* p, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

}  // namespace

std::string EncodeLogHeader(uint64_t base_generation, int64_t create_time_ns) {
  uint8_t h[kLogHeaderSize] = {};
  std::memcpy(h + kLHMagic, kLogMagic, 8);
  Store32(h + kLHVersion, kLogVersion);
  Store32(h + kLHHeaderSize, kLogHeaderSize);
  Store64(h + kLHBaseGeneration, base_generation);
  Store64(h + kLHCreateTime, static_cast<uint64_t>(create_time_ns));
  Store64(h + kLHChecksum, Hash(h, kLHChecksum));
  return std::string(reinterpret_cast<const char*>(h), sizeof(h));
}

Status ParseLogHeader(std::string_view bytes, const std::string& path, uint64_t* base_generation) {
  if (bytes.size() < kLogHeaderSize) {
    return Status::Corruption(path + ": commit log shorter than its header");
  }
  const auto* h = reinterpret_cast<const uint8_t*>(bytes.data());
  if (std::memcmp(h + kLHMagic, kLogMagic, 8) != 0) {
    return Status::Corruption(path + ": not a keyfs commit log (bad magic at offset 0)");
  }
  if (Load64(h + kLHChecksum) != Hash(h, kLHChecksum)) {
    return Status::Corruption(path + ": commit log header checksum mismatch at offset 56");
  }
  if (Load32(h + kLHVersion) != kLogVersion || Load32(h + kLHHeaderSize) != kLogHeaderSize ||
      !AllZero(h + 32, 24)) {
    return Status::Corruption(path + ": unsupported commit log version " +
                              std::to_string(Load32(h + kLHVersion)) + " at offset 8");
  }
  *base_generation = Load64(h + kLHBaseGeneration);
  return Status::OK();
}

LogRecordWriter::LogRecordWriter(uint64_t generation, int64_t commit_time_ns) {
  buf_.resize(kLogRecordFixed);
  auto* b = reinterpret_cast<uint8_t*>(buf_.data());
  Store32(b + kLRMagic, kLogRecordMagic);
  Store64(b + kLRGeneration, generation);
  Store64(b + kLRCommitTime, static_cast<uint64_t>(commit_time_ns));
}

void LogRecordWriter::SetRoot(const Meta& root, uint64_t root_version) {
  // The root comes right after the fixed part: set it before any entry.
  auto* b = reinterpret_cast<uint8_t*>(buf_.data());
  Store32(b + kLRFlags, kLogFlagRoot);
  PutMeta(&buf_, root, root_version);
}

void LogRecordWriter::Add(const LogEntry& e) {
  uint8_t f[kLogEntryFixed] = {};
  f[0] = e.live ? static_cast<uint8_t>(e.meta.type) : kLogDeleted;
  Store16(f + 2, static_cast<uint16_t>(e.key.size()));
  Store64(f + 8, e.live ? e.value.size() : 0);
  buf_.append(reinterpret_cast<const char*>(f), sizeof(f));
  if (e.live) {
    PutMeta(&buf_, e.meta, e.version);
  } else {
    buf_.append(kMetaSize, '\0');
  }
  buf_.append(e.key);
  PadTo8(&buf_);
  if (e.live) {
    buf_.append(e.value);
    PadTo8(&buf_);
  }
  ++count_;
}

std::string LogRecordWriter::Finish() {
  auto* b = reinterpret_cast<uint8_t*>(buf_.data());
  Store64(b + kLRCount, count_);
  Store64(b + kLRLength, buf_.size() + 8);
  const uint64_t sum = Hash(buf_.data(), buf_.size());
  buf_.append(8, '\0');
  Store64(reinterpret_cast<uint8_t*>(buf_.data()) + buf_.size() - 8, sum);
  return std::move(buf_);
}

LogParse ParseLogRecord(std::string_view bytes, uint64_t file_offset, const std::string& path,
                        LogRecord* out, Status* why) {
  bool intact = false;  // the checksum matched: a broken rule is damage, not a torn write
  auto bad = [&](const char* what, uint64_t at) {
    *why =
        Status::Corruption(path + ": " + what + " at offset " + std::to_string(file_offset + at));
    return intact ? LogParse::kBad : LogParse::kTorn;
  };
  if (bytes.empty()) return LogParse::kEnd;
  if (bytes.size() < kLogRecordFixed + 8) return bad("commit log record cut short", 0);
  const auto* r = reinterpret_cast<const uint8_t*>(bytes.data());
  if (Load32(r + kLRMagic) != kLogRecordMagic) return bad("bad commit log record magic", 0);
  const uint64_t len = Load64(r + kLRLength);
  if (len < kLogRecordFixed + 8 || len % 8 != 0 || len > bytes.size()) {
    return bad("bad commit log record length", kLRLength);
  }
  if (Load64(r + len - 8) != Hash(r, len - 8))
    return bad("commit log record checksum mismatch", len - 8);
  // Intact: from here on a broken rule is damage a checksum could not see (a bad writer).
  intact = true;
  const uint32_t flags = Load32(r + kLRFlags);
  if ((flags & ~kLogFlagRoot) != 0) return bad("unknown commit log record flags", kLRFlags);
  out->generation = Load64(r + kLRGeneration);
  out->commit_time_ns = static_cast<int64_t>(Load64(r + kLRCommitTime));
  out->size = len;
  out->root.reset();
  out->entries.clear();
  const uint64_t count = Load64(r + kLRCount);
  const uint64_t end = len - 8;
  uint64_t p = kLogRecordFixed;
  if (flags & kLogFlagRoot) {
    if (p + kMetaSize > end) return bad("commit log root metadata cut short", p);
    Meta m = Meta::Dir();
    GetMeta(r + p, &m, &out->root_version);
    if (m.mode > 07777) return bad("bad root metadata in commit log", p);
    out->root = m;
    p += kMetaSize;
  }
  if (count > (end - p) / (kLogEntryFixed + kMetaSize + 8)) {
    return bad("commit log entry count beyond the record", kLRCount);
  }
  out->entries.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    if (p + kLogEntryFixed + kMetaSize > end) return bad("commit log entry cut short", p);
    const uint8_t type = r[p];
    const uint64_t klen = Load16(r + p + 2);
    const uint64_t vlen = Load64(r + p + 8);
    if (type > static_cast<uint8_t>(EntryType::kSymlink) || r[p + 1] != 0 ||
        Load32(r + p + 4) != 0) {
      return bad("bad commit log entry type", p);
    }
    LogEntry e;
    e.live = type != kLogDeleted;
    const uint64_t meta_at = p + kLogEntryFixed;
    const uint64_t key_at = meta_at + kMetaSize;
    if (klen == 0 || klen > kMaxKeyLength || key_at + Align8(klen) > end) {
      return bad("bad commit log key length", p + 2);
    }
    if ((!e.live || type == static_cast<uint8_t>(EntryType::kDir)) && vlen != 0) {
      return bad("value on a deleted entry or a directory in commit log", p + 8);
    }
    const uint64_t value_at = key_at + Align8(klen);
    if (vlen > kMaxValueSize || value_at + Align8(vlen) > end) {
      return bad("bad commit log value length", p + 8);
    }
    e.key = std::string_view(reinterpret_cast<const char*>(r + key_at), klen);
    if (!ValidateKey(e.key).ok()) return bad("invalid key in commit log", key_at);
    if (!out->entries.empty() && !(out->entries.back().key < e.key)) {
      return bad("commit log entries out of order", key_at);
    }
    if (e.live) {
      e.meta.type = static_cast<EntryType>(type);
      GetMeta(r + meta_at, &e.meta, &e.version);
      if (e.meta.mode > 07777) return bad("bad metadata in commit log", meta_at);
      if (e.meta.type != EntryType::kDir && e.meta.subdirs != 0) {
        return bad("bad metadata in commit log", meta_at);
      }
      e.value = std::string_view(reinterpret_cast<const char*>(r + value_at), vlen);
    } else if (!AllZero(r + meta_at, kMetaSize)) {
      return bad("metadata on a deleted entry in commit log", meta_at);
    }
    out->entries.push_back(e);
    p = value_at + Align8(vlen);
  }
  if (p != end) return bad("bytes after the last commit log entry", p);
  *why = Status::OK();
  return LogParse::kOk;
}

bool IntactRecordFollows(std::string_view bytes) {
  LogRecord rec;
  Status why;
  for (uint64_t off = 8; off + kLogRecordFixed + 8 <= bytes.size(); off += 8) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data() + off);
    if (Load32(p) != kLogRecordMagic) continue;
    if (ParseLogRecord(bytes.substr(off), off, "", &rec, &why) == LogParse::kOk) return true;
  }
  return false;
}

}  // namespace keyfs
