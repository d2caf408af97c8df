// rusage: run one command as a fresh process and report what it cost, measured from outside it: the wall
// time from fork to its end and its peak resident set (wait4's ru_maxrss, which also covers the children it
// waited for, e.g. gdb under the gcore script). The cold benchmark (bench/cold.ts) runs every tool through it.
//
//   rusage OUT PROGRAM [ARG...]
//       fork, execvp(PROGRAM), wait4; stdin, stdout and stderr are the command's. When it has ended, OUT gets
//       one line "MAXRSS_KIB WALL_NS STATUS" (STATUS: the exit status, or 128 + the signal that ended it), and
//       rusage exits with STATUS.
//
// Build: deno task build (cc -O2 -o ffi/build/cryo_rusage bench/rusage.c)
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: rusage OUT PROGRAM [ARG...]\n");
    return 2;
  }
  long long t0 = now_ns();
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "rusage: fork: %s\n", strerror(errno));
    return 2;
  }
  if (pid == 0) {
    execvp(argv[2], argv + 2);
    fprintf(stderr, "rusage: cannot run %s: %s\n", argv[2], strerror(errno));
    _exit(127);
  }
  int status = 0;
  struct rusage ru;
  pid_t got;
  while ((got = wait4(pid, &status, 0, &ru)) < 0 && errno == EINTR) {
  }
  long long wall = now_ns() - t0;
  if (got < 0) {
    fprintf(stderr, "rusage: wait4: %s\n", strerror(errno));
    return 2;
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  FILE *f = fopen(argv[1], "w");
  if (!f || fprintf(f, "%ld %lld %d\n", ru.ru_maxrss, wall, code) < 0 || fclose(f) != 0) {
    fprintf(stderr, "rusage: cannot write %s: %s\n", argv[1], strerror(errno));
    return 2;
  }
  return code;
}
