/**
 * Reading and atomically replacing a VARS file on disk. The write goes to a temporary file in
 * the same directory, is fsynced, renamed over the target, and the directory is fsynced, so a
 * crash leaves either the old or the new store, never a torn one.
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { open, readFile, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { FirmwareError, VarStoreError } from "./errors.js";
import { parseVarStore, type VarStore } from "./varstore.js";

export async function readVarStoreFile(path: string): Promise<VarStore> {
  let buf: Uint8Array;
  try {
    buf = await readFile(path);
  } catch (e) {
    throw new VarStoreError("IO", `cannot read: ${(e as Error).message}`, { cause: e, path });
  }
  try {
    return parseVarStore(buf);
  } catch (e) {
    if (e instanceof VarStoreError) throw new VarStoreError(e.code, e.message, { cause: e, path });
    if (e instanceof FirmwareError) throw new VarStoreError("BAD_VARIABLE", e.message, { cause: e, path });
    throw e;
  }
}

export async function writeVarStoreFileAtomic(path: string, store: VarStore): Promise<void> {
  const bytes = store.toBuffer();
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  let mode = 0o600;
  try {
    mode = (await stat(path)).mode & 0o777;
  } catch {
    // New file: keep the default.
  }
  try {
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    const dh = await open(dir, constants.O_RDONLY);
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw new VarStoreError("IO", `cannot write: ${(e as Error).message}`, { cause: e, path });
  }
}
