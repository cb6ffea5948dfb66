import { ADAPTER_PCI_SLOTS } from "./limits.js";
import { CONFIG_FORMAT_VERSION } from "./schema.js";

/**
 * Brings a configuration written by an older vmhost to the current format, before it is
 * validated; the result is written back at the VM's next change. Pure: returns a new object.
 *
 * - 1 -> 2: each network adapter gets the PCI slot it had (format 1 placed adapters by their
 *   position: slot 8 + index), so an upgraded VM's guest sees no change.
 */
export function upgradeConfig(raw: unknown): unknown {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return raw;
  const vm = { ...(raw as Record<string, unknown>) };
  if (vm["formatVersion"] === 1) {
    const nics = Array.isArray(vm["networkAdapters"]) ? (vm["networkAdapters"] as unknown[]) : [];
    vm["networkAdapters"] = nics.map((n, i) =>
      typeof n === "object" && n !== null && !("pciSlot" in n) ? { ...(n as object), pciSlot: ADAPTER_PCI_SLOTS.first + i } : n,
    );
    vm["formatVersion"] = CONFIG_FORMAT_VERSION;
  }
  return vm;
}
