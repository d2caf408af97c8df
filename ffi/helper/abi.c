// abi.c: what ffi/helper.ts calls first, and the raw system call for TypeScript.
//
// cryo_helper_abi lets the loader refuse a library built from another version of helper.h. cryo_syscall6 is
// the one path for a system call that glibc has no wrapper for (sched_getattr, userfaultfd): Deno's FFI cannot
// read errno reliably after a call, so it returns -errno like every helper function.
#include "helper.h"

// The ABI version of this helper (CRYO_HELPER_ABI); ffi/helper.ts refuses a helper built from another version.
int cryo_helper_abi(void) { return CRYO_HELPER_ABI; }

// A raw system call: the kernel's result, -errno on failure (never -1 with errno).
long cryo_syscall6(long nr, long a, long b, long c, long d, long e, long f) {
  return cryo_sys(nr, a, b, c, d, e, f);
}
