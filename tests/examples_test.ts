import { assertEquals, assertMatch } from "./_assert.ts";

const decoder = new TextDecoder();

async function runExample(name: string): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`../examples/${name}`, import.meta.url).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = decoder.decode(out.stdout);
  assertEquals(out.code, 0, text + decoder.decode(out.stderr));
  return text;
}

Deno.test("examples/arena_reload.ts persists, releases and lazily reloads a fixed-address arena", async () => {
  assertMatch(await runExample("arena_reload.ts"), /arena restored: every byte matches/);
});

Deno.test("examples/park_workers.ts snapshots a SharedArrayBuffer consistently with Workers parked", async () => {
  assertMatch(
    await runExample("park_workers.ts"),
    /snapshot: 4095 of 4095 pairs sum to 1000; workers had moved value: true/,
  );
});

Deno.test("examples/restore_pipeline.ts rolls a live Deno program back to its warm state", async () => {
  assertMatch(await runExample("restore_pipeline.ts"), /rolled back to the warm state/);
});
