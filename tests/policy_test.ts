import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { classify, globToRegExp } from "../lib/kernel/policy.ts";
import { parseMaps, parseSmaps, readRegions } from "../lib/kernel/maps.ts";
import { threadStacks } from "../lib/kernel/stacks.ts";

const odd = parseMaps(Deno.readTextFileSync(new URL("./testdata/odd.maps", import.meta.url)), "odd.maps");

function table(decisions: ReturnType<typeof classify>): string[] {
  return decisions.map((d) =>
    `${d.region.path || "-"} | ${d.persist ? "persist" : "skip"} ${d.pages} | ${d.reason}`
  );
}

Deno.test("classify() decides every odd maps line with a reason", () => {
  assertEquals(table(classify(odd)), [
    "/usr/bin/dbus-daemon | persist anon | private file mapping: its private dirty pages",
    "/usr/bin/dbus-daemon | persist anon | private file mapping: its private dirty pages",
    "[heap] | persist all | private heap memory",
    "- | skip all | PROT_NONE reservation: no data",
    "/dev/zero | skip all | shared mapping (pass shared: true to persist it)",
    "/home/me/My Documents/a file.bin | persist anon | private file mapping: its private dirty pages",
    "/tmp/two  spaces | persist anon | private file mapping: its private dirty pages",
    "[anon:v8 heap space] | persist all | named anonymous memory [anon:v8 heap space]",
    "[anon_shmem:ring] | skip all | shared mapping (pass shared: true to persist it)",
    "[stack:1234] | persist all | private stack memory",
    "/memfd:cryo | skip all | shared mapping (pass shared: true to persist it)",
    "[uprobes] | skip all | [uprobes]: a kernel pseudo-mapping",
    "/data/big inode | persist anon | private file mapping: its private dirty pages",
    "/tmp/(deleted) not really | persist anon | private file mapping: its private dirty pages",
    "[stack] | persist all | private stack memory",
    "[vvar] | skip all | [vvar]: kernel data the kernel maps into every process",
    "[vvar_vclock] | skip all | [vvar_vclock]: kernel data the kernel maps into every process",
    "[vdso] | skip all | [vdso]: kernel code the kernel maps into every process",
    "[vsyscall] | skip all | [vsyscall]: the kernel's legacy system call page",
  ]);
});

Deno.test("classify() uses smaps flags: dd, io and pf skip; a clean private file mapping is skipped", () => {
  const head = (n: number, perms: string, path = "") =>
    `7f000000${n}000-7f000000${n + 1}000 ${perms} 00000000 00:00 0 ${path}`;
  const regions = parseSmaps([
    head(1, "rw-p"),
    "Anonymous:             4 kB",
    "VmFlags: rd wr mr mw me ac dd",
    head(2, "r--p", "/lib/libx.so"),
    "Anonymous:             0 kB",
    "Swap:                  0 kB",
    "VmFlags: rd mr mw me",
    head(3, "r--p", "/lib/libx.so"),
    "Anonymous:             4 kB",
    "VmFlags: rd mr mw me ac",
    head(4, "rw-p"),
    "VmFlags: rd wr mr mw io",
    head(5, "rw-p"),
    "VmFlags: rd wr mr mw pf",
    head(6, "-w-p"),
    "VmFlags: wr mw",
    head(7, "r--p"),
    "VmFlags: rd mr",
  ].join("\n"));
  assertEquals(classify(regions).map((d) => [d.persist, d.reason]), [
    [false, "MADV_DONTDUMP (VmFlags dd)"],
    [false, "private file mapping with no private dirty pages"],
    [true, "private file mapping: its private dirty pages"],
    [false, "memory-mapped I/O (VmFlags io)"],
    [false, "PFN mapping, no struct pages (VmFlags pf)"],
    [false, "not readable (-w-p)"],
    [true, "private anonymous memory (read-only)"],
  ]);
  // include overrides the default skips (dd, clean file) but not the never-rules (io).
  const forced = classify(regions, { include: [{}] });
  assertEquals(forced.map((d) => d.persist), [true, true, true, false, false, true, true]);
  assertEquals(forced[0].reason, "included by include[0] (any)");
});

Deno.test("classify() include and exclude select by range, kind and path (RegExp or glob)", () => {
  const byPath = (opts: Parameters<typeof classify>[1]) =>
    classify(odd, opts).filter((d) => d.persist).map((d) => d.region.path || "-");
  // shared: true persists the shared mappings.
  assert(byPath({ shared: true }).includes("/memfd:cryo"));
  // A glob without "/" matches the last path component; a glob with "/" the whole path.
  assertEquals(byPath({ include: [{ path: "memfd:*" }] }).includes("/memfd:cryo"), true);
  assertEquals(byPath({ include: [{ path: "/memfd:*" }] }).includes("/memfd:cryo"), true);
  assertEquals(byPath({ include: [{ path: "/dev/*" }] }).includes("/dev/zero"), true);
  // exclude by kind, by RegExp, by range; exclude wins over include.
  assertEquals(byPath({ exclude: [{ kind: ["file", "deleted"] }] }), [
    "[heap]",
    "[anon:v8 heap space]",
    "[stack:1234]",
    "[stack]",
  ]);
  assertEquals(byPath({ exclude: [{ path: /^\[(stack|heap)/ }] }).some((p) => p.startsWith("[stack")), false);
  const range = { start: 0x7f0000003800n, end: 0x7f0000005000n }; // overlaps [anon:…] and [anon_shmem:…]
  const d = classify(odd, { exclude: [{ range }], include: [{ range }] });
  const named = d.find((x) => x.region.path === "[anon:v8 heap space]")!;
  assertEquals([named.persist, named.reason], [
    false,
    "excluded by exclude[0] (range 0x7f0000003800-0x7f0000005000)",
  ]);
  assertEquals(d.find((x) => x.region.path === "[stack:1234]")!.persist, true);
  // include cannot override a never-rule.
  assertEquals(
    classify(odd, { include: [{ kind: "vdso" }] }).find((x) => x.region.kind === "vdso")!.persist,
    false,
  );
  // kind and path combined: both must match.
  const both = classify(odd, { exclude: [{ kind: "file", path: "dbus-*" }] });
  assertEquals(both.filter((x) => x.reason.startsWith("excluded")).length, 2);
});

Deno.test("classify() refuses malformed filters", () => {
  assertThrows(
    () => classify(odd, { exclude: [{ range: { start: 5n, end: 5n } }] }),
    RangeError,
    "exclude[0].range",
  );
  assertThrows(
    () => classify(odd, { include: [{ path: 3 as unknown as string }] }),
    TypeError,
    "include[0].path",
  );
  assertThrows(() => classify(odd, { include: [null as unknown as object] }), TypeError);
});

Deno.test("globToRegExp() treats *, ** and ? as globs and everything else literally", () => {
  assert(globToRegExp("/usr/lib/*.so*").test("/usr/lib/libc.so.6"));
  assert(!globToRegExp("/usr/*.so").test("/usr/lib/libc.so"));
  assert(globToRegExp("/usr/**.so").test("/usr/lib/libc.so"));
  assert(globToRegExp("[anon:v8 ?eap*]").test("[anon:v8 heap space]"));
  assert(!globToRegExp("a.b").test("axb"));
});

Deno.test("classify() of a live Deno child with two Workers persists their stacks and skips the cage", async () => {
  const script = `
    const src = 'self.postMessage("up"); setInterval(() => {}, 1 << 30);';
    const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
    const ws = [1, 2].map((i) => new Worker(url, { type: "module", name: "w" + i }));
    await Promise.all(ws.map((w) => new Promise((r) => w.onmessage = r)));
    console.log("ready");
    await Deno.stdin.read(new Uint8Array(1));`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    const deadline = Date.now() + 30_000;
    while (!out.includes("ready\n")) {
      if (Date.now() > deadline) throw new Error(`child ${child.pid} never became ready`);
      const { value, done } = await reader.read();
      if (done) throw new Error(`child ${child.pid} exited: ${out}`);
      out += value;
    }
    reader.releaseLock();
    // Worker threads idle in a system call: their stack pointers are readable. Retry while one is mid-run.
    let workers: ReturnType<typeof threadStacks> = [];
    for (let i = 0; i < 100 && workers.length < 2; i++) {
      workers = threadStacks(child.pid, readRegions(child.pid)).filter((s) => /^worker-\d+$/.test(s.name));
      if (workers.length < 2) await new Promise((r) => setTimeout(r, 20));
    }
    assertEquals(workers.length, 2, "both worker threads' stacks");
    const regions = readRegions(child.pid, { smaps: true, stacks: true });
    const decisions = classify(regions);
    for (const w of workers) {
      const d = decisions.find((d) => d.region.start === w.region.start)!;
      assertEquals(d.region.kind, "stack");
      assertEquals([d.persist, d.reason, d.pages], [true, "private stack memory", "all"]);
      assert(d.region.start <= w.sp && w.sp < d.region.end);
    }
    assertEquals(new Set(workers.map((w) => w.region.start)).size, 2, "two distinct stacks");
    // The 16 GiB cage, less what the isolates have carved out of its bottom.
    const cage = decisions.filter((d) => d.region.end - d.region.start >= 8n << 30n);
    assert(cage.length >= 1, "a cage reservation of more than 8 GiB");
    for (const d of cage) assertEquals([d.persist, d.reason], [false, "PROT_NONE reservation: no data"]);
    assert(decisions.some((d) => d.region.kind === "heap" && d.persist));
    assertMatch(decisions.find((d) => d.region.kind === "vdso")!.reason, /^\[vdso\]/);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
    await child.stdin.close().catch(() => {});
    await child.stdout.cancel().catch(() => {});
  }
});
