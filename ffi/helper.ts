/**
 * The C helper's symbol table and its loader. Loaded once, lazily, on first use: `$CRYO_HELPER` if set, else the
 * checkout's build `ffi/build/libcryo_helper.so`, else this version's copy in the cache, built there on first use
 * from the package's own C source (`helper_build.ts`); otherwise a {@link HelperNotFoundError} that says what was
 * tried and how to fix it. Every helper function returns `-errno` on failure: pass results through `unwrap()`.
 * The C sources are `ffi/helper/*.c`, one concern each; `docs/NATIVE.md` says what lives there and why.
 *
 * @module
 */

import { HelperNotFoundError } from "../lib/errors.ts";
import { buf, int, long, ptr, size_t, uint, ulong } from "./types.ts";
import { cachedHelper, HELPER_FILE } from "./helper_build.ts";

/** The ABI version this TypeScript expects; must equal `CRYO_HELPER_ABI` in ffi/helper/helper.h. */
export const HELPER_ABI = 8;

const symbols = {
  // int cryo_helper_abi(void);
  cryo_helper_abi: { parameters: [], result: int },
  // long cryo_syscall6(long nr, long a, long b, long c, long d, long e, long f);
  //   (for system calls glibc has no wrapper for; -errno, never -1 with errno)
  cryo_syscall6: { parameters: [long, long, long, long, long, long, long], result: long },
  // int cryo_futex_wait(uint32_t *word, uint32_t expected, long timeout_ns);  (blocks: on a pool thread)
  cryo_futex_wait: { parameters: [ptr, uint, long], result: int, nonblocking: true },
  // int cryo_futex_wake(uint32_t *word, int n);
  cryo_futex_wake: { parameters: [ptr, int], result: int },
  // long cryo_zero_pages(const unsigned char *p, size_t len, size_t page, unsigned char *out);
  cryo_zero_pages: { parameters: [ptr, size_t, size_t, buf], result: long },
  // long cryo_checksums(const uint64_t *iov, size_t n, size_t stride, uint64_t *out);
  //   (XXH3-64 of each (address, length) at iov[stride * i])
  cryo_checksums: { parameters: [buf, size_t, size_t, buf], result: long },
  // long cryo_gather(int pid, unsigned char *local, size_t capacity, const uint64_t *runs, size_t nruns,
  //                  uint64_t *cursor, size_t page, int detect, size_t max_piece, uint64_t *pieces,
  //                  uint64_t *sums, size_t max_pieces, uint64_t *npieces);  (on a pool thread; -errno)
  cryo_gather: {
    parameters: [int, ptr, size_t, buf, size_t, buf, size_t, int, size_t, buf, buf, size_t, buf],
    result: long,
    nonblocking: true,
  },
  // long cryo_freeze(pid_t pid, int32_t *tids, int32_t *sigs, int max, long timeout_ns, int32_t *info,
  //                  int boost);  (synchronous on purpose: ptrace belongs to the calling thread)
  cryo_freeze: { parameters: [int, buf, buf, int, long, buf, int], result: long },
  // long cryo_thaw(pid_t pid, const int32_t *tids, const int32_t *sigs, int n, long timeout_ns, int boost);
  cryo_thaw: { parameters: [int, buf, buf, int, long, int], result: long },
  // void *cryo_safepoint_new(void);  (NULL when mmap fails)
  cryo_safepoint_new: { parameters: [], result: ptr },
  // int cryo_safepoint_free(void *sp);
  cryo_safepoint_free: { parameters: [ptr], result: int },
  // int cryo_safepoint_register(void *sp, const char *name);
  cryo_safepoint_register: { parameters: [ptr, buf], result: int },
  // int cryo_safepoint_unregister(void *sp, int slot);
  cryo_safepoint_unregister: { parameters: [ptr, int], result: int },
  // int cryo_safepoint_poll(void *sp, int slot);  (parks the calling thread: native threads call it, not JS)
  cryo_safepoint_poll: { parameters: [ptr, int], result: int },
  // int cryo_safepoint_request(void *sp);
  cryo_safepoint_request: { parameters: [ptr], result: int },
  // int cryo_safepoint_release(void *sp);
  cryo_safepoint_release: { parameters: [ptr], result: int },
  // long cryo_rseq_area(void);
  cryo_rseq_area: { parameters: [], result: long },
  // long cryo_rseq_self(const int32_t *tids, int n, void *out, long timeout_ns);
  cryo_rseq_self: { parameters: [buf, int, buf, long], result: long },
  // long cryo_hold_release(int tid, int sig, long timeout_ns, int32_t *delivered);
  //   (synchronous on purpose: ptrace belongs to the calling thread)
  cryo_hold_release: { parameters: [int, int, long, buf], result: long },
  // long cryo_diff_runs(const uint64_t *liov, size_t n, unsigned char *old, size_t page, uint64_t *runs,
  //                     size_t max_runs);  (which pages of a batch of writes would change anything: runs of
  //                     (index, offset, length, old bytes all zero))
  cryo_diff_runs: { parameters: [buf, size_t, ptr, size_t, buf, size_t], result: long },
  // long cryo_save_write(int pid, const uint64_t *liov, const uint64_t *riov, size_t n, unsigned char *old,
  //                      size_t old_cap, size_t page, uint64_t *runs, size_t max_runs, uint64_t *out);
  //   (a batch of writes: the old bytes read, the differing runs kept (as cryo_diff_runs) and written;
  //   out = bytes written, old bytes kept; -EAGAIN: unreadable, nothing written)
  cryo_save_write: {
    parameters: [int, buf, buf, size_t, ptr, size_t, size_t, buf, size_t, buf],
    result: long,
  },
  // long cryo_pread_many(int fd, const uint64_t *ops, size_t n, uint64_t *failed);
  //   (triples: local address, length, file offset; -errno with *failed the piece's index)
  cryo_pread_many: { parameters: [int, buf, size_t, buf], result: long },
  // long cryo_inject_syscall(int pid, int tid, long ip, const int64_t *args, long nr, long timeout_ns,
  //                          int64_t *out);  (synchronous on purpose: ptrace belongs to the calling thread)
  cryo_inject_syscall: { parameters: [int, int, long, buf, long, long, buf], result: long },
  // void *cryo_fault_server_start(int uffd, const uint64_t *runs, size_t nruns, size_t page, size_t max_window,
  //                               size_t readahead_pages, int64_t *err);  (starts a native thread that serves faults)
  cryo_fault_server_start: { parameters: [int, buf, size_t, size_t, size_t, size_t, buf], result: ptr },
  // void *cryo_fault_server_start_file(int uffd, int srcfd, int tablefd, const uint64_t *dir, size_t nruns,
  //                                    size_t page, size_t max_window, size_t readahead_pages, int64_t *err);
  //   (the same, the runs in tablefd, their sources read from srcfd with pread; dir kept until stop)
  cryo_fault_server_start_file: {
    parameters: [int, int, int, buf, size_t, size_t, size_t, size_t, buf],
    result: ptr,
  },
  // long cryo_fault_server_fill(void *server, uint64_t from, uint64_t max, uint64_t chunk, uint64_t *out);
  //   (a slice of the background fill, on the calling thread)
  cryo_fault_server_fill: { parameters: [ptr, ulong, ulong, ulong, buf], result: long },
  // long cryo_fault_server_stats(void *server, uint64_t *out);
  cryo_fault_server_stats: { parameters: [ptr, buf], result: long },
  // long cryo_fault_server_stop(void *server, int complete, uint64_t from, uint64_t *out);  (joins the thread)
  cryo_fault_server_stop: { parameters: [ptr, int, ulong, buf], result: long },
  // void *cryo_live_start(int uffd, int pid, int pagemap, const uint64_t *runs, size_t nruns, size_t page,
  //                       size_t neighbours, int64_t *err);  (starts a native thread that serves write faults)
  cryo_live_start: { parameters: [int, int, int, buf, size_t, size_t, size_t, buf], result: ptr },
  // long cryo_live_stats(void *server, uint64_t *out);
  cryo_live_stats: { parameters: [ptr, buf], result: long },
  // long cryo_live_stop(void *server, uint64_t *out);  (joins the thread, frees the server)
  cryo_live_stop: { parameters: [ptr, buf], result: long },
  // long cryo_live_gather(void *server, int pid, unsigned char *local, size_t capacity, const uint64_t *runs,
  //                       size_t nruns, uint64_t *cursor, size_t page, int detect, size_t max_piece,
  //                       uint64_t *pieces, uint64_t *sums, size_t max_pieces, uint64_t *npieces);
  //   (cryo_gather for a live checkpoint: on a pool thread; -ESTALE when a page was lost)
  cryo_live_gather: {
    parameters: [ptr, int, ptr, size_t, buf, size_t, buf, size_t, int, size_t, buf, buf, size_t, buf],
    result: long,
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The helper's symbols. */
export type HelperSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** Called with the cache directory before the helper is built on first use (see {@link onHelperBuild}). */
let buildNotice: ((dir: string) => void) | undefined;

/**
 * Be told before the helper library is built on first use (a few seconds, once per version): the CLI says so on
 * stderr. The library itself prints nothing.
 *
 * @param notice Called with the cache directory the helper is built into.
 */
export function onHelperBuild(notice: (dir: string) => void): void {
  buildNotice = notice;
}

/**
 * Where the helper is looked for, in order: `$CRYO_HELPER` alone when it is set; else the checkout's build
 * `ffi/build/libcryo_helper.so` when this module is a local file and that library exists; else this version's
 * library in the cache (`"cache"`: built there on first use from the package's own C source, `helper_build.ts`).
 */
export function helperCandidates(): string[] {
  let env: string | undefined;
  try {
    env = Deno.env.get("CRYO_HELPER");
  } catch { /* no --allow-env: look further */ }
  if (env) return [env];
  const out: string[] = [];
  const local = new URL(`./build/${HELPER_FILE}`, import.meta.url);
  if (local.protocol === "file:") {
    try {
      if (Deno.statSync(local).isFile) out.push(local.pathname);
    } catch { /* no checkout build */ }
  }
  out.push("cache");
  return out;
}

let loaded: HelperSymbols | undefined;

/**
 * The helper's symbols, loading the library on first call (and building it into the cache first when no other
 * copy is there: see {@link helperCandidates}).
 *
 * @throws {HelperNotFoundError} When no candidate loads, naming each path tried and how to fix it (no C
 *   compiler, a failed build, an ABI from another version).
 */
export function helper(): HelperSymbols {
  if (loaded) return loaded;
  const tried: string[] = [];
  for (const candidate of helperCandidates()) {
    let path = candidate;
    try {
      if (candidate === "cache") path = cachedHelper(buildNotice);
      const lib = Deno.dlopen(path, symbols);
      const abi = lib.symbols.cryo_helper_abi();
      if (abi !== HELPER_ABI) {
        lib.close();
        tried.push(`${path}: ABI ${abi}, expected ${HELPER_ABI} (rebuild it)`);
        continue;
      }
      loaded = lib.symbols;
      return loaded;
    } catch (e) {
      // A failed build says everything itself (no compiler, the compiler's errors): pass it on as it is.
      if (e instanceof HelperNotFoundError) throw e;
      tried.push(`${path}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new HelperNotFoundError(
    `Cannot load the cryo helper library; tried:\n  ${tried.join("\n  ")}\n` +
      `Build it with \`deno task build\` (needs a C compiler), or set CRYO_HELPER to its path`,
  );
}
