/**
 * A small long-running service: `cryo serve --socket PATH` answers JSON lines on a Unix socket, one reply line
 * per request: `{"op":"hibernate","pid":P,"image":PATH}`, `{"op":"wake","pid":P,"image":PATH,"lazy":true}`,
 * `{"op":"status"}` or `{"op":"status","pid":P}`. Replies are `{"ok":true,"result":…}` or
 * `{"ok":false,"error":"…"}`.
 *
 * Who may call: Deno's `Deno.listen({ transport: "unix" })` does not expose the peer's credentials
 * (SO_PEERCRED), so the socket file itself is the check. It is created with mode 0600 (bound inside a fresh
 * 0700 directory, made 0600, then renamed into place, so there is no moment where it is reachable with a wider
 * mode), and connecting to a Unix socket needs write permission on its file: only this user (and root, who
 * bypasses file permissions) can connect. The socket's directory must belong to this user (or root) and not be
 * writable by group or others, so nobody else can replace the socket with their own; the server refuses to
 * start otherwise.
 *
 * Requests run one at a time, in arrival order (a lazy wake replies when every page is back); `status` is
 * answered at once. An abort (SIGINT, SIGTERM) stops accepting, lets the running request finish (a lazy wake
 * finishes its loading eagerly) and removes the socket.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { markerDir } from "./recovery.ts";
import { keyFromFile } from "../codecs/keys.ts";
import { Sealer } from "../codecs/seal.ts";
import { parseCodec } from "../codecs/select.ts";
import { hibernate, type HibernationMarker, readHibernationMarker } from "./hibernate.ts";
import { type ProcessMemory, processMemory, processState } from "../kernel/process_status.ts";
import { wake } from "./wake.ts";

/** Options of {@link serve}. */
export interface ServeOptions {
  /** The socket's path. */
  socket: string;
  /** Stop serving: the running request finishes, then the socket is removed. */
  signal?: AbortSignal;
  /** Called once the socket accepts connections. */
  onListening?: () => void;
  /** Called after each request with its reply (for logging). */
  onRequest?: (request: unknown, reply: ServeReply) => void;
}

/** One reply line. */
export type ServeReply = { schema?: number } & ({ ok: true; result: unknown } | { ok: false; error: string });

/** What `status` says about one process. */
export interface HibernationStatus {
  /** The process. */
  pid: number;
  /** Whether it is hibernated (a marker names it and it is stopped). */
  hibernated: boolean;
  /** Its state letter (`T` stopped), or undefined when it does not exist. */
  state?: string;
  /** The marker, if any. */
  marker?: HibernationMarker;
  /** Its resident memory, when it exists. */
  memory?: ProcessMemory;
}

/**
 * The hibernation status of one process, or of every process a marker names.
 *
 * @param pid The process; omitted: every recorded one.
 * @returns One status per process.
 */
export function hibernationStatus(pid?: number): HibernationStatus[] {
  const pids: number[] = [];
  if (pid !== undefined) pids.push(pid);
  else {
    try {
      for (const e of Deno.readDirSync(markerDir())) {
        const m = e.name.match(/^hibernate-(\d+)\.json$/);
        if (m) pids.push(Number(m[1]));
      }
    } catch { /* no directory: nothing recorded */ }
  }
  return pids.sort((a, b) => a - b).map((p) => {
    const state = processState(p);
    const marker = state ? readHibernationMarker(p) : undefined;
    return {
      pid: p,
      hibernated: marker?.state === "hibernated" && state === "T",
      state,
      marker,
      memory: state ? processMemory(p) : undefined,
    };
  });
}

function field<T>(req: Record<string, unknown>, name: string, type: string, required = true): T {
  const v = req[name];
  if (v === undefined && !required) return undefined as T;
  if (typeof v !== type || (type === "number" && !Number.isSafeInteger(v))) {
    throw new TypeError(`"${name}" must be a ${type === "number" ? "pid (an integer)" : type}`);
  }
  return v as T;
}

/** Run one request. */
async function handle(req: Record<string, unknown>, signal?: AbortSignal): Promise<unknown> {
  const op = req.op;
  if (op === "status") return hibernationStatus(field<number | undefined>(req, "pid", "number", false));
  const pid = field<number>(req, "pid", "number");
  const image = field<string>(req, "image", "string");
  if (!image.startsWith("/")) throw new TypeError(`"image" must be an absolute path`);
  const keyFile = field<string | undefined>(req, "keyFile", "string", false);
  const key = keyFile ? await keyFromFile(keyFile, { strict: true }) : undefined;
  if (op === "hibernate") {
    const compress = field<string | undefined>(req, "compress", "string", false);
    return await hibernate(pid, image, {
      codec: compress ? parseCodec(compress) : undefined,
      sealer: key ? await Sealer.create(key) : undefined,
      signal,
    });
  }
  if (op === "wake") {
    return await wake(pid, image, {
      lazy: field<boolean | undefined>(req, "lazy", "boolean", false),
      key,
      signal,
    });
  }
  throw new TypeError(`unknown op ${JSON.stringify(op)}: one of hibernate, wake, status`);
}

/** The version of the reply lines' shape, first in every line (bumped when a key changes meaning). */
export const SERVE_SCHEMA = 1;

function replyLine(reply: ServeReply): string {
  return JSON.stringify(
    { schema: SERVE_SCHEMA, ...reply },
    (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v),
  ) + "\n";
}

/** Check that nobody but this user (or root) can replace what lies in `dir`. */
function checkDirectory(dir: string): void {
  const st = Deno.statSync(dir);
  const uid = Deno.uid() ?? 0;
  if ((st.uid !== uid && st.uid !== 0) || ((st.mode ?? 0) & 0o022) !== 0) {
    throw new CryoError(
      `Cannot serve on a socket in ${dir}: the directory must belong to uid ${uid} (or root) and not be ` +
        `writable by group or others (mode ${((st.mode ?? 0) & 0o777).toString(8)})`,
    );
  }
}

/**
 * Serve hibernate, wake and status requests on a Unix socket until `signal` aborts.
 *
 * @example Hibernate and wake through the service
 * ```ts ignore
 * const ac = new AbortController();
 * const done = serve({ socket: "/run/cryo/cryo.sock", signal: ac.signal });
 * await request("/run/cryo/cryo.sock", { op: "hibernate", pid, image: "/var/lib/app.cryo" });
 * ```
 *
 * @param opts The socket path, abort, callbacks.
 * @returns When serving has stopped and the socket is removed.
 * @throws {CryoError} When the socket's directory is not private enough, or the path exists.
 */
export async function serve(opts: ServeOptions): Promise<void> {
  const path = opts.socket.startsWith("/") ? opts.socket : `${Deno.cwd()}/${opts.socket}`;
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  checkDirectory(dir);
  try {
    Deno.lstatSync(path);
    throw new CryoError(
      `Cannot serve on ${path}: it exists (another cryo serve, or a stale socket: remove it)`,
    );
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  // Bound in a fresh private directory, made 0600, then moved into place: never reachable with a wider mode.
  const tmp = Deno.makeTempDirSync({ dir, prefix: ".cryo-serve-" });
  let listener: Deno.UnixListener;
  try {
    Deno.chmodSync(tmp, 0o700);
    listener = Deno.listen({ transport: "unix", path: `${tmp}/s` });
    Deno.chmodSync(`${tmp}/s`, 0o600);
    Deno.renameSync(`${tmp}/s`, path);
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
  const onAbort = () => listener.close();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  let queue: Promise<unknown> = Promise.resolve();
  const conns = new Set<Promise<void>>();
  const serveConn = async (conn: Deno.UnixConn) => {
    const enc = new TextEncoder();
    let buffered = "";
    const dec = new TextDecoder();
    try {
      for await (const chunk of conn.readable) {
        buffered += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (!line) continue;
          let reply: ServeReply;
          let req: unknown;
          try {
            req = JSON.parse(line);
            if (typeof req !== "object" || req === null || Array.isArray(req)) {
              throw new TypeError("a request is a JSON object");
            }
            const r = req as Record<string, unknown>;
            if (opts.signal?.aborted) throw new CryoError("Cannot serve the request: cryo serve is stopping");
            // status at once; everything else one at a time, in arrival order.
            const run = r.op === "status"
              ? handle(r)
              : (queue = queue.catch(() => {}).then(() => handle(r, opts.signal)));
            reply = { ok: true, result: await run };
          } catch (e) {
            reply = { ok: false, error: e instanceof Error ? e.message : String(e) };
          }
          opts.onRequest?.(req, reply);
          await conn.write(enc.encode(replyLine(reply)));
        }
      }
    } catch {
      /* the client went away */
    } finally {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  try {
    opts.onListening?.();
    for await (const conn of listener) {
      const p = serveConn(conn).finally(() => conns.delete(p));
      conns.add(p);
    }
  } catch (e) {
    if (!opts.signal?.aborted) throw e;
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    try {
      listener.close();
    } catch { /* closed */ }
    try {
      Deno.removeSync(path);
    } catch { /* gone */ }
    await queue.catch(() => {});
  }
}

/**
 * Send one request to a `cryo serve` socket and read its reply line.
 *
 * @param socket The socket's path.
 * @param req The request (`op`, `pid`, `image`, …).
 * @returns The reply.
 */
export async function request(socket: string, req: Record<string, unknown>): Promise<ServeReply> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    await conn.write(new TextEncoder().encode(JSON.stringify(req) + "\n"));
    let text = "";
    const dec = new TextDecoder();
    for await (const chunk of conn.readable) {
      text += dec.decode(chunk, { stream: true });
      if (text.includes("\n")) break;
    }
    return JSON.parse(text.slice(0, text.indexOf("\n"))) as ServeReply;
  } finally {
    try {
      conn.close();
    } catch { /* closed by the readable */ }
  }
}
