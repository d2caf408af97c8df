// A batch of a restore's writes in one call: read the target's bytes under them (process_vm_readv), keep only
// the pages that differ (cryo_diff_runs, which also packs their old bytes, the journal's undo, to the front of
// `old`), and write those pages (process_vm_writev). A tracked rollback writes back a few thousand scattered
// pages; one FFI call per batch instead of one per step, and no iovec built page by page in JavaScript.
#include "helper.h"

#include <errno.h>
#include <sys/uio.h>

#define IOV_MAX_BATCH 1024

// n (≤ 1024) writes: new bytes at liov[2i] (length liov[2i+1]) to the target's riov[2i] (same length). Their
// old bytes are read into `old` (capacity old_cap), compared, and the differing runs written to `runs` as
// cryo_diff_runs does; then those runs are written to the target. out[0] = bytes written (in run order: a short
// write stops there), out[1] = old bytes kept at the front of `old` (the data runs', packed in order).
// Returns the number of runs; -EAGAIN when the target's bytes could not all be read (nothing was written: the
// caller takes its slow path); -E2BIG when they do not fit in old; -ENOSPC when max_runs is too few.
long cryo_save_write(int pid, const uint64_t *liov, const uint64_t *riov, size_t n, unsigned char *old,
                     size_t old_cap, size_t page, uint64_t *runs, size_t max_runs, uint64_t *out) {
  out[0] = out[1] = 0;
  if (n == 0) return 0;
  if (n > IOV_MAX_BATCH) return -EINVAL;
  struct iovec l[IOV_MAX_BATCH], r[IOV_MAX_BATCH];
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len = (size_t)riov[2 * i + 1];
    if (total + len > old_cap) return -E2BIG;
    l[i].iov_base = old + total, l[i].iov_len = len;
    r[i].iov_base = (void *)(uintptr_t)riov[2 * i], r[i].iov_len = len;
    total += len;
  }
  ssize_t got = process_vm_readv(pid, l, n, r, n, 0);
  if (got < 0 || (size_t)got != total) return -EAGAIN;
  long found = cryo_diff_runs(liov, n, old, page, runs, max_runs);
  if (found < 0) return found;
  uint64_t kept = 0;
  for (long k = 0; k < found; k++)
    if (!runs[4 * k + 3]) kept += runs[4 * k + 2];
  out[1] = kept;
  uint64_t written = 0;
  for (long k = 0; k < found;) {
    size_t m = 0, want = 0;
    for (; k + (long)m < found && m < IOV_MAX_BATCH; m++) {
      const uint64_t *q = runs + 4 * (k + (long)m);
      size_t idx = (size_t)q[0], off = (size_t)q[1], len = (size_t)q[2];
      l[m].iov_base = (unsigned char *)(uintptr_t)liov[2 * idx] + off, l[m].iov_len = len;
      r[m].iov_base = (void *)(uintptr_t)(riov[2 * idx] + off), r[m].iov_len = len;
      want += len;
    }
    ssize_t put = process_vm_writev(pid, l, m, r, m, 0);
    if (put > 0) written += (uint64_t)put;
    if (put < 0 || (size_t)put != want) break;  // a page the process cannot write: the caller's fallback
    k += (long)m;
  }
  out[0] = written;
  return found;
}
