// Failpoints: named places in the commit and sync paths where a test can crash the process
// or fail the step, through the environment of an unmodified binary (so the crash matrix
// runs the real daemon on a real mount).
//
//   KEYFS_FAILPOINT=NAME:ACTION[:NTH[:COUNT]][,NAME:ACTION...]
//     ACTION  kill (SIGKILL this process), eio or enospc (the step fails with that error)
//     NTH     the first hit that fires (1 = the first, the default)
//     COUNT   how many hits fire from there (default 1; 0 = every one)
//   KEYFS_FAILPOINT_TRACE=FILE  appends the name of every failpoint passed to FILE, one per
//     line (a test learns the points a commit passes, then crashes at each).
//
// The names: "env.create", "env.write", "env.truncate", "env.fsync", "env.link",
// "env.rename", "env.remove", "env.fsync_dir" (before each call the default Env makes) and
// the engines' own, named "snapshot.*" and "dets.*" (see their .cc files).
// Built in with -DKEYFS_FAILPOINTS=ON (the default; =OFF leaves them out): one
// predictable branch per call when the variables are unset.
#pragma once

#include <string_view>

#include "keyfs/store/status.h"

namespace keyfs {

#ifdef KEYFS_FAILPOINTS
// OK, or the injected error; with action kill, does not return.
[[nodiscard]] Status FailPoint(std::string_view name);
#else
[[nodiscard]] inline Status FailPoint(std::string_view) { return Status::OK(); }
#endif

}  // namespace keyfs
