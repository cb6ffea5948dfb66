import { readFile } from "node:fs/promises";

/**
 * A process identity that survives pid reuse: the pid plus its start time in clock ticks
 * (field 22 of /proc/PID/stat).
 */
export async function processStartTime(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const start = Number(rest[19]);
    const state = rest[0];
    if (state === "Z" || state === "X") return undefined;
    return Number.isFinite(start) ? start : undefined;
  } catch {
    return undefined;
  }
}

export async function isSameProcessAlive(pid: number, startTime: number): Promise<boolean> {
  return (await processStartTime(pid)) === startTime;
}

export async function processCmdline(pid: number): Promise<string[]> {
  try {
    return (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").filter(Boolean);
  } catch {
    return [];
  }
}

/** Resident memory of a process in KiB (VmRSS), or undefined when it is gone. */
export async function processRssKiB(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export async function waitForExit(pid: number, startTime: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!(await isSameProcessAlive(pid, startTime))) return true;
    await sleep(25);
  }
  return !(await isSameProcessAlive(pid, startTime));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
