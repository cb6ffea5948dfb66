import { mkdir, realpath, stat } from "node:fs/promises";
import { dirname, isAbsolute, resolve, sep } from "node:path";
import { walkBackingChain } from "../images/chain.js";
import { findDiskConflict, identityOfChain, type DiskAccess, type DiskIdentity } from "../images/identity.js";
import { sweepStaleTemps } from "../images/staging.js";
import type { ProgressCallback } from "../images/tools.js";
import {
  compactVhd,
  convertVhd,
  getVhd,
  mergeVhd,
  newVhd,
  resizeVhd,
  type CompactVhdResult,
  type InUseCheck,
  type MergeVhdResult,
  type ResizeVhdResult,
  type VhdToolOptions,
  type VirtualHardDisk,
} from "../images/vhd.js";
import type { CompactVhdRequestSchema, ConvertVhdRequestSchema, GetVhdRequestSchema, MergeVhdRequestSchema, NewVhdRequestSchema, ResizeVhdRequestSchema } from "../images/vhd-api.js";
import type { ConfigStore, VmConfig } from "../model/index.js";
import type { Supervisor } from "../supervisor/supervisor.js";
import { VmhostError } from "../util/errors.js";
import type { z } from "zod";
import type { CheckpointManager } from "./checkpoints.js";
import type { DiskPolicy } from "./disks.js";

/**
 * Where vmhostd may create or change files a user names (VHD tools' outputs and in-place changes,
 * exports, import destinations). vmhostd runs as root, so a path a CLI user names is never taken
 * on trust: it must lie, after symlinks are resolved, under $VMHOST_HOME or one of the
 * directories in VMHOST_STORAGE_DIRS (colon-separated absolute paths in vmhostd's environment).
 * Reading is not limited (as `disk add PATH` reads any image); backing chains stay limited to
 * what DiskPolicy allows.
 */
export class StorageDirs {
  readonly dirs: readonly string[];

  constructor(home: string, extra: readonly string[] = storageDirsFromEnv()) {
    this.dirs = [resolve(home), ...extra.map((d) => resolve(d))];
  }

  private async realDirs(): Promise<string[]> {
    const out: string[] = [];
    for (const d of this.dirs) out.push(await realpath(d).catch(() => d));
    return out;
  }

  /** `real`: where `path` (or the folder it goes in) really is, when symlinks make that differ. */
  private refuse(path: string, real?: string): VmhostError {
    const via = real && real !== path && real !== dirname(path) ? ` (it resolves to ${real})` : "";
    return new VmhostError(
      "destination-not-allowed",
      `${path}${via} is outside the directories vmhost writes to (${this.dirs.join(", ")}): vmhostd runs as root, so it creates and changes files only there. Choose a path under one of them, or add the directory to VMHOST_STORAGE_DIRS (colon-separated) in vmhostd's environment`,
      403,
    );
  }

  private async inside(real: string): Promise<boolean> {
    return (await this.realDirs()).some((d) => real === d || real.startsWith(d.endsWith(sep) ? d : d + sep));
  }

  /** `path` is absolute (the CLI resolves relative paths against its own directory). */
  absolute(path: string, what: string): string {
    if (!isAbsolute(path)) throw new VmhostError("bad-request", `${what} must be an absolute path (got ${JSON.stringify(path)})`);
    return resolve(path);
  }

  /** A new file at `path`: its folder must exist and lie inside the allowed directories. */
  async checkNewFile(path: string): Promise<string> {
    const abs = this.absolute(path, "the new file's path");
    const dir = await realpath(dirname(abs)).catch(() => undefined);
    if (dir === undefined) throw new VmhostError("not-found", `the folder ${dirname(abs)} does not exist`, 404);
    if (!(await this.inside(dir))) throw this.refuse(abs, dir);
    return abs;
  }

  /** An existing file changed in place: the file itself (symlinks resolved) must lie inside. */
  async checkExistingFile(path: string): Promise<string> {
    const abs = this.absolute(path, "the file's path");
    const real = await realpath(abs).catch(() => undefined);
    if (real === undefined) throw new VmhostError("not-found", `${abs} does not exist`, 404);
    if (!(await this.inside(real))) throw this.refuse(abs, real);
    return abs;
  }

  /** A folder files are written into (made, with its parents, when missing): it must lie inside. */
  async prepareDir(path: string): Promise<string> {
    const abs = await this.checkDir(path);
    await mkdir(abs, { recursive: true, mode: 0o700 });
    const st = await stat(abs);
    if (!st.isDirectory()) throw new VmhostError("not-a-directory", `${abs} is not a folder`);
    return abs;
  }

  /** prepareDir's check alone (nothing is made): the folder, or its nearest existing parent, lies inside. */
  async checkDir(path: string): Promise<string> {
    const abs = this.absolute(path, "the folder");
    let probe = abs;
    for (;;) {
      const real = await realpath(probe).catch(() => undefined);
      if (real !== undefined) {
        if (!(await this.inside(real))) throw this.refuse(abs, real === probe ? undefined : real);
        break;
      }
      const up = dirname(probe);
      if (up === probe) throw this.refuse(abs);
      probe = up;
    }
    return abs;
  }

  /** At service start: temp files of VHD tools killed half way, in the extra directories. */
  async sweep(): Promise<void> {
    for (const d of this.dirs.slice(1)) await sweepStaleTemps(d).catch(() => []);
  }
}

/** VMHOST_STORAGE_DIRS: colon-separated absolute directories vmhostd may write to besides $VMHOST_HOME. */
export function storageDirsFromEnv(env: NodeJS.ProcessEnv = process.env): string[] {
  return (env["VMHOST_STORAGE_DIRS"] ?? "")
    .split(":")
    .map((s) => s.trim())
    .filter((s) => s.length > 0 && isAbsolute(s));
}

/** Progress of a VHD tool: a fraction and what is being done. */
export type VhdProgress = (fraction: number, what: string) => void;

export type GetVhdRequest = z.output<typeof GetVhdRequestSchema>;
export type NewVhdApiRequest = z.output<typeof NewVhdRequestSchema>;
export type ConvertVhdApiRequest = z.output<typeof ConvertVhdRequestSchema>;
export type ResizeVhdApiRequest = z.output<typeof ResizeVhdRequestSchema>;
export type MergeVhdApiRequest = z.output<typeof MergeVhdRequestSchema>;
export type CompactVhdApiRequest = z.output<typeof CompactVhdRequestSchema>;

/** Get-VHD plus what vmhost knows about who uses the file. */
export type VhdView = VirtualHardDisk & {
  /** Every VM that has the image among its files: as its disk (or an overlay on it), or as an image one of its checkpoints keeps. */
  usedBy: { vm: string; as: string; running: boolean }[];
};

/**
 * The VHD tools as a service (Hyper-V's New-VHD, Get-VHD, Convert-VHD, Resize-VHD, Merge-VHD,
 * Optimize-VHD) over src/images/vhd.ts: outputs and in-place changes only inside StorageDirs,
 * backing chains held to DiskPolicy's directories, and the images layer's in-use check built
 * from the identities (device, inode) of every file of every VM's disks:
 * - a disk a running VM holds (its image, or any file of its chain that the change would write,
 *   or a file the change reads that the VM writes) is refused for changes that need it offline;
 * - a file another VM reads as a backing file, or that one of its checkpoints keeps, is never
 *   written (that VM's disk would be corrupted), whatever that VM's state.
 */
export class VhdManager {
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly disks: DiskPolicy;
  private readonly checkpoints: CheckpointManager;
  readonly dirs: StorageDirs;

  constructor(deps: { store: ConfigStore; supervisor: Supervisor; disks: DiskPolicy; checkpoints: CheckpointManager; dirs: StorageDirs }) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.disks = deps.disks;
    this.checkpoints = deps.checkpoints;
    this.dirs = deps.dirs;
  }

  private get allowedDirs(): readonly string[] {
    return this.disks.policy.allowedDirs;
  }

  /** Every VM's disks (chains) and the images its checkpoints keep, by identity. */
  private async owners(): Promise<{ vm: VmConfig; running: boolean; disks: { kind: "disk" | "checkpoint"; as: string; identity: DiskIdentity }[] }[]> {
    const out = [];
    for (const vm of await this.store.configs()) {
      const disks: { kind: "disk" | "checkpoint"; as: string; identity: DiskIdentity }[] = [];
      for (const d of vm.hardDisks) {
        const identity = await this.disks.identityOf(d.path, d.format);
        if (identity) disks.push({ kind: "disk", as: `disk ${d.path}`, identity });
      }
      const tree = await this.checkpoints.readTree(this.store.home(vm.id)).catch(() => undefined);
      for (const c of tree?.checkpoints ?? []) {
        for (const d of c.disks) {
          const identity = await this.disks.identityOf(d.path, d.format);
          if (identity) disks.push({ kind: "checkpoint", as: `an image checkpoint "${c.name}" keeps (${d.path})`, identity: { path: d.path, members: identity.members.slice(0, 1) } });
        }
      }
      out.push({ vm, running: this.supervisor.isRunning(vm.id), disks });
    }
    return out;
  }

  /** The in-use check the images layer asks before it touches files (see the class comment). */
  private inUse(): InUseCheck {
    return async (disk: DiskIdentity, access: DiskAccess) => {
      const owners = await this.owners();
      // A running VM writes its disks' images and reads their chains (its checkpoints' images among them).
      const running = owners.filter((o) => o.running).flatMap((o) => o.disks.filter((d) => d.kind === "disk").map((d) => ({ owner: o.vm.name, disk: d.identity })));
      const live = findDiskConflict(disk, running, access);
      if (live) return { vm: live.owner };
      if (access === "read") return undefined;
      const top = disk.members[0];
      if (!top) return undefined;
      const key = `${top.file.dev}:${top.file.ino}`;
      for (const o of owners) {
        for (const d of o.disks) {
          const i = d.identity.members.findIndex((m) => `${m.file.dev}:${m.file.ino}` === key);
          // The VM's own image (index 0 of a disk) may be changed while the VM is off; anything it only reads, or a checkpoint keeps, may not.
          if (i > 0 || (i === 0 && d.kind === "checkpoint")) {
            throw new VmhostError(
              "disk-in-use",
              `${disk.path} is read by VM "${o.vm.name}" (${d.as}${i > 0 ? `, as the backing file ${d.identity.members[i]!.path}` : ""}): changing it would corrupt that VM's disk; convert it to a new file instead (vmhost vhd convert)`,
              409,
            );
          }
        }
      }
      return undefined;
    };
  }

  private opts(progress: VhdProgress | undefined, what: string, signal: AbortSignal | undefined): VhdToolOptions {
    const onProgress: ProgressCallback | undefined = progress ? (f) => progress(f, what) : undefined;
    return { allowedDirs: this.allowedDirs, inUse: this.inUse(), ...(onProgress ? { onProgress } : {}), ...(signal ? { signal } : {}) };
  }

  /** Get-VHD, with every VM that uses the image (running or not). */
  async get(req: GetVhdRequest): Promise<VhdView> {
    const path = this.dirs.absolute(req.path, "the disk's path");
    const disk = await getVhd(path, { allowedDirs: this.allowedDirs, ...(req.format ? { format: req.format } : {}) });
    const chain = await walkBackingChain(path, disk.vhdFormat, { allowedDirs: this.allowedDirs });
    const identity = identityOfChain(chain);
    const usedBy: VhdView["usedBy"] = [];
    for (const o of await this.owners()) {
      const d = o.disks.find((x) => findDiskConflict(identity, [{ owner: o.vm.name, disk: x.identity }], "write"));
      if (d) usedBy.push({ vm: o.vm.name, as: d.as, running: o.running });
    }
    const first = usedBy[0];
    return { ...disk, attached: first !== undefined, ...(first ? { attachedTo: first.vm } : {}), usedBy };
  }

  /** New-VHD (fixed, dynamic, or differencing on a parent that is never written). */
  async create(req: NewVhdApiRequest, progress?: VhdProgress, signal?: AbortSignal): Promise<VirtualHardDisk> {
    const path = await this.dirs.checkNewFile(req.path);
    const parent = req.parent ? { path: this.dirs.absolute(req.parent.path, "the parent's path"), ...(req.parent.format ? { format: req.parent.format } : {}) } : undefined;
    return newVhd(
      { path, ...(req.format ? { format: req.format } : {}), ...(req.sizeBytes !== undefined ? { sizeBytes: req.sizeBytes } : {}), ...(req.type ? { type: req.type } : {}), ...(parent ? { parent } : {}) },
      this.opts(progress, "creating", signal),
    );
  }

  /** Convert-VHD into a new file (the source is only read). */
  async convert(req: ConvertVhdApiRequest, progress?: VhdProgress, signal?: AbortSignal): Promise<VirtualHardDisk> {
    const src = this.dirs.absolute(req.source, "the source's path");
    const dst = await this.dirs.checkNewFile(req.destination);
    return convertVhd(src, dst, { ...(req.sourceFormat ? { sourceFormat: req.sourceFormat } : {}), ...(req.format ? { format: req.format } : {}), ...(req.type ? { type: req.type } : {}) }, this.opts(progress, "converting", signal));
  }

  /** Resize-VHD in place (grow; shrink only where the partitions allow). */
  async resize(req: ResizeVhdApiRequest, progress?: VhdProgress, signal?: AbortSignal): Promise<ResizeVhdResult> {
    const path = await this.dirs.checkExistingFile(req.path);
    return resizeVhd(path, req.sizeBytes, { ...(req.format ? { format: req.format } : {}) }, this.opts(progress, "resizing", signal));
  }

  /** Merge-VHD: a differencing disk into its parent (both are written or removed: both must be allowed). */
  async merge(req: MergeVhdApiRequest, progress?: VhdProgress, signal?: AbortSignal): Promise<MergeVhdResult> {
    const path = await this.dirs.checkExistingFile(req.path);
    const chain = await walkBackingChain(path, req.format, { allowedDirs: this.allowedDirs });
    if (chain[1]) await this.dirs.checkExistingFile(chain[1].path);
    return mergeVhd(path, { ...(req.format ? { format: req.format } : {}), ...(req.keepChild !== undefined ? { keepChild: req.keepChild } : {}) }, this.opts(progress, "merging", signal));
  }

  /** Optimize-VHD: the file rewritten without unused blocks. */
  async compact(req: CompactVhdApiRequest, progress?: VhdProgress, signal?: AbortSignal): Promise<CompactVhdResult> {
    const path = await this.dirs.checkExistingFile(req.path);
    return compactVhd(path, { ...(req.format ? { format: req.format } : {}) }, this.opts(progress, "compacting", signal));
  }
}
