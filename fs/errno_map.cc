// The one place a store Status becomes an errno.
#include <cerrno>

#include "keyfs/fs/filesystem.h"

namespace keyfs::fs {

int StatusToErrno(const Status& s) {
  using C = Status::Code;
  switch (s.code()) {
    case C::kOk:
      return 0;
    case C::kNotFound:
      return ENOENT;
    case C::kAlreadyExists:
      return EEXIST;
    case C::kNotDirectory:
      return ENOTDIR;
    case C::kIsDirectory:
      return EISDIR;
    case C::kNotEmpty:
      return ENOTEMPTY;
    case C::kInvalidArgument:
      return EINVAL;
    case C::kNameTooLong:
      return ENAMETOOLONG;
    case C::kCorruption:
      return EIO;
    case C::kIOError:
      return s.sys_errno() > 0 ? s.sys_errno() : EIO;
    case C::kNoSpace:
      return ENOSPC;
    case C::kBusy:
      return EBUSY;
    case C::kPermissionDenied:
      return EPERM;
    case C::kNotSupported:
      return EOPNOTSUPP;
    case C::kReadOnly:
      return EROFS;
    case C::kTooLarge:
      return EFBIG;
  }
  return EIO;
}

}  // namespace keyfs::fs
