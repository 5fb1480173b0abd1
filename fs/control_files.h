// MOUNT/.keyfs, the mount's control directory: `stats` (read-only JSON: the engine's
// figures and the daemon's counters) and `sync` (writing "1" returns once every write
// closed before it is durable). Reachable by path, never listed by readdir, so tools that
// copy a whole mount do not copy it.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "inode_table.h"
#include "keyfs/store/engine.h"

namespace keyfs::fs {

// Counters the daemon keeps; relaxed atomics, bumped from any thread.
struct FsCounters {
  std::atomic<uint64_t> reads{0}, writes{0}, commits{0}, errors{0}, opens{0}, lookups{0}, estale{0};
  static void Bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
};

// Size of `stats` on a -o ro mount: without OPEN the kernel reads through the page cache,
// bounded by the size, so the JSON is padded with spaces to this fixed size.
constexpr size_t kPaddedStatsSize = 4096;

inline bool IsControlNode(uint64_t id) {
  return id == kControlDirId || id == kStatsFileId || id == kSyncFileId;
}

// The node of `name` in the control directory (kStatsFileId, kSyncFileId), 0 if none.
uint64_t ControlChild(const char* name);

// Attributes of a control node. Times are "now": the files change with every read.
void ControlAttr(uint64_t id, bool read_only, struct stat* st);

// The stats JSON: the engine's figures, the daemon's counters and how many nodes the
// kernel holds.
std::string StatsJson(const EngineStats& s, const FsCounters& c, uint64_t nodes);

// `text` padded with spaces (before its last newline) to kPaddedStatsSize.
std::string PadStats(std::string text);

// Parses what a write to `sync` carries: "1", optionally followed by spaces/newlines.
bool IsSyncRequest(std::string_view data);

}  // namespace keyfs::fs
