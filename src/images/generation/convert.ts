// Carrying out a conversion plan on a copy: the source image is only ever read (by qemu-img
// convert), the work happens on a raw temporary file next to the destination, and the
// destination appears under its name only when complete (hard link of a synced temp file,
// which also refuses to replace an existing file).
import { randomBytes } from "node:crypto";
import { link, lstat, mkdtemp, open, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { syncDir } from "../../util/atomic.js";
import { VmhostError } from "../../util/errors.js";
import { run } from "../appliance/run.js";
import { type Gen2BootChain, debianSignedBootChain } from "./boot-chain.js";
import { MTOOLS_ENV, SECTOR, readPartitionTable } from "./layout.js";
import { type ConversionPlan, ESP_TYPE_GUID, type ImageFormat, type Inspection, type Refusal, inspectRaw } from "./plan.js";

/** The disk cannot be converted; `refusals` says why, each with what to do. */
export class ConversionRefusedError extends VmhostError {
  constructor(
    readonly source: string,
    readonly refusals: Refusal[],
  ) {
    super(
      "generation-conversion-refused",
      `${source} cannot be converted to a Generation 2 boot disk:\n` + refusals.map((r) => `- ${r.reason} (${r.code}). What to do: ${r.fix}`).join("\n"),
      400,
    );
    this.name = "ConversionRefusedError";
  }
}

/** The converted disk did not come out as planned (a tool misbehaved); nothing was written under the destination name. */
export class ConversionFailedError extends VmhostError {
  constructor(message: string) {
    super("generation-conversion-failed", message, 500);
    this.name = "ConversionFailedError";
  }
}

export interface InspectOptions {
  /** The boot chain to plan with; default: Debian's signed chain from the appliance's packages. */
  bootChain?: Gen2BootChain;
  /** Where temporary files go (a raw copy of a non-raw source, the unpacked chain); default os.tmpdir(). */
  workDir?: string;
  log?: (line: string) => void;
}

export interface ConvertOptions extends InspectOptions {
  /** Format of the destination; default: qcow2. */
  dstFormat?: ImageFormat;
  /** Return the plan without writing the destination. */
  dryRun?: boolean;
}

export interface ConversionResult {
  plan: ConversionPlan;
  /** Absent for a dry run. */
  output?: { path: string; format: ImageFormat; virtualSize: number };
}

const FORMATS: readonly ImageFormat[] = ["raw", "qcow2", "vhdx", "vpc"];

function checkFormat(f: string, what: string): asserts f is ImageFormat {
  if (!FORMATS.includes(f as ImageFormat)) throw new VmhostError("bad-format", `${what} format "${f}" is not one of ${FORMATS.join(", ")}`);
}

function qemuImg(): string {
  // As src/images/disk.ts: VMHOST_QEMU_IMG overrides the qemu-img on PATH.
  const env = process.env["VMHOST_QEMU_IMG"];
  return env && env.length > 0 ? env : "qemu-img";
}

async function withChain<T>(opts: InspectOptions, work: string, f: (chain: Gen2BootChain) => Promise<T>): Promise<T> {
  const chain = opts.bootChain ?? (await debianSignedBootChain(work, opts.log ? { log: opts.log } : {}));
  return f(chain);
}

/**
 * Can `image` (in `format`) become a Generation 2 boot disk, and how. Reads the image only:
 * a raw image in place (sfdisk --json, blkid -p, mtools, debugfs: all open it read-only),
 * any other format through a temporary raw copy in `opts.workDir` (qemu-img convert; time
 * and sparse space proportional to the data in the image), removed afterwards.
 * Returns the plan, or the refusals (each with its reason and what to do).
 */
export async function inspect(image: string, format: ImageFormat, opts: InspectOptions = {}): Promise<Inspection> {
  checkFormat(format, "source");
  const src = resolve(image);
  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), "vmhost-convert-"));
  try {
    return await withChain(opts, work, async (chain) => {
      let raw = src;
      if (format !== "raw") {
        raw = join(work, "source.raw");
        await run(qemuImg(), ["convert", "-q", "-f", format, "-O", "raw", src, raw]);
      }
      return inspectRaw(raw, { path: src, format }, chain);
    });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function mtools(tool: string, image: string, offset: number, args: string[], okCodes?: number[]): Promise<{ code: number; stdout: string }> {
  return run(tool, ["-i", `${image}@@${offset}`, ...args], { env: MTOOLS_ENV, ...(okCodes ? { okCodes } : {}) });
}

/** Carries out `plan` on the raw file `raw` (a private copy). */
async function applyPlan(raw: string, plan: ConversionPlan, chain: Gen2BootChain, work: string): Promise<void> {
  if (plan.loader.kind === "existing") return; // GPT with a UEFI loader already: nothing to change
  const gpt = plan.gpt!;
  const esp = plan.esp;
  if (esp.action === "existing") throw new Error("unreachable: an MBR plan with an existing ESP");
  if (plan.resize) {
    const fh = await open(raw, "r+");
    try {
      await fh.truncate(plan.resize.toBytes);
    } finally {
      await fh.close();
    }
  }
  // NB: no -q: with it sgdisk wrote no table (../shared/notes/qemu-facts.md §1).
  await run("sgdisk", ["--mbrtogpt", raw]);
  const args = ["--disk-guid", gpt.diskGuid];
  for (const [n, guid] of Object.entries(gpt.partitionGuids)) if (esp.action !== "create" || Number(n) !== esp.partition) args.push("--partition-guid", `${n}:${guid}`);
  if (esp.action === "create") {
    args.push("--new", `${esp.partition}:${esp.startLba}:${esp.startLba + esp.sizeLba - 1}`, "--partition-guid", `${esp.partition}:${gpt.partitionGuids[String(esp.partition)]}`);
  }
  args.push("--typecode", `${esp.partition}:ef00`, "--change-name", `${esp.partition}:EFI System Partition`);
  await run("sgdisk", [...args, raw]);

  const espOffset = (esp.action === "create" ? esp.startLba : plan.table.partitions.find((p) => p.number === esp.partition)!.startLba) * SECTOR;
  if (esp.action === "create") {
    // -H: the FAT's hidden-sectors field is the partition start, as an installer's mkfs.vfat writes it.
    await mtools("mformat", raw, espOffset, ["-F", "-T", String(esp.sizeLba), "-h", "64", "-s", "32", "-H", String(esp.startLba), "-v", "EFI", "::"]);
  }
  for (const dir of ["::/EFI", "::/EFI/BOOT"]) {
    const exists = await mtools("mdir", raw, espOffset, ["-b", dir], [0, 1]);
    if (exists.code !== 0) await mtools("mmd", raw, espOffset, [dir]);
  }
  const cfg = join(work, "grub.cfg");
  await writeFile(cfg, plan.loader.grubCfg);
  const copies: [string, string][] = [
    [chain.shim, "::/EFI/BOOT/BOOTX64.EFI"],
    [chain.grub, "::/EFI/BOOT/grubx64.efi"],
    [chain.mokManager, "::/EFI/BOOT/mmx64.efi"],
    [cfg, "::/EFI/BOOT/grub.cfg"],
  ];
  for (const [from, to] of copies) await mtools("mcopy", raw, espOffset, ["-o", from, to]);
  await verify(raw, plan, espOffset);
}

/** Checks the result with the tools' own eyes before it may become the destination. */
async function verify(raw: string, plan: ConversionPlan, espOffset: number): Promise<void> {
  const v = await run("sgdisk", ["--verify", raw]);
  if (!/No problems found/.test(v.stdout)) throw new ConversionFailedError(`sgdisk --verify found problems in the converted copy:\n${v.stdout.trim()}`);
  const table = await readPartitionTable(raw);
  if (table?.label !== "gpt") throw new ConversionFailedError("the converted copy has no GPT");
  for (const p of plan.table.partitions) {
    const q = table.partitions.find((x) => x.number === p.number);
    if (!q || q.startLba !== p.startLba || q.sizeLba !== p.sizeLba)
      throw new ConversionFailedError(`partition ${p.number} moved or changed size in the GPT (${p.startLba}+${p.sizeLba} -> ${q ? `${q.startLba}+${q.sizeLba}` : "missing"})`);
  }
  const espEntry = table.partitions.find((x) => x.number === plan.esp.partition);
  if (espEntry?.type !== ESP_TYPE_GUID) throw new ConversionFailedError(`partition ${plan.esp.partition} is not typed as an EFI System Partition (${espEntry?.type ?? "missing"})`);
  const listing = (await mtools("mdir", raw, espOffset, ["-a", "-b", "::/EFI/BOOT"])).stdout.toLowerCase();
  for (const f of ["bootx64.efi", "grubx64.efi", "mmx64.efi", "grub.cfg"])
    if (!listing.includes(`::/efi/boot/${f}`)) throw new ConversionFailedError(`\\EFI\\BOOT\\${f} is missing on the ESP after copying`);
}

async function refuseExisting(path: string): Promise<void> {
  try {
    await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  throw new VmhostError("exists", `${path} already exists; refusing to overwrite it`, 409);
}

/**
 * Converts the Gen1 boot disk `srcImage` (format `srcFormat`) into a Gen2 boot disk at
 * `dstImage` (format `opts.dstFormat`, default qcow2) and returns the plan it carried out.
 * The source is only read (qemu-img convert to a raw temporary file beside the
 * destination); the destination must not exist and appears only when complete (temporary
 * file, fsync, hard link, directory fsync). A crash leaves at most hidden
 * `.NAME.*.convert-*.tmp` files beside the destination.
 * With `opts.dryRun`, returns `{ plan }` as `inspect` would, writing nothing.
 * Throws ConversionRefusedError (with the refusals) when the disk cannot be converted,
 * ConversionFailedError when the result failed its checks, VmhostError "exists" when the
 * destination exists.
 */
export async function convert(srcImage: string, srcFormat: ImageFormat, dstImage: string, opts: ConvertOptions = {}): Promise<ConversionResult> {
  checkFormat(srcFormat, "source");
  const dstFormat = opts.dstFormat ?? "qcow2";
  checkFormat(dstFormat, "destination");
  const src = resolve(srcImage);
  const dst = resolve(dstImage);
  if (src === dst) throw new VmhostError("bad-destination", `the destination ${dst} is the source; the source is never changed`);
  await refuseExisting(dst);
  if (opts.dryRun) {
    const r = await inspect(src, srcFormat, opts);
    if (!r.convertible) throw new ConversionRefusedError(src, r.refusals);
    return { plan: r.plan };
  }
  const dir = dirname(dst);
  const tag = `${process.pid}.${randomBytes(4).toString("hex")}`;
  const tmpRaw = join(dir, `.${basename(dst)}.${tag}.convert-raw.tmp`);
  const tmpOut = join(dir, `.${basename(dst)}.${tag}.convert-out.tmp`);
  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), "vmhost-convert-"));
  try {
    return await withChain(opts, work, async (chain) => {
      await run(qemuImg(), ["convert", "-q", "-f", srcFormat, "-O", "raw", src, tmpRaw]);
      const r = await inspectRaw(tmpRaw, { path: src, format: srcFormat }, chain);
      if (!r.convertible) throw new ConversionRefusedError(src, r.refusals);
      await applyPlan(tmpRaw, r.plan, chain, work);
      let ready = tmpRaw;
      if (dstFormat !== "raw") {
        // vpc: without force_size qemu rounds the size to a CHS geometry, which can cut off the backup GPT.
        const o = dstFormat === "vpc" ? ["-o", "force_size=on"] : [];
        await run(qemuImg(), ["convert", "-q", "-f", "raw", "-O", dstFormat, ...o, tmpRaw, tmpOut]);
        ready = tmpOut;
      }
      await fsyncPath(ready);
      try {
        await link(ready, dst);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EEXIST") throw new VmhostError("exists", `${dst} already exists; refusing to overwrite it`, 409);
        throw e;
      }
      await syncDir(dir);
      return { plan: r.plan, output: { path: dst, format: dstFormat, virtualSize: r.plan.resize?.toBytes ?? r.plan.source.virtualSize } };
    });
  } finally {
    await unlink(tmpRaw).catch(() => undefined);
    await unlink(tmpOut).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}
