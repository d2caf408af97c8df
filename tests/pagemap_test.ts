import fc from "fast-check";
import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import {
  PAGE_STATE,
  Pagemap,
  pagemapScanSupported,
  type PageRun,
  pageStates,
  scanPages,
} from "../lib/kernel/pagemap.ts";
import { SystemError } from "../lib/errors.ts";
import { PAGE_IS } from "../lib/kernel/pagescan.ts";
import { UFFDIO_REGISTER_MODE, Userfaultfd } from "../lib/kernel/uffd.ts";
import { close, libc, madvise, mmap, munmap, open, PAGE_SIZE, ptrOf } from "../ffi/libc.ts";
import { MAP, O, PROT } from "../ffi/constants.ts";
import { Target } from "./_target.ts";

const PAGE = BigInt(PAGE_SIZE);
const MADV_HUGEPAGE = 14;
const MADV_NOHUGEPAGE = 15;
const MADV_GUARD_INSTALL = 102; // Linux 6.13+
const methods = ["scan", "pagemap"] as const;

/** Runs from a per-page predicate, the slow obvious way. */
function expectedRuns(base: bigint, pages: number, data: (i: number) => boolean): PageRun[] {
  const runs: PageRun[] = [];
  for (let i = 0; i < pages; i++) {
    if (!data(i)) continue;
    const s = base + BigInt(i) * PAGE;
    const last = runs.at(-1);
    if (last && last.end === s) last.end = s + PAGE;
    else runs.push({ start: s, end: s + PAGE });
  }
  return runs;
}

/** Map `pages` fresh pages in this process with THP off; returns the address and a byte view. */
function mapLocal(pages: number): { addr: bigint; view: Uint8Array; len: bigint } {
  const len = BigInt(pages) * PAGE;
  const addr = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  madvise(addr, len, MADV_NOHUGEPAGE);
  return {
    addr,
    len,
    view: new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, Number(len))),
  };
}

Deno.test("pagemapScanSupported() is true on this kernel (Linux ≥ 6.7)", () => {
  const [major, minor] = Deno.osRelease().split(".").map(Number);
  assertEquals(pagemapScanSupported(), major > 6 || (major === 6 && minor >= 7));
});

Deno.test("scanPages() reports exactly the written pages of a child's 64 MiB, by both methods", async () => {
  await using target = Target.start();
  const bytes = 64 << 20;
  const pages = bytes / PAGE_SIZE;
  const addr = await target.map(bytes);
  await target.cmd(`fill 0x${addr.toString(16)} ${bytes} stride:4 3`); // every 4th page: random data
  await target.fill(addr + 6n * PAGE, PAGE_SIZE, "zero"); // one page written with zeros: present
  await target.fill(addr + 9n * PAGE, PAGE_SIZE, "zero"); // next to a stride page: merges with it
  const expected = expectedRuns(addr, pages, (i) => i % 4 === 0 || i === 6 || i === 9);
  assertEquals(expected.length, pages / 4 + 1); // more runs than one ioctl call returns
  for (const method of methods) {
    assertEquals(scanPages(target.pid, addr, addr + BigInt(bytes), { method }), expected, method);
  }
  using pm = Pagemap.open(target.pid);
  const pairs = pm.runs(addr, addr + BigInt(bytes)); // the typed form: [start, end, start, end, …]
  assertEquals([...pairs], expected.flatMap((r) => [r.start, r.end]));
  // A sub-range that starts and ends inside runs.
  const sub = expectedRuns(addr, pages, (i) => i >= 9 && i < 4001 && (i % 4 === 0 || i === 9));
  for (const method of methods) {
    assertEquals(scanPages(target.pid, addr + 9n * PAGE, addr + 4001n * PAGE, { method }), sub, method);
  }
});

Deno.test("pageStates() marks a child's written pages present and exclusive, the rest empty", async () => {
  await using target = Target.start();
  const addr = await target.map(16 * PAGE_SIZE);
  await target.fill(addr + 2n * PAGE, 3 * PAGE_SIZE, "random");
  const st = pageStates(target.pid, addr, addr + 16n * PAGE);
  assertEquals(st.start, addr);
  const data = PAGE_STATE.PRESENT | PAGE_STATE.EXCLUSIVE;
  assertEquals([...st.flags], [0, 0, data, data, data, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
});

Deno.test("scanPages() gives identical runs by both methods for any pattern of written pages (property)", () => {
  const pages = 256;
  const { addr, len, view } = mapLocal(pages);
  try {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { minLength: pages, maxLength: pages }), (written) => {
        madvise(addr, len, 4 /* MADV_DONTNEED: every page empty again */);
        written.forEach((w, i) => w && (view[i * PAGE_SIZE + 7] = 1));
        const expected = expectedRuns(addr, pages, (i) => written[i]);
        for (const method of methods) assertEquals(scanPages("self", addr, addr + len, { method }), expected);
      }),
      { numRuns: 50 },
    );
  } finally {
    munmap(addr, len);
  }
});

Deno.test("scanPages() with anonOnly keeps only the copied-on-write pages of a private file mapping", () => {
  const path = Deno.makeTempFileSync();
  const pages = 8;
  Deno.writeFileSync(path, new Uint8Array(pages * PAGE_SIZE).fill(0x5a));
  const fd = open(path, O.RDONLY);
  const len = BigInt(pages) * PAGE;
  const addr = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE, fd);
  try {
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, pages * PAGE_SIZE));
    let sum = 0;
    for (const i of [0, 1, 2, 5]) sum += view[i * PAGE_SIZE]; // read: page-cache pages
    assertEquals(sum, 4 * 0x5a);
    view[PAGE_SIZE] = 1; // write: page 1 becomes a private anonymous copy
    view[6 * PAGE_SIZE] = 1; // write to a page never read
    // Read faults map neighbouring page-cache pages too (fault-around), so "all" is at least the touched pages.
    const all = scanPages("self", addr, addr + len, { method: "scan" });
    assertEquals(scanPages("self", addr, addr + len, { method: "pagemap" }), all);
    for (const i of [0, 1, 2, 5, 6]) {
      const a = addr + BigInt(i) * PAGE;
      assert(all.some((r) => r.start <= a && a < r.end), `page ${i} not reported`);
    }
    for (const method of methods) {
      assertEquals(
        scanPages("self", addr, addr + len, { method, anonOnly: true }),
        expectedRuns(addr, pages, (i) => i === 1 || i === 6),
        method,
      );
    }
    const st = pageStates("self", addr, addr + len);
    assert((st.flags[0] & PAGE_STATE.FILE) !== 0 && (st.flags[1] & PAGE_STATE.FILE) === 0);
  } finally {
    munmap(addr, len);
    close(fd);
    Deno.removeSync(path);
  }
});

Deno.test("scanPages() reports a transparent huge page as 512 pages, identically by both methods", () => {
  const huge = 2n << 20n;
  const len = 3n * huge;
  const raw = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const addr = (raw + huge - 1n) / huge * huge; // 2 MiB aligned inside the mapping
    madvise(addr, huge, MADV_HUGEPAGE);
    libc.memset(ptrOf(addr + 12345n), 1, 1n); // one fault: a whole huge page when THP is available
    const runs = scanPages("self", raw, raw + len, { method: "scan" });
    assertEquals(scanPages("self", raw, raw + len, { method: "pagemap" }), runs);
    assertEquals(runs.length, 1);
    assert(runs[0].start <= addr + 12345n && addr + 12345n < runs[0].end);
    const thpOff = Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled").includes("never]");
    if (!thpOff) assertEquals(runs[0], { start: addr, end: addr + huge });
  } finally {
    munmap(raw, len);
  }
});

Deno.test("scanPages() leaves out guard pages, which the kernel reports as swapped", () => {
  const { addr, len, view } = mapLocal(8);
  try {
    view.fill(1);
    try {
      madvise(addr + 3n * PAGE, PAGE, MADV_GUARD_INSTALL);
    } catch (e) {
      if (e instanceof SystemError && e.code === "EINVAL") return; // a kernel before 6.13: no guard pages
      throw e;
    }
    assertEquals(
      pageStates("self", addr + 3n * PAGE, addr + 4n * PAGE).flags[0] & PAGE_STATE.GUARD,
      PAGE_STATE.GUARD,
    );
    for (const method of methods) {
      assertEquals(
        scanPages("self", addr, addr + len, { method }),
        expectedRuns(addr, 8, (i) => i !== 3),
        method,
      );
    }
  } finally {
    munmap(addr, len);
  }
});

Deno.test("Pagemap.scan() of a process that exited mid-scan throws ESRCH naming the pid and file", async () => {
  const target = Target.start();
  let pm: Pagemap | undefined;
  try {
    const addr = await target.map(1 << 20);
    await target.fill(addr, 1 << 20, "random");
    pm = Pagemap.open(target.pid);
    assertEquals(pm.scan(addr, addr + (1n << 20n)), [{ start: addr, end: addr + (1n << 20n) }]);
    await target.close(); // killed and reaped: the fd stays open, the address space is gone
    for (const method of methods) {
      const e = assertThrows(() => pm!.scan(addr, addr + (1n << 20n), { method }), SystemError);
      assertEquals(e.code, "ESRCH");
      assertMatch(
        e.message,
        new RegExp(`/proc/${target.pid}/pagemap at 0x${addr.toString(16)}.*pid ${target.pid} exited`),
      );
    }
  } finally {
    pm?.close();
    await target.close();
  }
});

Deno.test("scanPages() of a pid that does not exist throws ENOENT naming the file; bad arguments throw", () => {
  const pid = 0x3ffffff0;
  const e = assertThrows(() => scanPages(pid, 0n, PAGE), SystemError);
  assertEquals(e.code, "ENOENT");
  assertMatch(e.message, new RegExp(`^Cannot open /proc/${pid}/pagemap: ENOENT`));
  assertThrows(() => scanPages("self", 1n, PAGE), RangeError);
  assertThrows(() => scanPages("self", 2n * PAGE, PAGE), RangeError);
  assertThrows(() => scanPages("self", 0n, PAGE, { method: "nope" as "scan" }), TypeError);
  assertEquals(scanPages("self", 0xffffffffff600000n, 0xffffffffff601000n), []); // [vsyscall]: no page tables
  const pm = Pagemap.open("self");
  pm.close();
  pm.close();
  assertThrows(() => pm.scan(0n, PAGE), TypeError, "closed");
});

Deno.test("Pagemap.runsSplit() reports the pages to persist and, among them, those without the write-protect bit", () => {
  if (!pagemapScanSupported()) return;
  const len = 64 * PAGE_SIZE;
  const at = mmap(0n, BigInt(len), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(at)!, len));
    bytes.fill(7, 0, 32 * PAGE_SIZE);
    const page = BigInt(PAGE_SIZE);
    using uffd = Userfaultfd.create();
    uffd.register(at, BigInt(len), UFFDIO_REGISTER_MODE.WP);
    uffd.writeProtect(at, BigInt(len), true);
    // What a live checkpoint's arm server does on a write fault: lift the protection of the page written.
    uffd.writeProtect(at + 3n * page, page, false);
    uffd.writeProtect(at + 10n * page, 2n * page, false);
    // A page not populated when the range was protected carries no bit: writing it does not fault.
    bytes.fill(9, 40 * PAGE_SIZE, 42 * PAGE_SIZE);
    using pm = Pagemap.open("self");
    const { all, marked } = pm.runsSplit(at, at + BigInt(len), PAGE_IS.WRITTEN);
    const pages = (runs: BigUint64Array) =>
      Array.from(
        { length: runs.length / 2 },
        (_, i) => [Number((runs[2 * i] - at) / page), Number((runs[2 * i + 1] - at) / page)],
      );
    assertEquals(pages(all), [[0, 32], [40, 42]]);
    assertEquals(pages(marked), [[3, 4], [10, 12], [40, 42]]);
  } finally {
    munmap(at, BigInt(len));
  }
});
