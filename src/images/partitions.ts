// The guest's partition table, read by sfdisk (util-linux) and rewritten by sgdisk (gptfdisk), never
// by vmhost's own parser: where the guest's data ends decides whether a disk may shrink.
import { mkdtemp, open, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { qemuDriverOf, type VhdFormat } from "./format.js";
import { qemuImg, runImageTool } from "./tools.js";

const SECTOR = 512;
/** How much of the disk's start is copied out to read the table: the MBR, GPT header and entries. */
const HEAD_BYTES = 1024 * 1024;

export interface Partition {
  /** The partition's number as the guest's tools show it (sdX<number>). */
  number: number;
  /** Byte offsets on the virtual disk: first byte, and one past the last. */
  start: number;
  end: number;
  /** MBR type byte (hex, e.g. "83", "5" for extended) or GPT type GUID. */
  type: string;
}

export interface PartitionTable {
  label: "gpt" | "dos";
  sectorSize: number;
  partitions: Partition[];
  /** Bytes the backup GPT takes at the end of the disk (header + entry array); 0 for MBR. */
  gptBackupBytes: number;
  /** The smallest virtual size that keeps every partition and, for GPT, room for the backup table. */
  minimumSize: number;
}

const sfdiskSchema = z.object({
  partitiontable: z.object({
    label: z.string(),
    device: z.string(),
    sectorsize: z.number().int().positive().optional(),
    partitions: z
      .array(z.object({ node: z.string(), start: z.number().int().nonnegative(), size: z.number().int().nonnegative(), type: z.string() }))
      .optional(),
  }),
});

/**
 * sfdisk's reading of a raw disk file, or undefined when it finds no partition table (sfdisk exit 1,
 * "does not contain a recognized partition table"). Reads only (sfdisk --json dumps, sfdisk(8)).
 */
async function sfdiskJson(rawFile: string): Promise<z.infer<typeof sfdiskSchema>["partitiontable"] | undefined> {
  const res = await runImageTool("sfdisk", ["--json", rawFile], { okCodes: [0, 1] });
  if (res.code === 1) {
    if (/does not contain a recognized partition table/.test(res.stderr)) return undefined;
    throw new VmhostError("image-tool", `sfdisk --json failed: ${res.stderr.trim()}`);
  }
  try {
    return sfdiskSchema.parse(JSON.parse(res.stdout)).partitiontable;
  } catch (err) {
    throw new VmhostError("image-tool", `sfdisk --json: unexpected output (${err instanceof Error ? err.message : String(err)})`, 500);
  }
}

/**
 * GPT header fields (UEFI 2.10 §5.3.2, Table 5.5), little-endian: PartitionEntryLBA u64 at 72,
 * NumberOfPartitionEntries u32 at 80, SizeOfPartitionEntry u32 at 84. `lba` is the header's sector.
 */
async function readGptHeader(rawFile: string, lba: number): Promise<{ entriesLba: number; entriesBytes: number }> {
  const fh = await open(rawFile, "r");
  try {
    const buf = Buffer.alloc(SECTOR);
    const { bytesRead } = await fh.read(buf, 0, SECTOR, lba * SECTOR);
    if (bytesRead < 92 || buf.toString("latin1", 0, 8) !== "EFI PART") {
      throw new VmhostError("partition-table", `no GPT header at sector ${lba}`);
    }
    return { entriesLba: Number(buf.readBigUInt64LE(72)), entriesBytes: buf.readUInt32LE(80) * buf.readUInt32LE(84) };
  } finally {
    await fh.close();
  }
}

/**
 * A raw file of the image's full virtual size whose first MiB holds the image's first MiB (sparse
 * elsewhere), enough for sfdisk to read an MBR or a primary GPT. `qemu-img dd` reads through the
 * backing chain, so check the chain first (walkBackingChain). `forceShare` adds -U (reading an
 * image a running VM holds).
 */
async function copyHead(path: string, format: VhdFormat, virtualSize: number, dir: string, forceShare: boolean): Promise<string> {
  const out = join(dir, "head.raw");
  const count = Math.max(1, Math.ceil(Math.min(HEAD_BYTES, virtualSize) / SECTOR));
  await qemuImg(["dd", ...(forceShare ? ["-U"] : []), "-f", qemuDriverOf(format), "-O", "raw", `bs=${SECTOR}`, `count=${count}`, `if=${path}`, `of=${out}`]);
  await truncate(out, virtualSize);
  return out;
}

async function withWorkDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  // qemu-io splits its -c commands at spaces, without quoting: keep the work files' paths free of them.
  const base = /\s/.test(tmpdir()) ? "/tmp" : tmpdir();
  const dir = await mkdtemp(join(base, "vmhost-vhd-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function tableOfRaw(rawFile: string): Promise<PartitionTable | undefined> {
  const t = await sfdiskJson(rawFile);
  if (!t) return undefined;
  if (t.label !== "gpt" && t.label !== "dos") throw new VmhostError("partition-table", `partition table of type "${t.label}": vmhost reads MBR (dos) and GPT only`);
  const sectorSize = t.sectorsize ?? SECTOR;
  const partitions: Partition[] = (t.partitions ?? []).map((p, i) => {
    const m = /(\d+)$/.exec(p.node);
    return { number: m ? Number(m[1]) : i + 1, start: p.start * sectorSize, end: (p.start + p.size) * sectorSize, type: p.type };
  });
  let gptBackupBytes = 0;
  if (t.label === "gpt") {
    const h = await readGptHeader(rawFile, 1);
    gptBackupBytes = SECTOR + Math.ceil(h.entriesBytes / SECTOR) * SECTOR;
  }
  const lastEnd = partitions.reduce((a, p) => Math.max(a, p.end), 0);
  // With no partition the table itself must stay: the MBR, or the primary GPT (header + entries).
  const floor = t.label === "gpt" ? 2 * SECTOR + (gptBackupBytes - SECTOR) : SECTOR;
  return { label: t.label, sectorSize, partitions, gptBackupBytes, minimumSize: Math.max(lastEnd, floor) + gptBackupBytes };
}

/**
 * The guest's partition table on an image (any vmhost format), or undefined when there is none.
 * Errors: `partition-table` (an unreadable or unsupported table), `qemu-img`, `image-tool`.
 */
export async function readPartitionTable(path: string, format: VhdFormat, virtualSize: number, opts: { forceShare?: boolean } = {}): Promise<PartitionTable | undefined> {
  if (format === "raw") return tableOfRaw(path);
  return withWorkDir(async (dir) => tableOfRaw(await copyHead(path, format, virtualSize, dir, opts.forceShare ?? false)));
}

/** Why a disk may not shrink to `newSize`; `code` "shrink-refused". */
export class ShrinkRefusedError extends VmhostError {
  constructor(
    readonly path: string,
    readonly newSize: number,
    readonly reason: string,
  ) {
    super("shrink-refused", `cannot shrink ${path} to ${formatSize(newSize)}: ${reason}`);
    this.name = "ShrinkRefusedError";
  }
}

/**
 * Refuses a shrink that would cut into a partition or the backup GPT, naming the partition and where
 * it ends; also refuses a disk with no partition table (vmhost cannot tell where the data ends).
 * Returns the table when the shrink is allowed.
 */
export function checkShrink(path: string, table: PartitionTable | undefined, newSize: number): PartitionTable {
  if (!table) {
    throw new ShrinkRefusedError(path, newSize, "it holds no partition table, so vmhost cannot tell where the guest's data ends; only growing is allowed");
  }
  for (const p of [...table.partitions].sort((a, b) => b.end - a.end)) {
    if (p.end > newSize) {
      throw new ShrinkRefusedError(
        path,
        newSize,
        `partition ${p.number} ends at ${formatSize(p.end)}, beyond the new size ${formatSize(newSize)}: shrink the partition (and its file system) in the guest first; the smallest size now is ${formatSize(table.minimumSize)}`,
      );
    }
  }
  if (table.minimumSize > newSize) {
    throw new ShrinkRefusedError(
      path,
      newSize,
      `the backup GPT needs the last ${formatSize(table.gptBackupBytes)} of the disk, after the last partition; the smallest size now is ${formatSize(table.minimumSize)}`,
    );
  }
  return table;
}

/**
 * Rewrites a GPT for a disk that is about to become `newSize` bytes (smaller than now): the backup
 * header and entries are written at the new end and the primary header (and protective MBR) updated
 * to match, so the table is whole before the image shrinks and after (the state between is that of
 * a disk grown under its table, which GPT readers accept). The work is sgdisk's: `sgdisk -e`
 * ("relocate backup data structures to the end of the disk", sgdisk(8)) on a raw copy of the disk's
 * head sized `newSize`; the changed sectors are then written into the image with `qemu-io write -s`.
 */
export async function relocateGptBackup(path: string, format: VhdFormat, newSize: number): Promise<void> {
  await withWorkDir(async (dir) => {
    const raw = await copyHead(path, format, newSize, dir, false);
    // sgdisk warns about the missing backup (it is beyond the copy's end) and then rebuilds it.
    await runImageTool("sgdisk", ["-e", raw]);
    const verify = await runImageTool("sgdisk", ["-v", raw]);
    if (!/No problems found/.test(verify.stdout)) throw new VmhostError("partition-table", `sgdisk -v after relocating the backup GPT of ${path}: ${verify.stdout.trim()}`);
    const primary = await readGptHeader(raw, 1);
    const lastLba = newSize / SECTOR - 1;
    const backup = await readGptHeader(raw, lastLba);
    const headLen = primary.entriesLba * SECTOR + Math.ceil(primary.entriesBytes / SECTOR) * SECTOR;
    const tailStart = backup.entriesLba * SECTOR;
    const tailLen = newSize - tailStart;
    const head = join(dir, "head.bin");
    const tail = join(dir, "tail.bin");
    await writeFile(head, await readRange(raw, 0, headLen));
    await writeFile(tail, await readRange(raw, tailStart, tailLen));
    // The backup first, then the primary header that points at it.
    const res = await runImageTool("qemu-io", ["-f", qemuDriverOf(format), "-c", `write -q -s ${tail} ${tailStart} ${tailLen}`, "-c", `write -q -s ${head} 0 ${headLen}`, path]);
    if (/failed|error/i.test(res.stdout + res.stderr)) throw new VmhostError("image-tool", `qemu-io could not write the GPT of ${path}: ${(res.stdout + res.stderr).trim()}`);
  });
}

async function readRange(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) throw new VmhostError("partition-table", `short read of ${file} at ${offset}`);
    return buf;
  } finally {
    await fh.close();
  }
}
