import { resolve } from "node:path";
import { VmhostError } from "../util/errors.js";
import { LIMITS } from "./limits.js";
import { nameKey, validateVmName } from "./names.js";
import { ADAPTER_PCI_SLOTS } from "./limits.js";
import type { ControllerType, VmConfig } from "./schema.js";

/** What the rules need to know about the host; passed in so the model stays free of probing. */
export interface HostCapacity {
  logicalProcessors: number;
  memoryMiB: number;
}

/** A rule broken: `rule` names it, the message says what to do. */
export class RuleError extends VmhostError {
  constructor(
    readonly rule: string,
    message: string,
  ) {
    super(`rule:${rule}`, message, 422);
  }
}

interface Located {
  controllerType: ControllerType;
  controllerNumber: number;
  controllerLocation: number;
}

function slotName(d: Located): string {
  return `${d.controllerType} ${d.controllerNumber}:${d.controllerLocation}`;
}

export function checkSlot(generation: 1 | 2, d: Located, what: string): void {
  if (d.controllerType === "IDE") {
    if (generation === 2) {
      throw new RuleError(
        "generation-2-no-ide",
        `Generation 2 virtual machines have no IDE controller: attach the ${what} to a SCSI controller`,
      );
    }
    if (d.controllerNumber >= LIMITS.ideControllers || d.controllerLocation >= LIMITS.ideLocations) {
      throw new RuleError(
        "ide-limit",
        `IDE ${d.controllerNumber}:${d.controllerLocation} does not exist: there are ${LIMITS.ideControllers} IDE controllers with locations 0-${LIMITS.ideLocations - 1}`,
      );
    }
  } else {
    if (d.controllerNumber >= LIMITS.scsiControllers || d.controllerLocation >= LIMITS.scsiLocations) {
      throw new RuleError(
        "scsi-limit",
        `SCSI ${d.controllerNumber}:${d.controllerLocation} does not exist: there are ${LIMITS.scsiControllers} SCSI controllers with locations 0-${LIMITS.scsiLocations - 1}`,
      );
    }
  }
}

/**
 * Every rule a VM configuration must satisfy. `others` are the other VMs on the host,
 * for the rule that one disk image belongs to one VM.
 */
export function validateVm(vm: VmConfig, host: HostCapacity, others: readonly VmConfig[] = []): void {
  validateVmName(vm.name);
  const key = nameKey(vm.name);
  for (const other of others) {
    if (other.id === vm.id) continue;
    if (nameKey(other.name) === key) {
      throw new RuleError("vm-name-in-use", `a VM named "${other.name}" already exists (names are unique ignoring case)`);
    }
  }
  if (vm.processorCount > host.logicalProcessors) {
    throw new RuleError(
      "processor-count",
      `${vm.processorCount} virtual processors is more than this host's ${host.logicalProcessors} logical processors`,
    );
  }
  if (vm.memoryMiB < LIMITS.minMemoryMiB) {
    throw new RuleError("memory-minimum", `memory ${vm.memoryMiB} MiB is below the minimum of ${LIMITS.minMemoryMiB} MiB`);
  }
  if (vm.memoryMiB % LIMITS.memoryGranularityMiB !== 0) {
    throw new RuleError("memory-granularity", `memory must be a multiple of ${LIMITS.memoryGranularityMiB} MiB (got ${vm.memoryMiB} MiB)`);
  }
  if (vm.memoryMiB > host.memoryMiB) {
    throw new RuleError("memory-host", `memory ${vm.memoryMiB} MiB is more than this host's ${host.memoryMiB} MiB`);
  }

  const used = new Map<string, string>();
  const claim = (d: Located, what: string) => {
    checkSlot(vm.generation, d, what);
    const key = slotName(d);
    const prev = used.get(key);
    if (prev) throw new RuleError("slot-in-use", `${key} is already used by ${prev}`);
    used.set(key, what);
  };
  for (const d of vm.hardDisks) claim(d, `hard disk ${d.path}`);
  for (const d of vm.dvdDrives) {
    if (vm.generation === 1 && d.controllerType !== "IDE") {
      throw new RuleError("generation-1-dvd-on-ide", "Generation 1 virtual machines attach DVD drives to IDE controllers only");
    }
    claim(d, `DVD drive`);
  }

  const paths = new Set<string>();
  for (const d of vm.hardDisks) {
    const p = resolve(d.path);
    if (paths.has(p)) throw new RuleError("disk-in-use", `disk ${p} is attached twice`);
    paths.add(p);
  }
  for (const other of others) {
    if (other.id === vm.id) continue;
    for (const d of other.hardDisks) {
      if (paths.has(resolve(d.path))) {
        throw new RuleError("disk-in-use", `disk ${resolve(d.path)} already belongs to VM "${other.name}"`);
      }
    }
  }

  if (vm.floppy) refuseFloppy(vm.generation);

  const legacy = vm.networkAdapters.filter((n) => n.type === "Legacy").length;
  const synthetic = vm.networkAdapters.length - legacy;
  if (legacy > 0) refuseLegacyAdapter(vm.generation);
  if (legacy > LIMITS.legacyAdapters) {
    throw new RuleError("legacy-adapter-limit", `at most ${LIMITS.legacyAdapters} legacy network adapters per VM`);
  }
  if (synthetic > LIMITS.syntheticAdapters) {
    throw new RuleError("synthetic-adapter-limit", `at most ${LIMITS.syntheticAdapters} synthetic network adapters per VM`);
  }
  const nicNames = new Set<string>();
  const macs = new Set<string>();
  const slots = new Set<number>();
  for (const n of vm.networkAdapters) {
    if (nicNames.has(n.name.toLowerCase())) throw new RuleError("adapter-name-in-use", `network adapter name "${n.name}" is used twice`);
    nicNames.add(n.name.toLowerCase());
    if (n.pciSlot < ADAPTER_PCI_SLOTS.first || n.pciSlot > ADAPTER_PCI_SLOTS.last) {
      throw new RuleError("adapter-slot", `adapter "${n.name}" is at PCI slot ${n.pciSlot}; adapters take slots ${ADAPTER_PCI_SLOTS.first}-${ADAPTER_PCI_SLOTS.last}`);
    }
    if (slots.has(n.pciSlot)) throw new RuleError("adapter-slot", `PCI slot ${n.pciSlot} holds two network adapters`);
    slots.add(n.pciSlot);
    if (macs.has(n.macAddress)) throw new RuleError("mac-in-use", `MAC address ${n.macAddress} is used twice`);
    macs.add(n.macAddress);
  }
  // As on Hyper-V: two adapters with one MAC address on one switch would steal each other's frames.
  for (const n of vm.networkAdapters) {
    for (const other of others) {
      if (other.id === vm.id) continue;
      const clash = other.networkAdapters.find((o) => o.macAddress === n.macAddress && o.switchName.toLowerCase() === n.switchName.toLowerCase());
      if (clash) {
        throw new RuleError(
          "mac-in-use-on-switch",
          `MAC address ${n.macAddress} is already used on switch "${n.switchName}" by adapter "${clash.name}" of VM "${other.name}"`,
        );
      }
    }
  }
}

/** Generation 2 has no floppy drive (Hyper-V rule); a request for one is refused by name. */
export function refuseFloppy(generation: 1 | 2): void {
  if (generation === 2) {
    throw new RuleError("generation-2-no-floppy", "Generation 2 virtual machines have no floppy drive");
  }
}

/** Firmware settings that exist only on one generation, as Set-VMFirmware / Set-VMBios know them. */
export const GEN2_FIRMWARE_SETTINGS = [
  "firstBootDevice",
  "bootOrder",
  "preferredNetworkBootProtocol",
  "pauseAfterBootFailure",
  "secureBoot",
  "secureBootTemplate",
  "networkBootPayload",
] as const;

/**
 * Refuses firmware settings the VM's generation does not have: Gen1 has a BIOS with a startup
 * order (Set-VMBios); Gen2 has UEFI with boot entries (Set-VMFirmware). `given` names the
 * settings asked for.
 */
export function checkFirmwareSettings(generation: 1 | 2, given: readonly string[]): void {
  if (generation === 1) {
    const bad = given.filter((k) => (GEN2_FIRMWARE_SETTINGS as readonly string[]).includes(k));
    if (bad.length) {
      throw new RuleError("generation-1-bios", `${bad.join(", ")}: generation 1 VMs have a BIOS, not UEFI; they have a startup order (--startup-order)`);
    }
  } else if (given.includes("startupOrder")) {
    throw new RuleError("generation-2-uefi", "--startup-order is the generation 1 BIOS startup order; generation 2 VMs use --boot-order or --first-boot-device");
  }
}

/** Hyper-V's BIOS startup order names each device class once: CD, IDE, LegacyNetworkAdapter, Floppy. */
export function checkStartupOrder(order: readonly string[]): void {
  if (new Set(order).size !== order.length || order.length !== 4) {
    throw new RuleError("startup-order", "--startup-order lists CD, IDE, LegacyNetworkAdapter and Floppy, each once");
  }
}

/** Hyper-V's limit of checkpoints per VM ("Plan for Hyper-V scalability in Windows Server"). */
export const MAX_CHECKPOINTS = 50;

/** Refuses a checkpoint beyond Hyper-V's limit, or when the VM's checkpoint type is Disabled. */
export function checkNewCheckpoint(vm: VmConfig, existing: number): void {
  if (vm.checkpointType === "Disabled") {
    throw new RuleError("checkpoints-disabled", `checkpoints are disabled for VM "${vm.name}" (its checkpoint type is Disabled): set --checkpoint-type Production or Standard first`);
  }
  if (existing >= MAX_CHECKPOINTS) {
    throw new RuleError("checkpoint-limit", `VM "${vm.name}" has ${existing} checkpoints; Hyper-V allows at most ${MAX_CHECKPOINTS}: remove one first`);
  }
}

/** Gen2 has no legacy adapter (Hyper-V); the rule, for requests checked before a configuration exists. */
export function refuseLegacyAdapter(generation: 1 | 2): void {
  if (generation === 2) {
    throw new RuleError(
      "generation-2-no-legacy-adapter",
      "Generation 2 virtual machines have no legacy network adapter: use a synthetic adapter (it can network-boot over IPv4 and IPv6)",
    );
  }
}
