// libFuzzer target: arbitrary bytes as a key. ValidateKey must agree with the key rules
// written out independently here (SPEC §3), and ParentKey/BaseName must split every valid
// key into parts that join back into it.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "keyfs/store/engine.h"

namespace {

// The rules, from the spec: no NUL; no empty, "." or ".." component (so no leading,
// trailing or doubled '/'); components of at most 255 bytes; at most 4096 bytes; "" only
// as the root, where allowed. Also the name reserved for the control directory.
bool Valid(std::string_view key, bool allow_root) {
  if (key.empty()) return allow_root;
  if (key.size() > keyfs::kMaxKeyLength) return false;
  size_t start = 0;
  while (true) {
    size_t end = key.find('/', start);
    std::string_view c = key.substr(start, end == std::string_view::npos ? end : end - start);
    if (c.empty() || c == "." || c == ".." || c.size() > keyfs::kMaxNameLength) return false;
    if (c.find('\0') != std::string_view::npos) return false;
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    if (!keyfs::ValidateKey("", true).ok() || keyfs::ValidateKey("", false).ok()) std::abort();
    return 0;
  }
  const bool allow_root = data[0] & 1;
  std::string_view key(reinterpret_cast<const char*>(data) + 1, size - 1);
  keyfs::Status s = keyfs::ValidateKey(key, allow_root);
  const bool model = Valid(key, allow_root);
  const bool reserved = key == ".keyfs" || key.substr(0, 7) == ".keyfs/";
  // A reserved key may be refused where the model accepts it, never the other way round.
  if (s.ok() != model && !(reserved && model && !s.ok())) std::abort();
  if (!s.ok() || key.empty()) return 0;
  std::string_view parent = keyfs::ParentKey(key), base = keyfs::BaseName(key);
  std::string joined =
      parent.empty() ? std::string(base) : std::string(parent) + "/" + std::string(base);
  if (joined != key || base.empty() || base.find('/') != std::string_view::npos) std::abort();
  if (!parent.empty() && !keyfs::ValidateKey(parent).ok()) std::abort();
  return 0;
}
