// Clang's thread-safety annotations (-Wthread-safety): which mutex guards a member, which
// locks a function needs or takes, the order locks are taken in. Other compilers see
// nothing. (leveldb's port/thread_annotations.h; the attributes are documented in clang's
// ThreadSafetyAnalysis.html.)
//
// How keyfs uses them: a member a mutex protects is GUARDED_BY(mu_); a function that must
// be called with a lock held says REQUIRES(mu_) (REQUIRES_SHARED for a reader's lock) in
// place of a "REQUIRES: mu_ held" comment; a function that takes a lock itself and must not
// be called with it held says EXCLUDES(mu_); lock order within one object is ACQUIRED_AFTER
// on the later lock (checked with -Wthread-safety-beta). Lock types: keyfs/base/mutex.h.
#pragma once

#if defined(__clang__)
#define KEYFS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define KEYFS_THREAD_ANNOTATION(x)
#endif

#ifndef CAPABILITY
#define CAPABILITY(x) KEYFS_THREAD_ANNOTATION(capability(x))
#endif
#ifndef SCOPED_CAPABILITY
#define SCOPED_CAPABILITY KEYFS_THREAD_ANNOTATION(scoped_lockable)
#endif
#ifndef GUARDED_BY
#define GUARDED_BY(x) KEYFS_THREAD_ANNOTATION(guarded_by(x))
#endif
#ifndef PT_GUARDED_BY
#define PT_GUARDED_BY(x) KEYFS_THREAD_ANNOTATION(pt_guarded_by(x))
#endif
#ifndef ACQUIRED_BEFORE
#define ACQUIRED_BEFORE(...) KEYFS_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#endif
#ifndef ACQUIRED_AFTER
#define ACQUIRED_AFTER(...) KEYFS_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#endif
#ifndef REQUIRES
#define REQUIRES(...) KEYFS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#endif
#ifndef REQUIRES_SHARED
#define REQUIRES_SHARED(...) KEYFS_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#endif
#ifndef ACQUIRE
#define ACQUIRE(...) KEYFS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#endif
#ifndef ACQUIRE_SHARED
#define ACQUIRE_SHARED(...) KEYFS_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#endif
#ifndef RELEASE
#define RELEASE(...) KEYFS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#endif
#ifndef RELEASE_SHARED
#define RELEASE_SHARED(...) KEYFS_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#endif
#ifndef RELEASE_GENERIC
#define RELEASE_GENERIC(...) KEYFS_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#endif
#ifndef EXCLUDES
#define EXCLUDES(...) KEYFS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#endif
#ifndef ASSERT_CAPABILITY
#define ASSERT_CAPABILITY(x) KEYFS_THREAD_ANNOTATION(assert_capability(x))
#endif
#ifndef NO_THREAD_SAFETY_ANALYSIS
#define NO_THREAD_SAFETY_ANALYSIS KEYFS_THREAD_ANNOTATION(no_thread_safety_analysis)
#endif
