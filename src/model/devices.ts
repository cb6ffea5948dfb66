import { ADAPTER_PCI_SLOTS, LIMITS } from "./limits.js";
import { RuleError } from "./rules.js";
import type { ControllerType, VmConfig } from "./schema.js";

/** Where a drive sits: Hyper-V's controller type, controller number and location (LUN). */
export interface SlotRef {
  controllerType: ControllerType;
  controllerNumber: number;
  controllerLocation: number;
}

/** A drive's location as Hyper-V prints it: "SCSI 0:1", "IDE 0:0". */
export function slotRef(d: SlotRef): string {
  return `${d.controllerType} ${d.controllerNumber}:${d.controllerLocation}`;
}

/** Parses "SCSI 0:1" / "ide 1:0" (any case, optional space); undefined when it is not a location. */
export function parseSlotRef(text: string): SlotRef | undefined {
  const m = /^(IDE|SCSI)\s*(\d+):(\d+)$/i.exec(text.trim());
  if (!m) return undefined;
  return { controllerType: m[1]!.toUpperCase() as ControllerType, controllerNumber: Number(m[2]), controllerLocation: Number(m[3]) };
}

/** First free location on the given controller type, trying controllers in order. */
export function firstFreeSlot(vm: VmConfig, type: ControllerType): SlotRef {
  const taken = new Set([...vm.hardDisks, ...vm.dvdDrives].map(slotRef));
  const controllers = type === "IDE" ? LIMITS.ideControllers : LIMITS.scsiControllers;
  const locations = type === "IDE" ? LIMITS.ideLocations : LIMITS.scsiLocations;
  for (let c = 0; c < controllers; c++) {
    for (let l = 0; l < locations; l++) {
      const slot = { controllerType: type, controllerNumber: c, controllerLocation: l };
      if (!taken.has(slotRef(slot))) return slot;
    }
  }
  throw new RuleError(type === "IDE" ? "ide-limit" : "scsi-limit", `no free ${type} location left on this VM`);
}

/** The lowest adapter PCI slot no adapter of the VM holds (ADAPTER_PCI_SLOTS). */
export function firstFreeAdapterSlot(vm: Pick<VmConfig, "networkAdapters">): number {
  const taken = new Set(vm.networkAdapters.map((n) => n.pciSlot));
  for (let s = ADAPTER_PCI_SLOTS.first; s <= ADAPTER_PCI_SLOTS.last; s++) if (!taken.has(s)) return s;
  throw new RuleError("adapter-slots-exhausted", "this VM has no free PCI slot for another network adapter");
}

/** Finds an adapter by its name (any case) or its MAC address (any case, ':' or '-'). */
export function findAdapter<T extends { name: string; macAddress: string }>(adapters: readonly T[], ref: string): T | undefined {
  const mac = ref.toUpperCase().replace(/-/g, ":");
  return adapters.find((n) => n.name.toLowerCase() === ref.toLowerCase()) ?? adapters.find((n) => n.macAddress === mac);
}
