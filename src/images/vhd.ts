// Virtual hard disk tools, after Hyper-V's storage cmdlets: New-VHD, Get-VHD, Convert-VHD,
// Resize-VHD, Merge-VHD and Optimize-VHD ("compact"). qemu-img does the work; vmhost decides formats
// explicitly, checks backing chains, refuses disks in use, and publishes every output whole.
import { stat, unlink } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { syncDir } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { walkBackingChain, type BackingChainMember } from "./chain.js";
import { formatFromExtension, isVhdFormat, qemuDriverOf, type VhdFormat, type VhdType } from "./format.js";
import { identityOfChain, type DiskAccess, type DiskIdentity } from "./identity.js";
import { checkShrink, readPartitionTable, relocateGptBackup } from "./partitions.js";
import { withStagedFile } from "./staging.js";
import { qemuImg, qemuImgBinary, runImageTool, type ProgressCallback } from "./tools.js";

const SECTOR = 512;
/** QEMU's VHD limit: 65535 * 16 * 255 sectors, about 127 GiB by geometry, 2040 GiB with force_size (block/vpc.c VHD_MAX_SECTORS). */
const VHD_MAX_BYTES = 0xff000000 * SECTOR;

/** The VM that holds a disk, as the service knows it. */
export interface InUseBy {
  vm: string;
}

/**
 * The service's answer to "may this operation touch these files now?": the VM in the way, or
 * undefined. `disk` is the identity of the image (and its chain) the operation touches, `access`
 * what it does with it; findDiskConflict(disk, runningVmDisks, access) is the intended implementation.
 */
export type InUseCheck = (disk: DiskIdentity, access: DiskAccess) => InUseBy | undefined | Promise<InUseBy | undefined>;

export interface VhdToolOptions {
  /** Directories backing files may lie in (the service passes $VMHOST_HOME and the appliance cache). */
  allowedDirs: readonly string[];
  /** A VM known to hold the disk, or a check the tool calls with the files it is about to touch. */
  inUse?: InUseBy | InUseCheck;
  /** Fraction done, 0..1, from qemu-img -p (convert, commit); operations without it report 1 at the end. */
  onProgress?: ProgressCallback;
  /** Cancels the running qemu-img; partial output is removed. */
  signal?: AbortSignal;
}

/** A disk a running VM holds; `code` "disk-in-use" (409). */
export class DiskInUseError extends VmhostError {
  constructor(
    readonly path: string,
    readonly vm: string,
    operation: string,
  ) {
    super("disk-in-use", `${path} is in use by VM "${vm}": turn the VM off (or remove the disk from it) before ${operation}`, 409);
    this.name = "DiskInUseError";
  }
}

async function refuseInUse(disk: DiskIdentity, access: DiskAccess, opts: Pick<VhdToolOptions, "inUse">, operation: string): Promise<void> {
  const inUse = opts.inUse;
  if (!inUse) return;
  const by = typeof inUse === "function" ? await inUse(disk, access) : inUse;
  if (by) throw new DiskInUseError(disk.path, by.vm, operation);
}

/** Get-VHD's view of one image (field names after Microsoft.Vhd.PowerShell.VirtualHardDisk). */
export interface VirtualHardDisk {
  path: string;
  vhdFormat: VhdFormat;
  vhdType: VhdType;
  /** Guest-visible size in bytes (Get-VHD Size). */
  size: number;
  /** The file's length in bytes (Get-VHD FileSize). */
  fileSize: number;
  /** Host bytes the file occupies (sparse files occupy less than their length). */
  allocatedSize: number;
  /**
   * The smallest size the guest's partitions allow (Get-VHD MinimumSize), from its MBR or GPT; absent
   * when the disk has no partition table vmhost can read.
   */
  minimumSize?: number;
  /** Block (VHD/VHDX) or cluster (qcow2) size in bytes. */
  blockSize?: number;
  /** The image's immediate parent (Get-VHD ParentPath), for a differencing disk. */
  parentPath?: string;
  /** Every parent, nearest first, down to the base. */
  parentChain: { path: string; vhdFormat: VhdFormat; vhdType: VhdType; size: number }[];
  /** Not closed cleanly (qemu-img info "dirty-flag"). */
  dirty?: boolean;
  /** Get-VHD Attached: in use by a VM, as the service's in-use check says. */
  attached: boolean;
  attachedTo?: string;
}

function viewOf(chain: readonly BackingChainMember[]): VirtualHardDisk {
  const top = chain[0];
  if (!top) throw new Error("viewOf: empty chain");
  const disk: VirtualHardDisk = {
    path: top.path,
    vhdFormat: top.format,
    vhdType: top.vhdType,
    size: top.virtualSize,
    fileSize: top.fileSize,
    allocatedSize: top.allocatedSize,
    parentChain: chain.slice(1).map((m) => ({ path: m.path, vhdFormat: m.format, vhdType: m.vhdType, size: m.virtualSize })),
    attached: false,
  };
  if (top.blockSize !== undefined) disk.blockSize = top.blockSize;
  if (top.backingFile !== undefined) disk.parentPath = top.backingFile;
  if (top.dirty !== undefined) disk.dirty = top.dirty;
  return disk;
}

export interface GetVhdOptions {
  /** The image's format; else its extension. Either way checked against the content. */
  format?: VhdFormat | string;
  allowedDirs: readonly string[];
  inUse?: InUseBy | InUseCheck;
  /** Read the partition table for minimumSize (default true). */
  partitions?: boolean;
}

/**
 * Get-VHD. Walks and checks the backing chain (walkBackingChain) and reads the guest's partition
 * table for minimumSize. Works on disks in use (reads with qemu-img -U); `attached`/`attachedTo` come
 * from `inUse`, asked with access "write" (so a VM that only reads the image as a backing file counts
 * as holding it). Errors: those of walkBackingChain.
 */
export async function getVhd(path: string, opts: GetVhdOptions): Promise<VirtualHardDisk> {
  const chain = await walkBackingChain(resolve(path), opts.format, { allowedDirs: opts.allowedDirs });
  const disk = viewOf(chain);
  if (opts.inUse) {
    // "write": any VM that opens the image, or writes a file of its chain, holds it.
    const by = typeof opts.inUse === "function" ? await opts.inUse(identityOfChain(chain), "write") : opts.inUse;
    if (by) {
      disk.attached = true;
      disk.attachedTo = by.vm;
    }
  }
  if (opts.partitions !== false) {
    try {
      const table = await readPartitionTable(disk.path, disk.vhdFormat, disk.size, { forceShare: true });
      if (table) disk.minimumSize = table.minimumSize;
    } catch (err) {
      // An unreadable table leaves MinimumSize unknown; it does not make the disk unreadable.
      if (!(err instanceof VmhostError && (err.code === "partition-table" || err.code === "image-tool"))) throw err;
    }
  }
  return disk;
}

function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new VmhostError("bad-size", `disk size must be a positive whole number of bytes, got ${sizeBytes}`);
  }
  // qemu-img would silently round up; say so instead.
  if (sizeBytes % SECTOR !== 0) throw new VmhostError("bad-size", `disk size must be a multiple of ${SECTOR} bytes, got ${sizeBytes}`);
}

/**
 * The format of a file about to be written: `declared` and the extension must agree when both are
 * known (a ".img" holding qcow2 is what C.10 forbids); one of them must be known.
 */
export function targetFormat(path: string, declared?: VhdFormat | string): VhdFormat {
  if (declared !== undefined && !isVhdFormat(declared)) throw new VmhostError("bad-format", `unknown disk format "${declared}" (use vhdx, vhd, qcow2 or raw)`);
  const ext = formatFromExtension(path);
  if (declared !== undefined && ext !== undefined && declared !== ext) {
    throw new VmhostError("format-extension-mismatch", `${path}: its extension says ${ext} but the format asked for is ${declared}; use a matching extension (${declared === "raw" ? ".img or .raw" : `.${declared}`})`);
  }
  const f = declared ?? ext;
  if (!f) throw new VmhostError("format-unknown", `cannot tell which format to write ${path} in: give the format (vhdx, vhd, qcow2 or raw) or use the extension .vhdx, .vhd, .qcow2 or .img`);
  return f;
}

/** Which VhdTypes a format can be created as, and its default (Hyper-V creates Dynamic by default). */
const TYPES: Readonly<Record<VhdFormat, { allowed: readonly ("Fixed" | "Dynamic")[]; why?: string }>> = {
  vhdx: { allowed: ["Dynamic", "Fixed"] },
  vhd: { allowed: ["Dynamic", "Fixed"] },
  qcow2: { allowed: ["Dynamic"], why: "qcow2 has no fixed subformat (it always grows as written); use vhdx, vhd or raw for a fixed disk" },
  raw: { allowed: ["Fixed"], why: "a raw image is fixed by nature (a sparse file saves space, but the layout is fixed); use vhdx, vhd or qcow2 for a dynamic disk" },
};

function chooseType(format: VhdFormat, requested: "Fixed" | "Dynamic" | undefined, preferred?: VhdType): "Fixed" | "Dynamic" {
  const t = TYPES[format];
  if (requested !== undefined) {
    if (!t.allowed.includes(requested)) throw new VmhostError("bad-vhd-type", `cannot make a ${requested.toLowerCase()} ${format} disk: ${t.why ?? ""}`);
    return requested;
  }
  if (preferred === "Fixed" || preferred === "Dynamic") {
    if (t.allowed.includes(preferred)) return preferred;
  }
  return t.allowed[0] ?? "Dynamic";
}

/** qemu-img -o options for a format and type. VHD gets force_size=on so the size is exact, not rounded to a CHS geometry (qemu-img(1), vpc options). */
function createOptions(format: VhdFormat, type: "Fixed" | "Dynamic", blockSize?: number): string[] {
  const sub = `subformat=${type === "Fixed" ? "fixed" : "dynamic"}`;
  switch (format) {
    case "vhdx":
      return ["-o", `${sub}${blockSize ? `,block_size=${blockSize}` : ""}`];
    case "vhd":
      return ["-o", `${sub},force_size=on`];
    case "qcow2":
      return blockSize ? ["-o", `cluster_size=${blockSize}`] : [];
    case "raw":
      return [];
  }
}

function checkFormatSize(format: VhdFormat, sizeBytes: number): void {
  if (format === "vhd" && sizeBytes > VHD_MAX_BYTES) {
    throw new VmhostError("bad-size", `a VHD holds at most ${formatSize(VHD_MAX_BYTES)}, asked for ${formatSize(sizeBytes)}: use vhdx`);
  }
}

export interface NewVhdRequest {
  path: string;
  /** Default: from the extension. */
  format?: VhdFormat | string;
  /** Bytes, a multiple of 512; for a differencing disk, default the parent's size. */
  sizeBytes?: number;
  /** Fixed or Dynamic (default Dynamic; raw is always Fixed). */
  type?: "Fixed" | "Dynamic";
  /** Makes a differencing disk (New-VHD -Differencing -ParentPath): a qcow2 overlay on the parent. */
  parent?: { path: string; format?: VhdFormat | string };
}

/**
 * New-VHD. A new image at `req.path` (which must not exist), published whole or not at all.
 * Differencing: a qcow2 overlay recording the parent by absolute path with its format
 * (`qemu-img create -F FMT -b /abs/parent`); the parent is never written. QEMU writes differencing
 * images only as qcow2, so the path must be .qcow2 (or the format qcow2). The parent's chain is
 * checked as an attached disk's would be, and the parent itself must lie in `allowedDirs`.
 * Errors: `exists`, `bad-size`, `bad-format`, `format-unknown`, `format-extension-mismatch`,
 * `bad-vhd-type`, `disk-in-use` (a running VM writes the parent), walkBackingChain's, `qemu-img`.
 */
export async function newVhd(req: NewVhdRequest, opts: VhdToolOptions): Promise<VirtualHardDisk> {
  const path = resolve(req.path);
  const format = targetFormat(path, req.format ?? (req.parent && !formatFromExtension(path) ? "qcow2" : undefined));
  if (req.parent) {
    if (format !== "qcow2") {
      throw new VmhostError("bad-format", `a differencing disk is written as qcow2 (QEMU cannot write differencing VHD or VHDX): name it ${path.replace(/\.[^./]+$/, "")}.qcow2`);
    }
    if (req.type !== undefined) throw new VmhostError("bad-vhd-type", "a differencing disk is neither fixed nor dynamic: leave out the type");
    const parentChain = await walkBackingChain(resolve(req.parent.path), req.parent.format, { allowedDirs: opts.allowedDirs, imageMustBeAllowed: true });
    const parent = parentChain[0];
    if (!parent) throw new Error("newVhd: empty parent chain");
    await refuseInUse(identityOfChain(parentChain), "read", opts, "making a differencing disk on it");
    const size = req.sizeBytes ?? parent.virtualSize;
    checkSize(size);
    if (size < parent.virtualSize) {
      throw new VmhostError("bad-size", `a differencing disk cannot be smaller than its parent (${formatSize(parent.virtualSize)}), asked for ${formatSize(size)}`);
    }
    await withStagedFile(path, "new", (tmp) =>
      qemuImg(["create", "-q", "-f", "qcow2", "-F", qemuDriverOf(parent.format), "-b", parent.path, tmp, String(size)], { signal: opts.signal }),
    );
  } else {
    if (req.sizeBytes === undefined) throw new VmhostError("bad-size", "give the new disk's size");
    checkSize(req.sizeBytes);
    checkFormatSize(format, req.sizeBytes);
    const type = chooseType(format, req.type);
    const size = req.sizeBytes;
    await withStagedFile(path, "new", (tmp) => qemuImg(["create", "-q", "-f", qemuDriverOf(format), ...createOptions(format, type), tmp, String(size)], { signal: opts.signal }));
  }
  opts.onProgress?.(1);
  return getVhd(path, { allowedDirs: opts.allowedDirs, format, partitions: false });
}

export interface ConvertVhdRequest {
  /** The source's format; default its extension. Checked against the content. */
  sourceFormat?: VhdFormat | string;
  /** The destination's format; default the destination's extension. */
  format?: VhdFormat | string;
  /** Default: the source's type when the destination format has it, else the format's default. */
  type?: "Fixed" | "Dynamic";
}

/**
 * Convert-VHD. Copies `src` (through its whole backing chain: a differencing source comes out
 * standalone) into a new image `dst` of the requested format, with progress. `dst` must not exist; it
 * appears only when complete. The source is read while no VM writes it (its chain may be shared).
 * Errors: as newVhd's, plus `disk-in-use` when a VM writes the source, `aborted`.
 */
export async function convertVhd(src: string, dst: string, req: ConvertVhdRequest, opts: VhdToolOptions): Promise<VirtualHardDisk> {
  const source = resolve(src);
  const target = resolve(dst);
  const chain = await walkBackingChain(source, req.sourceFormat, { allowedDirs: opts.allowedDirs });
  const top = chain[0];
  if (!top) throw new Error("convertVhd: empty chain");
  await refuseInUse(identityOfChain(chain), "read", opts, "converting it");
  const format = targetFormat(target, req.format);
  checkFormatSize(format, top.virtualSize);
  if (format === "vhd" && top.virtualSize % SECTOR !== 0) throw new VmhostError("bad-size", `${source} is not a whole number of 512-byte sectors long; it cannot become a VHD`);
  const type = chooseType(format, req.type, top.vhdType);
  await withStagedFile(target, "new", (tmp) =>
    qemuImg(["convert", "-p", "-f", qemuDriverOf(top.format), "-O", qemuDriverOf(format), ...createOptions(format, type), source, tmp], {
      onProgress: opts.onProgress,
      signal: opts.signal,
    }),
  );
  return getVhd(target, { allowedDirs: opts.allowedDirs, format, partitions: false });
}

/** A path inside a QEMU option string: commas are doubled (QEMU's QemuOpts escaping). */
function optEscape(s: string): string {
  return s.replace(/,/g, ",,");
}

export interface ResizeVhdResult {
  disk: VirtualHardDisk;
  previousSize: number;
  /** "in-place": qemu-img resize (qcow2, raw); "copy": a new image of the new size replaced the old (vhdx, vhd: QEMU cannot resize them). */
  method: "in-place" | "copy" | "unchanged";
  /** The backup GPT was moved to the new end of the disk (shrink of a GPT disk). */
  gptRelocated: boolean;
}

function refuseHardLinks(path: string, nlink: number, operation: string): void {
  if (nlink > 1) {
    throw new VmhostError("hard-linked", `${path} has ${nlink} names (hard links); ${operation} writes a new file in its place, which would split them: remove the other names first`);
  }
}

/**
 * Resize-VHD. Grows always; shrinks only when the guest's partitions end before the new size (MBR or
 * GPT read by sfdisk; a GPT's backup table is moved to the new end with sgdisk first), otherwise
 * ShrinkRefusedError names the partition and where it ends. qcow2 and raw change in place
 * (qemu-img resize); vhdx and vhd, which QEMU cannot resize, are copied into a new image of the new
 * size (qemu-img convert -n into it; for a shrink the source is read through a raw node clipped to the
 * new size) that replaces the old one whole. The file system inside is not touched: grow or shrink it
 * in the guest (Hyper-V's Resize-VHD does the same).
 * Errors: `bad-size`, `shrink-refused`, `disk-in-use`, `hard-linked` (copy method), walkBackingChain's, `qemu-img`.
 */
export async function resizeVhd(path: string, sizeBytes: number, req: { format?: VhdFormat | string }, opts: VhdToolOptions): Promise<ResizeVhdResult> {
  const image = resolve(path);
  checkSize(sizeBytes);
  const chain = await walkBackingChain(image, req.format, { allowedDirs: opts.allowedDirs });
  const top = chain[0];
  if (!top) throw new Error("resizeVhd: empty chain");
  await refuseInUse(identityOfChain(chain), "write", opts, "resizing it");
  checkFormatSize(top.format, sizeBytes);
  const previousSize = top.virtualSize;
  const drv = qemuDriverOf(top.format);
  if (sizeBytes === previousSize) {
    opts.onProgress?.(1);
    return { disk: await getVhd(image, { allowedDirs: opts.allowedDirs, format: top.format }), previousSize, method: "unchanged", gptRelocated: false };
  }
  const shrink = sizeBytes < previousSize;
  const table = shrink ? checkShrink(image, await readPartitionTable(image, top.format, previousSize), sizeBytes) : undefined;
  const relocate = table?.label === "gpt";
  let method: ResizeVhdResult["method"];
  if (top.format === "qcow2" || top.format === "raw") {
    method = "in-place";
    // The GPT first: until the image shrinks, it reads as a disk grown under its table.
    if (relocate) await relocateGptBackup(image, top.format, sizeBytes);
    await qemuImg(["resize", "-q", "-f", drv, ...(shrink ? ["--shrink"] : []), image, String(sizeBytes)], { signal: opts.signal });
    opts.onProgress?.(1);
  } else {
    method = "copy";
    refuseHardLinks(image, (await stat(image)).nlink, "resizing a vhdx or vhd");
    const type = chooseType(top.format, undefined, top.vhdType);
    await withStagedFile(image, "replace", async (tmp) => {
      await qemuImg(["create", "-q", "-f", drv, ...createOptions(top.format, type, top.format === "vhdx" ? top.blockSize : undefined), tmp, String(sizeBytes)], { signal: opts.signal });
      const source = shrink
        ? ["--image-opts", `driver=raw,size=${sizeBytes},file.driver=${drv},file.file.driver=file,file.file.filename=${optEscape(image)}`]
        : ["-f", drv, image];
      await qemuImg(["convert", "-p", "-n", "--target-is-zero", ...source, "-O", drv, tmp], { onProgress: opts.onProgress, signal: opts.signal });
      if (relocate) await relocateGptBackup(tmp, top.format, sizeBytes);
    });
  }
  return { disk: await getVhd(image, { allowedDirs: opts.allowedDirs, format: top.format }), previousSize, method, gptRelocated: relocate };
}

export interface MergeVhdResult {
  /** The parent after the merge: it now holds the child's data. */
  parent: VirtualHardDisk;
  child: string;
  /** What became of the child: "removed" (default, as Merge-VHD), or "emptied" (kept as an empty differencing disk on the parent). */
  childAfter: "removed" | "emptied";
}

/**
 * Merge-VHD: writes a differencing disk's changes into its immediate parent (`qemu-img commit -d -p`),
 * then removes the child (Hyper-V deletes merged children), or with `keepChild` replaces it by a new
 * empty differencing disk on the same parent (same size), so a VM configured with the child still sees
 * the same data. The commit runs with -d (the child is not emptied by qemu-img), so an interrupted merge
 * leaves the child whole over a partly updated parent: the child still reads the same, run the merge
 * again. The parent must not be shared: any other image on it would see its data change. The in-use
 * check is asked about the parent with "write", so a VM whose disk is another overlay on the parent
 * refuses the merge; overlays no VM uses are not known here.
 * Errors: `not-differencing`, `disk-in-use`, `merge-unsupported` (a child larger than a vhdx/vhd
 * parent, which QEMU cannot grow), walkBackingChain's, `qemu-img`, `aborted`.
 */
export async function mergeVhd(child: string, req: { format?: VhdFormat | string; keepChild?: boolean }, opts: VhdToolOptions): Promise<MergeVhdResult> {
  const image = resolve(child);
  const chain = await walkBackingChain(image, req.format, { allowedDirs: opts.allowedDirs });
  const top = chain[0];
  const parent = chain[1];
  if (!top) throw new Error("mergeVhd: empty chain");
  if (!parent || top.backingFile === undefined) throw new VmhostError("not-differencing", `${image} is not a differencing disk: it has no parent to merge into`);
  await refuseInUse(identityOfChain(chain), "write", opts, "merging it");
  await refuseInUse(identityOfChain(chain.slice(1)), "write", opts, "merging a child into it");
  if (top.virtualSize > parent.virtualSize && (parent.format === "vhdx" || parent.format === "vhd")) {
    throw new VmhostError(
      "merge-unsupported",
      `${image} (${formatSize(top.virtualSize)}) is larger than its ${parent.format} parent ${parent.path} (${formatSize(parent.virtualSize)}), and QEMU cannot grow a ${parent.format}: convert the parent to qcow2 first, or resize the parent (vmhost vhd resize) to ${formatSize(top.virtualSize)}`,
    );
  }
  if (req.keepChild) refuseHardLinks(image, (await stat(image)).nlink, "keeping the merged child");
  await qemuImg(["commit", "-p", "-d", "-f", "qcow2", image], { onProgress: opts.onProgress, signal: opts.signal });
  let childAfter: MergeVhdResult["childAfter"];
  if (req.keepChild) {
    await withStagedFile(image, "replace", (tmp) =>
      qemuImg(["create", "-q", "-f", "qcow2", "-F", qemuDriverOf(parent.format), "-b", parent.path, tmp, String(top.virtualSize)]),
    );
    childAfter = "emptied";
  } else {
    await unlink(image);
    await syncDir(dirname(image));
    childAfter = "removed";
  }
  return { parent: await getVhd(parent.path, { allowedDirs: opts.allowedDirs, format: parent.format }), child: image, childAfter };
}

/** The formats compact works on, and why the others do not. */
export const COMPACTABLE: Readonly<Record<VhdFormat, { types: readonly VhdType[]; why: string }>> = {
  qcow2: { types: ["Dynamic", "Differencing"], why: "" },
  vhdx: { types: ["Dynamic"], why: "a fixed vhdx keeps every block allocated by definition" },
  vhd: { types: ["Dynamic"], why: "a fixed VHD is its data followed by a footer; there is nothing to compact" },
  raw: { types: [], why: "a raw image has no structure to compact; to give zeroed ranges back to the host, punch holes in it (fallocate --dig-holes) while no VM uses it" },
};

export interface CompactVhdResult {
  disk: VirtualHardDisk;
  fileSizeBefore: number;
  allocatedBefore: number;
}

/**
 * Optimize-VHD ("compact"): rewrites a dynamic vhdx/vhd or a qcow2 (differencing included, which keeps
 * its parent: qemu-img convert -B) into a temp file without the blocks that read as zero or are unused,
 * then renames it over the original (same mode and owner; a new inode, so a hard-linked image is
 * refused). The guest's data are unchanged. Blocks the guest freed but did not zero stay: run fstrim
 * (with discard on) or zero free space in the guest first.
 * Errors: `compact-unsupported` (raw, fixed vhdx/vhd), `disk-in-use`, `hard-linked`, walkBackingChain's, `qemu-img`, `aborted`.
 */
export async function compactVhd(path: string, req: { format?: VhdFormat | string }, opts: VhdToolOptions): Promise<CompactVhdResult> {
  const image = resolve(path);
  const chain = await walkBackingChain(image, req.format, { allowedDirs: opts.allowedDirs });
  const top = chain[0];
  if (!top) throw new Error("compactVhd: empty chain");
  const rule = COMPACTABLE[top.format];
  if (!rule.types.includes(top.vhdType)) {
    throw new VmhostError("compact-unsupported", `cannot compact ${image}: ${rule.why || `a ${top.vhdType.toLowerCase()} ${top.format} cannot be compacted`}. Compact works on dynamic vhdx and vhd, and on qcow2 (differencing included)`);
  }
  await refuseInUse(identityOfChain(chain), "write", opts, "compacting it");
  const st = await stat(image);
  refuseHardLinks(image, st.nlink, "compacting");
  const drv = qemuDriverOf(top.format);
  const keepBacking = top.backingFile !== undefined && top.backingFormat !== undefined ? ["-B", top.backingFile, "-F", qemuDriverOf(top.backingFormat)] : [];
  const options = createOptions(top.format, "Dynamic", top.blockSize);
  await withStagedFile(image, "replace", (tmp) =>
    qemuImg(["convert", "-p", "-f", drv, "-O", drv, ...options, ...keepBacking, image, tmp], { onProgress: opts.onProgress, signal: opts.signal }),
  );
  return { disk: await getVhd(image, { allowedDirs: opts.allowedDirs, format: top.format }), fileSizeBefore: top.fileSize, allocatedBefore: top.allocatedSize };
}

export interface VhdCheckResult {
  path: string;
  vhdFormat: VhdFormat;
  /** False for formats qemu-img cannot check (vhd, raw: qemu-img check exits 63). */
  supported: boolean;
  /** No errors and no leaks (qemu-img check exit 0); undefined when not supported. */
  clean?: boolean;
  /** qemu-img check's report. */
  report: string;
}

/**
 * `qemu-img check` (exit codes per qemu-img(1): 0 clean, 2 corruptions, 3 leaks only, 63 the format
 * cannot be checked). qemu-img check opens the backing chain, so the chain is walked first. Read-only;
 * -U is not used, so an image a running VM writes is refused by QEMU's lock (no answer is better than
 * a wrong one). Errors: walkBackingChain's, `qemu-img` (1: the check itself failed).
 */
export async function checkVhd(path: string, req: { format?: VhdFormat | string; allowedDirs: readonly string[] }): Promise<VhdCheckResult> {
  const chain = await walkBackingChain(resolve(path), req.format, { allowedDirs: req.allowedDirs });
  const top = chain[0];
  if (!top) throw new Error("checkVhd: empty chain");
  const res = await runImageTool(qemuImgBinary(), ["check", "-f", qemuDriverOf(top.format), top.path], { okCodes: [0, 2, 3, 63] });
  const report = (res.stdout + res.stderr).trim();
  if (res.code === 63) return { path: top.path, vhdFormat: top.format, supported: false, report };
  return { path: top.path, vhdFormat: top.format, supported: true, clean: res.code === 0, report };
}
