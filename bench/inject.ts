/**
 * Acting inside another process, measured in one run against a cryo_target child:
 * - an injected `getpid` round trip (`Injector.syscall`), against one `ptrace(PTRACE_GETREGS)` through FFI on
 *   the same frozen thread (goal ≤ 50 µs);
 * - arming write-protect tracking on 1 GiB of populated memory (`track()`: register + a write-protecting scan;
 *   goal ≤ 20 ms) and reading the written pages of 1 GiB after 1000 random page writes (`written()`, a
 *   `PAGEMAP_SCAN` that also re-arms; goal ≤ 5 ms), both against a plain `PAGEMAP_SCAN` of the present pages of
 *   the same range;
 * - lazy fault service by the helper's fault server with prefetch: the child reads one byte of every page of a
 *   released 1 GiB sequentially (goal ≥ 1 GiB/s), against writing the same bytes eagerly with
 *   `process_vm_writev`; and of 64 MiB in random order, one page per fault (goal ≥ 50,000 faults/s), against
 *   the same reads served by the kernel's zero page with no userfaultfd.
 * `--quick`: 64 MiB for the 1 GiB figures, 16 MiB for the random one, fewer calls.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { inject, SYS } from "../lib/kernel/inject.ts";
import { UFFDIO_REGISTER_MODE, Userfaultfd } from "../lib/kernel/uffd.ts";
import { track } from "../lib/kernel/range_tracking.ts";
import { UFFD_FEATURE } from "../lib/kernel/capabilities.ts";
import { FaultServer } from "../lib/kernel/fault_server.ts";
import { Pagemap } from "../lib/kernel/pagemap.ts";
import { addrOf, libc, PAGE_SIZE, processVmWrite } from "../ffi/libc.ts";
import { MADV } from "../ffi/constants.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const PTRACE_GETREGS = 12;
const size = (n: number) => (n >= GiB ? `${n / GiB} GiB` : `${n / MiB} MiB`);

/** Release `[start, start + len)` of the child with an injected madvise(MADV_DONTNEED). */
function release(pid: number, start: bigint, len: number): void {
  using frozen = freeze(pid);
  using inj = inject(frozen);
  inj.madvise(start, BigInt(len), MADV.DONTNEED);
}

async function injectRows(runs: number, quick: boolean): Promise<BenchRow[]> {
  await using target = Target.start();
  await target.cmd("pid");
  const calls = quick ? 200 : 2000;
  const samples: number[] = [];
  const base: number[] = [];
  const regs = new BigUint64Array(27);
  const regsPtr = Deno.UnsafePointer.of(regs);
  for (let r = 0; r < runs; r++) {
    using frozen = freeze(target.pid);
    using inj = inject(frozen);
    inj.syscall(SYS.getpid); // warm
    let t0 = performance.now();
    for (let i = 0; i < calls; i++) inj.syscall(SYS.getpid);
    samples.push((performance.now() - t0) / calls);
    t0 = performance.now();
    for (let i = 0; i < calls; i++) libc.ptrace(PTRACE_GETREGS, inj.tid, null, regsPtr);
    base.push((performance.now() - t0) / calls);
  }
  return [{
    group: "inject a system call into a frozen child",
    name: "injected getpid round trip (ms per call)",
    samples,
    unit: "ms",
    baseline: "one ptrace(PTRACE_GETREGS) via FFI",
    baselineSamples: base,
    goal: "≤ 0.05 ms",
    met: median(samples) <= 0.05,
    note: "save regs + XSAVE, set, PTRACE_SYSCALL to the entry and exit stops, restore",
  }];
}

async function trackRows(runs: number, quick: boolean): Promise<BenchRow[]> {
  const len = quick ? 64 * MiB : GiB;
  await using target = Target.start();
  const region = await target.map(len);
  await target.fill(region, len, "byte:1");
  let uffd: Userfaultfd;
  {
    using frozen = freeze(target.pid);
    using inj = inject(frozen);
    uffd = Userfaultfd.inTarget(inj, { features: UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED });
  }
  using _uffd = uffd;
  using pm = Pagemap.open(target.pid);
  const end = region + BigInt(len);
  const arm: number[] = [];
  const scan: number[] = [];
  const present: number[] = [];
  for (let r = 0; r < runs; r++) {
    let t0 = performance.now();
    const t = track(uffd, region, BigInt(len));
    arm.push(performance.now() - t0);
    const said = (await target.cmd(`writepages 0x${region.toString(16)} ${len} 1000 ${r + 1}`)).split(" ");
    t0 = performance.now();
    const runsFound = t.written();
    scan.push(performance.now() - t0);
    let pages = 0;
    for (let i = 0; i < runsFound.length; i += 2) {
      pages += Number(runsFound[i + 1] - runsFound[i]) / PAGE_SIZE;
    }
    if (pages !== said.length) {
      throw new Error(`written() found ${pages} pages, the child wrote ${said.length}`);
    }
    t0 = performance.now();
    pm.runs(region, end);
    present.push(performance.now() - t0);
    t.close();
  }
  const group = `write tracking of a child's ${size(len)} (populated)`;
  return [
    {
      group,
      name: "arm: track() = UFFDIO_REGISTER + a PAGEMAP_SCAN that write-protects",
      samples: arm,
      unit: "ms",
      baseline: "PAGEMAP_SCAN of present pages",
      baselineSamples: present,
      goal: quick ? undefined : "≤ 20 ms",
      met: quick ? undefined : median(arm) <= 20,
    },
    {
      group,
      name: "written() after 1000 random page writes (scan + re-arm)",
      samples: scan,
      unit: "ms",
      baseline: "PAGEMAP_SCAN of present pages",
      baselineSamples: present,
      goal: quick ? undefined : "≤ 5 ms",
      met: quick ? undefined : median(scan) <= 5,
    },
  ];
}

async function lazyRows(runs: number, quick: boolean): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const order of ["seq", "rand"] as const) {
    const len = order === "seq" ? (quick ? 64 * MiB : GiB) : (quick ? 16 * MiB : 64 * MiB);
    const pages = len / PAGE_SIZE;
    const source = new Uint8Array(len).fill(7);
    const sourceAddr = addrOf(Deno.UnsafePointer.of(source));
    await using target = Target.start();
    const region = await target.map(len);
    await target.fill(region, len, "byte:7");
    const served: number[] = [];
    const base: number[] = [];
    // The baseline first, with no userfaultfd registered.
    for (let r = 0; r < runs; r++) {
      release(target.pid, region, len);
      if (order === "seq") {
        const t0 = performance.now();
        processVmWrite(target.pid, sourceAddr, region, BigInt(len));
        base.push(len / GiB / ((performance.now() - t0) / 1000));
      } else {
        const ns = Number(
          (await target.cmd(`touch 0x${region.toString(16)} ${len} rand ${r}`)).split(" ")[0],
        );
        base.push(ns / 1e6);
      }
    }
    let uffd: Userfaultfd;
    {
      using frozen = freeze(target.pid);
      using inj = inject(frozen);
      uffd = Userfaultfd.inTarget(inj);
    }
    using _uffd = uffd;
    uffd.register(region, BigInt(len), UFFDIO_REGISTER_MODE.MISSING);
    let faults = 0;
    let busyMs = 0;
    for (let r = 0; r < runs; r++) {
      release(target.pid, region, len);
      const server = FaultServer.start(uffd, [{ start: region, length: BigInt(len), source }]);
      try {
        const answer = await target.cmd(`touch 0x${region.toString(16)} ${len} ${order} ${r}`);
        const ns = Number(answer.split(" ")[0]);
        if (answer.split(" ")[1] !== "0") throw new Error(`touch read ${answer}: wrong data`);
        served.push(order === "seq" ? len / GiB / (ns / 1e9) : ns / 1e6);
      } finally {
        ({ faults, busyMs } = server.stop({ complete: false }));
      }
    }
    if (order === "seq") {
      const gibs = median(served);
      rows.push({
        group: `lazy fault service from outside (${size(len)})`,
        name: "sequential reads, prefetch up to 4 MiB",
        samples: served,
        unit: "GiB/s",
        baseline: "eager process_vm_writev of the same bytes",
        baselineSamples: base,
        goal: quick ? undefined : "≥ 1 GiB/s",
        met: quick ? undefined : gibs >= 1,
        note: `${faults} faults in the last run, the server busy in its ioctls ${busyMs.toFixed(0)} ms of it`,
      });
    } else {
      const perSecond = pages / (median(served) / 1000);
      rows.push({
        group: `lazy fault service from outside (${size(len)})`,
        name: `${pages} random single-page faults (ms)`,
        samples: served,
        unit: "ms",
        baseline: "the same reads, kernel zero page, no userfaultfd",
        baselineSamples: base,
        goal: quick ? undefined : "≥ 50,000 faults/s",
        met: quick ? undefined : perSecond >= 50_000,
        note:
          `${
            Math.round(perSecond).toLocaleString("en")
          } faults/s; the last run: ${faults} faults, the server ` +
          `busy in its ioctls ${busyMs.toFixed(0)} ms`,
      });
    }
  }
  return rows;
}

/**
 * Measure injection, write tracking and lazy fault service.
 *
 * @param opts `quick`: small sizes; `runs`: samples per figure.
 * @returns The rows.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const runs = Math.max(3, opts.runs);
  return [
    ...await injectRows(runs, opts.quick),
    ...await trackRows(runs, opts.quick),
    ...await lazyRows(runs, opts.quick),
  ];
}
