// Publishing a file whole: temp, write, fsync, rename, fsync the directory.
#include "publish.h"

#include <unistd.h>

#include <atomic>

#include "file_util.h"

namespace keyfs {

namespace {

// Writes a temp beside `path`, syncs it and renames it into place (over an existing file
// unless `no_replace`), then syncs the directory. The temp is removed on failure.
Status PublishFile(Env* env, const std::string& path, bool no_replace,
                   const std::function<Status(WritableFile*)>& write) {
  // A temp of this name may be left by a crash of an earlier process that had our pid (pids
  // repeat after a reboot): then the next number. Open read-write removes such leftovers.
  static std::atomic<uint64_t> counter{0};
  std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-create-";
  const size_t stem = tmp.size();
  tmp += std::to_string(++counter);
  auto file = env->NewExclusiveFile(tmp);
  for (int tries = 1; tries < 100 && file.status().code() == Status::Code::kAlreadyExists;
       ++tries) {
    tmp.resize(stem);
    tmp += std::to_string(++counter);
    file = env->NewExclusiveFile(tmp);
  }
  if (!file.ok()) return file.status();
  Status s = write(file->get());
  if (s.ok()) s = (*file)->Sync();
  if (s.ok()) s = (*file)->Close();
  if (s.ok()) s = no_replace ? env->RenameNoReplace(tmp, path) : env->Rename(tmp, path);
  if (!s.ok()) {
    (void)env->RemoveFile(tmp);
    return s;
  }
  return env->SyncDir(DirName(path));
}

}  // namespace

Status CreateFileAtomically(Env* env, const std::string& path,
                            const std::function<Status(WritableFile*)>& write) {
  return PublishFile(env, path, /*no_replace=*/true, write);
}

Status ReplaceFileAtomically(Env* env, const std::string& path,
                             const std::function<Status(WritableFile*)>& write) {
  return PublishFile(env, path, /*no_replace=*/false, write);
}

}  // namespace keyfs
