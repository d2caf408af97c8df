/**
 * The layers of the code base (docs/LAYERS.md), checked: every module imports only from its own layer or the
 * layers below it, and no modules import each other in a circle. Type-only imports count too.
 *
 * @module
 */

import { assertEquals } from "./_assert.ts";

const root = new URL("../", import.meta.url).pathname;

/** Layers from the bottom; a module may import from its own layer and those before it. */
const LAYERS: [string, (path: string) => boolean][] = [
  ["leaf", (p) => p === "lib/errors.ts" || p === "lib/hex.ts" || p === "deno.json"], // deno.json: data (the version)
  ["ffi", (p) => p.startsWith("ffi/")],
  ["kernel", (p) => p.startsWith("lib/kernel/")],
  ["codecs", (p) => p.startsWith("lib/codecs/")],
  ["image", (p) => p.startsWith("lib/image/")],
  ["ops", (p) => p.startsWith("lib/ops/")],
  ["cli", (p) => p.startsWith("lib/cli/")],
  ["entry", (p) => !p.includes("/")], // mod.ts, cli.ts and the subpath entry points
];

function layerOf(path: string): number {
  const i = LAYERS.findIndex(([, has]) => has(path));
  if (i < 0) throw new Error(`${path} is in no layer: add it to docs/LAYERS.md and this test`);
  return i;
}

function modules(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(root + dir)) {
    const p = dir ? `${dir}/${e.name}` : e.name;
    if (
      e.isDirectory &&
      ["lib", "ffi", "lib/kernel", "lib/codecs", "lib/image", "lib/ops", "lib/cli", "lib/cli/commands"]
        .includes(p)
    ) {
      out.push(...modules(p));
    } else if (e.isFile && e.name.endsWith(".ts") && (dir !== "" || !e.name.endsWith("_test.ts"))) {
      out.push(p);
    }
  }
  return out;
}

/** Relative imports of a module (static `import`/`export … from`, including `import type`). */
function importsOf(path: string): string[] {
  const src = Deno.readTextFileSync(root + path);
  const out: string[] = [];
  for (const m of src.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s*["'](\.{1,2}\/[^"']+)["']/g)) {
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
    const parts = (dir ? dir.split("/") : []).concat(m[1].split("/"));
    const norm: string[] = [];
    for (const p of parts) {
      if (p === "..") norm.pop();
      else if (p !== ".") norm.push(p);
    }
    out.push(norm.join("/"));
  }
  return out;
}

const all = modules("").filter((p) =>
  !["deno.json"].includes(p) && (p.startsWith("lib/") || p.startsWith("ffi/") || !p.includes("/"))
);

Deno.test("every module imports only from its own layer or those below it", () => {
  const upward: string[] = [];
  for (const p of all) {
    const mine = layerOf(p);
    for (const dep of importsOf(p)) {
      if (layerOf(dep) > mine) {
        upward.push(`${p} (${LAYERS[mine][0]}) imports ${dep} (${LAYERS[layerOf(dep)][0]})`);
      }
    }
  }
  assertEquals(upward, []);
});

Deno.test("no modules import each other in a circle", () => {
  const graph = new Map(all.map((p) => [p, importsOf(p)]));
  const cycles: string[] = [];
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (p: string) => {
    if (state.get(p) === "done") return;
    if (state.get(p) === "open") {
      cycles.push([...stack.slice(stack.indexOf(p)), p].join(" -> "));
      return;
    }
    state.set(p, "open");
    stack.push(p);
    for (const d of graph.get(p) ?? []) visit(d);
    stack.pop();
    state.set(p, "done");
  };
  for (const p of all) visit(p);
  assertEquals(cycles, []);
});

Deno.test("docs/LAYERS.md names every file of ffi/ and lib/ in its layer's row, and no file that is not there", () => {
  const table = Deno.readTextFileSync(root + "docs/LAYERS.md").split("\n").filter((l) => l.startsWith("| "));
  const rows: { folders: string[]; names: Set<string> }[] = [];
  for (const line of table) {
    const [, , where, what] = line.split("|");
    if (!where || !what) continue;
    const folders = [...where.matchAll(/`([^`]+\/)`/g)].map((m) => m[1]);
    if (folders.length !== 1) continue; // the header, the leaf (files named as paths) and the entry points
    rows.push({ folders, names: new Set([...what.matchAll(/`([a-z_0-9]+)`/g)].map((m) => m[1])) });
  }
  const missing: string[] = [];
  const stale: string[] = [];
  for (const { folders, names } of rows) {
    const dirs = folders[0] === "lib/cli/" ? ["lib/cli", "lib/cli/commands"] : [folders[0].slice(0, -1)];
    const files = new Set<string>();
    for (const dir of dirs) {
      for (const e of Deno.readDirSync(root + dir)) {
        if (e.isFile && e.name.endsWith(".ts")) files.add(e.name.slice(0, -3));
      }
    }
    for (const f of files) if (!names.has(f)) missing.push(`${folders[0]}${f}.ts`);
    for (const n of names) if (!files.has(n)) stale.push(`${folders[0]}: \`${n}\``);
  }
  assertEquals(rows.map((r) => r.folders[0]).sort(), [
    "ffi/",
    "lib/cli/",
    "lib/codecs/",
    "lib/image/",
    "lib/kernel/",
    "lib/ops/",
  ]);
  assertEquals({ missing, stale }, { missing: [], stale: [] });
});
