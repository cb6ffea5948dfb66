import { readdir, readFile } from "node:fs/promises";

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

/** A QEMU process found in /proc: its pid, start time and argv. */
export interface QemuProcess {
  pid: number;
  startTime: number;
  argv: string[];
}

/**
 * Every live QEMU system emulator on this host (argv[0] named qemu-system-*), found in /proc.
 * Used to adopt a VM's QEMU whose runtime record was never completed (a service killed right
 * after spawning it): vmhost gives every QEMU `-uuid <VM id>`.
 */
export async function findQemuProcesses(): Promise<QemuProcess[]> {
  const out: QemuProcess[] = [];
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const argv = await processCmdline(pid);
    if (!argv[0] || !/(^|\/)qemu-system-[^/]*$/.test(argv[0])) continue;
    const startTime = await processStartTime(pid);
    if (startTime !== undefined) out.push({ pid, startTime, argv });
  }
  return out;
}

/** The value after `-uuid` in a QEMU argv, lower case. */
export function qemuUuid(argv: string[]): string | undefined {
  const i = argv.indexOf("-uuid");
  return i >= 0 ? argv[i + 1]?.toLowerCase() : undefined;
}

/** The QMP socket path a QEMU was started with (`-chardev socket,id=qmp0,path=...`). */
export function qemuQmpSocket(argv: string[]): string | undefined {
  for (let i = 0; i + 1 < argv.length; i++) {
    if (argv[i] !== "-chardev") continue;
    const spec = argv[i + 1]!;
    if (!/(^|,)id=qmp0(,|$)/.test(spec)) continue;
    // QEMU doubles commas inside values.
    const m = /(?:^|,)path=((?:[^,]|,,)*)/.exec(spec);
    if (m) return m[1]!.replaceAll(",,", ",");
  }
  return undefined;
}
