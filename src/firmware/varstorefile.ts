/**
 * Reading and atomically replacing a VARS file on disk (the write itself is util/atomic's:
 * temp file in the same directory, fsync, rename, fsync the directory), so a crash leaves
 * either the old or the new store, never a torn one. Errors name the file.
 */
import { readFile, stat } from "node:fs/promises";
import { writeFileAtomic } from "../util/atomic.js";
import { FirmwareError, VarStoreError } from "./errors.js";
import { parseVarStore, type VarStore } from "./varstore.js";

/**
 * Reads and parses a VARS file. Every failure is a VarStoreError naming `path`: IO when the
 * file cannot be read, otherwise the damage parseVarStore found (with its byte offset).
 */
export async function readVarStoreFile(path: string): Promise<VarStore> {
  let buf: Uint8Array;
  try {
    buf = await readFile(path);
  } catch (e) {
    throw new VarStoreError("IO", `cannot read: ${(e as Error).message}`, { cause: e, path });
  }
  try {
    return parseVarStore(buf, { path });
  } catch (e) {
    if (e instanceof VarStoreError) throw e;
    if (e instanceof FirmwareError) throw new VarStoreError("BAD_VARIABLE", e.message, { cause: e, path });
    throw e;
  }
}

/** Replaces `path` with the store's bytes, keeping the file's permission bits (new files: 0600). */
export async function writeVarStoreFileAtomic(path: string, store: VarStore): Promise<void> {
  let mode = 0o600;
  try {
    mode = (await stat(path)).mode & 0o777;
  } catch {
    // A new file.
  }
  try {
    await writeFileAtomic(path, store.toBuffer(), mode);
  } catch (e) {
    throw new VarStoreError("IO", `cannot write: ${(e as Error).message}`, { cause: e, path });
  }
}
