import { hostname } from "node:os";
import { mkdir, readdir, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { z } from "zod";
import { serializeTree, type CheckpointTree, type TreeDisk } from "../../checkpoints/tree.js";
import { walkBackingChain } from "../../images/chain.js";
import { qemuDriverOf } from "../../images/format.js";
import { qemuImg } from "../../images/tools.js";
import { parseConfig, serializeConfig, type ConfigStore, type DiskFormat, type VmConfig, type VmState } from "../../model/index.js";
import type { Supervisor } from "../../supervisor/supervisor.js";
import { syncDir, writeFileAtomic } from "../../util/atomic.js";
import { VmhostError } from "../../util/errors.js";
import { pathExists } from "../../util/fs.js";
import type { VmChanges } from "../changes.js";
import type { CheckpointCapture, CheckpointManager } from "../checkpoints.js";
import type { DiskPolicy } from "../disks.js";
import type { StorageDirs } from "../vhd.js";
import { ByteProgress, copySparse, sha256File } from "./copy.js";
import {
  DISKS_DIR,
  EXPORT_FORMAT_VERSION,
  MANIFEST,
  SNAPSHOTS_DIR,
  VMS_DIR,
  exportFolderName,
  inPackage,
  relativeBacking,
  type CaptureLiveState,
  type ExportDescription,
  type Manifest,
  type ManifestEntry,
  type PackageCheckpoint,
  type PackageImage,
} from "./package.js";

export interface ExportRequest {
  /** The folder the export's own folder ("<VM name>") is made in. */
  destination: string;
  /** For a running VM (default CaptureSavedState, as Hyper-V). */
  captureLiveState?: CaptureLiveState;
}

export interface ExportResult {
  vm: string;
  /** The export's folder. */
  path: string;
  state: VmState;
  captureLiveState: CaptureLiveState | null;
  checkpoints: number;
  files: number;
  /** Bytes of content, and bytes really written (the rest are holes). */
  bytes: number;
  written: number;
  messages: string[];
}

/** What Export-VM's -CaptureLiveState asks of a checkpoint (CheckpointManager's CheckpointCapture). */
const CAPTURE: Readonly<Record<CaptureLiveState, CheckpointCapture>> = {
  CaptureSavedState: "Standard",
  CaptureDataConsistentState: "ProductionOnly",
  CaptureCrashConsistentState: "CrashConsistent",
};

const CAPTURE_NOTE: Readonly<Record<CaptureLiveState, string>> = {
  CaptureSavedState: "memory and device state were captured with the disks (the imported VM is Saved and resumes where the source was)",
  CaptureDataConsistentState: "the guest's file systems were frozen through its agent for the capture; no memory (the imported VM boots cold)",
  CaptureCrashConsistentState: "the disks as they were at a brief pause, neither frozen nor with memory (the imported VM boots cold, as after a power cut)",
};

/** The VM as it is exported: its files where they are now (absolute paths). */
interface Source {
  vm: VmConfig;
  config: VmConfig;
  tree: CheckpointTree;
  nvram: string | null;
  firmwarePending: string | null;
  savedState: string | null;
  state: VmState;
  liveState: CaptureLiveState | null;
  note: string;
}

/** A running export's temporary checkpoint, recorded so a restarted vmhostd removes it. */
const ExportRecord = z.object({ vmId: z.string().uuid(), checkpointId: z.string().uuid(), partial: z.string(), startedAt: z.string() }).strict();
type ExportRecord = z.infer<typeof ExportRecord>;

/** Marks a folder being written by an export (its pid), so a later export can tell a dead one's leftovers. */
const OWNER_FILE = ".vmhost-export-owner";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new VmhostError("aborted", "the export was cancelled", 409);
}

/**
 * Export-VM: a self-contained folder with the configuration, the NVRAM, every disk and every
 * checkpoint (the tree intact, backing files named relative to the export), laid out as Hyper-V
 * lays one out (package.ts), with a manifest of SHA-256 checksums.
 *
 * - Off or Saved: the files are copied under the VM's lock (nothing writes them meanwhile).
 * - Running or Paused: the VM runs on. A temporary checkpoint of the chosen kind freezes the
 *   moment (CaptureSavedState: with memory; CaptureDataConsistentState: the guest frozen through
 *   its agent; CaptureCrashConsistentState: a brief pause), its images (never written while it
 *   exists) are copied, and the checkpoint is removed again (merged), so the source is left as
 *   it was. A vmhostd killed meanwhile removes it when it starts again.
 *
 * The export is written into `DIR/.<name>.partial` and renamed to `DIR/<name>` only when it is
 * complete and verified (every chain resolves inside it), so an interrupted export never leaves
 * a folder that looks complete. Images are copied sparse (zeros stay holes).
 */
export class ExportManager {
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly checkpoints: CheckpointManager;
  private readonly disks: DiskPolicy;
  private readonly dirs: StorageDirs;
  private readonly recordsDir: string;

  constructor(deps: { store: ConfigStore; supervisor: Supervisor; changes: VmChanges; checkpoints: CheckpointManager; disks: DiskPolicy; dirs: StorageDirs; hostDir: string }) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.checkpoints = deps.checkpoints;
    this.disks = deps.disks;
    this.dirs = deps.dirs;
    this.recordsDir = join(deps.hostDir, "exports");
  }

  /**
   * Exports VM `ref` into `req.destination` (made when missing; it must lie inside StorageDirs).
   * Progress: a fraction of all bytes copied and the file being copied. Errors: `exists` (the
   * export's folder is there already), `destination-not-allowed`, `invalid-state` (a VM that is
   * starting, stopping or saving), the checkpoint's (`production-checkpoint-failed` for a
   * data-consistent capture the agent cannot freeze, `checkpoint-limit`), `aborted`.
   */
  async export(ref: string, req: ExportRequest, progress?: (fraction: number, what: string) => void, signal?: AbortSignal): Promise<ExportResult> {
    const vm0 = await this.store.resolve(ref);
    const dest = await this.dirs.prepareDir(req.destination);
    const folder = exportFolderName(vm0.name, vm0.id);
    const final = join(dest, folder);
    if (await pathExists(final)) throw new VmhostError("exists", `${final} exists already: export into another folder, or remove it first`, 409);
    const partial = join(dest, `.${folder}.partial`);
    await this.claimPartial(partial);
    const messages: string[] = [];
    let done = false;
    try {
      const state = await this.supervisor.state(vm0);
      let result: { entries: ManifestEntry[]; written: number; source: Source };
      if (state === "Running" || state === "Paused") {
        result = await this.exportRunning(vm0, req.captureLiveState ?? "CaptureSavedState", partial, messages, progress, signal);
      } else if (state === "Off" || state === "Saved") {
        if (req.captureLiveState) messages.push(`VM "${vm0.name}" is ${state}: its files are exported as they are (${req.captureLiveState} applies to a running VM only)`);
        result = await this.supervisor.withLock(vm0.id, async () => {
          const home = this.store.home(vm0.id);
          await this.changes.recover(home);
          await this.checkpoints.finishRemoval(home);
          if (this.supervisor.isRunning(vm0.id)) throw new VmhostError("invalid-state", `VM "${vm0.name}" was started meanwhile: export it again`, 409);
          const source = await this.sourceAtRest(vm0.id);
          return { ...(await this.writePackage(source, partial, progress, signal)), source };
        });
      } else {
        throw new VmhostError("invalid-state", `VM "${vm0.name}" is ${state}: export it when it is Off, Saved, Running or Paused`, 409);
      }
      await unlink(join(partial, OWNER_FILE));
      checkAborted(signal);
      if (await pathExists(final)) throw new VmhostError("exists", `${final} appeared while the export ran; the export was not put there`, 409);
      await rename(partial, final);
      await syncDir(dest);
      done = true;
      const s = result.source;
      await this.supervisor.event(vm0, "exported", `exported to ${final} (${s.state}${s.liveState ? `, ${s.liveState}` : ""})`, { path: final });
      return {
        vm: vm0.name,
        path: final,
        state: s.state,
        captureLiveState: s.liveState,
        checkpoints: s.tree.checkpoints.length,
        files: result.entries.length + 1,
        bytes: result.entries.reduce((a, e) => a + e.size, 0),
        written: result.written,
        messages: [...messages, s.note],
      };
    } finally {
      if (!done) await rm(partial, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** Makes `partial` for this process; a dead export's leftover is removed, a live one's refused. */
  private async claimPartial(partial: string): Promise<void> {
    if (await pathExists(partial)) {
      const pid = Number((await readFile(join(partial, OWNER_FILE), "utf8").catch(() => "")).trim());
      const ours = (await pathExists(join(partial, OWNER_FILE))) || (await pathExists(join(partial, VMS_DIR)));
      if (!ours) throw new VmhostError("exists", `${partial} exists and is not an unfinished export: move it away first`, 409);
      if (pid > 0 && pid !== process.pid && alive(pid)) throw new VmhostError("busy", `another export (process ${pid}) is writing ${partial}`, 409);
      await rm(partial, { recursive: true, force: true });
    }
    await mkdir(partial, { mode: 0o700 });
    await writeFile(join(partial, OWNER_FILE), `${process.pid}\n`, { mode: 0o600 });
  }

  /** An Off or Saved VM as it is stored. */
  private async sourceAtRest(id: string): Promise<Source> {
    const home = this.store.home(id);
    const vm = await this.store.get(id);
    const tree = await this.checkpoints.readTree(home);
    const saved = (await pathExists(home.savedState)) ? home.savedState : null;
    return {
      vm,
      config: vm,
      tree,
      nvram: vm.generation === 2 && (await pathExists(home.nvram)) ? home.nvram : null,
      firmwarePending: (await pathExists(home.firmwarePending)) ? home.firmwarePending : null,
      savedState: saved,
      state: saved ? "Saved" : "Off",
      liveState: null,
      note: saved ? "the VM was Saved: its memory and device state are in the export (the imported VM is Saved and resumes on start)" : "the VM was Off",
    };
  }

  /** A running VM: a temporary checkpoint of the asked kind, its frozen files copied, then merged away. */
  private async exportRunning(
    vm0: VmConfig,
    live: CaptureLiveState,
    partial: string,
    messages: string[],
    progress: ((fraction: number, what: string) => void) | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ entries: ManifestEntry[]; written: number; source: Source }> {
    progress?.(0, `capturing (${live})`);
    const taken = await this.checkpoints.create(vm0.id, { name: `Export-VM capture ${new Date().toISOString().slice(0, 19)}`, capture: CAPTURE[live] });
    const cpId = taken.checkpoint.id;
    messages.push(...taken.messages);
    if (taken.pausedMs !== undefined) messages.push(`the guest was paused ${taken.pausedMs.toFixed(0)} ms for the capture`);
    const record: ExportRecord = { vmId: vm0.id, checkpointId: cpId, partial, startedAt: new Date().toISOString() };
    const recordFile = join(this.recordsDir, `${vm0.id}.${cpId}.json`);
    await mkdir(this.recordsDir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(recordFile, JSON.stringify(record) + "\n");
    try {
      const home = this.store.home(vm0.id);
      const tree = await this.checkpoints.readTree(home);
      const t = tree.checkpoints.find((c) => c.id === cpId);
      if (!t) throw new VmhostError("export-failed", `the capture checkpoint of VM "${vm0.name}" vanished before it was copied; export again`, 409);
      const cpDir = home.checkpointDir(cpId);
      const config = parseConfig(join(cpDir, "vm.json"), await readFile(join(cpDir, "vm.json"), "utf8"));
      const source: Source = {
        vm: await this.store.get(vm0.id),
        config,
        // The export's Now is the capture: its images are what the VM wrote until then.
        tree: { formatVersion: 1, checkpoints: tree.checkpoints.filter((c) => c.id !== cpId), now: { parentId: t.parentId, disks: t.disks } },
        nvram: t.hasNvram ? join(cpDir, "nvram.fd") : null,
        firmwarePending: (await pathExists(join(cpDir, "firmware-pending.json"))) ? join(cpDir, "firmware-pending.json") : null,
        savedState: t.hasMemory ? join(cpDir, "memory.bin") : null,
        state: "Running",
        liveState: live,
        note: t.hasMemory || live !== "CaptureSavedState" ? CAPTURE_NOTE[live] : "the memory could not be captured; the imported VM boots cold",
      };
      const written = await this.writePackage(source, partial, progress, signal);
      // The images must have stayed frozen all along: the capture must still be there.
      const after = await this.checkpoints.readTree(home);
      if (!after.checkpoints.some((c) => c.id === cpId)) {
        throw new VmhostError("export-failed", `the capture checkpoint of VM "${vm0.name}" was removed while its images were copied, so the copies may be torn; export again`, 409);
      }
      return { ...written, source };
    } finally {
      try {
        progress?.(1, "merging the capture checkpoint away");
        await this.checkpoints.remove(vm0.id, cpId);
        await unlink(recordFile).catch(() => undefined);
      } catch (err) {
        messages.push(`the temporary checkpoint "${taken.checkpoint.name}" could not be removed (${(err as Error).message}); vmhostd removes it when it starts next, or: vmhost checkpoint remove "${vm0.name}" ${cpId}`);
      }
    }
  }

  /** Writes every file of `src` into `partial`, then the manifest; returns the manifest's entries. */
  private async writePackage(
    src: Source,
    partial: string,
    progress: ((fraction: number, what: string) => void) | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ entries: ManifestEntry[]; written: number }> {
    const id = src.config.id;
    const home = this.store.home(id);
    const plan = await this.planImages(src);
    const entries: ManifestEntry[] = [];
    let written = 0;

    // What is copied, for progress by bytes.
    const copies: { from: string; rel: string }[] = plan.images.map((i) => ({ from: i.source, rel: i.image.path }));
    const vmFile = (ext: string) => `${VMS_DIR}/${id}.${ext}`;
    if (src.nvram) copies.push({ from: src.nvram, rel: vmFile("nvram.fd") });
    if (src.savedState) copies.push({ from: src.savedState, rel: vmFile("vmrs") });
    if (src.firmwarePending) copies.push({ from: src.firmwarePending, rel: vmFile("firmware-pending.json") });
    const checkpoints: PackageCheckpoint[] = [];
    for (const c of src.tree.checkpoints) {
      const dir = home.checkpointDir(c.id);
      const rel = (n: string) => `${SNAPSHOTS_DIR}/${c.id}/${n}`;
      const entry: PackageCheckpoint = { id: c.id, config: rel("vm.json"), nvram: null, memory: null, firmwarePending: null };
      if (c.hasNvram) {
        copies.push({ from: join(dir, "nvram.fd"), rel: rel("nvram.fd") });
        entry.nvram = rel("nvram.fd");
      }
      if (c.hasMemory) {
        copies.push({ from: join(dir, "memory.bin"), rel: rel("memory.bin") });
        entry.memory = rel("memory.bin");
      }
      if (await pathExists(join(dir, "firmware-pending.json"))) {
        copies.push({ from: join(dir, "firmware-pending.json"), rel: rel("firmware-pending.json") });
        entry.firmwarePending = rel("firmware-pending.json");
      }
      checkpoints.push(entry);
    }
    let total = 0;
    for (const c of copies) total += (await stat(c.from)).size;
    const bytes = new ByteProgress(total, progress);

    for (const dir of new Set([VMS_DIR, DISKS_DIR, ...copies.map((c) => c.rel.slice(0, c.rel.lastIndexOf("/")))])) {
      await mkdir(inPackage(partial, dir), { recursive: true, mode: 0o700 });
    }
    for (const c of copies) {
      checkAborted(signal);
      const to = inPackage(partial, c.rel);
      const r = await copySparse(c.from, to, { onBytes: bytes.file(c.rel), ...(signal ? { signal } : {}) });
      written += r.written;
      const image = plan.images.find((i) => i.image.path === c.rel)?.image;
      if (image?.backing) {
        // The copy names its backing file relative to itself, so the export can move.
        await qemuImg(["rebase", "-u", "-f", "qcow2", "-F", qemuDriverOf(image.backing.format), "-b", relativeBacking(image.path, image.backing.path), to]);
        const h = await sha256File(to, signal ? { signal } : {});
        entries.push({ path: c.rel, size: h.size, sha256: h.sha256 });
      } else entries.push({ path: c.rel, size: r.size, sha256: r.sha256 });
    }

    // Configurations with paths inside the export.
    for (const c of src.tree.checkpoints) {
      const text = await readFile(join(home.checkpointDir(c.id), "vm.json"), "utf8");
      const cfg = parseConfig(join(home.checkpointDir(c.id), "vm.json"), text);
      const rel = `${SNAPSHOTS_DIR}/${c.id}/vm.json`;
      entries.push(await this.writeText(partial, rel, serializeConfig(this.relConfig(cfg, plan.relOf))));
    }
    const description: ExportDescription = {
      formatVersion: EXPORT_FORMAT_VERSION,
      kind: "vmhost-export",
      exportedAt: new Date().toISOString(),
      exportedFrom: { hostname: hostname(), vmhostHome: resolve(this.store.vmsDir, "..") },
      capture: { state: src.state, liveState: src.liveState, note: src.note },
      config: this.relConfig(src.config, plan.relOf),
      tree: {
        formatVersion: 1,
        checkpoints: src.tree.checkpoints.map((c) => ({ ...c, disks: c.disks.map((d) => this.relTreeDisk(d, plan.relOf)) })),
        now: { parentId: src.tree.now.parentId, disks: src.tree.now.disks.map((d) => this.relTreeDisk(d, plan.relOf)) },
      },
      images: plan.images.map((i) => i.image),
      checkpoints,
      nvram: src.nvram ? vmFile("nvram.fd") : null,
      savedState: src.savedState ? vmFile("vmrs") : null,
      firmwarePending: src.firmwarePending ? vmFile("firmware-pending.json") : null,
    };
    // The tree as stored must still read back (validates the relative paths too).
    serializeTree(description.tree);
    entries.push(await this.writeText(partial, vmFile("json"), JSON.stringify(description, null, 2) + "\n"));

    // Self-contained: every disk's chain resolves inside the export.
    const disks: { path: string; format: DiskFormat }[] = [...description.config.hardDisks, ...description.tree.checkpoints.flatMap((c) => c.disks)];
    for (const d of disks) await walkBackingChain(inPackage(partial, d.path), d.format, { allowedDirs: [partial] });

    entries.sort((a, b) => a.path.localeCompare(b.path));
    const manifest: Manifest = { formatVersion: EXPORT_FORMAT_VERSION, algorithm: "sha256", files: entries };
    await writeFileAtomic(join(partial, MANIFEST), JSON.stringify(manifest, null, 2) + "\n", 0o600);
    progress?.(1, "manifest written");
    return { entries, written };
  }

  private async writeText(root: string, rel: string, text: string): Promise<ManifestEntry> {
    await writeFileAtomic(inPackage(root, rel), text, 0o600);
    const h = await sha256File(inPackage(root, rel));
    return { path: rel, size: h.size, sha256: h.sha256 };
  }

  private relConfig(cfg: VmConfig, relOf: (p: string) => string): VmConfig {
    return { ...structuredClone(cfg), hardDisks: cfg.hardDisks.map((d) => ({ ...d, path: relOf(d.path) })) };
  }

  private relTreeDisk(d: TreeDisk, relOf: (p: string) => string): TreeDisk {
    return { ...d, path: relOf(d.path), backing: d.backing ? { path: relOf(d.backing.path), format: d.backing.format } : null };
  }

  /**
   * Every image the export holds: the disks of Now and of each checkpoint, and every file of
   * their backing chains (walked and checked as DiskPolicy does), each once, with where it goes.
   */
  private async planImages(src: Source): Promise<{ images: { source: string; image: PackageImage }[]; relOf: (p: string) => string }> {
    interface Found {
      source: string;
      real: string;
      format: DiskFormat;
      owner: PackageImage["owner"];
      backing: { real: string; format: DiskFormat } | null;
    }
    const found = new Map<string, Found>();
    const byPath = new Map<string, string>();
    const walk = async (path: string, format: DiskFormat, owner: PackageImage["owner"]) => {
      const chain = await walkBackingChain(path, format, this.disks.policy);
      chain.forEach((m, i) => {
        byPath.set(m.path, m.realPath);
        byPath.set(resolve(m.path), m.realPath);
        const next = chain[i + 1];
        const prev = found.get(m.realPath);
        if (!prev) {
          found.set(m.realPath, { source: m.path, real: m.realPath, format: m.format, owner: i === 0 ? owner : "parent", backing: next ? { real: next.realPath, format: next.format } : null });
        } else if (i === 0 && prev.owner === "parent") prev.owner = owner;
      });
    };
    for (const c of src.tree.checkpoints) for (const d of c.disks) await walk(d.path, d.format, c.id);
    for (const d of src.tree.now.disks) await walk(d.path, d.format, "now");
    for (const d of src.config.hardDisks) await walk(d.path, d.format, "now");

    const names = new Map<string, Set<string>>();
    const relByReal = new Map<string, string>();
    const prefix = `${src.config.id}-`;
    for (const f of found.values()) {
      const folder = f.owner === "now" || f.owner === "parent" ? DISKS_DIR : `${SNAPSHOTS_DIR}/${f.owner}`;
      const used = names.get(folder) ?? new Set<string>();
      names.set(folder, used);
      let name = basename(f.source);
      if (name.startsWith(prefix) && name.length > prefix.length) name = name.slice(prefix.length);
      const dot = name.lastIndexOf(".");
      const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
      for (let i = 2; used.has(name.toLowerCase()) || name === "vm.json" || name === "nvram.fd" || name === "memory.bin"; i++) name = `${stem}-${i}${ext}`;
      used.add(name.toLowerCase());
      relByReal.set(f.real, `${folder}/${name}`);
    }
    const relOf = (p: string): string => {
      const real = byPath.get(p) ?? byPath.get(resolve(p));
      const rel = real ? relByReal.get(real) : undefined;
      if (!rel) throw new VmhostError("export-failed", `${p} is named by the VM but was not among the images walked for the export`, 500);
      return rel;
    };
    const images = [...found.values()].map((f) => ({
      source: f.source,
      image: {
        path: relByReal.get(f.real)!,
        format: f.format,
        backing: f.backing ? { path: relByReal.get(f.backing.real)!, format: f.backing.format } : null,
        owner: f.owner,
      },
    }));
    return { images, relOf };
  }

  /**
   * At service start (after checkpoints are recovered): the temporary checkpoints of exports a
   * killed vmhostd left are removed (merged) and their unfinished folders deleted.
   */
  async recoverAll(): Promise<void> {
    for (const f of await readdir(this.recordsDir).catch(() => [] as string[])) {
      if (!f.endsWith(".json")) continue;
      const file = join(this.recordsDir, f);
      let rec: ExportRecord;
      try {
        rec = ExportRecord.parse(JSON.parse(await readFile(file, "utf8")));
      } catch {
        await unlink(file).catch(() => undefined);
        continue;
      }
      try {
        const vm = await this.store.get(rec.vmId).catch(() => undefined);
        if (vm) {
          const tree = await this.checkpoints.readTree(this.store.home(vm.id));
          if (tree.checkpoints.some((c) => c.id === rec.checkpointId)) {
            await this.checkpoints.remove(vm.id, rec.checkpointId);
            await this.supervisor.event(vm, "export-recovered", "an export was interrupted; its temporary checkpoint was merged away");
          }
        }
        if (/^\..+\.partial$/.test(basename(rec.partial))) await rm(rec.partial, { recursive: true, force: true });
        await unlink(file);
      } catch (err) {
        const vm = await this.store.get(rec.vmId).catch(() => undefined);
        if (vm) await this.supervisor.event(vm, "export-recovery-failed", `the temporary checkpoint of an interrupted export could not be removed: ${(err as Error).message}`);
      }
    }
  }
}
