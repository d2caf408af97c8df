// redis-server: on loopback, filled with DEBUG POPULATE; fingerprint DEBUG DIGEST. One connection throughout
// (its socket is kernel state a rollback does not touch; the client is idle at every checkpoint and rollback).
import { assertEquals } from "../_assert.ts";
import { fidelity } from "./_harness.ts";

/** A minimal RESP client. */
class Resp {
  readonly #conn: Deno.Conn;
  #buf = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  static async connect(port: number, timeoutMs = 20_000): Promise<Resp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return new Resp(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async #fill(): Promise<void> {
    const chunk = new Uint8Array(1 << 16);
    const n = await this.#conn.read(chunk);
    if (n === null) throw new Error("redis closed the connection");
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
  }

  async #line(): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf(13);
      if (i >= 0 && this.#buf[i + 1] === 10) {
        const s = new TextDecoder().decode(this.#buf.subarray(0, i));
        this.#buf = this.#buf.subarray(i + 2);
        return s;
      }
      await this.#fill();
    }
  }

  async #reply(): Promise<unknown> {
    const line = await this.#line();
    const rest = line.slice(1);
    switch (line[0]) {
      case "+":
        return rest;
      case "-":
        throw new Error(`redis: ${rest}`);
      case ":":
        return Number(rest);
      case "$": {
        const n = Number(rest);
        if (n < 0) return null;
        while (this.#buf.length < n + 2) await this.#fill();
        const s = new TextDecoder().decode(this.#buf.subarray(0, n));
        this.#buf = this.#buf.subarray(n + 2);
        return s;
      }
      case "*": {
        const out = [];
        for (let i = 0; i < Number(rest); i++) out.push(await this.#reply());
        return out;
      }
    }
    throw new Error(`redis: unexpected reply ${line}`);
  }

  async cmd(...args: (string | number)[]): Promise<unknown> {
    const parts = args.map(String);
    let text = `*${parts.length}\r\n`;
    for (const p of parts) text += `$${new TextEncoder().encode(p).length}\r\n${p}\r\n`;
    await this.#conn.write(new TextEncoder().encode(text));
    return await this.#reply();
  }

  /** Send and wait for the server to close the connection (SHUTDOWN). */
  async shutdown(): Promise<void> {
    await this.#conn.write(new TextEncoder().encode("*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n"));
    try {
      while ((await this.#conn.read(new Uint8Array(256))) !== null) { /* until closed */ }
    } catch { /* reset */ }
  }

  close(): void {
    try {
      this.#conn.close();
    } catch { /* closed */ }
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

fidelity({
  name: "redis-server",
  binary: "redis-server",
  async start() {
    const port = freePort();
    const dir = await Deno.makeTempDir({ prefix: "cryo-redis-" });
    const child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
        "--dir",
        dir,
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    let r: Resp | undefined;
    try {
      r = await Resp.connect(port);
      await r.cmd("DEBUG", "POPULATE", 200000, "key", 64);
      await r.cmd("HSET", "h", ...Array.from({ length: 2000 }, (_, i) => [`f${i}`, `v${i}`]).flat());
    } catch (e) {
      r?.close();
      try {
        Deno.kill(child.pid, "SIGKILL");
      } catch { /* gone */ }
      await child.status;
      throw e;
    }
    const redis = r;
    let closed = false;
    return {
      pid: child.pid,
      fingerprint: async () => String(await redis.cmd("DEBUG", "DIGEST")),
      async change(round) {
        await redis.cmd("DEBUG", "POPULATE", 300000, `new${round}`, 128);
        for (let i = 0; i < 50; i++) await redis.cmd("SET", `big${i}`, "x".repeat(1 << 20));
        await redis.cmd("DEL", ...Array.from({ length: 5000 }, (_, i) => `key:${2 * i + (round % 2)}`));
        await redis.cmd("DEL", ...Array.from({ length: 50 }, (_, i) => `big${i}`));
        await redis.cmd("HDEL", "h", "f1", "f2", "f3");
      },
      async use(round) {
        await redis.cmd("SET", "use", String(round));
        assertEquals(await redis.cmd("GET", "use"), String(round));
        assertEquals(await redis.cmd("DBSIZE"), 200002);
        await redis.cmd("DEL", "use");
      },
      async exit() {
        await redis.shutdown();
        return (await child.status).code;
      },
      async close() {
        if (closed) return;
        closed = true;
        redis.close();
        try {
          Deno.kill(child.pid, "SIGKILL");
        } catch { /* gone */ }
        await child.status;
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      },
    };
  },
});
