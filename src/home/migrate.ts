import { mkdir, readdir, readFile, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic.js";
import type { HostLayout } from "./layout.js";

/** The home layout this vmhost writes. 1: VM folders named by VM name. 2: by VM id. */
export const HOME_LAYOUT_VERSION = 2;

const LayoutFile = z.object({ version: z.number().int().min(1) }).passthrough();

const ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface MigrationReport {
  from: number;
  to: number;
  /** VM folders renamed from their name to their id. */
  moved: { from: string; to: string }[];
  /** Folders left as they were, with the reason (reported, never guessed at). */
  skipped: { folder: string; reason: string }[];
}

/**
 * Opens a home written by an older vmhost under the current layout, with nothing lost.
 *
 * Layout 1 named each VM's folder by its name (`vms/web/`); layout 2 names it by the VM's id.
 * Each folder is renamed in one step (rename(2): atomic), one at a time, and the version stamp
 * is written last, so a kill at any moment leaves every VM either in its old folder or in its
 * new one and the next start simply goes on. A running VM's QEMU is unaffected: it holds its
 * console log and NVRAM open by descriptor (a rename keeps the inode), its sockets live in the
 * run directory, which is keyed by id in both layouts, and it is adopted by id.
 *
 * Throws only for I/O errors; folders that cannot be moved (no readable id, or the id's folder
 * exists) are left and reported.
 */
export async function migrateHome(layout: HostLayout): Promise<MigrationReport> {
  let version = 1;
  try {
    version = LayoutFile.parse(JSON.parse(await readFile(layout.layoutFile, "utf8"))).version;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw new Error(`${layout.layoutFile} is damaged: ${(err as Error).message}`);
  }
  const report: MigrationReport = { from: version, to: HOME_LAYOUT_VERSION, moved: [], skipped: [] };
  if (version >= HOME_LAYOUT_VERSION) return report;
  if (version < 2) await nameFoldersById(layout.vmsDir, report);
  await mkdir(layout.hostDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(layout.layoutFile, JSON.stringify({ version: HOME_LAYOUT_VERSION, migratedAt: new Date().toISOString() }) + "\n", 0o600);
  return report;
}

async function nameFoldersById(vmsDir: string, report: MigrationReport): Promise<void> {
  let entries: string[];
  try {
    entries = (await readdir(vmsDir, { withFileTypes: true })).filter((d) => d.isDirectory() && !d.name.startsWith(".")).map((d) => d.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  for (const folder of entries.sort()) {
    const file = join(vmsDir, folder, "vm.json");
    let id: unknown;
    try {
      id = (JSON.parse(await readFile(file, "utf8")) as { id?: unknown }).id;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // not a VM folder
      report.skipped.push({ folder, reason: `${file} cannot be read: ${(err as Error).message}` });
      continue;
    }
    if (typeof id !== "string" || !ID_RE.test(id)) {
      report.skipped.push({ folder, reason: `${file} holds no VM id` });
      continue;
    }
    if (folder === id) continue;
    const target = join(vmsDir, id);
    if (await stat(target).then(() => true, () => false)) {
      report.skipped.push({ folder, reason: `the folder for its id ${id} exists already` });
      continue;
    }
    await rename(join(vmsDir, folder), target);
    report.moved.push({ from: folder, to: id });
  }
}
