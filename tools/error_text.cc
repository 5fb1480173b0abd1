// keyfsctl's message formatting: see error_text.h.
#include "error_text.h"

#include <cstring>

namespace keyfs::ctl {

std::string Printable(std::string_view name) {
  constexpr size_t kLongName = 256;
  constexpr size_t kShownPrefix = 64;
  std::string_view shown = name.size() > kLongName ? name.substr(0, kShownPrefix) : name;
  std::string out;
  out.reserve(shown.size() + 16);
  for (unsigned char c : shown) {
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (shown.size() != name.size()) {
    out += "...(" + std::to_string(name.size()) + " bytes)";
  }
  return out;
}

std::string ErrnoText(std::string_view path, int err) {
  return Printable(path) + ": " + std::strerror(err);
}

std::string StoreErrorText(std::string_view store, const Status& s) {
  std::string_view msg = s.message();
  // Store messages usually begin with the file they are about; say it once.
  if (msg.size() > store.size() + 2 && msg.substr(0, store.size()) == store &&
      msg.substr(store.size(), 2) == ": ") {
    msg.remove_prefix(store.size() + 2);
  }
  std::string text = Printable(store) + ": " + Status::CodeName(s.code());
  if (!msg.empty()) text += ": " + Printable(msg);
  return text;
}

bool IsKeyError(const Status& s) {
  switch (s.code()) {
    case Status::Code::kNotFound:
    case Status::Code::kAlreadyExists:
    case Status::Code::kNotDirectory:
    case Status::Code::kIsDirectory:
    case Status::Code::kNotEmpty:
    case Status::Code::kInvalidArgument:
    case Status::Code::kNameTooLong:
      return true;
    default:
      return false;
  }
}

std::string KeyErrorText(std::string_view key, const Status& s) {
  std::string text = Printable(key) + ": ";
  switch (s.code()) {
    case Status::Code::kNotFound:
      return text + "key not found";
    case Status::Code::kInvalidArgument:
    case Status::Code::kNameTooLong:
      text += "invalid key";
      if (!s.message().empty()) text += ": " + Printable(s.message());
      return text;
    default:
      return text + Status::CodeName(s.code());
  }
}

}  // namespace keyfs::ctl
