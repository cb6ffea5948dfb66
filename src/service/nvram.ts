import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { z } from "zod";
import { PCI_SLOTS } from "../engine/qemu/layout.js";
import {
  FirmwareError,
  GUIDS,
  applySecureBootTemplate,
  bootOptionName,
  parseBootTarget,
  parseVarStore,
  readVarStoreFile,
  resolveBootTarget,
  setBootOrder,
  setFirstBootDevice,
  setSecureBootEnable,
  syncDeviceEntries,
  type BootDevice,
  type FirmwareDeviceLayout,
  type VarStore,
} from "../firmware/index.js";
import type { VmHome } from "../home/vm-home.js";
import { findAdapter, parseSlotRef, slotRef, SecureBootTemplate, type VmConfig } from "../model/index.js";
import { VmhostError } from "../util/errors.js";
import type { AfterChangeStep, ChangeContext, FirmwareOp } from "./changes.js";

/**
 * The NVRAM side of every change of a Gen2 VM (Hyper-V keeps a Gen2 VM's boot entries in its
 * UEFI variable store). Run as an after-change step of the one change transaction:
 * - QEMU does not own the store (Off): the device entries follow the devices, pending and
 *   requested firmware operations are applied, and the new store is staged in the same commit
 *   as the configuration;
 * - QEMU owns it (running, or Saved: the restore writes the flash back): the requested
 *   operations (and a device re-sync when devices changed) are checked against a copy of the
 *   store and kept in firmware-pending.json, staged in the same commit; they are applied
 *   before the next start.
 * A change that cannot be applied (a full store, an unknown boot target) fails the whole
 * transaction: nothing is written.
 */

const PendingOp = z.discriminatedUnion("op", [
  z.object({ op: z.literal("first-boot-device"), target: z.string(), at: z.string() }).strict(),
  z.object({ op: z.literal("boot-order"), targets: z.array(z.string()), prune: z.boolean(), pruneFiles: z.boolean(), at: z.string() }).strict(),
  z.object({ op: z.literal("secure-boot"), enabled: z.boolean(), template: SecureBootTemplate, at: z.string() }).strict(),
  z.object({ op: z.literal("devices"), reason: z.string(), at: z.string() }).strict(),
]);
const PendingFile = z.object({ ops: z.array(PendingOp) }).strict();

/** Where the Secure Boot key templates come from (Debian's OVMF_VARS_4M.ms.fd) and the empty store (OVMF_VARS_4M.fd). */
export interface NvramSources {
  emptyVars(): Promise<string>;
  keyVars(): Promise<string>;
}

/** Errors of the firmware layer as vmhost reports them. */
export function firmwareToVmhost(err: unknown): unknown {
  if (err instanceof FirmwareError) return new VmhostError(`firmware-${err.code.toLowerCase().replace(/_/g, "-")}`, err.message, 409);
  return err;
}

/** The devices OVMF sees, where the engine put them (engine/qemu/layout.ts; adapters at their stored PCI slots). */
export function firmwareLayout(vm: VmConfig): FirmwareDeviceLayout {
  const controllers = new Set<number>();
  for (const d of [...vm.hardDisks, ...vm.dvdDrives]) if (d.controllerType === "SCSI") controllers.add(d.controllerNumber);
  if (vm.generation === 2) controllers.add(0);
  return {
    scsiControllers: [...controllers].sort((a, b) => a - b).map((c) => ({ controller: c, pciSlot: PCI_SLOTS.scsiController(c) })),
    scsiDevices: [
      ...vm.hardDisks.filter((d) => d.controllerType === "SCSI").map((d) => ({ controller: d.controllerNumber, location: d.controllerLocation, kind: "disk" as const, ref: slotRef(d) })),
      ...vm.dvdDrives.filter((d) => d.controllerType === "SCSI").map((d) => ({ controller: d.controllerNumber, location: d.controllerLocation, kind: "dvd" as const, ref: slotRef(d) })),
    ],
    nics: vm.networkAdapters.map((n, i) => ({ index: i, pciSlot: n.pciSlot, mac: n.macAddress, ref: n.name })),
  };
}

/** Does the CLI's name for a device (adapter name or MAC, "SCSI 0:1", a disk path) name `d`? */
export function deviceMatcher(vm: VmConfig): (ref: string, d: BootDevice) => boolean {
  return (ref, d) => {
    if (d.kind === "nic") {
      const nic = vm.networkAdapters[d.index];
      return nic !== undefined && findAdapter([nic], ref) !== undefined;
    }
    const slot = parseSlotRef(ref);
    if (slot) return slotRef(slot) === d.ref;
    const disk = vm.hardDisks.find((x) => slotRef(x) === d.ref);
    return disk !== undefined && resolve(disk.path) === resolve(ref);
  };
}

export function describeOp(op: FirmwareOp): string {
  switch (op.op) {
    case "first-boot-device":
      return `first boot device ${op.target}`;
    case "boot-order":
      return `boot order ${op.targets.join(",")}${op.prune ? " (prune)" : ""}${op.pruneFiles ? " (prune File entries)" : ""}`;
    case "secure-boot":
      return `Secure Boot ${op.enabled ? "on" : "off"} (${op.template})`;
    case "devices":
      return `boot entries for ${op.reason}`;
  }
}

/** The operations kept pending for the VM (none when there is no file); a damaged file is an error naming it. */
export async function readPending(home: VmHome): Promise<FirmwareOp[]> {
  let text: string;
  try {
    text = await readFile(home.firmwarePending, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new VmhostError("damaged", `${home.firmwarePending} cannot be read: ${(err as Error).message}`, 500);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new VmhostError("damaged", `${home.firmwarePending} is damaged: ${(err as Error).message}`, 500);
  }
  const r = PendingFile.safeParse(raw);
  if (!r.success) throw new VmhostError("damaged", `${home.firmwarePending} is damaged: ${r.error.issues[0]?.message ?? "invalid"}`, 500);
  return r.data.ops;
}

function layoutKey(vm: VmConfig | undefined): string {
  if (!vm) return "";
  return JSON.stringify([firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol]);
}

/** The NVRAM step of the change transaction, and the NVRAM work of start. */
export class NvramStep implements AfterChangeStep {
  readonly name = "nvram";

  constructor(private readonly sources: NvramSources) {}

  private async keyStore(): Promise<VarStore> {
    return readVarStoreFile(await this.sources.keyVars());
  }

  /** A new Gen2 VM's store: Debian's empty store, the template's keys when Secure Boot is on. */
  async newStore(vm: VmConfig): Promise<VarStore> {
    const store = await readVarStoreFile(await this.sources.emptyVars());
    if (vm.firmware.secureBoot) applySecureBootTemplate(store, await this.keyStore(), vm.firmware.secureBootTemplate, true);
    return store;
  }

  /**
   * Applies firmware operations and the device entries to `store`, line by line into
   * `messages`. Throws (typed) when an operation cannot be applied; the store may then be
   * half changed, so callers work on a copy and write nothing.
   */
  async applyOps(vm: VmConfig, store: VarStore, ops: readonly FirmwareOp[], messages: string[]): Promise<void> {
    const layout = firmwareLayout(vm);
    const match = deviceMatcher(vm);
    const sync = syncDeviceEntries(store, layout, vm.firmware.preferredNetworkBootProtocol);
    for (const a of sync.added) messages.push(`added ${bootOptionName(a.id)} "${a.description}" for ${a.ref} at the end of the boot order`);
    for (const r of sync.removed) messages.push(`removed ${bootOptionName(r.id)} "${r.description}": its device is no longer attached`);
    for (const w of sync.rewritten) messages.push(`rewrote ${bootOptionName(w.id)} "${w.from}" as "${w.to}" in place`);
    for (const op of ops) {
      if (op.op === "devices") continue;
      if (op.op === "secure-boot") {
        if (op.enabled) {
          const { trusted } = applySecureBootTemplate(store, await this.keyStore(), op.template, true);
          messages.push(`Secure Boot on: keys of the ${op.template} template written; db trusts ${trusted.join(", ")}`);
        } else if (store.get("PK", GUIDS.globalVariable)) {
          setSecureBootEnable(store, false);
          messages.push("Secure Boot off: the keys stay enrolled and SecureBootEnable is cleared");
        } else messages.push("Secure Boot off");
        continue;
      }
      if (op.op === "first-boot-device") {
        const ids = resolveBootTarget(store, layout, parseBootTarget(op.target), match);
        const r = setFirstBootDevice(store, ids);
        messages.push(`${ids.map(bootOptionName).join(", ")} (${op.target}) now first; boot order ${r.order.map(bootOptionName).join(",")}`);
        continue;
      }
      const ids: number[] = [];
      for (const t of op.targets) for (const id of resolveBootTarget(store, layout, parseBootTarget(t), match)) if (!ids.includes(id)) ids.push(id);
      const r = setBootOrder(store, layout, ids, { prune: op.prune, pruneFiles: op.pruneFiles, protocol: vm.firmware.preferredNetworkBootProtocol });
      messages.push(`boot order ${r.order.map(bootOptionName).join(",")}`);
      if (r.movedToEnd.length) {
        messages.push(`left out and moved to the end (Hyper-V would delete them; --prune does): ${r.movedToEnd.map(bootOptionName).join(", ")}`);
      }
      for (const d of r.deleted) messages.push(`deleted ${bootOptionName(d.id)} "${d.description}" (${d.type})`);
      for (const k of r.keptRecreated) messages.push(`kept ${bootOptionName(k.id)} "${k.description}" at the end: ${k.reason}`);
      if (r.keptFiles.length) {
        messages.push(`kept File entries (made by an OS; add --prune-files to delete them too): ${r.keptFiles.map(bootOptionName).join(", ")}`);
      }
    }
  }

  async run(ctx: ChangeContext): Promise<void> {
    const vm = ctx.vm;
    if (vm.generation !== 2) return;
    const replaced = ctx.nvramReplacement !== undefined;
    const devicesChanged = layoutKey(ctx.before) !== layoutKey(vm);
    if (!devicesChanged && ctx.firmwareOps.length === 0 && ctx.before && !replaced) return;
    const busy = ctx.before ? await ctx.nvramBusy() : null;
    const pending = ctx.pendingReplacement ?? (ctx.before ? await readPending(ctx.home) : []);
    const current = async () => ctx.nvramReplacement ?? (await readFile(ctx.home.nvram));
    if (busy) {
      // Check now what can be checked, so a typo is refused rather than kept.
      const probe = parseVarStore(await current());
      try {
        await this.applyOps(vm, probe, [...pending, ...ctx.firmwareOps], []);
      } catch (err) {
        throw firmwareToVmhost(err);
      }
      const ops = [...pending, ...ctx.firmwareOps];
      if (devicesChanged && !ops.some((o) => o.op === "devices")) ops.push({ op: "devices", reason: "changed devices", at: new Date().toISOString() });
      if (replaced) await ctx.txn.write(ctx.home.nvram, ctx.nvramReplacement!);
      if (ops.length) {
        await ctx.txn.write(ctx.home.firmwarePending, JSON.stringify({ ops }, null, 2) + "\n");
        ctx.messages.push(`pending: ${busy}; ${ops.map(describeOp).join(", ")} will be applied before the next start`);
      } else await ctx.txn.remove(ctx.home.firmwarePending);
      return;
    }
    let store: VarStore;
    try {
      store = replaced ? parseVarStore(ctx.nvramReplacement!) : ctx.before ? await readVarStoreFile(ctx.home.nvram) : await this.newStore(vm);
    } catch (err) {
      throw firmwareToVmhost(err);
    }
    const bytesBefore = Buffer.from(store.toBuffer());
    try {
      await this.applyOps(vm, store, [...pending, ...ctx.firmwareOps], ctx.messages);
    } catch (err) {
      throw firmwareToVmhost(err);
    }
    if (!ctx.before || replaced || !bytesBefore.equals(Buffer.from(store.toBuffer()))) await ctx.txn.write(ctx.home.nvram, store.toBuffer());
    if (pending.length || ctx.pendingReplacement) await ctx.txn.remove(ctx.home.firmwarePending);
  }
}
