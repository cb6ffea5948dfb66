import { chmod, open } from "node:fs/promises";
import { z } from "zod";
import { qemuDriverOf, vhdFormatOfDriver } from "../images/format.js";
import { qemuImg, type ProgressCallback } from "../images/tools.js";
import type { DiskFormat } from "../model/schema.js";

/**
 * The qemu-img operations of checkpoints, each with explicit formats (never probed) and absolute
 * backing paths (qemu-img(1); notes §1: a relative backing name breaks when the overlay moves).
 * Used on images no running QEMU has open; the live equivalents are QMP block jobs (merge-run).
 */

const Info = z.object({ "virtual-size": z.number(), "full-backing-filename": z.string().optional(), "backing-filename-format": z.string().optional() }).passthrough();

/** The guest-visible size of an image in bytes; -U reads one a running VM holds. */
export async function virtualSize(path: string, format: DiskFormat): Promise<number> {
  return Info.parse(JSON.parse(await qemuImg(["info", "-U", "--output=json", "-f", qemuDriverOf(format), path])))["virtual-size"];
}

/**
 * The backing file an image's header names, with its recorded format (null: none, or a format
 * vmhost does not attach). The chain was checked when the disk was attached (service/disks.ts).
 */
export async function backingOf(path: string, format: DiskFormat): Promise<{ path: string; format: DiskFormat } | null> {
  if (format !== "qcow2") return null;
  const info = Info.parse(JSON.parse(await qemuImg(["info", "-U", "--output=json", "-f", "qcow2", path])));
  const file = info["full-backing-filename"];
  const f = vhdFormatOfDriver(info["backing-filename-format"] ?? "");
  return file && f ? { path: file, format: f } : null;
}

/**
 * A new qcow2 overlay at `path` reading `backing`. With `size` the backing file is not opened
 * (`-u`: a running QEMU may hold it locked); the size must then be the backing file's.
 */
export async function createOverlay(path: string, backing: { path: string; format: DiskFormat }, size?: number): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2", "-F", qemuDriverOf(backing.format), "-b", backing.path];
  if (size !== undefined) args.push("-u", path, String(size));
  else args.push(path);
  await qemuImg(args);
  await chmod(path, 0o600);
  const fh = await open(path, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes the data of qcow2 overlay `top` into its backing file `base` (`qemu-img commit -d`: the
 * overlay keeps its data, so an interrupted commit leaves every image readable and is simply run
 * again).
 */
export async function commitInto(top: string, base: { path: string; format: DiskFormat }, onProgress?: ProgressCallback): Promise<void> {
  await qemuImg(["commit", "-f", "qcow2", "-d", "-b", base.path, ...(onProgress ? ["-p"] : []), top], onProgress ? { onProgress } : {});
}

/**
 * Points qcow2 `image` at another backing file with the same content (`rebase -u`: only the
 * header changes). Idempotent.
 */
export async function repoint(image: string, backing: { path: string; format: DiskFormat }): Promise<void> {
  await qemuImg(["rebase", "-u", "-f", "qcow2", "-F", qemuDriverOf(backing.format), "-b", backing.path, image]);
}

/**
 * Makes qcow2 `image` read `backing` (null: nothing) instead of its present backing file,
 * copying whatever differs into it first (safe `rebase`). Run again after it finished, it finds
 * nothing to copy.
 */
export async function rebaseCopying(image: string, backing: { path: string; format: DiskFormat } | null, onProgress?: ProgressCallback): Promise<void> {
  const target = backing ? ["-F", qemuDriverOf(backing.format), "-b", backing.path] : ["-b", ""];
  await qemuImg(["rebase", "-f", "qcow2", ...target, ...(onProgress ? ["-p"] : []), image], onProgress ? { onProgress } : {});
}

const MapEntry = z.object({ depth: z.number(), data: z.boolean(), length: z.number() }).passthrough();

/** Whether a qcow2 overlay holds any data of its own (`qemu-img map`: depth 0 and data). False when it cannot be read. */
export async function overlayHasData(path: string): Promise<boolean> {
  try {
    const entries = z.array(MapEntry).parse(JSON.parse(await qemuImg(["map", "-U", "--output=json", "-f", "qcow2", path])));
    return entries.some((e) => e.depth === 0 && e.data);
  } catch {
    return false;
  }
}
