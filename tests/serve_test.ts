import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Target } from "./_target.ts";
import { CryoError } from "../lib/errors.ts";
import { processState } from "../lib/kernel/process_status.ts";
import { request, serve } from "../lib/ops/serve.ts";

const MiB = 1 << 20;

Deno.test("serve() answers hibernate, status and wake on a 0600 socket, one reply line each", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  const ac = new AbortController();
  const socket = `${dir}/cryo.sock`;
  let listening!: () => void;
  const ready = new Promise<void>((r) => (listening = r));
  const served = serve({ socket, signal: ac.signal, onListening: () => listening() });
  try {
    await ready;
    const st = Deno.lstatSync(socket);
    assert(st.isSocket, "a socket");
    assertEquals((st.mode ?? 0) & 0o777, 0o600);
    const a = await target.map(16 * MiB);
    await target.fill(a, 16 * MiB, "random", 2);
    const sum = await target.sum(a, 16 * MiB);
    const h = await request(socket, { op: "hibernate", pid: target.pid, image: `${dir}/t.cryo` });
    assert(h.ok, JSON.stringify(h));
    assert((h.result as { freedBytes: number }).freedBytes >= 15 * MiB);
    assertEquals(processState(target.pid), "T");
    const s = await request(socket, { op: "status", pid: target.pid });
    assert(s.ok && (s.result as { hibernated: boolean }[])[0].hibernated, JSON.stringify(s));
    const all = await request(socket, { op: "status" });
    assert(all.ok && (all.result as { pid: number }[]).some((x) => x.pid === target.pid));
    const bad = await request(socket, { op: "wake", pid: target.pid, image: `${dir}/other.cryo` });
    assert(!bad.ok && bad.error.includes("hibernated into"), JSON.stringify(bad));
    const unknown = await request(socket, { op: "explode" });
    assert(!unknown.ok);
    assertEquals([h.schema, unknown.schema], [1, 1], "every reply line names its schema");
    const w = await request(socket, { op: "wake", pid: target.pid, image: `${dir}/t.cryo`, lazy: true });
    assert(w.ok, JSON.stringify(w));
    assertEquals(await target.sum(a, 16 * MiB), sum);
  } finally {
    ac.abort();
    await served;
    await Deno.remove(dir, { recursive: true });
  }
  assert(!(await Deno.lstat(socket).then(() => true, () => false)), "socket removed");
});

Deno.test("serve() refuses a directory that others may write to", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.chmod(dir, 0o777);
    await assertRejects(() => serve({ socket: `${dir}/s` }), CryoError, "not be writable");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve()'s socket refuses another user (connect needs write permission on the 0600 file)", async () => {
  if (Deno.uid() !== 0) return; // needs root to run a client as nobody
  const dir = await Deno.makeTempDir();
  await Deno.chmod(dir, 0o755); // others may look up the socket: only its mode keeps them out
  const ac = new AbortController();
  let listening!: () => void;
  const ready = new Promise<void>((r) => (listening = r));
  const served = serve({ socket: `${dir}/s`, signal: ac.signal, onListening: () => listening() });
  try {
    await ready;
    const code =
      `try { await Deno.connect({ transport: "unix", path: "${dir}/s" }); console.log("connected"); }
      catch (e) { console.log(e.name); }`;
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      uid: 65534,
      gid: 65534,
      env: { DENO_DIR: "/tmp", HOME: "/tmp" },
      stderr: "null",
    }).output();
    assertEquals(new TextDecoder().decode(o.stdout).trim(), "PermissionDenied");
    assert((await request(`${dir}/s`, { op: "status" })).ok, "this user can");
  } finally {
    ac.abort();
    await served;
    await Deno.remove(dir, { recursive: true });
  }
});
