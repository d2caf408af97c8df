/**
 * Live checkpoints (lib/ops/checkpoint_live.ts) of tests/fixtures/live_writer.c, a child whose threads rewrite
 * their pages as fast as they can (a quarter of them through read(2), so the kernel writes too) in a pattern
 * where a few counters say what every page holds. The counters are read while the child is frozen (the
 * `onFrozen` hook, process_vm_readv): the image must hold those same counters and every page exactly as they
 * say, i.e. the memory at the freeze, although the child wrote on during the whole copy.
 *
 * `CRYO_LIVE_ROUNDS` sets the rounds of the repeated test (default 40, about a minute on our loaded 2-core
 * machines, 0.7-1.5 s a round; `CRYO_LIVE_ROUNDS=100` for the hundred).
 *
 * @module
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { LineChild } from "../lib/kernel/child.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { KIND } from "../lib/image/format.ts";
import { transferRemote } from "../lib/image/sources.ts";
import { CryoError } from "../lib/errors.ts";
import { parseCodec } from "../lib/codecs/select.ts";

const binary = new URL("../ffi/build/cryo_live_writer", import.meta.url).pathname;
const root = new URL("../", import.meta.url).pathname;
const PAGE = 4096;
const WORDS = PAGE / 4;
const ROUNDS = Number(Deno.env.get("CRYO_LIVE_ROUNDS") ?? 40);

interface Writer extends AsyncDisposable {
  child: LineChild;
  pid: number;
  region: bigint;
  pages: number;
  done: bigint;
  threads: number;
}

/**
 * Start the writer. `read`: its kernel writes are read(2) from a pipe (not for a rollback test: a pipe's content
 * is not rolled back).
 */
async function startWriter(
  pages: number,
  threads: number,
  opts: { huge?: boolean; read?: boolean } = {},
): Promise<Writer> {
  const flags = [...(opts.huge ? ["huge"] : []), ...(opts.read ? ["read"] : [])];
  const child = LineChild.spawn(binary, [String(pages), String(threads), ...flags]);
  try {
    const [region, n, done, t] = (await child.request("info", 10_000)).split(" ");
    return {
      child,
      pid: child.pid,
      region: BigInt(region),
      pages: Number(n),
      done: BigInt(done),
      threads: Number(t),
      [Symbol.asyncDispose]: () => child.close(),
    };
  } catch (e) {
    await child.close();
    throw e;
  }
}

function word(page: number, round: number, j: number): number {
  return (Math.imul(page, 2654435761 | 0) + Math.imul(round, 40503) + Math.imul(j, 2246822519 | 0)) >>> 0;
}

/** done[] of the writer, read from the (frozen) child. */
function readDone(w: Writer): number[] {
  const buf = new BigUint64Array(8 * w.threads);
  transferRemote(
    "process_vm_readv",
    w.pid,
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf))),
    w.done,
    buf.byteLength,
  );
  return Array.from({ length: w.threads }, (_, t) => Number(buf[8 * t]));
}

/** `[start, start + len)` as the image holds it (holes read as zeros). */
async function imageBytes(loader: MemoryLoader, start: bigint, len: number): Promise<Uint8Array> {
  const out = new Uint8Array(len);
  const end = start + BigInt(len);
  for (const r of loader.records) {
    const rEnd = r.address + BigInt(r.length);
    if (r.kind === KIND.HOLE || rEnd <= start || r.address >= end) continue;
    const data = await loader.readRecord(r);
    const from = r.address > start ? r.address : start;
    const to = rEnd < end ? rEnd : end;
    out.set(data.subarray(Number(from - r.address), Number(to - r.address)), Number(from - start));
  }
  return out;
}

/**
 * Check the image against the counters read at the freeze: its own copy of done[] equals them, and every page
 * holds the round they say (the page a thread was writing at the freeze: a prefix of the next round).
 */
async function checkImage(path: string, w: Writer, frozenDone: number[]): Promise<void> {
  using loader = await MemoryLoader.open(path);
  await loader.verify();
  const doneBytes = await imageBytes(loader, w.done, 8 * 8 * w.threads);
  const imageDone = Array.from(
    { length: w.threads },
    (_, t) => Number(new DataView(doneBytes.buffer).getBigUint64(64 * t, true)),
  );
  assertEquals(imageDone, frozenDone, "done[] in the image is not what it was at the freeze");
  const words = new Uint32Array((await imageBytes(loader, w.region, w.pages * PAGE)).buffer);
  for (let t = 0; t < w.threads; t++) {
    const d = frozenDone[t], share = Math.floor((w.pages - t + w.threads - 1) / w.threads);
    for (let j = 0; j < share; j++) {
      const page = t + j * w.threads;
      const round = d > j ? Math.floor((d - j + share - 1) / share) : 0;
      const writing = j === d % share; // the page of step d, maybe partly written at the freeze
      let i = 0;
      if (writing) { while (i < WORDS && words[page * WORDS + i] === word(page, round + 1, i)) i++; }
      for (; i < WORDS; i++) {
        const found = words[page * WORDS + i];
        if (found !== word(page, round, i)) {
          throw new Error(
            `${path}: page ${page} word ${i}: expected round ${round} (${
              word(page, round, i).toString(16)
            }), ` +
              `found ${found.toString(16)} (thread ${t}, done ${d})`,
          );
        }
      }
    }
  }
}

/** A free address far above the child's other mappings (below its stack): a region there is copied last. */
function freeHighAddress(pid: number): bigint {
  const lines = Deno.readTextFileSync(`/proc/${pid}/maps`).trim().split("\n");
  const stack = lines.find((l) => l.endsWith("[stack]"))!;
  const start = BigInt("0x" + stack.split("-")[0]);
  return (start - (64n << 30n)) & ~((2n << 20n) - 1n);
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "cryo-live-" });
}

Deno.test("checkpoint({ live: true }) takes the memory at the freeze while every thread writes, round after round", async () => {
  const dir = await tempDir();
  await using w = await startWriter(1024, 2, { read: true });
  try {
    let early = 0, maxStop = 0, faults = 0, hot = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const path = `${dir}/live-${round % 2}.cryo`;
      let frozenDone: number[] = [];
      const r = await checkpoint(w.pid, path, {
        live: true,
        fsync: false,
        onFrozen: () => frozenDone = readDone(w),
      });
      assert(r.live, "a live result");
      early += r.live.earlyPages;
      faults += r.live.faults;
      hot += r.live.hotPages;
      maxStop = Math.max(maxStop, r.stoppedMs);
      await checkImage(path, w, frozenDone);
      assertEquals(r.live.server.lostPages, 0);
      assertEquals(r.live.server.errors, 0, `server errors (last errno ${r.live.server.lastErrno})`);
    }
    // The writers outran the copy: pages were copied early because of writes, in every sense of the test.
    assert(early > 0, `no page was copied early in ${ROUNDS} rounds`);
    assert(faults > 0);
    // The writers' stacks and counters, written between the arm and the freeze, were copied aside at the
    // freeze (hot pages, lib/ops/live_arm.ts HOT_PAGES) rather than protected again: exact all the same (above).
    assert(hot > 0, `no hot page copied aside at the freeze in ${ROUNDS} rounds`);
    assert((await w.child.request("verify", 30_000)).length > 0); // the child still checks out whole
    console.log(
      `${ROUNDS} rounds: ${early} pages copied early, ${faults} faults, ${hot} hot pages, longest stop ${
        maxStop.toFixed(1)
      } ms`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Wait (at most `ms`) until every writer thread has taken `steps` more steps than `from`. */
async function waitSteps(w: Writer, from: number[], steps: number, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (readDone(w).some((d, t) => d < from[t] + steps)) {
    if (Date.now() > deadline) throw new Error(`the writers did not take ${steps} steps in ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Every page of `[addr, addr + bytes)` in the image holds `round` of the scratch pattern. */
async function checkScratch(path: string, addr: bigint, bytes: number, round: number): Promise<void> {
  using loader = await MemoryLoader.open(path);
  const words = new Uint32Array((await imageBytes(loader, addr, bytes)).buffer);
  for (let p = 0; p < bytes / PAGE; p++) {
    for (const j of [0, 1, WORDS - 1]) {
      const found = words[p * WORDS + j];
      if (found !== word((1 << 20) + p, round, j)) {
        throw new Error(
          `${path}: scratch page ${p} word ${j}: expected round ${round}, found ${found.toString(16)}`,
        );
      }
    }
  }
}

Deno.test("checkpoint({ live: true }) protects again, at the freeze, every page written between the arm and the freeze", async () => {
  const dir = await tempDir();
  await using w = await startWriter(1024, 2, { read: true });
  try {
    let rearmed = 0, armFaults = 0;
    for (let round = 0; round < 5; round++) {
      let frozenDone: number[] = [];
      const r = await checkpoint(w.pid, `${dir}/a.cryo`, {
        live: true,
        fsync: false,
        // Every page of the writers' region is rewritten after it was protected (each write lifted its
        // protection): the freeze must protect every one of them again, or the copy reads pages that change.
        onArmed: () => waitSteps(w, readDone(w), 1024 / 2 + 1),
        onFrozen: () => frozenDone = readDone(w),
      });
      await checkImage(`${dir}/a.cryo`, w, frozenDone);
      assertEquals(r.live!.server.lostPages, 0);
      assertEquals(r.live!.server.errors, 0, `server errors (last errno ${r.live!.server.lastErrno})`);
      rearmed += r.live!.rearmedPages;
      armFaults += r.live!.armFaults;
      assert(r.live!.armStoppedMs > 0 && r.live!.freezeStoppedMs > 0);
      assertEquals(r.stoppedMs, Math.max(r.live!.armStoppedMs, r.live!.freezeStoppedMs));
    }
    assert(armFaults >= 5 * 1024, `only ${armFaults} faults between the arms and the freezes`);
    assert(rearmed >= 5 * 1024, `only ${rearmed} pages protected again at the freezes`);
    assert((await w.child.request("verify", 30_000)).length > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) protects a region mapped between the arm and the freeze", async () => {
  const dir = await tempDir();
  // 64 MiB below the new region, copied before it: the child rewrites the new region long before the copy
  // gets there, so an unprotected page would be read rewritten (or caught unprotected: the checkpoint fails).
  await using w = await startWriter(16 * 1024, 2);
  try {
    const bytes = 4 << 20; // more than the freeze copies aside as hot pages (1 MiB): it must protect it
    let scratch = 0n;
    let frozenDone: number[] = [];
    let filled: Promise<string> | undefined;
    const r = await checkpoint(w.pid, `${dir}/m.cryo`, {
      live: true,
      fsync: false,
      onArmed: async () => {
        scratch = BigInt(await w.child.request(`scratch ${bytes} 0x${freeHighAddress(w.pid).toString(16)}`));
      },
      onFrozen: () => {
        frozenDone = readDone(w);
        filled = w.child.request(`fill 0x${scratch.toString(16)} ${bytes} 1`, 30_000);
      },
    });
    assertEquals(await filled, "");
    await checkImage(`${dir}/m.cryo`, w, frozenDone);
    await checkScratch(`${dir}/m.cryo`, scratch, bytes, 0);
    assertEquals(r.live!.server.lostPages, 0);
    // Born after the arm: registered and protected at the freeze, every page of it.
    assert(
      r.live!.rearmedPages >= bytes / PAGE,
      `only ${r.live!.rearmedPages} pages protected at the freeze`,
    );
    // Usually the child rewrites it before the copy gets there (every page is then copied early); under load
    // the copy sometimes gets there first. The image is exact either way (above).
    console.log(`${r.live!.earlyPages} pages copied early`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) takes the freeze's layout when regions are unmapped or replaced between the arm and the freeze", async () => {
  const dir = await tempDir();
  await using w = await startWriter(4096, 2);
  try {
    const bytes = 1 << 20;
    const gone = BigInt(await w.child.request(`scratch ${bytes}`));
    const high = freeHighAddress(w.pid);
    const replaced = BigInt(await w.child.request(`scratch ${bytes} 0x${high.toString(16)}`));
    let frozenDone: number[] = [];
    let filled: Promise<string> | undefined;
    const r = await checkpoint(w.pid, `${dir}/g.cryo`, {
      live: true,
      fsync: false,
      onArmed: async () => {
        // Both were registered and protected at the arm; one is gone at the freeze, the other is new memory.
        assertEquals(await w.child.request(`unmap 0x${gone.toString(16)} ${bytes}`), "");
        assertEquals(await w.child.request(`replace 0x${replaced.toString(16)} ${bytes}`), "");
      },
      onFrozen: () => {
        frozenDone = readDone(w);
        filled = w.child.request(`fill 0x${replaced.toString(16)} ${bytes} 2`, 30_000);
      },
    });
    assertEquals(await filled, "");
    await checkImage(`${dir}/g.cryo`, w, frozenDone);
    await checkScratch(`${dir}/g.cryo`, replaced, bytes, 1); // the new memory, as it was at the freeze
    using loader = await MemoryLoader.open(`${dir}/g.cryo`);
    const inGone = loader.records.filter((rec) =>
      rec.kind !== KIND.HOLE && rec.address < gone + BigInt(bytes) && rec.address + BigInt(rec.length) > gone
    );
    assertEquals(inGone.length, 0, "the image holds data of a region unmapped before the freeze");
    assertEquals(r.live!.server.lostPages, 0);
    assertEquals(r.live!.server.errors, 0, `server errors (last errno ${r.live!.server.lastErrno})`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) copies faulting neighbours with liveNeighbours and stays exact", async () => {
  const dir = await tempDir();
  await using w = await startWriter(4096, 2);
  try {
    for (let round = 0; round < 5; round++) {
      let frozenDone: number[] = [];
      const r = await checkpoint(w.pid, `${dir}/n.cryo`, {
        live: true,
        liveNeighbours: 16,
        fsync: false,
        onFrozen: () => frozenDone = readDone(w),
      });
      await checkImage(`${dir}/n.cryo`, w, frozenDone);
      assertEquals(r.live!.server.lostPages, 0);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true, codec }) compresses the live image after the copy, still exact", async () => {
  const dir = await tempDir();
  await using w = await startWriter(2048, 2);
  try {
    let frozenDone: number[] = [];
    const r = await checkpoint(w.pid, `${dir}/z.cryo`, {
      live: true,
      codec: parseCodec("zstd:1"),
      fsync: false,
      onFrozen: () => frozenDone = readDone(w),
    });
    await checkImage(`${dir}/z.cryo`, w, frozenDone);
    assert(r.live, "a live result");
    using loader = await MemoryLoader.open(`${dir}/z.cryo`);
    assert(loader.records.some((rec) => rec.codec !== 0), "no compressed record");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) is exact on transparent huge pages", async () => {
  const thp = (() => {
    try {
      return Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled");
    } catch {
      return "";
    }
  })();
  if (!/\[(always|madvise)\]/.test(thp)) {
    console.log("no transparent huge pages here: skipped");
    return;
  }
  const dir = await tempDir();
  await using w = await startWriter(8 * 512, 2, { huge: true, read: true });
  try {
    const smaps = Deno.readTextFileSync(`/proc/${w.pid}/smaps_rollup`);
    const huge = Number(/AnonHugePages:\s+(\d+)/.exec(smaps)?.[1] ?? 0);
    for (let round = 0; round < 10; round++) {
      let frozenDone: number[] = [];
      const r = await checkpoint(w.pid, `${dir}/h.cryo`, {
        live: true,
        fsync: false,
        onFrozen: () => frozenDone = readDone(w),
      });
      await checkImage(`${dir}/h.cryo`, w, frozenDone);
      assertEquals(r.live!.server.lostPages, 0);
    }
    console.log(`AnonHugePages at the start: ${huge} kB`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) keeps a region the child wrote whole and then unmapped during the copy", async () => {
  const dir = await tempDir();
  // 256 MiB below the scratch region, copied before it: long enough (a quiet machine copies 64 MiB before the
  // child has written all 256 pages of the region) that every page of it is written, and so copied aside, first.
  await using w = await startWriter(64 * 1024, 2);
  try {
    const bytes = 1 << 20;
    const scratch = BigInt(
      await w.child.request(`scratch ${bytes} 0x${freeHighAddress(w.pid).toString(16)}`),
    );
    let frozenDone: number[] = [];
    let unmapped: Promise<string> | undefined;
    const r = await checkpoint(w.pid, `${dir}/u.cryo`, {
      live: true,
      fsync: false,
      onFrozen: () => {
        frozenDone = readDone(w);
        // Queued now, run by the child as soon as it is thawed: every page of the region is written (so each is
        // copied aside first), then the region is unmapped, while the copy runs.
        unmapped = w.child.request(`unmap 0x${scratch.toString(16)} ${bytes} touch`, 30_000);
      },
    });
    assertEquals(await unmapped, "");
    await checkImage(`${dir}/u.cryo`, w, frozenDone);
    using loader = await MemoryLoader.open(`${dir}/u.cryo`);
    const words = new Uint32Array((await imageBytes(loader, scratch, bytes)).buffer);
    for (let p = 0; p < bytes / PAGE; p++) {
      for (const j of [0, 1, WORDS - 1]) assertEquals(words[p * WORDS + j], word((1 << 20) + p, 0, j));
    }
    // Every page of it was written (so copied aside), then it was unmapped before the copy got there.
    assert(r.live!.earlyPages >= bytes / PAGE, `only ${r.live!.earlyPages} pages copied early`);
    // Usually the unmap comes before the copy reaches the region, and every page is then taken from the aside
    // area (unreadable in the child); on a quiet machine the copy sometimes gets there first, or mid-way (about
    // 1 run in 10 here), and takes aside copies of pages still mapped. The image is exact either way (above).
    const unreadable = r.live!.server.unreadable;
    assert(unreadable <= bytes / PAGE, `${unreadable} pages unreadable, of a region of ${bytes / PAGE}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) refuses, and leaves nothing, when a region is unmapped before it was copied", async () => {
  const dir = await tempDir();
  await using w = await startWriter(256, 1);
  try {
    const bytes = 256 << 20; // the copy cannot reach it before the child, thawed, unmaps it
    const scratch = BigInt(await w.child.request(`scratch ${bytes}`, 60_000));
    let unmapped: Promise<string> | undefined;
    let failed: unknown;
    try {
      await checkpoint(w.pid, `${dir}/x.cryo`, {
        live: true,
        fsync: false,
        onFrozen: () => unmapped = w.child.request(`unmap 0x${scratch.toString(16)} ${bytes}`, 30_000),
      });
    } catch (e) {
      failed = e;
    }
    assertEquals(await unmapped, "");
    if (failed) {
      assert(failed instanceof CryoError, String(failed));
      assert(/unmapped or replaced|gone before/.test(failed.message), failed.message);
      assertEquals([...Deno.readDirSync(dir)].length, 0, "a failed checkpoint left a file");
    } else {
      // Only possible if the whole region was copied before the child ran: then it must be exact.
      using loader = await MemoryLoader.open(`${dir}/x.cryo`);
      const words = new Uint32Array((await imageBytes(loader, scratch, 1 << 20)).buffer);
      assertEquals(words[0], word(1 << 20, 0, 0));
      console.log("the copy won the race: the region was copied whole before it was unmapped");
    }
    assert((await w.child.request("verify", 30_000)).length > 0); // the child runs on, unharmed
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) refuses a region replaced by another at the same address before it was copied", async () => {
  const dir = await tempDir();
  // 256 MiB below the scratch region, copied before it: long enough (a quiet machine copies 64 MiB before the
  // child has written all 256 pages of the region) that every page of it is written, and so copied aside, first.
  await using w = await startWriter(64 * 1024, 2);
  try {
    const bytes = 1 << 20;
    const scratch = BigInt(
      await w.child.request(`scratch ${bytes} 0x${freeHighAddress(w.pid).toString(16)}`),
    );
    let replaced: Promise<string> | undefined;
    let failed: unknown;
    try {
      await checkpoint(w.pid, `${dir}/p.cryo`, {
        live: true,
        fsync: false,
        onFrozen: () => replaced = w.child.request(`replace 0x${scratch.toString(16)} ${bytes}`, 30_000),
      });
    } catch (e) {
      failed = e;
    }
    assertEquals(await replaced, "");
    if (failed) {
      // The new pages read like any others; they are caught because they lack the write-protect bit.
      assert(failed instanceof CryoError, String(failed));
      assert(/unmapped or replaced|gone before/.test(failed.message), failed.message);
      assertEquals([...Deno.readDirSync(dir)].length, 0, "a failed checkpoint left a file");
    } else {
      using loader = await MemoryLoader.open(`${dir}/p.cryo`);
      const words = new Uint32Array((await imageBytes(loader, scratch, bytes)).buffer);
      for (let p = 0; p < bytes / PAGE; p++) assertEquals(words[p * WORDS], word((1 << 20) + p, 0, 0));
      console.log("the copy won the race: the region was copied before it was replaced");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint({ live: true }) stays exact while the child forks and starts threads during the copy", async () => {
  const dir = await tempDir();
  await using w = await startWriter(4096, 2, { read: true });
  try {
    for (let round = 0; round < 5; round++) {
      let frozenDone: number[] = [];
      const r = await checkpoint(w.pid, `${dir}/f.cryo`, {
        live: true,
        fsync: false,
        onFrozen: () => {
          frozenDone = readDone(w);
          w.child.request("churn 200", 30_000).catch(() => {});
        },
      });
      await checkImage(`${dir}/f.cryo`, w, frozenDone);
      assertEquals(r.live!.server.lostPages, 0);
    }
    assert((await w.child.request("verify", 30_000)).length > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() rolls the child back to a live image, and the child passes its own check", async () => {
  const dir = await tempDir();
  await using w = await startWriter(2048, 2);
  try {
    let frozenDone: number[] = [];
    await checkpoint(w.pid, `${dir}/r.cryo`, {
      live: true,
      fsync: false,
      onFrozen: () => frozenDone = readDone(w),
    });
    await checkImage(`${dir}/r.cryo`, w, frozenDone);
    await new Promise((r) => setTimeout(r, 200)); // it writes on
    assert(readDone(w)[0] > frozenDone[0]);
    await restore(w.pid, `${dir}/r.cryo`);
    const answer = await w.child.request("verify", 30_000);
    const steps = Number(answer);
    assert(steps >= frozenDone.reduce((a, b) => a + b, 0), `verify: ${answer}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint --live --json reports the stop window, the pages copied early and the total time", async () => {
  const dir = await tempDir();
  await using w = await startWriter(2048, 2, { read: true });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${root}cli.ts`,
        "checkpoint",
        "--live",
        "--pid",
        String(w.pid),
        "-o",
        `${dir}/c.cryo`,
        "--json",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const result = JSON.parse(new TextDecoder().decode(out.stdout));
    assert(result.stoppedMs > 0 && result.totalMs >= result.stoppedMs, JSON.stringify(result));
    assert(result.live.earlyPages > 0, `no page copied early: ${JSON.stringify(result.live)}`);
    using loader = await MemoryLoader.open(`${dir}/c.cryo`);
    await loader.verify();
    assert((await w.child.request("verify", 30_000)).length > 0);
    const bad = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${root}cli.ts`,
        "checkpoint",
        "--live",
        "--stopped",
        "--pid",
        String(w.pid),
        "-o",
        `${dir}/d.cryo`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(bad.code, 2, new TextDecoder().decode(bad.stderr));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a live checkpoint whose cryo is SIGKILLed mid-copy leaves the child running and unprotected", async () => {
  const dir = await tempDir();
  await using w = await startWriter(64 * 1024, 2); // 256 MiB: the copy takes a while
  const cryo = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${root}cli.ts`,
      "checkpoint",
      "--live",
      "--pid",
      String(w.pid),
      "-o",
      `${dir}/k.cryo`,
      "-q",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let killed = false;
  try {
    // Wait until cryo holds the userfaultfd (the copy has started), then kill it.
    const deadline = Date.now() + 30_000;
    while (!killed && Date.now() < deadline) {
      try {
        for (const e of Deno.readDirSync(`/proc/${cryo.pid}/fd`)) {
          if (Deno.readLinkSync(`/proc/${cryo.pid}/fd/${e.name}`) === "anon_inode:[userfaultfd]") {
            Deno.kill(cryo.pid, "SIGKILL");
            killed = true;
            break;
          }
        }
      } catch { /* an fd closed while we looked */ }
      if (!killed) await new Promise((r) => setTimeout(r, 1));
    }
    assert(killed, "cryo never held a userfaultfd");
    const status = await cryo.status;
    assertEquals(status.signal, "SIGKILL");
    // The writers go on (no thread waits on a fault that nobody serves) and the memory is whole.
    const before = readDone(w);
    await new Promise((r) => setTimeout(r, 300));
    const after = readDone(w);
    for (let t = 0; t < w.threads; t++) {
      assert(after[t] > before[t] + 100, `thread ${t} is stuck: ${before[t]} -> ${after[t]}`);
    }
    assert(Number(await w.child.request("verify", 30_000)) > 0);
    assertEquals([...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".cryo")).length, 0);
  } finally {
    if (!killed) {
      try {
        cryo.kill("SIGKILL");
      } catch { /* gone */ }
    }
    await cryo.status;
    await cryo.stderr.cancel();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint() refuses live with keepFrozen, leaveStopped or encodeWhileStopped", async () => {
  for (const o of [{ keepFrozen: true }, { leaveStopped: true }, { encodeWhileStopped: true }]) {
    await assertRejects(() => checkpoint(1, "/nonexistent/x.cryo", { live: true, ...o }), TypeError);
  }
});
