// Reading a raw disk image without mounting it and without loop devices: the partition
// table through sfdisk --json (read-only; `sgdisk -p` is NOT used on a source, it opens the
// file for writing), file systems through blkid's low-level probe at an offset, FAT files
// through mtools' "image@@offset", ext2/3/4 files through debugfs' "image?offset=" (e2fsprogs'
// unix I/O manager option), all read-only.
import { open } from "node:fs/promises";
import { z } from "zod";
import { CommandError, run } from "../appliance/run.js";

export const SECTOR = 512;
export const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: "1", MTOOLSRC: "/dev/null" };
const MAX_FILE = 512 * 1024 * 1024;

/** One partition as sfdisk reports it. Sizes in 512-byte sectors. */
export interface Partition {
  number: number;
  startLba: number;
  sizeLba: number;
  /** MBR: the type byte in hex, lower case without 0x ("6", "83", "ee"); GPT: the type GUID, upper case. */
  type: string;
  bootable: boolean;
}

export interface PartitionTable {
  label: "dos" | "gpt";
  /** MBR: the disk signature as 8 hex digits ("9a1b2dc1"); GPT: the disk GUID. */
  id: string;
  partitions: Partition[];
}

const SfdiskSchema = z.object({
  partitiontable: z.object({
    label: z.string(),
    id: z.string().optional(),
    device: z.string(),
    sectorsize: z.number().optional(),
    partitions: z
      .array(z.object({ node: z.string(), start: z.number(), size: z.number(), type: z.string(), bootable: z.boolean().optional() }))
      .default([]),
  }),
});

/** The partition table, or undefined when the image has none sfdisk recognizes. Throws for a sector size other than 512. */
export async function readPartitionTable(image: string): Promise<PartitionTable | undefined> {
  let out: string;
  try {
    out = (await run("sfdisk", ["--json", image])).stdout;
  } catch (e) {
    if (e instanceof CommandError && /does not contain a recognized partition table/.test(e.stderr)) return undefined;
    throw e;
  }
  const pt = SfdiskSchema.parse(JSON.parse(out)).partitiontable;
  if (pt.sectorsize !== undefined && pt.sectorsize !== SECTOR) throw new Error(`${image}: sector size ${pt.sectorsize}, only 512 is supported`);
  if (pt.label !== "dos" && pt.label !== "gpt") throw new Error(`${image}: partition table type "${pt.label}" is neither MBR nor GPT`);
  const partitions = pt.partitions.map((p) => {
    const suffix = p.node.startsWith(pt.device) ? p.node.slice(pt.device.length) : p.node;
    const n = /(\d+)$/.exec(suffix);
    if (!n) throw new Error(`sfdisk named a partition ${p.node}: no number`);
    return { number: Number(n[1]), startLba: p.start, sizeLba: p.size, type: pt.label === "dos" ? p.type.toLowerCase() : p.type.toUpperCase(), bootable: p.bootable ?? false };
  });
  const id = (pt.id ?? "").replace(/^0x/, "").toLowerCase();
  return { label: pt.label, id, partitions };
}

/** What blkid's low-level probe finds in a byte range of the image (TYPE, UUID, LABEL, VERSION ...). */
export interface FsProbe {
  type: string;
  uuid?: string;
  label?: string;
  /** blkid's VERSION, e.g. "FAT16", "FAT32", "1.0". */
  version?: string;
}

export async function probeFs(image: string, offset: number, size: number): Promise<FsProbe | undefined> {
  const r = await run("blkid", ["-p", "-O", String(offset), "-S", String(size), "-o", "export", image], { okCodes: [0, 2] });
  if (r.code === 2) return undefined;
  const kv = new Map<string, string>();
  for (const line of r.stdout.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) kv.set(line.slice(0, i), line.slice(i + 1));
  }
  const type = kv.get("TYPE");
  if (!type) return undefined;
  const out: FsProbe = { type };
  if (kv.has("UUID")) out.uuid = kv.get("UUID")!;
  if (kv.has("LABEL")) out.label = kv.get("LABEL")!;
  if (kv.has("VERSION")) out.version = kv.get("VERSION")!;
  return out;
}

export async function readAt(image: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(image, "r");
  try {
    const b = Buffer.alloc(length);
    const { bytesRead } = await fh.read(b, 0, length, offset);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Reads files of one partition's file system. Paths are absolute within that file system. */
export interface FsReader {
  readonly kind: "vfat" | "ext";
  /** The file's bytes, or undefined when there is no such regular file. */
  read(path: string): Promise<Buffer | undefined>;
}

function checkPath(path: string): void {
  if (!path.startsWith("/") || /["\n\r\0]/.test(path)) throw new Error(`unsupported path ${JSON.stringify(path)}`);
}

class FatReader implements FsReader {
  readonly kind = "vfat";
  constructor(
    private readonly image: string,
    private readonly offset: number,
  ) {}

  async read(path: string): Promise<Buffer | undefined> {
    checkPath(path);
    try {
      const r = await run("mtype", ["-i", `${this.image}@@${this.offset}`, `::${path}`], { env: MTOOLS_ENV, maxBuffer: MAX_FILE });
      return r.stdoutBuffer;
    } catch (e) {
      if (e instanceof CommandError && /not found|No such file|is a directory/i.test(e.stderr)) return undefined;
      throw e;
    }
  }
}

class ExtReader implements FsReader {
  readonly kind = "ext";
  constructor(
    private readonly image: string,
    private readonly offset: number,
  ) {}

  private async debugfs(request: string, maxBuffer?: number): Promise<{ stdout: Buffer; stderr: string }> {
    const r = await run("debugfs", ["-R", request, `${this.image}?offset=${this.offset}`], maxBuffer ? { maxBuffer } : {});
    return { stdout: r.stdoutBuffer, stderr: r.stderr.split("\n").filter((l) => l && !/^debugfs \d/.test(l)).join("\n") };
  }

  async read(path: string, hops = 0): Promise<Buffer | undefined> {
    checkPath(path);
    const st = await this.debugfs(`stat "${path}"`);
    if (st.stderr) return undefined; // "File not found by ext2_lookup"
    const text = st.stdout.toString("utf8");
    const type = /Type: (\S+)/.exec(text)?.[1];
    if (type === "symlink") {
      // Debian's /vmlinuz and /initrd.img are symlinks; short targets live in the inode.
      const dest = /Fast link dest: "(.*)"/.exec(text)?.[1];
      if (!dest || hops > 8) return undefined;
      const dir = path.slice(0, path.lastIndexOf("/")) || "/";
      const target = dest.startsWith("/") ? dest : `${dir.replace(/\/$/, "")}/${dest}`;
      return this.read(target.replace(/\/+/g, "/"), hops + 1);
    }
    if (type !== "regular") return undefined;
    const r = await this.debugfs(`cat "${path}"`, MAX_FILE);
    if (r.stderr) return undefined;
    return r.stdout;
  }
}

/** A reader for the file system at `offset`, when it is one this module can read (FAT, ext2/3/4). */
export function fsReader(image: string, offset: number, fs: FsProbe | undefined): FsReader | undefined {
  if (!fs) return undefined;
  if (fs.type === "vfat") return new FatReader(image, offset);
  if (fs.type === "ext2" || fs.type === "ext3" || fs.type === "ext4") return new ExtReader(image, offset);
  return undefined;
}

/** Free bytes of a FAT file system (the "bytes free" line of mdir). */
export async function fatFreeBytes(image: string, offset: number): Promise<number> {
  const r = await run("mdir", ["-i", `${image}@@${offset}`, "::/"], { env: MTOOLS_ENV });
  const m = /([\d ]+) bytes free/.exec(r.stdout);
  if (!m) throw new Error(`mdir did not say how many bytes are free on ${image}@@${offset}`);
  return Number(m[1]!.replace(/ /g, ""));
}
