import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { eta, statusLine, type StatusState } from "../lib/cli/progress.ts";
import { PHASES } from "../lib/ops/progress.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;

function state(over: Partial<StatusState>): StatusState {
  return { command: "checkpoint", phase: "read", phaseStart: 0, done: 0, samples: [], ...over };
}

Deno.test("statusLine() fits every width from 12 to 200 columns, in every kind of phase", () => {
  const now = 10_000;
  const samples = [{ t: 7_000, done: 1 << 30 }, { t: 9_000, done: 2 << 30 }, { t: now, done: 3 << 30 }];
  const states = [
    state({ total: 8 << 30, done: 3 << 30, samples, stoppedAt: 100 }),
    state({ total: 8 << 30, done: 3 << 30, samples, stoppedMs: 1234.5, command: "hibernate" }),
    state({ phase: "sync", total: undefined, stoppedMs: 80 }),
    state({ phase: "write", total: undefined, done: 5 << 20, stoppedAt: 9_000 }),
    state({ phase: undefined, total: undefined }),
  ];
  for (const s of states) {
    for (let cols = 12; cols <= 200; cols++) {
      const line = statusLine(s, cols, now);
      assert(line.length <= cols - 1, `${line.length} characters at ${cols} columns: "${line}"`);
      assert(![..."\r\n\x1b"].some((c) => line.includes(c)), line);
      if (s.phase) assert(line.includes(s.phase), `no phase at ${cols} columns: "${line}"`);
      if (cols >= 30 && s.stoppedAt !== undefined) assert(line.includes("FROZEN"), line);
      if (cols >= 40 && s.stoppedMs !== undefined) assert(line.includes("was frozen"), line);
    }
  }
});

Deno.test("statusLine() shows no percentage for an uncounted step and 100% only when every byte is done", () => {
  assert(!statusLine(state({ phase: "sync" }), 80, 5_000).includes("%"));
  assert(statusLine(state({ total: 1000, done: 999 }), 80, 5_000).includes(" 99%"));
  assert(statusLine(state({ total: 1000, done: 1000 }), 80, 5_000).includes("100%"));
});

Deno.test("eta() says nothing on a slow first frame, before the rate settles, or when it swings", () => {
  const mib = 1 << 20;
  // The first compressed frame of 560 KiB: 16 KiB after 300 ms (the old bar said "ETA 1327m59s" here).
  assertEquals(
    eta(state({ total: 560 << 10, done: 16 << 10, samples: [{ t: 0, done: 0 }] }), 300),
    undefined,
  );
  // Steady at 100 MiB/s for 3 s of 1 GiB: about 7 s left.
  const steady = [0, 1000, 2000, 3000].map((t) => ({ t, done: (t / 1000) * 100 * mib }));
  const left = eta(state({ total: 1024 * mib, done: 300 * mib, samples: steady }), 3000)!;
  assert(left > 6000 && left < 8000, `${left} ms`);
  // A rate that has just jumped tenfold: not settled.
  const jump = [0, 1000, 1500, 2000, 2500, 3000].map((t) => ({
    t,
    done: (t < 2500 ? t / 1000 : t / 50) * mib,
  }));
  assertEquals(eta(state({ total: 1024 * mib, done: 40 * mib, samples: jump }), 3000), undefined);
  // Too little done to tell.
  assertEquals(
    eta(state({ total: 1 << 40, done: mib, samples: [{ t: 0, done: 0 }, { t: 2000, done: mib }] }), 2000),
    undefined,
  );
});

/** Run `cryo args` in a pseudo-terminal of `cols` columns (util-linux `script`); its output and wall time. */
async function underPty(args: string[], cols: number): Promise<{ code: number; text: string; ms: number }> {
  const quote = (a: string) => `'${a.replaceAll("'", `'\\''`)}'`;
  const command = `stty cols ${cols} rows 24; exec ${quote(Deno.execPath())} run -A ${
    [cli, ...args].map(quote).join(" ")
  }`;
  const started = performance.now();
  const out = await new Deno.Command("script", {
    args: ["-qfec", command, "/dev/null"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { CRYO_PROGRESS_DELAY_MS: "0" },
  }).output();
  return { code: out.code, text: new TextDecoder().decode(out.stdout), ms: performance.now() - started };
}

interface Frame {
  /** The visible text. */
  text: string;
  /** Its phase. */
  phase: string;
}

// deno-lint-ignore no-control-regex -- escape sequences are what is removed
const strip = (s: string) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");

/**
 * The progress frames of a pty's output: every redraw starts with CR and an erase; none may hold a line feed
 * (all of them stay on one line), and the command's own output comes after the last.
 */
function framesOf(text: string, cols: number, notes?: RegExp): Frame[] {
  // The terminal turns each line feed into CR LF: a part followed by one starting with LF is a line of output.
  const all = text.split("\r");
  const frames: Frame[] = [];
  let output = false;
  for (const [i, p] of all.entries()) {
    if (all[i + 1]?.startsWith("\n") || p.startsWith("\n")) {
      const line = strip(p).trim();
      if (line && !notes?.test(line)) output = true;
      continue;
    }
    if (!p.startsWith("\x1b[2K")) continue;
    const visible = strip(p);
    if (visible === "") continue;
    assert(!output, `a redraw after the command's output: ${JSON.stringify(visible)}`);
    assert(visible.length <= cols - 1, `${visible.length} columns at ${cols}: ${JSON.stringify(visible)}`);
    const phase = visible.split(" ").slice(0, 2).find((w) => (PHASES as readonly string[]).includes(w));
    assert(phase, `no phase in ${JSON.stringify(visible)}`);
    frames.push({ text: visible, phase });
  }
  assert(frames.length > 0, `no progress drawn:\n${text}`);
  return frames;
}

/** The phases in the order drawn, each once. */
function phasesOf(frames: Frame[]): string[] {
  const out: string[] = [];
  for (const f of frames) if (out[out.length - 1] !== f.phase) out.push(f.phase);
  return out;
}

/**
 * The stop window as drawn: no marker before phase `from`, FROZEN from then on, and once "was frozen" is
 * drawn (the target runs again), never FROZEN again.
 */
function stopWindow(frames: Frame[], from: string): void {
  const first = frames.findIndex((f) => f.phase === from);
  assert(first >= 0, `no ${from} phase`);
  for (const f of frames.slice(0, first)) assert(!/FROZEN|was frozen/.test(f.text), f.text);
  let thawed = false;
  for (const f of frames.slice(first)) {
    if (/was frozen \d/.test(f.text)) thawed = true;
    else if (f.phase !== "freeze" || f !== frames[first]) {
      assert(
        !thawed && f.text.includes("FROZEN"),
        `${thawed ? "FROZEN after the thaw" : "no marker"}: ${f.text}`,
      );
    }
  }
}

/** Every ETA drawn, in milliseconds. */
function etasOf(frames: Frame[]): number[] {
  const units: Record<string, number> = { "µs": 0.001, ms: 1, s: 1000 };
  return frames.flatMap((f) => {
    const m = /ETA (?:(\d+)m(\d+)s|([\d.]+) (µs|ms|s))/.exec(f.text);
    if (!m) return [];
    return [m[1] ? (Number(m[1]) * 60 + Number(m[2])) * 1000 : Number(m[3]) * units[m[4]]];
  });
}

Deno.test("cryo checkpoint --compress at 60 columns: one line, freeze read sync transcode sync, FROZEN while read", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(256 << 20);
    await target.fill(a, 128 << 20, "random", 1);
    await target.fill(a + (128n << 20n), 128 << 20, "text", 2);
    const run = await underPty(
      ["checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`, "--compress", "zstd"],
      60,
    );
    assertEquals(run.code, 0, run.text);
    const frames = framesOf(run.text, 60);
    assertEquals(phasesOf(frames), ["freeze", "read", "sync", "transcode", "sync"]);
    for (const f of frames.filter((f) => f.phase === "read" && !f.text.includes("100%"))) {
      assert(f.text.includes("FROZEN"), f.text);
    }
    for (const f of frames.filter((f) => f.phase === "transcode" || f.phase === "sync")) {
      assert(/was frozen \d/.test(f.text) && !f.text.includes("FROZEN"), f.text);
      if (f.phase === "sync") assert(!f.text.includes("%"), `a percentage while syncing: ${f.text}`);
    }
    // Sane: rates change under load, but never by the hundredfold of "ETA 1327m59s" on a command of seconds.
    for (const ms of etasOf(frames)) assert(ms < 3 * run.ms, `ETA ${ms} ms in a command of ${run.ms} ms`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo verify, restore, hibernate, diff and wake draw their phases at 60 columns", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(128 << 20);
    await target.fill(a, 128 << 20, "random", 3);
    const image = `${dir}/a.cryo`;
    const pid = String(target.pid);
    assertEquals((await underPty(["checkpoint", "--pid", pid, "-o", image, "-q"], 60)).code, 0);

    const verify = await underPty(["verify", image], 60);
    assertEquals(verify.code, 0, verify.text);
    assertEquals(phasesOf(framesOf(verify.text, 60)), ["verify"]);

    const restore = await underPty(["restore", "--pid", pid, image], 60);
    assertEquals(restore.code, 0, restore.text);
    const rf = framesOf(restore.text, 60);
    assertEquals(phasesOf(rf), ["verify", "freeze", "write"]);
    // Stopped while it writes; redraws after it runs again (the journal is dropped) say for how long it was.
    stopWindow(rf, "freeze");
    assert(rf.some((f) => f.phase === "write" && f.text.includes("FROZEN")));

    const hib = `${dir}/h.cryo`;
    const hibernate = await underPty(["hibernate", "--pid", pid, "-o", hib, "--compress", "lz4"], 60);
    assertEquals(hibernate.code, 0, hibernate.text);
    const hf = framesOf(hibernate.text, 60);
    // Hibernation keeps the target stopped to the end: no "was frozen", ever.
    assertEquals(phasesOf(hf).filter((p) => p !== "sync"), ["freeze", "read", "transcode", "release"]);
    for (const f of hf.filter((f) => f.phase !== "freeze")) assert(f.text.includes("FROZEN"), f.text);

    const compare = await underPty(["diff", image, hib], 60);
    assert(compare.code === 0 || compare.code === 1, compare.text); // 1: they differ, like cmp
    assertEquals(phasesOf(framesOf(compare.text, 60)), ["compare"]);

    const wake = await underPty(["wake", "--pid", pid, hib], 60);
    assertEquals(wake.code, 0, wake.text);
    const wf = framesOf(wake.text, 60);
    assertEquals(phasesOf(wf), ["verify", "decode", "freeze", "write"]);
    stopWindow(wf, "verify"); // a hibernated process is stopped from the start

    // A lazy wake: the process runs again once the eager part is written; the rest is filled in meanwhile.
    assertEquals((await underPty(["hibernate", "--pid", pid, "-o", hib, "-q"], 60)).code, 0);
    const lazy = await underPty(["wake", "--pid", pid, "--lazy", hib], 60);
    assertEquals(lazy.code, 0, lazy.text);
    const lf = framesOf(lazy.text, 60, /^cryo wake: pid \d+ runs again/);
    assertEquals(phasesOf(lf), ["verify", "freeze", "write", "fill"]);
    stopWindow(lf, "verify");
    for (const f of lf.filter((f) => f.phase === "fill")) assert(/was frozen \d/.test(f.text), f.text);
    for (const ms of etasOf([...rf, ...hf, ...wf, ...lf])) assert(ms < 60_000, `ETA ${ms} ms`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint --live at 60 columns: the target runs again (was frozen) while its memory is read", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(256 << 20);
    await target.fill(a, 256 << 20, "random", 4);
    const run = await underPty(
      ["checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`, "--live"],
      60,
    );
    assertEquals(run.code, 0, run.text);
    const frames = framesOf(run.text, 60);
    assertEquals(phasesOf(frames), ["freeze", "read", "sync"]);
    // Two stops, both in the freeze phase: the arm's (the userfaultfd) and the freeze's (docs/LIVE.md).
    let thaws = 0, frozen = false;
    for (const f of frames.filter((f) => f.phase === "freeze")) {
      if (f.text.includes("FROZEN")) frozen = true;
      else if (/was frozen \d/.test(f.text) && frozen) {
        thaws++;
        frozen = false;
      }
    }
    assert(thaws <= 2, `${thaws} stops drawn`);
    for (const f of frames.filter((f) => f.phase !== "freeze")) assert(/was frozen \d/.test(f.text), f.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
