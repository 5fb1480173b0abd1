// Opening, creating, detecting and verifying stores: dispatch on the file's magic.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "dets/engine.h"
#include "format.h"
#include "keyfs/store/engine.h"
#include "keyfs/store/snapshot.h"
#include "snapshot/engine.h"

namespace keyfs {

StatusOr<EngineKind> DetectEngine(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, path);
  char magic[8] = {};
  ssize_t n = ::pread(fd, magic, sizeof(magic), 0);
  int err = errno;
  ::close(fd);
  if (n < 0) return Status::FromErrno(err, "read " + path);
  if (n == 8 && std::memcmp(magic, format::kSnapMagic, 8) == 0) return EngineKind::kSnapshot;
  if (n == 8 && std::memcmp(magic, format::kDetsMagic, 8) == 0) return EngineKind::kDets;
  // The magic opens a snapshot's header and a dets file's prefix.
  if (n < 8) {
    return Status::Corruption(path + ": not a keyfs store (" + std::to_string(n) +
                              " bytes): it ends inside the magic of a header or prefix at offset " +
                              std::to_string(n));
  }
  return Status::Corruption(path +
                            ": not a keyfs store: unknown magic of a header or prefix at offset 0");
}

Status CreateStore(const std::string& path, EngineKind kind, Env* env) {
  switch (kind) {
    case EngineKind::kSnapshot:
      return CreateSnapshotStore(path, env);
    case EngineKind::kDets:
      return CreateDetsStore(path, env);
  }
  return Status::InvalidArgument("unknown engine");
}

StatusOr<std::unique_ptr<Engine>> OpenStore(const std::string& path, const OpenOptions& options) {
  auto kind = DetectEngine(path);
  if (!kind.ok() && kind.status().IsNotFound() && options.create) {
    Status s = CreateStore(path, options.kind, options.env);
    if (!s.ok() && s.code() != Status::Code::kAlreadyExists) return s;
    kind = DetectEngine(path);
  }
  if (!kind.ok()) return kind.status();
  if (options.kind_given && *kind != options.kind) {
    return Status::InvalidArgument(path + " is a " + EngineKindName(*kind) + " store, not " +
                                   EngineKindName(options.kind));
  }
  switch (*kind) {
    case EngineKind::kSnapshot:
      return OpenSnapshotEngine(path, options);
    case EngineKind::kDets:
      return OpenDetsEngine(path, options);
  }
  return Status::InvalidArgument("unknown engine");
}

Status VerifyStore(const std::string& path, std::vector<std::string>* report) {
  auto kind = DetectEngine(path);
  if (!kind.ok()) return kind.status();
  if (*kind == EngineKind::kDets) return VerifyDetsStore(path, report);
  return VerifySnapshotStore(path, report);
}

}  // namespace keyfs
