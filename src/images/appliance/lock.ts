// A build lock shared by processes (parallel tests): a file created with O_EXCL that names its
// owner's pid. A lock whose owner has died is stale and is taken over.
import { hostname } from "node:os";
import { open, readFile, unlink } from "node:fs/promises";

interface LockInfo {
  pid: number;
  host: string;
  since: string;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function readLock(path: string): Promise<{ raw: string; info?: LockInfo } | undefined> {
  let raw: string;
  try {
    raw = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  try {
    const v = JSON.parse(raw) as Partial<LockInfo>;
    if (typeof v.pid === "number" && typeof v.host === "string") return { raw, info: { pid: v.pid, host: v.host, since: String(v.since) } };
  } catch {
    // fall through: unreadable content
  }
  return { raw };
}

export interface LockOptions {
  /** Give up after this long (default 20 minutes: a cold build downloads ~75 MB). */
  timeoutMs?: number;
  pollMs?: number;
  log?: (line: string) => void;
}

export class LockTimeoutError extends Error {}

/** Takes the lock at `path`, waiting while a live process holds it. Returns the release function. */
export async function acquireLock(path: string, opts: LockOptions = {}): Promise<() => Promise<void>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 20 * 60_000);
  const poll = opts.pollMs ?? 200;
  const me: LockInfo = { pid: process.pid, host: hostname(), since: new Date().toISOString() };
  const content = JSON.stringify(me) + "\n";
  let announced = false;
  let unparsableSince: number | undefined;
  for (;;) {
    try {
      const fh = await open(path, "wx", 0o644);
      try {
        await fh.writeFile(content);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return async () => {
        const cur = await readLock(path);
        if (cur?.raw === content) await unlink(path).catch(() => undefined);
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const cur = await readLock(path);
    if (cur) {
      let stale = false;
      if (cur.info) {
        unparsableSince = undefined;
        // A pid on another host (shared cache directory) cannot be checked: wait for it.
        stale = cur.info.host === me.host && !pidAlive(cur.info.pid);
        if (!stale && !announced) {
          opts.log?.(`waiting for the appliance build of pid ${cur.info.pid} (lock ${path})`);
          announced = true;
        }
      } else {
        // Written between open and write by its owner, or damaged: stale if it stays so.
        unparsableSince ??= Date.now();
        stale = Date.now() - unparsableSince > 5_000;
      }
      if (stale) {
        // Re-read right before removing so a lock taken over meanwhile by someone else survives.
        const again = await readLock(path);
        if (again?.raw === cur.raw) {
          opts.log?.(`removing stale lock ${path} (${cur.info ? `pid ${cur.info.pid} is gone` : "unreadable"})`);
          await unlink(path).catch(() => undefined);
        }
        continue;
      }
    }
    if (Date.now() > deadline) throw new LockTimeoutError(`timed out waiting for lock ${path}`);
    await new Promise((r) => setTimeout(r, poll));
  }
}
