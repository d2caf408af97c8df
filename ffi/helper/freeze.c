// freeze.c: freeze and thaw another process. PTRACE_SEIZE + PTRACE_INTERRUPT every thread of a pid, repeating
// until a scan of /proc/<pid>/task finds no new thread, consuming each stop exactly once; then PTRACE_DETACH
// each one, handing back the signal that arrived while it was stopped.
//
// Why C: ptrace belongs to the thread that attached, so the seize, every wait and the detach must run on one
// thread in one call (the bindings are synchronous on purpose, never on a pool thread); and hundreds of threads
// must stop within milliseconds, which a loop of seize/interrupt/waitpid with no round trip through JavaScript
// (and a brief SCHED_FIFO boost) achieves.
#include "helper.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static long cryo_ptrace(long req, long tid, long addr, long data) {
  return cryo_sys(SYS_ptrace, req, tid, addr, data, 0, 0);
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

// struct sched_attr (SCHED_ATTR_SIZE_VER1), declared here: glibc's headers lack it.
// A thread briefly made SCHED_FIFO so it reaches its stop now, and the attributes to give back.
struct cryo_boost {
  int32_t tid;
  struct cryo_sched_attr saved;
};

// The threads of one freeze: tid, the signal to hand back at detach, and where each one stands.
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
    if (cryo_sys(SYS_sched_getattr, f->tids[i], (long)&b->saved, sizeof b->saved, 0, 0, 0)) continue;
    if (b->saved.sched_policy != SCHED_OTHER && b->saved.sched_policy != SCHED_BATCH) continue;
    struct cryo_sched_attr fifo = {.size = sizeof fifo, .sched_policy = SCHED_FIFO, .sched_priority = 1};
    if (cryo_sys(SYS_sched_setattr, f->tids[i], (long)&fifo, 0, 0, 0, 0)) continue;
    b->tid = f->tids[i];
    f->nboost++;
  }
}

// Run the calling thread SCHED_FIFO (priority 1) for a moment: while it seizes or detaches hundreds of threads,
// the ones already running would otherwise preempt it again and again. Returns 1 when it changed anything.
static int cryo_self_boost(struct cryo_sched_attr *saved) {
  memset(saved, 0, sizeof *saved);
  if (cryo_sys(SYS_sched_getattr, 0, (long)saved, sizeof *saved, 0, 0, 0)) return 0;
  if (saved->sched_policy != SCHED_OTHER && saved->sched_policy != SCHED_BATCH) return 0;
  struct cryo_sched_attr fifo = {.size = sizeof fifo, .sched_policy = SCHED_FIFO, .sched_priority = 1};
  return cryo_sys(SYS_sched_setattr, 0, (long)&fifo, 0, 0, 0, 0) == 0;
}

static void cryo_self_unboost(struct cryo_sched_attr *saved, int boosted) {
  if (!boosted) return;
  saved->size = sizeof *saved;
  cryo_sys(SYS_sched_setattr, 0, (long)saved, 0, 0, 0, 0);
}

static void cryo_frz_unboost(struct cryo_frz *f) {
  for (int i = 0; i < f->nboost; i++) {
    f->boost[i].saved.size = sizeof f->boost[i].saved;
    cryo_sys(SYS_sched_setattr, f->boost[i].tid, (long)&f->boost[i].saved, 0, 0, 0, 0);  // ESRCH when it died: fine
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
    if (cryo_ptrace(CRYO_PTRACE_GETEVENTMSG, tid, 0, (long)&child) == 0 && child > 0 &&
        cryo_frz_find(f, (int)child) < 0 && cryo_frz_add(f, (int)child, CRYO_T_SEIZED) < 0) {
      // Out of memory: the new thread stays traced until its stop is consumed; release() handles it.
    }
    // The parent stopped inside clone(), before the call returned: its registers there are not those it resumes
    // with (the kernel has yet to store the result), so a restore could not put them back. Let it finish the
    // call and stop again where every other thread stops, at the interrupt trap before returning to user space.
    if (cryo_ptrace(CRYO_PTRACE_CONT, tid, 0, 0) == 0) {
      cryo_ptrace(CRYO_PTRACE_INTERRUPT, tid, 0, 0);
      return 1;  // still SEIZED: its next stop is consumed by the loop
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
        if (cryo_ptrace(CRYO_PTRACE_DETACH, f->tids[i], 0, f->sigs[i]) == 0) {
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
// process exited during the freeze, rather than not existing), 2 when it was a zombie already; info[1] = the
// tid a ptrace call failed on; info[2] = the thread count when it exceeds max. Returns the count or -errno
// (-ENOSPC: max too small); on failure nothing is left attached. boost: make threads that do not stop at once
// SCHED_FIFO until they stop (see cryo_frz_boost), and run SCHED_FIFO meanwhile (cryo_self_boost). Call from
// one thread: later ptrace calls must come from it too.
long cryo_freeze(int pid, int32_t *tids, int32_t *sigs, int max, long timeout_ns, int32_t *info, int boost) {
  char path[64];
  struct cryo_frz f;
  memset(&f, 0, sizeof f);
  f.pid = pid;
  info[0] = info[1] = info[2] = 0;
  f.self_parent = cryo_status_field(pid, 0, "PPid") == getpid();
  uint64_t deadline = cryo_now_ns() + (uint64_t)timeout_ns;
  long err = 0, self = cryo_sys(SYS_gettid, 0, 0, 0, 0, 0, 0);
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
      long r = cryo_ptrace(CRYO_PTRACE_SEIZE, tid, 0, CRYO_PTRACE_O_TRACECLONE | CRYO_PTRACE_O_TRACESYSGOOD);
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
        if (r == 0) cryo_ptrace(CRYO_PTRACE_DETACH, tid, 0, 0);  // best effort; seized, still running
        err = -ENOMEM;
        closedir(d);
        goto fail;
      }
      if (r == 0) cryo_ptrace(CRYO_PTRACE_INTERRUPT, tid, 0, 0);
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
