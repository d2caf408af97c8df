// safepoint.c: the native-thread safepoint. A futex word the helper owns, in its own anonymous mapping
// (never on a stack), with a slot per registered native thread: its tid, its stack bounds, its SP and saved
// signal mask while parked. JavaScript requests and releases a park; native threads poll and park here.
//
// Why C: a parked thread must not touch a stack that will be released while it waits. The poll blocks every
// signal (no handler may run on that stack), records SP and waits with the futex system call inlined into its
// own frame (cryo_sys: nothing is pushed below SP but the red zone), which no JavaScript or libc call can
// promise.
#include "helper.h"

#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CRYO_SP_MAGIC 0x53504e54u  // "TNPS"
#define CRYO_SP_SLOTS 64

// The layout below is read by lib/kernel/park.ts (offsets and sizes): change both together, and bump the ABI.
struct cryo_sp_slot {
  uint32_t used;     // 1 while registered
  uint32_t arrived;  // the generation this thread parked for, 0 when running
  int32_t tid;
  uint32_t pad;
  uint64_t sp, stack_lo, stack_hi;  // SP while parked; the stack below the page where it registered
  char name[24];
  uint64_t sigmask;  // the thread's signal mask, saved while it is parked with every signal blocked
  uint8_t spare[56];
};

struct cryo_safepoint {
  uint32_t state;       // the futex word: 1 while a park is requested, else 0
  uint32_t generation;  // bumped by every request
  uint32_t magic, slots;
  uint32_t page;  // the page size, for readers that have no sysconf
  uint8_t pad[44];
  struct cryo_sp_slot slot[CRYO_SP_SLOTS];
};

// A new safepoint for native threads, in its own anonymous mapping; NULL when mmap fails.
void *cryo_safepoint_new(void) {
  void *p = mmap(0, sizeof(struct cryo_safepoint), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 0;
  struct cryo_safepoint *s = p;
  s->magic = CRYO_SP_MAGIC;
  s->slots = CRYO_SP_SLOTS;
  s->page = (uint32_t)sysconf(_SC_PAGESIZE);
  return p;
}

// Free a safepoint made by cryo_safepoint_new (nobody may be registered or parked on it). Returns 0 or -errno.
int cryo_safepoint_free(void *sp) {
  return (int)cryo_ret(munmap(sp, sizeof(struct cryo_safepoint)));
}

// Register the calling native thread under name (copied, at most 23 bytes). Records its tid and the bounds of
// its stack below the page holding the caller's SP (so glibc's TCB, TLS and rseq area above are never
// included). Returns the slot, or -ENOSPC / -EINVAL.
int cryo_safepoint_register(void *sp, const char *name) {
  struct cryo_safepoint *s = sp;
  if (!s || s->magic != CRYO_SP_MAGIC) return -EINVAL;
  pthread_attr_t attr;
  void *addr = 0;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  uint64_t here = (uint64_t)__builtin_frame_address(0), page = (uint64_t)sysconf(_SC_PAGESIZE);
  for (int i = 0; i < CRYO_SP_SLOTS; i++) {
    uint32_t zero = 0;
    if (!__atomic_compare_exchange_n(&s->slot[i].used, &zero, 2, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    struct cryo_sp_slot *me = &s->slot[i];
    me->arrived = 0;
    me->tid = (int32_t)cryo_sys(SYS_gettid, 0, 0, 0, 0, 0, 0);
    me->sp = 0;
    me->stack_lo = (uint64_t)addr;
    me->stack_hi = here & ~(page - 1);
    memset(me->name, 0, sizeof me->name);
    if (name) strncpy(me->name, name, sizeof me->name - 1);
    __atomic_store_n(&me->used, 1, __ATOMIC_RELEASE);
    return i;
  }
  return -ENOSPC;
}

// Unregister a slot (the thread is leaving for good). Returns 0 or -EINVAL.
int cryo_safepoint_unregister(void *sp, int slot) {
  struct cryo_safepoint *s = sp;
  if (!s || s->magic != CRYO_SP_MAGIC || slot < 0 || slot >= CRYO_SP_SLOTS) return -EINVAL;
  __atomic_store_n(&s->slot[slot].arrived, 0, __ATOMIC_RELEASE);
  __atomic_store_n(&s->slot[slot].used, 0, __ATOMIC_RELEASE);
  return 0;
}

// Every signal but glibc's internal SIGCANCEL (32) and SIGSETXID (33): setuid() in a threaded process waits
// for every thread to handle SIGSETXID, so blocking it could hang the process.
static const uint64_t cryo_all_signals = ~((1ull << 31) | (1ull << 32));

// Poll from a registered native thread: when a park is requested, block every signal (so no handler runs on
// this stack while parts of it are released: a signal frame with XSAVE state can outgrow a page), record SP,
// announce arrival and wait on the futex until released. The wait is an inline system call, so nothing is
// pushed below this frame; the one thing under SP is the 128-byte red zone, which is why the page holding SP
// and the one below stay mapped. The saved mask lives in the slot, not on the stack. Returns 1 when it parked,
// 0 when no park was requested (cannot fail).
int cryo_safepoint_poll(void *sp, int slot) {
  struct cryo_safepoint *s = sp;
  if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == 0) return 0;
  struct cryo_sp_slot *me = &s->slot[slot];
  uint32_t gen = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
  // rt_sigprocmask(SIG_BLOCK, all, &me->sigmask, 8): the old mask goes to the slot, not to this stack.
  cryo_sys(SYS_rt_sigprocmask, SIG_BLOCK, (long)&cryo_all_signals, (long)&me->sigmask, 8, 0, 0);
  uint64_t rsp;
  __asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
  me->sp = rsp;
  __atomic_store_n(&me->arrived, gen, __ATOMIC_RELEASE);
  while (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == 1 &&
         __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE) == gen) {
    cryo_sys(SYS_futex, (long)&s->state, FUTEX_WAIT_PRIVATE, 1, 0, 0, 0);  // EINTR, EAGAIN: look again
  }
  __atomic_store_n(&me->arrived, 0, __ATOMIC_RELEASE);
  cryo_sys(SYS_rt_sigprocmask, SIG_SETMASK, (long)&me->sigmask, 0, 8, 0, 0);
  return 1;
}

// Request a park: bump the generation, raise the word. Returns the new generation (cannot fail).
int cryo_safepoint_request(void *sp) {
  struct cryo_safepoint *s = sp;
  uint32_t gen = __atomic_add_fetch(&s->generation, 1, __ATOMIC_ACQ_REL);
  if (gen == 0) gen = __atomic_add_fetch(&s->generation, 1, __ATOMIC_ACQ_REL);  // 0 means "not arrived"
  __atomic_store_n(&s->state, 1, __ATOMIC_RELEASE);
  return (int)gen;
}

// Release every parked native thread: lower the word and FUTEX_WAKE all. Returns how many were woken, or -errno.
int cryo_safepoint_release(void *sp) {
  struct cryo_safepoint *s = sp;
  __atomic_store_n(&s->state, 0, __ATOMIC_RELEASE);
  return (int)cryo_sys(SYS_futex, (long)&s->state, FUTEX_WAKE_PRIVATE, 0x7fffffff, 0, 0, 0);
}
