// Status and StatusOr: how every store/ function reports success or failure.
// No exception ever leaves store/; callers test ok() and branch on code().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace keyfs {

// A result code plus an optional message. An OK or message-less Status allocates nothing,
// so hot paths (lookups that miss) can return Status::NotFound() freely.
// Thread-safety: a Status is a value; distinct objects may be used from any thread.
class [[nodiscard]] Status {
 public:
  enum class Code : uint8_t {
    kOk = 0,
    kNotFound,          // ENOENT
    kAlreadyExists,     // EEXIST
    kNotDirectory,      // ENOTDIR
    kIsDirectory,       // EISDIR
    kNotEmpty,          // ENOTEMPTY
    kInvalidArgument,   // EINVAL
    kNameTooLong,       // ENAMETOOLONG
    kCorruption,        // EIO: a store file failed a check
    kIOError,           // EIO (or the errno carried in sys_errno())
    kNoSpace,           // ENOSPC
    kBusy,              // EBUSY: e.g. a dets store held by another writer
    kPermissionDenied,  // EPERM / EACCES
    kNotSupported,      // EOPNOTSUPP
    kReadOnly,          // EROFS
    kTooLarge,          // EFBIG: a value over kMaxValueSize
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status NotFound(std::string_view msg = {}) { return Status(Code::kNotFound, msg); }
  static Status AlreadyExists(std::string_view msg = {}) {
    return Status(Code::kAlreadyExists, msg);
  }
  static Status NotDirectory(std::string_view msg = {}) { return Status(Code::kNotDirectory, msg); }
  static Status IsDirectory(std::string_view msg = {}) { return Status(Code::kIsDirectory, msg); }
  static Status NotEmpty(std::string_view msg = {}) { return Status(Code::kNotEmpty, msg); }
  static Status InvalidArgument(std::string_view msg = {}) {
    return Status(Code::kInvalidArgument, msg);
  }
  static Status NameTooLong(std::string_view msg = {}) { return Status(Code::kNameTooLong, msg); }
  static Status Corruption(std::string_view msg = {}) { return Status(Code::kCorruption, msg); }
  static Status Busy(std::string_view msg = {}) { return Status(Code::kBusy, msg); }
  static Status PermissionDenied(std::string_view msg = {}) {
    return Status(Code::kPermissionDenied, msg);
  }
  static Status NotSupported(std::string_view msg = {}) { return Status(Code::kNotSupported, msg); }
  static Status ReadOnly(std::string_view msg = {}) { return Status(Code::kReadOnly, msg); }
  static Status NoSpace(std::string_view msg = {}) { return Status(Code::kNoSpace, msg); }
  static Status TooLarge(std::string_view msg = {}) { return Status(Code::kTooLarge, msg); }
  // An I/O failure; `err` is the errno observed. ENOSPC/EDQUOT become kNoSpace.
  static Status FromErrno(int err, std::string_view what);
  static Status IOError(std::string_view msg, int err = 0);

  Status(const Status& o) : code_(o.code_), errno_(o.errno_) {
    if (o.msg_) msg_ = std::make_unique<std::string>(*o.msg_);
  }
  Status& operator=(const Status& o) {
    if (this != &o) *this = Status(o);
    return *this;
  }
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  // The message given at construction; empty if none.
  std::string_view message() const { return msg_ ? std::string_view(*msg_) : std::string_view(); }
  // errno observed by an I/O failure, 0 otherwise.
  int sys_errno() const { return errno_; }
  // "OK", or "<code name>: <message>".
  std::string ToString() const;
  // Returns a copy whose message is "<prefix>: <message>".
  Status WithContext(std::string_view prefix) const;
  static const char* CodeName(Code c);

 private:
  Status(Code c, std::string_view msg, int err = 0) : code_(c), errno_(err) {
    if (!msg.empty()) msg_ = std::make_unique<std::string>(msg);
  }
  Code code_ = Code::kOk;
  int errno_ = 0;
  std::unique_ptr<std::string> msg_;
};

// Either a value or a non-OK Status. REQUIRES: value() only when ok().
template <class T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status s) : status_(std::move(s)) {}  // NOLINT: implicit by design
  StatusOr(T v) : value_(std::move(v)) {}        // NOLINT: implicit by design
  bool ok() const { return status_.ok(); }
  const Status& status() const& { return status_; }
  Status status() && { return std::move(status_); }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace keyfs

#define KEYFS_RETURN_IF_ERROR(expr) \
  do {                              \
    ::keyfs::Status _st = (expr);   \
    if (!_st.ok()) return _st;      \
  } while (0)
