// MOUNT/.keyfs (control_files.h).
#include "control_files.h"

#include <cstdio>
#include <cstring>

#include "attr.h"

namespace keyfs::fs {

uint64_t ControlChild(const char* name) {
  if (std::strcmp(name, "stats") == 0) return kStatsFileId;
  if (std::strcmp(name, "sync") == 0) return kSyncFileId;
  return 0;
}

void ControlAttr(uint64_t id, bool read_only, struct stat* st) {
  Meta m = id == kControlDirId ? Meta::Dir(0555) : Meta::File(id == kSyncFileId ? 0200 : 0444);
  m.atime_ns = m.mtime_ns = m.ctime_ns = NowNs();
  FillAttr(id, m, id == kStatsFileId && read_only ? kPaddedStatsSize : 0, false, st);
}

std::string StatsJson(const EngineStats& s, const FsCounters& c, uint64_t nodes) {
  std::string j = "{\n";
  auto num = [&](const char* k, uint64_t v, bool last = false) {
    j += "  \"" + std::string(k) + "\": " + std::to_string(v) + (last ? "\n" : ",\n");
  };
  j += "  \"engine\": \"" + s.engine + "\",\n";
  num("format_version", s.format_version);
  num("entries", s.entries);
  num("files", s.files);
  num("dirs", s.dirs);
  num("symlinks", s.symlinks);
  num("value_bytes", s.value_bytes);
  num("file_bytes", s.file_bytes);
  num("table_version", s.generation);
  num("commits", s.commits);
  num("commit_errors", s.commit_errors);
  num("rebuilds", s.rebuilds);
  num("external_reloads", s.external_reloads);
  num("last_commit_unix_ns", static_cast<uint64_t>(s.last_commit_ns));
  num("last_commit_duration_ns", static_cast<uint64_t>(s.last_commit_duration_ns));
  num("buffered_writes", s.buffered_writes);
  j += std::string("  \"syncing\": ") + (s.syncing ? "true" : "false") + ",\n";
  num("syncs", s.syncs);
  num("sync_errors", s.sync_errors);
  num("last_sync_unix_ns", static_cast<uint64_t>(s.last_sync_ns));
  num("last_sync_duration_ns", static_cast<uint64_t>(s.last_sync_duration_ns));
  char fp[32];
  std::snprintf(fp, sizeof fp, "%.3g", s.bloom_fp_estimate);
  j += std::string("  \"bloom_fp_estimate\": ") + fp + ",\n";
  num("reads", c.reads.load());
  num("writes", c.writes.load());
  num("lookups", c.lookups.load());
  num("opens", c.opens.load());
  num("fs_commits", c.commits.load());
  num("stale_reopens", c.estale.load());
  num("nodes", nodes);
  num("errors", c.errors.load(), true);
  j += "}\n";
  return j;
}

std::string PadStats(std::string text) {
  if (text.size() < kPaddedStatsSize) {
    text.insert(text.size() - 1, kPaddedStatsSize - text.size(), ' ');
  }
  return text;
}

bool IsSyncRequest(std::string_view v) {
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.remove_suffix(1);
  return v == "1";
}

}  // namespace keyfs::fs
