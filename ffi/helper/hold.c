// Holding a frozen process with a stop that outlives cryo (a restore's write phase).
//
// cryo sends SIGSTOP to a process whose threads are all in ptrace stops: no thread can take it, so it stays
// pending. Should cryo die (SIGKILL), the kernel detaches every tracee and restarts it; a thread leaving its
// ptrace stop rechecks pending signals before it returns to user space, dequeues the SIGSTOP, and the whole
// process enters group stop: it stays stopped, with no line of its code run, until someone finishes or
// undoes the restore and sends SIGCONT. On the normal path, before the thaw, cryo_hold_release() lets one
// thread run just far enough to dequeue the SIGSTOP, which ptrace reports as a signal-delivery-stop; the
// caller then detaches that thread with signal 0, which suppresses it.
//
// Why C: ptrace requests must come from the thread that attached, and the wait loop must not return to
// JavaScript between the resume and the stop. Returns -errno on failure, like every helper function.
#include "helper.h"

#include <signal.h>
#include <sys/wait.h>

// Resume stopped tracee `tid` (handing it `sig`, the signal it was stopped with, or 0) until it stops to
// deliver the pending SIGSTOP; other signals it meets on the way are delivered as they would have been
// (their numbers are added to delivered[0] as a count). On success the thread is left in that
// signal-delivery-stop: detach it with signal 0. -ESRCH when it died, -ETIMEDOUT after timeout_ns.
long cryo_hold_release(int tid, int sig, long timeout_ns, int32_t *delivered) {
  long r = cryo_sys(SYS_ptrace, CRYO_PTRACE_CONT, tid, 0, sig, 0, 0);
  if (r < 0) return r;
  uint64_t deadline = cryo_now_ns() + (uint64_t)timeout_ns;
  for (;;) {
    int status = 0;
    int w = waitpid(tid, &status, WNOHANG | CRYO_WALL);
    if (w < 0) return -errno;
    if (w == 0) {
      if (cryo_now_ns() > deadline) return -ETIMEDOUT;
      cryo_nap_ns(20000);
      continue;
    }
    if (WIFEXITED(status) || WIFSIGNALED(status)) return -ESRCH;
    if (!WIFSTOPPED(status)) continue;
    int event = status >> 16, s = WSTOPSIG(status);
    if (event == 0 && s == SIGSTOP) return 0;
    int pass = (event == 0 && s != SIGTRAP) ? s : 0;  // another signal: deliver it; an event stop: go on
    if (pass && delivered) delivered[0]++;
    r = cryo_sys(SYS_ptrace, CRYO_PTRACE_CONT, tid, 0, pass, 0, 0);
    if (r < 0) return r;
  }
}
