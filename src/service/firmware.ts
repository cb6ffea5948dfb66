import { copyFile, mkdir, readFile, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { z } from "zod";
import { hostPaths } from "../engine/qemu/host.js";
import { PCI_SLOTS } from "../engine/qemu/layout.js";
import {
  FirmwareError,
  GUIDS,
  applySecureBootTemplate,
  bootEntriesView,
  bootOptionName,
  parseBootTarget,
  readBootNext,
  readSecureBootState,
  readVarStoreFile,
  resolveBootTarget,
  setBootOrder,
  setFirstBootDevice,
  setSecureBootEnable,
  syncDeviceEntries,
  writeVarStoreFileAtomic,
  type BootDevice,
  type FirmwareDeviceLayout,
  type SecureBootNvramState,
  type VarStore,
} from "../firmware/index.js";
import { Gen1BootDevice, SecureBootTemplate, validateVm, type VmConfig } from "../model/index.js";
import { BootFailureWatch, type BootFailure } from "../supervisor/boot-failure.js";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";
import { parseSlotRef, slotRef, type VmManager } from "./manager.js";
import { pathExists } from "../util/fs.js";

/**
 * vmhostd's side of Get-VMFirmware / Set-VMFirmware: the device layout of a VM (from its
 * configuration and the engine's fixed PCI slots), its NVRAM file, changes kept pending while
 * QEMU has the store open, and PauseAfterBootFailure. The policy itself is src/firmware.
 *
 * A store is written atomically and never while QEMU may have it: while the VM runs (or is
 * Saved: restoring the state writes the flash back) a change to it is kept in
 * firmware-pending.json and applied, in order, before the next start that boots the firmware
 * afresh. Settings that are not in the NVRAM (Secure Boot on/off and template choice, network
 * boot protocol, PauseAfterBootFailure) are stored in the VM's configuration at once.
 */

/** Hyper-V's SecureBootTemplateId values (Get-VMFirmware). */
const TEMPLATE_IDS: Record<VmConfig["firmware"]["secureBootTemplate"], string> = {
  MicrosoftWindows: "1734c6e8-3154-4dda-ba5f-a874cc483422",
  MicrosoftUEFICertificateAuthority: "272e7447-90a4-4563-a4b9-8e4ab00526ce",
  OpenSourceShieldedVM: "4292ae2b-ee2c-42b5-a969-dd8f8689f6f3",
};

/** One change to the NVRAM, as asked for (re-resolved against the store when applied). */
const PendingOp = z.discriminatedUnion("op", [
  z.object({ op: z.literal("first-boot-device"), target: z.string(), at: z.string() }).strict(),
  z.object({ op: z.literal("boot-order"), targets: z.array(z.string()), prune: z.boolean(), pruneFiles: z.boolean(), at: z.string() }).strict(),
  z.object({ op: z.literal("secure-boot"), enabled: z.boolean(), template: SecureBootTemplate, at: z.string() }).strict(),
  z.object({ op: z.literal("devices"), reason: z.string(), at: z.string() }).strict(),
]);
type PendingOp = z.infer<typeof PendingOp>;
const PendingFile = z.object({ ops: z.array(PendingOp) }).strict();

export const FirmwareSetRequest = z
  .object({
    firstBootDevice: z.string().min(1).optional(),
    bootOrder: z.array(z.string().min(1)).min(1).optional(),
    prune: z.boolean().default(false),
    pruneFiles: z.boolean().default(false),
    preferredNetworkBootProtocol: z.enum(["IPv4", "IPv6"]).optional(),
    pauseAfterBootFailure: z.boolean().optional(),
    secureBoot: z.boolean().optional(),
    secureBootTemplate: SecureBootTemplate.optional(),
    startupOrder: z.array(Gen1BootDevice).optional(),
    networkBootPayload: z.object({ dir: z.string().min(1), file: z.string().min(1) }).strict().nullable().optional(),
  })
  .strict();
export type FirmwareSetRequest = z.infer<typeof FirmwareSetRequest>;

export interface FirmwareDeviceView {
  type: "HardDiskDrive" | "DvdDrive" | "NetworkAdapter";
  ref: string;
  path?: string | null;
  macAddress?: string;
}

export interface FirmwareEntryView {
  id: string;
  bootType: string;
  description: string;
  firmwarePath: string;
  device: FirmwareDeviceView | null;
  protocol?: string | null;
  active: boolean;
  inBootOrder: boolean;
}

export interface FirmwareView {
  vm: string;
  generation: 1 | 2;
  state: string;
  bootOrder?: FirmwareEntryView[];
  bootNext?: string | null;
  preferredNetworkBootProtocol?: "IPv4" | "IPv6";
  secureBoot?: "On" | "Off";
  secureBootTemplate?: string;
  /** Hyper-V's SecureBootTemplateId for the template. */
  secureBootTemplateId?: string;
  /** What the NVRAM holds (SecureBoot and SetupMode as the firmware derives them at boot). */
  nvram?: SecureBootNvramState & { file: string };
  /** In force: what the next (or running) boot verifies. */
  secureBootInForce?: string;
  pauseAfterBootFailure?: boolean;
  lastBootFailure?: BootFailure | null;
  networkBootPayload?: { dir: string; file: string } | null;
  /** Gen1: Hyper-V's BIOS startup order. */
  startupOrder?: string[];
  pending: { op: string; detail: string; at: string }[];
  /** Why changes are pending, when they are. */
  pendingReason?: string;
}

export interface FirmwareSetResult {
  view: FirmwareView;
  /** What was done (or kept pending), line by line, for the CLI to print. */
  messages: string[];
  pending: boolean;
}

function toVmhost(err: unknown): unknown {
  if (err instanceof FirmwareError) return new VmhostError(`firmware-${err.code.toLowerCase().replace(/_/g, "-")}`, err.message, 409);
  return err;
}

/** The devices OVMF sees, where the engine put them (src/engine/qemu/layout.ts, argv.ts). */
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
    nics: vm.networkAdapters.map((n, i) => ({ index: i, pciSlot: PCI_SLOTS.networkAdapter(i), mac: n.macAddress, ref: n.name })),
  };
}

/** Does the CLI's name for a device (adapter name or MAC, "SCSI 0:1", a disk path) name `d`? */
function deviceMatcher(vm: VmConfig): (ref: string, d: BootDevice) => boolean {
  return (ref, d) => {
    if (d.kind === "nic") {
      const nic = vm.networkAdapters[d.index];
      return nic !== undefined && (nic.name.toLowerCase() === ref.toLowerCase() || nic.macAddress === ref.toUpperCase().replace(/-/g, ":"));
    }
    const slot = parseSlotRef(ref);
    if (slot) return slotRef(slot) === d.ref;
    const disk = vm.hardDisks.find((x) => slotRef(x) === d.ref);
    return disk !== undefined && resolve(disk.path) === resolve(ref);
  };
}

function deviceView(vm: VmConfig, d: BootDevice | null): FirmwareDeviceView | null {
  if (d === null) return null;
  if (d.kind === "nic") return { type: "NetworkAdapter", ref: d.ref, macAddress: vm.networkAdapters[d.index]?.macAddress ?? d.mac.toUpperCase() };
  if (d.deviceKind === "dvd") return { type: "DvdDrive", ref: d.ref, path: vm.dvdDrives.find((x) => slotRef(x) === d.ref)?.path ?? null };
  return { type: "HardDiskDrive", ref: d.ref, path: vm.hardDisks.find((x) => slotRef(x) === d.ref)?.path ?? null };
}

function describeOp(op: PendingOp): string {
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

/** Renders the Get-VMFirmware view from a parsed store (also what the benchmark times). */
export function renderFirmwareView(
  vm: VmConfig, state: string, store: VarStore, file: string, pending: FirmwareView["pending"], busy: string | null, lastBootFailure: BootFailure | null,
): FirmwareView {
  const entries = bootEntriesView(store, firmwareLayout(vm));
  const nvram = { ...readSecureBootState(store), file };
  let next: number | null = null;
  try {
    next = readBootNext(store);
  } catch {
    next = null;
  }
  const sb = vm.firmware.secureBoot;
  const inForce = !sb
    ? nvram.pkEnrolled
      ? "Off: SecureBootEnable is cleared in the NVRAM (the keys stay enrolled) and the firmware runs without SMM; nothing is verified"
      : "Off: no keys are enrolled (setup mode); nothing is verified"
    : nvram.secureBoot
      ? `On (${vm.firmware.secureBootTemplate}): images must be signed by ${nvram.db.join(" or ") || "(empty db)"}`
      : nvram.setupMode
        ? "Setup mode: no PK enrolled, nothing is verified"
        : "Off: SecureBootEnable is cleared in the NVRAM";
  return {
    vm: vm.name,
    generation: 2,
    state,
    bootOrder: entries.map((e) => ({
      id: e.name,
      bootType: e.type,
      description: e.description,
      firmwarePath: e.firmwarePath,
      device: deviceView(vm, e.device),
      ...(e.network ? { protocol: e.network.protocol } : {}),
      active: e.active,
      inBootOrder: e.inBootOrder,
    })),
    bootNext: next === null ? null : bootOptionName(next),
    preferredNetworkBootProtocol: vm.firmware.preferredNetworkBootProtocol,
    secureBoot: sb ? "On" : "Off",
    secureBootTemplate: vm.firmware.secureBootTemplate,
    secureBootTemplateId: TEMPLATE_IDS[vm.firmware.secureBootTemplate],
    nvram,
    secureBootInForce: pending.some((p) => p.op === "secure-boot") ? `${inForce} (a change is pending)` : inForce,
    pauseAfterBootFailure: vm.firmware.pauseAfterBootFailure,
    lastBootFailure,
    networkBootPayload: vm.firmware.networkBootPayload ?? null,
    pending,
    ...(pending.length && busy ? { pendingReason: `${busy}; applied before the next start` } : {}),
  };
}

export class FirmwareManager {
  readonly bootFailures: BootFailureWatch;

  constructor(private readonly m: VmManager) {
    this.bootFailures = new BootFailureWatch(m.supervisor, {
      config: (name) => m.get(name),
      record: (name, f) => this.recordBootFailure(name, f),
    });
  }

  private nvramFile(vm: VmConfig): string {
    return this.m.supervisor.files(vm.name).nvram;
  }
  private pendingFile(vm: VmConfig): string {
    return join(this.m.store.vmDir(vm.name), "firmware-pending.json");
  }
  private failureFile(name: string): string {
    return join(this.m.store.vmDir(name), "boot-failure.json");
  }

  private async readPending(vm: VmConfig): Promise<PendingOp[]> {
    let text: string;
    try {
      text = await readFile(this.pendingFile(vm), "utf8");
    } catch {
      return [];
    }
    const r = PendingFile.safeParse(JSON.parse(text));
    if (!r.success) throw new VmhostError("damaged", `${this.pendingFile(vm)} is damaged: ${r.error.issues[0]?.message ?? "invalid"}`, 500);
    return r.data.ops;
  }

  private async addPending(vm: VmConfig, op: PendingOp): Promise<void> {
    const ops = await this.readPending(vm);
    // One device re-sync is enough; it reads the configuration when it runs.
    if (op.op === "devices" && ops.some((o) => o.op === "devices")) return;
    ops.push(op);
    await writeFileAtomic(this.pendingFile(vm), JSON.stringify({ ops }, null, 2) + "\n");
  }

  /** Why the store cannot be written now, or null when it can. */
  private async busyReason(vm: VmConfig): Promise<string | null> {
    if (this.m.supervisor.isRunning(vm.id)) return `VM "${vm.name}" is ${this.m.supervisor.stateOf(vm) ?? "running"} and QEMU has its NVRAM open`;
    if (await pathExists(this.m.supervisor.files(vm.name).savedState)) return `VM "${vm.name}" is Saved: restoring its state writes the firmware's flash back`;
    return null;
  }

  private async keyStore(): Promise<VarStore> {
    return readVarStoreFile((await hostPaths()).ovmf.secure4m.vars);
  }

  /** A new Gen2 VM's NVRAM: Debian's empty store, the template's keys when Secure Boot is on, and its devices' entries. */
  async createNvram(vm: VmConfig): Promise<void> {
    const dir = this.m.store.vmDir(vm.name);
    await mkdir(dir, { recursive: true });
    const file = join(dir, "nvram.fd");
    await copyFile((await hostPaths()).ovmf.plain4m.vars, file);
    const store = await readVarStoreFile(file);
    if (vm.firmware.secureBoot) applySecureBootTemplate(store, await this.keyStore(), vm.firmware.secureBootTemplate, true);
    syncDeviceEntries(store, firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol);
    await writeVarStoreFileAtomic(file, store);
  }

  private async applyOps(vm: VmConfig, store: VarStore, ops: PendingOp[], messages: string[]): Promise<void> {
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
      const r = setBootOrder(store, layout, ids, { prune: op.prune, pruneFiles: op.pruneFiles });
      messages.push(`boot order ${r.order.map(bootOptionName).join(",")}`);
      if (r.movedToEnd.length) {
        messages.push(`left out and moved to the end (Hyper-V would delete them; --prune does): ${r.movedToEnd.map(bootOptionName).join(", ")}`);
      }
      for (const d of r.deleted) messages.push(`deleted ${bootOptionName(d.id)} "${d.description}" (${d.type})`);
      if (r.deleted.some((d) => d.type === "Drive" || d.type === "Network")) {
        messages.push("note: OVMF re-creates the entries of attached devices at the end of the order when it next boots");
      }
      if (r.keptFiles.length) {
        messages.push(`kept File entries (made by an OS; add --prune-files to delete them too): ${r.keptFiles.map(bootOptionName).join(", ")}`);
      }
    }
  }

  /** Applies pending changes and syncs the device entries; called under the VM's lock right before QEMU starts. */
  async beforeStart(vm: VmConfig): Promise<void> {
    if (vm.generation !== 2) return;
    const file = this.nvramFile(vm);
    if (await pathExists(this.m.supervisor.files(vm.name).savedState)) return; // the restore brings its own flash
    if (!(await pathExists(file))) await this.createNvram(vm);
    const ops = await this.readPending(vm);
    const store = await readVarStoreFile(file);
    const before = store.toBuffer().slice();
    const messages: string[] = [];
    try {
      await this.applyOps(vm, store, ops, messages);
    } catch (err) {
      // A stale pending change (its entry is gone) must not keep the VM from starting.
      await this.m.supervisor.event(vm.name, "firmware-pending-failed", `pending firmware change not applied: ${(err as Error).message}`);
      const fresh = await readVarStoreFile(file);
      syncDeviceEntries(fresh, firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol);
      await writeVarStoreFileAtomic(file, fresh);
      await rm(this.pendingFile(vm), { force: true });
      return;
    }
    const after = store.toBuffer();
    if (after.length !== before.length || after.some((b, i) => b !== before[i])) await writeVarStoreFileAtomic(file, store);
    if (ops.length) {
      await rm(this.pendingFile(vm), { force: true });
      await this.m.supervisor.event(vm.name, "firmware-pending-applied", messages.join("; ") || "pending firmware changes applied");
    }
  }

  /** After any configuration change: the device entries follow the devices (now, or pending). */
  async configChanged(vm: VmConfig): Promise<void> {
    if (vm.generation !== 2) return;
    if (await this.busyReason(vm)) {
      // Only a change of devices needs a re-sync: try it on a copy of what the store holds now.
      const probe = await readVarStoreFile(this.nvramFile(vm)).catch(() => undefined);
      if (probe) {
        const r = syncDeviceEntries(probe, firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol);
        if (!r.added.length && !r.removed.length && !r.rewritten.length) return;
      }
      await this.addPending(vm, { op: "devices", reason: "changed devices", at: new Date().toISOString() });
      return;
    }
    const file = this.nvramFile(vm);
    if (!(await pathExists(file))) return;
    const store = await readVarStoreFile(file);
    const r = syncDeviceEntries(store, firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol);
    if (r.added.length || r.removed.length || r.rewritten.length) {
      await writeVarStoreFileAtomic(file, store);
      const what = [
        ...r.added.map((a) => `added ${bootOptionName(a.id)} for ${a.ref} at the end`),
        ...r.removed.map((x) => `removed ${bootOptionName(x.id)} "${x.description}"`),
        ...r.rewritten.map((w) => `rewrote ${bootOptionName(w.id)} as "${w.to}"`),
      ];
      await this.m.supervisor.event(vm.name, "boot-entries", `boot entries follow the devices: ${what.join("; ")}`);
    }
  }

  async view(name: string): Promise<FirmwareView> {
    const vm = await this.m.get(name);
    const rt = await this.m.supervisor.view(vm);
    const pending = (await this.readPending(vm)).map((o) => ({ op: o.op, detail: describeOp(o), at: o.at }));
    if (vm.generation === 1) return { vm: vm.name, generation: 1, state: rt.state, startupOrder: vm.firmware.startupOrder, pending };
    const file = this.nvramFile(vm);
    let store: VarStore | undefined;
    // While QEMU runs it may be writing the flash file: a torn read is retried before it is reported.
    for (let attempt = 0; store === undefined; attempt++) {
      try {
        store = await readVarStoreFile(file);
      } catch (err) {
        if (attempt < 2 && this.m.supervisor.isRunning(vm.id)) await new Promise((r) => setTimeout(r, 50));
        else throw new VmhostError("nvram-damaged", `the NVRAM of VM "${vm.name}" cannot be read: ${(err as Error).message}`, 500);
      }
    }
    // Show what the firmware will see: pending device entries included, on a copy.
    if (pending.some((p) => p.op === "devices") || !(await this.busyReason(vm))) {
      syncDeviceEntries(store, firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol);
    }
    return renderFirmwareView(vm, rt.state, store, file, pending, await this.busyReason(vm), await this.lastFailure(vm.name));
  }

  async set(name: string, req: FirmwareSetRequest): Promise<FirmwareSetResult> {
    const current = await this.m.get(name);
    const messages: string[] = [];
    let pendingNow = false;
    await this.m.supervisor.withLock(current.id, async () => {
      const vm = structuredClone(await this.m.get(name));
      const gen2Only = ["firstBootDevice", "bootOrder", "preferredNetworkBootProtocol", "pauseAfterBootFailure", "secureBoot", "secureBootTemplate", "networkBootPayload"] as const;
      if (vm.generation === 1) {
        const bad = gen2Only.filter((k) => req[k] !== undefined);
        if (bad.length) {
          throw new VmhostError("rule:generation-1-bios", `${bad.join(", ")}: generation 1 VMs have a BIOS, not UEFI; they have a startup order (--startup-order)`);
        }
      } else if (req.startupOrder) {
        throw new VmhostError("rule:generation-2-uefi", "--startup-order is the generation 1 BIOS startup order; generation 2 VMs use --boot-order or --first-boot-device");
      }
      if (req.firstBootDevice && req.bootOrder) throw new VmhostError("bad-request", "give --first-boot-device or --boot-order, not both");
      if ((req.prune || req.pruneFiles) && !req.bootOrder) throw new VmhostError("bad-request", "--prune and --prune-files go with --boot-order");

      // Settings kept in the configuration.
      const fw = vm.firmware;
      const ops: PendingOp[] = [];
      const at = new Date().toISOString();
      if (req.startupOrder) {
        if (new Set(req.startupOrder).size !== req.startupOrder.length || req.startupOrder.length !== 4) {
          throw new VmhostError("bad-request", "--startup-order lists CD, IDE, LegacyNetworkAdapter and Floppy, each once");
        }
        fw.startupOrder = req.startupOrder;
        messages.push(`startup order ${req.startupOrder.join(",")} (SeaBIOS boot order from the next start)`);
      }
      if (req.pauseAfterBootFailure !== undefined) {
        fw.pauseAfterBootFailure = req.pauseAfterBootFailure;
        messages.push(`PauseAfterBootFailure ${req.pauseAfterBootFailure ? "on" : "off"} (in effect now)`);
      }
      if (req.networkBootPayload !== undefined) {
        if (req.networkBootPayload === null) delete fw.networkBootPayload;
        else {
          const dir = resolve(req.networkBootPayload.dir);
          if (!(await pathExists(join(dir, req.networkBootPayload.file)))) {
            throw new VmhostError("missing-file", `boot file ${join(dir, req.networkBootPayload.file)} does not exist`, 404);
          }
          fw.networkBootPayload = { dir, file: req.networkBootPayload.file };
        }
        messages.push(
          req.networkBootPayload === null
            ? "the Default Switch serves no boot payload (from the next start)"
            : `the Default Switch serves ${fw.networkBootPayload!.dir} over TFTP with boot file ${fw.networkBootPayload!.file} (from the next start)`,
        );
      }
      if (req.preferredNetworkBootProtocol && req.preferredNetworkBootProtocol !== fw.preferredNetworkBootProtocol) {
        fw.preferredNetworkBootProtocol = req.preferredNetworkBootProtocol;
        messages.push(`network boot over ${req.preferredNetworkBootProtocol} only, from the next start; each adapter's entries are rewritten in place`);
        if (req.preferredNetworkBootProtocol === "IPv6") {
          messages.push("note: PXE over IPv6 needs a stateful DHCPv6 server; the Default Switch (user-mode networking) has none");
        }
      }
      if (req.secureBoot !== undefined || req.secureBootTemplate !== undefined) {
        const enabled = req.secureBoot ?? fw.secureBoot;
        const template = req.secureBootTemplate ?? fw.secureBootTemplate;
        if (enabled !== fw.secureBoot || template !== fw.secureBootTemplate) {
          fw.secureBoot = enabled;
          fw.secureBootTemplate = template;
          ops.push({ op: "secure-boot", enabled, template, at });
          if (template === "OpenSourceShieldedVM" && enabled) {
            messages.push("note: OpenSourceShieldedVM trusts the Microsoft UEFI CA here (shim-signed loaders); vmhost has no VM shielding");
          }
        }
      }
      if (req.firstBootDevice) ops.push({ op: "first-boot-device", target: req.firstBootDevice, at });
      if (req.bootOrder) ops.push({ op: "boot-order", targets: req.bootOrder, prune: req.prune, pruneFiles: req.pruneFiles, at });

      validateVm(vm, this.m.hostCapacity(), await this.m.store.configs());
      const busy = vm.generation === 2 ? await this.busyReason(vm) : null;
      const protocolChanged = req.preferredNetworkBootProtocol !== undefined && current.firmware.preferredNetworkBootProtocol !== fw.preferredNetworkBootProtocol;
      if (vm.generation === 2 && (ops.length || protocolChanged)) {
        if (busy) {
          // Check now what can be checked, so a typo is refused rather than kept.
          const probe = await readVarStoreFile(this.nvramFile(vm));
          const layout = firmwareLayout(vm);
          syncDeviceEntries(probe, layout, fw.preferredNetworkBootProtocol);
          for (const op of ops) {
            try {
              if (op.op === "first-boot-device") resolveBootTarget(probe, layout, parseBootTarget(op.target), deviceMatcher(vm));
              if (op.op === "boot-order") for (const t of op.targets) resolveBootTarget(probe, layout, parseBootTarget(t), deviceMatcher(vm));
            } catch (err) {
              throw toVmhost(err);
            }
          }
          for (const op of ops) await this.addPending(vm, op);
          if (protocolChanged) await this.addPending(vm, { op: "devices", reason: "the network boot protocol", at });
          pendingNow = true;
          messages.push(`pending: ${busy}; ${ops.map(describeOp).join(", ") || "the network boot entries"} will be applied before the next start`);
        } else {
          const file = this.nvramFile(vm);
          const store = await readVarStoreFile(file);
          try {
            await this.applyOps(vm, store, [...(await this.readPending(vm)), ...ops], messages);
          } catch (err) {
            throw toVmhost(err);
          }
          await writeVarStoreFileAtomic(file, store);
          await rm(this.pendingFile(vm), { force: true });
        }
      }
      await this.m.store.save(vm);
      await this.m.supervisor.event(vm.name, "firmware", messages.join("; ") || "firmware settings unchanged");
    });
    return { view: await this.view(name), messages, pending: pendingNow };
  }

  private async recordBootFailure(name: string, f: BootFailure): Promise<void> {
    await writeFileAtomic(this.failureFile(name), JSON.stringify(f, null, 2) + "\n");
    await this.m.supervisor.event(
      name,
      "boot-failure",
      `firmware failed to ${f.phase} ${f.entry} "${f.description}": ${f.reason}${f.paused ? "; VM paused (PauseAfterBootFailure): resume to go on to the next entry" : ""}`,
      { ...f },
    );
  }

  private async lastFailure(name: string): Promise<BootFailure | null> {
    try {
      return JSON.parse(await readFile(this.failureFile(name), "utf8")) as BootFailure;
    } catch {
      return null;
    }
  }
}

