import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { mapImage, mapProcess, type MemoryMap } from "../lib/ops/map.ts";
import { renderMapHtml } from "../lib/cli/map_html.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const MiB = 1n << 20n;
const hex = (n: bigint) => `0x${n.toString(16)}`;

/** Bytes of each kind of run inside `[start, end)` of the region that holds `start`. */
function kinds(map: MemoryMap, start: bigint, end: bigint): Record<string, number> {
  const g = map.regions.find((g) => g.start <= start && start < g.end);
  assert(g, `no region holds ${hex(start)}`);
  const out: Record<string, number> = { data: 0, zero: 0, hole: 0 };
  for (const r of g.runs) {
    const s = r.start > start ? r.start : start, e = r.end < end ? r.end : end;
    if (e > s) out[r.kind] += Number(e - s);
  }
  return out;
}

async function cryo(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** A child with 64 MiB mapped: 8 MiB of random data, 4 MiB written with zeros at +16 MiB, the rest untouched. */
async function prepared(target: Target): Promise<bigint> {
  const a = await target.map(64n * MiB);
  await target.fill(a, 8n * MiB, "random", 1);
  await target.fill(a + 16n * MiB, 4n * MiB, "zero", 1);
  return a;
}

Deno.test("mapProcess() finds a child's data, its all-zero pages and its holes where they are, and says why not", async () => {
  await using target = Target.start();
  const a = await prepared(target);
  const map = mapProcess(target.pid);
  assertEquals(kinds(map, a, a + 8n * MiB), { data: 8 << 20, zero: 0, hole: 0 });
  assertEquals(kinds(map, a + 16n * MiB, a + 20n * MiB), { data: 0, zero: 4 << 20, hole: 0 });
  assertEquals(kinds(map, a + 20n * MiB, a + 64n * MiB), { data: 0, zero: 0, hole: 44 << 20 });
  const vdso = map.regions.find((g) => g.kind === "vdso")!;
  assert(!vdso.persisted && vdso.reason.includes("kernel code"), vdso.reason);
  // Runs cover each persisted region exactly, in order.
  for (const g of map.regions.filter((g) => g.persisted)) {
    let at = g.start;
    for (const r of g.runs) {
      assertEquals(r.start, at);
      at = r.end;
    }
    assertEquals(at, g.end);
  }
});

Deno.test("mapImage() holds the image's regions, the left-out ones with reasons, and the pages changed since", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await prepared(target);
    assertEquals(
      (await cryo("checkpoint", "--pid", String(target.pid), "-o", `${dir}/1.cryo`, "-q")).code,
      0,
    );
    await target.fill(a + 2n * MiB, 1n * MiB, "text", 7);
    await target.fill(a + 40n * MiB, 3n * MiB, "random", 9);
    assertEquals(
      (await cryo("checkpoint", "--pid", String(target.pid), "-o", `${dir}/2.cryo`, "-q")).code,
      0,
    );
    const map = await mapImage(`${dir}/2.cryo`, { against: `${dir}/1.cryo` });
    assertEquals(kinds(map, a, a + 8n * MiB).data, 8 << 20);
    assertEquals(kinds(map, a + 16n * MiB, a + 20n * MiB), { data: 0, zero: 0, hole: 4 << 20 }); // zeros: holes
    assertEquals(kinds(map, a + 40n * MiB, a + 43n * MiB).data, 3 << 20);
    assert(map.regions.some((g) => g.kind === "vdso" && !g.persisted && g.reason.includes("kernel code")));
    // In the mapping the test wrote to (the child's own heap and stack change too, answering commands):
    const inside = map.diff!.runs.filter((r) => r.start >= a && r.end <= a + 64n * MiB);
    assertEquals(inside.map((r) => [r.start, r.end, r.kind]), [
      [a + 2n * MiB, a + 3n * MiB, "changed"],
      [a + 40n * MiB, a + 43n * MiB, "changed"],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("renderMapHtml() escapes a target's strings and fetches nothing", () => {
  const html = renderMapHtml({
    source: { kind: "process", pid: 1, commandLine: ["<script>alert(1)</script>"], time: "t" },
    pageSize: 4096,
    regions: [{
      start: 0x1000n,
      end: 0x3000n,
      perms: "rw-p",
      kind: "named",
      path: `[anon:"><img src=x onerror=alert(1)>]`,
      persisted: true,
      reason: "private named anonymous memory",
      runs: [{ start: 0x1000n, end: 0x2000n, kind: "data" }, { start: 0x2000n, end: 0x3000n, kind: "hole" }],
      dataBytes: 4096,
      zeroBytes: 0,
      holeBytes: 4096,
    }],
    totals: { mappedBytes: 8192, persistedBytes: 8192, dataBytes: 4096, zeroBytes: 0, holeBytes: 4096 },
  });
  assert(!html.includes("<script>alert") && !html.includes("<img"), "unescaped");
  assert(!/(?:src|href)\s*=\s*["']?(?:https?:)?\/\/|url\(\s*["']?https?:|@import/i.test(html), "a fetch");
});

/** The system's Chromium (CI installs it: apt-get install chromium). */
function chromium(): string {
  for (const p of ["/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    try {
      Deno.statSync(p);
      return p;
    } catch { /* next */ }
  }
  throw new Error("Cannot find Chromium for the map's browser test: apt-get install chromium (.ci/run does)");
}

/** The DOM of `file` after its scripts ran, from headless Chromium with a fresh profile and no network. */
async function dumpDom(file: string): Promise<string> {
  const profile = await Deno.makeTempDir();
  try {
    const out = await new Deno.Command(chromium(), {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${profile}`,
        "--virtual-time-budget=5000",
        "--dump-dom",
        `file://${file}`,
      ],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
      signal: AbortSignal.timeout(120_000),
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    return new TextDecoder().decode(out.stdout);
  } finally {
    await Deno.remove(profile, { recursive: true });
  }
}

/** The page loaded, its script ran to the end, and nothing was reported to window.onerror. */
function loadedCleanly(dom: string): void {
  assert(/<body[^>]*data-ready="yes"/.test(dom), "the page's script did not run to its end");
  const errors = /<div id="errors"([^>]*)>([\s\S]*?)<\/div>/.exec(dom);
  assert(errors, "no error box");
  assert(errors[1].includes("hidden") && errors[2] === "", `errors on the page: ${errors[2]}`);
}

Deno.test("cryo map pages load in headless Chromium without errors and show every region the image holds", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await prepared(target);
    const pid = String(target.pid);
    assertEquals((await cryo("checkpoint", "--pid", pid, "-o", `${dir}/1.cryo`, "-q")).code, 0);
    await target.fill(a + 40n * MiB, 3n * MiB, "random", 9);
    assertEquals((await cryo("checkpoint", "--pid", pid, "-o", `${dir}/2.cryo`, "-q")).code, 0);

    const one = await cryo("map", `${dir}/2.cryo`, "-o", `${dir}/image.html`);
    assertEquals(one.code, 0, one.stderr);
    const two = await cryo("map", `${dir}/1.cryo`, `${dir}/2.cryo`, "-o", `${dir}/diff.html`);
    assertEquals(two.code, 0, two.stderr);
    const live = await cryo("map", "--pid", pid, "-o", `${dir}/pid.html`);
    assertEquals(live.code, 0, live.stderr);

    const image = await mapImage(`${dir}/2.cryo`);
    const json = await cryo("map", `${dir}/2.cryo`, "--json");
    assertEquals(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as {
      schema: number;
      regions: { start: string; persisted: boolean; reason: string }[];
    };
    assertEquals(parsed.schema, 1); // the CLI's one JSON contract
    assertEquals(parsed.regions.map((g) => g.start), image.regions.map((g) => hex(g.start)));
    assert(parsed.regions.every((g) => g.reason.length > 0));
    const dom = await dumpDom(`${dir}/image.html`);
    loadedCleanly(dom);
    for (const g of image.regions) {
      assert(
        dom.includes(`data-start="${hex(g.start)}" data-end="${hex(g.end)}"`),
        `no row for ${hex(g.start)}`,
      );
      assert(dom.includes(`${hex(g.start)}–${hex(g.end)}`), `${hex(g.start)} not shown`);
    }
    const rows = image.regions.length;
    assert(
      dom.includes(`${rows} of ${rows} regions`),
      "the filter's count (written by the script) is missing",
    );

    const diffDom = await dumpDom(`${dir}/diff.html`);
    loadedCleanly(diffDom);
    assert(
      /<svg class="heat"[^>]*>(?:(?!<\/svg>).)*class="c4"/s.test(diffDom),
      "no heat strip of changed pages",
    );
    loadedCleanly(await dumpDom(`${dir}/pid.html`));

    // The error box works: a page whose script fails says so.
    const broken = (await Deno.readTextFile(`${dir}/image.html`)).replace(
      'document.body.dataset.ready = "yes";',
      'undefinedFunction(); document.body.dataset.ready = "yes";',
    );
    await Deno.writeTextFile(`${dir}/broken.html`, broken);
    const brokenDom = await dumpDom(`${dir}/broken.html`);
    assert(
      /<div id="errors">[^<]*undefinedFunction/.test(brokenDom),
      "a script error did not reach the page",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mapImage() of an encrypted image shows the regions it holds and says the others need the key", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await prepared(target);
    await Deno.writeFile(`${dir}/key`, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const cp = await cryo(
      "checkpoint",
      "--pid",
      String(target.pid),
      "-o",
      `${dir}/e.cryo`,
      "-q",
      "--key-file",
      `${dir}/key`,
    );
    assertEquals(cp.code, 0, cp.stderr);
    const map = await mapImage(`${dir}/e.cryo`);
    assert(map.source.encrypted);
    assert(map.regions.every((g) => g.persisted), "left-out regions come from the sealed layout section");
    assertEquals(kinds(map, a, a + 8n * MiB).data, 8 << 20);
    assert(renderMapHtml(map).includes("The image is encrypted"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
