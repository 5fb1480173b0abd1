#include "publish.h"

#include <unistd.h>

#include <atomic>

#include "file_util.h"

namespace keyfs {

Status CreateFileAtomically(Env* env, const std::string& path,
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
  if (s.ok()) s = env->RenameNoReplace(tmp, path);
  if (!s.ok()) {
    (void)env->RemoveFile(tmp);
    return s;
  }
  return env->SyncDir(DirName(path));
}

}  // namespace keyfs
