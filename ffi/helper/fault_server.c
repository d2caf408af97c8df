// A userfaultfd fault server: a native thread that reads page-fault events from a userfaultfd (ours, or one
// copied out of another process) and resolves each with UFFDIO_COPY from a source the caller gives it (runs of
// (address, length, source pointer), e.g. an image mapped in memory), or UFFDIO_ZEROPAGE for addresses no run
// covers (holes), with prefetch around the fault: one page at first, doubling while faults come sequentially
// (each right after the window served before), up to a maximum, as CRIU's lazy-pages does. A large window is
// copied in two pieces so that the faulting thread runs again after the first 16 pages, and a reader at full
// window gets read-ahead: while no fault waits, the server copies on ahead of it, up to a bound.
//
// Between faults the server keeps reading for 50 us before it sleeps in poll(): under random single-page
// faults the next one then arrives while it looks, and is served without a wake-up (here: 35,000 faults/s
// instead of 6,000-19,000).
//
// Why C: a thread that faults waits until its page is served; if serving took a turn of the JavaScript event
// loop, a target fault could wait on a busy JS thread, and a fault in this very process (served for itself)
// could deadlock it. The server thread touches nothing of JavaScript's.
//
// Sources: either addresses in this process (buffers, an image mapped in memory), or, for a server started with
// cryo_fault_server_start_file(), offsets in a file read with pread() into one buffer of the server's (as large as
// the largest piece it copies at once, 1 MiB by default) right before each UFFDIO_COPY. The file's pages then
// never enter this process's page tables: a mapped image's pages count in cryo's RSS once touched (a lazy wake of
// 1 GiB of data peaked at over 1 GiB), a pread's do not, and a pread from the page cache costs about what the
// minor faults on a mapping did. Such a server's runs are in a file too (24 bytes each, in blocks of
// FS_BLOCK_RUNS, lib/kernel/fault_runs.ts): in memory it keeps the first address of each block and one block per
// thread that reads them, whatever the count of runs (an image of half a million one-page records has 262,144).
//
// Stopping: cryo_fault_server_stop() wakes the thread through an eventfd; with `complete`, it first copies every
// page of every run that is still missing (pages that exist are skipped) and serves the faults still queued,
// so that after the caller unregisters the ranges the process sees exactly its data.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

enum {
  FS_FAULTS,        // page-fault events read
  FS_PAGES_COPIED,  // pages filled by UFFDIO_COPY
  FS_PAGES_ZERO,    // pages filled by UFFDIO_ZEROPAGE
  FS_EXISTED,       // faults whose page was already there (raced with a prefetch): woken only
  FS_ERRORS,        // ioctls that failed otherwise
  FS_LAST_ERRNO,    // the errno of the last such failure
  FS_MAX_WINDOW,    // the largest window served, in pages
  FS_COMPLETED,     // pages copied by the completion at stop
  FS_BUSY_NS,       // time spent filling pages (UFFDIO_COPY/ZEROPAGE/WAKE), in ns
  FS_READ_AHEAD,    // pages copied ahead of a sequential reader, between faults (counted in FS_PAGES_COPIED too)
  FS_NSTATS = 10
};

#define FS_SPIN_NS 50000  // how long the server keeps looking for the next fault before sleeping in poll()
#define FS_AHEAD_CHUNK 256  // pages per read-ahead copy, between two looks for faults
#define FS_HEAD 16  // pages copied before the faulting thread is woken, when the window is larger

struct fs_run {
  uint64_t addr, len, src;
};

#define FS_BLOCK_RUNS 128  // runs per block of a table file (3 KiB); must equal BLOCK_RUNS in fault_runs.ts

// The block of a table file a thread read last (file mode): the server thread has one, the caller's fill another.
struct fs_cursor {
  size_t block;  // SIZE_MAX: none yet
  struct fs_run runs[FS_BLOCK_RUNS];
};

struct fs_server {
  int uffd, stopfd, complete, stopping;
  int srcfd;           // file mode: sources are offsets in this file (-1: addresses in this process)
  int tablefd;         // file mode: the runs' table file
  const uint64_t *dir;  // file mode: the first address of each block of the table (the caller's memory)
  size_t nblocks;
  struct fs_cursor cur, fillcur;  // file mode: the server thread's block, and the fill's
  uint64_t complete_from;  // the completion at stop copies the runs' missing pages from this address on
  unsigned char *buf;      // file mode: where a piece is read before it is copied
  size_t buflen;
  unsigned char *fillbuf;  // file mode: the same for cryo_fault_server_fill, on the caller's thread
  size_t filllen;
  pthread_t thread;
  struct fs_run *runs;
  size_t nruns, page, max_window;
  uint64_t last_end;
  size_t window;
  uint64_t ahead, ahead_left;  // read-ahead: the next address to copy, and how many bytes may still be copied
  size_t readahead_pages;
  uint64_t stats[FS_NSTATS];
};

static void fs_add(struct fs_server *s, int i, uint64_t n) { __atomic_add_fetch(&s->stats[i], n, __ATOMIC_RELAXED); }

static void fs_error(struct fs_server *s, int e) {
  fs_add(s, FS_ERRORS, 1);
  __atomic_store_n(&s->stats[FS_LAST_ERRNO], (uint64_t)e, __ATOMIC_RELAXED);
}

// Run i (< nruns): in memory, or read from the table file with its block (through cursor c). NULL when the table
// cannot be read.
static const struct fs_run *fs_run(struct fs_server *s, struct fs_cursor *c, size_t i) {
  if (s->runs) return &s->runs[i];
  size_t b = i / FS_BLOCK_RUNS;
  if (c->block != b) {
    size_t first = b * FS_BLOCK_RUNS, n = s->nruns - first < FS_BLOCK_RUNS ? s->nruns - first : FS_BLOCK_RUNS;
    size_t len = n * sizeof(struct fs_run), done = 0;
    while (done < len) {
      ssize_t r = pread(s->tablefd, (char *)c->runs + done, len - done, (off_t)(first * sizeof(struct fs_run) + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        c->block = SIZE_MAX;
        return 0;
      }
      done += (size_t)r;
    }
    c->block = b;
  }
  return &c->runs[i % FS_BLOCK_RUNS];
}

// The index of the first run that ends after addr (nruns if none; SIZE_MAX when the table cannot be read): in
// file mode, the block from the directory, then the run within it.
static size_t fs_find(struct fs_server *s, struct fs_cursor *c, uint64_t addr) {
  size_t lo = 0, hi = s->nruns;
  if (!s->runs) {
    size_t blo = 0, bhi = s->nblocks;
    while (blo < bhi) {  // the blocks that start at or before addr
      size_t mid = blo + (bhi - blo) / 2;
      if (s->dir[mid] <= addr) blo = mid + 1;
      else bhi = mid;
    }
    lo = (blo ? blo - 1 : 0) * FS_BLOCK_RUNS;
    hi = lo + FS_BLOCK_RUNS < s->nruns ? lo + FS_BLOCK_RUNS : s->nruns;  // or the next block's first run
  }
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const struct fs_run *r = fs_run(s, c, mid);
    if (!r) return SIZE_MAX;
    if (r->addr + r->len <= addr) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Copy len bytes (whole pages) to dst, from src (or zeros when src is 0). Returns bytes filled (0 when the first
// page existed already) or -errno. Retries EAGAIN (the mapping is changing) a bounded number of times.
static long fs_fill(struct fs_server *s, uint64_t dst, uint64_t src, uint64_t len) {
  for (int tries = 0; tries < 1000; tries++) {
    if (src) {
      struct uffdio_copy c = {.dst = dst, .src = src, .len = len, .mode = 0, .copy = 0};
      if (ioctl(s->uffd, UFFDIO_COPY, &c) == 0) return (long)len;
      if (errno == EEXIST) return c.copy > 0 ? c.copy : 0;
      if (errno == EAGAIN && c.copy > 0) return c.copy;
      if (errno != EAGAIN) return -errno;
    } else {
      struct uffdio_zeropage z = {.range = {.start = dst, .len = len}, .mode = 0, .zeropage = 0};
      if (ioctl(s->uffd, UFFDIO_ZEROPAGE, &z) == 0) return (long)len;
      if (errno == EEXIST) return z.zeropage > 0 ? z.zeropage : 0;
      if (errno == EAGAIN && z.zeropage > 0) return z.zeropage;
      if (errno != EAGAIN) return -errno;
    }
  }
  return -EAGAIN;
}

// File mode: read len bytes at offset src of the source file into buf (len <= buflen) and return its address in
// *from; address mode: *from = src. Returns 0 or -errno (-EIO: the file ends early).
static long fs_source(struct fs_server *s, unsigned char *buf, uint64_t src, uint64_t len, uint64_t *from) {
  if (s->srcfd < 0) {
    *from = src;
    return 0;
  }
  for (uint64_t done = 0; done < len;) {
    ssize_t n = pread(s->srcfd, buf + done, len - done, (off_t)(src + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -EIO;
    done += (uint64_t)n;
  }
  *from = (uint64_t)(uintptr_t)buf;
  return 0;
}

static uint64_t fs_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// Serve one fault at addr: the window from its page forward, within its run (or its hole).
static int fs_serve(struct fs_server *s, uint64_t addr) {
  uint64_t page = s->page, at = addr & ~(page - 1);
  fs_add(s, FS_FAULTS, 1);
  if (at == s->last_end && s->window < s->max_window) s->window *= 2;
  else if (at != s->last_end) s->window = 1;
  if (s->window > s->max_window) s->window = s->max_window;
  if (s->window > s->stats[FS_MAX_WINDOW]) __atomic_store_n(&s->stats[FS_MAX_WINDOW], s->window, __ATOMIC_RELAXED);
  uint64_t want = (uint64_t)s->window * page, src = 0;
  size_t i = fs_find(s, &s->cur, at);
  const struct fs_run *run = i < s->nruns ? fs_run(s, &s->cur, i) : 0;
  if (i == SIZE_MAX || (i < s->nruns && !run)) {  // the table cannot be read: not a hole, so not served
    fs_error(s, EIO);
    return 0;
  }
  int data = run && run->addr <= at;
  if (data) {  // in a run: copy from its source
    uint64_t end = run->addr + run->len;
    if (want > end - at) want = end - at;
    src = run->src + (at - run->addr);
  } else if (run && want > run->addr - at) {  // in a hole: zeros up to the next run
    want = run->addr - at;
  }
  uint64_t t0 = fs_now_ns();
  long r = data ? fs_source(s, s->buf, src, want, &src) : 0;
  // A large window goes in two pieces: the first (FS_HEAD pages) wakes the faulting thread at once, which then
  // runs on (on another core) while the rest is copied behind it.
  uint64_t head = want > FS_HEAD * page ? FS_HEAD * page : want;
  if (r == 0) r = fs_fill(s, at, src, head);
  if (r == (long)head && want > head) {
    long rest = fs_fill(s, at + head, src ? src + head : 0, want - head);
    if (rest > 0) r += rest;
  }
  fs_add(s, FS_BUSY_NS, fs_now_ns() - t0);
  if (r == -ENOENT || r == -ESRCH) {  // the range or the whole process is gone
    fs_error(s, (int)-r);
    return r == -ESRCH ? -1 : 0;
  }
  if (r < 0) {
    fs_error(s, (int)-r);
    return 0;
  }
  if (r == 0) {  // the page is there already (a prefetch won the race): wake whoever waits on it
    struct uffdio_range w = {.start = at, .len = page};
    ioctl(s->uffd, UFFDIO_WAKE, &w);
    fs_add(s, FS_EXISTED, 1);
    s->last_end = at + page;
    return 0;
  }
  fs_add(s, data ? FS_PAGES_COPIED : FS_PAGES_ZERO, (uint64_t)r / page);
  s->last_end = at + (uint64_t)r;
  // A sequential reader at full window: keep copying ahead of it between faults (see fs_readahead).
  s->ahead = data && s->window == s->max_window && s->readahead_pages ? s->last_end : 0;
  s->ahead_left = s->readahead_pages * page;
  return 0;
}

// Copy the next piece ahead of a sequential reader, while no fault waits: up to readahead_pages after each
// fault at full window, within the run, so that the reader finds its pages there instead of faulting (it then
// faults once per window plus read-ahead rather than once per window). Returns 1 when it copied something.
static int fs_readahead(struct fs_server *s) {
  if (!s->ahead || !s->ahead_left) return 0;
  size_t i = fs_find(s, &s->cur, s->ahead);
  const struct fs_run *run = i < s->nruns ? fs_run(s, &s->cur, i) : 0;
  if (!run || run->addr > s->ahead) {
    s->ahead = 0;
    return 0;
  }
  uint64_t end = run->addr + run->len, want = (uint64_t)FS_AHEAD_CHUNK * s->page;
  if (want > s->ahead_left) want = s->ahead_left;
  if (want > end - s->ahead) want = end - s->ahead;
  uint64_t t0 = fs_now_ns(), from = 0;
  long r = fs_source(s, s->buf, run->src + (s->ahead - run->addr), want, &from);
  if (r == 0) r = fs_fill(s, s->ahead, from, want);
  fs_add(s, FS_BUSY_NS, fs_now_ns() - t0);
  if (r < 0) {  // a fault there will report it
    s->ahead = 0;
    return 0;
  }
  uint64_t step = r > 0 ? (uint64_t)r : s->page;  // 0: that page exists already, step over it
  fs_add(s, FS_PAGES_COPIED, (uint64_t)r / s->page);
  fs_add(s, FS_READ_AHEAD, (uint64_t)r / s->page);
  s->ahead += step;
  s->ahead_left = step < s->ahead_left ? s->ahead_left - step : 0;
  s->last_end = s->ahead;  // the reader's next fault, where read-ahead stopped, still counts as sequential
  return 1;
}

// Read and serve every queued event, and keep looking for FS_SPIN_NS after the last one before going back to
// poll(): a thread that faults again right after being served (random access) is then served without the
// server being woken first. Returns -1 when the userfaultfd is finished with (the process is gone).
static int fs_drain(struct fs_server *s, int final) {
  struct uffd_msg msgs[64];
  uint64_t idle_since = 0;
  for (;;) {
    if (!final && __atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) return 0;  // asked to stop: even mid-storm
    ssize_t n = read(s->uffd, msgs, sizeof msgs);
    if (n < 0 && errno == EAGAIN) {
      if (!final && fs_readahead(s)) {
        idle_since = 0;
        continue;
      }
      uint64_t now = fs_now_ns();
      if (!idle_since) idle_since = now;
      if (final || now - idle_since > FS_SPIN_NS) return 0;
      __builtin_ia32_pause();
      continue;
    }
    idle_since = 0;
    if (n < 0) return errno == EINTR ? 0 : -1;
    if (n == 0) return -1;
    for (size_t k = 0; k < (size_t)n / sizeof *msgs; k++) {
      if (msgs[k].event != UFFD_EVENT_PAGEFAULT) continue;
      if (fs_serve(s, msgs[k].arg.pagefault.address) < 0) return -1;
    }
  }
}

// Copy the still-missing pages of the runs from address `from` on, `chunk` bytes at a time (read into buf in file
// mode), stepping over the pages that exist (each costs one ioctl, no new read), until `max` bytes of the runs have
// been passed over. out[0]: where it stopped (the end of the last run when done); out[1]: bytes copied; out[2]:
// bytes passed over. Returns 0, or -errno of a copy that failed (out[0] is then where it failed).
static long fs_fill_runs(struct fs_server *s, struct fs_cursor *c, unsigned char *buf, uint64_t from, uint64_t max,
                         uint64_t chunk, uint64_t *out) {
  uint64_t passed = 0, copied = 0, at = from;
  long ret = 0;
  size_t i = fs_find(s, c, from);
  if (i == SIZE_MAX) ret = -EIO;
  for (; !ret && i < s->nruns && passed < max; i++) {
    const struct fs_run *p = fs_run(s, c, i);
    if (!p) {
      ret = -EIO;
      break;
    }
    const struct fs_run r = *p;
    uint64_t off = at > r.addr ? ((at - r.addr) & ~(s->page - 1)) : 0;
    while (off < r.len && passed < max) {
      uint64_t len = r.len - off < chunk ? r.len - off : chunk, src = 0;
      ret = fs_source(s, buf, r.src + off, len, &src);
      for (uint64_t k = 0; k < len && !ret;) {
        long n = fs_fill(s, r.addr + off + k, src + k, len - k);
        if (n < 0) {
          off += k;
          ret = n;
          break;
        }
        copied += (uint64_t)n;
        k += n ? (uint64_t)n : s->page;  // 0: the page there exists (a fault served it): step over it
      }
      if (ret) break;
      off += len;
      passed += len;
    }
    at = r.addr + off;
  }
  out[0] = at;
  out[1] = copied;
  out[2] = passed;
  return ret;
}

// Copy every still-missing page of the runs from address `from` on (the caller filled those below), going on past
// a page that cannot be filled unless the process or the range is gone.
static void fs_complete(struct fs_server *s, uint64_t from) {
  uint64_t out[3] = {0, 0, 0}, chunk = (uint64_t)s->max_window * s->page;
  for (;;) {
    long r = fs_fill_runs(s, &s->cur, s->buf, from, UINT64_MAX, chunk, out);
    fs_add(s, FS_COMPLETED, out[1] / s->page);
    if (!r) return;
    fs_error(s, (int)-r);
    if (r == -ENOENT || r == -ESRCH) return;
    from = out[0] + s->page;
  }
}

static void *fs_main(void *arg) {
  struct fs_server *s = arg;
  struct pollfd p[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->stopfd, .events = POLLIN}};
  for (;;) {
    if (fs_drain(s, 0) < 0) break;
    if (__atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) break;
    p[0].revents = p[1].revents = 0;
    int r = poll(p, 2, -1);
    if (r < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) break;
  }
  if (__atomic_load_n(&s->complete, __ATOMIC_ACQUIRE)) {
    fs_drain(s, 1);
    fs_complete(s, s->complete_from);
    fs_drain(s, 1);
  }
  return 0;
}

static void fs_free(struct fs_server *s) {
  if (s->stopfd >= 0) close(s->stopfd);
  free(s->runs);
  free(s->buf);
  free(s->fillbuf);
  free(s);
}

// Address mode: runs (copied); file mode: the table file, its directory (not copied) and the source file.
static void *fs_start(int uffd, int srcfd, const uint64_t *runs, int tablefd, const uint64_t *dir, size_t nruns,
                      size_t page, size_t max_window, size_t readahead_pages, int64_t *err) {
  struct fs_server *s = calloc(1, sizeof *s);
  if (!s) {
    *err = -ENOMEM;
    return 0;
  }
  s->uffd = uffd;
  s->srcfd = srcfd;
  s->page = page;
  s->max_window = max_window ? max_window : 1;
  s->readahead_pages = readahead_pages;
  s->window = 1;
  s->last_end = UINT64_MAX;
  s->nruns = nruns;
  s->tablefd = tablefd;
  s->dir = dir;
  s->nblocks = (nruns + FS_BLOCK_RUNS - 1) / FS_BLOCK_RUNS;
  s->cur.block = s->fillcur.block = SIZE_MAX;
  s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->stopfd < 0) {
    *err = -errno;
    fs_free(s);
    return 0;
  }
  if (srcfd < 0) {
    s->runs = malloc((nruns ? nruns : 1) * sizeof *s->runs);
    if (s->runs) memcpy(s->runs, runs, nruns * sizeof *s->runs);
  } else {
    s->buflen = (s->max_window > FS_AHEAD_CHUNK ? s->max_window : FS_AHEAD_CHUNK) * page;
    s->buf = malloc(s->buflen);
  }
  if (srcfd < 0 ? !s->runs : !s->buf) {
    *err = -ENOMEM;
    fs_free(s);
    return 0;
  }
  int e = pthread_create(&s->thread, 0, fs_main, s);
  if (e) {
    *err = -e;
    fs_free(s);
    return 0;
  }
  *err = 0;
  return s;
}

// Start serving faults of uffd (non-blocking, UFFDIO_API done, ranges registered with MODE_MISSING) from
// runs[3 * i] = (address, length, source address), sorted by address, page aligned, not overlapping; addresses no
// run covers get zero pages. Prefetch grows from one page to max_window pages; at full window, up to
// readahead_pages more are copied ahead between faults (0: none). The runs are copied; the sources must stay
// mapped until cryo_fault_server_stop returns. Returns the server, or NULL with *err = -errno.
void *cryo_fault_server_start(int uffd, const uint64_t *runs, size_t nruns, size_t page, size_t max_window,
                              size_t readahead_pages, int64_t *err) {
  return fs_start(uffd, -1, runs, -1, 0, nruns, page, max_window, readahead_pages, err);
}

// The same, with the runs in file tablefd (nruns triples of the same layout, sorted) and each run's source an
// offset in file srcfd (read with pread into a buffer of the server's, never mapped); dir[b] is the address of run
// b * FS_BLOCK_RUNS. The descriptors and dir must stay valid until cryo_fault_server_stop returns.
void *cryo_fault_server_start_file(int uffd, int srcfd, int tablefd, const uint64_t *dir, size_t nruns, size_t page,
                                   size_t max_window, size_t readahead_pages, int64_t *err) {
  if (srcfd < 0 || tablefd < 0) {
    *err = -EBADF;
    return 0;
  }
  return fs_start(uffd, srcfd, 0, tablefd, dir, nruns, page, max_window, readahead_pages, err);
}

// Copy the still-missing pages of the runs from address `from` on, on the calling thread (while the server thread
// serves faults), `chunk` bytes per UFFDIO_COPY (at most the server's buffer), until `max` bytes of the runs have
// been passed over: the background fill of a lazy wake, a slice per call. out[0]: where it stopped (the end of the
// last run: done); out[1]: bytes copied; out[2]: bytes passed over (copied, or there already). Returns 0, or the
// -errno of a copy that failed (-ESRCH: the process is gone), out[0] then where.
long cryo_fault_server_fill(void *server, uint64_t from, uint64_t max, uint64_t chunk, uint64_t *out) {
  struct fs_server *s = server;
  chunk &= ~(s->page - 1);
  if (!chunk) chunk = s->page;
  if (s->srcfd >= 0) {
    if (chunk > s->buflen) chunk = s->buflen;
    if (!s->fillbuf) {  // as large as the first call's chunk (the later ones are no larger)
      s->fillbuf = malloc(chunk);
      if (!s->fillbuf) return -ENOMEM;
      s->filllen = chunk;
    }
    if (chunk > s->filllen) chunk = s->filllen;
  }
  return fs_fill_runs(s, &s->fillcur, s->fillbuf, from, max, chunk, out);
}

// Read the counters (FS_* order, 10 of them) while the server runs.
long cryo_fault_server_stats(void *server, uint64_t *out) {
  struct fs_server *s = server;
  for (int i = 0; i < FS_NSTATS; i++) out[i] = __atomic_load_n(&s->stats[i], __ATOMIC_RELAXED);
  return 0;
}

// Stop the server and free it: with complete, every missing page of the runs from address `from` on is copied
// first (on the server thread; the caller says the pages below are in place) and queued faults are served.
// Writes the final counters. Returns 0.
long cryo_fault_server_stop(void *server, int complete, uint64_t from, uint64_t *out) {
  struct fs_server *s = server;
  s->complete_from = from;
  __atomic_store_n(&s->complete, complete, __ATOMIC_RELEASE);
  __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
  uint64_t one = 1;
  if (write(s->stopfd, &one, sizeof one) < 0) { /* the eventfd cannot be full after one write */ }
  pthread_join(s->thread, 0);
  cryo_fault_server_stats(s, out);
  fs_free(s);
  return 0;
}
