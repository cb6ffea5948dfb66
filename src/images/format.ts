// Disk image formats: the four vmhost attaches, how QEMU names them, and the check that a file's
// content agrees with the format it is declared to have. QEMU never probes a format for vmhost:
// a probed format lets a guest that writes a qcow2 header into its raw disk pick the host file
// QEMU opens next time (the reason QEMU warns about probing raw images, block.c "WARNING: Image
// format was not specified").
import { open, type FileHandle } from "node:fs/promises";
import { basename } from "node:path";
import { VmhostError } from "../util/errors.js";

/** The formats vmhost attaches. "vhd" is QEMU's "vpc" driver (fixed and dynamic subformats). */
export type VhdFormat = "vhdx" | "vhd" | "qcow2" | "raw";
export const VHD_FORMATS: readonly VhdFormat[] = ["vhdx", "vhd", "qcow2", "raw"];

/** QEMU's block driver name for a format (`-f` / `-O` / `format=`). */
export type QemuDriver = "vhdx" | "vpc" | "qcow2" | "raw";

/**
 * Hyper-V's VhdType (Get-VHD): Fixed (all space described up front), Dynamic (grows as written),
 * Differencing (holds only changes to a parent). Raw is Fixed; qcow2 is Dynamic unless it has a
 * backing file.
 */
export type VhdType = "Fixed" | "Dynamic" | "Differencing";

export function qemuDriverOf(format: VhdFormat): QemuDriver {
  return format === "vhd" ? "vpc" : format;
}

/** The vmhost format of a QEMU driver name, or undefined for a driver vmhost does not attach. */
export function vhdFormatOfDriver(driver: string): VhdFormat | undefined {
  switch (driver) {
    case "vpc":
      return "vhd";
    case "vhdx":
    case "qcow2":
    case "raw":
      return driver;
    default:
      return undefined;
  }
}

export function isVhdFormat(s: string): s is VhdFormat {
  return (VHD_FORMATS as readonly string[]).includes(s);
}

const FORMAT_BY_EXTENSION: Readonly<Record<string, VhdFormat>> = {
  ".vhdx": "vhdx",
  ".vhd": "vhd",
  ".qcow2": "qcow2",
  ".img": "raw",
  ".raw": "raw",
};

/** The format a file's extension declares (.vhdx, .vhd, .qcow2, .img/.raw; any case), else undefined. */
export function formatFromExtension(path: string): VhdFormat | undefined {
  const m = /\.[^./]+$/.exec(basename(path));
  return m ? FORMAT_BY_EXTENSION[m[0].toLowerCase()] : undefined;
}

/** The usual extension of a format, for new file names. */
export function extensionOf(format: VhdFormat): string {
  return format === "raw" ? ".img" : `.${format}`;
}

/** What a file's content holds, by the magic numbers below. "none": no known header (raw data). */
export type ContentFormat = "vhdx" | "vhd" | "qcow2" | "none";

export interface ImageContent {
  holds: ContentFormat;
  /** Human description of what was found, e.g. 'a qcow2 header ("QFI\xfb" at offset 0)'. */
  found: string;
  /** Every signature seen, for a raw file that must carry none. */
  signatures: string[];
  /** The file's size in bytes. */
  fileSize: number;
  /** VHD footer "Disk Type" (2 fixed, 3 dynamic, 4 differencing), when holds is "vhd". */
  vhdDiskType?: number;
  /** VHDX File Parameters flags, when holds is "vhdx" and the metadata could be read. */
  vhdxParameters?: VhdxFileParameters;
}

export interface VhdxFileParameters {
  /** Payload block size in bytes. */
  blockSize: number;
  /** LeaveBlockAllocated: set in a fixed VHDX. */
  leaveBlocksAllocated: boolean;
  /** HasParent: a differencing VHDX (QEMU cannot open these, block/vhdx.c returns ENOTSUP). */
  hasParent: boolean;
}

// qcow2: "QFI\xfb" at offset 0 (QEMU docs/interop/qcow2.txt, "magic").
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);
// VHDX: the 8-byte file type identifier "vhdxfile" at offset 0 ([MS-VHDX] 2.2.1).
const VHDX_MAGIC = Buffer.from("vhdxfile", "latin1");
// VHD: footer cookie "conectix", in the last 512 bytes (fixed) with a copy at offset 0 (dynamic)
// (Microsoft "Virtual Hard Disk Image Format Specification" 1.0, Hard Disk Footer Format; QEMU's
// block/vpc.c vpc_open looks at offset 0, then at the end, the same way).
const VHD_COOKIE = Buffer.from("conectix", "latin1");
const VHD_FOOTER = 512;
/** Footer field "Disk Type", big-endian u32 at offset 60 (same spec): 2 fixed, 3 dynamic, 4 differencing. */
const VHD_DISK_TYPE_OFFSET = 60;

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

// [MS-VHDX] 2.2.3 region table (at 192 KiB, copy at 256 KiB), 2.6.1 metadata table, 2.6.2.1 file parameters.
const VHDX_REGION_TABLE_OFFSETS = [192 * 1024, 256 * 1024];
const VHDX_METADATA_REGION_GUID = Buffer.from("06a27c8b90479a4bb8fe575f050f886e", "hex"); // 8B7CA206-4790-4B9A-B8FE-575F050F886E
const VHDX_FILE_PARAMETERS_GUID = Buffer.from("3767a1ca36fa434db3b633f0aa44e76b", "hex"); // CAA16737-FA36-4D43-B3B6-33F0AA44E76B

/**
 * Reads the VHDX File Parameters metadata item: region table ("regi", 16-byte header, 32-byte
 * entries: GUID, u64 offset, u32 length, u32 required), metadata table ("metadata", 32-byte header
 * with u16 entry count at 10, 32-byte entries: GUID, u32 offset, u32 length), then the item
 * (u32 block size, u32 flags: bit 0 LeaveBlockAllocated, bit 1 HasParent). Undefined when any
 * step does not check out; QEMU (which validates checksums) remains the judge of the file.
 */
async function readVhdxFileParameters(fh: FileHandle, fileSize: number): Promise<VhdxFileParameters | undefined> {
  for (const tableOffset of VHDX_REGION_TABLE_OFFSETS) {
    const table = await readAt(fh, tableOffset, 64 * 1024);
    if (table.length < 16 || table.toString("latin1", 0, 4) !== "regi") continue;
    const count = Math.min(table.readUInt32LE(8), 2047);
    for (let i = 0; i < count; i++) {
      const e = 16 + i * 32;
      if (e + 32 > table.length) break;
      if (!table.subarray(e, e + 16).equals(VHDX_METADATA_REGION_GUID)) continue;
      const regionOffset = Number(table.readBigUInt64LE(e + 16));
      if (regionOffset + 64 * 1024 > fileSize) return undefined;
      const meta = await readAt(fh, regionOffset, 64 * 1024);
      if (meta.length < 32 || meta.toString("latin1", 0, 8) !== "metadata") return undefined;
      const entries = Math.min(meta.readUInt16LE(10), 2047);
      for (let j = 0; j < entries; j++) {
        const m = 32 + j * 32;
        if (m + 32 > meta.length) break;
        if (!meta.subarray(m, m + 16).equals(VHDX_FILE_PARAMETERS_GUID)) continue;
        const itemOffset = meta.readUInt32LE(m + 16);
        const itemLength = meta.readUInt32LE(m + 20);
        if (itemLength < 8) return undefined;
        const item = await readAt(fh, regionOffset + itemOffset, 8);
        if (item.length < 8) return undefined;
        const flags = item.readUInt32LE(4);
        return { blockSize: item.readUInt32LE(0), leaveBlocksAllocated: (flags & 1) !== 0, hasParent: (flags & 2) !== 0 };
      }
      return undefined;
    }
  }
  return undefined;
}

/**
 * What the file holds, judged by magic numbers only (see the constants' sources). Errors:
 * `not-found` (404) for a missing file, `not-a-regular-file` for a directory, device, FIFO, etc.
 */
export async function readImageContent(path: string): Promise<ImageContent> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new VmhostError("not-found", `disk image ${path} not found`, 404);
    throw new VmhostError("unreadable", `cannot read disk image ${path}: ${(err as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new NotRegularFileError(path, describeKind(st));
    const head = await readAt(fh, 0, VHD_FOOTER);
    const tail = st.size >= VHD_FOOTER ? await readAt(fh, st.size - VHD_FOOTER, VHD_FOOTER) : Buffer.alloc(0);
    const signatures: string[] = [];
    let holds: ContentFormat = "none";
    let found = "no qcow2, VHDX or VHD signature (raw data)";
    const content: ImageContent = { holds, found, signatures, fileSize: st.size };
    const at0 = (magic: Buffer): boolean => head.length >= magic.length && head.subarray(0, magic.length).equals(magic);
    if (at0(QCOW2_MAGIC)) signatures.push('qcow2 magic "QFI\\xfb" at offset 0');
    if (at0(VHDX_MAGIC)) signatures.push('VHDX signature "vhdxfile" at offset 0');
    // A footer is 512 bytes; a shorter file cannot hold one.
    const cookieAt0 = head.length === VHD_FOOTER && at0(VHD_COOKIE);
    const cookieAtEnd = tail.length === VHD_FOOTER && tail.subarray(0, 8).equals(VHD_COOKIE);
    if (cookieAt0) signatures.push('VHD cookie "conectix" at offset 0 (dynamic VHD footer copy)');
    if (cookieAtEnd) signatures.push(`VHD cookie "conectix" in the last 512 bytes (VHD footer)`);
    // QEMU reads the copy at offset 0 first (a dynamic disk), else the footer at the end.
    if (cookieAt0 || cookieAtEnd) content.vhdDiskType = (cookieAt0 ? head : tail).readUInt32BE(VHD_DISK_TYPE_OFFSET);
    if (at0(QCOW2_MAGIC)) {
      holds = "qcow2";
      found = 'a qcow2 header (magic "QFI\\xfb" at offset 0)';
    } else if (at0(VHDX_MAGIC)) {
      holds = "vhdx";
      found = 'a VHDX header ("vhdxfile" at offset 0)';
      const params = await readVhdxFileParameters(fh, st.size);
      if (params) content.vhdxParameters = params;
    } else if (cookieAt0 || cookieAtEnd) {
      holds = "vhd";
      found = `a VHD footer ("conectix" ${cookieAt0 ? "at offset 0" : "in the last 512 bytes"}, disk type ${vhdDiskTypeName(content.vhdDiskType ?? 0)})`;
    }
    content.holds = holds;
    content.found = found;
    return content;
  } finally {
    await fh.close();
  }
}

function vhdDiskTypeName(t: number): string {
  return t === 2 ? "fixed" : t === 3 ? "dynamic" : t === 4 ? "differencing" : `unknown (${t})`;
}

function describeKind(st: { isDirectory(): boolean; isBlockDevice(): boolean; isCharacterDevice(): boolean; isFIFO(): boolean; isSocket(): boolean }): string {
  if (st.isDirectory()) return "a directory";
  if (st.isBlockDevice()) return "a block device";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  return "not a regular file";
}

/** A disk image path that is not a regular file (vmhost attaches image files only). */
export class NotRegularFileError extends VmhostError {
  constructor(
    readonly path: string,
    readonly kind: string,
  ) {
    super("not-a-regular-file", `${path} is ${kind}, not a disk image file: give the path of an image file (.vhdx, .vhd, .qcow2, .img)`);
    this.name = "NotRegularFileError";
  }
}

/** Where a declared format came from, for messages. */
export type FormatSource = "declared" | "extension";

/**
 * The content disagrees with the format the image claims. Names the file, the claim (and where it
 * came from) and what the file holds.
 */
export class ImageFormatMismatchError extends VmhostError {
  constructor(
    readonly path: string,
    readonly claimed: VhdFormat,
    readonly source: FormatSource,
    readonly holds: ContentFormat,
    found: string,
  ) {
    const claim = source === "extension" ? `its extension says ${claimed}` : `it was declared ${claimed}`;
    const fix =
      holds === "none"
        ? "give the format it really has"
        : claimed === "raw"
          ? `vmhost never hands it to QEMU as raw (the guest could rewrite its header); if the image is trusted, declare it as ${holds === "vhd" ? "vhd" : holds} or rename it to a matching extension`
          : `declare it as ${holds === "vhd" ? "vhd" : holds} or rename it to a matching extension`;
    super("image-format-mismatch", `disk image ${path}: ${claim}, but it holds ${found}: ${fix}`);
    this.name = "ImageFormatMismatchError";
  }
}

export interface CheckedFormat {
  path: string;
  format: VhdFormat;
  source: FormatSource;
  /** Fixed / Dynamic from the content (Differencing is decided by the backing chain, see chain.ts). */
  vhdType: VhdType;
  content: ImageContent;
}

/**
 * Decides an image's format without probing: `declared` if given, else the extension; then checks the
 * content agrees: qcow2 needs "QFI\xfb" at 0, vhdx "vhdxfile" at 0, vhd the "conectix" cookie at 0 or
 * in the last 512 bytes (and a fixed or dynamic disk type), raw none of those (so a fixed VHD is never
 * attached as raw: its footer would be guest-writable).
 * Errors: `format-unknown` (no declaration, unknown extension), `bad-format`, `not-found`,
 * `not-a-regular-file`, `image-format-mismatch` (ImageFormatMismatchError), `unsupported-disk`
 * (a differencing VHD or VHDX: QEMU cannot follow their parents).
 */
export async function checkDeclaredFormat(path: string, declared?: VhdFormat | string): Promise<CheckedFormat> {
  let format: VhdFormat;
  let source: FormatSource;
  if (declared !== undefined) {
    if (!isVhdFormat(declared)) throw new VmhostError("bad-format", `unknown disk format "${declared}" (use vhdx, vhd, qcow2 or raw)`);
    format = declared;
    source = "declared";
  } else {
    const ext = formatFromExtension(path);
    if (!ext) {
      throw new VmhostError(
        "format-unknown",
        `cannot tell the format of ${path} from its name: name the format (vhdx, vhd, qcow2 or raw) or use the extension .vhdx, .vhd, .qcow2 or .img`,
      );
    }
    format = ext;
    source = "extension";
  }
  const content = await readImageContent(path);
  const agrees = format === "raw" ? content.signatures.length === 0 : format === "vhd" ? content.vhdDiskType !== undefined : content.holds === format;
  if (!agrees) throw new ImageFormatMismatchError(path, format, source, content.holds, content.found);
  let vhdType: VhdType;
  switch (format) {
    case "raw":
      vhdType = "Fixed";
      break;
    case "qcow2":
      vhdType = "Dynamic";
      break;
    case "vhd": {
      // A fixed VHD whose data starts with another header still has its footer at the end.
      const t = content.vhdDiskType;
      if (t === 4) {
        throw new VmhostError("unsupported-disk", `${path} is a differencing VHD: QEMU cannot follow its parent; merge it into its parent in Hyper-V first (Merge-VHD), or convert it there`);
      }
      vhdType = t === 3 ? "Dynamic" : "Fixed";
      break;
    }
    case "vhdx": {
      const p = content.vhdxParameters;
      if (p?.hasParent) {
        throw new VmhostError("unsupported-disk", `${path} is a differencing VHDX (an .avhdx): QEMU cannot follow its parent; merge it into its parent in Hyper-V first (Merge-VHD)`);
      }
      vhdType = p?.leaveBlocksAllocated ? "Fixed" : "Dynamic";
      break;
    }
  }
  return { path, format, source, vhdType, content };
}
