import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import {
  VarStoreError,
  bootOptionName,
  describeBootEntries,
  planDeviceEntries,
  readBootNext,
  readSecureBootState,
  readVarStoreFile,
  type BootDevice,
  type DeviceEntryPlan,
  type SecureBootNvramState,
  type VarStore,
} from "../firmware/index.js";
import { checkFirmwareSettings, checkStartupOrder, slotRef, type ConfigStore, type VmConfig } from "../model/index.js";
import { BootFailureWatch, type BootFailure } from "../supervisor/boot-failure.js";
import type { Supervisor, VmRef } from "../supervisor/supervisor.js";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";
import { pathExists } from "../util/fs.js";
import type { FirmwareOp, VmChanges } from "./changes.js";
import { describeOp, firmwareLayout, firmwareToVmhost, readPending, type NvramStep } from "./nvram.js";

export { firmwareLayout } from "./nvram.js";

/**
 * vmhostd's side of Get-VMFirmware / Set-VMFirmware. The policy is src/firmware; the NVRAM side
 * of a change (apply now, or keep pending while QEMU owns the store) is the change
 * transaction's NVRAM step (nvram.ts). Settings that are not in the NVRAM (Secure Boot on/off
 * and template choice, network boot protocol, PauseAfterBootFailure) are in the configuration.
 */

/** Hyper-V's SecureBootTemplateId values (Get-VMFirmware). */
const TEMPLATE_IDS: Record<VmConfig["firmware"]["secureBootTemplate"], string> = {
  MicrosoftWindows: "1734c6e8-3154-4dda-ba5f-a874cc483422",
  MicrosoftUEFICertificateAuthority: "272e7447-90a4-4563-a4b9-8e4ab00526ce",
  OpenSourceShieldedVM: "4292ae2b-ee2c-42b5-a969-dd8f8689f6f3",
};

/** Set-VMFirmware's request: its one home is the API contract (src/api/requests.ts). */
export { FirmwareSetRequest } from "../api/requests.js";
import type { FirmwareSetRequest } from "../api/requests.js";

export interface FirmwareDeviceView {
  type: "HardDiskDrive" | "DvdDrive" | "NetworkAdapter";
  ref: string;
  path?: string | null;
  macAddress?: string;
}

/**
 * One row of Get-VMFirmware's BootOrder, as the NVRAM holds it: every BootOrder position
 * (numbers without a Boot#### variable and repeated numbers included, marked), then Boot####
 * variables outside BootOrder, then what vmhost will add before the next start (marked pending).
 */
export interface FirmwareEntryView {
  id: string;
  /** stored | missing (BootOrder names no Boot####) | duplicate | pending (vmhost adds it before the next start). */
  status: "stored" | "missing" | "duplicate" | "pending";
  /** Index in the stored BootOrder; null outside it (or pending). */
  position: number | null;
  bootType: string;
  description: string;
  firmwarePath: string;
  device: FirmwareDeviceView | null;
  protocol?: string | null;
  active: boolean;
  hidden: boolean;
  inBootOrder: boolean;
  /** Optional data: its length in bytes and hex ("" when none). */
  optionalDataLength: number;
  optionalDataHex: string;
  /** What vmhost will do to it before the next start, when anything. */
  pendingAction: { action: "add" | "remove" | "rewrite"; description: string } | null;
  /** Why deleting it would not stick (OVMF makes it again at each boot), when so. */
  recreatedAtBoot: string | null;
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
  /** BootOrder once the pending device entries are made (when they change it). */
  pendingBootOrder?: string[] | null;
}

export interface FirmwareSetResult {
  view: FirmwareView;
  /** What was done (or kept pending), line by line, for the CLI to print. */
  messages: string[];
  pending: boolean;
}

function deviceView(vm: VmConfig, d: BootDevice | null): FirmwareDeviceView | null {
  if (d === null) return null;
  if (d.kind === "nic") return { type: "NetworkAdapter", ref: d.ref, macAddress: vm.networkAdapters[d.index]?.macAddress ?? d.mac.toUpperCase() };
  if (d.deviceKind === "dvd") return { type: "DvdDrive", ref: d.ref, path: vm.dvdDrives.find((x) => slotRef(x) === d.ref)?.path ?? null };
  return { type: "HardDiskDrive", ref: d.ref, path: vm.hardDisks.find((x) => slotRef(x) === d.ref)?.path ?? null };
}

/**
 * Renders the Get-VMFirmware view from a parsed store (also what the benchmark times): what the
 * store holds, and, given `plan`, what vmhost will add, remove or rewrite before the next start,
 * marked as pending (never shown as if stored).
 */
export function renderFirmwareView(
  vm: VmConfig, state: string, store: VarStore, file: string, pending: FirmwareView["pending"], busy: string | null, lastBootFailure: BootFailure | null,
  plan?: DeviceEntryPlan,
): FirmwareView {
  const described = describeBootEntries(store, firmwareLayout(vm), { protocol: vm.firmware.preferredNetworkBootProtocol, ...(plan && !plan.empty ? { plan } : {}) });
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
    bootOrder: described.rows.map((r) => {
      const e = r.entry;
      return {
        id: r.name,
        status: r.status,
        position: r.position,
        bootType: e?.type ?? "Missing",
        description: e?.description ?? "",
        firmwarePath: e?.firmwarePath ?? "",
        device: deviceView(vm, e?.device ?? null),
        ...(e?.network ? { protocol: e.network.protocol } : {}),
        active: e?.active ?? false,
        hidden: e?.hidden ?? false,
        inBootOrder: r.position !== null,
        optionalDataLength: e?.optionalDataLength ?? 0,
        optionalDataHex: e?.optionalDataHex ?? "",
        pendingAction: r.pending,
        recreatedAtBoot: r.recreatedAtBoot,
      };
    }),
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
    ...(described.pendingBootOrder ? { pendingBootOrder: described.pendingBootOrder.map(bootOptionName) } : {}),
  };
}

export class FirmwareManager {
  readonly bootFailures: BootFailureWatch;
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly nvram: NvramStep;

  constructor(deps: { store: ConfigStore; supervisor: Supervisor; changes: VmChanges; nvram: NvramStep }) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.nvram = deps.nvram;
    this.bootFailures = new BootFailureWatch(this.supervisor, {
      config: (id) => this.store.get(id),
      record: (vm, f) => this.recordBootFailure(vm, f),
    });
  }

  /** Why the store cannot be written now, or null when it can. */
  private async busyReason(vm: VmConfig): Promise<string | null> {
    if (this.supervisor.isRunning(vm.id)) return `VM "${vm.name}" is ${this.supervisor.stateOf(vm) ?? "running"} and QEMU has its NVRAM open`;
    if (await pathExists(this.store.home(vm.id).savedState)) return `VM "${vm.name}" is Saved: restoring its state writes the firmware's flash back`;
    return null;
  }

  async view(ref: string): Promise<FirmwareView> {
    const vm = await this.store.resolve(ref);
    const home = this.store.home(vm.id);
    const rt = await this.supervisor.view(vm);
    const pending = (await readPending(home)).map((o) => ({ op: o.op, detail: describeOp(o), at: o.at }));
    if (vm.generation === 1) return { vm: vm.name, generation: 1, state: rt.state, startupOrder: vm.firmware.startupOrder, pending };
    let store: VarStore | undefined;
    // While QEMU runs it may be writing the flash file: a torn read is retried before it is reported.
    for (let attempt = 0; store === undefined; attempt++) {
      try {
        store = await readVarStoreFile(home.nvram);
      } catch (err) {
        if (attempt < 2 && this.supervisor.isRunning(vm.id)) await new Promise((r) => setTimeout(r, 50));
        else if (err instanceof VarStoreError) {
          throw new VmhostError(`nvram-${err.code.toLowerCase().replace(/_/g, "-")}`, `the NVRAM of VM "${vm.name}" is damaged: ${err.message}; it was left as it is`, 500);
        } else throw err;
      }
    }
    // What the store holds; what vmhost will write before the next start is a plan, shown as pending.
    const busy = await this.busyReason(vm);
    const plan = pending.some((p) => p.op === "devices") || !busy ? planDeviceEntries(store, firmwareLayout(vm), vm.firmware.preferredNetworkBootProtocol) : undefined;
    return renderFirmwareView(vm, rt.state, store, home.nvram, pending, busy, await this.lastFailure(vm), plan);
  }

  /** Set-VMFirmware / Set-VMBios: one change transaction (configuration and NVRAM, or pending, together). */
  async set(ref: string, req: FirmwareSetRequest): Promise<FirmwareSetResult> {
    const given = Object.entries(req)
      .filter(([k, v]) => v !== undefined && k !== "prune" && k !== "pruneFiles")
      .map(([k]) => k);
    let pendingNow = false;
    const { vm, messages } = await this.changes.change(ref, async (ctx) => {
      const vm = ctx.vm;
      checkFirmwareSettings(vm.generation, given);
      if (req.firstBootDevice && req.bootOrder) throw new VmhostError("bad-request", "give --first-boot-device or --boot-order, not both");
      if ((req.prune || req.pruneFiles) && !req.bootOrder) throw new VmhostError("bad-request", "--prune and --prune-files go with --boot-order");
      const fw = vm.firmware;
      const at = new Date().toISOString();
      const ops: FirmwareOp[] = [];
      if (req.startupOrder) {
        checkStartupOrder(req.startupOrder);
        fw.startupOrder = req.startupOrder;
        ctx.messages.push(`startup order ${req.startupOrder.join(",")} (SeaBIOS boot order from the next start)`);
      }
      if (req.pauseAfterBootFailure !== undefined) {
        fw.pauseAfterBootFailure = req.pauseAfterBootFailure;
        ctx.messages.push(`PauseAfterBootFailure ${req.pauseAfterBootFailure ? "on" : "off"} (in effect now)`);
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
        ctx.messages.push(
          req.networkBootPayload === null
            ? "the Default Switch serves no boot payload (from the next start)"
            : `the Default Switch serves ${fw.networkBootPayload!.dir} over TFTP with boot file ${fw.networkBootPayload!.file} (from the next start)`,
        );
      }
      if (req.preferredNetworkBootProtocol && req.preferredNetworkBootProtocol !== fw.preferredNetworkBootProtocol) {
        fw.preferredNetworkBootProtocol = req.preferredNetworkBootProtocol;
        ctx.messages.push(`network boot over ${req.preferredNetworkBootProtocol} only, from the next start; each adapter's entries are rewritten in place`);
        if (req.preferredNetworkBootProtocol === "IPv6") {
          ctx.messages.push("note: PXE over IPv6 needs a stateful DHCPv6 server; the Default Switch (user-mode networking) has none");
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
            ctx.messages.push("note: OpenSourceShieldedVM trusts the Microsoft UEFI CA here (shim-signed loaders); vmhost has no VM shielding");
          }
        }
      }
      if (req.firstBootDevice) ops.push({ op: "first-boot-device", target: req.firstBootDevice, at });
      if (req.bootOrder) ops.push({ op: "boot-order", targets: req.bootOrder, prune: req.prune, pruneFiles: req.pruneFiles, at });
      ctx.firmwareOps.push(...ops);
      pendingNow = vm.generation === 2 && (ops.length > 0 || req.preferredNetworkBootProtocol !== undefined) && (await ctx.nvramBusy()) !== null;
    });
    await this.supervisor.event(vm, "firmware", messages.join("; ") || "firmware settings unchanged");
    return { view: await this.view(vm.id), messages, pending: pendingNow };
  }

  /**
   * A new NVRAM from the template (Debian's empty store, the Secure Boot template's keys when
   * Secure Boot is on) with the device entries: what the VM had when it was new. Boot entries an
   * OS made are gone, so this is explicit (`firmware reset`), never done silently. VM off only.
   */
  async reset(ref: string): Promise<FirmwareSetResult> {
    const { vm, messages } = await this.changes.change(ref, async (ctx) => {
      if (ctx.vm.generation !== 2) throw new VmhostError("rule:generation-1-bios", "generation 1 VMs have a BIOS and no NVRAM");
      if (ctx.state !== "Off") throw new VmhostError("invalid-state", `resetting the NVRAM needs VM "${ctx.vm.name}" Off, but it is ${ctx.state}`, 409);
      const store = await this.nvram.newStore(ctx.vm);
      try {
        await this.nvram.applyOps(ctx.vm, store, [], ctx.messages);
      } catch (err) {
        throw firmwareToVmhost(err);
      }
      await ctx.txn.write(ctx.home.nvram, store.toBuffer());
      await ctx.txn.remove(ctx.home.firmwarePending);
      ctx.messages.unshift(`new NVRAM from the template${ctx.vm.firmware.secureBoot ? ` with the ${ctx.vm.firmware.secureBootTemplate} keys` : ""}`);
      ctx.event("nvram-reset", "the NVRAM was made anew from the template");
    });
    return { view: await this.view(vm.id), messages, pending: false };
  }

  private async recordBootFailure(vm: VmRef, f: BootFailure): Promise<void> {
    await writeFileAtomic(this.store.home(vm.id).bootFailure, JSON.stringify(f, null, 2) + "\n", 0o600);
    await this.supervisor.event(
      vm,
      "boot-failure",
      `firmware failed to ${f.phase} ${f.entry} "${f.description}": ${f.reason}${f.paused ? "; VM paused (PauseAfterBootFailure): resume to go on to the next entry" : ""}`,
      { ...f },
    );
  }

  private async lastFailure(vm: VmConfig): Promise<BootFailure | null> {
    try {
      return JSON.parse(await readFile(this.store.home(vm.id).bootFailure, "utf8")) as BootFailure;
    } catch {
      return null;
    }
  }
}
