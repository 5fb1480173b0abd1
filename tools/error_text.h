// How keyfsctl names keys, paths and failures in its one-line error messages
// ("keyfsctl: <what is wrong>").
//
// Convention inside tools/: a function that fails with a tool-made Status puts the whole
// user-facing text (without the "keyfsctl: " prefix) in message(); the code is then only a
// rough class, since every such failure exits with status 1.
#pragma once

#include <string>
#include <string_view>

#include "keyfs/store/status.h"

namespace keyfs::ctl {

// `name` made fit for one line of a message: control bytes (and DEL) become \xNN, and a
// name longer than 256 bytes is cut to its first 64 bytes followed by "...(N bytes)".
std::string Printable(std::string_view name);

// "<path>: <strerror(err)>", the way coreutils report a failed system call.
std::string ErrnoText(std::string_view path, int err);

// A failure of the store at `store` as "<store>: <code name>[: <message>]". The message is
// not prefixed with the store path a second time when the store already starts with it.
std::string StoreErrorText(std::string_view store, const Status& s);

// A failure about one key as "<key>: <what>": "key not found", "is a directory",
// "not a directory", "directory not empty", "already exists", "invalid key: <why>".
// REQUIRES: IsKeyError(s).
std::string KeyErrorText(std::string_view key, const Status& s);

// True for the codes that describe a key rather than the store: NotFound, AlreadyExists,
// NotDirectory, IsDirectory, NotEmpty, InvalidArgument, NameTooLong.
bool IsKeyError(const Status& s);

// A tool-made failure carrying `text` as its message (see the convention above).
inline Status Failure(std::string_view text) { return Status::IOError(text); }

}  // namespace keyfs::ctl
