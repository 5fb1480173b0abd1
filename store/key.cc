// Key rules (SPEC §3) and path helpers.
#include <cstring>

#include "keyfs/store/engine.h"

namespace keyfs {

Status ValidateKey(std::string_view key, bool allow_root) {
  if (key.empty()) {
    return allow_root ? Status::OK() : Status::InvalidArgument("empty key");
  }
  if (key.size() > kMaxKeyLength) return Status::NameTooLong("key longer than 4096 bytes");
  if (std::memchr(key.data(), '\0', key.size()) != nullptr) {
    return Status::InvalidArgument("key contains NUL");
  }
  size_t start = 0;
  while (true) {
    size_t slash = key.find('/', start);
    std::string_view comp =
        key.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (comp.empty()) return Status::InvalidArgument("empty path component in key");
    if (comp == "." || comp == "..") {
      return Status::InvalidArgument("'.' or '..' component in key");
    }
    if (comp.size() > kMaxNameLength) {
      return Status::NameTooLong("path component longer than 255 bytes");
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Status::OK();
}

std::string_view ParentKey(std::string_view key) {
  size_t slash = key.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : key.substr(0, slash);
}

std::string_view BaseName(std::string_view key) {
  size_t slash = key.rfind('/');
  return slash == std::string_view::npos ? key : key.substr(slash + 1);
}

const char* EngineKindName(EngineKind k) { return k == EngineKind::kDets ? "dets" : "snapshot"; }

StatusOr<EngineKind> ParseEngineKind(std::string_view s) {
  if (s == "snapshot") return EngineKind::kSnapshot;
  if (s == "dets") return EngineKind::kDets;
  return Status::InvalidArgument("unknown engine '" + std::string(s) +
                                 "' (expected snapshot or dets)");
}

}  // namespace keyfs
