import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { addrOf, close, open, PAGE_SIZE, processVmRead } from "../ffi/libc.ts";
import { MADV, O } from "../ffi/constants.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { inject } from "../lib/kernel/inject.ts";
import { UFFDIO_REGISTER_MODE, Userfaultfd } from "../lib/kernel/uffd.ts";
import { BLOCK_RUNS, FaultRunTable } from "../lib/kernel/fault_runs.ts";
import { FaultServer } from "../lib/kernel/fault_server.ts";
import { scratchFile } from "../lib/image/tempfile.ts";
import { Target } from "./_target.ts";

const P = PAGE_SIZE;
const tmp = () => scratchFile(Deno.env.get("TMPDIR") || "/tmp");

Deno.test("FaultRunTable.append() merges runs that continue in memory and in the file, and find() reads them back across blocks", () => {
  using t = new FaultRunTable(tmp());
  const base = 0x7f0000000000n;
  t.append(base, P, 0);
  t.append(base + BigInt(P), P, P); // continues both: merged
  t.append(base + BigInt(3 * P), P, 2 * P); // a gap in memory: a new run
  for (let i = 0; i < 3 * BLOCK_RUNS; i++) t.append(base + BigInt((10 + 2 * i) * P), P, (3 + i) * P);
  const dir = t.finish();
  assertEquals(t.length, 2 + 3 * BLOCK_RUNS);
  assertEquals(dir.length, Math.ceil(t.length / BLOCK_RUNS));
  assertEquals(dir[0], base);
  assertEquals(t.find(base + BigInt(P) + 5n), { start: base, length: 2 * P, offset: 0 });
  assertEquals(t.find(base + BigInt(2 * P)), undefined, "a gap");
  assertEquals(t.find(base - 1n), undefined, "before the first run");
  const i = 2 * BLOCK_RUNS + 7; // in the third block
  assertEquals(t.find(base + BigInt((10 + 2 * i) * P)), {
    start: base + BigInt((10 + 2 * i) * P),
    length: P,
    offset: (3 + i) * P,
  });
  assertEquals(t.find(base + BigInt((11 + 2 * i) * P)), undefined, "the page after a run");
  assertThrows(() => t.append(base + 1n, P, 0), TypeError, "finished");
});

Deno.test("FaultRunTable.append() refuses a misaligned run and one that goes back", () => {
  using t = new FaultRunTable(tmp());
  assertThrows(() => t.append(4097n, P, 0), RangeError, "not page aligned");
  t.append(BigInt(8 * P), P, 0);
  assertThrows(() => t.append(BigInt(8 * P), P, P), RangeError, "does not start after");
});

Deno.test("FaultServer.fromFile() serves a child's released region from a file, a table of many runs and holes, and fill() copies the rest", async () => {
  await using target = Target.start();
  const pages = 4 * BLOCK_RUNS + 9; // a data page, then a hole page, over and over: more runs than one block
  const len = 2 * pages * P;
  const region = await target.map(len);
  await target.fill(region, len, "stride:2", 5);
  const whole = await target.sum(region, len);
  // The data pages, in reverse order in the file: the table says where each one is.
  const saved = new Uint8Array(len);
  processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(saved)), region, BigInt(len));
  const dataFile = await Deno.makeTempFile();
  const data = new Uint8Array(pages * P);
  for (let i = 0; i < pages; i++) data.set(saved.subarray(2 * i * P, (2 * i + 1) * P), (pages - 1 - i) * P);
  await Deno.writeFile(dataFile, data);
  const fd = open(dataFile, O.RDONLY | O.CLOEXEC);
  using table = new FaultRunTable(tmp());
  for (let i = 0; i < pages; i++) table.append(region + BigInt(2 * i * P), P, (pages - 1 - i) * P);
  let uffd: Userfaultfd;
  {
    using frozen = freeze(target.pid);
    using inj = inject(frozen);
    uffd = Userfaultfd.inTarget(inj);
    inj.madvise(region, BigInt(len), MADV.DONTNEED);
    uffd.register(region, BigInt(len), UFFDIO_REGISTER_MODE.MISSING);
  }
  using _uffd = uffd;
  const server = FaultServer.fromFile(uffd, fd, table, { maxPrefetch: 4 * P });
  try {
    // Touch a stretch in the middle (served on faults), then fill the rest from this thread, in slices.
    const mid = region + BigInt(2 * BLOCK_RUNS * P);
    await target.cmd(`touch 0x${mid.toString(16)} ${64 * P} seq 1`);
    let from = 0n, copied = 0, passed = 0;
    for (let done = false; !done;) {
      const step = server.fill(from, 16 * P, 2 * P);
      assert(step.next >= from, "it moves on");
      from = step.next;
      copied += step.copied;
      passed += step.passed;
      done = step.done;
    }
    assertEquals(passed, pages * P, "every data page passed over");
    assert(copied < pages * P && copied > 0, `${copied} bytes copied: the faulted ones were there`);
    const s = server.stop({ from });
    assertEquals(s.completed, 0, "nothing was left past the fill");
    assertEquals(s.errors, 0);
    assert(s.pagesCopied > 0 && s.pagesZeroed > 0, JSON.stringify(s));
    uffd.unregister(region, BigInt(len));
    assertEquals(await target.sum(region, len), whole);
  } finally {
    server.stop({ complete: false });
    close(fd);
    await Deno.remove(dataFile);
  }
});
