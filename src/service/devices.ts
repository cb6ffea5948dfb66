import { resolve } from "node:path";
import { stat } from "node:fs/promises";
import { createDisk } from "../images/disk.js";
import {
  RuleError,
  checkSlot,
  findAdapter,
  firstFreeAdapterSlot,
  firstFreeSlot,
  normalizeMac,
  parseSlotRef,
  refuseFloppy,
  refuseLegacyAdapter,
  slotRef,
  type ControllerType,
  type DiskFormat,
  type HardDisk,
  type MacPool,
  type NetworkAdapter,
  type VmConfig,
} from "../model/index.js";
import type { NetworkManager } from "../network/manager.js";
import { DEFAULT_SWITCH } from "../network/schema.js";
import type { Supervisor } from "../supervisor/supervisor.js";
import { VmhostError, notFound } from "../util/errors.js";
import type { ChangeContext, VmChanges } from "./changes.js";
import type { DiskPolicy } from "./disks.js";

export interface DiskAddRequest {
  path?: string;
  /** The image's format; when absent, taken from the file's extension (never probed from its content). */
  format?: DiskFormat;
  newDisk?: { sizeBytes: number; format: DiskFormat };
  controllerType?: ControllerType;
  controllerNumber?: number;
  controllerLocation?: number;
}

/** The file extension vmhost gives a new image of a format. */
export function extensionOf(format: DiskFormat): string {
  return format === "raw" ? "img" : format;
}

/**
 * Where a new disk of a VM goes: `<disks>/<vm id>-<slot>.<ext>` (nothing derived from a name
 * reaches a path). `taken` are paths already in use.
 */
export async function newDiskPath(disksDir: string, vmId: string, what: string, format: DiskFormat): Promise<string> {
  for (let i = 0; ; i++) {
    const p = resolve(disksDir, `${vmId}-${what}${i ? `-${i}` : ""}.${extensionOf(format)}`);
    const exists = await stat(p).then(() => true, () => false);
    if (!exists) return p;
  }
}

/** An ISO or floppy image the user names: a regular file (a directory or nothing is refused). */
export async function existingMedia(path: string, what: string): Promise<string> {
  const abs = resolve(path);
  let st;
  try {
    st = await stat(abs);
  } catch {
    throw new VmhostError("missing-file", `${what} ${abs} does not exist`, 404);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new VmhostError("bad-media", `${what} ${abs} is not a regular file`);
  return abs;
}

/**
 * The VM's devices (Add/Remove-VMHardDiskDrive, Set-VMDvdDrive, Set-VMFloppyDiskDrive,
 * Add/Remove/Connect-VMNetworkAdapter, Set-VMProcessor/Memory): each one change transaction.
 */
export class DeviceManager {
  private readonly changes: VmChanges;
  private readonly supervisor: Supervisor;
  private readonly network: NetworkManager;
  private readonly macs: MacPool;
  private readonly disksDir: string;
  private readonly disks: DiskPolicy;

  constructor(deps: { changes: VmChanges; supervisor: Supervisor; network: NetworkManager; macs: MacPool; disksDir: string; disks: DiskPolicy }) {
    this.disks = deps.disks;
    this.changes = deps.changes;
    this.supervisor = deps.supervisor;
    this.network = deps.network;
    this.macs = deps.macs;
    this.disksDir = deps.disksDir;
  }

  private requireOff(ctx: ChangeContext, what: string): void {
    if (ctx.state === "Off") return;
    if (ctx.state === "Saved") {
      throw new VmhostError("invalid-state", `${what} needs VM "${ctx.vm.name}" Off, but it is Saved: start it, or discard the saved state with turn-off`, 409);
    }
    throw new VmhostError("invalid-state", `${what} needs VM "${ctx.vm.name}" Off, but it is ${ctx.state}`, 409);
  }

  /** Set-VM: processors and memory (VM off), notes, checkpoint type, display (VM off). */
  async set(ref: string, changes: { processorCount?: number; memoryMiB?: number; notes?: string; checkpointType?: VmConfig["checkpointType"]; display?: boolean }): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, (ctx) => {
      const vm = ctx.vm;
      if (changes.processorCount !== undefined || changes.memoryMiB !== undefined) this.requireOff(ctx, "changing processors or memory");
      if (changes.display !== undefined && changes.display !== vm.display) this.requireOff(ctx, "adding or removing the display");
      if (changes.processorCount !== undefined) vm.processorCount = changes.processorCount;
      if (changes.memoryMiB !== undefined) vm.memoryMiB = changes.memoryMiB;
      if (changes.notes !== undefined) vm.notes = changes.notes;
      if (changes.checkpointType !== undefined) vm.checkpointType = changes.checkpointType;
      if (changes.display !== undefined) vm.display = changes.display;
      ctx.event("settings", `settings changed: ${Object.keys(changes).filter((k) => (changes as Record<string, unknown>)[k] !== undefined).join(", ")}`);
    });
    return vm;
  }

  async diskAdd(ref: string, req: DiskAddRequest): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, async (ctx) => {
      const vm = ctx.vm;
      const type = req.controllerType ?? (vm.generation === 1 && !ctx.running ? "IDE" : "SCSI");
      const slot =
        req.controllerNumber !== undefined || req.controllerLocation !== undefined
          ? { controllerType: type, controllerNumber: req.controllerNumber ?? 0, controllerLocation: req.controllerLocation ?? 0 }
          : firstFreeSlot(vm, type);
      checkSlot(vm.generation, slot, "disk");
      if (ctx.running) {
        if (slot.controllerType !== "SCSI") throw new VmhostError("invalid-state", "IDE disks can be added only while the VM is off; SCSI disks can be added while it runs", 409);
        this.requireLiveController(vm, slot.controllerNumber);
      }
      let disk: HardDisk;
      if (req.newDisk) {
        const path = await newDiskPath(this.disksDir, vm.id, `${slot.controllerType.toLowerCase()}${slot.controllerNumber}-${slot.controllerLocation}`, req.newDisk.format);
        disk = { ...slot, path, format: req.newDisk.format };
        vm.hardDisks.push(disk);
        // Made at its final path (a running QEMU opens it by name) and listed in the journal, so a
        // failed or interrupted change deletes it again.
        await ctx.txn.created(path);
        await createDisk(path, req.newDisk.sizeBytes, req.newDisk.format);
      } else if (req.path) {
        const img = await this.disks.check(req.path, req.format);
        await this.disks.requireFree(img, vm);
        disk = { ...slot, path: img.path, format: img.format };
        vm.hardDisks.push(disk);
      } else throw new VmhostError("bad-request", "give a disk path or a size for a new disk");
      if (ctx.running) {
        await this.supervisor.hotAddDisk(vm, disk);
        ctx.onRollback(() => this.supervisor.hotRemoveDisk(vm, disk));
      }
      ctx.event("disk-added", `disk ${disk.path} attached at ${slotRef(disk)}${ctx.running ? " while running" : ""}`);
    });
    return vm;
  }

  /** Hot-add needs the SCSI controller to exist in the running QEMU; Gen2 always has controller 0. */
  private requireLiveController(vm: VmConfig, controller: number): void {
    const present = vm.generation === 2 ? controller === 0 : false;
    const inUse = [...vm.hardDisks, ...vm.dvdDrives].some((d) => d.controllerType === "SCSI" && d.controllerNumber === controller);
    if (!present && !inUse) {
      throw new VmhostError("invalid-state", `SCSI controller ${controller} is not present while the VM runs; add the disk while it is off`, 409);
    }
  }

  async diskRemove(ref: string, diskRef: string): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, async (ctx) => {
      const vm = ctx.vm;
      const slot = parseSlotRef(diskRef);
      const idx = vm.hardDisks.findIndex((d) => (slot ? slotRef(d) === slotRef(slot) : resolve(d.path) === resolve(diskRef)));
      if (idx < 0) throw notFound(`disk "${diskRef}" on VM "${vm.name}"`);
      const disk = vm.hardDisks[idx]!;
      vm.hardDisks.splice(idx, 1);
      if (ctx.running) {
        if (disk.controllerType !== "SCSI") throw new VmhostError("invalid-state", "IDE disks can be removed only while the VM is off", 409);
        await this.supervisor.hotRemoveDisk(vm, disk);
      }
      ctx.event("disk-removed", `disk ${disk.path} detached from ${slotRef(disk)}`);
    });
    return vm;
  }

  async dvdSet(ref: string, iso: string | null, driveRef?: string): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, async (ctx) => {
      const vm = ctx.vm;
      const path = iso === null ? null : await existingMedia(iso, "ISO image");
      const slot = driveRef ? parseSlotRef(driveRef) : undefined;
      if (driveRef && !slot) throw new VmhostError("bad-request", `"${driveRef}" is not a drive location like "SCSI 0:1" or "IDE 1:0"`);
      let dvd = slot ? vm.dvdDrives.find((d) => slotRef(d) === slotRef(slot)) : vm.dvdDrives[0];
      if (!dvd) {
        if (path === null) throw notFound(`DVD drive on VM "${vm.name}"`);
        if (ctx.running) throw new VmhostError("invalid-state", "a new DVD drive can be added only while the VM is off; an existing one takes media while it runs", 409);
        const type: ControllerType = vm.generation === 1 ? "IDE" : "SCSI";
        dvd = { ...(slot ?? firstFreeSlot(vm, type)), path };
        vm.dvdDrives.push(dvd);
      } else {
        const previous = dvd.path;
        if (ctx.running) {
          await this.supervisor.changeMedium(vm, { kind: "dvd", ...dvd }, path);
          const d = dvd;
          ctx.onRollback(() => this.supervisor.changeMedium(vm, { kind: "dvd", ...d }, previous));
        }
        dvd.path = path;
      }
      ctx.event("dvd", path ? `DVD ${slotRef(dvd)} now holds ${path}` : `DVD ${slotRef(dvd)} ejected`);
    });
    return vm;
  }

  /** Gen1's virtual floppy drive (Hyper-V: Set-VMFloppyDiskDrive); Gen2 has none. */
  async floppySet(ref: string, path: string | null): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, async (ctx) => {
      const vm = ctx.vm;
      refuseFloppy(vm.generation);
      const file = path === null ? null : await existingMedia(path, "floppy image");
      if (ctx.running) {
        if (!vm.floppy) throw new VmhostError("invalid-state", "the floppy drive is added while the VM is off; then it takes disks while it runs", 409);
        await this.supervisor.changeMedium(vm, { kind: "floppy" }, file);
        const previous = vm.floppy.path;
        ctx.onRollback(() => this.supervisor.changeMedium(vm, { kind: "floppy" }, previous));
      }
      vm.floppy = { path: file };
      ctx.event("floppy", file ? `floppy drive now holds ${file}` : "floppy ejected");
    });
    return vm;
  }

  /** A new adapter: its name, MAC (static when given, else from the host's pool) and its PCI slot, kept for its life. */
  async newAdapter(vm: VmConfig, type: "Synthetic" | "Legacy", opts: { name?: string; mac?: string; switchName?: string } = {}): Promise<NetworkAdapter> {
    if (type === "Legacy") refuseLegacyAdapter(vm.generation);
    if (opts.mac !== undefined && opts.mac.trim() === "") throw new VmhostError("bad-request", "--mac is empty: give a MAC address like 00:15:5D:01:02:03, or leave it out for a dynamic one");
    const mac = opts.mac !== undefined ? normalizeMacChecked(opts.mac) : await this.macs.allocate();
    let name = opts.name;
    if (!name) {
      const base = type === "Legacy" ? "Legacy Network Adapter" : "Network Adapter";
      name = base;
      for (let i = 2; vm.networkAdapters.some((n) => n.name === name); i++) name = `${base} ${i}`;
    }
    const switchName = opts.switchName ? await this.network.resolveName(opts.switchName) : DEFAULT_SWITCH;
    return { name, type, macAddress: mac, dynamicMac: opts.mac === undefined, switchName, pciSlot: firstFreeAdapterSlot(vm) };
  }

  async nicAdd(ref: string, opts: { legacy: boolean; name?: string; mac?: string; switchName?: string }): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, async (ctx) => {
      if (opts.legacy) refuseLegacyAdapter(ctx.vm.generation);
      this.requireOff(ctx, "adding a network adapter");
      const nic = await this.newAdapter(ctx.vm, opts.legacy ? "Legacy" : "Synthetic", opts);
      ctx.vm.networkAdapters.push(nic);
      ctx.event("nic-added", `adapter "${nic.name}" (${nic.type}, ${nic.macAddress}) added at PCI slot ${nic.pciSlot}, on switch "${nic.switchName}"`);
    });
    return vm;
  }

  /** Connect-VMNetworkAdapter: the adapter moves to another switch (while running, between bridged switches). */
  async nicConnect(ref: string, nicName: string, switchName: string): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, async (ctx) => {
      const nic = findAdapter(ctx.vm.networkAdapters, nicName);
      if (!nic) throw notFound(`network adapter "${nicName}" on VM "${ctx.vm.name}"`);
      const from = nic.switchName;
      nic.switchName = await this.network.connect(ctx.vm, nic, switchName, ctx.running);
      ctx.event("nic-connected", `adapter "${nic.name}" connected to switch "${nic.switchName}" (was "${from}")`);
    });
    return vm;
  }

  /** Remove-VMNetworkAdapter: the other adapters keep their PCI slots (and so their names in the guest). */
  async nicRemove(ref: string, nicName: string): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, (ctx) => {
      const nic = findAdapter(ctx.vm.networkAdapters, nicName);
      if (!nic) throw notFound(`network adapter "${nicName}" on VM "${ctx.vm.name}"`);
      this.requireOff(ctx, "removing a network adapter");
      ctx.vm.networkAdapters.splice(ctx.vm.networkAdapters.indexOf(nic), 1);
      ctx.event("nic-removed", `adapter "${nic.name}" removed from PCI slot ${nic.pciSlot}`);
    });
    return vm;
  }
}

/** A user's MAC address, normalised, or a 400 naming what is wrong with it. */
export function normalizeMacChecked(text: string): string {
  try {
    return normalizeMac(text);
  } catch (err) {
    if (err instanceof VmhostError) throw err;
    throw new RuleError("mac-address", (err as Error).message);
  }
}
