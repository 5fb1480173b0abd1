// The result of one keyfs_bench run: notes on how it was measured, then one figure per
// metric with its reference and target, printed as a table or written as JSON.
#pragma once

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "keyfs/store/status.h"

namespace keyfs::bench {

// Units a figure can be in; they pick how a value is printed.
enum class Unit { kNanos, kMicros, kMillis, kPerSecond, kBytes };

// One row of the table. NaN means "not measured / not applicable".
struct Figure {
  std::string metric;
  double keyfs = NAN;
  Unit unit = Unit::kNanos;
  double reference = NAN;
  std::string reference_name;  // what the reference is, e.g. "unordered_map"
  std::string reference_text;  // printed instead of `reference` when set (e.g. "15-30/s")
  double ratio = NAN;          // keyfs / reference, the median of per-round ratios
  std::string target;          // e.g. "<= 0.50x"; empty: informational
  std::optional<bool> met;     // empty: no target
  int samples = 0;             // rounds or commits behind the figure
};

// Thread-compatible: one thread builds and prints it.
class Report {
 public:
  explicit Report(std::string title) : title_(std::move(title)) {}

  void AddNote(std::string note) { notes_.push_back(std::move(note)); }
  void AddFigure(Figure figure) { figures_.push_back(std::move(figure)); }
  const std::vector<Figure>& figures() const { return figures_; }

  // Title, notes, then the table: metric, keyfs, reference, ratio, target, result.
  void Print(std::FILE* out) const;
  // Writes everything as one JSON object to `path` (replacing it). IOError on failure.
  Status WriteJson(const std::string& path) const;

  static std::string FormatValue(double value, Unit unit);

 private:
  std::string title_;
  std::vector<std::string> notes_;
  std::vector<Figure> figures_;
};

}  // namespace keyfs::bench
