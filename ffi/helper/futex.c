// futex.c: wait on and wake a 32-bit word with FUTEX_WAIT_PRIVATE / FUTEX_WAKE_PRIVATE.
//
// Why C: JavaScript's Atomics.wait works only on a SharedArrayBuffer and waits on V8's own condvar, which a
// raw futex wake does not reach; a futex wait on any word (one the helper or a native thread owns) has to be
// the system call itself, blocking on a pool thread (the binding is nonblocking) so the event loop runs on.
#include "helper.h"

#include <linux/futex.h>

// Wait while *word == expected (FUTEX_WAIT_PRIVATE), retrying on EINTR, at most timeout_ns (<0: forever).
// Returns 0 when woken or the word changed, -ETIMEDOUT on timeout, another -errno on failure.
int cryo_futex_wait(uint32_t *word, uint32_t expected, long timeout_ns) {
  struct timespec ts, *tp = 0;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000L;
    ts.tv_nsec = timeout_ns % 1000000000L;
    tp = &ts;
  }
  while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == expected) {
    long r = cryo_sys(SYS_futex, (long)word, FUTEX_WAIT_PRIVATE, expected, (long)tp, 0, 0);
    if (r == -EAGAIN) return 0;  // the word changed before we slept
    if (r == -EINTR) continue;
    return r < 0 ? (int)r : 0;
  }
  return 0;
}

// Wake up to n waiters on *word. Returns how many were woken, or -errno.
int cryo_futex_wake(uint32_t *word, int n) {
  return (int)cryo_sys(SYS_futex, (long)word, FUTEX_WAKE_PRIVATE, n, 0, 0, 0);
}
