// gather.c: the store's page work. Find the all-zero pages of a buffer, checksum many pieces of memory
// (XXH3-64), and gather one batch of another process's memory: read runs with process_vm_readv, split the
// copy into runs of non-zero pages, checksum each piece.
//
// Why C: speed, and one thread. The zero scan is an OR over each page that vectorises and stops at the first
// non-zero word; a batch (up to 1024 iovecs per read, then the scan and the sums) runs whole on one pool thread
// without a round trip through JavaScript per run or per page.
#include "helper.h"

#include <dlfcn.h>
#include <sys/uio.h>

typedef unsigned long long (*cryo_xxh3_fn)(const void *p, size_t len);

// XXH3_64bits from libxxhash.so.0, loaded on first use; NULL when the library or the symbol is missing.
static cryo_xxh3_fn cryo_xxh3(void) {
  static cryo_xxh3_fn fn;
  cryo_xxh3_fn f = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
  if (f) return f;
  void *lib = dlopen("libxxhash.so.0", RTLD_NOW | RTLD_LOCAL);  // a second dlopen only counts a reference
  if (!lib) return 0;
  f = (cryo_xxh3_fn)dlsym(lib, "XXH3_64bits");
  if (f) __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
  return f;
}

// Mark which pages of [p, p + len) are entirely zero: out[i] = 1 when page i is all zero, else 0.
// len must be a multiple of page, page a multiple of 64. Returns the number of zero pages (cannot fail).
long cryo_zero_pages(const unsigned char *p, size_t len, size_t page, unsigned char *out) {
  long zeros = 0;
  size_t n = len / page;
  for (size_t i = 0; i < n; i++) {
    const uint64_t *w = (const uint64_t *)(p + i * page);
    uint64_t acc = 0;
    size_t words = page / 8;
    for (size_t j = 0; j < words; j += 8) {
      acc |= w[j] | w[j + 1] | w[j + 2] | w[j + 3] | w[j + 4] | w[j + 5] | w[j + 6] | w[j + 7];
      if (acc) break;
    }
    out[i] = acc == 0;
    zeros += acc == 0;
  }
  return zeros;
}

// out[i] = XXH3_64bits(iov[stride * i], iov[stride * i + 1]) for i < n. Returns n, or -ENOENT when
// libxxhash.so.0 or its XXH3_64bits is missing.
long cryo_checksums(const uint64_t *iov, size_t n, size_t stride, uint64_t *out) {
  cryo_xxh3_fn xxh3 = cryo_xxh3();
  if (!xxh3) return -ENOENT;
  for (size_t i = 0; i < n; i++) {
    out[i] = xxh3((const void *)(uintptr_t)iov[stride * i], (size_t)iov[stride * i + 1]);
  }
  return (long)n;
}

// Move a run cursor (run index, offset in it) `bytes` forward.
static void cryo_gather_advance(const uint64_t *runs, uint64_t *cursor, uint64_t bytes) {
  for (uint64_t left = bytes; left > 0;) {
    uint64_t rest = runs[2 * cursor[0] + 1] - runs[2 * cursor[0]] - cursor[1];
    if (left >= rest) {
      left -= rest;
      cursor[0]++;
      cursor[1] = 0;
    } else {
      cursor[1] += left;
      left = 0;
    }
  }
}

// Copy runs of `pid` (`runs`: start/end pairs, `nruns` of them) back to back into `local` with
// process_vm_readv, up to 1024 iovecs a call, from run cursor[0] at offset cursor[1], until `capacity` bytes are
// copied or the runs end; the cursor is advanced past the copy. Then split the copy into pieces: runs of
// non-zero pages (every page when !detect; lengths are page multiples), each at most `max_piece` bytes, as
// triples (local address, length, remote address) in `pieces` (room for `max_pieces`), with the XXH3 of each
// in `sums` unless it is NULL (cryo_checksums(pieces, n, 3, sums) computes them later). *npieces receives the
// piece count. Returns the bytes copied, or -errno (EFAULT: an unmapped page at the cursor; ENOSPC: too many
// pieces; ENOENT: no libxxhash).
long cryo_gather(int pid, unsigned char *local, size_t capacity, const uint64_t *runs, size_t nruns,
                 uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                 uint64_t *sums, size_t max_pieces, uint64_t *npieces) {
  return cryo_gather_hooked(pid, local, capacity, runs, nruns, cursor, page, detect, max_piece, pieces, sums,
                            max_pieces, npieces, 0);
}

// cryo_gather with a hook (live.c): hook->missing fills a page that process_vm_readv could not read (else the
// gather fails with EFAULT as without a hook), and hook->settle sees the copy before it is split and summed.
long cryo_gather_hooked(int pid, unsigned char *local, size_t capacity, const uint64_t *runs, size_t nruns,
                        uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
                        uint64_t *sums, size_t max_pieces, uint64_t *npieces, const struct cryo_gather_hook *hook) {
  struct iovec liov, riov[1024];
  uint64_t first_run = cursor[0], first_off = cursor[1];
  size_t filled = 0;
  while (filled < capacity && cursor[0] < nruns) {
    size_t n = 0, want = 0;
    uint64_t i = cursor[0], off = cursor[1];
    while (n < 1024 && i < nruns && filled + want < capacity) {
      uint64_t s = runs[2 * i] + off;
      uint64_t len = runs[2 * i + 1] - s;
      if (len > capacity - filled - want) len = capacity - filled - want;
      riov[n].iov_base = (void *)(uintptr_t)s;
      riov[n].iov_len = len;
      want += len;
      n++;
      if (s + len == runs[2 * i + 1]) {
        i++;
        off = 0;
      } else {
        off += len;
      }
    }
    liov.iov_base = local + filled;
    liov.iov_len = want;
    long got = cryo_ret(process_vm_readv(pid, &liov, 1, riov, n, 0));
    if (hook && (got == -EFAULT || (got >= 0 && (size_t)got < want))) {
      // The page after the copied part is gone: the hook fills it (from a copy it made before) or says why not.
      if (got < 0) got = 0;
      cryo_gather_advance(runs, cursor, (uint64_t)got);
      long r = hook->missing(hook->ctx, local + filled + got, runs[2 * cursor[0]] + cursor[1]);
      if (r < 0) return r;
      cryo_gather_advance(runs, cursor, page);
      filled += (size_t)got + page;
      continue;
    }
    if (got < 0) return got;
    if (got == 0) return -EFAULT;
    if ((size_t)got == want) {
      cursor[0] = i;
      cursor[1] = off;
    } else {
      cryo_gather_advance(runs, cursor, (uint64_t)got);
    }
    filled += (size_t)got;
  }
  if (hook) {
    long r = hook->settle(hook->ctx, local, runs, first_run, first_off, filled);
    if (r < 0) return r;
  }
  cryo_xxh3_fn xxh3 = sums ? cryo_xxh3() : 0;
  if (sums && !xxh3) return -ENOENT;
  size_t np = 0, b = 0;
  uint64_t i = first_run, off = first_off;
  while (b < filled) {
    uint64_t s = runs[2 * i] + off;
    size_t len = runs[2 * i + 1] - s;
    if (len > filled - b) len = filled - b;
    for (size_t p = 0; p < len;) {
      if (detect) {
        unsigned char z;
        while (p < len && (cryo_zero_pages(local + b + p, page, page, &z), z)) p += page;
      }
      size_t q = p;
      if (detect) {
        unsigned char z;
        while (q < len && (cryo_zero_pages(local + b + q, page, page, &z), !z)) q += page;
      } else {
        q = len;
      }
      for (size_t o = p; o < q;) {
        size_t l = q - o < max_piece ? q - o : max_piece;
        if (np == max_pieces) return -ENOSPC;
        pieces[3 * np] = (uint64_t)(uintptr_t)(local + b + o);
        pieces[3 * np + 1] = l;
        pieces[3 * np + 2] = s + o;
        if (sums) sums[np] = xxh3(local + b + o, l);
        np++;
        o += l;
      }
      p = q;
    }
    b += len;
    off += len;
    if (runs[2 * i] + off == runs[2 * i + 1]) {
      i++;
      off = 0;
    }
  }
  *npieces = np;
  return (long)filled;
}
