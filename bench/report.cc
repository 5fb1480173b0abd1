// Printing a keyfs_bench report as a table and as JSON; see report.h.
#include "report.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <fstream>

namespace keyfs::bench {
namespace {

const char* UnitName(Unit unit) {
  switch (unit) {
    case Unit::kNanos:
      return "ns";
    case Unit::kMicros:
      return "us";
    case Unit::kMillis:
      return "ms";
    case Unit::kPerSecond:
      return "1/s";
    case Unit::kBytes:
      return "bytes";
  }
  return "?";
}

std::string Printf(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) { return std::isfinite(v) ? Printf("%.6g", v) : "null"; }

}  // namespace

std::string Report::FormatValue(double value, Unit unit) {
  if (!std::isfinite(value)) return "-";
  switch (unit) {
    case Unit::kNanos:
      return Printf("%.1f ns", value);
    case Unit::kMicros:
      return Printf("%.1f us", value);
    case Unit::kMillis:
      return Printf(value < 10 ? "%.2f ms" : "%.0f ms", value);
    case Unit::kPerSecond:
      return Printf("%.0f/s", value);
    case Unit::kBytes:  // megabytes once the exact count stops being readable
      return Printf(value < 1e6 ? "%.0f B" : "%.1f MB", value < 1e6 ? value : value / 1e6);
  }
  return "?";
}

void Report::Print(std::FILE* out) const {
  std::fprintf(out, "%s\n", title_.c_str());
  for (const std::string& note : notes_) std::fprintf(out, "  %s\n", note.c_str());
  std::fprintf(out, "\n");

  using Row = std::array<std::string, 6>;
  std::vector<Row> rows;
  rows.push_back({"metric", "keyfs", "reference", "ratio", "target", "result"});
  for (const Figure& f : figures_) {
    std::string ref =
        f.reference_text.empty() ? FormatValue(f.reference, f.unit) : f.reference_text;
    if (!f.reference_name.empty()) ref += " " + f.reference_name;
    std::string result = !f.met.has_value() ? "info" : *f.met ? "met" : "NOT MET";
    rows.push_back({f.metric, FormatValue(f.keyfs, f.unit), ref,
                    std::isfinite(f.ratio) ? Printf("%.3gx", f.ratio) : "-",
                    f.target.empty() ? "-" : f.target, result});
  }
  std::array<size_t, 6> width{};
  for (const Row& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    const Row& row = rows[r];
    // Text columns left-aligned, figures right-aligned.
    std::fprintf(out, "%-*s  %*s  %-*s  %*s  %-*s  %s\n", static_cast<int>(width[0]),
                 row[0].c_str(), static_cast<int>(width[1]), row[1].c_str(),
                 static_cast<int>(width[2]), row[2].c_str(), static_cast<int>(width[3]),
                 row[3].c_str(), static_cast<int>(width[4]), row[4].c_str(), row[5].c_str());
    if (r == 0) {
      size_t total = 10;
      for (size_t w : width) total += w;
      std::fprintf(out, "%s\n", std::string(total, '-').c_str());
    }
  }
}

Status Report::WriteJson(const std::string& path) const {
  std::string j = "{\n  \"title\": " + JsonString(title_) + ",\n  \"notes\": [";
  for (size_t i = 0; i < notes_.size(); ++i) {
    j += (i ? ",\n    " : "\n    ") + JsonString(notes_[i]);
  }
  j += "\n  ],\n  \"figures\": [";
  for (size_t i = 0; i < figures_.size(); ++i) {
    const Figure& f = figures_[i];
    j += i ? ",\n    {" : "\n    {";
    j += "\"metric\": " + JsonString(f.metric);
    j += ", \"keyfs\": " + JsonNumber(f.keyfs);
    j += ", \"unit\": " + JsonString(UnitName(f.unit));
    j += ", \"reference\": " + JsonNumber(f.reference);
    j += ", \"reference_name\": " + JsonString(f.reference_name);
    if (!f.reference_text.empty()) j += ", \"reference_text\": " + JsonString(f.reference_text);
    j += ", \"ratio\": " + JsonNumber(f.ratio);
    j += ", \"target\": " + JsonString(f.target);
    j += ", \"met\": ";
    j += !f.met.has_value() ? "null" : *f.met ? "true" : "false";
    j += ", \"samples\": " + std::to_string(f.samples) + "}";
  }
  j += "\n  ]\n}\n";

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << j;
  out.close();
  if (!out) return Status::IOError("write " + path, errno);
  return Status::OK();
}

}  // namespace keyfs::bench
