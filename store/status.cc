// Status formatting and errno classification.
#include "keyfs/store/status.h"

#include <cerrno>
#include <cstring>

namespace keyfs {

const char* Status::CodeName(Code c) {
  switch (c) {
    case Code::kOk:
      return "OK";
    case Code::kNotFound:
      return "not found";
    case Code::kAlreadyExists:
      return "already exists";
    case Code::kNotDirectory:
      return "not a directory";
    case Code::kIsDirectory:
      return "is a directory";
    case Code::kNotEmpty:
      return "directory not empty";
    case Code::kInvalidArgument:
      return "invalid argument";
    case Code::kNameTooLong:
      return "name too long";
    case Code::kCorruption:
      return "corruption";
    case Code::kIOError:
      return "I/O error";
    case Code::kNoSpace:
      return "no space left on device";
    case Code::kBusy:
      return "busy";
    case Code::kPermissionDenied:
      return "permission denied";
    case Code::kNotSupported:
      return "not supported";
    case Code::kReadOnly:
      return "read-only store";
    case Code::kTooLarge:
      return "value too large";
  }
  return "unknown";
}

Status Status::FromErrno(int err, std::string_view what) {
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(err);
  switch (err) {
    case ENOENT:
      return Status(Code::kNotFound, msg, err);
    case EEXIST:
      return Status(Code::kAlreadyExists, msg, err);
    case ENOSPC:
    case EDQUOT:
      return Status(Code::kNoSpace, msg, err);
    case EACCES:
    case EPERM:
      return Status(Code::kPermissionDenied, msg, err);
    case EROFS:
      return Status(Code::kReadOnly, msg, err);
    case ENOTDIR:
      return Status(Code::kNotDirectory, msg, err);
    case EISDIR:
      return Status(Code::kIsDirectory, msg, err);
    default:
      return Status(Code::kIOError, msg, err);
  }
}

Status Status::IOError(std::string_view msg, int err) { return Status(Code::kIOError, msg, err); }

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s = CodeName(code_);
  if (msg_) {
    s += ": ";
    s += *msg_;
  }
  return s;
}

Status Status::WithContext(std::string_view prefix) const {
  if (ok()) return Status();
  std::string m(prefix);
  if (msg_) {
    m += ": ";
    m += *msg_;
  }
  return Status(code_, m, errno_);
}

}  // namespace keyfs
