/**
 * Hyper-V's Get-VMFirmware / Set-VMFirmware over one OVMF variable store and the device
 * layout the engine assigned. Pure functions on a VarStore: no QEMU, no files, no VM config.
 *
 * Device entries. OVMF (no bootindex, so the NVRAM alone decides) appends an auto-created
 * option for each new device at the end of BootOrder and deletes the auto-created options of
 * devices that are gone (qemu-facts §4). `syncDeviceEntries` does the same thing before the
 * firmware runs, with the exact bytes OVMF would write, so that a device added to a VM that
 * has not booted yet already has its entry at the bottom (as on Hyper-V) and can be made the
 * first boot device; OVMF then finds the entry it would have made and leaves it alone.
 * What OVMF 2022.11 makes (BmEnumerateBootOptions, checked on its console and store):
 *   removable media first (DVD drives, with or without a disc), then fixed disks, each in
 *   controller then LUN order: "UEFI QEMU QEMU CD-ROM " / "UEFI QEMU QEMU HARDDISK " at
 *   PciRoot(0x0)/Pci(slot,0x0)/Scsi(0x0,lun); equal descriptions get " 2", " 3"...
 *   (BmMakeBootOptionDescriptionUnique). OVMF finds a controller's LUNs only from LUN 0 up
 *   to the first gap (measured: LUNs 0,1,2 are found; LUN 3 alone, or 5 and 9 after 0, are
 *   not), so only those get entries;
 *   then per adapter "UEFI PXEv4 (MAC:...)" .../MAC(mac,0x1)/IPv4(0.0.0.0,...) and
 *   "UEFI HTTPv4 (MAC:...)" .../IPv4(...)/Uri() (v6 likewise), all ACTIVE with the
 *   auto-created marker as optional data.
 * File entries (made by an OS or a user) are never touched here.
 */
import { BootError } from "./errors.js";
import { applyBootOrder, nextFreeBootNumber } from "./bootpolicy.js";
import {
  readBootConfiguration, type BootDevice, type BootEntry, type FirmwareDeviceLayout, type NetworkBootProtocol,
} from "./bootentries.js";
import {
  bootOptionName, deleteBootOption, listBootOptionIds, parseBootOptionName, readBootNext, readBootOptionBytes, readBootOrder,
  writeBootNext, writeBootOrder,
} from "./bootorder.js";
import { autoCreatedMarker, encodeLoadOption, LOAD_OPTION, makeLoadOption } from "./loadoption.js";
import { GUIDS } from "./guid.js";
import { ATTRS_NV_BS_RT } from "./variable.js";
import type { VarStore } from "./varstore.js";

export type PreferredNetworkBootProtocol = "IPv4" | "IPv6";

/** One option OVMF makes by itself for a device of the layout. */
export interface DeviceEntrySpec {
  readonly description: string;
  /** Device path text (edk2 form). */
  readonly path: string;
  readonly device: BootDevice;
  /** Network entries: PXE or HTTP boot. */
  readonly network: "PXE" | "HTTP" | null;
  /** The exact Boot#### body OVMF writes. */
  readonly bytes: Uint8Array;
}

const hex = (n: number): string => "0x" + n.toString(16).toUpperCase();

function macHex(mac: string): string {
  return mac.replace(/[:-]/g, "").toUpperCase();
}

function spec(description: string, path: string, device: BootDevice, network: "PXE" | "HTTP" | null): DeviceEntrySpec {
  const bytes = encodeLoadOption(makeLoadOption({ description, path, attributes: LOAD_OPTION.ACTIVE, optionalData: autoCreatedMarker() }));
  return { description, path, device, network, bytes };
}

/** The auto-created options OVMF makes for the layout's devices, in its enumeration order. */
export function expectedDeviceEntries(layout: FirmwareDeviceLayout, protocol: PreferredNetworkBootProtocol): DeviceEntrySpec[] {
  const slotOf = new Map(layout.scsiControllers.map((c) => [c.controller, c.pciSlot]));
  const scsi = layout.scsiDevices
    .filter((d) => slotOf.has(d.controller) && reachableLun(layout, d.controller, d.location))
    .sort((a, b) => slotOf.get(a.controller)! - slotOf.get(b.controller)! || a.location - b.location);
  const drives = [...scsi.filter((d) => d.kind === "dvd"), ...scsi.filter((d) => d.kind === "disk")];
  const out: DeviceEntrySpec[] = [];
  const seen = new Map<string, number>();
  for (const d of drives) {
    const base = d.kind === "dvd" ? "UEFI QEMU QEMU CD-ROM " : "UEFI QEMU QEMU HARDDISK ";
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    const path = `PciRoot(0x0)/Pci(${hex(slotOf.get(d.controller)!)},0x0)/Scsi(0x0,${hex(d.location)})`;
    out.push(spec(n === 1 ? base : `${base} ${n}`, path, { kind: "scsi", controller: d.controller, location: d.location, deviceKind: d.kind, ref: d.ref }, null));
  }
  const ip =
    protocol === "IPv4"
      ? "IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)"
      : "IPv6(0000:0000:0000:0000:0000:0000:0000:0000,0x0,Static,0000:0000:0000:0000:0000:0000:0000:0000,0x40,0000:0000:0000:0000:0000:0000:0000:0000)";
  const v = protocol === "IPv4" ? "v4" : "v6";
  for (const nic of [...layout.nics].sort((a, b) => a.pciSlot - b.pciSlot)) {
    const m = macHex(nic.mac);
    const dev: BootDevice = { kind: "nic", index: nic.index, mac: m.toLowerCase().match(/../g)!.join(":"), ref: nic.ref };
    const base = `PciRoot(0x0)/Pci(${hex(nic.pciSlot)},0x0)/MAC(${m},0x1)/${ip}`;
    out.push(spec(`UEFI PXE${v} (MAC:${m})`, base, dev, "PXE"));
    out.push(spec(`UEFI HTTP${v} (MAC:${m})`, `${base}/Uri()`, dev, "HTTP"));
  }
  return out;
}

function reachableLun(layout: FirmwareDeviceLayout, controller: number, location: number): boolean {
  const luns = new Set(layout.scsiDevices.filter((d) => d.controller === controller).map((d) => d.location));
  for (let l = 0; l <= location; l++) if (!luns.has(l)) return false;
  return true;
}

function sameDevice(a: BootDevice | null, b: BootDevice): boolean {
  if (a === null) return false;
  if (a.kind === "scsi" && b.kind === "scsi") return a.controller === b.controller && a.location === b.location && a.deviceKind === b.deviceKind;
  if (a.kind === "nic" && b.kind === "nic") return a.index === b.index && a.mac === b.mac;
  return false;
}

function netKind(p: NetworkBootProtocol | null | undefined): "PXE" | "HTTP" | null {
  if (p === "PXEv4" || p === "PXEv6") return "PXE";
  if (p === "HTTPv4" || p === "HTTPv6" || p === "HTTP") return "HTTP";
  return null;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export interface SyncResult {
  /** New entries, appended to the end of BootOrder. */
  readonly added: { id: number; description: string; ref: string }[];
  /** Auto-created entries whose device is no longer attached. */
  readonly removed: { id: number; description: string }[];
  /** Entries of a device rewritten in place (same number and position), e.g. IPv4 -> IPv6. */
  readonly rewritten: { id: number; from: string; to: string }[];
}

/**
 * Makes the store's auto-created Drive/Network entries those OVMF would make for `layout`:
 * missing ones are added at the bottom, those of removed devices are deleted, and those of a
 * device that OVMF would describe differently now (the other network protocol, a shifted
 * " 2" suffix) are rewritten in place so the device keeps its position. File and Firmware
 * entries are left alone.
 */
export function syncDeviceEntries(store: VarStore, layout: FirmwareDeviceLayout, protocol: PreferredNetworkBootProtocol): SyncResult {
  const expected = expectedDeviceEntries(layout, protocol);
  const conf = readBootConfiguration(store, layout);
  let order = [...(conf.bootOrder ?? [])];
  const claimed = new Set<DeviceEntrySpec>();
  const added: SyncResult["added"] = [];
  const removed: SyncResult["removed"] = [];
  const rewritten: SyncResult["rewritten"] = [];
  const auto = conf.entries.filter((e) => e.autoCreated && (e.type === "Drive" || e.type === "Network"));
  // Exact matches first, so a rewrite never takes a spec another entry already has.
  const pending: BootEntry[] = [];
  for (const e of auto) {
    const bytes = readBootOptionBytes(store, e.id)!;
    const hit = expected.find((s) => !claimed.has(s) && bytesEqual(s.bytes, bytes));
    if (hit) claimed.add(hit);
    else pending.push(e);
  }
  for (const e of pending) {
    // The same device (or the same adapter, by MAC, moved to another slot) keeps its number and place.
    const hit = expected.find(
      (s) =>
        !claimed.has(s) &&
        (sameDevice(e.device, s.device) || (s.device.kind === "nic" && e.network?.mac === s.device.mac)) &&
        (s.network === null || s.network === netKind(e.network?.protocol)),
    );
    if (hit) {
      claimed.add(hit);
      store.set(bootOptionName(e.id), GUIDS.globalVariable, ATTRS_NV_BS_RT, hit.bytes);
      rewritten.push({ id: e.id, from: e.description, to: hit.description });
    } else {
      deleteBootOption(store, e.id);
      order = order.filter((x) => x !== e.id);
      removed.push({ id: e.id, description: e.description });
    }
  }
  const used = new Set(listBootOptionIds(store));
  for (const id of order) used.add(id);
  for (const s of expected) {
    if (claimed.has(s)) continue;
    const id = nextFreeBootNumber(used);
    used.add(id);
    store.set(bootOptionName(id), GUIDS.globalVariable, ATTRS_NV_BS_RT, s.bytes);
    order.push(id);
    added.push({ id, description: s.description, ref: s.device.ref });
  }
  // Claimed entries that were not in BootOrder go to its end, as OVMF would put them.
  for (const e of auto) if (!order.includes(e.id) && readBootOptionBytes(store, e.id) !== undefined) order.push(e.id);
  if (added.length || removed.length || !sameOrder(order, conf.bootOrder)) writeBootOrder(store, order);
  const next = safeBootNext(store);
  if (next !== null && removed.some((r) => r.id === next)) writeBootNext(store, null);
  return { added, removed, rewritten };
}

function sameOrder(a: readonly number[], b: readonly number[] | null): boolean {
  return b !== null && a.length === b.length && a.every((x, i) => x === b[i]);
}

function safeBootNext(store: VarStore): number | null {
  try {
    return readBootNext(store);
  } catch {
    return null;
  }
}

/** How a Set-VMFirmware target names entries: a Boot#### id, or a device as the CLI names it. */
export type BootTarget = { kind: "id"; id: number } | { kind: "device"; ref: string };

/** "Boot0003", "boot0003", "0003" -> an id target; anything else names a device. */
export function parseBootTarget(text: string): BootTarget {
  const t = text.trim();
  const m = /^(?:boot)?([0-9a-f]{4})$/i.exec(t);
  if (m) return { kind: "id", id: parseBootOptionName("Boot" + m[1]!.toUpperCase())! };
  return { kind: "device", ref: t };
}

/**
 * The Boot#### numbers a target stands for: the id itself, or the Drive/Network entries of
 * the device (an adapter has its PXE and HTTP entries), in their current order.
 * `matchRef` decides whether a device (by its layout ref) is the one named.
 */
export function resolveBootTarget(
  store: VarStore, layout: FirmwareDeviceLayout, target: BootTarget, matchRef: (ref: string, device: BootDevice) => boolean = (r, d) => r === d.ref,
): number[] {
  const conf = readBootConfiguration(store, layout);
  if (target.kind === "id") {
    if (!conf.entries.some((e) => e.id === target.id)) throw new BootError("UNKNOWN_ENTRY", `no boot entry ${bootOptionName(target.id)}`);
    return [target.id];
  }
  const ids = conf.entries
    .filter((e) => (e.type === "Drive" || e.type === "Network") && e.device !== null && matchRef(target.ref, e.device))
    .map((e) => e.id);
  if (ids.length === 0) throw new BootError("UNKNOWN_ENTRY", `no boot entry points at "${target.ref}"`);
  return ids;
}

/** Set-VMFirmware -FirstBootDevice: the target's entries go first, the rest keep their order. */
export function setFirstBootDevice(store: VarStore, ids: readonly number[]): { order: number[] } {
  const current = readBootOrder(store) ?? [];
  const rest = current.filter((x) => !ids.includes(x));
  const order = [...ids, ...rest];
  writeBootOrder(store, order);
  return { order };
}

export interface SetBootOrderResult {
  readonly order: number[];
  readonly movedToEnd: number[];
  /** Boot#### variables deleted (--prune). */
  readonly deleted: { id: number; description: string; type: string }[];
  /** File entries left out and kept at the end although pruning was asked for. */
  readonly keptFiles: number[];
}

/**
 * Set-VMFirmware -BootOrder. Hyper-V deletes every entry left out; here they move to the end
 * unless `prune`, and File entries (which nothing re-creates) are pruned only with
 * `pruneFiles`, and then listed by name in the result.
 */
export function setBootOrder(
  store: VarStore, layout: FirmwareDeviceLayout, requested: readonly number[], opts: { prune?: boolean; pruneFiles?: boolean } = {},
): SetBootOrderResult {
  const conf = readBootConfiguration(store, layout);
  const current = conf.bootOrder ?? [];
  const existing = conf.entries.map((e) => e.id);
  // Entries not in BootOrder still count as "left out": list them so they are moved or pruned.
  const full = [...current, ...existing.filter((id) => !current.includes(id))];
  const r = applyBootOrder(full, requested, {
    prune: opts.prune ?? false,
    pruneFiles: opts.pruneFiles ?? false,
    fileEntries: conf.entries.filter((e) => e.type === "File").map((e) => e.id),
    existing,
  });
  const deleted: SetBootOrderResult["deleted"] = [];
  for (const id of r.pruned) {
    const e = conf.entries.find((x) => x.id === id);
    deleteBootOption(store, id);
    deleted.push({ id, description: e?.description ?? "", type: e?.type ?? "Unknown" });
  }
  writeBootOrder(store, r.order);
  const next = safeBootNext(store);
  if (next !== null && r.pruned.includes(next)) writeBootNext(store, null);
  return { order: r.order, movedToEnd: r.movedToEnd, deleted, keptFiles: r.keptFiles };
}

/** Get-VMFirmware's BootOrder entries: BootOrder first, then options the order does not list. */
export function bootEntriesView(store: VarStore, layout: FirmwareDeviceLayout): BootEntry[] {
  return [...readBootConfiguration(store, layout).entries];
}
