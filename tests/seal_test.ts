import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { Target } from "./_target.ts";
import { addrOf, processVmRead } from "../ffi/libc.ts";
import { ImageError, KeyError, KeyFileError } from "../lib/errors.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { chunkAad, NONCE_SIZE, SEAL_OVERHEAD, SEAL_PARAMS_SIZE, Sealer } from "../lib/codecs/seal.ts";
import { keyFromEnv, keyFromFile, loadKey, SealKey } from "../lib/codecs/keys.ts";

const KiB = 1024;
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** `len` bytes of a child's memory filled with `kind`. */
async function childMemory(kind: string, len: number, seed = 1): Promise<Uint8Array> {
  await using target = Target.start();
  const addr = await target.map(len);
  await target.fill(addr, len, kind, seed);
  const local = new Uint8Array(len);
  processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(local)), addr, BigInt(len));
  return local;
}

async function newKey(): Promise<{ key: SealKey; bytes: Uint8Array }> {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return { key: await SealKey.fromBytes(bytes), bytes };
}

Deno.test("`Sealer.seal()` round-trips a child's memory byte-exact, raw and zstd-compressed", async () => {
  const mem = await childMemory("text", 1 << 20);
  const { key } = await newKey();
  const sealer = await Sealer.create(key);
  assertEquals(sealer.params.length, SEAL_PARAMS_SIZE);
  using zstd = new ZstdCodec(1);
  const chunk = 256 * KiB;
  const sealed: Uint8Array[] = [];
  for (let i = 0, off = 0; off < mem.length; i++, off += chunk) {
    const plain = mem.subarray(off, off + chunk);
    const encoded = i % 2 ? (await zstd.encode(plain))! : plain;
    const s = await sealer.seal(encoded, chunkAad(i, 0x7f0000000000n + BigInt(off), chunk, i % 2));
    assertEquals(s.length, encoded.length + SEAL_OVERHEAD);
    assert(hex(s.subarray(NONCE_SIZE, NONCE_SIZE + 64)) !== hex(encoded.subarray(0, 64)), "not encrypted");
    sealed.push(s);
  }
  const reader = await Sealer.open(key, sealer.params, "mem.cryo");
  const out = new Uint8Array(mem.length);
  for (let i = 0, off = 0; off < mem.length; i++, off += chunk) {
    const plain = await reader.open(sealed[i], chunkAad(i, 0x7f0000000000n + BigInt(off), chunk, i % 2));
    if (i % 2) await zstd.decode(plain, out.subarray(off, off + chunk));
    else out.set(plain, off);
  }
  assert(out.every((b, i) => b === mem[i]), "round trip differs");
});

Deno.test("`Sealer.open()` with the wrong key throws KeyError before any chunk is opened", async () => {
  const { key } = await newKey();
  const { key: other } = await newKey();
  const sealer = await Sealer.create(key);
  const e = await assertRejects(() => Sealer.open(other, sealer.params, "img.cryo"), KeyError);
  assertMatch(
    e.message,
    /^Cannot open image img\.cryo: the key \(bytes\) is not the one it was sealed with$/,
  );
  // a forged key check with the right salt does not get a wrong key past the chunk tags either
  const sealed = await sealer.seal(new Uint8Array(100).fill(1), chunkAad(0, 0n, 100, 0));
  const forged = new Uint8Array(sealer.params);
  const otherSealer = await Sealer.create(other);
  forged.set(otherSealer.params);
  const wrong = await Sealer.open(other, forged);
  await assertRejects(() => wrong.open(sealed, chunkAad(0, 0n, 100, 0)), ImageError, "authentication failed");
});

Deno.test("`Sealer.seal()` never repeats a nonce: two encryptions of the same memory share none", async () => {
  const mem = await childMemory("text", 512 * KiB);
  const { key } = await newKey();
  const nonces = new Set<string>();
  const ciphertexts = new Set<string>();
  for (let run = 0; run < 2; run++) {
    const sealer = await Sealer.create(key);
    for (let i = 0; i < 64; i++) {
      const s = await sealer.seal(
        mem.subarray(i * 8 * KiB, (i + 1) * 8 * KiB),
        chunkAad(i, BigInt(i) << 13n, 8192, 0),
      );
      nonces.add(hex(s.subarray(0, NONCE_SIZE)));
      ciphertexts.add(hex(s.subarray(NONCE_SIZE, NONCE_SIZE + 32)));
    }
    assertEquals(sealer.sealed, 64);
  }
  assertEquals(nonces.size, 128);
  assertEquals(ciphertexts.size, 128);
  // the same key, reopened for the same image, still draws a fresh nonce prefix
  const first = await Sealer.create(key);
  const again = await Sealer.open(key, first.params);
  const a = await first.seal(mem.subarray(0, 64), chunkAad(0, 0n, 64, 0));
  const b = await again.seal(mem.subarray(0, 64), chunkAad(0, 0n, 64, 0));
  assert(hex(a.subarray(0, NONCE_SIZE)) !== hex(b.subarray(0, NONCE_SIZE)));
});

Deno.test("`Sealer.open()` refuses a flip of any bit position, a moved chunk and another image's chunk", async () => {
  const mem = await childMemory("random", 4 * KiB, 9);
  const { key } = await newKey();
  const sealer = await Sealer.create(key);
  const aad = chunkAad(3, 0x1000n, 200, 1);
  const sealed = await sealer.seal(mem.subarray(0, 200), aad);
  assertEquals(await sealer.open(sealed, aad), mem.subarray(0, 200));
  for (let i = 0; i < sealed.length; i++) {
    const bad = new Uint8Array(sealed);
    bad[i] ^= 1 << (i % 8);
    const e = await assertRejects(
      () => sealer.open(bad, aad, "x.cryo", 4096),
      ImageError,
      "authentication failed",
    );
    assertEquals([e.path, e.offset], ["x.cryo", 4096]);
  }
  await assertRejects(() => sealer.open(sealed.subarray(0, 27), aad), ImageError, "shorter than 28");
  await assertRejects(() => sealer.open(sealed.subarray(0, sealed.length - 1), aad), ImageError);
  for (
    const moved of [chunkAad(4, 0x1000n, 200, 1), chunkAad(3, 0x2000n, 200, 1), chunkAad(3, 0x1000n, 199, 1)]
  ) {
    await assertRejects(() => sealer.open(sealed, moved), ImageError, "moved");
  }
  await assertRejects(() => sealer.open(sealed, chunkAad(3, 0x1000n, 200, 0)), ImageError);
  await assertRejects(() => sealer.open(sealed, chunkAad(3, 0x1000n, 200, 1, 2)), ImageError);
  const otherImage = await Sealer.create(key);
  await assertRejects(() => otherImage.open(sealed, aad), ImageError);
});

Deno.test("`Sealer.mac()` authenticates metadata and `verifyMac()` refuses any change", async () => {
  const { key } = await newKey();
  const sealer = await Sealer.create(key);
  const meta = crypto.getRandomValues(new Uint8Array(300));
  const tag = await sealer.mac(meta);
  assert(await (await Sealer.open(key, sealer.params)).verifyMac(meta, tag));
  for (const i of [0, 150, 299]) {
    const bad = new Uint8Array(meta);
    bad[i] ^= 0x80;
    assertEquals(await sealer.verifyMac(bad, tag), false);
  }
  assertEquals(await sealer.verifyMac(meta, tag.subarray(1)), false);
  assertEquals(await (await Sealer.create(key)).verifyMac(meta, tag), false);
});

Deno.test("`keyFromFile()` reads 32 raw bytes or 64 hex characters and names only the file in errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    await Deno.writeFile(`${dir}/raw.key`, bytes, { mode: 0o600 });
    await Deno.writeTextFile(`${dir}/hex.key`, hex(bytes).toUpperCase() + "\n", { mode: 0o600 });
    const a = await keyFromFile(`${dir}/raw.key`);
    const b = await keyFromFile(`${dir}/hex.key`);
    const sealer = await Sealer.create(a);
    await Sealer.open(b, sealer.params); // same key either way
    assertEquals(String(a), `SealKey(file ${dir}/raw.key)`);
    assert(!Deno.inspect(a).includes(hex(bytes).slice(0, 8)));
    const short = hex(bytes).slice(0, 62);
    await Deno.writeTextFile(`${dir}/bad.key`, short, { mode: 0o600 });
    const e = await assertRejects(() => keyFromFile(`${dir}/bad.key`), KeyError, "found 62 bytes");
    assert(!e.message.includes(short), "the key leaks into the message");
    await assertRejects(() => keyFromFile(`${dir}/missing.key`), KeyError, `${dir}/missing.key`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`keyFromEnv()` reads 64 hex characters from the variable the user names", async () => {
  const { key, bytes } = await newKey();
  const name = `CRYO_TEST_KEY_${Deno.pid}`;
  Deno.env.set(name, hex(bytes));
  try {
    const sealer = await Sealer.create(key);
    const fromEnv = await keyFromEnv(name);
    await Sealer.open(fromEnv, sealer.params);
    assertEquals(fromEnv.source, `environment variable ${name}`);
    Deno.env.set(name, hex(bytes).slice(1));
    const e = await assertRejects(() => keyFromEnv(name), KeyError, "expected 64 hex characters, found 63");
    assert(!e.message.includes(hex(bytes).slice(1, 20)));
  } finally {
    Deno.env.delete(name);
  }
  await assertRejects(() => keyFromEnv(name), KeyError, "not set");
  await assertRejects(() => keyFromEnv("A=B"), TypeError);
  await assertRejects(() => SealKey.fromBytes(new Uint8Array(31)), RangeError);
});

Deno.test("`loadKey()` takes one of --key-file and --key-env, or neither", async () => {
  assertEquals(await loadKey({}), undefined);
  await assertRejects(() => loadKey({ keyFile: "a", keyEnv: "B" }), TypeError, "give one");
  await assertRejects(() => loadKey({ keyFile: "/nonexistent/cryo.key" }), KeyError, "/nonexistent/cryo.key");
  const name = `CRYO_LOADKEY_TEST_${Deno.pid}`;
  Deno.env.set(name, "ab".repeat(32));
  try {
    assertEquals(String(await loadKey({ keyEnv: name })), `SealKey(environment variable ${name})`);
  } finally {
    Deno.env.delete(name);
  }
});

Deno.test("`keyFromFile()` warns about a key file group or others have access to, and refuses it with strict", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/open.key`;
    await Deno.writeFile(path, crypto.getRandomValues(new Uint8Array(32)));
    await Deno.chmod(path, 0o644);
    const warnings: string[] = [];
    const key = await keyFromFile(path, { warn: (m) => warnings.push(m) });
    assertEquals(String(key), `SealKey(file ${path})`, "used");
    assertEquals(warnings, [
      `key file ${path} is open to group or others (mode 0644); run \`chmod 600 ${path}\``,
    ]);
    const e = await assertRejects(() => keyFromFile(path, { strict: true }), KeyFileError, "(mode 0644)");
    assertEquals([e.path, e.mode], [path, 0o644]);
    await assertRejects(() => loadKey({ keyFile: path, strict: true }), KeyFileError, "group or others");
    await Deno.chmod(path, 0o640);
    await assertRejects(() => keyFromFile(path, { strict: true }), KeyFileError, "(mode 0640)");
    await Deno.chmod(path, 0o600);
    warnings.length = 0;
    await keyFromFile(path, { strict: true, warn: (m) => warnings.push(m) });
    assertEquals(warnings, [], "no warning for mode 0600");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`keyFromFile()` refuses a key file that is not a regular file, without opening a FIFO", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => keyFromFile(dir), KeyFileError, "it is a directory, not a regular file");
    await assertRejects(() => keyFromFile("/dev/zero"), KeyFileError, "a character device");
    const fifo = `${dir}/fifo.key`;
    const mk = await new Deno.Command("mkfifo", { args: ["-m", "600", fifo] }).output();
    assert(mk.success, "mkfifo");
    // A FIFO with no writer would block an open(); the refusal comes first.
    const e = await assertRejects(() => keyFromFile(fifo), KeyFileError, "it is a FIFO");
    assertEquals(e.mode, undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an image sealed with libcrypto restores with WebCrypto and the other way round, byte for byte", async () => {
  // The same chunks, two AES-256-GCM implementations: `CRYO_LIBCRYPTO` naming no library makes the CLI use
  // WebCrypto (lib/codecs/seal.ts); the default loads libcrypto.so.3.
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const MiB = 1 << 20;
    const a = await target.map(8 * MiB);
    await target.fill(a, 4 * MiB, "text", 1);
    await target.fill(a + BigInt(4 * MiB), 4 * MiB, "random", 2);
    const want = await target.sum(a, 8 * MiB);
    await Deno.writeFile(`${dir}/key`, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const run = async (webCrypto: boolean, args: string[]) => {
      const env: Record<string, string> = webCrypto ? { CRYO_LIBCRYPTO: `${dir}/no-such-library.so` } : {};
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, ...args, "--key-file", `${dir}/key`, "-q"],
        env,
        stdout: "null",
        stderr: "piped",
      }).output();
      assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    };
    for (const sealWithWebCrypto of [false, true]) {
      for (const codec of [[], ["--compress", "zstd:1"]]) {
        const image = `${dir}/i.cryo`;
        await run(sealWithWebCrypto, ["checkpoint", "--pid", String(target.pid), "-o", image, ...codec]);
        await target.fill(a, 8 * MiB, "random", 9);
        await run(!sealWithWebCrypto, ["restore", "--pid", String(target.pid), image]);
        assertEquals(
          await target.sum(a, 8 * MiB),
          want,
          `sealed with ${sealWithWebCrypto ? "WebCrypto" : "libcrypto"}`,
        );
        await Deno.remove(image);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
