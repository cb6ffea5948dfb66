// Image files are produced under a temp name next to their final name and published only when whole:
// a crash or a failed tool never leaves a half-written image under the real name, and a failure
// removes the temp file. Temp names carry the writer's pid so a sweep can tell dead writers' leftovers.
import { randomBytes } from "node:crypto";
import { chmod, chown, link, lstat, open, readdir, realpath, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { syncDir } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";

/** Mode of new image files: they hold a guest's data (issue 9 D.12: files 0600). */
export const IMAGE_FILE_MODE = 0o600;

const TEMP_RE = /^\.(.+)\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/** `.NAME.PID.RANDOM.tmp` in the same directory (so rename/link stay on one filesystem). */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
}

export function existsError(path: string): VmhostError {
  return new VmhostError("exists", `${path} already exists; refusing to overwrite it`, 409);
}

/** Refuses early when something (even a dangling symlink) is at `path`. */
export async function refuseExisting(path: string): Promise<void> {
  try {
    await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  throw existsError(path);
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Runs `produce(tmp)` and publishes the result at `path`.
 * - "new": `path` must not exist; published with link(2), which fails if `path` appeared meanwhile,
 *   so nothing is ever overwritten; the file gets IMAGE_FILE_MODE.
 * - "replace": `path` must exist; published with rename(2) over it (over the file a symlink names),
 *   with its mode and owner kept.
 * The temp file is fsynced before and the directory after publishing, and removed on any failure.
 * Errors: `exists` (409) for "new" when `path` exists; whatever `produce` throws.
 */
export async function withStagedFile<T>(given: string, mode: "new" | "replace", produce: (tmp: string) => Promise<T>): Promise<T> {
  // Replacing through a symlink replaces the file it names, not the link.
  const path = mode === "replace" ? await realpath(given) : given;
  const original = mode === "replace" ? await stat(path) : undefined;
  if (mode === "new") await refuseExisting(path);
  const dir = dirname(path);
  const tmp = tempPathFor(path);
  let published = false;
  try {
    const result = await produce(tmp);
    await fsyncFile(tmp);
    if (original) {
      await chmod(tmp, original.mode & 0o7777);
      if (process.getuid?.() === 0) await chown(tmp, original.uid, original.gid);
      await rename(tmp, path);
      published = true;
    } else {
      await chmod(tmp, IMAGE_FILE_MODE);
      try {
        await link(tmp, path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EEXIST") throw existsError(path);
        throw err;
      }
    }
    await syncDir(dir);
    return result;
  } finally {
    if (!published) await unlink(tmp).catch(() => undefined);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes temp image files in `dir` left by writers that no longer run (a kill during convert or
 * create). Returns the removed paths. Call at service start for the disk directories.
 */
export async function sweepStaleTemps(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = TEMP_RE.exec(name);
    if (!m) continue;
    const pid = Number(m[2]);
    if (pid === process.pid || pidAlive(pid)) continue;
    const p = join(dir, name);
    const st = await lstat(p).catch(() => undefined);
    if (!st?.isFile()) continue;
    await unlink(p).catch(() => undefined);
    removed.push(p);
  }
  return removed;
}
