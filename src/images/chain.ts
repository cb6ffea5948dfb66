// Backing chains: an image may name another file that QEMU opens underneath it (qcow2 backing
// files, and qcow2 external data files). A hostile image names a host file (/etc/shadow) and root's
// QEMU hands it to the guest. vmhost walks the chain itself, member by member, and lets QEMU open a
// member only after checking it.
import { realpath, stat } from "node:fs/promises";
import { isAbsolute, resolve, sep } from "node:path";
import { z } from "zod";
import { VmhostError } from "../util/errors.js";
import { checkDeclaredFormat, qemuDriverOf, vhdFormatOfDriver, type VhdFormat, type VhdType } from "./format.js";
import { qemuImg } from "./tools.js";

/** A file by identity: device and inode (stat(2) st_dev, st_ino), as bigints so no precision is lost. */
export interface FileIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
}

/** "dev:ino", a map key for a FileIdentity. */
export function fileKey(f: FileIdentity): string {
  return `${f.dev}:${f.ino}`;
}

export interface BackingChainMember {
  /** The path QEMU opens: the image as given (absolute), then each backing file as QEMU resolves it. */
  path: string;
  /** The same file with every symlink resolved. */
  realPath: string;
  format: VhdFormat;
  /** Fixed / Dynamic from the content; Differencing when the member has a backing file. */
  vhdType: VhdType;
  /** Guest-visible size in bytes (qemu-img info "virtual-size"). */
  virtualSize: number;
  /** Bytes the file occupies on the host (qemu-img info "actual-size"). */
  allocatedSize: number;
  /** The file's length in bytes (st_size). */
  fileSize: number;
  file: FileIdentity;
  /** The next member's path and its format as recorded in this image. */
  backingFile?: string;
  backingFormat?: VhdFormat;
  /** Block or cluster size in bytes, where the format has one (qemu-img info "cluster-size"). */
  blockSize?: number;
  /** qemu-img info "dirty-flag": the image was not closed cleanly (vhdx log, qcow2 lazy refcounts). */
  dirty?: boolean;
}

export interface BackingChainPolicy {
  /**
   * Directories backing files may live in, e.g. [$VMHOST_HOME, the appliance cache]. Compared after
   * resolving symlinks on both sides. The image itself (member 0) is what the user named and is not
   * held to these unless `imageMustBeAllowed` is set.
   */
  allowedDirs: readonly string[];
  imageMustBeAllowed?: boolean;
  /** Longest chain accepted, image included (default 32). */
  maxDepth?: number;
}

/**
 * A backing chain vmhost will not hand to QEMU. Names the image the user gave, the member at fault and
 * why; `code` "backing-chain-refused".
 */
export class BackingChainError extends VmhostError {
  constructor(
    readonly image: string,
    readonly member: string,
    readonly reason: string,
  ) {
    super("backing-chain-refused", `disk image ${image} refused: ${member === image ? "" : `its backing chain reaches ${member}, which `}${reason}`);
    this.name = "BackingChainError";
  }
}

const infoSchema = z
  .object({
    "virtual-size": z.number(),
    format: z.string(),
    filename: z.string(),
    "actual-size": z.number().optional(),
    "cluster-size": z.number().optional(),
    "backing-filename": z.string().optional(),
    "full-backing-filename": z.string().optional(),
    "backing-filename-format": z.string().optional(),
    "dirty-flag": z.boolean().optional(),
    "format-specific": z
      .object({ type: z.string(), data: z.object({ "data-file": z.string().optional() }).passthrough() })
      .passthrough()
      .optional(),
  })
  .passthrough();
export type QemuImgInfo = z.infer<typeof infoSchema>;

/**
 * `qemu-img info --output=json -U -f DRIVER PATH` for one image, without opening its backing file
 * (qemu-img opens the top image with BDRV_O_NO_BACKING unless --backing-chain is given).
 * -U (force share) reads an image a running VM holds locked. Errors: `qemu-img` with qemu-img's message.
 */
export async function qemuImgInfo(path: string, format: VhdFormat): Promise<QemuImgInfo> {
  const out = await qemuImg(["info", "--output=json", "-U", "-f", qemuDriverOf(format), path]);
  return parseInfo(out, path);
}

function parseInfo(out: string, path: string): QemuImgInfo {
  try {
    return infoSchema.parse(JSON.parse(out));
  } catch (err) {
    throw new VmhostError("qemu-img", `qemu-img info ${path}: unexpected output (${err instanceof Error ? err.message : String(err)})`, 500);
  }
}

async function realDirs(dirs: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const d of dirs) {
    try {
      out.push(await realpath(resolve(d)));
    } catch {
      // A directory that does not exist holds nothing; leave it out.
    }
  }
  return out;
}

function within(path: string, dirs: readonly string[]): boolean {
  return dirs.some((d) => path === d || path.startsWith(d.endsWith(sep) ? d : d + sep));
}

/**
 * Walks `path`'s backing chain without letting QEMU open an unchecked file. For each member, in order:
 * its format must agree with its content (checkDeclaredFormat: member 0 against `format` or its
 * extension, every backing file against the format recorded in its overlay); `qemu-img info` (no
 * --backing-chain) reads its header; a backing file must have its format recorded
 * ("backing-filename-format"; else QEMU would probe it), be an absolute path of a regular file (no
 * "json:" or protocol names, no devices), and lie under `policy.allowedDirs` after symlinks are
 * resolved; a qcow2 external data file is refused outright. Finally `qemu-img info --backing-chain`
 * must name the same files with the same formats.
 * Returns the members, the image first. Errors: BackingChainError (`backing-chain-refused`), and
 * checkDeclaredFormat's errors for the image itself.
 */
export async function walkBackingChain(path: string, format: VhdFormat | string | undefined, policy: BackingChainPolicy): Promise<BackingChainMember[]> {
  const image = resolve(path);
  const allowed = await realDirs(policy.allowedDirs);
  const maxDepth = policy.maxDepth ?? 32;
  const members: BackingChainMember[] = [];
  const seen = new Set<string>();
  let current = image;
  let currentFormat: VhdFormat | string | undefined = format;
  for (;;) {
    const isTop = members.length === 0;
    if (members.length >= maxDepth) throw new BackingChainError(image, current, `is more than ${maxDepth} images deep; vmhost accepts chains of at most ${maxDepth}`);
    const real = await realpath(current).catch(() => undefined);
    if (!isTop || policy.imageMustBeAllowed) {
      if (real === undefined) throw new BackingChainError(image, current, "does not exist");
      if (!within(real, allowed)) {
        const where = real === current ? "" : ` (it resolves to ${real})`;
        throw new BackingChainError(image, current, `lies outside the directories vmhost keeps disks in (${policy.allowedDirs.join(", ")})${where}: copy or convert the backing file into one of them and rebase the image on it`);
      }
    }
    let checked;
    try {
      checked = await checkDeclaredFormat(current, currentFormat);
    } catch (err) {
      if (isTop || !(err instanceof VmhostError)) throw err;
      throw new BackingChainError(image, current, `fails the format check against the format its overlay records: ${err.message}`);
    }
    const st = await stat(current, { bigint: true });
    const file: FileIdentity = { dev: st.dev, ino: st.ino };
    const key = fileKey(file);
    if (seen.has(key)) throw new BackingChainError(image, current, "appears twice in the chain (a loop)");
    seen.add(key);
    const info = await qemuImgInfo(current, checked.format);
    const member: BackingChainMember = {
      path: current,
      realPath: real ?? current,
      format: checked.format,
      vhdType: checked.vhdType,
      virtualSize: info["virtual-size"],
      allocatedSize: info["actual-size"] ?? 0,
      fileSize: Number(st.size),
      file,
    };
    if (info["cluster-size"] !== undefined) member.blockSize = info["cluster-size"];
    if (info["dirty-flag"] !== undefined) member.dirty = info["dirty-flag"];
    members.push(member);
    const dataFile = info["format-specific"]?.data["data-file"];
    if (dataFile !== undefined) {
      throw new BackingChainError(image, current, `keeps its data in an external file (${dataFile}); vmhost does not attach qcow2 images with an external data file: convert it into a self-contained image (qemu-img convert, or vmhost vhd convert)`);
    }
    const backingName = info["backing-filename"];
    if (backingName === undefined) break;
    const backing = info["full-backing-filename"] ?? backingName;
    const recorded = info["backing-filename-format"];
    if (recorded === undefined) {
      throw new BackingChainError(image, current, `names the backing file "${backingName}" without recording its format, so QEMU would guess it from the content; record it: qemu-img rebase -u -F FORMAT -b ${backing} ${current}`);
    }
    const backingFormat = vhdFormatOfDriver(recorded);
    if (!backingFormat) throw new BackingChainError(image, current, `records its backing file "${backingName}" in format "${recorded}"; vmhost attaches only vhdx, vhd (vpc), qcow2 and raw`);
    if (!isAbsolute(backing)) {
      throw new BackingChainError(image, current, `names the backing file "${backingName}", which is not a plain file path`);
    }
    let bst;
    try {
      bst = await stat(backing);
    } catch {
      throw new BackingChainError(image, backing, "does not exist");
    }
    if (!bst.isFile()) throw new BackingChainError(image, backing, "is not a regular file");
    member.backingFile = backing;
    member.backingFormat = backingFormat;
    member.vhdType = "Differencing";
    current = backing;
    currentFormat = backingFormat;
  }
  await confirmWithQemu(image, members);
  return members;
}

const chainSchema = z.array(infoSchema);

/** QEMU resolves the chain itself when it opens the image; it must arrive at the same files. */
async function confirmWithQemu(image: string, members: readonly BackingChainMember[]): Promise<void> {
  const top = members[0];
  if (!top || members.length === 1) return;
  const out = await qemuImg(["info", "--output=json", "--backing-chain", "-U", "-f", qemuDriverOf(top.format), top.path]);
  let chain: z.infer<typeof chainSchema>;
  try {
    chain = chainSchema.parse(JSON.parse(out));
  } catch (err) {
    throw new VmhostError("qemu-img", `qemu-img info --backing-chain ${image}: unexpected output (${err instanceof Error ? err.message : String(err)})`, 500);
  }
  const theirs = chain.map((c) => `${c.filename} (${c.format})`);
  const ours = members.map((m) => `${m.path} (${qemuDriverOf(m.format)})`);
  if (theirs.join("\n") !== ours.join("\n")) {
    throw new BackingChainError(image, image, `is resolved by QEMU to a different chain (${theirs.join(" -> ")}) than vmhost checked (${ours.join(" -> ")})`);
  }
}
