// live.c: the native half of a live checkpoint (lib/ops/checkpoint_live.ts). The target runs while its memory
// is copied out; every page to persist is write-protected (userfaultfd, synchronous WP mode) and has a state:
//
//   UNCOPIED  (0)  protected; nobody has taken it yet
//   COPYING   (1)  the fault server has claimed it and is copying it aside
//   TAKEN     (2)  the background copy read it while it was protected (its copy is in a gather buffer)
//   ASIDE     (3)  its copy at the freeze is in the aside area (a fault copied it, or it was read while stopped)
//   LOST      (4)  it was gone (unmapped, or replaced) before anyone copied it: the image cannot be exact
//
// The fault server (a native thread) reads write faults: it claims the faulting page (and its neighbours, up
// to `neighbours` pages of an aligned block, within its run) with UNCOPIED -> COPYING, copies them aside with
// process_vm_readv (reading a protected page does not fault), publishes ASIDE, then lifts their protection,
// which wakes the writer (a page the background took is left to it: see lv_fault). The background copy (cryo_live_gather, on a pool thread) reads a batch,
// then claims every page UNCOPIED -> TAKEN; a page it cannot claim was COPYING (it waits for ASIDE) or ASIDE,
// and its buffer gets the aside copy. Claiming after the read is what makes the read exact: a page is
// un-protected only after it left UNCOPIED, so a page still UNCOPIED after the read was protected during it.
// A claimed page must still be protected when the claim is checked (PAGEMAP_SCAN: not PAGE_IS_WRITTEN): if the
// target unmapped it and something else now lies at its address, the read saw that, and the page is LOST. Then
// the background lifts the protection of what it took (waking a writer that faulted there meanwhile), so that
// later writes there do not fault.
//
// Why C: a write fault stops the writing thread until it is served; serving it must not wait for the
// JavaScript event loop (or a garbage collection), and the claim must be atomic against the server.
//
// If cryo dies, its userfaultfd (the only copy: the target's was closed) is released by the kernel, which lifts
// every protection and wakes every waiting thread: the target runs on.
#include "helper.h"

#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

enum { ST_UNCOPIED = 0, ST_COPYING = 1, ST_TAKEN = 2, ST_ASIDE = 3, ST_LOST = 4 };

enum {
  LV_FAULTS,          // write faults read
  LV_EARLY,           // pages copied aside by faults, before the background copy reached them
  LV_TAKEN,           // pages the background copy took as it read them
  LV_FROM_ASIDE,      // pages the background copy took from the aside area
  LV_OUTSIDE,         // faults on pages outside every run (protection lifted, nothing copied)
  LV_LOST,            // pages gone before anyone copied them
  LV_LOST_ADDR,       // the first such page
  LV_ERRORS,          // ioctls that failed otherwise
  LV_LAST_ERRNO,      // the errno of the last one
  LV_BUSY_NS,         // time the server spent serving faults
  LV_MAX_FAULT_NS,    // the longest time one fault took to serve, from its read to the wake
  LV_PRELOADED,       // pages copied aside while the target was stopped (regions that cannot be protected)
  LV_UNPROTECTS,      // UFFDIO_WRITEPROTECT calls of the background copy
  LV_UNREADABLE,      // pages the background could not read (unmapped since) and took from the aside area
  LV_NSTATS = 14
};

#define LV_SPIN_NS 50000             // how long the server looks for the next fault before sleeping in poll()
#define LV_WAIT_NS 5000000000ull     // how long the background waits for a page the server is copying
#define LV_MAX_NEIGHBOURS 512

// linux/fs.h 6.7+ (our headers predate it): PAGEMAP_SCAN and its structures.
#define LV_PAGEMAP_SCAN 0xc0606610ul
#define LV_PAGE_IS_WRITTEN (1ull << 1)
#define LV_PAGE_IS_PRESENT (1ull << 3)
struct lv_pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
struct lv_page_region {
  uint64_t start, end, categories;
};

struct lv_run {
  uint64_t addr, len, first;  // first: the index of its first page in state[] and the aside area
};

struct lv_server {
  int uffd, stopfd, pid, pagemap, stopping;
  pthread_t thread;
  struct lv_run *runs;
  size_t nruns, npages, page, neighbours;
  uint8_t *state;
  unsigned char *aside;
  size_t aside_len;
  uint64_t stats[LV_NSTATS];
};

static void lv_add(struct lv_server *s, int i, uint64_t n) { __atomic_add_fetch(&s->stats[i], n, __ATOMIC_RELAXED); }

static void lv_error(struct lv_server *s, int e) {
  lv_add(s, LV_ERRORS, 1);
  __atomic_store_n(&s->stats[LV_LAST_ERRNO], (uint64_t)e, __ATOMIC_RELAXED);
}

static void lv_lost(struct lv_server *s, uint64_t addr, size_t pages) {
  uint64_t none = 0;
  __atomic_compare_exchange_n(&s->stats[LV_LOST_ADDR], &none, addr, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  lv_add(s, LV_LOST, pages);
}

// The run holding addr, or NULL.
static const struct lv_run *lv_find(const struct lv_server *s, uint64_t addr) {
  size_t lo = 0, hi = s->nruns;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->runs[mid].addr + s->runs[mid].len <= addr) lo = mid + 1;
    else hi = mid;
  }
  if (lo < s->nruns && s->runs[lo].addr <= addr) return &s->runs[lo];
  return 0;
}

static size_t lv_index(const struct lv_server *s, const struct lv_run *r, uint64_t addr) {
  return (size_t)(r->first + (addr - r->addr) / s->page);
}

// Read len bytes of the target at addr into the aside slot of page idx. Returns the bytes read (whole pages,
// fewer when a page is gone) or -errno.
static long lv_read_aside(struct lv_server *s, size_t idx, uint64_t addr, size_t len) {
  struct iovec l = {.iov_base = s->aside + idx * s->page, .iov_len = len};
  struct iovec r = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
  return cryo_ret(process_vm_readv(s->pid, &l, 1, &r, 1, 0));
}

// Lift the protection of [addr, addr + len) and wake whoever waits there. Returns 0 or -errno.
static long lv_unprotect(struct lv_server *s, uint64_t addr, uint64_t len) {
  struct uffdio_writeprotect wp = {.range = {.start = addr, .len = len}, .mode = 0};
  for (int tries = 0; tries < 1000; tries++) {
    if (ioctl(s->uffd, UFFDIO_WRITEPROTECT, &wp) == 0) return 0;
    if (errno != EAGAIN) return -errno;
  }
  return -EAGAIN;
}

// Lift the protection of [addr, addr + len); if that fails (the range went away meanwhile), at least wake the
// writer of page `at`: it must not wait forever.
static void lv_lift(struct lv_server *s, uint64_t addr, uint64_t len, uint64_t at) {
  long e = lv_unprotect(s, addr, len);
  if (e < 0 && len > s->page && at >= addr && at < addr + len) e = lv_unprotect(s, at, s->page);
  if (e < 0) {
    if (e != -ENOENT) lv_error(s, (int)-e);
    struct uffdio_range w = {.start = at, .len = s->page};
    ioctl(s->uffd, UFFDIO_WAKE, &w);
  }
}

// Serve one write fault at addr: copy the unclaimed pages of its block aside and lift their protection. A page
// the background copy has taken keeps its protection until the background has checked it (lv_settle): it lifts
// it then, which wakes the writer.
static void lv_fault(struct lv_server *s, uint64_t addr) {
  uint64_t t0 = cryo_now_ns(), page = s->page, at = addr & ~(page - 1);
  lv_add(s, LV_FAULTS, 1);
  const struct lv_run *r = lv_find(s, at);
  if (!r) {
    lv_add(s, LV_OUTSIDE, 1);
    lv_lift(s, at, page, at);
  } else {
    uint64_t block = (uint64_t)s->neighbours * page;
    uint64_t lo = at - at % block, hi = lo + block;
    if (lo < r->addr) lo = r->addr;
    if (hi > r->addr + r->len) hi = r->addr + r->len;
    int served = 0;
    // Claim, then copy each stretch of claimed pages with one read and lift its protection.
    uint64_t stretch = 0;
    size_t claimed = 0;
    for (uint64_t p = lo; p <= hi; p += page) {
      int mine = 0;
      if (p < hi) {
        uint8_t expected = ST_UNCOPIED;
        mine = __atomic_compare_exchange_n(&s->state[lv_index(s, r, p)], &expected, ST_COPYING, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
      }
      if (mine) {
        if (!claimed) stretch = p;
        claimed++;
        continue;
      }
      if (!claimed) continue;
      size_t idx = lv_index(s, r, stretch);
      long got = lv_read_aside(s, idx, stretch, claimed * page);
      size_t ok = got > 0 ? (size_t)got / page : 0;
      for (size_t k = 0; k < claimed; k++) {
        __atomic_store_n(&s->state[idx + k], k < ok ? ST_ASIDE : ST_LOST, __ATOMIC_RELEASE);
      }
      lv_add(s, LV_EARLY, ok);
      if (ok < claimed) lv_lost(s, stretch + ok * page, claimed - ok);
      lv_lift(s, stretch, claimed * page, at);
      if (at >= stretch && at < stretch + claimed * page) served = 1;
      claimed = 0;
    }
    // Its page was copied before (a fault raced with another): lift it again, unless the background holds it.
    if (!served && __atomic_load_n(&s->state[lv_index(s, r, at)], __ATOMIC_ACQUIRE) != ST_TAKEN) {
      lv_lift(s, at, page, at);
    }
  }
  uint64_t took = cryo_now_ns() - t0;
  lv_add(s, LV_BUSY_NS, took);
  uint64_t max = __atomic_load_n(&s->stats[LV_MAX_FAULT_NS], __ATOMIC_RELAXED);
  if (took > max) __atomic_store_n(&s->stats[LV_MAX_FAULT_NS], took, __ATOMIC_RELAXED);
}

// Read and serve queued faults; keep looking for LV_SPIN_NS after the last before returning to poll().
// Returns -1 when the userfaultfd is finished with.
static int lv_drain(struct lv_server *s) {
  struct uffd_msg msgs[64];
  uint64_t idle_since = 0;
  for (;;) {
    if (__atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) return 0;
    ssize_t n = read(s->uffd, msgs, sizeof msgs);
    if (n < 0 && errno == EAGAIN) {
      uint64_t now = cryo_now_ns();
      if (!idle_since) idle_since = now;
      if (now - idle_since > LV_SPIN_NS) return 0;
      __builtin_ia32_pause();
      continue;
    }
    idle_since = 0;
    if (n < 0) return errno == EINTR ? 0 : -1;
    if (n == 0) return -1;
    for (size_t k = 0; k < (size_t)n / sizeof *msgs; k++) {
      if (msgs[k].event == UFFD_EVENT_PAGEFAULT) lv_fault(s, msgs[k].arg.pagefault.address);
    }
  }
}

static void *lv_main(void *arg) {
  struct lv_server *s = arg;
  struct pollfd p[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->stopfd, .events = POLLIN}};
  for (;;) {
    if (lv_drain(s) < 0) break;
    if (__atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) break;
    p[0].revents = p[1].revents = 0;
    int r = poll(p, 2, -1);
    if (r < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) break;
  }
  return 0;
}

static void lv_free(struct lv_server *s) {
  if (s->aside && s->aside != MAP_FAILED) munmap(s->aside, s->aside_len);
  if (s->stopfd >= 0) close(s->stopfd);
  if (s->pagemap >= 0) close(s->pagemap);
  free(s->state);
  free(s->runs);
  free(s);
}

// Start the server of a live checkpoint of pid: uffd (non-blocking, UFFDIO_API done, the regions registered
// with MODE_WP and protected), pagemap an open /proc/PID/pagemap. runs[3 * i] = (address, length, flags):
// every run of pages to persist, sorted, page aligned, disjoint; flags bit 0 = copy it aside now (a region that
// is not protected; call this while the target is stopped). neighbours: pages copied per fault (a power of
// two, 1 to 512). Returns the server, or NULL with *err = -errno.
void *cryo_live_start(int uffd, int pid, int pagemap, const uint64_t *runs, size_t nruns, size_t page,
                      size_t neighbours, int64_t *err) {
  struct lv_server *s = calloc(1, sizeof *s);
  if (!s) {
    *err = -ENOMEM;
    return 0;
  }
  s->uffd = uffd;
  s->pid = pid;
  s->pagemap = -1;
  s->stopfd = -1;
  s->page = page;
  s->neighbours = neighbours < 1 ? 1 : neighbours > LV_MAX_NEIGHBOURS ? LV_MAX_NEIGHBOURS : neighbours;
  s->nruns = nruns;
  s->runs = malloc((nruns ? nruns : 1) * sizeof *s->runs);
  if (!s->runs) {
    *err = -ENOMEM;
    lv_free(s);
    return 0;
  }
  for (size_t i = 0; i < nruns; i++) {
    s->runs[i] = (struct lv_run){.addr = runs[3 * i], .len = runs[3 * i + 1], .first = s->npages};
    s->npages += runs[3 * i + 1] / page;
  }
  s->state = calloc(s->npages ? s->npages : 1, 1);
  s->aside_len = (s->npages ? s->npages : 1) * page;
  // Address space only: a page of it costs memory once a fault (or the preload) writes it.
  s->aside = mmap(0, s->aside_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (!s->state || s->aside == MAP_FAILED || s->stopfd < 0) {
    *err = s->stopfd < 0 || s->aside == MAP_FAILED ? -errno : -ENOMEM;
    lv_free(s);
    return 0;
  }
  s->pagemap = dup(pagemap);
  if (s->pagemap < 0) {
    *err = -errno;
    lv_free(s);
    return 0;
  }
  for (size_t i = 0; i < nruns; i++) {
    if (!(runs[3 * i + 2] & 1)) continue;
    const struct lv_run *r = &s->runs[i];
    long got = lv_read_aside(s, (size_t)r->first, r->addr, r->len);
    if (got != (long)r->len) {
      *err = got < 0 ? got : -EFAULT;
      lv_free(s);
      return 0;
    }
    memset(s->state + r->first, ST_ASIDE, r->len / page);
    lv_add(s, LV_PRELOADED, r->len / page);
  }
  int e = pthread_create(&s->thread, 0, lv_main, s);
  if (e) {
    *err = -e;
    lv_free(s);
    return 0;
  }
  *err = 0;
  return s;
}

// Read the counters (LV_* order, 14 of them).
long cryo_live_stats(void *server, uint64_t *out) {
  struct lv_server *s = server;
  for (int i = 0; i < LV_NSTATS; i++) out[i] = __atomic_load_n(&s->stats[i], __ATOMIC_RELAXED);
  return 0;
}

// Stop the server, write the final counters and free it. No gather may be running (the caller awaits them).
// The userfaultfd stays open: its owner closes it, which lifts what protection is left. Returns 0.
long cryo_live_stop(void *server, uint64_t *out) {
  struct lv_server *s = server;
  __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
  uint64_t one = 1;
  if (write(s->stopfd, &one, sizeof one) < 0) { /* the eventfd cannot be full after one write */ }
  pthread_join(s->thread, 0);
  cryo_live_stats(s, out);
  lv_free(s);
  return 0;
}

// Wait until page idx is no longer being copied by the server; returns its state, or -ETIMEDOUT.
static int lv_settled(struct lv_server *s, size_t idx) {
  uint64_t deadline = 0;
  for (;;) {
    uint8_t st = __atomic_load_n(&s->state[idx], __ATOMIC_ACQUIRE);
    if (st != ST_COPYING) return st;
    uint64_t now = cryo_now_ns();
    if (!deadline) deadline = now + LV_WAIT_NS;
    if (now > deadline) return -ETIMEDOUT;
    __builtin_ia32_pause();
  }
}

// The gather's `missing` hook: the page at addr could not be read (it was unmapped): its aside copy, if any.
static long lv_missing(void *ctx, unsigned char *local, uint64_t addr) {
  struct lv_server *s = ctx;
  const struct lv_run *r = lv_find(s, addr);
  if (!r) return -EFAULT;
  size_t idx = lv_index(s, r, addr);
  uint8_t expected = ST_UNCOPIED;
  if (__atomic_compare_exchange_n(&s->state[idx], &expected, ST_LOST, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    lv_lost(s, addr, 1);
    return -ESTALE;
  }
  int st = lv_settled(s, idx);
  if (st < 0) return st;
  if (st != ST_ASIDE) {
    if (st == ST_LOST) return -ESTALE;
    return -EFAULT;
  }
  memcpy(local, s->aside + idx * s->page, s->page);
  lv_add(s, LV_UNREADABLE, 1);
  return 0;
}

#define LV_STRETCHES 1024

// Check that every page of the claimed stretches (sorted) is still write-protected (its read was of the page
// protected at the freeze): one PAGEMAP_SCAN for the pages written in their span. Returns 0, -ESTALE (a claimed
// page is not protected: its state becomes LOST) or -errno.
static long lv_verify(struct lv_server *s, const uint64_t *st, size_t n) {
  if (!n) return 0;
  struct lv_page_region vec[256];
  uint64_t start = st[0], end = st[2 * n - 1];
  size_t k = 0;
  while (start < end) {
    struct lv_pm_scan_arg a = {.size = sizeof a,
                               .start = start,
                               .end = end,
                               .vec = (uint64_t)(uintptr_t)vec,
                               .vec_len = 256,
                               .category_mask = LV_PAGE_IS_WRITTEN,
                               // Not WRITTEN alone: that query takes a fast path that counts every pte without
                               // the uffd-wp bit as written, a page under migration (a swap-like entry) too.
                               .return_mask = LV_PAGE_IS_WRITTEN | LV_PAGE_IS_PRESENT};
    long got = cryo_ret(ioctl(s->pagemap, LV_PAGEMAP_SCAN, &a));
    if (got < 0) return got;
    for (long j = 0; j < got; j++) {
      while (k < n && st[2 * k + 1] <= vec[j].start) k++;
      for (size_t m = k; m < n && st[2 * m] < vec[j].end; m++) {
        uint64_t lo = st[2 * m] > vec[j].start ? st[2 * m] : vec[j].start;
        uint64_t hi = st[2 * m + 1] < vec[j].end ? st[2 * m + 1] : vec[j].end;
        if (lo >= hi) continue;
        const struct lv_run *r = lv_find(s, lo);
        if (r) memset(s->state + lv_index(s, r, lo), ST_LOST, (hi - lo) / s->page);
        lv_lost(s, lo, (hi - lo) / s->page);
        return -ESTALE;
      }
    }
    if (a.walk_end <= start || a.walk_end >= end) break;
    start = a.walk_end;
  }
  return 0;
}

// Lift the protection of the claimed stretches with one call over their span: every page of the runs in it was
// read by this batch and is settled (taken now, or copied aside, with its protection lifted, by the server, which
// claims only UNCOPIED pages: none is left here), and pages between the runs (not populated at the freeze) carry
// no protection. One call instead of one per stretch: each call flushes the TLB of every CPU the target runs on.
static void lv_release(struct lv_server *s, const uint64_t *st, size_t n) {
  if (!n) return;
  uint64_t pages = 0;
  for (size_t k = 0; k < n; k++) pages += (st[2 * k + 1] - st[2 * k]) / s->page;
  long e = lv_unprotect(s, st[0], st[2 * n - 1] - st[0]);
  lv_add(s, LV_UNPROTECTS, 1);
  if (e == -ENOENT) {  // part of the span is no longer registered (unmapped since): stretch by stretch
    for (size_t k = 0; k < n; k++) {
      e = lv_unprotect(s, st[2 * k], st[2 * k + 1] - st[2 * k]);
      lv_add(s, LV_UNPROTECTS, 1);
      if (e < 0 && e != -ENOENT) lv_error(s, (int)-e);
    }
  } else if (e < 0) {
    lv_error(s, (int)-e);
  }
  lv_add(s, LV_TAKEN, pages);
}

// The gather's `settle` hook: claim each page read (UNCOPIED -> TAKEN), or put its aside copy into the buffer;
// check the claimed pages were still protected; lift their protection.
static long lv_settle(void *ctx, unsigned char *local, const uint64_t *runs, uint64_t i, uint64_t off,
                      size_t filled) {
  struct lv_server *s = ctx;
  uint64_t page = s->page, st[2 * LV_STRETCHES] = {0};
  size_t n = 0;
  long result = 0;
  for (size_t b = 0; b < filled;) {
    uint64_t a = runs[2 * i] + off;
    size_t len = runs[2 * i + 1] - a;
    if (len > filled - b) len = filled - b;
    const struct lv_run *r = lv_find(s, a);
    if (!r || a + len > r->addr + r->len) return -EINVAL;  // a run the server was not given
    for (size_t p = 0; p < len; p += page) {
      size_t idx = lv_index(s, r, a + p);
      uint8_t expected = ST_UNCOPIED;
      if (__atomic_compare_exchange_n(&s->state[idx], &expected, ST_TAKEN, 0, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE)) {
        if (n && st[2 * n - 1] == a + p) {
          st[2 * n - 1] += page;
        } else {
          if (n == LV_STRETCHES) {  // full: check and release these, go on with a new list
            long e = lv_verify(s, st, n);
            if (e < 0) return e;
            lv_release(s, st, n);
            n = 0;
          }
          st[2 * n] = a + p;
          st[2 * n + 1] = a + p + page;
          n++;
        }
        continue;
      }
      int state = expected == ST_COPYING ? lv_settled(s, idx) : expected;
      if (state < 0) return state;
      if (state == ST_ASIDE) {
        memcpy(local + b + p, s->aside + idx * page, page);
        lv_add(s, LV_FROM_ASIDE, 1);
      } else if (state == ST_LOST) {
        result = -ESTALE;
      } else if (state == ST_TAKEN) {
        return -EINVAL;  // read twice: the runs overlap
      }
    }
    b += len;
    off += len;
    if (runs[2 * i] + off == runs[2 * i + 1]) {
      i++;
      off = 0;
    }
  }
  long e = lv_verify(s, st, n);
  if (e < 0) return e;
  lv_release(s, st, n);
  return result;
}

// cryo_gather (gather.c) for a live checkpoint served by `server`: the same arguments and results, plus
// -ESTALE when a page was gone before it could be copied (cryo_live_stats: LV_LOST, LV_LOST_ADDR).
long cryo_live_gather(void *server, int pid, unsigned char *local, size_t capacity, const uint64_t *runs,
                      size_t nruns, uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                      uint64_t *sums, size_t max_pieces, uint64_t *npieces) {
  struct cryo_gather_hook hook = {.ctx = server, .missing = lv_missing, .settle = lv_settle};
  return cryo_gather_hooked(pid, local, capacity, runs, nruns, cursor, page, detect, max_piece, pieces, sums,
                            max_pieces, npieces, &hook);
}
