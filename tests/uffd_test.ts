import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { addrOf, mmap, munmap, PAGE_SIZE } from "../ffi/libc.ts";
import { MAP, PROT } from "../ffi/constants.ts";
import { CryoError } from "../lib/errors.ts";
import { freeze } from "../lib/freeze.ts";
import { inject } from "../lib/kernel/inject.ts";
import {
  type Capabilities,
  capabilities,
  missingCapabilityError,
  requireCapabilities,
  UFFD_FEATURE,
} from "../lib/kernel/capabilities.ts";
import { track, UFFDIO_REGISTER_MODE, Userfaultfd } from "../lib/kernel/uffd.ts";
import { Target } from "./_target.ts";

const MiB = 1 << 20;
const WP = UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED;

/** Page indices (relative to `base`) covered by runs `[s0, e0, s1, e1, …]`. */
function pagesOf(runs: BigUint64Array, base: bigint): number[] {
  const out: number[] = [];
  for (let i = 0; i < runs.length; i += 2) {
    for (let a = runs[i]; a < runs[i + 1]; a += BigInt(PAGE_SIZE)) {
      out.push(Number((a - base) / BigInt(PAGE_SIZE)));
    }
  }
  return out;
}

/** A userfaultfd created inside the child, the child thawed again. */
function uffdOf(pid: number, features = WP): Userfaultfd {
  using frozen = freeze(pid);
  using inj = inject(frozen);
  const mapsBefore = Deno.readTextFileSync(`/proc/${pid}/maps`);
  const fdsBefore = [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
  const uffd = Userfaultfd.inTarget(inj, { features });
  inj.close();
  assertEquals(Deno.readTextFileSync(`/proc/${pid}/maps`), mapsBefore, "no scratch left");
  assertEquals([...Deno.readDirSync(`/proc/${pid}/fd`)].length, fdsBefore, "the target's copy is closed");
  return uffd;
}

Deno.test("capabilities() finds userfaultfd with WP_ASYNC, PAGEMAP_SCAN and pidfd_getfd on this kernel", () => {
  const caps = capabilities();
  assert(caps.userfaultfd && caps.wpAsync && caps.wpUnpopulated && caps.pagemapScan && caps.pidfdGetfd);
  assert((caps.uffdFeatures & UFFD_FEATURE.WP_ASYNC) !== 0n);
  assertEquals(capabilities(), caps, "probed once");
});

Deno.test("requireCapabilities() names every missing feature", () => {
  const none: Capabilities = {
    userfaultfd: false,
    userfaultfdKernelFaults: false,
    uffdFeatures: 0n,
    wpAsync: false,
    wpUnpopulated: false,
    pagemapScan: false,
    pidfdGetfd: false,
  };
  const e = assertThrows(
    () => requireCapabilities("track writes in pid 42", ["wpAsync", "pagemapScan"], none),
    CryoError,
  );
  assertEquals(
    e.message,
    "Cannot track writes in pid 42: this kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+) and the PAGEMAP_SCAN " +
      "ioctl (Linux 6.7+)",
  );
  assertEquals(
    missingCapabilityError("x", ["userfaultfd"]).message.includes("vm.unprivileged_userfaultfd"),
    true,
  );
  requireCapabilities("anything", ["wpAsync"], { ...none, wpAsync: true });
});

Deno.test("track() from outside reports exactly the pages a child wrote, round after round, large and small", async () => {
  await using target = Target.start();
  const large = await target.map(64 * MiB);
  await target.fill(large, 64 * MiB, "random", 5); // populated (and perhaps in huge pages)
  const small = await target.map(16 * PAGE_SIZE); // never touched: tracked thanks to WP_UNPOPULATED
  using uffd = uffdOf(target.pid);
  assertEquals(uffd.pid, target.pid);
  using tl = track(uffd, large, BigInt(64 * MiB));
  using ts = track(uffd, small, BigInt(16 * PAGE_SIZE));
  assertEquals(tl.written().length, 0, "nothing written right after arming");
  assertEquals(ts.written().length, 0);
  for (const [round, n] of [1, 37, 1000, 16384, 3].entries()) {
    const said = (await target.cmd(`writepages 0x${large.toString(16)} ${64 * MiB} ${n} ${round + 1}`))
      .split(" ").map(Number);
    assertEquals(said.length, n);
    assertEquals(pagesOf(tl.written(), large), said, `round ${round}: ${n} pages`);
    const few = Math.min(n, 16);
    const saidSmall =
      (await target.cmd(`writepages 0x${small.toString(16)} ${16 * PAGE_SIZE} ${few} ${round}`))
        .split(" ").map(Number);
    assertEquals(pagesOf(ts.written(), small), saidSmall, `round ${round}: small region`);
  }
  // Without re-arming, a look leaves the pages reported; the next look sees them again.
  const said = (await target.cmd(`writepages 0x${large.toString(16)} ${64 * MiB} 5 99`)).split(" ").map(
    Number,
  );
  assertEquals(pagesOf(tl.written({ rearm: false }), large), said);
  assertEquals(pagesOf(tl.written(), large), said);
  assertEquals(tl.written().length, 0);
  tl.close();
  ts.close();
  uffd.close();
  // The child runs on, unaffected.
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test("track() on this process's own memory reports the pages written here", () => {
  const len = 256 * PAGE_SIZE;
  const at = mmap(0n, BigInt(len), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(at)!, len));
    bytes.fill(1, 0, 100 * PAGE_SIZE);
    using uffd = Userfaultfd.create({ features: WP });
    assertEquals(uffd.pid, "self");
    using t = track(uffd, at, BigInt(len));
    for (const pages of [[0], [3, 4, 5, 200], [255, 99, 100, 101]]) {
      for (const p of pages) bytes[p * PAGE_SIZE + 17]++;
      assertEquals(pagesOf(t.written(), at), [...pages].sort((a, b) => a - b));
    }
  } finally {
    munmap(at, BigInt(len));
  }
});

Deno.test("Userfaultfd.copy() and zeropage() fill missing pages of a registered range; EEXIST is reported as 0", () => {
  const len = 8 * PAGE_SIZE;
  const at = mmap(0n, BigInt(len), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  const src = new Uint8Array(2 * PAGE_SIZE).map((_, i) => (i * 7 + 1) & 0xff);
  try {
    using uffd = Userfaultfd.create();
    uffd.register(at, BigInt(len), UFFDIO_REGISTER_MODE.MISSING);
    assertEquals(uffd.copy(at, addrOf(Deno.UnsafePointer.of(src)), BigInt(src.length)), BigInt(src.length));
    assertEquals(uffd.zeropage(at + BigInt(2 * PAGE_SIZE), BigInt(6 * PAGE_SIZE)), BigInt(6 * PAGE_SIZE));
    assertEquals(uffd.copy(at, addrOf(Deno.UnsafePointer.of(src)), BigInt(PAGE_SIZE)), 0n, "already there");
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(at)!, len));
    assertEquals(view.subarray(0, src.length), src);
    assert(view.subarray(src.length).every((b) => b === 0));
    uffd.unregister(at, BigInt(len));
  } finally {
    munmap(at, BigInt(len));
  }
});

Deno.test("track() refuses a userfaultfd created without WP_ASYNC, and a misaligned range", () => {
  using uffd = Userfaultfd.create();
  assertThrows(() => track(uffd, 4096n, 4096n), CryoError, "without UFFD_FEATURE_WP_ASYNC");
  assertThrows(() => track(uffd, 4097n, 4096n), RangeError);
});
