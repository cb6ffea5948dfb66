import { randomUUID } from "node:crypto";
import { copyFile, link, mkdir, rename } from "node:fs/promises";
import { basename, join } from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import { hostPaths } from "../engine/qemu/host.js";
import { checkVarStoreFileForFirmware } from "../firmware/index.js";
import { ensureAppliance } from "../images/appliance/index.js";
import { createDisk, createOverlay } from "../images/disk.js";
import type { HostLayout } from "../home/layout.js";
import {
  CONFIG_FORMAT_VERSION,
  firstFreeSlot,
  slotRef,
  validateVmName,
  type ConfigStore,
  type ControllerType,
  type DiskFormat,
  type HardDisk,
  type NetworkAdapter,
  type VmConfig,
  type VmState,
} from "../model/index.js";
import type { NetworkManager } from "../network/manager.js";
import { readConsole } from "../supervisor/console-log.js";
import { readDiagnosis, type Diagnosis } from "../supervisor/diagnostics/index.js";
import type { VmEvent } from "../supervisor/events.js";
import type { Supervisor, VmRuntimeView } from "../supervisor/supervisor.js";
import { VmhostError } from "../util/errors.js";
import { pathExists } from "../util/fs.js";
import { finishRemoval, type VmChanges } from "./changes.js";
import { checkpointImages } from "../checkpoints/tree.js";
import { existingMedia, newDiskPath, type DeviceManager } from "./devices.js";
import type { DiskPolicy } from "./disks.js";
import type { IntegrationManager } from "./integration.js";

export interface CreateVmRequest {
  name: string;
  generation: 1 | 2;
  processorCount?: number;
  memoryMiB?: number;
  disk?: string;
  diskFormat?: DiskFormat;
  newDisk?: { sizeBytes: number; format: DiskFormat };
  dvd?: string;
  appliance?: boolean;
  notes?: string;
}

/** What `show` returns (Get-VM): the stored configuration, the runtime state, diagnosis and paths. */
export interface VmView {
  name: string;
  id: string;
  generation: 1 | 2;
  state: VmState;
  cpus: number;
  memoryMiB: number;
  notes: string;
  checkpointType: VmConfig["checkpointType"];
  display: boolean;
  disks: (HardDisk & { ref: string })[];
  dvds: (VmConfig["dvdDrives"][number] & { ref: string })[];
  nics: (NetworkAdapter & { ref: string })[];
  floppy: string | null | undefined;
  firmware: VmConfig["firmware"];
  appliance?: VmConfig["appliance"];
  pid?: number;
  startedAt?: string;
  accelerator?: string;
  acceleratorReason?: string;
  hasSavedState: boolean;
  lastExit?: VmRuntimeView["lastExit"];
  /** Integration services' Heartbeat while the VM runs ("OK, 2 s ago"). */
  heartbeat?: { status: string; detail: string };
  /** Boot diagnostics: what went wrong in the last (or current) boot and the fix, kept after the VM is off. */
  diagnosis: Diagnosis | null;
  paths: { dir: string; config: string; console: string; serialSocket?: string };
}

/** One row of `list` (Get-VM): a damaged configuration is listed with its error, never hidden. */
export interface ListEntry {
  name: string;
  id?: string;
  generation?: 1 | 2;
  state: VmState | "Damaged";
  cpus?: number;
  memoryMiB?: number;
  error?: string;
  /** Integration services' Heartbeat while the VM runs ("OK, 2 s ago"). */
  heartbeat?: string;
}

/**
 * VMs as a whole (New-VM, Get-VM, Rename-VM, Remove-VM, Start/Stop/Save-VM ...). Changes of a
 * VM's configuration go through the change transaction; lifecycle goes to the supervisor under
 * the VM's lock.
 */
export class VmManager {
  private readonly layout: HostLayout;
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly devices: DeviceManager;
  private readonly integration: IntegrationManager;
  private readonly network: NetworkManager;
  private readonly disks: DiskPolicy;

  constructor(deps: {
    disks: DiskPolicy;
    layout: HostLayout;
    store: ConfigStore;
    supervisor: Supervisor;
    changes: VmChanges;
    devices: DeviceManager;
    integration: IntegrationManager;
    network: NetworkManager;
  }) {
    this.layout = deps.layout;
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.devices = deps.devices;
    this.integration = deps.integration;
    this.network = deps.network;
    this.disks = deps.disks;
  }

  // ---- reading -------------------------------------------------------------------

  get(ref: string): Promise<VmConfig> {
    return this.store.resolve(ref);
  }

  async list(): Promise<ListEntry[]> {
    const listed = await this.store.list();
    return Promise.all(
      listed.map(async (l): Promise<ListEntry> => {
        if (!l.ok) return { name: `(damaged ${l.id})`, id: l.id, state: "Damaged", error: l.error };
        const vm = l.config;
        const state = this.supervisor.stateOf(vm) ?? ((await pathExists(l.home.savedState)) ? "Saved" : "Off");
        const hb = this.integration.heartbeatOf(vm);
        return { name: vm.name, id: vm.id, generation: vm.generation, state, cpus: vm.processorCount, memoryMiB: vm.memoryMiB, ...(hb ? { heartbeat: hb.detail } : {}) };
      }),
    );
  }

  /** Get-VM for one VM, from what is stored now. */
  async show(ref: string): Promise<VmView> {
    return this.view(await this.get(ref));
  }

  async view(vm: VmConfig): Promise<VmView> {
    const rt = await this.supervisor.view(vm);
    const home = this.store.home(vm.id);
    const run = this.supervisor.runPaths(vm);
    const hb = rt.pid ? this.integration.heartbeatOf(vm) : undefined;
    return {
      name: vm.name,
      id: vm.id,
      generation: vm.generation,
      state: rt.state,
      cpus: vm.processorCount,
      memoryMiB: vm.memoryMiB,
      notes: vm.notes,
      checkpointType: vm.checkpointType,
      display: vm.display,
      disks: vm.hardDisks.map((d) => ({ ...d, ref: slotRef(d) })),
      dvds: vm.dvdDrives.map((d) => ({ ...d, ref: slotRef(d) })),
      nics: vm.networkAdapters.map((n) => ({ ...n, ref: n.name })),
      floppy: vm.floppy ? vm.floppy.path : undefined,
      firmware: vm.firmware,
      ...(vm.appliance ? { appliance: vm.appliance } : {}),
      ...(rt.pid ? { pid: rt.pid, startedAt: rt.startedAt, accelerator: rt.accel, acceleratorReason: rt.accelReason } : {}),
      hasSavedState: rt.hasSavedState,
      ...(rt.lastExit && rt.state === "Off" ? { lastExit: rt.lastExit } : {}),
      ...(hb ? { heartbeat: hb } : {}),
      diagnosis: await readDiagnosis(home.diagnosis),
      paths: { dir: home.dir, config: home.config, console: home.consoleLog, ...(run ? { serialSocket: run.serialSocket } : {}) },
    };
  }

  async consoleLog(ref: string): Promise<string> {
    const vm = await this.get(ref);
    return readConsole(this.store.home(vm.id).consoleLog);
  }

  /** The serial console's socket of a running VM (local callers; remote ones use the WebSocket). */
  async consoleSocket(ref: string): Promise<string> {
    const vm = await this.get(ref);
    const run = this.supervisor.runPaths(vm);
    if (!run) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
    return run.serialSocket;
  }

  async events(ref: string): Promise<VmEvent[]> {
    const vm = await this.get(ref);
    return this.supervisor.journal.read(this.store.home(vm.id));
  }

  // ---- New-VM, Rename-VM, Remove-VM ------------------------------------------------

  async create(req: CreateVmRequest): Promise<VmView> {
    validateVmName(req.name);
    const draft: VmConfig = {
      formatVersion: CONFIG_FORMAT_VERSION,
      name: req.name,
      id: randomUUID(),
      generation: req.generation,
      processorCount: req.processorCount ?? 1,
      memoryMiB: req.memoryMiB ?? (req.appliance ? 512 : 1024),
      notes: req.notes ?? "",
      createdAt: new Date().toISOString(),
      hardDisks: [],
      dvdDrives: [],
      networkAdapters: [],
      firmware: {
        // On where vmhost knows the boot chain is signed (the appliance: shim, GRUB, kernel signed for the UEFI CA).
        secureBoot: req.generation === 2 && req.appliance === true,
        secureBootTemplate: "MicrosoftUEFICertificateAuthority",
        preferredNetworkBootProtocol: "IPv4",
        pauseAfterBootFailure: false,
        startupOrder: ["CD", "IDE", "LegacyNetworkAdapter", "Floppy"],
      },
      checkpointType: "Production",
      display: false,
    };
    const bootType: ControllerType = draft.generation === 1 ? "IDE" : "SCSI";
    const { vm } = await this.changes.create(draft, async (ctx) => {
      const vm = ctx.vm;
      if (req.appliance) {
        const app = await ensureAppliance();
        const base = await this.localApplianceBase(app.manifest.id, vm.generation === 1 ? app.gen1Disk : app.gen2Disk);
        const overlay = await newDiskPath(this.layout.disksDir, vm.id, "boot", "qcow2");
        await ctx.txn.created(overlay);
        await createOverlay(overlay, base, "raw");
        vm.hardDisks.push({ ...firstFreeSlot(vm, bootType), path: overlay, format: "qcow2" });
        vm.appliance = { id: app.manifest.id, kernel: app.manifest.kernel.release };
      }
      if (req.disk) {
        const img = await this.disks.check(req.disk, req.diskFormat);
        await this.disks.requireFree(img, vm);
        vm.hardDisks.push({ ...firstFreeSlot(vm, bootType), path: img.path, format: img.format });
      }
      if (req.newDisk) {
        const path = await newDiskPath(this.layout.disksDir, vm.id, "disk", req.newDisk.format);
        await ctx.txn.created(path);
        await createDisk(path, req.newDisk.sizeBytes, req.newDisk.format);
        vm.hardDisks.push({ ...firstFreeSlot(vm, bootType), path, format: req.newDisk.format });
      }
      if (req.dvd) vm.dvdDrives.push({ ...firstFreeSlot(vm, bootType), path: await existingMedia(req.dvd, "ISO image") });
      vm.networkAdapters.push(await this.devices.newAdapter(vm, "Synthetic"));
      ctx.event("created", `generation ${vm.generation} VM "${vm.name}" created`);
    });
    return this.view(vm);
  }

  /** Appliance bases are linked (or copied) into this home so overlays never dangle when a cache is cleared. */
  private async localApplianceBase(id: string, disk: string): Promise<string> {
    const dir = join(this.layout.applianceDir, id);
    const target = join(dir, basename(disk));
    if (await pathExists(target)) return target;
    await mkdir(dir, { recursive: true });
    const tmp = `${target}.${process.pid}.tmp`;
    try {
      await link(disk, tmp);
    } catch {
      await copyFile(disk, tmp);
    }
    await rename(tmp, target);
    return target;
  }

  /** Rename-VM: only the name changes (folders are keyed by id); unique ignoring case, by rule. */
  async rename(ref: string, newName: string): Promise<VmView> {
    validateVmName(newName);
    const { vm } = await this.changes.change(ref, (ctx) => {
      const old = ctx.vm.name;
      ctx.vm.name = newName;
      ctx.event("renamed", `renamed from "${old}" to "${newName}"`, { from: old, to: newName });
    });
    return this.view(vm);
  }

  /**
   * Remove-VM: the VM's folder is renamed away first (atomic: the VM is gone at once), then
   * deleted with the disks when asked (checkpoint images included). Without --delete-disks its
   * disks and checkpoint images stay where they are.
   */
  async remove(ref: string, deleteDisks: boolean): Promise<{ deletedDisks: string[]; keptDisks: string[] }> {
    const vm = await this.get(ref);
    return this.supervisor.withLock(vm.id, async () => {
      if (this.supervisor.isRunning(vm.id)) {
        throw new VmhostError("invalid-state", `VM "${vm.name}" is ${this.supervisor.stateOf(vm)}: turn it off first`, 409);
      }
      const home = this.store.home(vm.id);
      await this.changes.recover(home);
      const disks = vm.hardDisks.map((d) => d.path);
      // With --delete-disks the checkpoints' images go too (their own folder and the images they keep).
      const kept = await checkpointImages(home);
      const deleteFiles = deleteDisks ? [...disks, ...kept, home.checkpointDisksDir] : [];
      await writeFileAtomic(join(home.dir, "remove.json"), JSON.stringify({ deleteFiles }) + "\n", 0o600);
      const trash = join(this.layout.vmsDir, `.trash-${vm.id}`);
      await rename(home.dir, trash);
      this.store.invalidate(vm.id);
      await this.network.releaseTaps(vm).catch(() => undefined);
      await finishRemoval(trash);
      const all = [...new Set([...disks, ...kept])];
      return { deletedDisks: deleteDisks ? all : [], keptDisks: deleteDisks ? [] : all };
    });
  }

  // ---- lifecycle --------------------------------------------------------------------

  /** Runs `fn` under the VM's lock, after its interrupted change (if any) is finished or undone. */
  async lifecycle<T>(ref: string, fn: (vm: VmConfig) => Promise<T>): Promise<T> {
    const vm = await this.get(ref);
    return this.supervisor.withLock(vm.id, async () => {
      await this.changes.recover(this.store.home(vm.id));
      return fn(await this.store.get(vm.id));
    });
  }

  start(ref: string): Promise<VmState> {
    return this.lifecycle(ref, (vm) => this.startLocked(vm));
  }

  /**
   * Start-VM for a caller holding the VM's lock: disks checked again (chains, formats), pending
   * firmware changes and device entries applied to the NVRAM in one transaction, taps made, QEMU
   * started (restoring a saved state when there is one).
   */
  async startLocked(vm: VmConfig): Promise<VmState> {
    const home = this.store.home(vm.id);
    for (const d of vm.hardDisks) {
      if (!(await pathExists(d.path))) throw new VmhostError("missing-file", `disk ${d.path} of VM "${vm.name}" (${slotRef(d)}) does not exist`, 404);
    }
    await this.disks.checkBeforeStart(vm);
    const restoring = await pathExists(home.savedState);
    if (vm.generation === 2 && !restoring) {
      if (!(await pathExists(home.nvram))) {
        await this.supervisor.event(vm, "nvram-missing", `the NVRAM file ${home.nvram} is missing`);
        throw new VmhostError(
          "nvram-missing",
          `the NVRAM of VM "${vm.name}" (${home.nvram}) is missing; vmhost does not silently make a new one (boot entries an OS made would be lost): run "vmhost firmware reset ${vm.name}" to start from the template`,
          409,
        );
      }
      // A store made for another firmware build would leave every variable in RAM (nothing persists).
      const p = await hostPaths();
      try {
        await checkVarStoreFileForFirmware(home.nvram, vm.firmware.secureBoot ? p.ovmf.secure4m.code : p.ovmf.plain4m.code);
      } catch (err) {
        throw new VmhostError("nvram-mismatch", `VM "${vm.name}" cannot start: ${(err as Error).message}`, 409);
      }
      // Pending firmware changes and the device entries, in one transaction; a store that
      // cannot take them (full) is a warning: OVMF boots with what the store holds.
      try {
        await this.changes.changeLocked(vm.id, (ctx) => void ctx.firmwareOps.push({ op: "devices", reason: "start", at: new Date().toISOString() }));
      } catch (err) {
        await this.supervisor.event(vm, "firmware-pending-failed", `the NVRAM was not updated before the start: ${(err as Error).message}; starting with what it holds`);
      }
    }
    // A QEMU that never came up leaves no taps behind.
    const current = await this.store.get(vm.id);
    return this.supervisor.start(current, { extras: await this.network.engineExtras(current) }).catch(async (err: unknown) => {
      if (!this.supervisor.isRunning(vm.id)) await this.network.releaseTaps(vm).catch(() => undefined);
      throw err;
    });
  }

  stop(ref: string, force: boolean, timeoutMs: number) {
    return this.lifecycle(ref, (vm) => this.supervisor.stop(vm, { force, timeoutMs }));
  }
  turnOff(ref: string) {
    return this.lifecycle(ref, (vm) => this.supervisor.turnOff(vm));
  }
  pause(ref: string) {
    return this.lifecycle(ref, (vm) => this.supervisor.pause(vm));
  }
  resume(ref: string) {
    return this.lifecycle(ref, (vm) => this.supervisor.resume(vm));
  }
  save(ref: string) {
    return this.lifecycle(ref, (vm) => this.supervisor.save(vm));
  }
  restart(ref: string) {
    return this.lifecycle(ref, (vm) => this.supervisor.restart(vm));
  }
}
