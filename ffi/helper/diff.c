// Which pages a write would change: a restore's journal reads the target's bytes that a batch of writes would
// overwrite, and keeps (and writes) only the pages whose bytes differ, so a rollback costs what changed.
//
// Why C: a page-by-page comparison of a gigabyte is a loop of 262,144 memcmp calls, which FFI would make ten
// times slower; and the compaction of the old bytes is a memmove per run.
#include "helper.h"

#include <string.h>

static int all_zero(const unsigned char *p, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (p[i]) return 0;
  return 1;
}

// n ranges: new bytes at liov[2i] (length liov[2i+1]); their old bytes packed one after another in `old`.
// Compare them page by page (the last piece of a range may be shorter) and write the runs of differing pages as
// (range index, offset, length, zero) quadruples to `runs`: zero = 1 when every old byte of the run is zero
// (a page released or never written: its undo needs no copy), else 0, and then the run's old bytes are moved to
// the front of `old`, in order. Returns the number of runs, or -ENOSPC when more than max_runs would be needed.
long cryo_diff_runs(const uint64_t *liov, size_t n, unsigned char *old, size_t page, uint64_t *runs,
                    size_t max_runs) {
  size_t nruns = 0, at = 0, kept = 0;
  for (size_t i = 0; i < n; i++) {
    const unsigned char *fresh = (const unsigned char *)(uintptr_t)liov[2 * i];
    size_t len = (size_t)liov[2 * i + 1];
    size_t run_start = 0, run_len = 0;
    int run_zero = 0;
    for (size_t off = 0; off < len; off += page) {
      size_t piece = len - off < page ? len - off : page;
      int differs = memcmp(fresh + off, old + at + off, piece) != 0;
      int zero = differs && all_zero(old + at + off, piece);
      if (differs && run_len && zero != run_zero) {  // a zero run and a data run do not mix: close the first
        if (nruns == max_runs) return -ENOSPC;
        runs[4 * nruns] = i, runs[4 * nruns + 1] = run_start, runs[4 * nruns + 2] = run_len;
        runs[4 * nruns + 3] = (uint64_t)run_zero;
        nruns++;
        if (!run_zero) memmove(old + kept, old + at + run_start, run_len), kept += run_len;
        run_len = 0;
      }
      if (differs) {
        if (run_len == 0) run_start = off, run_zero = zero;
        run_len += piece;
      }
      if ((!differs || off + piece == len) && run_len) {
        if (nruns == max_runs) return -ENOSPC;
        runs[4 * nruns] = i, runs[4 * nruns + 1] = run_start, runs[4 * nruns + 2] = run_len;
        runs[4 * nruns + 3] = (uint64_t)run_zero;
        nruns++;
        if (!run_zero) memmove(old + kept, old + at + run_start, run_len), kept += run_len;
        run_len = 0;
      }
    }
    at += len;
  }
  return (long)nruns;
}
