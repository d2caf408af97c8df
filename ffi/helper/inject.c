// Running one system call inside a frozen process (cryo_inject_syscall): the ptrace sequence of CRIU's compel
// and memcr's parasite, reduced to a single syscall instruction that already exists in the target.
//
// Why C: ptrace requests are only accepted from the thread that attached, and the sequence (save registers,
// point RIP at a `syscall`, resume it to its syscall-entry and syscall-exit stops (PTRACE_SYSCALL), put every
// register back) must not be interleaved with anything else on that thread; a JavaScript loop around FFI
// calls could do it, but each step would cost a crossing and the wait loop needs waitid(WNOWAIT) peeks that
// are simpler here.
//
// A restore's hold (a SIGSTOP pending for the process, so that it stays stopped should cryo die) is taken by
// the injecting thread on its way out of its stop, and must be queued again. It is queued again at the
// syscall-entry stop for calls that never wait (inj_never_waits): from then on the process stops when the call
// returns, should cryo die; only the instructions between the stop and the `syscall` run without it. (It was
// queued again after the call before: cryo killed during a call left the process running, half restored.)
//
// Restart semantics: a thread stopped inside an interrupted system call shows orig_rax = its number and
// rax = -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND/-ERESTART_RESTARTBLOCK; when it resumes, the kernel
// (arch_do_signal_or_restart) rewinds RIP by 2 and reloads rax from orig_rax if orig_rax >= 0. The injected
// call runs with orig_rax = -1, so nothing rewinds it, and afterwards every register (orig_rax, rax and rip
// included) is put back as it was, so the interrupted call restarts exactly as it would have.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

#define INJ_PTRACE_CONT 7
#define INJ_PTRACE_SYSCALL 24
#define INJ_PTRACE_GET_SYSCALL_INFO 0x420e
#define INJ_SYSCALL_INFO_ENTRY 1
#define INJ_SYSCALL_INFO_EXIT 2
#define INJ_PTRACE_GETREGS 12
#define INJ_PTRACE_SETREGS 13
#define INJ_PTRACE_GETREGSET 0x4204
#define INJ_PTRACE_SETREGSET 0x4205
#define INJ_PTRACE_INTERRUPT 0x4207
#define INJ_PTRACE_EVENT_STOP 128
#define INJ_NT_X86_XSTATE 0x202
#define INJ_NT_PRFPREG 2
#define INJ_WALL 0x40000000
#define INJ_XSTATE_MAX 16384
#define INJ_MAX_HELD 8

// The start of the kernel's struct ptrace_syscall_info (PTRACE_GET_SYSCALL_INFO): op says which stop this is.
struct inj_syscall_info {
  uint8_t op;
  uint8_t pad[3];
  uint32_t arch;
  uint64_t instruction_pointer, stack_pointer;
  uint64_t words[7];
};

// Calls that return without waiting (nothing in them sleeps interruptibly), so a pending signal does not cut
// them short: the ones cryo injects while a restore holds the process.
static int inj_never_waits(long nr) {
  switch (nr) {
    case SYS_lseek: case SYS_mmap: case SYS_mprotect: case SYS_munmap: case SYS_brk: case SYS_rt_sigprocmask:
    case SYS_mremap: case SYS_madvise: case SYS_close: case SYS_dup3: case SYS_sigaltstack: case SYS_prctl:
    case SYS_set_tid_address: case SYS_set_robust_list: case SYS_get_robust_list: case SYS_tgkill:
    case SYS_rseq: case SYS_userfaultfd: case SYS_getpid: case SYS_gettid: case SYS_exit:
      return 1;
    default:
      return 0;
  }
}

static long inj_ptrace(long req, long tid, long addr, long data) {
  long r = syscall(SYS_ptrace, req, tid, addr, data);
  return r == -1 ? -errno : r;
}

static uint64_t inj_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// Wait for the next ptrace stop of tid, bounded by deadline. Peeks first (WNOWAIT) so that an exit is never
// consumed here: the thaw, or the real parent, reaps it. Returns 1 and the wait status on a stop, -ESRCH when
// the thread exited or is exiting, -ETIMEDOUT at the deadline.
static int inj_wait_stop(int tid, uint64_t deadline, int *status) {
  for (unsigned spins = 0;; spins++) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)tid, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | INJ_WALL) < 0) return -ESRCH;
    if (si.si_pid != 0) {
      if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) return -ESRCH;
      int r = waitpid(tid, status, WNOHANG | INJ_WALL);
      if (r == tid && WIFSTOPPED(*status)) return 1;
      if (r == tid) return -ESRCH;
      if (r < 0) return -ESRCH;
      continue;
    }
    if (inj_now_ns() > deadline) return -ETIMEDOUT;
    if (spins < 64) {
      sched_yield();
    } else {
      struct timespec ts = {0, spins < 1024 ? 5000 : 100000};
      nanosleep(&ts, 0);
    }
  }
}

// Put the saved registers back. The XSAVE area is written back only when it changed (reading it costs about
// 2 us here, writing it about 9 us). Returns 0 or -errno.
static long inj_restore(int tid, struct user_regs_struct *saved, struct iovec *xs, long xs_type) {
  long r = inj_ptrace(INJ_PTRACE_SETREGS, tid, 0, (long)saved);
  if (r < 0) return r;
  if (!xs->iov_len) return 0;
  unsigned char now[INJ_XSTATE_MAX] __attribute__((aligned(64)));
  struct iovec cur = {now, sizeof now};
  if (inj_ptrace(INJ_PTRACE_GETREGSET, tid, xs_type, (long)&cur) == 0 && cur.iov_len == xs->iov_len &&
      memcmp(now, xs->iov_base, cur.iov_len) == 0)
    return 0;
  r = inj_ptrace(INJ_PTRACE_SETREGSET, tid, xs_type, (long)xs);
  return r < 0 ? r : 0;
}

// Put the thread back in the stop the freeze left it in (a PTRACE_EVENT_STOP inside get_signal()), with no
// syscall tracing pending. PTRACE_SYSCALL leaves syscall stops armed, and only a ptrace resume clears them
// (a tracer's death does not: exit_ptrace unlinks without ptrace_disable). So: interrupt, resume with
// PTRACE_CONT (which clears them), and take the interrupt's stop, which comes in get_signal()
// before the thread returns to user space: none of its instructions runs. Signals that stop it on the way are
// held like the ones during the step. Returns 0 or -errno.
static long inj_settle(int tid, int *held, int *nheld) {
  long r = inj_ptrace(INJ_PTRACE_INTERRUPT, tid, 0, 0);
  if (r < 0) return r;
  uint64_t deadline = inj_now_ns() + 1000000000ull;
  for (;;) {
    r = inj_ptrace(INJ_PTRACE_CONT, tid, 0, 0);
    if (r < 0) return r;
    int status = 0;
    int w = inj_wait_stop(tid, deadline, &status);
    if (w < 0) return w;
    int event = status >> 16, stopsig = WSTOPSIG(status);
    if (event == INJ_PTRACE_EVENT_STOP) return 0;
    if (event == 0 && stopsig != SIGTRAP && *nheld < INJ_MAX_HELD) held[(*nheld)++] = stopsig;
  }
}

// Run system call nr(args[0..5]) in the stopped tracee tid (a thread this thread froze, in a ptrace stop), at
// the `syscall` instruction at ip (two bytes 0f 05 in an executable mapping of the target). Every register,
// general and XSAVE, is put back afterwards, on success and on failure alike.
// out[0] = the system call's raw result (-errno on its failure); out[1] = how many signals arrived meanwhile
// (each is re-queued with tgkill after the registers are back, to be delivered after the thaw); out[2] = the
// thread's orig_rax before, out[3] = its rax before (for the caller's records).
// Returns 0 when the call ran, or -errno when the injection itself failed: -ESRCH (the thread exited),
// -ETIMEDOUT (the call did not return by timeout_ns: it is interrupted and abandoned, registers put back),
// -EIO (the thread stopped somewhere unexpected), or a ptrace error.
long cryo_inject_syscall(int pid, int tid, long ip, const int64_t *args, long nr, long timeout_ns, int64_t *out) {
  struct user_regs_struct saved, regs;
  unsigned char xsbuf[INJ_XSTATE_MAX] __attribute__((aligned(64)));
  struct iovec xs = {xsbuf, sizeof xsbuf};
  long xs_type = INJ_NT_X86_XSTATE;
  int held[INJ_MAX_HELD], nheld = 0;
  out[0] = out[1] = 0;
  long r = inj_ptrace(INJ_PTRACE_GETREGS, tid, 0, (long)&saved);
  if (r < 0) return r;
  out[2] = (int64_t)saved.orig_rax;
  out[3] = (int64_t)saved.rax;
  if (inj_ptrace(INJ_PTRACE_GETREGSET, tid, xs_type, (long)&xs) < 0) {
    xs_type = INJ_NT_PRFPREG;
    xs.iov_len = sizeof xsbuf;
    if (inj_ptrace(INJ_PTRACE_GETREGSET, tid, xs_type, (long)&xs) < 0) xs.iov_len = 0;
  }
  regs = saved;
  regs.rip = (unsigned long long)ip;
  regs.rax = (unsigned long long)nr;
  regs.orig_rax = (unsigned long long)-1;  // not in a system call: the kernel must not restart anything
  regs.rdi = (unsigned long long)args[0];
  regs.rsi = (unsigned long long)args[1];
  regs.rdx = (unsigned long long)args[2];
  regs.r10 = (unsigned long long)args[3];
  regs.r8 = (unsigned long long)args[4];
  regs.r9 = (unsigned long long)args[5];
  r = inj_ptrace(INJ_PTRACE_SETREGS, tid, 0, (long)&regs);
  if (r < 0) return r;
  uint64_t deadline = inj_now_ns() + (uint64_t)timeout_ns;
  long err = 0;
  int sig = 0, gone = 0, requeued = 0;
  int early = inj_never_waits(nr);
  // The stepped thread and this one run SCHED_FIFO until the call is over: on a loaded machine each would
  // otherwise wait for its turn on a core (milliseconds) to run one instruction or to see it done.
  struct cryo_sched_attr self_attr, tid_attr;
  int self_boosted = cryo_fifo_boost(0, &self_attr), tid_boosted = cryo_fifo_boost(tid, &tid_attr);
  for (;;) {
    r = inj_ptrace(INJ_PTRACE_SYSCALL, tid, 0, sig);
    sig = 0;
    if (r < 0) {
      err = r;
      break;
    }
    int status = 0;
    int w = inj_wait_stop(tid, deadline, &status);
    if (w == -ETIMEDOUT) {
      // The call blocks: interrupt it, take the stop, abandon it (the registers go back below).
      inj_ptrace(INJ_PTRACE_INTERRUPT, tid, 0, 0);
      w = inj_wait_stop(tid, inj_now_ns() + 1000000000ull, &status);
      err = w < 0 ? w : -ETIMEDOUT;
      break;
    }
    if (w < 0) {  // gone: nothing to put back, but a signal it held for the process must not be lost
      err = w;
      gone = 1;
      break;
    }
    int event = status >> 16, stopsig = WSTOPSIG(status);
    if (event == INJ_PTRACE_EVENT_STOP) continue;  // a group stop or a late interrupt: go on
    if (event != 0) continue;                      // another ptrace event (clone): go on
    if (stopsig == (SIGTRAP | 0x80)) {  // a syscall stop (PTRACE_O_TRACESYSGOOD, set by the freeze)
      struct inj_syscall_info info;
      memset(&info, 0, sizeof info);
      r = inj_ptrace(INJ_PTRACE_GET_SYSCALL_INFO, tid, sizeof info, (long)&info);
      if (r > 0 && info.op == INJ_SYSCALL_INFO_ENTRY) {
        // Inside the call now, past the signal checks on the way out of the stop. A SIGSTOP of cryo's hold
        // that the thread took on its way here is queued again at once: should cryo die during the call, the
        // process stops when the call returns instead of running on (a call that could wait would be cut
        // short by it, so those get it back only afterwards).
        if (early) {
          for (int i = 0; i < nheld; i++) {
            if (held[i] != SIGSTOP) continue;
            syscall(SYS_kill, pid, SIGSTOP);
            held[i] = held[--nheld];
            requeued = 1;
            break;
          }
        }
        continue;
      }
      if (r > 0 && info.op == INJ_SYSCALL_INFO_EXIT) {
        r = inj_ptrace(INJ_PTRACE_GETREGS, tid, 0, (long)&regs);
        if (r < 0) {
          err = r;
          break;
        }
        if (regs.rip != (unsigned long long)ip + 2) {
          err = -EIO;
          break;
        }
        out[0] = (int64_t)regs.rax;
        break;
      }
      continue;
    }
    if (stopsig == SIGTRAP) continue;  // a SIGTRAP from elsewhere: drop it
    // A signal arrived for the thread: hold it, and queue it again once the registers are back.
    if (nheld < INJ_MAX_HELD) held[nheld++] = stopsig;
  }
  cryo_fifo_unboost(tid, &tid_attr, tid_boosted && !gone);
  cryo_fifo_unboost(0, &self_attr, self_boosted);
  long rr = gone ? 0 : inj_restore(tid, &saved, &xs, xs_type);
  if (!gone && rr == 0) {
    long sr = inj_settle(tid, held, &nheld);
    if (sr == -ESRCH) gone = 1;
    else if (sr < 0) rr = sr;
  }
  // A stop signal stops the whole process wherever it is queued: queue it to the process, as whoever sent it
  // (cryo's hold among them) most likely did, so that any thread may take it.
  for (int i = 0; i < nheld; i++) {
    if (held[i] == SIGSTOP) syscall(SYS_kill, pid, SIGSTOP);
    else if (!gone) syscall(SYS_tgkill, pid, tid, held[i]);
  }
  out[1] = nheld + requeued;
  if (err) return err;
  return rr;
}
