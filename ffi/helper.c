// cryo helper: the few things that must be C. Every function returns -errno on failure.
//
// Build: deno task build   (cc -O2 -shared -fPIC -o ffi/build/libcryo_helper.so ffi/helper.c)
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CRYO_HELPER_ABI 1

// The ABI version of this helper; ffi/helper.ts refuses a helper built from another version.
int cryo_helper_abi(void) { return CRYO_HELPER_ABI; }

// A raw system call: the kernel's result, -errno on failure (never -1 with errno).
long cryo_syscall6(long nr, long a, long b, long c, long d, long e, long f) {
  long r = syscall(nr, a, b, c, d, e, f);
  return r == -1 ? -errno : r;
}

// Wait while *word == expected (FUTEX_WAIT_PRIVATE), retrying on EINTR, at most timeout_ns (<0: forever).
// Returns 0 when woken or the word changed, -ETIMEDOUT on timeout.
int cryo_futex_wait(uint32_t *word, uint32_t expected, long timeout_ns) {
  struct timespec ts, *tp = 0;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000L;
    ts.tv_nsec = timeout_ns % 1000000000L;
    tp = &ts;
  }
  while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == expected) {
    long r = syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, tp, 0, 0);
    if (r == -1 && errno == EAGAIN) return 0;
    if (r == -1 && errno == EINTR) continue;
    if (r == -1) return -errno;
    return 0;
  }
  return 0;
}

// Wake up to n waiters on *word. Returns how many were woken.
int cryo_futex_wake(uint32_t *word, int n) {
  long r = syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, n, 0, 0, 0);
  return r == -1 ? -errno : (int)r;
}

// Mark which pages of [p, p + len) are entirely zero: out[i] = 1 when page i is all zero, else 0.
// len must be a multiple of page. Returns the number of zero pages. Vectorises well at -O2.
long cryo_zero_pages(const unsigned char *p, size_t len, size_t page, unsigned char *out) {
  long zeros = 0;
  size_t n = len / page;
  for (size_t i = 0; i < n; i++) {
    const uint64_t *w = (const uint64_t *)(p + i * page);
    uint64_t acc = 0;
    size_t words = page / 8;
    for (size_t j = 0; j < words; j += 8) {
      acc |= w[j] | w[j + 1] | w[j + 2] | w[j + 3] | w[j + 4] | w[j + 5] | w[j + 6] | w[j + 7];
      if (acc) break;
    }
    out[i] = acc == 0;
    zeros += acc == 0;
  }
  return zeros;
}
