import { randomUUID } from "node:crypto";
import { copyFile, link, mkdir, readFile, statfs, stat } from "node:fs/promises";
import { basename, dirname, join, resolve, sep } from "node:path";
import { serializeTree, type CheckpointTree, type TreeDisk } from "../../checkpoints/tree.js";
import { hostPaths } from "../../engine/qemu/host.js";
import { checkVarStoreFileForFirmware } from "../../firmware/index.js";
import { qemuImgInfo } from "../../images/chain.js";
import { qemuDriverOf } from "../../images/format.js";
import { qemuImg } from "../../images/tools.js";
import {
  nameKey,
  parseConfig,
  serializeConfig,
  slotRef,
  validateVmName,
  type ConfigStore,
  type HostCapacity,
  type MacPool,
  type VmConfig,
  type VmState,
} from "../../model/index.js";
import type { NetworkManager } from "../../network/manager.js";
import type { Supervisor } from "../../supervisor/supervisor.js";
import { writeFileAtomic } from "../../util/atomic.js";
import { VmhostError } from "../../util/errors.js";
import { formatSize } from "../../util/size.js";
import { pathExists } from "../../util/fs.js";
import type { ChangeContext, FirmwareOp, VmChanges } from "../changes.js";
import type { DiskPolicy } from "../disks.js";
import type { StorageDirs } from "../vhd.js";
import { ByteProgress, copySparse } from "./copy.js";
import { inPackage, manifestEntry, readPackage, verifyManifest, type ExportPackage, type PackageImage } from "./package.js";

export interface ImportRequest {
  /** The export's folder (or a folder holding exactly one export). */
  path: string;
  /** "register": use the export's files where they are (Import-VM); "copy": copy them (Import-VM -Copy). */
  mode: "register" | "copy";
  /** A new VM id and new dynamic MAC addresses (Import-VM -GenerateNewId; with "copy" only). */
  generateNewId: boolean;
  /** Where the copied disks go (Import-VM -VhdDestinationPath); default $VMHOST_HOME/disks. */
  vhdDestination?: string;
  /** The imported VM's name; default the exported one. */
  name?: string;
  /** Adapters on switch OLD go to switch NEW (keys compared ignoring case). */
  switchMap?: Record<string, string>;
}

/** One thing that does not fit this host (Compare-VM's incompatibilities), with what to do about it. */
export interface CompatibilityItem {
  code: string;
  /** "error": the import is refused until it is fixed; "warning": it imports, and the message says what it means. */
  severity: "error" | "warning";
  message: string;
  fix: string;
}

/** Compare-VM: everything checked, before anything is changed. */
export interface CompareReport {
  path: string;
  vm: { name: string; id: string; generation: 1 | 2; state: VmState; checkpoints: number };
  importAs: { name: string; id: string; mode: "register" | "copy" };
  compatible: boolean;
  items: CompatibilityItem[];
  /** What was checked, line by line. */
  checked: string[];
}

export interface ImportResult {
  vm: string;
  id: string;
  state: VmState;
  mode: "register" | "copy";
  path: string;
  disks: string[];
  checkpoints: number;
  messages: string[];
}

/** The import does not fit this host; `items` are the report's errors (code "import-refused", 409). */
export class ImportRefusedError extends VmhostError {
  constructor(readonly items: CompatibilityItem[]) {
    super(
      "import-refused",
      `the VM cannot be imported; nothing was changed:\n${items.map((i) => `- ${i.message} (${i.code}). What to do: ${i.fix}`).join("\n")}`,
      409,
    );
    this.name = "ImportRefusedError";
  }
}

interface Plan {
  pkg: ExportPackage;
  id: string;
  name: string;
  /** Package path -> where the image is used from. */
  dest: Map<string, string>;
  /** The exported configurations that matter: the VM's and each checkpoint's. */
  configs: { what: string; config: VmConfig }[];
  switchOf: (name: string) => string;
}

function switchMapper(map: Record<string, string> | undefined): (name: string) => string {
  const m = new Map(Object.entries(map ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  return (name) => m.get(name.toLowerCase()) ?? name;
}

function q(s: string): string {
  return JSON.stringify(s);
}

/**
 * Import-VM and Compare-VM for exports made by ExportManager (package.ts). Compare checks
 * everything that would stop or spoil the import on this host and says what to do about each
 * (and changes nothing); import runs the same checks, refuses while any error stands, and then
 * creates the VM in one change transaction (its files, checkpoints and NVRAM land together or
 * not at all; a kill half way removes what was copied).
 */
export class ImportManager {
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly disks: DiskPolicy;
  private readonly network: NetworkManager;
  private readonly macs: MacPool;
  private readonly dirs: StorageDirs;
  private readonly disksDir: string;
  private readonly hostCapacity: () => HostCapacity;

  constructor(deps: {
    store: ConfigStore;
    supervisor: Supervisor;
    changes: VmChanges;
    disks: DiskPolicy;
    network: NetworkManager;
    macs: MacPool;
    dirs: StorageDirs;
    disksDir: string;
    hostCapacity: () => HostCapacity;
  }) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.disks = deps.disks;
    this.network = deps.network;
    this.macs = deps.macs;
    this.dirs = deps.dirs;
    this.disksDir = deps.disksDir;
    this.hostCapacity = deps.hostCapacity;
  }

  private checkOptions(req: ImportRequest): void {
    if (req.mode === "register" && req.generateNewId) {
      throw new VmhostError("bad-request", "--generate-new-id needs --copy: a VM registered in place keeps the id its files were exported with (as Import-VM -GenerateNewId needs -Copy)");
    }
    if (req.mode === "register" && req.vhdDestination) throw new VmhostError("bad-request", "--vhd-destination needs --copy: --register uses the disks where they are");
    if (req.name !== undefined) validateVmName(req.name);
  }

  /** Where each image of the export is used from: in place (register), or where its copy goes. */
  private destinations(pkg: ExportPackage, req: ImportRequest, id: string, vhdDir: string | undefined): Map<string, string> {
    const d = pkg.description;
    const dest = new Map<string, string>();
    const taken = new Set<string>();
    const inTree = new Set([...d.tree.checkpoints.flatMap((c) => c.disks.map((x) => x.path)), ...d.tree.now.disks.map((x) => x.path)]);
    for (const img of d.images) {
      if (req.mode === "register") {
        dest.set(img.path, inPackage(pkg.root, img.path));
        continue;
      }
      // As vmhost names its own: a checkpoint's images and Now's overlays in <disks>/<id>.checkpoints, other disks <disks>/<id>-NAME.
      const [dir, prefix] = vhdDir ? [vhdDir, ""] : inTree.has(img.path) && (img.owner !== "now" || d.tree.checkpoints.length > 0) ? [join(this.disksDir, `${id}.checkpoints`), ""] : [this.disksDir, `${id}-`];
      const name = basename(img.path);
      const dot = name.lastIndexOf(".");
      const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
      let candidate = join(dir, `${prefix}${name}`);
      for (let i = 2; taken.has(candidate); i++) candidate = join(dir, `${prefix}${stem}-${i}${ext}`);
      taken.add(candidate);
      dest.set(img.path, candidate);
    }
    return dest;
  }

  private async plan(pkg: ExportPackage, req: ImportRequest, vhdDir: string | undefined): Promise<Plan> {
    const d = pkg.description;
    const id = req.generateNewId ? randomUUID() : d.config.id;
    const configs: Plan["configs"] = [{ what: "the VM", config: d.config }];
    for (const c of d.checkpoints) {
      const file = inPackage(pkg.root, c.config);
      const cp = d.tree.checkpoints.find((x) => x.id === c.id);
      configs.push({ what: `checkpoint ${q(cp?.name ?? c.id)}`, config: parseConfig(file, await readFile(file, "utf8")) });
    }
    return { pkg, id, name: req.name ?? d.config.name, dest: this.destinations(pkg, req, id, vhdDir), configs, switchOf: switchMapper(req.switchMap) };
  }

  /**
   * Compare-VM: reads the export at `req.path` and reports what does not fit this host (with
   * `verify`, the manifest's checksums too; progress while verifying). Changes nothing.
   */
  async compare(req: ImportRequest, progress?: (fraction: number, what: string) => void, signal?: AbortSignal): Promise<CompareReport> {
    this.checkOptions(req);
    const pkg = await readPackage(req.path);
    const vhdDir = req.vhdDestination ? await this.dirs.checkDir(req.vhdDestination) : undefined;
    const plan = await this.plan(pkg, req, vhdDir);
    return this.report(plan, req, { verify: true, ...(progress ? { progress } : {}), ...(signal ? { signal } : {}) });
  }

  private async report(plan: Plan, req: ImportRequest, opts: { verify: boolean; progress?: (fraction: number, what: string) => void; signal?: AbortSignal }): Promise<CompareReport> {
    const { pkg } = plan;
    const d = pkg.description;
    const items: CompatibilityItem[] = [];
    const checked: string[] = [];
    const err = (code: string, message: string, fix: string) => items.push({ code, severity: "error", message, fix });
    const warn = (code: string, message: string, fix: string) => items.push({ code, severity: "warning", message, fix });
    const others = await this.store.configs();

    // The files: every one the manifest lists, by size and SHA-256.
    if (opts.verify) {
      const problems = await verifyManifest(pkg, { ...(opts.progress ? { onProgress: opts.progress } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
      for (const p of problems) err(`manifest-${p.problem}`, p.message, "export the VM again (the export was changed, damaged or cut short after it was made)");
      checked.push(`the manifest: ${pkg.manifest.files.length} files by size and SHA-256`);
    } else checked.push("the manifest: checked file by file while copying");

    // Identity and name.
    const sameId = others.find((v) => v.id === plan.id);
    if (sameId) {
      err("id-in-use", `VM ${q(sameId.name)} on this host has the id ${plan.id} already`, req.mode === "register" ? "import a copy with a new id instead: --copy --generate-new-id" : "add --generate-new-id (with --copy) for a new id and new dynamic MAC addresses");
    }
    try {
      validateVmName(plan.name);
      const clash = others.find((v) => nameKey(v.name) === nameKey(plan.name) && v.id !== plan.id);
      if (clash) err("vm-name-in-use", `a VM named ${q(clash.name)} exists already (rule vm-name-in-use: names are unique ignoring case)`, `give the imported VM another name: --name "${plan.name} (2)"`);
    } catch (e) {
      err("invalid-name", (e as Error).message, "give a valid name with --name");
    }
    checked.push(`the id ${req.generateNewId ? "(a new one)" : plan.id} and the name ${q(plan.name)}`);

    // Processors and memory, for the VM and for each checkpoint (applying one restores its settings).
    const cap = this.hostCapacity();
    for (const { what, config } of plan.configs) {
      const sev = what === "the VM" ? err : warn;
      if (config.processorCount > cap.logicalProcessors) {
        sev("processor-count", `${what} has ${config.processorCount} virtual processors; this host has ${cap.logicalProcessors} logical processors`, what === "the VM" ? `lower it on the source (vmhost set ${q(d.config.name)} --cpus ${cap.logicalProcessors}) and export again` : "applying that checkpoint will be refused here; remove it on the source or import on a larger host");
      }
      if (config.memoryMiB > cap.memoryMiB) {
        sev("memory-host", `${what} has ${config.memoryMiB} MiB of memory; this host has ${cap.memoryMiB} MiB`, what === "the VM" ? `lower it on the source (vmhost set ${q(d.config.name)} --memory ${cap.memoryMiB}M) and export again` : "applying that checkpoint will be refused here; remove it on the source or import on a larger host");
      }
    }
    checked.push(`processors and memory against this host (${cap.logicalProcessors} logical processors, ${cap.memoryMiB} MiB)`);

    // Switches and MAC addresses.
    const missing = new Map<string, string[]>();
    for (const { what, config } of plan.configs) {
      for (const n of config.networkAdapters) {
        const sw = plan.switchOf(n.switchName);
        try {
          await this.network.resolveName(sw);
        } catch {
          const list = missing.get(sw) ?? [];
          list.push(`${q(n.name)} of ${what}`);
          missing.set(sw, list);
        }
      }
    }
    for (const [sw, adapters] of missing) {
      err(
        "switch-missing",
        `switch ${q(sw)} does not exist on this host; adapter ${adapters.join(", ")} connect${adapters.length === 1 ? "s" : ""} to it`,
        `make it here (vmhost switch new ${q(sw)} --type private|internal|nat|external ...), or connect the adapters to a switch this host has: --switch ${q(`${sw}=Default Switch`)}`,
      );
    }
    for (const n of d.config.networkAdapters) {
      if (req.generateNewId && n.dynamicMac) continue;
      const sw = plan.switchOf(n.switchName);
      for (const o of others) {
        if (o.id === plan.id) continue;
        const clash = o.networkAdapters.find((x) => x.macAddress === n.macAddress && x.switchName.toLowerCase() === sw.toLowerCase());
        if (clash) {
          err(
            "mac-in-use-on-switch",
            `MAC address ${n.macAddress} of adapter ${q(n.name)} is used on switch ${q(sw)} by adapter ${q(clash.name)} of VM ${q(o.name)} (rule mac-in-use-on-switch)`,
            n.dynamicMac ? "import a copy with new dynamic MAC addresses: --copy --generate-new-id" : "the address is static: connect the adapter to another switch (--switch), or change it on the source and export again",
          );
        }
      }
    }
    checked.push("switches and MAC addresses");

    // Disks: where they go, and that no other VM has them.
    const hasBacking = d.images.some((i) => i.backing !== null);
    if (req.mode === "register") {
      const chainDirs = this.disks.policy.allowedDirs.map((x) => resolve(x));
      if (hasBacking && !chainDirs.some((x) => pkg.root === x || pkg.root.startsWith(x + sep))) {
        err(
          "backing-chain-outside",
          `the export's disks are differencing disks (checkpoints, or overlays on a parent) and it lies at ${pkg.root}, outside the directories vmhost lets backing files lie in (${chainDirs.join(", ")})`,
          "import a copy instead (--copy), or move the export under one of those directories and register it there",
        );
      }
      for (const img of d.images) {
        const path = plan.dest.get(img.path)!;
        const identity = await this.disks.identityOf(path, img.format);
        const c = identity ? await this.disks.conflict({ path, members: identity.members.slice(0, 1) }, plan.id) : undefined;
        if (c) err("disk-in-use", `${path}: ${c.message} (rule disk-in-use)`, "import a copy instead (--copy --generate-new-id), or remove the VM that uses it");
      }
    } else {
      const targets = [...plan.dest.values()];
      for (const t of targets) {
        if (await pathExists(t)) err("disk-path-taken", `${t} exists already; the import would copy a disk there`, "copy the disks elsewhere with --vhd-destination DIR (a folder without these names), or move that file away");
      }
      const chainDirs = this.disks.policy.allowedDirs.map((x) => resolve(x));
      const vhdDir = req.vhdDestination ? resolve(req.vhdDestination) : undefined;
      if (vhdDir && hasBacking && !chainDirs.some((x) => vhdDir === x || vhdDir.startsWith(x + sep))) {
        err("backing-chain-outside", `the export's disks are differencing disks, and ${vhdDir} lies outside the directories vmhost lets backing files lie in (${chainDirs.join(", ")})`, "leave out --vhd-destination (the disks go to vmhost's disks folder), or choose a folder under one of those directories");
      }
      const need = await this.bytesToCopy(pkg);
      const where = vhdDir ?? this.disksDir;
      const free = await freeBytes(where);
      if (free !== undefined && free < need) err("no-space", `the copies need up to ${formatSize(need)} and ${where} has ${formatSize(free)} free`, "free space there, or copy the disks elsewhere with --vhd-destination DIR");
    }
    checked.push(`disks: ${d.images.length} image${d.images.length === 1 ? "" : "s"} ${req.mode === "register" ? "used in place" : "to copy"}`);

    // Firmware this VM needs, and whether its NVRAM fits this host's OVMF build.
    try {
      const p = await hostPaths();
      if (pkg.description.nvram) {
        const code = d.config.firmware.secureBoot ? p.ovmf.secure4m.code : p.ovmf.plain4m.code;
        try {
          await checkVarStoreFileForFirmware(inPackage(pkg.root, pkg.description.nvram), code);
        } catch (e) {
          warn("nvram-firmware-mismatch", `the exported NVRAM does not fit this host's OVMF (${(e as Error).message})`, `after the import, make a new NVRAM from the template: vmhost firmware reset ${q(plan.name)} (boot entries an OS made are lost; a loader at \\EFI\\BOOT\\BOOTX64.EFI still boots)`);
        }
      }
      checked.push(d.config.generation === 2 ? "UEFI firmware (OVMF) and the NVRAM's build" : "BIOS firmware (SeaBIOS)");
    } catch (e) {
      err("firmware-missing", (e as Error).message, "install what is named (Debian packages ovmf, seabios, qemu-system-x86), then import again");
    }

    // Media and payloads are host paths the export does not carry. A VM made from files that came
    // from elsewhere must not read host files they name (vmhostd is root): they are left out.
    for (const dvd of d.config.dvdDrives) {
      if (dvd.path) warn("media-not-imported", `the DVD drive ${slotRef(dvd)} held ${dvd.path}, a host path (an export carries no media)`, `the drive is imported empty; insert media with vmhost dvd set ${q(plan.name)} ISO`);
    }
    if (d.config.floppy?.path) warn("media-not-imported", `the floppy drive held ${d.config.floppy.path}, a host path (an export carries no media)`, `the drive is imported empty; vmhost floppy set ${q(plan.name)} VFD inserts one`);
    const payload = d.config.firmware.networkBootPayload;
    if (payload) warn("network-boot-payload-not-imported", `the VM's network boot files were ${payload.dir}/${payload.file}, a host folder`, `set them again if this host should serve them: vmhost firmware set ${q(plan.name)} --network-boot-dir DIR --network-boot-file FILE`);
    if (d.savedState && req.generateNewId && d.config.networkAdapters.some((n) => n.dynamicMac)) {
      warn("saved-state-mac", "the VM resumes from captured memory, where its adapters still have their old MAC addresses", "the new addresses take effect when the guest restarts (vmhost restart); until then keep it off switches the source is on");
    }
    checked.push("media and network boot folders (host paths: not imported)");

    return {
      path: pkg.root,
      vm: { name: d.config.name, id: d.config.id, generation: d.config.generation, state: d.capture.state === "Running" ? (d.savedState ? "Saved" : "Off") : d.capture.state, checkpoints: d.tree.checkpoints.length },
      importAs: { name: plan.name, id: req.generateNewId ? "(a new id)" : plan.id, mode: req.mode },
      compatible: !items.some((i) => i.severity === "error"),
      items,
      checked,
    };
  }

  /** Bytes the import copies (as the files are allocated in the export). */
  private async bytesToCopy(pkg: ExportPackage): Promise<number> {
    let n = 0;
    for (const f of pkg.manifest.files) n += ((await stat(inPackage(pkg.root, f.path)).catch(() => undefined))?.blocks ?? 0) * 512;
    return n;
  }

  /**
   * Import-VM: the checks of compare (refused with ImportRefusedError while any error stands),
   * then the VM in one change transaction. "copy": every file copied (verified against the
   * manifest while copying); "register": the manifest verified first, the disks used where they
   * are (their backing names rewritten to absolute paths, as vmhost keeps them), the VM's own
   * files (configuration, NVRAM, checkpoints' records) in the VM's folder.
   */
  async import(req: ImportRequest, progress?: (fraction: number, what: string) => void, signal?: AbortSignal): Promise<ImportResult> {
    this.checkOptions(req);
    const pkg = await readPackage(req.path);
    const vhdDir = req.vhdDestination ? await this.dirs.checkDir(req.vhdDestination) : undefined;
    const plan = await this.plan(pkg, req, vhdDir);
    const report = await this.report(plan, req, { verify: req.mode === "register", ...(progress ? { progress } : {}), ...(signal ? { signal } : {}) });
    const errors = report.items.filter((i) => i.severity === "error");
    if (errors.length) throw new ImportRefusedError(errors);
    if (vhdDir) await this.dirs.prepareDir(vhdDir);
    const d = pkg.description;
    const messages = report.items.map((i) => `${i.message}: ${i.fix}`);

    // New dynamic MACs for every address the VM or a checkpoint has (static ones are kept).
    const macs = new Map<string, string>();
    if (req.generateNewId) {
      for (const { config } of plan.configs) for (const n of config.networkAdapters) if (n.dynamicMac && !macs.has(n.macAddress)) macs.set(n.macAddress, await this.macs.allocate());
    }
    const localize = async (cfg: VmConfig): Promise<VmConfig> => {
      const out = structuredClone(cfg);
      out.id = plan.id;
      out.name = plan.name;
      out.hardDisks = out.hardDisks.map((x) => ({ ...x, path: this.destOf(plan, x.path) }));
      out.networkAdapters = out.networkAdapters.map((n) => ({ ...n, macAddress: macs.get(n.macAddress) ?? n.macAddress, switchName: plan.switchOf(n.switchName) }));
      for (const dvd of out.dvdDrives) dvd.path = null;
      if (out.floppy) out.floppy = { path: null };
      delete out.firmware.networkBootPayload;
      return out;
    };
    const draft = await localize(d.config);
    const tree: CheckpointTree = {
      formatVersion: 1,
      checkpoints: d.tree.checkpoints.map((c) => ({ ...c, disks: c.disks.map((x) => this.localDisk(plan, x)) })),
      now: { parentId: d.tree.now.parentId, disks: d.tree.now.disks.map((x) => this.localDisk(plan, x)) },
    };
    const home = this.store.home(plan.id);

    // What is copied (copy) or linked (register), for progress by bytes.
    let total = 0;
    for (const f of pkg.manifest.files) total += f.size;
    const bytes = new ByteProgress(total, progress);
    const bring = async (ctx: ChangeContext, rel: string, to: string) => {
      await ctx.txn.created(to);
      const from = inPackage(pkg.root, rel);
      if (req.mode === "copy") {
        await copySparse(from, to, { expectSha256: manifestEntry(pkg, rel).sha256, onBytes: bytes.file(rel), ...(signal ? { signal } : {}) });
        return;
      }
      // Registered: the VM's own records are linked (never written in place) or copied across file systems.
      try {
        await link(from, to);
      } catch {
        await copyFile(from, to);
      }
      bytes.skip((await stat(to)).size, rel);
    };

    const { vm } = await this.changes.create(
      draft,
      async (ctx) => {
        // Disks.
        if (req.mode === "copy") {
          for (const dir of new Set([...plan.dest.values()].map((p) => dirname(p)))) {
            if (!(await pathExists(dir))) {
              await ctx.txn.created(dir);
              await mkdir(dir, { recursive: true, mode: 0o700 });
            }
          }
          for (const img of d.images) {
            if (signal?.aborted) throw new VmhostError("aborted", "the import was cancelled", 409);
            await bring(ctx, img.path, plan.dest.get(img.path)!);
          }
        } else {
          for (const img of d.images) bytes.skip(manifestEntry(pkg, img.path).size, img.path);
        }
        // Every copy (or registered file) reads its backing file by absolute path, with its format recorded.
        for (const img of d.images) await this.repoint(ctx, plan, img, req.mode);

        // Checkpoints: records in the VM's folder, images where the tree says.
        if (d.tree.checkpoints.length) {
          await ctx.txn.created(home.checkpointsDir);
          await mkdir(home.checkpointsDir, { recursive: true, mode: 0o700 });
          for (const c of d.checkpoints) {
            const dir = home.checkpointDir(c.id);
            await ctx.txn.created(dir);
            await mkdir(dir, { mode: 0o700 });
            const file = inPackage(pkg.root, c.config);
            await writeFileAtomic(join(dir, "vm.json"), serializeConfig(await localize(parseConfig(file, await readFile(file, "utf8")))));
            bytes.skip(manifestEntry(pkg, c.config).size, c.config);
            if (c.nvram) await bring(ctx, c.nvram, join(dir, "nvram.fd"));
            if (c.memory) await bring(ctx, c.memory, join(dir, "memory.bin"));
            if (c.firmwarePending) await bring(ctx, c.firmwarePending, join(dir, "firmware-pending.json"));
          }
          await ctx.txn.write(home.checkpointTree, serializeTree(tree));
        }

        // The machine state: the VM is Saved and resumes from it.
        if (d.savedState) await bring(ctx, d.savedState, home.savedState);

        // NVRAM: the exported store, its device entries brought to this VM's devices by the NVRAM step.
        if (d.nvram) {
          ctx.nvramReplacement = await readFile(inPackage(pkg.root, d.nvram));
          bytes.skip(manifestEntry(pkg, d.nvram).size, d.nvram);
        }
        if (d.firmwarePending) {
          const text = await readFile(inPackage(pkg.root, d.firmwarePending), "utf8");
          const ops = (JSON.parse(text) as { ops?: FirmwareOp[] }).ops ?? [];
          if (d.savedState) {
            // The restore writes the flash back from memory: the operations stay pending until the next cold start.
            await ctx.txn.write(home.firmwarePending, text);
          } else ctx.pendingReplacement = ops;
        }

        // The disks as vmhost trusts them: explicit formats, chains inside its directories, no other VM's.
        for (const disk of ctx.vm.hardDisks) {
          const img = await this.disks.check(disk.path, disk.format);
          await this.disks.requireFree(img, ctx.vm);
        }
        if (macs.size) ctx.messages.push(`new dynamic MAC addresses: ${[...macs].map(([a, b]) => `${a} -> ${b}`).join(", ")}`);
        ctx.event("imported", `imported from ${pkg.root} (${req.mode}${req.generateNewId ? ", new id" : ""}), exported ${d.exportedAt} from ${d.exportedFrom.hostname}`, { from: pkg.root, sourceId: d.config.id });
      },
      { event: { type: "created", message: `generation ${d.config.generation} VM ${q(plan.name)} imported` } },
    );
    progress?.(1, "imported");
    const state: VmState = d.savedState ? "Saved" : "Off";
    if (req.mode === "register") messages.push(`the disks are used where they are (${pkg.root}); their backing files are now named by absolute path, so the export's manifest no longer matches them`);
    if (d.savedState) messages.push(`VM ${q(vm.name)} is Saved: start it to resume where the exported VM was`);
    return { vm: vm.name, id: vm.id, state, mode: req.mode, path: pkg.root, disks: vm.hardDisks.map((x) => x.path), checkpoints: d.tree.checkpoints.length, messages };
  }

  private destOf(plan: Plan, rel: string): string {
    const p = plan.dest.get(rel);
    if (!p) throw new VmhostError("bad-export", `the export names the disk ${rel}, which is not among its images`, 422);
    return p;
  }

  private localDisk(plan: Plan, x: TreeDisk): TreeDisk {
    return { ...x, path: this.destOf(plan, x.path), backing: x.backing ? { path: this.destOf(plan, x.backing.path), format: x.backing.format } : null };
  }

  /**
   * Points an image at its backing file's new place (qemu-img rebase -u: the header only, the
   * data stay), with its format recorded; whatever backing name the file itself carried is
   * replaced by the one the export's description declares. A registered file gets its old name
   * back if the import fails.
   */
  private async repoint(ctx: ChangeContext, plan: Plan, img: PackageImage, mode: "register" | "copy"): Promise<void> {
    if (img.format !== "qcow2") {
      if (img.backing) throw new VmhostError("bad-export", `${img.path} is declared a ${img.format} image with a backing file; only qcow2 images have one`, 422);
      return;
    }
    const path = plan.dest.get(img.path)!;
    const before = mode === "register" ? await qemuImgInfo(path, "qcow2") : undefined;
    const args = img.backing ? ["-F", qemuDriverOf(img.backing.format), "-b", this.destOf(plan, img.backing.path)] : ["-b", ""];
    await qemuImg(["rebase", "-u", "-f", "qcow2", ...args, path]);
    if (before) {
      const oldName = before["backing-filename"];
      const oldFormat = before["backing-filename-format"];
      ctx.onRollback(async () => {
        await qemuImg(["rebase", "-u", "-f", "qcow2", ...(oldName ? [...(oldFormat ? ["-F", oldFormat] : []), "-b", oldName] : ["-b", ""]), path]);
      });
    }
  }
}

/** Free bytes where `dir` is (or would be made): f_bfree, since vmhostd runs as root and may use the reserve. */
async function freeBytes(dir: string): Promise<number | undefined> {
  let probe = resolve(dir);
  for (;;) {
    const st = await statfs(probe).catch(() => undefined);
    if (st) return Number(st.bfree) * Number(st.bsize);
    const up = dirname(probe);
    if (up === probe) return undefined;
    probe = up;
  }
}
