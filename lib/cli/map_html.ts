/**
 * The page `cryo map` writes: one self-contained HTML file (inline CSS, SVG and script, nothing fetched) that
 * draws a {@link MemoryMap}. Regions are drawn to scale on a log axis (a region of 2^k pages is k + 1 units
 * wide): an overview strip of the whole address space, then one row per region with its runs (data, all-zero
 * pages, holes) and the policy's reason for what was persisted, and for two images a heat strip of the pages
 * that differ. Every string from a process or an image is escaped.
 *
 * @module
 */

import type { MapRegion, MemoryMap } from "../ops/map.ts";
import { humanBytes } from "./format.ts";

const hex = (n: bigint) => `0x${n.toString(16)}`;

/** `text` safe inside HTML text and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`).replace(
    // deno-lint-ignore no-control-regex -- control characters from a target's strings are shown escaped
    /[\x00-\x1f\x7f-\x9f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

/** Units of width of a region of `bytes`: log2 of its pages, plus one. */
function units(bytes: bigint, pageSize: number): number {
  return Math.log2(Math.max(1, Number(bytes) / pageSize)) + 1;
}

/** Most cells of a bar (the widest region's). */
const CELLS = 480;

/** Runs of equal cells as SVG rects of class `c` + level, on a viewBox `cells` wide. */
function rects(levels: string[]): string {
  let out = "";
  for (let i = 0; i < levels.length;) {
    let j = i + 1;
    while (j < levels.length && levels[j] === levels[i]) j++;
    if (levels[i]) out += `<rect x="${i}" width="${j - i}" height="1" class="${levels[i]}"/>`;
    i = j;
  }
  return out;
}

/** The class of each cell of region `g` split into `n` cells: data by density, zero, or hole. */
function contentCells(g: MapRegion, n: number): string[] {
  const len = g.end - g.start;
  const out: string[] = [];
  let k = 0;
  for (let i = 0; i < n; i++) {
    const s = g.start + (len * BigInt(i)) / BigInt(n);
    const e = g.start + (len * BigInt(i + 1)) / BigInt(n);
    let data = 0n, zero = 0n;
    while (k < g.runs.length && g.runs[k].end <= s) k++;
    for (let j = k; j < g.runs.length && g.runs[j].start < e; j++) {
      const r = g.runs[j];
      const o = (r.end < e ? r.end : e) - (r.start > s ? r.start : s);
      if (o <= 0n) continue;
      if (r.kind === "data") data += o;
      else if (r.kind === "zero") zero += o;
    }
    const size = e - s || 1n;
    if (data > 0n) out.push(`d${Math.max(1, Math.ceil((Number(data) / Number(size)) * 4))}`);
    else if (zero > 0n) out.push("z");
    else out.push("h");
  }
  return out;
}

/** The class of each cell for the pages that differ: `c1`..`c4` by share changed, `o` only in one image. */
function heatCells(g: MapRegion, n: number, runs: NonNullable<MemoryMap["diff"]>["runs"]): string[] {
  const len = g.end - g.start;
  const out: string[] = [];
  let k = 0; // runs are sorted by address: a cursor
  for (let i = 0; i < n; i++) {
    const s = g.start + (len * BigInt(i)) / BigInt(n);
    const e = g.start + (len * BigInt(i + 1)) / BigInt(n);
    let changed = 0n, only = 0n;
    while (k < runs.length && runs[k].end <= s) k++;
    for (let j = k; j < runs.length && runs[j].start < e; j++) {
      const r = runs[j];
      const o = (r.end < e ? r.end : e) - (r.start > s ? r.start : s);
      if (r.kind === "changed") changed += o;
      else only += o;
    }
    const size = Number(e - s) || 1;
    if (changed > 0n) out.push(`c${Math.max(1, Math.ceil((Number(changed) / size) * 4))}`);
    else if (only > 0n) out.push("o");
    else out.push("");
  }
  return out;
}

const STYLE = `
:root{--data:#1d4ed8;--zero:#7dd3fc;--hole:#e5e7eb;--ink:#111827;--mute:#6b7280;--line:#e5e7eb;--heat:#dc2626;--only:#9333ea}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:#f9fafb}
main{max-width:1280px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px}
.sub{color:var(--mute);margin:0 0 16px;word-break:break-all}
.mono,.addr{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace}
.chips{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 16px}
.chip{background:#fff;border:1px solid var(--line);border-radius:8px;padding:6px 12px}
.chip b{display:block;font-size:16px}
.chip span{color:var(--mute);font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:14px;align-items:center;color:#374151;font-size:13px;margin:8px 0 16px}
.sw{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:-2px;margin-right:5px;border:1px solid rgba(0,0,0,.12)}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin:0 0 16px}
.card h2{font-size:14px;margin:0 0 10px;color:#374151;font-weight:600}
svg.overview{width:100%;height:46px;display:block}
svg.overview rect{cursor:pointer}
svg.overview rect:hover{stroke:#111827;stroke-width:1.5}
.axis{display:flex;justify-content:space-between;color:var(--mute);font-size:12px;margin-top:4px}
.tools{display:flex;gap:16px;align-items:center;margin:0 0 10px;flex-wrap:wrap}
.tools input[type=search]{padding:6px 10px;border:1px solid #d1d5db;border-radius:6px;min-width:280px;font:inherit}
.row{display:grid;grid-template-columns:minmax(300px,380px) 1fr;gap:4px 18px;padding:8px 4px;border-top:1px solid var(--line)}
.row:target,.row.hi{background:#fefce8}
.meta{display:flex;gap:10px;align-items:baseline;min-width:0}
.meta .addr{font-size:12.5px;white-space:nowrap}
.meta .size{color:#374151;white-space:nowrap;margin-left:auto}
.what{grid-column:1;color:#374151;font-size:13px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.what .perms{font-family:ui-monospace,Menlo,monospace;color:var(--mute);margin-right:8px}
.what .kind{background:#f3f4f6;border-radius:4px;padding:0 6px;margin-right:8px;font-size:12px}
.viz{grid-column:2;grid-row:1 / span 2;min-width:0}
.bars{position:relative}
svg.bar,svg.heat{display:block;height:16px;border-radius:3px;overflow:hidden}
svg.heat{height:7px;margin-top:2px;background:#f9fafb;outline:1px solid #f3f4f6}
svg.bar.no{background:repeating-linear-gradient(135deg,#f3f4f6 0 5px,#e5e7eb 5px 10px)}
.why{font-size:12.5px;color:#374151;margin-top:4px}
.why.no{color:var(--mute)}
.why .ok{color:#15803d;font-weight:600}
.why .skip{color:#9a3412;font-weight:600}
.d1{fill:var(--data);opacity:.35}.d2{fill:var(--data);opacity:.55}.d3{fill:var(--data);opacity:.78}.d4{fill:var(--data)}
.z{fill:var(--zero)}.h{fill:var(--hole)}
.c1{fill:var(--heat);opacity:.35}.c2{fill:var(--heat);opacity:.55}.c3{fill:var(--heat);opacity:.78}.c4{fill:var(--heat)}
.o{fill:var(--only);opacity:.6}
.gap{fill:#fff}
.p{fill:var(--data)}.x{fill:#d1d5db}
#tip{position:fixed;pointer-events:none;background:#111827;color:#fff;font-size:12px;padding:6px 8px;border-radius:6px;display:none;max-width:520px;z-index:9}
#errors{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;padding:8px 12px;border-radius:8px;white-space:pre-wrap}
footer{color:var(--mute);font-size:12px;margin-top:24px}
`;

/** The page's script: tooltips with the address under the pointer, the filter, and the overview's links. */
const SCRIPT = `
const tip = document.getElementById("tip");
const fmt = (n) => { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2) : n) + " " + u[i]; };
function place(e, html) { tip.innerHTML = html; tip.style.display = "block"; tip.style.left = Math.min(e.clientX + 14, innerWidth - tip.offsetWidth - 8) + "px"; tip.style.top = (e.clientY + 16) + "px"; }
for (const svg of document.querySelectorAll("svg.bar, svg.heat")) {
  const row = svg.closest(".row");
  const start = BigInt(row.dataset.start), end = BigInt(row.dataset.end);
  svg.addEventListener("mousemove", (e) => {
    const box = svg.getBoundingClientRect();
    const f = Math.min(0.999999, Math.max(0, (e.clientX - box.left) / box.width));
    const page = BigInt(row.dataset.page);
    const at = (start + ((end - start) * BigInt(Math.floor(f * 1e6))) / 1000000n) / page * page;
    const cell = e.target.tagName === "rect" ? e.target.getAttribute("class") : "";
    const what = { d1: "some data", d2: "data, sparse", d3: "mostly data", d4: "data", z: "all-zero pages", h: "hole",
      c1: "a few pages differ", c2: "pages differ", c3: "most pages differ", c4: "every page differs", o: "only in one image" }[cell] || "";
    place(e, "<b>0x" + at.toString(16) + "</b> +" + fmt(Number(at - start)) + (what ? " · " + what : "") + "<br>" + row.dataset.label);
  });
  svg.addEventListener("mouseleave", () => { tip.style.display = "none"; });
}
for (const r of document.querySelectorAll("svg.overview rect[data-row]")) {
  r.addEventListener("mousemove", (e) => place(e, r.dataset.tip));
  r.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  r.addEventListener("click", () => {
    const row = document.getElementById(r.dataset.row);
    for (const x of document.querySelectorAll(".row.hi")) x.classList.remove("hi");
    row.classList.add("hi");
    row.scrollIntoView({ block: "center", behavior: "smooth" });
  });
}
const q = document.getElementById("q"), only = document.getElementById("only"), count = document.getElementById("count");
function filter() {
  const text = q.value.trim().toLowerCase();
  let shown = 0;
  for (const row of document.querySelectorAll(".row")) {
    const ok = (!only.checked || row.classList.contains("yes")) && (!text || row.textContent.toLowerCase().includes(text));
    row.style.display = ok ? "" : "none";
    if (ok) shown++;
  }
  count.textContent = shown + " of " + document.querySelectorAll(".row").length + " regions";
}
q.addEventListener("input", filter);
only.addEventListener("change", filter);
filter();
document.body.dataset.ready = "yes";
`;

/**
 * The HTML page of `map`.
 *
 * @param map The data (from `mapProcess` or `mapImage`).
 * @returns The page, self-contained.
 */
export function renderMapHtml(map: MemoryMap): string {
  const e = escapeHtml;
  const ps = map.pageSize;
  const maxUnits = Math.max(1, ...map.regions.map((g) => units(g.end - g.start, ps)));
  const src = map.source;
  const title = src.kind === "image" ? `${src.path} (pid ${src.pid})` : `pid ${src.pid}`;
  const t = map.totals;
  const d = map.diff;
  const chips = [
    [`${map.regions.length}`, "regions"],
    [humanBytes(t.mappedBytes), "mapped"],
    [humanBytes(t.persistedBytes), `in ${map.regions.filter((g) => g.persisted).length} persisted regions`],
    [humanBytes(t.dataBytes), src.kind === "image" ? "data in the image" : "data a checkpoint stores"],
    ...(src.kind === "process" ? [[humanBytes(t.zeroBytes), "all-zero pages (stored as holes)"]] : []),
    [
      humanBytes(t.holeBytes),
      src.kind === "image" ? "holes (unpopulated or zero)" : "holes (never populated)",
    ],
    ...(d
      ? [[
        `${d.differentPages} / ${d.comparedPages}`,
        `pages differ (${humanBytes(d.differentPages * ps)})`,
      ]]
      : []),
  ];
  // The overview: every region to scale on the log axis, a thin white break where unmapped space lies between.
  const gapUnits = 0.35;
  let x = 0;
  let overview = "";
  map.regions.forEach((g, i) => {
    if (i > 0 && map.regions[i - 1].end < g.start) {
      overview += `<rect class="gap" x="${x.toFixed(3)}" width="${gapUnits}" height="1"/>`;
      x += gapUnits;
    }
    const w = units(g.end - g.start, ps);
    const size = Number(g.end - g.start);
    const dens = g.persisted && size > 0 ? g.dataBytes / size : 0;
    const cls = g.persisted ? "p" : "x";
    const op = g.persisted ? (0.25 + 0.75 * dens).toFixed(2) : "1";
    const tipText = `<b>${e(hex(g.start))}–${e(hex(g.end))}</b> ${e(humanBytes(size))} ${e(g.perms)} ${
      e(g.kind)
    } ${e(g.path)}<br>${g.persisted ? "persisted" : "not persisted"}: ${e(g.reason)}`;
    overview += `<rect class="${cls}" data-row="r${i}" data-tip="${e(tipText)}" x="${x.toFixed(3)}" width="${
      w.toFixed(3)
    }" height="1" opacity="${op}"/>`;
    x += w;
  });
  const rows = map.regions.map((g, i) => {
    const size = g.end - g.start;
    const u = units(size, ps);
    const pct = ((u / maxUnits) * 100).toFixed(2);
    const n = Math.max(1, Math.round((u / maxUnits) * CELLS));
    const bar = g.persisted
      ? `<svg class="bar" style="width:${pct}%" viewBox="0 0 ${n} 1" preserveAspectRatio="none">${
        rects(contentCells(g, n))
      }</svg>`
      : `<svg class="bar no" style="width:${pct}%" viewBox="0 0 1 1" preserveAspectRatio="none"></svg>`;
    const heat = d && g.persisted
      ? `<svg class="heat" style="width:${pct}%" viewBox="0 0 ${n} 1" preserveAspectRatio="none">${
        rects(heatCells(g, n, d.runs.filter((r) => r.start < g.end && g.start < r.end)))
      }</svg>`
      : "";
    const content = g.persisted
      ? [
        `${humanBytes(g.dataBytes)} data`,
        ...(g.zeroBytes ? [`${humanBytes(g.zeroBytes)} zero`] : []),
        `${humanBytes(g.holeBytes)} holes`,
      ].join(", ")
      : "";
    const why = g.persisted
      ? `<div class="why"><span class="ok">persisted</span> · ${e(g.reason)} · ${content}</div>`
      : `<div class="why no"><span class="skip">not persisted</span> · ${e(g.reason)}</div>`;
    const label = `${humanBytes(size)} ${g.perms} ${g.kind} ${g.path}`;
    return `<div class="row ${g.persisted ? "yes" : "no"}" id="r${i}" data-start="${
      hex(g.start)
    }" data-end="${hex(g.end)}" data-page="${ps}" data-label="${e(label)}">
<div class="meta"><span class="addr">${hex(g.start)}–${hex(g.end)}</span><span class="size">${
      humanBytes(size)
    }</span></div>
<div class="what"><span class="perms">${e(g.perms)}</span><span class="kind">${e(g.kind)}</span>${
      e(g.path) || `<span style="color:#9ca3af">(no path)</span>`
    }</div>
<div class="viz"><div class="bars">${bar}${heat}</div>${why}</div>
</div>`;
  }).join("\n");
  const first = map.regions[0], last = map.regions[map.regions.length - 1];
  const legend = [
    `<span><i class="sw" style="background:var(--data)"></i>data</span>`,
    `<span><i class="sw" style="background:var(--data);opacity:.4"></i>sparse data</span>`,
    ...(src.kind === "process"
      ? [`<span><i class="sw" style="background:var(--zero)"></i>all-zero pages</span>`]
      : []),
    `<span><i class="sw" style="background:var(--hole)"></i>hole</span>`,
    `<span><i class="sw" style="background:repeating-linear-gradient(135deg,#f3f4f6 0 3px,#d1d5db 3px 6px)"></i>not persisted (gray above)</span>`,
    ...(d
      ? [
        `<span><i class="sw" style="background:var(--heat)"></i>pages that differ</span>`,
        `<span><i class="sw" style="background:var(--only);opacity:.6"></i>only in one image</span>`,
      ]
      : []),
    `<span style="color:var(--mute)">widths: log<sub>2</sub> of pages + 1</span>`,
  ].join("");
  const heading = d ? `${e(d.a)} → ${e(d.b)}` : e(title);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>cryo map: ${e(title)}</title>
<script>window.addEventListener("error",(ev)=>{const el=document.getElementById("errors");if(el){el.hidden=false;el.textContent+=(ev.message||String(ev))+"\\n";}});</script>
<style>${STYLE}</style></head>
<body><main>
<div id="errors" hidden></div>
<h1>cryo map · ${heading}</h1>
<p class="sub">${src.kind === "image" ? "image of" : "live process"} pid ${src.pid}: <span class="mono">${
    e(src.commandLine.join(" ")) || "(no command line)"
  }</span> · ${e(src.time)}</p>
${
    src.encrypted
      ? `<p class="sub">The image is encrypted: the regions it left out are recorded in its sections, which need the key, and are not shown.</p>`
      : ""
  }
<div class="chips">${
    chips.map(([b, s]) => `<div class="chip"><b>${e(b)}</b><span>${e(s)}</span></div>`).join("")
  }</div>
<div class="card"><h2>Address space (each region to scale on a log axis, in address order)</h2>
<svg class="overview" viewBox="0 0 ${x.toFixed(3)} 1" preserveAspectRatio="none">${overview}</svg>
<div class="axis"><span class="mono">${first ? hex(first.start) : ""}</span><span class="mono">${
    last ? hex(last.end) : ""
  }</span></div>
<div class="legend">${legend}</div></div>
<div class="card"><div class="tools"><input id="q" type="search" placeholder="filter: address, path, kind, reason…">
<label><input id="only" type="checkbox"> persisted only</label><span id="count" style="color:var(--mute)"></span></div>
${rows}
</div>
<footer>Written by cryo map. Self-contained: nothing is fetched. Hover a bar for the address under the pointer.</footer>
</main><div id="tip"></div>
<script>${SCRIPT}</script>
</body></html>
`;
}
