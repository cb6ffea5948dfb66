import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { link, lstat, open, stat, unlink } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { z } from "zod";
import { syncDir } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";

export { formatSize, parseSize } from "../util/size.js";

const execFileP = promisify(execFile);

export type DiskFormat = "vhdx" | "qcow2" | "raw";

export interface DiskInfo {
  path: string;
  format: string;
  virtualSize: number;
  actualSize: number;
  /** The backing file as qemu-img resolves it (relative names are taken relative to the overlay). */
  backingFile?: string;
  backingFormat?: string;
  dirty?: boolean;
}

const FORMAT_BY_EXT: Readonly<Record<string, DiskFormat>> = {
  ".vhdx": "vhdx",
  ".qcow2": "qcow2",
  ".img": "raw",
  ".raw": "raw",
};

export function formatFromPath(path: string): DiskFormat | undefined {
  const m = /\.[^./]+$/.exec(basename(path));
  return m ? FORMAT_BY_EXT[m[0].toLowerCase()] : undefined;
}

/**
 * qemu-img's location. images/ may not import engine/, so this mirrors host.ts's VMHOST_QEMU_IMG override;
 * execFile searches PATH for the bare name.
 */
function qemuImgBinary(): string {
  const env = process.env["VMHOST_QEMU_IMG"];
  return env && env.length > 0 ? env : "qemu-img";
}

async function qemuImg(args: string[]): Promise<string> {
  const bin = qemuImgBinary();
  try {
    const { stdout } = await execFileP(bin, args, { maxBuffer: 16 * 1024 * 1024, timeout: 120_000 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: unknown };
    if (e.code === "ENOENT") {
      throw new VmhostError("host-missing", `${bin} not found (install the Debian package qemu-utils, or set VMHOST_QEMU_IMG)`, 500);
    }
    const stderr = typeof e.stderr === "string" ? e.stderr.trim() : "";
    const msg = stderr.replace(/^qemu-img:\s*/gm, "") || e.message;
    throw new VmhostError("qemu-img", `qemu-img ${args[0] ?? ""} failed: ${msg}`);
  }
}

const SECTOR = 512;

function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new VmhostError("bad-size", `disk size must be a positive whole number of bytes, got ${sizeBytes}`);
  }
  // qemu-img would silently round up; say so instead.
  if (sizeBytes % SECTOR !== 0) {
    throw new VmhostError("bad-size", `disk size must be a multiple of ${SECTOR} bytes, got ${sizeBytes}`);
  }
}

async function refuseExisting(path: string): Promise<void> {
  try {
    await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  throw new VmhostError("exists", `${path} already exists; refusing to overwrite it`, 409);
}

/**
 * Lets qemu-img write a temp file next to `path`, fsyncs it, then hard-links it into place: link()
 * fails if `path` appeared meanwhile, so an existing file is never overwritten, and a crash never
 * leaves a half-written image under the real name.
 */
async function createInPlace(path: string, makeArgs: (target: string) => string[]): Promise<void> {
  await refuseExisting(path);
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  try {
    await qemuImg(makeArgs(tmp));
    const fh = await open(tmp, "r+");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") {
        throw new VmhostError("exists", `${path} already exists; refusing to overwrite it`, 409);
      }
      throw err;
    }
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  await syncDir(dir);
}

const FORMAT_RE = /^[a-z0-9_-]+$/;

/** A new empty disk. vhdx is dynamic (sparse, grows on write), as Hyper-V's default. */
export async function createDisk(path: string, sizeBytes: number, format: DiskFormat): Promise<void> {
  checkSize(sizeBytes);
  const opts: Record<DiskFormat, string[]> = {
    vhdx: ["-o", "subformat=dynamic"],
    qcow2: [],
    raw: [],
  };
  const extra = opts[format];
  if (!extra) throw new VmhostError("bad-format", `unknown disk format "${String(format)}" (use vhdx, qcow2 or raw)`);
  await createInPlace(path, (target) => ["create", "-q", "-f", format, ...extra, target, String(sizeBytes)]);
}

/**
 * A qcow2 copy-on-write overlay on `backing`, which is never written. The backing path is stored
 * absolute, so the overlay keeps working whatever the current directory of whoever opens it.
 */
export async function createOverlay(path: string, backing: string, backingFormat: DiskFormat | string): Promise<void> {
  if (!FORMAT_RE.test(backingFormat)) {
    throw new VmhostError("bad-format", `invalid backing format "${backingFormat}"`);
  }
  const absBacking = resolve(backing);
  try {
    const st = await stat(absBacking);
    if (!st.isFile() && !st.isBlockDevice()) throw new Error("not a file");
  } catch {
    throw new VmhostError("not-found", `backing image ${absBacking} not found`, 404);
  }
  await createInPlace(path, (target) => ["create", "-q", "-f", "qcow2", "-F", backingFormat, "-b", absBacking, target]);
}

const infoSchema = z
  .object({
    "virtual-size": z.number(),
    format: z.string(),
    "actual-size": z.number().optional(),
    "backing-filename": z.string().optional(),
    "full-backing-filename": z.string().optional(),
    "backing-filename-format": z.string().optional(),
    "dirty-flag": z.boolean().optional(),
  })
  .passthrough();

/**
 * `qemu-img info`. The format is probed unless given; -U reads images that a running VM holds locked.
 * vhdx reports no format-specific section, so there is no subformat here.
 */
export async function diskInfo(path: string, opts: { format?: DiskFormat | string } = {}): Promise<DiskInfo> {
  const args = ["info", "--output=json", "-U"];
  if (opts.format !== undefined) {
    if (!FORMAT_RE.test(opts.format)) throw new VmhostError("bad-format", `invalid disk format "${opts.format}"`);
    args.push("-f", opts.format);
  }
  const stdout = await qemuImg([...args, path]);
  let parsed: z.infer<typeof infoSchema>;
  try {
    parsed = infoSchema.parse(JSON.parse(stdout));
  } catch (err) {
    throw new VmhostError("qemu-img", `qemu-img info ${path}: unexpected output (${err instanceof Error ? err.message : String(err)})`, 500);
  }
  const info: DiskInfo = {
    path,
    format: parsed.format,
    virtualSize: parsed["virtual-size"],
    actualSize: parsed["actual-size"] ?? 0,
  };
  const backing = parsed["full-backing-filename"] ?? parsed["backing-filename"];
  if (backing !== undefined) info.backingFile = backing;
  if (parsed["backing-filename-format"] !== undefined) info.backingFormat = parsed["backing-filename-format"];
  if (parsed["dirty-flag"] !== undefined) info.dirty = parsed["dirty-flag"];
  return info;
}
