/**
 * The attack suite: real images (raw, zstd, lz4, encrypted) made by the project's own writer, mutated by a
 * seeded mutator (bit flips, byte overwrites, truncations, extensions, field-targeted values, claims of huge
 * records, repeated and overlapping regions, repeated sections), checksums recomputed after most mutations so
 * that they reach the deeper checks. Every reader must verify the image or throw an exported cryo error, never
 * anything else, and the file and stream readers must agree on unencrypted images.
 *
 * `CRYO_FUZZ_CASES=10000` runs more cases (default 800), `CRYO_FUZZ_SEED=N` another seed (default 18),
 * `CRYO_FUZZ_CASE=K` only case K of that seed (to reproduce a failure: the message names all three).
 *
 * @module
 */

import { assert } from "./_assert.ts";
import { fillRandom, Mapping, PAGE_SIZE, tempDir } from "./_image.ts";
import {
  claimLength,
  type Field,
  fieldsOf,
  fixChecksums,
  getField,
  mapImage,
  Rng,
  setField,
  valueFor,
} from "./_mutate.ts";
import { MemoryPersister, type PersisterOptions } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { segmentSource } from "../lib/image/sources.ts";
import { openInput, verifyStream } from "../lib/image/stream.ts";
import { KIND, MAX_CHUNK_LENGTH, MAX_RECORD_LENGTH, RECORD_FLAG } from "../lib/image/format.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { Lz4Codec } from "../lib/codecs/lz4.ts";
import { Sealer } from "../lib/codecs/seal.ts";
import { SealKey } from "../lib/codecs/keys.ts";
import { CryoError } from "../lib/errors.ts";
import { diff } from "../lib/ops/diff.ts";
import { inspect } from "../lib/ops/inspect.ts";

const CASES = Number(Deno.env.get("CRYO_FUZZ_CASES") ?? 800);
const SEED = Number(Deno.env.get("CRYO_FUZZ_SEED") ?? 18);
const ONLY = Deno.env.get("CRYO_FUZZ_CASE");
/** With `CRYO_FUZZ_STATS=1`, how often each kind of refusal was seen (printed at the end). */
const STATS = Deno.env.get("CRYO_FUZZ_STATS") ? new Map<string, number>() : undefined;
/** Longer than any one reader may take on these small images, even on a loaded machine. */
const TIMEOUT_MS = 30_000;

interface Base {
  name: string;
  bytes: Uint8Array;
  key?: SealKey;
}

/** Two absolute regions (text, zero and random pages) and a segment, stored with `opts`, and two sections. */
async function baseImage(path: string, opts: PersisterOptions): Promise<Uint8Array> {
  using a = new Mapping(6 * PAGE_SIZE);
  using b = new Mapping(3 * PAGE_SIZE);
  const text = new TextEncoder().encode("the quick brown fox jumps over the lazy dog ".repeat(200));
  a.bytes(0, text.length).set(text.subarray(0, 2 * PAGE_SIZE));
  fillRandom(a.bytes(3 * PAGE_SIZE, 2 * PAGE_SIZE), 7);
  b.bytes().set(text.subarray(0, 3 * PAGE_SIZE));
  const sab = new SharedArrayBuffer(2 * PAGE_SIZE + 100);
  fillRandom(new Uint8Array(sab, 0, PAGE_SIZE), 9);
  const seg = segmentSource("heap", sab, { detectZeros: true });
  const p = await MemoryPersister.create(path, {
    regions: [a.region, b.region],
    segments: [seg],
    fsync: false,
    chunkSize: 2 * PAGE_SIZE,
    ...opts,
  });
  for (const m of [a, b].sort((x, y) => (x.addr < y.addr ? -1 : 1))) await p.store(m.addr, m.len);
  await p.store(0n, sab.byteLength, seg);
  p.addSection("threads", new TextEncoder().encode("rip=0x401000 rsp=0x7ffc0000"));
  p.addSection("rseq-st", new Uint8Array(24).fill(3));
  await p.finalize();
  return await Deno.readFile(path);
}

async function baseImages(dir: string): Promise<Base[]> {
  const key = await SealKey.fromBytes(new Uint8Array(32).fill(18));
  const out: Base[] = [];
  for (
    const [name, opts] of [
      ["raw", {}],
      ["zstd", { codec: new ZstdCodec(1) }],
      ["lz4", { codec: new Lz4Codec(1) }],
      ["encrypted", { codec: new ZstdCodec(1), sealer: await Sealer.create(key) }],
      // PARENT: its zero pages are hole entries (kind 1), its uncovered bytes its parent's (docs/FORMAT.md).
      ["incremental", { incremental: true }],
    ] as [string, PersisterOptions][]
  ) {
    out.push({
      name,
      bytes: await baseImage(`${dir}/${name}.cryo`, opts),
      key: opts.sealer ? key : undefined,
    });
  }
  return out;
}

/** Apply one to three mutations, then (mostly) recompute the checksums; a description of what was done. */
function mutate(rng: Rng, good: Uint8Array): { bytes: Uint8Array; what: string[] } {
  let b = good.slice();
  const what: string[] = [];
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const m = mapImage(b);
    const fields = fieldsOf(m);
    switch (rng.int(12)) {
      case 0: { // bit flip
        const at = rng.int(b.length), bit = rng.int(8);
        b[at] ^= 1 << bit;
        what.push(`flip ${at}.${bit}`);
        break;
      }
      case 1: { // byte overwrite
        const at = rng.int(b.length), x = rng.pick([0, 0xff, 0x7f, 0x80, rng.int(256)]);
        b[at] = x;
        what.push(`byte ${at}=${x}`);
        break;
      }
      case 2: { // truncation
        const len = rng.chance(0.5) ? rng.int(b.length) : b.length - 1 - rng.int(256);
        b = b.slice(0, Math.max(0, len));
        what.push(`truncate ${len}`);
        break;
      }
      case 3: { // extension
        const extra = new Uint8Array(1 + rng.int(rng.chance(0.5) ? 16 : 8192));
        if (rng.chance(0.5)) fillRandom(extra.subarray(0, extra.length & ~3), rng.int(1e9) + 1);
        const at = rng.chance(0.5) ? b.length : rng.int(b.length);
        b = new Uint8Array([...b.subarray(0, at), ...extra, ...b.subarray(at)]);
        what.push(`insert ${extra.length} at ${at}`);
        break;
      }
      case 4: { // a record claims a huge decoded length
        const frames = m.frames.filter((f) => f.count > 0);
        if (!frames.length) break;
        const i = m.frames.indexOf(rng.pick(frames));
        const k = rng.int(m.frames[i].count);
        const len = rng.pick([
          0x80000000n,
          0x80000001n,
          0xffffffffn,
          BigInt(MAX_RECORD_LENGTH + 1),
          BigInt(MAX_CHUNK_LENGTH + 1),
          2n ** 31n - 1n,
        ]);
        claimLength(b, i, k, len);
        what.push(`claim ${len} in frame ${i} record ${k}`);
        break;
      }
      case 5: { // a repeated or overlapping region
        if (m.regions.length < 2) break;
        const [i, j] = [rng.int(m.regions.length), rng.int(m.regions.length)];
        const f = (r: number, o: number): Field => ({ at: m.regions[r] + o, width: 8, name: "" });
        const start = getField(b, f(i, 0)), end = getField(b, f(i, 8));
        const overlap = rng.chance(0.5);
        setField(b, f(j, 0), overlap ? start + BigInt(PAGE_SIZE) : start);
        setField(b, f(j, 8), overlap ? end + BigInt(PAGE_SIZE) : end);
        what.push(`${overlap ? "overlap" : "repeat"} region ${i} in ${j}`);
        break;
      }
      case 6: { // a repeated section name
        const same = m.sections.filter((s) => s.nameLength === 7);
        if (same.length < 2) break;
        b.copyWithin(same[1].entry + 32, same[0].entry + 32, same[0].entry + 32 + 7);
        what.push("repeat a section name");
        break;
      }
      case 7: { // a record's codec, flags or kind
        const f = rng.pick(
          fields.filter((x) =>
            /entry\.(codec|flags|kind)|frame\.count|end\.dataLength|section\.(length|offset)/.test(x.name)
          ),
        );
        if (!f) break;
        const x = rng.pick([0n, 1n, 2n, 3n, 255n, 0xffffffffn, 1n << 40n, getField(b, f) ^ 1n]);
        setField(b, f, x);
        what.push(`${f.name}@${f.at}=${x}`);
        break;
      }
      case 8: { // a byte of a record's stored data (with checksums fixed: it must decode, or be refused)
        const data = m.frames.flatMap((f) => f.data).filter((d) => d.at + d.length <= b.length);
        if (!data.length) break;
        const d = rng.pick(data);
        const at = d.at + rng.int(d.length);
        b[at] ^= 1 + rng.int(255);
        what.push(`data byte ${at}`);
        break;
      }
      case 9: { // a section claims a huge blob
        if (!m.sections.length) break;
        const s = rng.pick(m.sections);
        const x = rng.pick([1n << 30n, 1n << 40n, 1n << 52n, BigInt(MAX_RECORD_LENGTH) + 1n]);
        setField(b, { at: s.entry + 8, width: 8, name: "" }, x);
        what.push(`section length ${x}`);
        break;
      }
      default: { // any field of the structure
        const f = rng.pick(fields);
        const x = valueFor(rng, getField(b, f));
        setField(b, f, x);
        what.push(`${f.name}@${f.at}=${x}`);
      }
    }
  }
  if (rng.chance(0.8)) {
    fixChecksums(b);
    what.push("checksums fixed");
  }
  return { bytes: b, what };
}

/** Run `f` with a time limit; its result, or throw when it takes too long. */
async function timed<T>(what: string, f: () => Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
  });
  try {
    return await Promise.race([f(), limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `f` passed (true) or threw a cryo error (false); anything else is thrown. */
async function outcome(what: string, f: () => Promise<unknown>): Promise<boolean> {
  try {
    await timed(what, f);
    return true;
  } catch (e) {
    if (ONLY !== undefined) console.log(`${what}: ${e}`);
    if (STATS && e instanceof Error) {
      const key = `${what}: ${
        e.message.replace(/^Invalid image \S+( at offset \d+)?: /, "").replace(/0x[0-9a-f]+|\d+/g, "N")
      }`;
      STATS.set(key, (STATS.get(key) ?? 0) + 1);
    }
    if (e instanceof CryoError && !/internal error/i.test(e.message)) return false;
    throw new Error(`${what} threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`, {
      cause: e,
    });
  }
}

/** Every reader on the image at `path`; the file reader's and the stream reader's verdicts. */
async function readAll(path: string, base: Base, other: string): Promise<{ file: boolean; stream: boolean }> {
  const file = await outcome("MemoryLoader.verify()", async () => {
    using img = await MemoryLoader.open(path);
    await img.verify();
  });
  await outcome("MemoryLoader.readRecord()", async () => {
    using img = await MemoryLoader.open(path);
    for (const r of img.records.slice(0, 12)) {
      if (r.kind === KIND.DATA && !(r.flags & RECORD_FLAG.ENCRYPTED)) await img.readRecord(r);
    }
  });
  await outcome("MemoryLoader.section()", async () => {
    using img = await MemoryLoader.open(path);
    for (const s of img.sections) img.section(s.name);
  });
  await outcome("inspect()", () => inspect(path, { records: true }));
  await outcome("diff()", () => diff(path, other));
  const stream = await outcome("verifyStream()", async () => {
    await verifyStream(await openInput(path), { key: base.key, path });
  });
  return { file, stream };
}

Deno.test(`fuzz: ${CASES} mutated raw, zstd, lz4, encrypted and incremental images are verified or refused with a cryo error`, async () => {
  await using dir = await tempDir();
  const bases = await baseImages(dir.path);
  for (const base of bases) {
    const path = `${dir.path}/${base.name}.cryo`;
    const v = await readAll(path, base, path);
    assert(v.file && v.stream, `the unmutated ${base.name} image does not verify`);
  }
  const path = `${dir.path}/case.cryo`;
  const tally = { cases: 0, fileOk: 0, streamOk: 0 };
  const first = ONLY === undefined ? 0 : Number(ONLY);
  const last = ONLY === undefined ? CASES : first + 1;
  for (let k = first; k < last; k++) {
    const rng = new Rng(SEED * 1_000_003 + k);
    const base = bases[k % bases.length];
    const { bytes, what } = mutate(rng, base.bytes);
    await Deno.writeFile(path, bytes);
    const repro = `CRYO_FUZZ_SEED=${SEED} CRYO_FUZZ_CASE=${k} (${base.name}: ${what.join(", ")})`;
    try {
      const v = await readAll(path, base, `${dir.path}/${base.name}.cryo`);
      // Without a key, the file reader can only check an encrypted image's checksums; the stream reader
      // authenticates it. Unencrypted, the two readers apply the same rules.
      if (!base.key && v.file !== v.stream) {
        throw new Error(`the file reader ${v.file ? "accepts" : "refuses"} what the stream reader does not`);
      }
      tally.cases++;
      if (v.file) tally.fileOk++;
      if (v.stream) tally.streamOk++;
    } catch (e) {
      throw new Error(`${repro}: ${(e as Error).message}`, { cause: e });
    }
  }
  if (Deno.env.get("CRYO_FUZZ_CASES") || ONLY !== undefined) console.log(`fuzz seed ${SEED}:`, tally);
  if (STATS) console.log([...STATS].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${n}\t${k}`).join("\n"));
});

/** Peak RSS in KiB of `deno run -A cli.ts ...args` (GNU time's maximum resident set size, else VmHWM polled). */
async function peakRss(args: string[]): Promise<{ kib: number; code: number; out: string }> {
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  const deno = Deno.execPath();
  let time = false;
  try {
    time = Deno.statSync("/usr/bin/time").isFile;
  } catch { /* not installed: poll instead */ }
  if (time) {
    const out = await new Deno.Command("/usr/bin/time", {
      args: ["-f", "PEAK %M", deno, "run", "-A", cli, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    const m = /PEAK (\d+)/.exec(err);
    assert(m, `no peak RSS from /usr/bin/time: ${err}`);
    return { kib: Number(m[1]), code: out.code, out: new TextDecoder().decode(out.stdout) + err };
  }
  const child = new Deno.Command(deno, {
    args: ["run", "-A", cli, ...args],
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  let kib = 0;
  const poll = setInterval(() => {
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(Deno.readTextFileSync(`/proc/${child.pid}/status`));
      if (m) kib = Math.max(kib, Number(m[1]));
    } catch { /* exited */ }
  }, 5);
  try {
    const out = await child.output();
    return {
      kib,
      code: out.code,
      out: new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr),
    };
  } finally {
    clearInterval(poll);
  }
}

Deno.test("`cli.ts verify`, `inspect` and `diff` stay under 96 MiB of RSS on images that claim huge records", async () => {
  await using dir = await tempDir();
  // Records of MAX_CHUNK_LENGTH decoded bytes each, in a few KiB of zstd: the most an image may claim.
  // Small, and encoded one chunk at a time: tests in this process that measure its RSS are not disturbed.
  const len = 3 * MAX_CHUNK_LENGTH;
  using m = new Mapping(len);
  const pattern = new TextEncoder().encode("cryo checks every size before it allocates; ");
  const whole = m.bytes();
  for (let at = 0; at < len; at += pattern.length) whole.set(pattern.subarray(0, len - at), at);
  const make = async (name: string, codec: PersisterOptions["codec"]) => {
    const p = await MemoryPersister.create(`${dir.path}/${name}`, {
      regions: [m.region],
      codec,
      chunkSize: MAX_CHUNK_LENGTH,
      window: 1,
      fsync: false,
    });
    await p.store(m.addr, len);
    await p.finalize();
    return await Deno.readFile(`${dir.path}/${name}`);
  };
  const zstd = await make("max.cryo", new ZstdCodec(1));
  whole.fill(0x55, MAX_CHUNK_LENGTH - 100, MAX_CHUNK_LENGTH + 100); // so that diff reads every record
  await make("max2.cryo", new ZstdCodec(1));
  // The same, each record claiming 2 GiB (consistently: table, frame, directory, segment, footer; checksums).
  const claims = zstd.slice();
  for (let k = 0; k < 3; k++) claimLength(claims, 0, k, 2n ** 31n);
  fixChecksums(claims);
  await Deno.writeFile(`${dir.path}/claims.cryo`, claims);
  // An lz4 record claiming more than 2^31 bytes.
  const lz4 = await make("lz4.cryo", new Lz4Codec(1));
  claimLength(lz4, 0, 0, 2n ** 31n + 1n);
  fixChecksums(lz4);
  await Deno.writeFile(`${dir.path}/lz4claim.cryo`, lz4);
  const limit = 96 * 1024;
  const report: string[] = [];
  for (
    const [args, ok] of [
      [["verify", "max.cryo"], true],
      [["inspect", "max.cryo"], true],
      [["diff", "max.cryo", "max2.cryo"], true],
      [["verify", "claims.cryo"], false],
      [["inspect", "claims.cryo"], false],
      [["diff", "claims.cryo", "max.cryo"], false],
      [["verify", "lz4claim.cryo"], false],
      [["diff", "lz4claim.cryo", "max.cryo"], false],
    ] as [string[], boolean][]
  ) {
    const { kib, code, out } = await peakRss(args.map((a) => (a.endsWith(".cryo") ? `${dir.path}/${a}` : a)));
    report.push(`${args.join(" ")}: ${(kib / 1024).toFixed(1)} MiB, exit ${code}`);
    assert(!/internal error/i.test(out), `${args.join(" ")}: ${out}`);
    // diff exits 1 when the images differ (like cmp), which max and max2 do: an answer, not a failure.
    const answered = code === 0 || (args[0] === "diff" && code === 1);
    assert(answered === ok, `${args.join(" ")} exits ${code}: ${out}`);
    assert(kib <= limit, `${args.join(" ")} peaked at ${kib} KiB of RSS (limit ${limit})`);
  }
  if (Deno.env.get("CRYO_FUZZ_CASES")) console.log(report.join("\n"));
});
