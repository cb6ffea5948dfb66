import { randomUUID } from "node:crypto";
import { copyFile, link, mkdir, rename, rm, stat } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { basename, join, resolve } from "node:path";
import { resolveAccelerator, type AccelDecision } from "../engine/qemu/accel.js";
import { hostFacts, hostPaths } from "../engine/qemu/host.js";
import { ensureAppliance } from "../images/appliance/index.js";
import { createDisk, createOverlay, diskInfo, formatFromPath } from "../images/disk.js";
import {
  ConfigStore,
  MacPool,
  RuleError,
  firstFreeSlot,
  normalizeMac,
  refuseFloppy,
  validateName,
  validateVm,
  type ControllerType,
  type DiskFormat,
  type HardDisk,
  type HostCapacity,
  type NetworkAdapter,
  type VmConfig,
  type VmState,
} from "../model/index.js";
import { Supervisor, type VmRuntimeView } from "../supervisor/supervisor.js";
import { readConsole } from "../supervisor/console-log.js";
import { readDiagnosis, type Diagnosis } from "../supervisor/diagnostics/index.js";
import { VmhostError, notFound } from "../util/errors.js";
import { homeLayout, type HomeLayout } from "../util/home.js";
import { FirmwareManager } from "./firmware.js";
import { IntegrationManager } from "./integration.js";
import { NetworkManager } from "../network/manager.js";

import { DEFAULT_SWITCH } from "../network/schema.js";

export { DEFAULT_SWITCH };

export interface CreateVmRequest {
  name: string;
  generation: 1 | 2;
  processorCount?: number;
  memoryMiB?: number;
  disk?: string;
  newDisk?: { sizeBytes: number; format: DiskFormat };
  dvd?: string;
  appliance?: boolean;
  notes?: string;
}

export interface DiskAddRequest {
  path?: string;
  newDisk?: { sizeBytes: number; format: DiskFormat };
  controllerType?: ControllerType;
  controllerNumber?: number;
  controllerLocation?: number;
}

export interface SlotRef {
  controllerType: ControllerType;
  controllerNumber: number;
  controllerLocation: number;
}

export interface VmView {
  name: string;
  id: string;
  generation: 1 | 2;
  state: VmState;
  cpus: number;
  memoryMiB: number;
  notes: string;
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
  paths: { config: string; console: string; serialSocket?: string };
}

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

/** Device names as the CLI shows them: "SCSI 0:1", "IDE 0:0", and adapters by name. */
export function slotRef(d: SlotRef): string {
  return `${d.controllerType} ${d.controllerNumber}:${d.controllerLocation}`;
}

export function parseSlotRef(text: string): SlotRef | undefined {
  const m = /^(IDE|SCSI)\s*(\d+):(\d+)$/i.exec(text.trim());
  if (!m) return undefined;
  return {
    controllerType: m[1]!.toUpperCase() as ControllerType,
    controllerNumber: Number(m[2]),
    controllerLocation: Number(m[3]),
  };
}

/**
 * vmhost's management logic (Hyper-V's VMMS): every change goes through here, is checked
 * against the model's rules, stored atomically, and, where the VM runs, applied through
 * the supervisor.
 */
export class VmManager {
  readonly layout: HomeLayout;
  readonly store: ConfigStore;
  readonly supervisor: Supervisor;
  private readonly macs: MacPool;
  private accel?: Promise<AccelDecision>;
  readonly integration: IntegrationManager;
  readonly firmware: FirmwareManager;
  readonly network: NetworkManager;

  constructor(home?: string) {
    this.layout = homeLayout(home);
    this.store = new ConfigStore(this.layout.vmsDir);
    this.macs = new MacPool(join(this.layout.hostDir, "mac-pool.json"));
    this.supervisor = new Supervisor(this.store, this.layout.runDir, {
      qemuBinary: "qemu-system-x86_64",
      accelerator: () => this.accelerator(),
      uefiCode: () => {
        throw new Error("host paths not resolved");
      },
      engineExtras: (vm) => this.network.engineExtras(vm),
    });
    this.network = new NetworkManager(this.layout.home, this.store, this.supervisor);
    this.integration = new IntegrationManager(this);
    // A guest whose agent answers is up: its quiet console is no stalled boot.
    this.supervisor.diagnostics.guestAlive = (vm) => {
      const hb = this.integration.heartbeatOf(vm);
      return hb?.status === "OK" && hb.detail !== "disabled";
    };
    this.firmware = new FirmwareManager(this);
    // Every state change is journaled, so `events` tells the VM's whole story.
    this.supervisor.on("state", (name: string, state: VmState) => void this.supervisor.event(name, "state", `state: ${state}`, { state }));
  }

  async init(): Promise<void> {
    await mkdir(this.layout.vmsDir, { recursive: true });
    await mkdir(this.layout.hostDir, { recursive: true });
    await mkdir(this.layout.runDir, { recursive: true, mode: 0o700 });
    const p = await hostPaths();
    this.supervisor.env.qemuBinary = p.qemuBinary;
    this.supervisor.env.uefiCode = (secure) => (secure ? p.ovmf.secure4m.code : p.ovmf.plain4m.code);
    await this.supervisor.adoptAll();
    await this.network.init();
  }

  accelerator(refresh = false): Promise<AccelDecision> {
    if (!this.accel || refresh) {
      this.accel = resolveAccelerator(join(this.layout.hostDir, "accelerator.json"), { refresh });
      this.accel.catch(() => (this.accel = undefined));
    }
    return this.accel;
  }

  hostCapacity(): HostCapacity {
    return { logicalProcessors: cpus().length, memoryMiB: Math.floor(totalmem() / (1024 * 1024)) };
  }

  async host(): Promise<Record<string, unknown>> {
    const [facts, accel] = await Promise.all([hostFacts(), this.accelerator()]);
    const cap = this.hostCapacity();
    return {
      accelerator: accel.accel,
      acceleratorReason: accel.reason,
      acceleratorProbe: { tcgLoopMs: accel.tcgLoopMs, kvmLoopMs: accel.kvmLoopMs, probedAt: accel.probedAt },
      qemu: { binary: facts.qemuBinary, version: facts.qemuVersion, package: facts.qemuPackage },
      qemuImg: facts.qemuImg,
      ovmf: facts.ovmf,
      seabios: facts.seabios,
      ipxeRomDir: facts.ipxeRomDir,
      kvmDevice: facts.kvmDevice,
      logicalProcessors: cap.logicalProcessors,
      memoryMiB: cap.memoryMiB,
      paths: { home: this.layout.home, vms: this.layout.vmsDir, run: this.layout.runDir, disks: this.disksDir() },
      service: serviceMemory(),
    };
  }

  disksDir(): string {
    return join(this.layout.home, "disks");
  }

  // ---- reading -------------------------------------------------------------------

  async get(name: string): Promise<VmConfig> {
    validateName(name);
    return this.store.get(name);
  }

  async list(): Promise<ListEntry[]> {
    const listed = await this.store.list();
    return Promise.all(
      listed.map(async (l): Promise<ListEntry> => {
        if (!l.ok) return { name: l.name, state: "Damaged", error: l.error };
        const vm = l.config;
        const state = await this.supervisor.state(vm);
        const hb = this.integration.heartbeatOf(vm);
        return { name: vm.name, id: vm.id, generation: vm.generation, state, cpus: vm.processorCount, memoryMiB: vm.memoryMiB, ...(hb ? { heartbeat: hb.detail } : {}) };
      }),
    );
  }

  async show(name: string): Promise<VmView> {
    const vm = await this.get(name);
    const rt = await this.supervisor.view(vm);
    const files = this.supervisor.files(vm.name);
    return {
      name: vm.name,
      id: vm.id,
      generation: vm.generation,
      state: rt.state,
      cpus: vm.processorCount,
      memoryMiB: vm.memoryMiB,
      notes: vm.notes,
      disks: vm.hardDisks.map((d) => ({ ...d, ref: slotRef(d) })),
      dvds: vm.dvdDrives.map((d) => ({ ...d, ref: slotRef(d) })),
      nics: vm.networkAdapters.map((n) => ({ ...n, ref: n.name })),
      floppy: vm.floppy ? vm.floppy.path : undefined,
      firmware: vm.firmware,
      ...(vm.appliance ? { appliance: vm.appliance } : {}),
      ...(rt.pid ? { pid: rt.pid, startedAt: rt.startedAt, accelerator: rt.accel, acceleratorReason: rt.accelReason } : {}),
      hasSavedState: rt.hasSavedState,
      ...(rt.lastExit && rt.state === "Off" ? { lastExit: rt.lastExit } : {}),
      ...(rt.pid && this.integration.heartbeatOf(vm) ? { heartbeat: this.integration.heartbeatOf(vm) } : {}),
      diagnosis: await readDiagnosis(files.dir),
      paths: {
        config: this.store.configPath(vm.name),
        console: files.consoleLog,
        ...(rt.pid ? { serialSocket: join(this.supervisor.runDirFor(vm), "serial.sock") } : {}),
      },
    };
  }

  async consoleLog(name: string): Promise<string> {
    const vm = await this.get(name);
    return readConsole(this.supervisor.files(vm.name).consoleLog);
  }

  async consoleSocket(name: string): Promise<string> {
    const vm = await this.get(name);
    const socket = (await this.show(name)).paths.serialSocket;
    if (!socket) throw new VmhostError("invalid-state", `VM "${name}" is not running`, 409);
    return socket;
  }

  // ---- changing the configuration ------------------------------------------------------

  /** Validate against every rule and the other VMs, then store atomically. */
  private async commit(vm: VmConfig, isNew = false): Promise<void> {
    const others = await this.store.configs();
    validateVm(vm, this.hostCapacity(), others);
    if (isNew) await this.store.create(vm);
    else await this.store.save(vm);
  }

  private async update(name: string, fn: (vm: VmConfig, running: boolean) => Promise<void> | void): Promise<VmConfig> {
    const current = await this.get(name);
    return this.supervisor.withLock(current.id, async () => {
      const vm = structuredClone(await this.get(name));
      await fn(vm, this.supervisor.isRunning(vm.id));
      await this.commit(vm);
      await this.firmware.configChanged(vm);
      return vm;
    });
  }

  private async requireOff(vm: VmConfig, what: string): Promise<void> {
    const state = await this.supervisor.state(vm);
    if (state === "Off") return;
    if (state === "Saved") {
      throw new VmhostError("invalid-state", `${what} needs VM "${vm.name}" Off, but it is Saved: start it, or discard the saved state with turn-off`, 409);
    }
    throw new VmhostError("invalid-state", `${what} needs VM "${vm.name}" Off, but it is ${state}`, 409);
  }

  async create(req: CreateVmRequest): Promise<VmView> {
    validateName(req.name);
    if (await this.store.exists(req.name)) throw new VmhostError("exists", `a VM named "${req.name}" already exists`, 409);
    const vm: VmConfig = {
      formatVersion: 1,
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
    };
    const bootType: ControllerType = vm.generation === 1 ? "IDE" : "SCSI";
    // Validate what we can before creating any file, so a refused VM leaves nothing behind.
    validateVm(vm, this.hostCapacity(), await this.store.configs());
    const created: string[] = [];
    try {
      if (req.appliance) {
        const app = await ensureAppliance();
        const base = await this.localApplianceBase(app.manifest.id, vm.generation === 1 ? app.gen1Disk : app.gen2Disk);
        const overlay = await this.freshDiskPath(`${vm.name}-appliance`, "qcow2");
        await createOverlay(overlay, base, "raw");
        created.push(overlay);
        vm.hardDisks.push({ ...firstFreeSlot(vm, bootType), path: overlay, format: "qcow2" });
        vm.appliance = { id: app.manifest.id, kernel: app.manifest.kernel.release };
      }
      if (req.disk) {
        const path = resolve(req.disk);
        vm.hardDisks.push({ ...firstFreeSlot(vm, bootType), path, format: await this.formatOf(path) });
      }
      if (req.newDisk) {
        const path = await this.freshDiskPath(vm.name, req.newDisk.format);
        await createDisk(path, req.newDisk.sizeBytes, req.newDisk.format);
        created.push(path);
        vm.hardDisks.push({ ...firstFreeSlot(vm, bootType), path, format: req.newDisk.format });
      }
      if (req.dvd) {
        const iso = resolve(req.dvd);
        await mustExist(iso, "ISO image");
        vm.dvdDrives.push({ ...firstFreeSlot(vm, bootType), path: iso });
      }
      vm.networkAdapters.push(await this.newAdapter(vm, "Synthetic"));
      // commit() validates the finished VM; a refusal there is cleaned up below.
      if (vm.generation === 2) await this.createNvram(vm);
      await this.commit(vm, true);
    } catch (err) {
      for (const p of created) await rm(p, { force: true });
      if (!(await this.store.exists(vm.name))) await this.store.removeDir(vm.name);
      throw err;
    }
    await this.supervisor.event(vm.name, "created", `generation ${vm.generation} VM created`);
    return this.show(vm.name);
  }

  /** The VM's own UEFI variable store: keys of its Secure Boot template and entries for its devices. */
  private async createNvram(vm: VmConfig): Promise<void> {
    await this.firmware.createNvram(vm);
  }

  /** Appliance bases are linked (or copied) into this home so overlays never dangle when a cache is cleared. */
  private async localApplianceBase(id: string, disk: string): Promise<string> {
    const dir = join(this.layout.home, "appliance", id);
    const target = join(dir, basename(disk));
    try {
      await stat(target);
      return target;
    } catch {
      /* not yet here */
    }
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

  private async freshDiskPath(stem: string, format: DiskFormat): Promise<string> {
    await mkdir(this.disksDir(), { recursive: true });
    for (let i = 0; ; i++) {
      const p = join(this.disksDir(), `${stem}${i ? `-${i}` : ""}.${format === "raw" ? "img" : format}`);
      try {
        await stat(p);
      } catch {
        return p;
      }
    }
  }

  private async formatOf(path: string): Promise<DiskFormat> {
    await mustExist(path, "disk image");
    const info = await diskInfo(path);
    const f = info.format === "vhdx" || info.format === "qcow2" || info.format === "raw" ? info.format : formatFromPath(path);
    if (!f) throw new VmhostError("unsupported-disk", `disk ${path} is in format "${info.format}": vmhost attaches vhdx, qcow2 and raw`);
    return f;
  }

  private async newAdapter(vm: VmConfig, type: "Synthetic" | "Legacy", opts: { name?: string; mac?: string; switchName?: string } = {}): Promise<NetworkAdapter> {
    const mac = opts.mac ? normalizeMac(opts.mac) : await this.macs.allocate();
    let name = opts.name;
    if (!name) {
      const base = type === "Legacy" ? "Legacy Network Adapter" : "Network Adapter";
      name = base;
      for (let i = 2; vm.networkAdapters.some((n) => n.name === name); i++) name = `${base} ${i}`;
    }
    const switchName = opts.switchName ? await this.network.resolveName(opts.switchName) : DEFAULT_SWITCH;
    return { name, type, macAddress: mac, dynamicMac: !opts.mac, switchName };
  }

  async remove(name: string, deleteDisks: boolean): Promise<{ deletedDisks: string[]; keptDisks: string[] }> {
    const vm = await this.get(name);
    return this.supervisor.withLock(vm.id, async () => {
      await this.requireOffOrSaved(vm);
      const deleted: string[] = [];
      const kept: string[] = [];
      for (const d of vm.hardDisks) {
        if (deleteDisks) {
          await rm(d.path, { force: true });
          deleted.push(d.path);
        } else kept.push(d.path);
      }
      await this.store.removeDir(vm.name);
      return { deletedDisks: deleted, keptDisks: kept };
    });
  }

  private async requireOffOrSaved(vm: VmConfig): Promise<void> {
    if (this.supervisor.isRunning(vm.id)) {
      throw new VmhostError("invalid-state", `VM "${vm.name}" is ${this.supervisor.stateOf(vm)}: turn it off first`, 409);
    }
  }

  async set(name: string, changes: { processorCount?: number; memoryMiB?: number; notes?: string }): Promise<VmView> {
    await this.update(name, async (vm) => {
      if (changes.processorCount !== undefined || changes.memoryMiB !== undefined) await this.requireOff(vm, "changing processors or memory");
      if (changes.processorCount !== undefined) vm.processorCount = changes.processorCount;
      if (changes.memoryMiB !== undefined) vm.memoryMiB = changes.memoryMiB;
      if (changes.notes !== undefined) vm.notes = changes.notes;
    });
    return this.show(name);
  }

  async diskAdd(name: string, req: DiskAddRequest): Promise<VmView> {
    const created: string[] = [];
    try {
      await this.update(name, async (vm, running) => {
        const type = req.controllerType ?? (vm.generation === 1 && !running ? "IDE" : "SCSI");
        if (type === "IDE" && vm.generation === 2) {
          throw new RuleError("generation-2-no-ide", "Generation 2 virtual machines have no IDE controller: attach the disk to a SCSI controller");
        }
        const slot =
          req.controllerNumber !== undefined || req.controllerLocation !== undefined
            ? { controllerType: type, controllerNumber: req.controllerNumber ?? 0, controllerLocation: req.controllerLocation ?? 0 }
            : firstFreeSlot(vm, type);
        if (running) {
          if (slot.controllerType !== "SCSI") throw new VmhostError("invalid-state", "IDE disks can be added only while the VM is off; SCSI disks can be added while it runs", 409);
          await this.requireSupervisedController(vm, slot.controllerNumber);
        }
        let path: string;
        let format: DiskFormat;
        if (req.newDisk) {
          path = await this.freshDiskPath(`${vm.name}-${slot.controllerType.toLowerCase()}${slot.controllerNumber}-${slot.controllerLocation}`, req.newDisk.format);
          format = req.newDisk.format;
        } else if (req.path) {
          path = resolve(req.path);
          format = await this.formatOf(path);
        } else throw new VmhostError("bad-request", "give a disk path or a size for a new disk");
        const disk: HardDisk = { ...slot, path, format };
        vm.hardDisks.push(disk);
        validateVm(vm, this.hostCapacity(), await this.store.configs());
        if (req.newDisk) {
          await createDisk(path, req.newDisk.sizeBytes, req.newDisk.format);
          created.push(path);
        }
        if (running) await this.supervisor.hotAddDisk(vm, disk);
        await this.supervisor.event(vm.name, "disk-added", `disk ${path} attached at ${slotRef(disk)}${running ? " while running" : ""}`);
      });
    } catch (err) {
      for (const p of created) await rm(p, { force: true });
      throw err;
    }
    return this.show(name);
  }

  /** Hot-add needs the SCSI controller to exist in the running QEMU; Gen2 always has controller 0. */
  private async requireSupervisedController(vm: VmConfig, controller: number): Promise<void> {
    const present = vm.generation === 2 ? controller === 0 : false;
    const inUse = [...vm.hardDisks, ...vm.dvdDrives].some((d) => d.controllerType === "SCSI" && d.controllerNumber === controller);
    if (!present && !inUse) {
      throw new VmhostError("invalid-state", `SCSI controller ${controller} is not present while the VM runs; add the disk while it is off`, 409);
    }
  }

  async diskRemove(name: string, ref: string): Promise<VmView> {
    await this.update(name, async (vm, running) => {
      const slot = parseSlotRef(ref);
      const idx = vm.hardDisks.findIndex((d) => (slot ? slotRef(d) === slotRef(slot) : resolve(d.path) === resolve(ref)));
      if (idx < 0) throw notFound(`disk "${ref}" on VM "${vm.name}"`);
      const disk = vm.hardDisks[idx]!;
      if (running) {
        if (disk.controllerType !== "SCSI") throw new VmhostError("invalid-state", "IDE disks can be removed only while the VM is off", 409);
        await this.supervisor.hotRemoveDisk(vm, disk);
      }
      vm.hardDisks.splice(idx, 1);
      await this.supervisor.event(vm.name, "disk-removed", `disk ${disk.path} detached from ${slotRef(disk)}`);
    });
    return this.show(name);
  }

  async dvdSet(name: string, iso: string | null, ref?: string): Promise<VmView> {
    await this.update(name, async (vm, running) => {
      const path = iso === null ? null : resolve(iso);
      if (path) await mustExist(path, "ISO image");
      const slot = ref ? parseSlotRef(ref) : undefined;
      if (ref && !slot) throw new VmhostError("bad-request", `"${ref}" is not a drive location like "SCSI 0:1" or "IDE 1:0"`);
      let dvd = slot ? vm.dvdDrives.find((d) => slotRef(d) === slotRef(slot)) : vm.dvdDrives[0];
      if (!dvd) {
        if (path === null) throw notFound(`DVD drive on VM "${vm.name}"`);
        if (running) throw new VmhostError("invalid-state", "a new DVD drive can be added only while the VM is off; an existing one takes media while it runs", 409);
        const type: ControllerType = vm.generation === 1 ? "IDE" : "SCSI";
        dvd = { ...(slot ?? firstFreeSlot(vm, type)), path };
        vm.dvdDrives.push(dvd);
      } else {
        if (running) await this.supervisor.changeMedium(vm, { kind: "dvd", ...dvd }, path);
        dvd.path = path;
      }
      await this.supervisor.event(vm.name, "dvd", path ? `DVD ${slotRef(dvd)} now holds ${path}` : `DVD ${slotRef(dvd)} ejected`);
    });
    return this.show(name);
  }

  /** Gen1's virtual floppy drive (Hyper-V: Set-VMFloppyDiskDrive); Gen2 has none. */
  async floppySet(name: string, path: string | null): Promise<VmView> {
    await this.update(name, async (vm, running) => {
      refuseFloppy(vm.generation);
      const file = path === null ? null : resolve(path);
      if (file) await mustExist(file, "floppy image");
      if (running) {
        if (!vm.floppy) throw new VmhostError("invalid-state", "the floppy drive is added while the VM is off; then it takes disks while it runs", 409);
        await this.supervisor.changeMedium(vm, { kind: "floppy" }, file);
      }
      vm.floppy = { path: file };
      await this.supervisor.event(vm.name, "floppy", file ? `floppy drive now holds ${file}` : "floppy ejected");
    });
    return this.show(name);
  }

  async nicAdd(name: string, opts: { legacy: boolean; name?: string; mac?: string; switchName?: string }): Promise<VmView> {
    await this.update(name, async (vm) => {
      if (opts.legacy && vm.generation === 2) {
        throw new RuleError(
          "generation-2-no-legacy-adapter",
          "Generation 2 virtual machines have no legacy network adapter: use a synthetic adapter (it can network-boot over IPv4 and IPv6)",
        );
      }
      await this.requireOff(vm, "adding a network adapter");
      vm.networkAdapters.push(await this.newAdapter(vm, opts.legacy ? "Legacy" : "Synthetic", opts));
    });
    return this.show(name);
  }

  /** Connect-VMNetworkAdapter: the adapter moves to another switch (while running, between bridged switches). */
  async nicConnect(name: string, nicName: string, switchName: string): Promise<VmView> {
    await this.update(name, async (vm, running) => {
      const nic = vm.networkAdapters.find((n) => n.name === nicName || n.macAddress === nicName.toUpperCase());
      if (!nic) throw notFound(`network adapter "${nicName}" on VM "${vm.name}"`);
      const from = nic.switchName;
      nic.switchName = await this.network.connect(vm, nic, switchName, running);
      await this.supervisor.event(vm.name, "nic-connected", `adapter "${nic.name}" connected to switch "${nic.switchName}" (was "${from}")`);
    });
    return this.show(name);
  }

  async nicRemove(name: string, nicName: string): Promise<VmView> {
    await this.update(name, async (vm) => {
      const idx = vm.networkAdapters.findIndex((n) => n.name === nicName || n.macAddress === nicName.toUpperCase());
      if (idx < 0) throw notFound(`network adapter "${nicName}" on VM "${vm.name}"`);
      await this.requireOff(vm, "removing a network adapter");
      vm.networkAdapters.splice(idx, 1);
    });
    return this.show(name);
  }

  // ---- lifecycle --------------------------------------------------------------------

  private async lifecycle<T>(name: string, fn: (vm: VmConfig) => Promise<T>): Promise<T> {
    const vm = await this.get(name);
    return this.supervisor.withLock(vm.id, () => fn(vm));
  }

  start(name: string): Promise<VmState> {
    return this.lifecycle(name, async (vm) => {
      for (const d of vm.hardDisks) await mustExist(d.path, `disk of VM "${vm.name}"`);
      await this.firmware.beforeStart(vm);
      // A QEMU that never came up leaves no taps behind.
      return this.supervisor.start(vm).catch(async (err: unknown) => {
        if (!this.supervisor.isRunning(vm.id)) await this.network.releaseTaps(vm).catch(() => undefined);
        throw err;
      });
    });
  }

  stop(name: string, force: boolean, timeoutMs: number) {
    return this.lifecycle(name, (vm) => this.supervisor.stop(vm, { force, timeoutMs }));
  }
  turnOff(name: string) {
    return this.lifecycle(name, (vm) => this.supervisor.turnOff(vm));
  }
  pause(name: string) {
    return this.lifecycle(name, (vm) => this.supervisor.pause(vm));
  }
  resume(name: string) {
    return this.lifecycle(name, (vm) => this.supervisor.resume(vm));
  }
  save(name: string) {
    return this.lifecycle(name, (vm) => this.supervisor.save(vm));
  }
  restart(name: string) {
    return this.lifecycle(name, (vm) => this.supervisor.restart(vm));
  }

  async events(name: string) {
    const vm = await this.get(name);
    return this.supervisor.journal.read(vm.name);
  }
}

/**
 * The service's own memory. With --expose-gc (how vmhostd is started) a full collection runs
 * first, so `liveKiB` (heap + off-heap buffers) is what is really held, not garbage not yet freed.
 */
function serviceMemory(): { pid: number; rssKiB: number; liveKiB: number; collected: boolean } {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const m = process.memoryUsage();
  return { pid: process.pid, rssKiB: Math.round(m.rss / 1024), liveKiB: Math.round((m.heapUsed + m.external) / 1024), collected: gc !== undefined };
}

async function mustExist(path: string, what: string): Promise<void> {
  try {
    await stat(path);
  } catch {
    throw new VmhostError("missing-file", `${what} ${path} does not exist`, 404);
  }
}
