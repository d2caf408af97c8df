import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { addrOf, mmap, munmap, PAGE_SIZE, processVmRead } from "../ffi/libc.ts";
import { MADV, MAP, PROT } from "../ffi/constants.ts";
import { CryoError, SystemError } from "../lib/errors.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { inject } from "../lib/kernel/inject.ts";
import {
  type Capabilities,
  capabilities,
  missingCapabilityError,
  requireCapabilities,
  UFFD_FEATURE,
} from "../lib/kernel/capabilities.ts";
import { UFFDIO_REGISTER_MODE, Userfaultfd } from "../lib/kernel/uffd.ts";
import { track } from "../lib/kernel/range_tracking.ts";
import { FaultServer } from "../lib/kernel/fault_server.ts";
import { Target } from "./_target.ts";

const MiB = 1 << 20;
const WP = UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED;

/** Whether user nobody can run `exe` and read `files` (not when they live under /root, say), as root. */
async function nobodyCan(exe: string, ...files: string[]): Promise<boolean> {
  if (Deno.uid() !== 0) return false; // needs root to drop to nobody
  const tests = ['test -x "$1"', ...files.map((_, i) => `test -r "$${i + 2}"`)].join(" && ");
  const probe = await new Deno.Command("/bin/sh", {
    args: ["-c", tests, "sh", exe, ...files],
    uid: 65534,
    gid: 65534,
  }).output().catch(() => ({ success: false }));
  return probe.success;
}

const unprivilegedUffdOff = Deno.readTextFileSync("/proc/sys/vm/unprivileged_userfaultfd").trim() === "0";

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

/** Release `length` bytes at `start` in the child (saving them first) and register them for lazy serving. */
function releaseForServing(
  pid: number,
  start: bigint,
  length: number,
): { uffd: Userfaultfd; saved: Uint8Array } {
  const saved = new Uint8Array(length);
  processVmRead(pid, addrOf(Deno.UnsafePointer.of(saved)), start, BigInt(length));
  using frozen = freeze(pid);
  using inj = inject(frozen);
  const uffd = Userfaultfd.inTarget(inj);
  inj.madvise(start, BigInt(length), MADV.DONTNEED);
  uffd.register(start, BigInt(length), UFFDIO_REGISTER_MODE.MISSING);
  return { uffd, saved };
}

function rssKiB(pid: number): number {
  return Number(Deno.readTextFileSync(`/proc/${pid}/status`).match(/^VmRSS:\s*(\d+)/m)![1]);
}

Deno.test("FaultServer serves a child's released region back from a source while it runs: data runs and holes", async () => {
  await using target = Target.start();
  const len = 40 * MiB;
  const region = await target.map(len);
  await target.fill(region, len, "random", 11);
  const zeros = await target.map(8 * MiB); // never touched: its sum is the sum of 8 MiB of zeros
  const first = await target.sum(region, 16 * MiB);
  const last = await target.sum(region + BigInt(24 * MiB), 16 * MiB);
  const zeroSum = await target.sum(zeros, 8 * MiB);
  const rssBefore = rssKiB(target.pid);
  const { uffd, saved } = releaseForServing(target.pid, region, len);
  using _uffd = uffd;
  assert(rssBefore - rssKiB(target.pid) > 30 * 1024, "released");
  // The middle 8 MiB is a hole: no run covers it, so it is served as zero pages.
  using server = FaultServer.start(uffd, [
    { start: region + BigInt(24 * MiB), length: BigInt(16 * MiB), source: saved.subarray(24 * MiB) },
    { start: region, length: BigInt(16 * MiB), source: saved.subarray(0, 16 * MiB) },
  ]);
  assertEquals(await target.sum(region, 16 * MiB), first);
  assertEquals(await target.sum(region + BigInt(16 * MiB), 8 * MiB), zeroSum);
  assertEquals(await target.sum(region + BigInt(24 * MiB), 16 * MiB), last);
  const s = server.stats();
  assertEquals(s.pagesCopied, 32 * MiB / PAGE_SIZE);
  assert(s.pagesZeroed === 8 * MiB / PAGE_SIZE, `zeroed ${s.pagesZeroed}`);
  assert(
    s.faults > 0 && s.faults < s.pagesCopied / 8,
    `${s.faults} faults: prefetch grew on sequential access`,
  );
  assert(s.maxWindowPages > 1);
  assertEquals(s.errors, 0);
  const final = server.stop();
  assertEquals(final.completed, 0, "nothing was left to complete");
  uffd.close();
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test("FaultServer survives a fault storm: 32 threads of a child fault a released 64 MiB at once", async () => {
  await using target = Target.start();
  const len = 64 * MiB;
  const region = await target.map(len);
  await target.fill(region, len, "text", 4);
  const before = await target.cmd(`psum 0x${region.toString(16)} ${len} 32`);
  const { uffd, saved } = releaseForServing(target.pid, region, len);
  using _uffd = uffd;
  using server = FaultServer.start(uffd, [{ start: region, length: BigInt(len), source: saved }], {
    maxPrefetch: 64 * 1024,
  });
  assertEquals(await target.cmd(`psum 0x${region.toString(16)} ${len} 32`), before);
  const s = server.stop();
  assertEquals(s.pagesCopied + s.completed, len / PAGE_SIZE);
  assertEquals(s.errors, 0);
  assert(s.faults >= 32, `${s.faults} faults`);
});

Deno.test("FaultServer.stop() part-way completes the missing pages, so the child is intact after unregistering", async () => {
  await using target = Target.start();
  const len = 32 * MiB;
  const region = await target.map(len);
  await target.fill(region, len, "random", 2);
  const whole = await target.sum(region, len);
  const { uffd, saved } = releaseForServing(target.pid, region, len);
  const server = FaultServer.start(uffd, [{ start: region, length: BigInt(len), source: saved }]);
  await target.sum(region + BigInt(4 * MiB), MiB); // touch a little
  const s = server.stop(); // aborted part-way: completes, then stops
  assert(s.completed > 0 && s.completed + s.pagesCopied === len / PAGE_SIZE, JSON.stringify(s));
  assertEquals(server.stop(), s, "idempotent");
  uffd.unregister(region, BigInt(len));
  uffd.close();
  assertEquals(await target.sum(region, len), whole);
});

Deno.test("FaultServer of a child killed while it serves stops cleanly", async () => {
  const target = Target.start();
  try {
    const len = 16 * MiB;
    const region = await target.map(len);
    await target.fill(region, len, "random", 3);
    const { uffd, saved } = releaseForServing(target.pid, region, len);
    using _uffd = uffd;
    const server = FaultServer.start(uffd, [{ start: region, length: BigInt(len), source: saved }]);
    await target.sum(region, MiB);
    Deno.kill(target.pid, "SIGKILL");
    await target.close();
    const s = server.stop();
    assert(s.pagesCopied > 0);
  } finally {
    await target.close();
  }
});

Deno.test("FaultServer serves this process's own region: the JS thread faults, the native thread serves", () => {
  const len = 4 * MiB;
  const at = mmap(0n, BigInt(len), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const source = new Uint8Array(len).map((_, i) => (i * 13 + (i >> 12)) & 0xff);
    using uffd = Userfaultfd.create();
    uffd.register(at, BigInt(len), UFFDIO_REGISTER_MODE.MISSING);
    using server = FaultServer.start(uffd, [{ start: at, length: BigInt(len), source }]);
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(at)!, len));
    for (let i = len - 1; i >= 0; i -= 4093) assertEquals(view[i], source[i]); // backwards: no prefetch
    assertEquals(view, source);
    assert(server.stats().faults > 1);
    server.stop();
    uffd.unregister(at, BigInt(len));
  } finally {
    munmap(at, BigInt(len));
  }
});

Deno.test("FaultServer.stop({ complete: false }) during a fault storm returns; unregistering releases the waiters", async () => {
  await using target = Target.start();
  const len = 128 * MiB;
  const region = await target.map(len);
  await target.fill(region, len, "byte:5");
  const { uffd, saved } = releaseForServing(target.pid, region, len);
  using _uffd = uffd;
  const server = FaultServer.start(uffd, [{ start: region, length: BigInt(len), source: saved }], {
    maxPrefetch: PAGE_SIZE,
  });
  const answer = target.cmd(`touch 0x${region.toString(16)} ${len} rand 1`);
  await new Promise((r) => setTimeout(r, 50));
  const s = server.stop({ complete: false });
  assertEquals(s.completed, 0);
  uffd.unregister(region, BigInt(len)); // threads waiting on a fault fault again, unhandled: zero pages
  const [, xor] = (await answer).split(" ");
  assert(xor === "0" || xor === "5", `read ${xor}`); // 5 ^ 5 ^ … and zeros: either parity
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test({
  name: "capabilities() as an unprivileged user with vm.unprivileged_userfaultfd=0: user-mode faults only",
  ignore: !unprivilegedUffdOff ||
    !(await nobodyCan(Deno.execPath(), new URL("../lib/kernel/uffd.ts", import.meta.url).pathname)),
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-nobody-" });
  try {
    await Deno.chmod(dir, 0o777);
    const probe = `${dir}/probe.ts`;
    const lib = new URL("../lib/kernel/", import.meta.url).pathname;
    await Deno.writeTextFile(
      probe,
      `import { capabilities } from "${lib}capabilities.ts";\n` +
        `import { Userfaultfd } from "${lib}uffd.ts";\n` +
        `const c = capabilities();\n` +
        `const u = Userfaultfd.create();\n` +
        `console.log(JSON.stringify({ kernel: c.userfaultfdKernelFaults, uffd: c.userfaultfd, ` +
        `wpAsync: c.wpAsync, userModeOnly: u.userModeOnly }));\n`,
    );
    await Deno.chmod(probe, 0o644);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-config", probe],
      uid: 65534,
      gid: 65534,
      env: { DENO_DIR: dir, HOME: dir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertEquals(JSON.parse(text), { kernel: false, uffd: true, wpAsync: true, userModeOnly: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const targetBinary = new URL("../ffi/build/cryo_target", import.meta.url).pathname;

Deno.test({
  name: "Userfaultfd.inTarget() of an unprivileged child falls back to UFFD_USER_MODE_ONLY",
  ignore: !unprivilegedUffdOff || !(await nobodyCan(targetBinary)),
}, async () => {
  const child = new Deno.Command(targetBinary, {
    uid: 65534,
    gid: 65534,
    stdin: "piped",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  try {
    for (let i = 0; i < 400; i++) {
      const state = Deno.readTextFileSync(`/proc/${child.pid}/status`).match(/^State:\s*(\S)/m)![1];
      if (state === "S") break;
      await new Promise((r) => setTimeout(r, 5));
    }
    using frozen = freeze(child.pid);
    using inj = inject(frozen);
    using uffd = Userfaultfd.inTarget(inj, { features: WP });
    assertEquals(uffd.userModeOnly, true);
    const e = assertThrows(() => Userfaultfd.inTarget(inj, { userModeOnly: false }), SystemError);
    assertEquals(e.code, "EPERM");
  } finally {
    try {
      Deno.kill(child.pid, "SIGKILL");
    } catch { /* gone */ }
    await child.stdin.close().catch(() => {});
    await child.status;
  }
});

Deno.test("FaultServer reads ahead of a sequential reader at full window, at most readAhead bytes per fault", async () => {
  await using target = Target.start();
  const len = 64 * MiB;
  const region = await target.map(len);
  await target.fill(region, len, "random", 9);
  const whole = await target.sum(region, len);
  const { uffd, saved } = releaseForServing(target.pid, region, len);
  using _uffd = uffd;
  const server = FaultServer.start(uffd, [{ start: region, length: BigInt(len), source: saved }], {
    maxPrefetch: MiB,
    readAhead: 4 * MiB,
  });
  // Reading 8 MiB sequentially takes the window to 1 MiB; the server then copies ahead while idle.
  await target.cmd(`touch 0x${region.toString(16)} ${8 * MiB} seq 0`);
  for (let i = 0; i < 1000 && server.stats().readAhead === 0; i++) await new Promise((r) => setTimeout(r, 5));
  const s = server.stats();
  assert(s.readAhead > 0, "read ahead");
  assert(s.pagesCopied <= (8 * MiB + MiB + 4 * MiB) / PAGE_SIZE, `${s.pagesCopied} pages: bounded`);
  server.stop();
  uffd.unregister(region, BigInt(len));
  assertEquals(await target.sum(region, len), whole);
});
