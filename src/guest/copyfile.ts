import { createHash, randomBytes } from "node:crypto";
import { open } from "node:fs/promises";
import { posix } from "node:path";
import { GuestAgentError, type AgentCaller } from "./agent.js";
import { execOk, execWait } from "./exec.js";
import { GuestFile, isDirectoryError, isNoSuchFile, READ_CHUNK, WRITE_CHUNK } from "./files.js";

/**
 * Guest Service Interface: Copy-VMFile (host to guest). The file goes in chunks through
 * guest-file-write into a temporary file next to the destination, is verified (size, and a
 * SHA-256 computed in the guest, or read back when the guest has no sha256sum), and only then
 * renamed over the destination: a failed copy never leaves a half file under the real name.
 */

export class CopyFileError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "CopyFileError";
  }
}

export interface CopyOptions {
  createFullPath: boolean;
  force: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface CopyResult {
  source: string;
  destination: string;
  bytes: number;
  sha256: string;
  /** How the guest's copy was checked: "sha256sum" in the guest, or "read-back" through the agent. */
  verifiedBy: "sha256sum" | "read-back";
  seconds: number;
}

export const MAX_GUEST_PATH = 4096;

export function checkGuestPath(p: string): void {
  if (!p.startsWith("/")) throw new CopyFileError("bad-path", `the destination "${p}" must be an absolute path in the guest`);
  if (p.includes("\0")) throw new CopyFileError("bad-path", "the destination contains a NUL character");
  if (p.length > MAX_GUEST_PATH) throw new CopyFileError("bad-path", `the destination is longer than ${MAX_GUEST_PATH} characters`);
  if (p.endsWith("/")) throw new CopyFileError("bad-path", `the destination "${p}" names a folder; give the full path of the file`);
}

export type GuestPathKind = "missing" | "file" | "directory";

/** What is at a guest path, found with guest-file-open/read alone (no exec needed). */
export async function guestPathKind(agent: AgentCaller, path: string): Promise<GuestPathKind> {
  let f: GuestFile;
  try {
    f = await GuestFile.open(agent, path, "r");
  } catch (err) {
    if (isNoSuchFile(err)) return "missing";
    if (isDirectoryError(err)) return "directory";
    throw err;
  }
  try {
    await f.read(1);
    return "file";
  } catch (err) {
    if (isDirectoryError(err)) return "directory";
    throw err;
  } finally {
    await f.close().catch(() => undefined);
  }
}

const SH = "/bin/sh";
const PATHS = "PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH";

async function guestSha256(agent: AgentCaller, path: string): Promise<string | undefined> {
  const r = await execWait(agent, SH, ["-c", `${PATHS}; exec sha256sum "$1"`, "vmhost-copy", path], 300_000);
  if (r.exitCode === 127) return undefined; // no sha256sum in this guest
  if (r.exitCode !== 0) throw new GuestAgentError("guest-exec", "ExitStatus", `sha256sum failed in the guest: ${r.stderr.slice(0, 200)}`);
  const m = /^([0-9a-f]{64})\b/i.exec(r.stdout.trim());
  if (!m) throw new GuestAgentError("guest-exec", "Protocol", "sha256sum in the guest printed no hash");
  return m[1]!.toLowerCase();
}

async function readBackSha256(agent: AgentCaller, path: string, limit: number): Promise<string> {
  const f = await GuestFile.open(agent, path, "r");
  const h = createHash("sha256");
  let total = 0;
  try {
    for (;;) {
      const { data, eof } = await f.read(READ_CHUNK);
      total += data.length;
      if (total > limit) throw new CopyFileError("verify-failed", `the copy in the guest is larger than the ${limit} bytes sent`);
      h.update(data);
      if (eof) break;
    }
  } finally {
    await f.close().catch(() => undefined);
  }
  return h.digest("hex");
}

async function removeGuestFile(agent: AgentCaller, path: string): Promise<void> {
  await execOk(agent, SH, ["-c", 'rm -f "$1"', "vmhost-copy", path], 30_000).catch(() => undefined);
}

export async function copyFileToGuest(agent: AgentCaller, source: string, destination: string, opts: CopyOptions): Promise<CopyResult> {
  const t0 = Date.now();
  checkGuestPath(destination);
  const src = await open(source, "r").catch((err: NodeJS.ErrnoException) => {
    throw new CopyFileError("source", `cannot read the source ${source}: ${err.code === "ENOENT" ? "it does not exist" : err.message}`);
  });
  try {
    const st = await src.stat();
    if (!st.isFile()) throw new CopyFileError("source", `the source ${source} is not a regular file`);
    const total = st.size;

    const kind = await guestPathKind(agent, destination);
    if (kind === "directory") throw new CopyFileError("destination", `${destination} is a folder in the guest; give the full path of the file`);
    if (kind === "file" && !opts.force) throw new CopyFileError("exists", `${destination} already exists in the guest; use --force to overwrite it`);
    const dir = posix.dirname(destination);
    const dirKind = await guestPathKind(agent, dir);
    if (dirKind === "file") throw new CopyFileError("destination", `${dir} is a file in the guest, not a folder`);
    if (dirKind === "missing") {
      if (!opts.createFullPath) throw new CopyFileError("destination", `the folder ${dir} does not exist in the guest; use --create-full-path to create it`);
      await execOk(agent, SH, ["-c", `${PATHS}; exec mkdir -p -- "$1"`, "vmhost-copy", dir], 30_000);
    }

    const tmp = posix.join(dir, `.${posix.basename(destination)}.vmhost-${randomBytes(4).toString("hex")}.partial`);
    const hash = createHash("sha256");
    const f = await GuestFile.open(agent, tmp, "w");
    let done = 0;
    try {
      const buf = Buffer.alloc(WRITE_CHUNK);
      opts.onProgress?.(0, total);
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, buf.length, done);
        if (bytesRead === 0) break;
        const part = buf.subarray(0, bytesRead);
        hash.update(part);
        await f.write(part);
        done += bytesRead;
        opts.onProgress?.(done, total);
      }
      await f.flush();
    } catch (err) {
      await f.close().catch(() => undefined);
      await removeGuestFile(agent, tmp);
      throw err;
    }
    await f.close();
    const sha256 = hash.digest("hex");

    try {
      const check = await GuestFile.open(agent, tmp, "r");
      const size = await check.size().finally(() => check.close().catch(() => undefined));
      if (size !== done) throw new CopyFileError("verify-failed", `the copy in the guest has ${size} bytes, ${done} were sent`);
      let verifiedBy: CopyResult["verifiedBy"] = "sha256sum";
      let guestHash = await guestSha256(agent, tmp);
      if (guestHash === undefined) {
        verifiedBy = "read-back";
        guestHash = await readBackSha256(agent, tmp, done);
      }
      if (guestHash !== sha256) throw new CopyFileError("verify-failed", `the copy in the guest has SHA-256 ${guestHash}, the source ${sha256}`);
      await execOk(agent, SH, ["-c", `${PATHS}; chmod 0644 "$1" && exec mv -f -- "$1" "$2"`, "vmhost-copy", tmp, destination], 30_000);
      return { source, destination, bytes: done, sha256, verifiedBy, seconds: (Date.now() - t0) / 1000 };
    } catch (err) {
      await removeGuestFile(agent, tmp);
      throw err;
    }
  } finally {
    await src.close();
  }
}
