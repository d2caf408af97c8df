// rseq.c: the rseq configuration of this process's own threads (PTRACE_GET_RSEQ_CONFIGURATION), and the
// calling thread's rseq area as glibc registered it.
//
// Why C: a process cannot ptrace itself. The helper forks a child with a raw clone (no atfork handlers: other
// threads may hold libc's locks), lets it trace us (PR_SET_PTRACER, for Yama), and the child seizes,
// interrupts, reads and detaches each thread with raw system calls only (cryo_sys), then reports through a pipe.
// Reading glibc's __rseq_offset and the thread pointer also needs C.
#include "helper.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

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

// In the child: seize, interrupt, wait (bounded), read the configuration, detach. Raw system calls only.
static void cryo_rseq_child(const int32_t *tids, int n, struct cryo_rseq_rec *out, uint64_t deadline) {
  for (int i = 0; i < n; i++) {
    struct cryo_rseq_rec *o = &out[i];
    o->status = (int32_t)cryo_sys(SYS_ptrace, CRYO_PTRACE_SEIZE, tids[i], 0, 0, 0, 0);
    if (o->status < 0) continue;
    cryo_sys(SYS_ptrace, CRYO_PTRACE_INTERRUPT, tids[i], 0, 0, 0, 0);
    int status = 0;
    long w;
    while ((w = cryo_sys(SYS_wait4, tids[i], (long)&status, WNOHANG | CRYO_WALL, 0, 0, 0)) == 0 &&
           cryo_now_ns() < deadline)
      cryo_nap_ns(20000);
    if (w <= 0 || !WIFSTOPPED(status)) {
      o->status = w == 0 ? -ETIMEDOUT : -ESRCH;
      if (w == 0) cryo_sys(SYS_ptrace, CRYO_PTRACE_DETACH, tids[i], 0, 0, 0, 0);  // may fail; our exit detaches
      continue;
    }
    int sig = (status >> 16) == 0 && WSTOPSIG(status) != SIGTRAP ? WSTOPSIG(status) : 0;
    long r = cryo_sys(SYS_ptrace, CRYO_PTRACE_GET_RSEQ_CONFIGURATION, tids[i], 24, (long)o, 0, 0);
    o->status = r < 0 ? (int32_t)r : 0;
    cryo_sys(SYS_ptrace, CRYO_PTRACE_DETACH, tids[i], 0, sig, 0, 0);
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
  long child = cryo_sys(SYS_clone, SIGCHLD, 0, 0, 0, 0, 0);  // fork without atfork handlers
  if (child == 0) {
    char b;
    cryo_sys(SYS_close, go[1], 0, 0, 0, 0, 0);
    cryo_sys(SYS_close, res[0], 0, 0, 0, 0, 0);
    if (cryo_sys(SYS_read, go[0], (long)&b, 1, 0, 0, 0) == 1) {
      cryo_rseq_child(tids, n, out, deadline);
      for (size_t done = 0; done < bytes;) {
        long w = cryo_sys(SYS_write, res[1], (long)((char *)out + done), (long)(bytes - done), 0, 0, 0);
        if (w <= 0) break;
        done += (size_t)w;
      }
    }
    cryo_sys(SYS_exit_group, 0, 0, 0, 0, 0, 0);
    __builtin_unreachable();
  }
  long err = child < 0 ? child : 0;
  close(go[0]);
  close(res[1]);
  if (!err) {
    long r = cryo_sys(SYS_prctl, CRYO_PR_SET_PTRACER, child, 0, 0, 0, 0);
    if (r < 0 && r != -EINVAL) err = r;  // EINVAL: no Yama, nothing to allow
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
      pid_t w = waitpid((pid_t)child, &status, WNOHANG | CRYO_WALL);
      if (w != 0) break;  // reaped, or ECHILD (someone else reaped it)
      cryo_nap_ns(100000);
    }
  }
  if (!err && child > 0) {
    // The pid can be recycled only after the reap above; revoke the permission now.
    cryo_sys(SYS_prctl, CRYO_PR_SET_PTRACER, 0, 0, 0, 0, 0);
  }
  return err ? err : n;
}
