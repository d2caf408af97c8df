// helper.h: what the helper's C files share. The ABI number, the exported prototypes (the interface that
// ffi/helper.ts binds, one block per file), the one raw system call wrapper, and the clock and nap every
// bounded wait uses. Everything here is a macro, a declaration or static inline: the header adds no symbol.
//
// Conventions (docs/NATIVE.md): every exported function returns -errno on failure (never -1 with errno set);
// the few that cannot fail say so, and the one pointer result (cryo_safepoint_new) is NULL on failure. Every
// raw system call goes through cryo_sys(), which returns the kernel's result as it is (-errno on failure).
// x86_64 Linux only, like the rest of cryo.
#ifndef CRYO_HELPER_H
#define CRYO_HELPER_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>

#if !defined(__x86_64__)
#error "the cryo helper supports x86_64 Linux only"
#endif

// The version of the exported interface. Bump it (and HELPER_ABI in ffi/helper.ts) whenever a function is
// added, removed or changes its prototype or meaning: ffi/helper.ts refuses a helper built from another version.
#define CRYO_HELPER_ABI 8

// ---- abi.c ----
int cryo_helper_abi(void);
long cryo_syscall6(long nr, long a, long b, long c, long d, long e, long f);

// ---- futex.c ----
int cryo_futex_wait(uint32_t *word, uint32_t expected, long timeout_ns);
int cryo_futex_wake(uint32_t *word, int n);

// ---- gather.c ----
long cryo_zero_pages(const unsigned char *p, size_t len, size_t page, unsigned char *out);
long cryo_checksums(const uint64_t *iov, size_t n, size_t stride, uint64_t *out);
long cryo_gather(int pid, unsigned char *local, size_t capacity, const uint64_t *runs, size_t nruns,
                 uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                 uint64_t *sums, size_t max_pieces, uint64_t *npieces);
// Not bound in ffi/helper.ts: the gather of live.c, with its hook.
struct cryo_gather_hook {
  void *ctx;
  // Fill the page at `local` whose remote address `addr` could not be read; 0, or -errno to fail the gather.
  long (*missing)(void *ctx, unsigned char *local, uint64_t addr);
  // See the `filled` bytes copied from runs[cursor (run, off)] on, before they are split; 0, or -errno.
  long (*settle)(void *ctx, unsigned char *local, const uint64_t *runs, uint64_t run, uint64_t off, size_t filled);
};
long cryo_gather_hooked(int pid, unsigned char *local, size_t capacity, const uint64_t *runs, size_t nruns,
                        uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                        uint64_t *sums, size_t max_pieces, uint64_t *npieces, const struct cryo_gather_hook *hook);

// ---- live.c ----
void *cryo_live_start(int uffd, int pid, int pagemap, const uint64_t *runs, size_t nruns, size_t page,
                      size_t neighbours, int64_t *err);
long cryo_live_stats(void *server, uint64_t *out);
long cryo_live_stop(void *server, uint64_t *out);
long cryo_live_gather(void *server, int pid, unsigned char *local, size_t capacity, const uint64_t *runs,
                      size_t nruns, uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                      uint64_t *sums, size_t max_pieces, uint64_t *npieces);

// ---- diff.c ----
long cryo_diff_runs(const uint64_t *liov, size_t n, unsigned char *old, size_t page, uint64_t *runs,
                    size_t max_runs);

// ---- save_write.c ----
long cryo_save_write(int pid, const uint64_t *liov, const uint64_t *riov, size_t n, unsigned char *old,
                     size_t old_cap, size_t page, uint64_t *runs, size_t max_runs, uint64_t *out);

// ---- pread.c ----
long cryo_pread_many(int fd, const uint64_t *ops, size_t n, uint64_t *failed);

// ---- freeze.c ----
long cryo_freeze(int pid, int32_t *tids, int32_t *sigs, int max, long timeout_ns, int32_t *info, int boost);
long cryo_thaw(int pid, const int32_t *tids, const int32_t *sigs, int n, long timeout_ns, int boost);

// ---- safepoint.c ----
void *cryo_safepoint_new(void);
int cryo_safepoint_free(void *sp);
int cryo_safepoint_register(void *sp, const char *name);
int cryo_safepoint_unregister(void *sp, int slot);
int cryo_safepoint_poll(void *sp, int slot);
int cryo_safepoint_request(void *sp);
int cryo_safepoint_release(void *sp);

// ---- rseq.c ----
long cryo_rseq_area(void);
long cryo_rseq_self(const int32_t *tids, int n, void *out, long timeout_ns);

// ptrace requests, options and events (numbers from <linux/ptrace.h>, which clashes with glibc's headers).
#define CRYO_PTRACE_CONT 7
#define CRYO_PTRACE_DETACH 17
#define CRYO_PTRACE_GETEVENTMSG 0x4201
#define CRYO_PTRACE_SEIZE 0x4206
#define CRYO_PTRACE_INTERRUPT 0x4207
#define CRYO_PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#define CRYO_PTRACE_O_TRACECLONE 0x8
#define CRYO_PTRACE_O_TRACESYSGOOD 0x1  // syscall stops say so (SIGTRAP | 0x80): injected calls stop at entry
#define CRYO_PTRACE_EVENT_CLONE 3
#define CRYO_PTRACE_EVENT_STOP 128
#define CRYO_WALL 0x40000000  // __WALL: wait for threads (clones) too
#define CRYO_PR_SET_PTRACER 0x59616d61

// A raw system call: the kernel's result as it is, -errno on failure. It is the syscall instruction itself,
// inlined into the caller: it touches no errno, takes no lock and pushes nothing on the stack, so it is safe in
// a child made by a raw clone of a threaded process (rseq.c) and in a thread parked on a stack that is being
// released (safepoint.c). Pointers are passed as (long).
static inline __attribute__((always_inline)) long cryo_sys(long nr, long a, long b, long c, long d, long e,
                                                           long f) {
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  long ret;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}

// A libc result turned into the helper's convention: -errno when the call failed (returned a negative value and
// set errno), else the result. Call it on the result immediately, before anything else can change errno.
static inline long cryo_ret(long r) { return r < 0 ? -errno : r; }

// CLOCK_MONOTONIC in nanoseconds, for deadlines.
static inline uint64_t cryo_now_ns(void) {
  struct timespec ts = {0, 0};
  cryo_sys(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&ts, 0, 0, 0, 0);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// Sleep ns nanoseconds (less than a second), between the polls of a bounded wait.
static inline void cryo_nap_ns(long ns) {
  struct timespec ts = {0, ns};
  cryo_sys(SYS_nanosleep, (long)&ts, 0, 0, 0, 0, 0);
}

// struct sched_attr (sched_setattr(2)), for a brief SCHED_FIFO boost of a thread that must run now.
struct cryo_sched_attr {
  uint32_t size, sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime, sched_deadline, sched_period;
  uint32_t sched_util_min, sched_util_max;
};

// Make thread tid (0: the calling thread) SCHED_FIFO priority 1 for a moment, saving its attributes; only a
// SCHED_OTHER or SCHED_BATCH thread is changed. Returns 1 when it changed it (give it back with
// cryo_fifo_unboost), 0 otherwise (no CAP_SYS_NICE, another policy). Best effort.
static inline int cryo_fifo_boost(int tid, struct cryo_sched_attr *saved) {
  __builtin_memset(saved, 0, sizeof *saved);
  if (cryo_sys(SYS_sched_getattr, tid, (long)saved, sizeof *saved, 0, 0, 0)) return 0;
  if (saved->sched_policy != 0 /* SCHED_OTHER */ && saved->sched_policy != 3 /* SCHED_BATCH */) return 0;
  struct cryo_sched_attr fifo = {.size = sizeof fifo, .sched_policy = 1 /* SCHED_FIFO */, .sched_priority = 1};
  return cryo_sys(SYS_sched_setattr, tid, (long)&fifo, 0, 0, 0, 0) == 0;
}

static inline void cryo_fifo_unboost(int tid, struct cryo_sched_attr *saved, int boosted) {
  if (!boosted) return;
  saved->size = sizeof *saved;
  cryo_sys(SYS_sched_setattr, tid, (long)saved, 0, 0, 0, 0);  // ESRCH when it died: fine
}

#endif
