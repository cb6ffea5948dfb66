// The service's entry points for disk images (createDisk, createOverlay, diskInfo, formatFromPath),
// kept with their signatures; the work is done by format.ts (explicit formats), chain.ts (backing
// chains), staging.ts (whole-or-absent outputs) and vhd.ts (the VHD tools).
import { resolve } from "node:path";
import { VmhostError } from "../util/errors.js";
import { qemuImgInfo } from "./chain.js";
import { checkDeclaredFormat, formatFromExtension, isVhdFormat, qemuDriverOf, vhdFormatOfDriver, type VhdFormat } from "./format.js";
import { withStagedFile } from "./staging.js";
import { qemuImg } from "./tools.js";

export { formatSize, parseSize } from "../util/size.js";

/**
 * The formats the VM configuration stores today (src/model/schema.ts DiskFormat). VhdFormat (format.ts)
 * adds "vhd"; the configuration schema needs it too before a VHD can be attached.
 */
export type DiskFormat = "vhdx" | "qcow2" | "raw";

export interface DiskInfo {
  path: string;
  /** QEMU's driver name ("vpc" for a VHD). */
  format: string;
  virtualSize: number;
  actualSize: number;
  /** The backing file as qemu-img resolves it (relative names are taken relative to the overlay). */
  backingFile?: string;
  backingFormat?: string;
  dirty?: boolean;
}

/**
 * The format a file's extension declares, among the configuration's formats (.vhd gives undefined here
 * until the configuration accepts "vhd"; formatFromExtension in format.ts knows it).
 * @deprecated use formatFromExtension (format.ts), and checkDeclaredFormat to check the content.
 */
export function formatFromPath(path: string): DiskFormat | undefined {
  const f = formatFromExtension(path);
  return f === "vhd" ? undefined : f;
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

/**
 * A new empty disk, published whole (temp file, then link(2): never overwrites). vhdx and vhd are
 * dynamic (sparse, grow on write), as Hyper-V's default; a VHD's size is exact (force_size=on).
 * For a fixed disk or a differencing one use newVhd (vhd.ts).
 * Errors: `bad-size`, `bad-format`, `exists` (409), `qemu-img`.
 */
export async function createDisk(path: string, sizeBytes: number, format: DiskFormat | VhdFormat): Promise<void> {
  checkSize(sizeBytes);
  if (!isVhdFormat(format)) throw new VmhostError("bad-format", `unknown disk format "${String(format)}" (use vhdx, vhd, qcow2 or raw)`);
  const opts: Record<VhdFormat, string[]> = {
    vhdx: ["-o", "subformat=dynamic"],
    vhd: ["-o", "subformat=dynamic,force_size=on"],
    qcow2: [],
    raw: [],
  };
  await withStagedFile(path, "new", (tmp) => qemuImg(["create", "-q", "-f", qemuDriverOf(format), ...opts[format], tmp, String(sizeBytes)]));
}

function backingFormatOf(s: string): VhdFormat {
  const f = isVhdFormat(s) ? s : vhdFormatOfDriver(s);
  if (!f) throw new VmhostError("bad-format", `invalid backing format "${s}" (use vhdx, vhd, qcow2 or raw)`);
  return f;
}

/**
 * A qcow2 copy-on-write overlay on `backing`, which is never written. The backing path is stored
 * absolute with its format, so the overlay keeps working whatever the current directory of whoever
 * opens it, and QEMU never probes the backing file. The backing file's content must agree with
 * `backingFormat` (checkDeclaredFormat), and it must be a regular file.
 * Errors: `bad-format`, `not-found` (404), `not-a-regular-file`, `image-format-mismatch`, `exists`, `qemu-img`.
 */
export async function createOverlay(path: string, backing: string, backingFormat: DiskFormat | VhdFormat | string): Promise<void> {
  const format = backingFormatOf(backingFormat);
  const absBacking = resolve(backing);
  try {
    await checkDeclaredFormat(absBacking, format);
  } catch (err) {
    if (err instanceof VmhostError && err.code === "not-found") throw new VmhostError("not-found", `backing image ${absBacking} not found`, 404);
    throw err;
  }
  await withStagedFile(path, "new", (tmp) => qemuImg(["create", "-q", "-f", "qcow2", "-F", qemuDriverOf(format), "-b", absBacking, tmp]));
}

/**
 * `qemu-img info` of one image, with an explicit format: `opts.format` if given, else the file's
 * extension; either way checked against the content first (checkDeclaredFormat), so QEMU never probes.
 * The backing chain is not followed or checked: walkBackingChain (chain.ts) does that. -U reads images
 * a running VM holds locked.
 * Errors: checkDeclaredFormat's (`format-unknown` for a name without a known extension,
 * `image-format-mismatch`, `not-found`, ...), `qemu-img`.
 */
export async function diskInfo(path: string, opts: { format?: DiskFormat | VhdFormat | string } = {}): Promise<DiskInfo> {
  const declared = opts.format === undefined ? undefined : isVhdFormat(opts.format) ? opts.format : (vhdFormatOfDriver(opts.format) ?? opts.format);
  const checked = await checkDeclaredFormat(path, declared);
  const parsed = await qemuImgInfo(path, checked.format);
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
