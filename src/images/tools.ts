// Spawning the disk-image tools (qemu-img, qemu-io, sfdisk, sgdisk): one home, always an argv array.
import { spawn } from "node:child_process";
import { VmhostError } from "../util/errors.js";

/**
 * A fraction of the work done, 0..1, never decreasing within one operation. Fed from qemu-img's `-p`
 * output ("    (42.00/100%)\r" on stdout, qemu-img(1) "-p: display progress bar").
 */
export type ProgressCallback = (fraction: number) => void;

export interface ToolRunOptions {
  /** When given, `-p`'s progress lines are parsed and reported; the caller adds `-p` to the argv. */
  onProgress?: ProgressCallback;
  /** Aborting kills the tool (SIGTERM); the run then fails with code "aborted". */
  signal?: AbortSignal;
  /** Exit codes that count as success (default [0]). */
  okCodes?: readonly number[];
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** qemu-img's location: $VMHOST_QEMU_IMG (as src/engine/qemu/host.ts honours it), else PATH. */
export function qemuImgBinary(): string {
  const env = process.env["VMHOST_QEMU_IMG"];
  return env && env.length > 0 ? env : "qemu-img";
}

const PACKAGE_OF: Readonly<Record<string, string>> = {
  "qemu-img": "qemu-utils",
  "qemu-io": "qemu-utils",
  sfdisk: "fdisk",
  sgdisk: "gdisk",
};

const PROGRESS_RE = /\((\d+(?:\.\d+)?)\/100%\)/g;
const MAX_OUTPUT = 16 * 1024 * 1024;

/**
 * Runs one tool to completion. Errors: `host-missing` (500) when the program is absent, `aborted`
 * when `signal` fired, `image-tool` with the tool's own message (its "qemu-img: " prefixes removed)
 * when it exits with a code not in `okCodes`. Settles only after the process has exited, so a caller
 * that removes a temp file afterwards never races the tool still writing it.
 */
export function runImageTool(bin: string, args: readonly string[], opts: ToolRunOptions = {}): Promise<ToolResult> {
  const name = bin.split("/").pop() ?? bin;
  const label = `${name} ${args[0] ?? ""}`.trim();
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(new VmhostError("aborted", `${label} was cancelled before it started`, 409));
      return;
    }
    const child = spawn(bin, args, { env: { ...process.env, LC_ALL: "C" }, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outSize = 0;
    let pending = "";
    let last = -1;
    let failure: Error | undefined;
    const fail = (e: Error): void => {
      if (failure) return;
      failure = e;
      child.kill("SIGTERM");
    };
    const onAbort = (): void => fail(new VmhostError("aborted", `${label} was cancelled`, 409));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (b: Buffer) => {
      outSize += b.length;
      if (outSize <= MAX_OUTPUT) out.push(b);
      if (!opts.onProgress || failure) return;
      pending += b.toString("latin1");
      // Progress lines end in \r; keep an unfinished tail for the next chunk.
      const cut = Math.max(pending.lastIndexOf("\r"), pending.lastIndexOf("\n"));
      if (cut < 0) return;
      const done = pending.slice(0, cut);
      pending = pending.slice(cut + 1);
      for (const m of done.matchAll(PROGRESS_RE)) {
        const f = Math.min(1, Number(m[1]) / 100);
        if (f > last) {
          last = f;
          try {
            opts.onProgress(f);
          } catch (e) {
            fail(e instanceof Error ? e : new Error(String(e)));
            return;
          }
        }
      }
    });
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e: NodeJS.ErrnoException) => {
      failure ??=
        e.code === "ENOENT"
          ? new VmhostError("host-missing", `${bin} not found (install the Debian package ${PACKAGE_OF[name] ?? name}${name === "qemu-img" ? ", or set VMHOST_QEMU_IMG" : ""})`, 500)
          : new VmhostError("image-tool", `${label} could not start: ${e.message}`, 500);
    });
    child.on("close", (code) => {
      opts.signal?.removeEventListener("abort", onAbort);
      const stdout = Buffer.concat(out).toString("utf8");
      const stderr = Buffer.concat(err).toString("utf8");
      if (failure) {
        reject(failure);
        return;
      }
      if (code !== null && (opts.okCodes ?? [0]).includes(code)) {
        if (opts.onProgress && last < 1) {
          try {
            opts.onProgress(1);
          } catch (e) {
            reject(e instanceof Error ? e : new Error(String(e)));
            return;
          }
        }
        resolve({ code, stdout, stderr });
        return;
      }
      const msg = stderr.trim().replace(new RegExp(`^${name}:\\s*`, "gm"), "") || stdout.trim() || `exit ${code ?? "by signal"}`;
      reject(new VmhostError("image-tool", `${label} failed: ${msg}`));
    });
  });
}

/** `qemu-img ARGS`, stdout on success. Errors as runImageTool's, with code "qemu-img". */
export async function qemuImg(args: readonly string[], opts: ToolRunOptions = {}): Promise<string> {
  try {
    return (await runImageTool(qemuImgBinary(), args, opts)).stdout;
  } catch (e) {
    if (e instanceof VmhostError && e.code === "image-tool") throw new VmhostError("qemu-img", e.message, e.status);
    throw e;
  }
}
