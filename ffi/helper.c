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

// ---- Stopping the writers (issue 5): freeze another process with ptrace, park native threads on a futex the
// helper owns, read this process's rseq configuration from a forked ptracing child. ----
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define CRYO_PTRACE_DETACH 17
#define CRYO_PTRACE_GETEVENTMSG 0x4201
#define CRYO_PTRACE_SEIZE 0x4206
#define CRYO_PTRACE_INTERRUPT 0x4207
#define CRYO_PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#define CRYO_PTRACE_O_TRACECLONE 0x8
#define CRYO_PTRACE_EVENT_CLONE 3
#define CRYO_PTRACE_EVENT_STOP 128
#define CRYO_WALL 0x40000000
#define CRYO_PR_SET_PTRACER 0x59616d61

static long cryo_sys_ptrace(long req, long tid, long addr, long data) {
  long r = syscall(SYS_ptrace, req, tid, addr, data);
  return r == -1 ? -errno : r;
}

static uint64_t cryo_now_ns(void) {
  struct timespec ts;
  syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void cryo_nap_ns(long ns) {
  struct timespec ts = {0, ns};
  syscall(SYS_nanosleep, &ts, 0);
}

// A field of /proc/<pid>/task/<tid>/status ("TracerPid", "PPid"), or -errno.
static long cryo_status_field(int pid, int tid, const char *field) {
  char path[64], buf[4096];
  if (tid > 0) snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
  else snprintf(path, sizeof path, "/proc/%d/status", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0) return -EIO;
  buf[n] = 0;
  size_t fl = strlen(field);
  for (char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : 0) {
    if (strncmp(p, field, fl) == 0 && p[fl] == ':') return strtol(p + fl + 1, 0, 10);
  }
  return -ENOENT;
}

// Whether a task is a zombie or dead (its State in /proc is Z or X), or gone altogether.
static int cryo_task_exited(int pid, int tid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 1;
  buf[n] = 0;
  char *p = strrchr(buf, ')');  // the state follows the command name, which may hold spaces and ')'
  return !p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X';
}

enum { CRYO_T_SEIZED = 1, CRYO_T_STOPPED = 2, CRYO_T_GONE = 3 };

// The threads of one freeze: tid, the signal to hand back at detach, and where each one stands.
// struct sched_attr (SCHED_ATTR_SIZE_VER1), declared here: glibc's headers lack it.
struct cryo_sched_attr {
  uint32_t size, sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime, sched_deadline, sched_period;
  uint32_t sched_util_min, sched_util_max;
};

// A thread briefly made SCHED_FIFO so it reaches its stop now, and the attributes to give back.
struct cryo_boost {
  int32_t tid;
  struct cryo_sched_attr saved;
};

struct cryo_frz {
  int pid, n, cap, self_parent, leader_gone;
  int32_t *tids, *sigs;
  uint8_t *st, *boosted;
  struct cryo_boost *boost;
  int nboost;
};

static int cryo_frz_find(struct cryo_frz *f, int tid) {
  for (int i = 0; i < f->n; i++)
    if (f->tids[i] == tid) return i;
  return -1;
}

static int cryo_frz_add(struct cryo_frz *f, int tid, uint8_t state) {
  if (f->n == f->cap) {
    int cap = f->cap ? f->cap * 2 : 64;
    int32_t *t = realloc(f->tids, cap * sizeof *t), *s = t ? realloc(f->sigs, cap * sizeof *s) : 0;
    if (t) f->tids = t;
    if (s) f->sigs = s;
    uint8_t *st = s ? realloc(f->st, cap) : 0;
    if (st) f->st = st;
    uint8_t *boosted = st ? realloc(f->boosted, cap) : 0;
    if (boosted) f->boosted = boosted;
    struct cryo_boost *boost = boosted ? realloc(f->boost, cap * sizeof *boost) : 0;
    if (!boost) return -ENOMEM;
    f->boost = boost;
    f->cap = cap;
  }
  f->tids[f->n] = tid;
  f->sigs[f->n] = 0;
  f->st[f->n] = state;
  f->boosted[f->n] = 0;
  return f->n++;
}

// A runnable thread that is not on a CPU reaches its stop only when the scheduler gets to it; among hundreds
// of spinning threads on two cores that takes its turn in a long queue. Make each thread still running
// SCHED_FIFO (priority 1) so it is scheduled now and stops at once; its attributes are given back while it is
// stopped (cryo_frz_unboost), before it runs user code again. Best effort: without CAP_SYS_NICE nothing changes.
static void cryo_frz_boost(struct cryo_frz *f) {
  for (int i = 0; i < f->n; i++) {
    if (f->st[i] != CRYO_T_SEIZED || f->boosted[i]) continue;
    f->boosted[i] = 1;
    struct cryo_boost *b = &f->boost[f->nboost];
    memset(b, 0, sizeof *b);
    if (syscall(SYS_sched_getattr, f->tids[i], &b->saved, sizeof b->saved, 0)) continue;
    if (b->saved.sched_policy != SCHED_OTHER && b->saved.sched_policy != SCHED_BATCH) continue;
    struct cryo_sched_attr fifo = {.size = sizeof fifo, .sched_policy = SCHED_FIFO, .sched_priority = 1};
    if (syscall(SYS_sched_setattr, f->tids[i], &fifo, 0)) continue;
    b->tid = f->tids[i];
    f->nboost++;
  }
}

// Run the calling thread SCHED_FIFO (priority 1) for a moment: while it seizes or detaches hundreds of threads,
// the ones already running would otherwise preempt it again and again. Returns 1 when it changed anything.
static int cryo_self_boost(struct cryo_sched_attr *saved) {
  memset(saved, 0, sizeof *saved);
  if (syscall(SYS_sched_getattr, 0, saved, sizeof *saved, 0)) return 0;
  if (saved->sched_policy != SCHED_OTHER && saved->sched_policy != SCHED_BATCH) return 0;
  struct cryo_sched_attr fifo = {.size = sizeof fifo, .sched_policy = SCHED_FIFO, .sched_priority = 1};
  return syscall(SYS_sched_setattr, 0, &fifo, 0) == 0;
}

static void cryo_self_unboost(struct cryo_sched_attr *saved, int boosted) {
  if (!boosted) return;
  saved->size = sizeof *saved;
  syscall(SYS_sched_setattr, 0, saved, 0);
}

static void cryo_frz_unboost(struct cryo_frz *f) {
  for (int i = 0; i < f->nboost; i++) {
    f->boost[i].saved.size = sizeof f->boost[i].saved;
    syscall(SYS_sched_setattr, f->boost[i].tid, &f->boost[i].saved, 0);  // ESRCH when it died: fine
  }
  f->nboost = 0;
}

// Consume at most one wait status of thread i (never the same stop twice). Returns 1 on a state change.
static int cryo_frz_consume(struct cryo_frz *f, int i) {
  int tid = f->tids[i], status = 0;
  if (tid == f->pid && f->self_parent) {
    // We are also the real parent: peek first, so the leader's exit status stays for whoever reaps it.
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, tid, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | CRYO_WALL) < 0) {
      f->st[i] = CRYO_T_GONE;
      f->leader_gone = 1;
      return 1;
    }
    if (si.si_pid == 0) return 0;
    if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
      f->st[i] = CRYO_T_GONE;
      f->leader_gone = 1;
      return 1;
    }
  }
  int r = waitpid(tid, &status, WNOHANG | CRYO_WALL);
  if (r == 0) return 0;
  if (r < 0 || WIFEXITED(status) || WIFSIGNALED(status)) {
    f->st[i] = CRYO_T_GONE;
    if (tid == f->pid) f->leader_gone = 1;
    return 1;
  }
  if (!WIFSTOPPED(status)) return 0;
  int event = status >> 16, sig = WSTOPSIG(status);
  if (event == CRYO_PTRACE_EVENT_CLONE) {
    unsigned long child = 0;
    if (cryo_sys_ptrace(CRYO_PTRACE_GETEVENTMSG, tid, 0, (long)&child) == 0 && child > 0 &&
        cryo_frz_find(f, (int)child) < 0 && cryo_frz_add(f, (int)child, CRYO_T_SEIZED) < 0) {
      // Out of memory: the new thread stays traced until its stop is consumed; release() handles it.
    }
  } else if (event == 0 && sig != SIGTRAP) {
    f->sigs[i] = sig;  // a signal-delivery-stop: hand the signal back at detach
  }
  f->st[i] = CRYO_T_STOPPED;
  return 1;
}

// Detach the stopped, wait (bounded) for the rest to stop or die, reap dead non-leaders. Returns how many
// threads were detached alive.
static int cryo_frz_release(struct cryo_frz *f, long timeout_ns) {
  uint64_t deadline = cryo_now_ns() + (uint64_t)timeout_ns;
  int detached = 0;
  cryo_frz_unboost(f);  // a boosted thread still running may run user code after its detach: restore it first
  for (;;) {
    int pending = 0;
    for (int i = 0; i < f->n; i++) {
      if (f->st[i] == CRYO_T_SEIZED) cryo_frz_consume(f, i);
      if (f->st[i] == CRYO_T_STOPPED) {
        if (cryo_sys_ptrace(CRYO_PTRACE_DETACH, f->tids[i], 0, f->sigs[i]) == 0) {
          f->st[i] = CRYO_T_GONE;
          detached++;
        } else {
          f->st[i] = CRYO_T_SEIZED;  // dying: its exit is still to be consumed
          cryo_frz_consume(f, i);
        }
      }
      if (f->st[i] != CRYO_T_GONE) pending++;
    }
    if (!pending || cryo_now_ns() > deadline) return detached;
    cryo_nap_ns(50000);
  }
}

static void cryo_frz_free(struct cryo_frz *f) {
  free(f->tids);
  free(f->sigs);
  free(f->st);
  free(f->boosted);
  free(f->boost);
}

// Freeze every thread of pid: PTRACE_SEIZE (with PTRACE_O_TRACECLONE) + PTRACE_INTERRUPT each tid of
// /proc/<pid>/task, consume each stop exactly once, and repeat until a scan finds no new thread. Writes up to
// max tids and the signal to hand back to each at detach. info[0] = 1 when some thread had been attached (the
// process exited during the freeze, rather than not existing), 2 when it was a zombie already, info[1] = the tid a ptrace call failed on,
// info[2] = the thread count when it exceeds max. Returns the count or -errno (-ENOSPC: max too small);
// on failure nothing is left attached. boost: make threads that do not stop at once SCHED_FIFO until they stop
// (see cryo_frz_boost), and run SCHED_FIFO meanwhile (cryo_self_boost). Call from one thread: later ptrace calls must come from it too.
long cryo_freeze(int pid, int32_t *tids, int32_t *sigs, int max, long timeout_ns, int32_t *info, int boost) {
  char path[64];
  struct cryo_frz f;
  memset(&f, 0, sizeof f);
  f.pid = pid;
  info[0] = info[1] = info[2] = 0;
  f.self_parent = cryo_status_field(pid, 0, "PPid") == getpid();
  uint64_t deadline = cryo_now_ns() + (uint64_t)timeout_ns;
  long err = 0, self = syscall(SYS_gettid);
  struct cryo_sched_attr saved;
  int self_boosted = boost ? cryo_self_boost(&saved) : 0;
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  for (;;) {
    int added = 0;
    DIR *d = opendir(path);
    if (!d) {
      err = -ESRCH;
      goto fail;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
      int tid = atoi(e->d_name);
      if (tid <= 0 || cryo_frz_find(&f, tid) >= 0) continue;
      long r = cryo_sys_ptrace(CRYO_PTRACE_SEIZE, tid, 0, CRYO_PTRACE_O_TRACECLONE);
      if (r == -ESRCH) continue;  // exited meanwhile
      // Already ours: auto-attached at clone, its clone event not yet consumed.
      if (r == -EPERM && f.n > 0 && cryo_status_field(pid, tid, "TracerPid") == self) r = 1;
      // A zombie (an exited leader, or a process being killed) cannot be seized: it has exited.
      if (r == -EPERM && cryo_task_exited(pid, tid)) {
        if (tid != pid) continue;
        info[0] = f.n > 0 ? 1 : 2;
        err = -ESRCH;
        closedir(d);
        goto fail;
      }
      if (r < 0) {
        info[1] = tid;
        err = r;
        closedir(d);
        goto fail;
      }
      if (cryo_frz_add(&f, tid, CRYO_T_SEIZED) < 0) {
        if (r == 0) cryo_sys_ptrace(CRYO_PTRACE_DETACH, tid, 0, 0);  // best effort; seized, still running
        err = -ENOMEM;
        closedir(d);
        goto fail;
      }
      if (r == 0) cryo_sys_ptrace(CRYO_PTRACE_INTERRUPT, tid, 0, 0);
      added++;
    }
    closedir(d);
    if (f.n == 0) {
      err = -ESRCH;
      goto fail;
    }
    for (int idle = 0;;) {
      int pending = 0, progress = 0;
      for (int i = 0; i < f.n; i++) {
        if (f.st[i] == CRYO_T_SEIZED) progress += cryo_frz_consume(&f, i);
        if (f.st[i] == CRYO_T_SEIZED) pending++;
      }
      // Now and then look at the stopped ones too: a stopped tracee only dies of SIGKILL, which takes the whole
      // process, and its zombie must be reaped by us before the leader's exit is reported. Its stop was
      // consumed already, so this wait can only return that new exit.
      if (boost && !progress) cryo_frz_boost(&f);
      if (!progress && ++idle % 16 == 0) {
        for (int i = 0; i < f.n; i++)
          if (f.st[i] == CRYO_T_STOPPED && cryo_frz_consume(&f, i) && f.st[i] == CRYO_T_GONE) f.leader_gone = 1;
      }
      if (f.leader_gone) {
        err = -ESRCH;
        goto fail;
      }
      if (!pending) break;
      if (cryo_now_ns() > deadline) {
        err = -ETIMEDOUT;
        goto fail;
      }
      if (!progress) cryo_nap_ns(20000);
    }
    if (!added) break;
  }
  cryo_frz_unboost(&f);
  int n = 0;
  for (int i = 0; i < f.n; i++) n += f.st[i] == CRYO_T_STOPPED;
  if (n > max) {
    info[2] = n;
    err = -ENOSPC;
    goto fail;
  }
  n = 0;
  for (int i = 0; i < f.n; i++) {
    if (f.st[i] != CRYO_T_STOPPED) continue;  // exited meanwhile: dropped
    tids[n] = f.tids[i];
    sigs[n] = f.sigs[i];
    n++;
  }
  cryo_frz_free(&f);
  cryo_self_unboost(&saved, self_boosted);
  return n;
fail:
  if (!info[0]) info[0] = f.n > 0;
  cryo_frz_release(&f, 1000000000L);
  cryo_frz_free(&f);
  cryo_self_unboost(&saved, self_boosted);
  return err;
}

// Thaw what cryo_freeze froze: PTRACE_DETACH each tid (handing back its pending signal); threads that died
// meanwhile are reaped (bounded by timeout_ns). boost: run SCHED_FIFO meanwhile (see cryo_self_boost).
// Returns how many threads were detached alive, or -errno.
long cryo_thaw(int pid, const int32_t *tids, const int32_t *sigs, int n, long timeout_ns, int boost) {
  struct cryo_sched_attr saved;
  struct cryo_frz f;
  memset(&f, 0, sizeof f);
  f.pid = pid;
  f.self_parent = cryo_status_field(pid, 0, "PPid") == getpid();
  for (int i = 0; i < n; i++) {
    if (cryo_frz_add(&f, tids[i], CRYO_T_STOPPED) < 0) {
      cryo_frz_free(&f);
      return -ENOMEM;
    }
    f.sigs[i] = sigs[i];
  }
  int self_boosted = boost ? cryo_self_boost(&saved) : 0;  // threads resumed early must not preempt the rest
  long r = cryo_frz_release(&f, timeout_ns);
  cryo_self_unboost(&saved, self_boosted);
  cryo_frz_free(&f);
  return r;
}

// ---- Native-thread safepoint: a futex word the helper owns, in its own mapping (never on a stack). ----
#define CRYO_SP_MAGIC 0x53504e54u  // "TNPS"
#define CRYO_SP_SLOTS 64

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

// Free a safepoint made by cryo_safepoint_new (nobody may be registered or parked on it).
int cryo_safepoint_free(void *sp) {
  return munmap(sp, sizeof(struct cryo_safepoint)) ? -errno : 0;
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
    me->tid = (int32_t)syscall(SYS_gettid);
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
// 0 when no park was requested.
int cryo_safepoint_poll(void *sp, int slot) {
  struct cryo_safepoint *s = sp;
  if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == 0) return 0;
  struct cryo_sp_slot *me = &s->slot[slot];
  uint32_t gen = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
  long mret;
  register long r10m __asm__("r10") = 8;
  __asm__ volatile("syscall"  // rt_sigprocmask(SIG_BLOCK, all, &me->sigmask, 8)
                   : "=a"(mret)
                   : "0"((long)SYS_rt_sigprocmask), "D"(0L), "S"(&cryo_all_signals), "d"(&me->sigmask), "r"(r10m)
                   : "rcx", "r11", "memory");
  (void)mret;
  uint64_t rsp;
  __asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
  me->sp = rsp;
  __atomic_store_n(&me->arrived, gen, __ATOMIC_RELEASE);
  while (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == 1 &&
         __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE) == gen) {
    long ret;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_futex), "D"(&s->state), "S"((long)FUTEX_WAIT_PRIVATE), "d"(1L), "r"(r10)
                     : "rcx", "r11", "memory");
    (void)ret;
  }
  __atomic_store_n(&me->arrived, 0, __ATOMIC_RELEASE);
  register long r10u __asm__("r10") = 8;
  __asm__ volatile("syscall"  // rt_sigprocmask(SIG_SETMASK, &me->sigmask, NULL, 8)
                   : "=a"(mret)
                   : "0"((long)SYS_rt_sigprocmask), "D"(2L), "S"(&me->sigmask), "d"(0L), "r"(r10u)
                   : "rcx", "r11", "memory");
  return 1;
}

// Request a park: bump the generation, raise the word. Returns the new generation.
int cryo_safepoint_request(void *sp) {
  struct cryo_safepoint *s = sp;
  uint32_t gen = __atomic_add_fetch(&s->generation, 1, __ATOMIC_ACQ_REL);
  if (gen == 0) gen = __atomic_add_fetch(&s->generation, 1, __ATOMIC_ACQ_REL);  // 0 means "not arrived"
  __atomic_store_n(&s->state, 1, __ATOMIC_RELEASE);
  return (int)gen;
}

// Release every parked native thread: lower the word and FUTEX_WAKE all. Returns how many were woken.
int cryo_safepoint_release(void *sp) {
  struct cryo_safepoint *s = sp;
  __atomic_store_n(&s->state, 0, __ATOMIC_RELEASE);
  long r = syscall(SYS_futex, &s->state, FUTEX_WAKE_PRIVATE, 0x7fffffff, 0, 0, 0);
  return r == -1 ? -errno : (int)r;
}

// ---- Test-only: a native thread that parks deep in a recursion and computes a checkable result. ----
struct cryo_test_thread {
  pthread_t thread;
  void *sp;
  int depth, slot, parked;
  uint32_t seed, result;
  volatile int state;  // 1 registered, 2 finished
};

static uint32_t cryo_test_mix(uint32_t seed, uint32_t level, uint32_t j) {
  uint32_t x = seed ^ (level * 0x9e3779b9u) ^ (j * 0x85ebca6bu);
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

static __attribute__((noinline)) uint32_t cryo_test_recurse(struct cryo_test_thread *t, int level) {
  volatile uint32_t frame[256];  // 1 KiB of live data per frame, read back after the park
  for (int j = 0; j < 256; j++) frame[j] = cryo_test_mix(t->seed, (uint32_t)level, (uint32_t)j);
  uint32_t below = 0;
  if (level + 1 < t->depth) {
    below = cryo_test_recurse(t, level + 1);
  } else {
    // Bounded: poll for at most 30 s (every 100 us) until parked once.
    for (int i = 0; i < 300000 && !t->parked; i++) {
      t->parked = cryo_safepoint_poll(t->sp, t->slot);
      if (!t->parked) cryo_nap_ns(100000);
    }
  }
  uint32_t h = below;
  for (int j = 0; j < 256; j++) h = h * 31u + frame[j];
  return h;
}

static void *cryo_test_main(void *arg) {
  struct cryo_test_thread *t = arg;
  t->slot = cryo_safepoint_register(t->sp, "cryo-test-thread");
  __atomic_store_n(&t->state, 1, __ATOMIC_RELEASE);
  if (t->slot >= 0) t->result = cryo_test_recurse(t, 0);
  if (t->slot >= 0) cryo_safepoint_unregister(t->sp, t->slot);
  __atomic_store_n(&t->state, 2, __ATOMIC_RELEASE);
  return 0;
}

// Test-only: start a native thread that registers with safepoint sp, recurses depth frames (1 KiB of data
// each), polls the safepoint at the bottom until it has parked once, then folds every frame's data into a
// result. Returns once the thread has registered. NULL on failure.
void *cryo_test_thread_start(void *sp, int depth, uint32_t seed) {
  struct cryo_test_thread *t = calloc(1, sizeof *t);
  if (!t) return 0;
  t->sp = sp;
  t->depth = depth;
  t->seed = seed;
  if (pthread_create(&t->thread, 0, cryo_test_main, t)) {
    free(t);
    return 0;
  }
  for (int i = 0; i < 50000 && __atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == 0; i++) cryo_nap_ns(100000);
  return t;
}

// Test-only: join the thread (at most timeout_ns) and free it. Returns its result (a uint32), -ETIMEDOUT, or
// -EIO when it never parked.
long cryo_test_thread_join(void *handle, long timeout_ns) {
  struct cryo_test_thread *t = handle;
  uint64_t deadline = cryo_now_ns() + (uint64_t)timeout_ns;
  while (__atomic_load_n(&t->state, __ATOMIC_ACQUIRE) != 2) {
    if (cryo_now_ns() > deadline) return -ETIMEDOUT;
    cryo_nap_ns(100000);
  }
  pthread_join(t->thread, 0);
  long r = t->parked ? (long)t->result : -EIO;
  free(t);
  return r;
}

// ---- rseq of this process's threads, read by a forked child that ptraces us. ----

// The calling thread's rseq area as glibc registered it (thread pointer + __rseq_offset), 0 if none.
long cryo_rseq_area(void) {
  extern const ptrdiff_t __rseq_offset;
  extern const unsigned int __rseq_size;
  if (__rseq_size == 0) return 0;
  return (long)((char *)__builtin_thread_pointer() + __rseq_offset);
}

// One record per thread: the kernel's struct ptrace_rseq_configuration plus the outcome.
struct cryo_rseq_rec {
  uint64_t rseq_abi_pointer;
  uint32_t rseq_abi_size, signature, flags;
  int32_t status;  // 0, or -errno of the failing step (-ESRCH: the thread exited)
};

static long cryo_raw(long nr, long a, long b, long c, long d) {
  long r = syscall(nr, a, b, c, d, 0, 0);
  return r == -1 ? -errno : r;
}

// In the child: seize, interrupt, wait (bounded), read the configuration, detach. Raw system calls only.
static void cryo_rseq_child(const int32_t *tids, int n, struct cryo_rseq_rec *out, uint64_t deadline) {
  for (int i = 0; i < n; i++) {
    struct cryo_rseq_rec *o = &out[i];
    o->status = (int32_t)cryo_raw(SYS_ptrace, CRYO_PTRACE_SEIZE, tids[i], 0, 0);
    if (o->status < 0) continue;
    cryo_raw(SYS_ptrace, CRYO_PTRACE_INTERRUPT, tids[i], 0, 0);
    int status = 0;
    long w;
    while ((w = cryo_raw(SYS_wait4, tids[i], (long)&status, WNOHANG | CRYO_WALL, 0)) == 0 && cryo_now_ns() < deadline)
      cryo_nap_ns(20000);
    if (w <= 0 || !WIFSTOPPED(status)) {
      o->status = w == 0 ? -ETIMEDOUT : -ESRCH;
      if (w == 0) cryo_raw(SYS_ptrace, CRYO_PTRACE_DETACH, tids[i], 0, 0);  // may fail; our exit detaches
      continue;
    }
    int sig = (status >> 16) == 0 && WSTOPSIG(status) != SIGTRAP ? WSTOPSIG(status) : 0;
    long r = cryo_raw(SYS_ptrace, CRYO_PTRACE_GET_RSEQ_CONFIGURATION, tids[i], 24, (long)o);
    o->status = r < 0 ? (int32_t)r : 0;
    cryo_raw(SYS_ptrace, CRYO_PTRACE_DETACH, tids[i], 0, sig);
  }
}

// Read the rseq configuration of threads tids[0..n) of this process: fork a child (raw clone, no atfork
// handlers), allow it to ptrace us (PR_SET_PTRACER, for Yama), let it seize/interrupt/read/detach each thread
// and report through a pipe. out receives n records of 24 bytes. Returns n or -errno (-ETIMEDOUT).
long cryo_rseq_self(const int32_t *tids, int n, void *out, long timeout_ns) {
  int go[2], res[2];
  if (pipe2(go, O_CLOEXEC)) return -errno;
  if (pipe2(res, O_CLOEXEC)) {
    long e = -errno;
    close(go[0]);
    close(go[1]);
    return e;
  }
  uint64_t deadline = cryo_now_ns() + (uint64_t)timeout_ns;
  size_t bytes = (size_t)n * sizeof(struct cryo_rseq_rec);
  long child = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (child == 0) {
    char b;
    cryo_raw(SYS_close, go[1], 0, 0, 0);
    cryo_raw(SYS_close, res[0], 0, 0, 0);
    if (cryo_raw(SYS_read, go[0], (long)&b, 1, 0) == 1) {
      cryo_rseq_child(tids, n, out, deadline);
      for (size_t done = 0; done < bytes;) {
        long w = cryo_raw(SYS_write, res[1], (long)((char *)out + done), (long)(bytes - done), 0);
        if (w <= 0) break;
        done += (size_t)w;
      }
    }
    syscall(SYS_exit_group, 0);
  }
  long err = child < 0 ? -errno : 0;
  close(go[0]);
  close(res[1]);
  if (!err) {
    long r = syscall(SYS_prctl, CRYO_PR_SET_PTRACER, child, 0, 0, 0);
    if (r == -1 && errno != EINVAL) err = -errno;  // EINVAL: no Yama, nothing to allow
  }
  if (!err && write(go[1], "g", 1) != 1) err = -EPIPE;
  close(go[1]);
  size_t got = 0;
  while (!err && got < bytes) {
    uint64_t now = cryo_now_ns();
    if (now >= deadline) {
      err = -ETIMEDOUT;
      break;
    }
    struct pollfd p = {res[0], POLLIN, 0};
    int pr = poll(&p, 1, (int)((deadline - now) / 1000000 + 1));
    if (pr < 0 && errno == EINTR) continue;  // we were interrupted by the child's PTRACE_INTERRUPT
    if (pr <= 0) continue;
    ssize_t r = read(res[0], (char *)out + got, bytes - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) err = -EPIPE;
    else got += (size_t)r;
  }
  close(res[0]);
  if (child > 0) {
    if (err) kill((pid_t)child, SIGKILL);  // its exit detaches whatever it still holds
    int status;
    for (int i = 0; i < 20000; i++) {  // bounded: at most ~2 s
      pid_t w = waitpid((pid_t)child, &status, WNOHANG | __WALL);
      if (w != 0) break;  // reaped, or ECHILD (someone else reaped it)
      cryo_nap_ns(100000);
    }
  }
  if (!err && child > 0) {
    // The pid can be recycled only after the reap above; revoke the permission now.
    syscall(SYS_prctl, CRYO_PR_SET_PTRACER, 0, 0, 0, 0);
  }
  return err ? err : n;
}

// ---- Image checksums (issue 9): XXH3-64 of many pieces of memory in one call, for the vectored store. ----
#include <dlfcn.h>

typedef unsigned long long (*cryo_xxh3_fn)(const void *p, size_t len);

// out[i] = XXH3_64bits(iov[stride * i], iov[stride * i + 1]) for i < n (libxxhash.so.0, loaded on first
// use). Returns n, or -ENOENT when the library or the symbol is missing.
long cryo_checksums(const uint64_t *iov, size_t n, size_t stride, uint64_t *out) {
  static cryo_xxh3_fn xxh3;
  if (!xxh3) {
    void *lib = dlopen("libxxhash.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return -ENOENT;
    xxh3 = (cryo_xxh3_fn)dlsym(lib, "XXH3_64bits");
    if (!xxh3) return -ENOENT;
  }
  for (size_t i = 0; i < n; i++) {
    out[i] = xxh3((const void *)(uintptr_t)iov[stride * i], (size_t)iov[stride * i + 1]);
  }
  return (long)n;
}

// ---- The vectored store's batch (issue 9): read runs of another process into a buffer, find its non-zero
// pages and checksum them, all on one (pool) thread. ----
#include <sys/uio.h>

// Copy runs of `pid` (`runs`: start/end pairs, `nruns` of them) back to back into `local` with
// process_vm_readv, up to 1024 iovecs a call, from run cursor[0] at offset cursor[1], until `capacity` bytes are
// copied or the runs end; the cursor is advanced past the copy. Then split the copy into pieces: runs of
// non-zero pages (every page when !detect; lengths are page multiples), each at most `max_piece` bytes, as
// triples (local address, length, remote address) in `pieces` (room for `max_pieces`), with the XXH3 of each
// in `sums` unless it is NULL (cryo_checksums(pieces, n, 3, sums) computes them later). *npieces receives the piece count. Returns the bytes copied, or -errno (EFAULT: an unmapped page
// at the cursor; ENOSPC: too many pieces; ENOENT: no libxxhash).
long cryo_gather(int pid, unsigned char *local, size_t capacity, const uint64_t *runs, size_t nruns,
                 uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                 uint64_t *sums, size_t max_pieces, uint64_t *npieces) {
  struct iovec liov, riov[1024];
  uint64_t first_run = cursor[0], first_off = cursor[1];
  size_t filled = 0;
  while (filled < capacity && cursor[0] < nruns) {
    size_t n = 0, want = 0;
    uint64_t i = cursor[0], off = cursor[1];
    while (n < 1024 && i < nruns && filled + want < capacity) {
      uint64_t s = runs[2 * i] + off;
      uint64_t len = runs[2 * i + 1] - s;
      if (len > capacity - filled - want) len = capacity - filled - want;
      riov[n].iov_base = (void *)(uintptr_t)s;
      riov[n].iov_len = len;
      want += len;
      n++;
      if (s + len == runs[2 * i + 1]) {
        i++;
        off = 0;
      } else {
        off += len;
      }
    }
    liov.iov_base = local + filled;
    liov.iov_len = want;
    ssize_t got = process_vm_readv(pid, &liov, 1, riov, n, 0);
    if (got < 0) return -errno;
    if (got == 0) return -EFAULT;
    if ((size_t)got == want) {
      cursor[0] = i;
      cursor[1] = off;
    } else {
      for (uint64_t left = (uint64_t)got; left > 0;) {
        uint64_t rest = runs[2 * cursor[0] + 1] - runs[2 * cursor[0]] - cursor[1];
        if (left >= rest) {
          left -= rest;
          cursor[0]++;
          cursor[1] = 0;
        } else {
          cursor[1] += left;
          left = 0;
        }
      }
    }
    filled += (size_t)got;
  }
  static cryo_xxh3_fn xxh3;
  if (!xxh3 && sums) {
    void *lib = dlopen("libxxhash.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return -ENOENT;
    xxh3 = (cryo_xxh3_fn)dlsym(lib, "XXH3_64bits");
    if (!xxh3) return -ENOENT;
  }
  size_t np = 0, b = 0;
  uint64_t i = first_run, off = first_off;
  while (b < filled) {
    uint64_t s = runs[2 * i] + off;
    size_t len = runs[2 * i + 1] - s;
    if (len > filled - b) len = filled - b;
    for (size_t p = 0; p < len;) {
      if (detect) {
        unsigned char z;
        while (p < len && (cryo_zero_pages(local + b + p, page, page, &z), z)) p += page;
      }
      size_t q = p;
      if (detect) {
        unsigned char z;
        while (q < len && (cryo_zero_pages(local + b + q, page, page, &z), !z)) q += page;
      } else {
        q = len;
      }
      for (size_t o = p; o < q;) {
        size_t l = q - o < max_piece ? q - o : max_piece;
        if (np == max_pieces) return -ENOSPC;
        pieces[3 * np] = (uint64_t)(uintptr_t)(local + b + o);
        pieces[3 * np + 1] = l;
        pieces[3 * np + 2] = s + o;
        if (sums) sums[np] = xxh3(local + b + o, l);
        np++;
        o += l;
      }
      p = q;
    }
    b += len;
    off += len;
    if (runs[2 * i] + off == runs[2 * i + 1]) {
      i++;
      off = 0;
    }
  }
  *npieces = np;
  return (long)filled;
}
