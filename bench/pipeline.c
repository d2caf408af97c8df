// pipeline: the physical baseline cryo's checkpoint and restore are measured against. It moves exactly the
// resident pages of one range of another process, with the fewest system calls we know how to make, and no
// format beyond a page bitmap:
//
//   pipeline dump PID ADDR LEN OUT [stop] [fsync]
//       /proc/PID/pagemap -> the present pages of [ADDR, ADDR+LEN); process_vm_readv of up to 8 MiB of them at
//       a time (one call, up to 1024 remote iovecs) -> write() of the batch to OUT, densely. OUT ends with a
//       trailer: the page bitmap (bit i = page i stored), then u64 LE page count, then u64 LE magic.
//   pipeline load PID ADDR LEN IN [stop]
//       The trailer of IN -> pread of up to 8 MiB of data at a time -> process_vm_writev to the pages the
//       bitmap names (one call per batch).
//
// "stop" sends SIGSTOP first, waits (bounded) until every thread of PID is stopped, and sends SIGCONT at the
// end: the baseline's stop window. "fsync" fsyncs OUT before the clock stops (default: to page cache).
// Prints one line: "ok BYTES NS STOP_NS" (bytes of data moved, wall time of the whole operation, time the
// target was held stopped), or "err MESSAGE" on stderr with exit status 1.
//
// Build: deno task build (cc -O2 -o ffi/build/cryo_pipeline bench/pipeline.c)
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef BATCH
#define BATCH (8u << 20)  // bytes per process_vm_readv / write (-DBATCH=... to experiment)
#endif
#define MAX_IOV 1024
#define MAGIC 0x455049504f595243ull  // "CRYOPIPE" little-endian

static long page;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, const char *detail) {
  fprintf(stderr, "err Cannot %s%s%s: %s\n", what, detail ? " " : "", detail ? detail : "", strerror(errno));
  exit(1);
}

// Whether every thread of pid is in state T (stopped) right now.
static int all_stopped(int pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR *d = opendir(path);
  if (!d) die("open", path);
  int all = 1;
  struct dirent *e;
  while (all && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char stat[320], buf[512];
    snprintf(stat, sizeof stat, "/proc/%d/task/%s/stat", pid, e->d_name);
    int fd = open(stat, O_RDONLY);
    if (fd < 0) continue;  // the thread exited
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = 0;
    char *p = strrchr(buf, ')');  // the state follows the command name, which may hold spaces
    if (p && p[1] == ' ' && p[2] != 'T' && p[2] != 't') all = 0;
  }
  closedir(d);
  return all;
}

static void stop(int pid) {
  if (kill(pid, SIGSTOP)) die("SIGSTOP", "the target");
  for (int i = 0; i < 100000; i++) {  // bounded: 100000 * 10 µs = 1 s at least, plus the scans
    if (all_stopped(pid)) return;
    struct timespec ts = {0, 10000};
    nanosleep(&ts, 0);
  }
  kill(pid, SIGCONT);
  errno = ETIMEDOUT;
  die("stop", "the target");
}

static void write_all(int fd, const void *p, size_t n, const char *path) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("write", path);
    p = (const char *)p + w;
    n -= (size_t)w;
  }
}

static void read_all(int fd, void *p, size_t n, off_t off, const char *path) {
  while (n) {
    ssize_t r = pread(fd, p, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = EIO;
      die("read", path);
    }
    p = (char *)p + r;
    n -= (size_t)r;
    off += r;
  }
}

// The present (or swapped) pages of [addr, addr + npages * page) as a bitmap.
static unsigned char *present_pages(int pid, uint64_t addr, uint64_t npages) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) die("open", path);
  unsigned char *bits = calloc((npages + 7) / 8, 1);
  enum { CHUNK = 65536 };
  uint64_t *ent = malloc(CHUNK * sizeof *ent);
  if (!bits || !ent) die("allocate", "the page bitmap");
  for (uint64_t i = 0; i < npages; i += CHUNK) {
    uint64_t n = npages - i < CHUNK ? npages - i : CHUNK;
    read_all(fd, ent, n * 8, (off_t)((addr / (uint64_t)page + i) * 8), path);
    for (uint64_t j = 0; j < n; j++)
      if (ent[j] >> 62) bits[(i + j) / 8] |= (unsigned char)(1u << ((i + j) % 8));
  }
  free(ent);
  close(fd);
  return bits;
}

static int bit(const unsigned char *bits, uint64_t i) { return bits[i / 8] >> (i % 8) & 1; }

// Gather the next batch of stored pages from page *next on: remote iovecs (one per run) into riov, at most
// BATCH bytes and MAX_IOV runs. Returns the batch's byte count; *nr is the iovec count.
static size_t gather(const unsigned char *bits, uint64_t npages, uint64_t addr, uint64_t *next, struct iovec *riov,
                     int *nr) {
  size_t bytes = 0;
  *nr = 0;
  uint64_t i = *next;
  while (i < npages && *nr < MAX_IOV && bytes < BATCH) {
    if (!bit(bits, i)) {
      i++;
      continue;
    }
    uint64_t start = i;
    while (i < npages && bit(bits, i) && bytes + (i - start + 1) * (uint64_t)page <= BATCH) i++;
    riov[*nr].iov_base = (void *)(uintptr_t)(addr + start * (uint64_t)page);
    riov[*nr].iov_len = (i - start) * (size_t)page;
    bytes += riov[*nr].iov_len;
    (*nr)++;
  }
  *next = i;
  return bytes;
}

static uint64_t dump(int pid, uint64_t addr, uint64_t npages, const char *out, int dofsync) {
  int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) die("open", out);
  unsigned char *bits = present_pages(pid, addr, npages);
  char *buf = malloc(BATCH);
  struct iovec riov[MAX_IOV];
  uint64_t next = 0, total = 0;
  int nr;
  size_t bytes;
  while ((bytes = gather(bits, npages, addr, &next, riov, &nr)) > 0) {
    struct iovec liov = {buf, bytes};
    ssize_t r = process_vm_readv(pid, &liov, 1, riov, (unsigned long)nr, 0);
    if (r != (ssize_t)bytes) {
      if (r >= 0) errno = EFAULT;
      die("process_vm_readv", "the target");
    }
    write_all(fd, buf, bytes, out);
    total += bytes;
  }
  uint64_t trailer[2] = {npages, MAGIC};
  write_all(fd, bits, (npages + 7) / 8, out);
  write_all(fd, trailer, sizeof trailer, out);
  if (dofsync && fsync(fd)) die("fsync", out);
  if (close(fd)) die("close", out);
  free(bits);
  free(buf);
  return total;
}

static uint64_t load(int pid, uint64_t addr, uint64_t npages, const char *in) {
  int fd = open(in, O_RDONLY);
  if (fd < 0) die("open", in);
  struct stat st;
  if (fstat(fd, &st)) die("stat", in);
  uint64_t trailer[2];
  uint64_t mapbytes = (npages + 7) / 8;
  if ((uint64_t)st.st_size < mapbytes + sizeof trailer) {
    errno = EINVAL;
    die("load", in);
  }
  read_all(fd, trailer, sizeof trailer, st.st_size - (off_t)sizeof trailer, in);
  if (trailer[0] != npages || trailer[1] != MAGIC) {
    errno = EINVAL;
    die("load (not a pipeline dump of this length)", in);
  }
  unsigned char *bits = malloc(mapbytes);
  char *buf = malloc(BATCH);
  if (!bits || !buf) die("allocate", "buffers");
  read_all(fd, bits, mapbytes, st.st_size - (off_t)(sizeof trailer + mapbytes), in);
  struct iovec riov[MAX_IOV];
  uint64_t next = 0, total = 0;
  int nr;
  size_t bytes;
  while ((bytes = gather(bits, npages, addr, &next, riov, &nr)) > 0) {
    read_all(fd, buf, bytes, (off_t)total, in);
    struct iovec liov = {buf, bytes};
    ssize_t w = process_vm_writev(pid, &liov, 1, riov, (unsigned long)nr, 0);
    if (w != (ssize_t)bytes) {
      if (w >= 0) errno = EFAULT;
      die("process_vm_writev", "the target");
    }
    total += bytes;
  }
  close(fd);
  free(bits);
  free(buf);
  return total;
}

int main(int argc, char **argv) {
  page = sysconf(_SC_PAGESIZE);
  if (argc < 6 || (strcmp(argv[1], "dump") && strcmp(argv[1], "load"))) {
    fprintf(stderr, "usage: pipeline dump PID ADDR LEN OUT [stop] [fsync]\n"
                    "       pipeline load PID ADDR LEN IN [stop]\n");
    return 2;
  }
  int pid = atoi(argv[2]);
  uint64_t addr = strtoull(argv[3], 0, 0), len = strtoull(argv[4], 0, 0);
  if (pid <= 0 || addr % (uint64_t)page || len % (uint64_t)page || len == 0) {
    fprintf(stderr, "err Cannot %s: PID, ADDR and LEN must be positive and ADDR, LEN page aligned\n", argv[1]);
    return 2;
  }
  int dostop = 0, dofsync = 0;
  for (int i = 6; i < argc; i++) {
    if (!strcmp(argv[i], "stop")) dostop = 1;
    else if (!strcmp(argv[i], "fsync")) dofsync = 1;
    else {
      fprintf(stderr, "err Cannot %s: unknown option %s\n", argv[1], argv[i]);
      return 2;
    }
  }
  uint64_t t0 = now_ns(), stopped = 0;
  if (dostop) stop(pid);
  uint64_t moved = argv[1][0] == 'd' ? dump(pid, addr, len / (uint64_t)page, argv[5], dofsync)
                                     : load(pid, addr, len / (uint64_t)page, argv[5]);
  if (dostop) {
    kill(pid, SIGCONT);
    stopped = now_ns() - t0;
  }
  printf("ok %llu %llu %llu\n", (unsigned long long)moved, (unsigned long long)(now_ns() - t0),
         (unsigned long long)stopped);
  return 0;
}
