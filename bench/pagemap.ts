/**
 * Finding the pages that matter, measured in one run:
 * - page scan of a child's 4 GiB region with 1 GiB resident (every 4th page; `--quick`: 256 MiB / 64 MiB):
 *   the `PAGEMAP_SCAN` ioctl vs reading and decoding `/proc/<pid>/pagemap` vs the raw `pread` of that file,
 *   and the scan against the cheapest part of persisting that memory, copying it out with `process_vm_readv`
 *   (goal: the scan costs < 5% of it);
 * - zero-page detection over 256 MiB of populated memory, mostly zero pages (`--quick`: 64 MiB): the C helper
 *   (`findZeroPages`) and libc `memcmp` per page vs a JS scan.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { Pagemap } from "../lib/kernel/pagemap.ts";
import { findZeroPages } from "../lib/kernel/zero.ts";
import { libc, madvise, mmap, munmap, open, PAGE_SIZE, ptrOf } from "../ffi/libc.ts";
import { MAP, O, PROT } from "../ffi/constants.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const MADV_NOHUGEPAGE = 15;

const size = (n: number) => (n >= GiB ? `${n / GiB} GiB` : `${n / MiB} MiB`);

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

/** Read the pagemap entries of `[start, end)` without decoding them, as the pagemap path does. */
function rawRead(pid: number, start: bigint, end: bigint): void {
  const fd = open(`/proc/${pid}/pagemap`, O.RDONLY | O.CLOEXEC);
  try {
    const chunk = new Uint8Array(8 << 16);
    const p = Deno.UnsafePointer.of(chunk);
    const page = BigInt(PAGE_SIZE);
    for (let off = (start / page) * 8n, stop = (end / page) * 8n; off < stop;) {
      const want = stop - off < BigInt(chunk.length) ? stop - off : BigInt(chunk.length);
      const n = BigInt(libc.pread(fd, p, want, off));
      if (n <= 0n) throw new Error(`Cannot read /proc/${pid}/pagemap at offset ${off}`);
      off += n;
    }
  } finally {
    libc.close(fd);
  }
}

/**
 * Copy every run out of `pid` with process_vm_readv into a reused buffer, up to 1024 iovecs per call: how a
 * writer reads the data it persists.
 */
function copyOut(pid: number, pairs: BigUint64Array, buffer: Uint8Array): number {
  const IOV_MAX = 1024;
  const local = new BigUint64Array(2 * IOV_MAX);
  const remote = new BigUint64Array(2 * IOV_MAX);
  const l32 = new Uint32Array(local.buffer);
  const r32 = new Uint32Array(remote.buffer);
  const p32 = new Uint32Array(pairs.buffer, pairs.byteOffset, pairs.length * 2);
  const base = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
  const set = (w: Uint32Array, k: number, x: number) => {
    const hi = Math.floor(x / 2 ** 32);
    w[2 * k] = x - hi * 2 ** 32;
    w[2 * k + 1] = hi;
  };
  let iovs = 0;
  let used = 0;
  let want = 0;
  let total = 0;
  const flush = () => {
    if (iovs === 0) return;
    const n = Number(libc.process_vm_readv(pid, local, BigInt(iovs), remote, BigInt(iovs), 0n));
    if (n !== want) {
      throw new Error(`Cannot copy from pid ${pid}: process_vm_readv read ${n} of ${want} bytes`);
    }
    total += n;
    iovs = used = want = 0;
  };
  for (let k = 0; k < pairs.length / 2; k++) {
    let at = p32[4 * k] + p32[4 * k + 1] * 2 ** 32;
    const end = p32[4 * k + 2] + p32[4 * k + 3] * 2 ** 32;
    while (at < end) {
      if (iovs === IOV_MAX || used === buffer.length) flush();
      const len = Math.min(end - at, buffer.length - used);
      set(l32, 2 * iovs, base + used);
      set(l32, 2 * iovs + 1, len);
      set(r32, 2 * iovs, at);
      set(r32, 2 * iovs + 1, len);
      iovs++;
      used += len;
      want += len;
      at += len;
    }
  }
  flush();
  return total;
}

async function scanRows(opts: BenchOptions): Promise<BenchRow[]> {
  const bytes = opts.quick ? 256 * MiB : 4 * GiB;
  const group = `page scan, ${size(bytes)} region with ${size(bytes / 4)} resident (every 4th page)`;
  await using target = Target.start();
  const addr = await target.map(bytes);
  await target.cmd(`fill 0x${addr.toString(16)} ${bytes} stride:4 1`);
  const end = addr + BigInt(bytes);
  const scan: number[] = [];
  const objects: number[] = [];
  const read: number[] = [];
  const raw: number[] = [];
  const copy: number[] = [];
  const buffer = new Uint8Array(4 * MiB);
  using pm = Pagemap.open(target.pid);
  let pairs = pm.runs(addr, end, { method: "scan" });
  const viaRead = pm.runs(addr, end, { method: "pagemap" });
  if (viaRead.length !== pairs.length || !viaRead.every((x, k) => x === pairs[k])) {
    throw new Error("Cannot compare the page scans: PAGEMAP_SCAN and the pagemap read disagree");
  }
  if (copyOut(target.pid, pairs, buffer) !== bytes / 4) throw new Error("Cannot copy: wrong byte count");
  for (let i = 0; i < 2; i++) pm.runs(addr, end, { method: "scan" }); // warm-up (JIT), not measured
  for (let i = 0; i < opts.runs; i++) {
    scan.push(time(() => pairs = pm.runs(addr, end, { method: "scan" })));
    read.push(time(() => pm.runs(addr, end, { method: "pagemap" })));
    raw.push(time(() => rawRead(target.pid, addr, end)));
    copy.push(time(() => copyOut(target.pid, pairs, buffer)));
  }
  // Last: the objects it allocates would otherwise bill a garbage collection to the figures above.
  for (let i = 0; i < opts.runs; i++) objects.push(time(() => pm.scan(addr, end, { method: "scan" })));
  const note = `${pairs.length / 2} runs; both methods gave identical runs`;
  const share = median(scan) / median(copy);
  return [
    {
      group,
      name: "PAGEMAP_SCAN (runs)",
      unit: "ms",
      samples: scan,
      baseline: "pagemap read + decode",
      baselineSamples: read,
      note,
    },
    {
      group,
      name: "pagemap read + decode (runs)",
      unit: "ms",
      samples: read,
      baseline: "raw pagemap pread",
      baselineSamples: raw,
    },
    {
      group,
      name: "PAGEMAP_SCAN (runs)",
      unit: "ms",
      samples: scan,
      baseline: "raw pagemap pread",
      baselineSamples: raw,
    },
    {
      group,
      name: "PAGEMAP_SCAN as PageRun objects (scan)",
      unit: "ms",
      samples: objects,
      baseline: "PAGEMAP_SCAN (runs)",
      baselineSamples: scan,
    },
    {
      group,
      name: "PAGEMAP_SCAN (runs)",
      unit: "ms",
      samples: scan,
      baseline: `process_vm_readv of the ${size(bytes / 4)} resident`,
      baselineSamples: copy,
      goal: "< 5% of copying the data out (a lower bound of persisting it)",
      met: share < 0.05,
      note: `the scan costs ${(share * 100).toFixed(1)}% of the copy`,
    },
  ];
}

/** The JS baseline: OR the 32-bit words of each page, stopping at the first non-zero one. */
function jsZeroPages(words: Int32Array, pageWords: number, out: Uint8Array): void {
  for (let p = 0, w = 0; p < out.length; p++, w += pageWords) {
    let zero = 1;
    for (let j = w, e = w + pageWords; j < e; j++) {
      if (words[j] !== 0) {
        zero = 0;
        break;
      }
    }
    out[p] = zero;
  }
}

function zeroRows(opts: BenchOptions): BenchRow[] {
  const bytes = opts.quick ? 64 * MiB : 256 * MiB;
  const pages = bytes / PAGE_SIZE;
  const group = `zero-page detection, ${size(bytes)} populated, 7 of 8 pages zero`;
  const addr = mmap(0n, BigInt(bytes), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  const zeroPage = mmap(0n, BigInt(PAGE_SIZE), PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    madvise(addr, BigInt(bytes), MADV_NOHUGEPAGE);
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, bytes));
    for (let p = 0; p < pages; p++) view[p * PAGE_SIZE + PAGE_SIZE - 1] = p % 8 === 0 ? 1 : 0; // populate all
    const words = new Int32Array(view.buffer, 0, bytes / 4);
    const helperOut = new Uint8Array(pages);
    const jsOut = new Uint8Array(pages);
    const memcmpOut = new Uint8Array(pages);
    const gibps = (ms: number) => bytes / GiB / (ms / 1000);
    const helper: number[] = [];
    const js: number[] = [];
    const cmp: number[] = [];
    const zp = ptrOf(zeroPage);
    const len = BigInt(PAGE_SIZE);
    const memcmpPages = () => {
      for (let p = 0; p < pages; p++) {
        memcmpOut[p] = libc.memcmp(ptrOf(addr + BigInt(p * PAGE_SIZE)), zp, len) === 0 ? 1 : 0;
      }
    };
    findZeroPages(addr, bytes, PAGE_SIZE, helperOut); // warm-up (JIT, caches), not measured
    jsZeroPages(words, PAGE_SIZE / 4, jsOut);
    memcmpPages();
    for (let i = 0; i < opts.runs; i++) {
      helper.push(gibps(time(() => findZeroPages(addr, bytes, PAGE_SIZE, helperOut))));
      js.push(gibps(time(() => jsZeroPages(words, PAGE_SIZE / 4, jsOut))));
      cmp.push(gibps(time(memcmpPages)));
    }
    for (let p = 0; p < pages; p++) {
      if (helperOut[p] !== jsOut[p] || memcmpOut[p] !== jsOut[p]) {
        throw new Error(`Cannot compare zero-page scans: they disagree at page ${p}`);
      }
    }
    const goal = "8–15 GiB/s (JS: 2–5 GiB/s)";
    return [
      {
        group,
        name: "C helper (findZeroPages)",
        unit: "GiB/s",
        samples: helper,
        baseline: "JS scan",
        baselineSamples: js,
        goal,
        met: median(helper) >= 8,
      },
      {
        group,
        name: "libc memcmp per page (FFI)",
        unit: "GiB/s",
        samples: cmp,
        baseline: "JS scan",
        baselineSamples: js,
      },
    ];
  } finally {
    munmap(addr, BigInt(bytes));
    munmap(zeroPage, BigInt(PAGE_SIZE));
  }
}

/**
 * Measure the page scan and zero-page detection.
 *
 * @param opts `quick` for the small sizes; `runs` repetitions of every figure.
 * @returns The rows.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  return [...await scanRows(opts), ...zeroRows(opts)];
}

if (import.meta.main) {
  const rows = await bench({ quick: Deno.args.includes("--quick"), runs: 3 });
  for (const r of rows) {
    const m = median(r.samples);
    const b = r.baselineSamples ? median(r.baselineSamples) : undefined;
    console.log(
      `${r.group} | ${r.name}: ${m.toFixed(2)} ${r.unit}` +
        (b === undefined ? "" : ` vs ${r.baseline} ${b.toFixed(2)} (×${(m / b).toFixed(3)})`) +
        (r.note ? ` [${r.note}]` : "") + (r.met === undefined ? "" : r.met ? " goal met" : " goal missed") +
        ` samples ${r.samples.map((x) => x.toFixed(1)).join(" ")}`,
    );
  }
}
