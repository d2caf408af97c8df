/**
 * What a child is doing when it stopped answering, for a failure message (`LineChild.request`'s timeout, a
 * test's assertion): its process-wide status lines (state, tracer, pending and blocked signals) and, per thread,
 * its name, state letter, wait channel, scheduling policy and the system call it is in
 * (`/proc/PID/task/TID/syscall`: number, arguments, stack and instruction pointers), then its descriptors and
 * what each names. A file that cannot be read (the thread left) shows `?`.
 *
 * @module
 */

/**
 * The report of process `pid`, one line per fact.
 *
 * @param pid The child.
 * @returns Lines; `pid N: gone` when it has exited.
 */
export function threadReport(pid: number): string {
  const read = (path: string) => {
    try {
      return Deno.readTextFileSync(path).trim();
    } catch {
      return "?";
    }
  };
  let tasks: string[];
  try {
    tasks = [...Deno.readDirSync(`/proc/${pid}/task`)].map((t) => t.name).sort((a, b) =>
      Number(a) - Number(b)
    );
  } catch {
    return `pid ${pid}: gone`;
  }
  const status = read(`/proc/${pid}/status`).split("\n").filter((l) => /^(State|TracerPid|Sig|Shd)/.test(l));
  const threads = tasks.map((tid) => {
    const d = `/proc/${pid}/task/${tid}`;
    const policy = read(`${d}/sched`).match(/policy\s*:\s*(\d+)/)?.[1] ?? "?";
    const state = read(`${d}/stat`).split(") ")[1]?.split(" ")[0] ?? "?";
    return `${tid} ${read(`${d}/comm`)} ${state} ${read(`${d}/wchan`)} policy ${policy} syscall ${
      read(`${d}/syscall`)
    }`;
  });
  let fds: string[] = [];
  try {
    fds = [...Deno.readDirSync(`/proc/${pid}/fd`)].map((e) => Number(e.name)).sort((a, b) => a - b).map(
      (fd) => {
        try {
          return `${fd}=${Deno.readLinkSync(`/proc/${pid}/fd/${fd}`)}`;
        } catch {
          return `${fd}=?`;
        }
      },
    );
  } catch { /* gone */ }
  return [`pid ${pid}:`, ...status, ...threads, `fds ${fds.join(" ")}`].join("\n");
}
