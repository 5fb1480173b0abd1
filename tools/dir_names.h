// Reading the names of a directory open as a descriptor, for import and export.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "keyfs/store/status.h"

namespace keyfs::ctl {

// Calls fn(name) for each entry of the directory open at `fd` but "." and "..", in readdir
// order, until fn returns false. A duplicate of `fd` is read, so `fd` stays open and usable.
// A failure is a tool Status naming `path` (see error_text.h).
Status ForEachName(int fd, const std::string& path,
                   const std::function<bool(std::string_view name)>& fn);

}  // namespace keyfs::ctl
