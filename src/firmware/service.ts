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
 * `planDeviceEntries` computes the same changes without making them, so a view can show what
 * the store holds and mark the rest pending.
 *
 * What OVMF makes again at every boot (recreatedAtBoot) cannot be pruned for good: it re-adds
 * an entry for each attached bootable device, UiApp and the Shell whenever BootOrder lacks an
 * identical one, and only looks at options listed in BootOrder (measured in
 * test/fixtures/firmware/bds-experiments.ts). `setBootOrder` keeps such entries, with the
 * reason, instead of deleting them.
 * File entries (made by an OS or a user) are never touched here.
 */
import { BootError } from "./errors.js";
import { applyBootOrder, nextFreeBootNumber } from "./bootpolicy.js";
import {
  describeBootOption, firmwareFileOf, readBootConfiguration, type BootDevice, type BootEntry, type FirmwareDeviceLayout, type MapOptions,
  type NetworkBootProtocol,
} from "./bootentries.js";
import {
  bootOptionName, deleteBootOption, listBootOptionIds, parseBootOptionName, readBootNext, readBootOptionBytes, readBootOrder,
  writeBootNext, writeBootOrder,
} from "./bootorder.js";
import { autoCreatedMarker, decodeLoadOption, encodeLoadOption, LOAD_OPTION, loadOptionPaths, makeLoadOption } from "./loadoption.js";
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
 * What syncDeviceEntries would do to a store, computed without changing it: the same lists
 * as SyncResult (with the bytes each write would store) plus the resulting BootOrder. A view
 * shows the store as it is and marks these as pending; applyDeviceEntryPlan carries them out.
 */
export interface DeviceEntryPlan {
  readonly added: { id: number; description: string; ref: string; path: string; bytes: Uint8Array }[];
  readonly removed: { id: number; description: string }[];
  readonly rewritten: { id: number; from: string; to: string; bytes: Uint8Array }[];
  /** BootOrder after the plan (numbers as stored, missing and repeated ones included). */
  readonly bootOrder: number[];
  /** True when `bootOrder` differs from the stored one (or none is stored and entries are added). */
  readonly bootOrderChanged: boolean;
  /** True when BootNext names a removed entry and is deleted with it. */
  readonly clearsBootNext: boolean;
  /** True when the plan changes nothing. */
  readonly empty: boolean;
}

/**
 * Plans what OVMF would make of the store's auto-created Drive/Network entries for `layout`
 * (see syncDeviceEntries), without changing the store: missing ones added at the bottom,
 * those of removed devices deleted, those of a device OVMF would describe differently now
 * (the other network protocol, a shifted " 2" suffix) rewritten in place so the device keeps
 * its position. File and Firmware entries are left alone. New numbers are the lowest no
 * Boot#### variable and no BootOrder position uses (OVMF's own BmGetFreeOptionNumber looks at
 * BootOrder and BootNext only, and overwrites a Boot#### outside them: measured, see
 * test/fixtures/firmware/bds-experiments.ts "clobber").
 */
export function planDeviceEntries(store: VarStore, layout: FirmwareDeviceLayout, protocol: PreferredNetworkBootProtocol): DeviceEntryPlan {
  const expected = expectedDeviceEntries(layout, protocol);
  const conf = readBootConfiguration(store, layout);
  let order = [...(conf.bootOrder ?? [])];
  const claimed = new Set<DeviceEntrySpec>();
  const added: DeviceEntryPlan["added"] = [];
  const removed: DeviceEntryPlan["removed"] = [];
  const rewritten: DeviceEntryPlan["rewritten"] = [];
  const auto = conf.entries.filter((e) => e.autoCreated && (e.type === "Drive" || e.type === "Network"));
  // Exact matches first, so a rewrite never takes a spec another entry already has.
  const pending: BootEntry[] = [];
  for (const e of auto) {
    const bytes = readBootOptionBytes(store, e.id)!;
    const hit = expected.find((x) => !claimed.has(x) && bytesEqual(x.bytes, bytes));
    if (hit) claimed.add(hit);
    else pending.push(e);
  }
  const gone = new Set<number>();
  for (const e of pending) {
    // The same device (or the same adapter, by MAC, moved to another slot) keeps its number and place.
    const hit = expected.find(
      (x) =>
        !claimed.has(x) &&
        (sameDevice(e.device, x.device) || (x.device.kind === "nic" && e.network?.mac === x.device.mac)) &&
        (x.network === null || x.network === netKind(e.network?.protocol)),
    );
    if (hit) {
      claimed.add(hit);
      rewritten.push({ id: e.id, from: e.description, to: hit.description, bytes: hit.bytes });
    } else {
      gone.add(e.id);
      order = order.filter((x) => x !== e.id);
      removed.push({ id: e.id, description: e.description });
    }
  }
  const used = new Set(listBootOptionIds(store).filter((id) => !gone.has(id)));
  for (const id of order) used.add(id);
  for (const x of expected) {
    if (claimed.has(x)) continue;
    const id = nextFreeBootNumber(used);
    used.add(id);
    order.push(id);
    added.push({ id, description: x.description, ref: x.device.ref, path: x.path, bytes: x.bytes });
  }
  // Claimed entries that were not in BootOrder go to its end: OVMF, which only sees options
  // listed in BootOrder, would add them there again (measured: bds-experiments "outside").
  for (const e of auto) if (!order.includes(e.id) && !gone.has(e.id)) order.push(e.id);
  const bootOrderChanged = added.length > 0 || removed.length > 0 || !sameOrder(order, conf.bootOrder);
  const clearsBootNext = conf.bootNext !== null && gone.has(conf.bootNext);
  return {
    added, removed, rewritten, bootOrder: order, bootOrderChanged, clearsBootNext,
    empty: added.length === 0 && removed.length === 0 && rewritten.length === 0 && !bootOrderChanged && !clearsBootNext,
  };
}

/**
 * Carries out a plan made by planDeviceEntries for this store (as it was then). Throws
 * VarStoreError STORE_FULL when the entries do not fit; the store may then hold part of the
 * plan, so callers write it only on success.
 */
export function applyDeviceEntryPlan(store: VarStore, plan: DeviceEntryPlan): SyncResult {
  // Deletions first: their space is what a compaction can reclaim for the writes after them.
  for (const r of plan.removed) deleteBootOption(store, r.id);
  for (const w of plan.rewritten) store.set(bootOptionName(w.id), GUIDS.globalVariable, ATTRS_NV_BS_RT, w.bytes);
  for (const a of plan.added) store.set(bootOptionName(a.id), GUIDS.globalVariable, ATTRS_NV_BS_RT, a.bytes);
  if (plan.bootOrderChanged) writeBootOrder(store, plan.bootOrder);
  if (plan.clearsBootNext) writeBootNext(store, null);
  return {
    added: plan.added.map(({ id, description, ref }) => ({ id, description, ref })),
    removed: plan.removed.map(({ id, description }) => ({ id, description })),
    rewritten: plan.rewritten.map(({ id, from, to }) => ({ id, from, to })),
  };
}

/**
 * Makes the store's auto-created Drive/Network entries those OVMF would make for `layout`
 * (planDeviceEntries, then applyDeviceEntryPlan).
 */
export function syncDeviceEntries(store: VarStore, layout: FirmwareDeviceLayout, protocol: PreferredNetworkBootProtocol): SyncResult {
  return applyDeviceEntryPlan(store, planDeviceEntries(store, layout, protocol));
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
  /**
   * Entries left out that --prune did not delete because OVMF would re-create them at its next
   * boot (recreatedAtBoot): kept at the end, with the reason. Deleting them would not stick.
   */
  readonly keptRecreated: { id: number; description: string; reason: string }[];
}

/** FILE_GUIDs of the firmware applications OVMF registers as boot options by itself. */
export const FIRMWARE_APPS = {
  /** MdeModulePkg/Application/UiApp (the Boot Manager Menu, PcdBootManagerMenuFile). */
  uiApp: "462caa21-7614-4503-836e-8ab6f4662331",
  /** ShellPkg/Application/Shell (gUefiShellFileGuid). */
  shell: "7c04a583-9e3e-4f1c-ad65-e05268d0b4d1",
} as const;

/**
 * The entries OVMF would make again at its next boot if they were deleted, by number, with
 * the reason. OVMF 2022.11 (the code below; measured with real boots, see
 * test/fixtures/firmware/bds-experiments.ts) re-creates at every boot, when no option in
 * BootOrder matches:
 *   - an option for every bootable device it enumerates, matched on attributes, description,
 *     device path and optional data together (MdeModulePkg/Library/UefiBootManagerLib
 *     BmBoot.c EfiBootManagerRefreshAllBootOption, BmLoadOption.c EfiBootManagerFindLoadOption,
 *     which only sees options listed in BootOrder: EfiBootManagerGetLoadOptions). So an entry
 *     deleted, taken out of BootOrder, made inactive or hidden comes back active at the end;
 *   - the Boot Manager Menu (UiApp; BmBoot.c EfiBootManagerGetBootManagerMenu) and the EFI
 *     Internal Shell (OvmfPkg/Library/PlatformBootManagerLib BdsPlatform.c
 *     PlatformRegisterFvBootOption).
 * Device entries are those expectedDeviceEntries gives for `layout` (both protocols' when
 * `protocol` is not given), compared byte for byte.
 */
export function recreatedAtBoot(store: VarStore, layout: FirmwareDeviceLayout, protocol?: PreferredNetworkBootProtocol): Map<number, string> {
  const specs = protocol !== undefined ? expectedDeviceEntries(layout, protocol) : [...expectedDeviceEntries(layout, "IPv4"), ...expectedDeviceEntries(layout, "IPv6")];
  const out = new Map<number, string>();
  for (const id of listBootOptionIds(store)) {
    const bytes = readBootOptionBytes(store, id)!;
    const spec = specs.find((x) => bytesEqual(x.bytes, bytes));
    if (spec !== undefined) {
      out.set(
        id,
        `OVMF re-creates the entry of every attached bootable device at each boot unless BootOrder holds an identical one ` +
          `(EfiBootManagerRefreshAllBootOption); remove ${spec.device.ref} from the VM to drop its entry`,
      );
      continue;
    }
    let app: string | null = null;
    try {
      const paths = loadOptionPaths(decodeLoadOption(bytes));
      app = paths[0] !== undefined ? firmwareFileOf(paths[0]) : null;
    } catch {
      app = null;
    }
    if (app === FIRMWARE_APPS.uiApp) out.set(id, "OVMF registers its Boot Manager Menu (UiApp) again at each boot when BootOrder has none");
    else if (app === FIRMWARE_APPS.shell) out.set(id, "OVMF registers the EFI Internal Shell again at each boot when BootOrder lacks it");
  }
  return out;
}

/**
 * Set-VMFirmware -BootOrder. Hyper-V deletes every entry left out; here they move to the end
 * unless `prune`. With `prune`, File entries (which nothing re-creates) are deleted only with
 * `pruneFiles`, and entries OVMF would re-create at its next boot (recreatedAtBoot, for
 * `protocol` when given) are not deleted but kept at the end with the reason: a deletion
 * would not stick. Only BootOrder is reordered: a Boot#### outside BootOrder (a BootNext
 * target, an entry an OS took out of the order) stays outside unless `requested` names it.
 * Throws BootError DUPLICATE_ENTRY / UNKNOWN_ENTRY for a bad request.
 */
export function setBootOrder(
  store: VarStore,
  layout: FirmwareDeviceLayout,
  requested: readonly number[],
  opts: { prune?: boolean; pruneFiles?: boolean; protocol?: PreferredNetworkBootProtocol } = {},
): SetBootOrderResult {
  const conf = readBootConfiguration(store, layout);
  const current = conf.bootOrder ?? [];
  const existing = conf.entries.map((e) => e.id);
  const recreated = opts.prune ? recreatedAtBoot(store, layout, opts.protocol) : new Map<number, string>();
  const r = applyBootOrder(current, requested, {
    prune: opts.prune ?? false,
    pruneFiles: opts.pruneFiles ?? false,
    fileEntries: conf.entries.filter((e) => e.type === "File").map((e) => e.id),
    existing,
    keepOnPrune: recreated.keys(),
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
  const keptRecreated = r.kept.map((id) => ({ id, description: conf.entries.find((x) => x.id === id)?.description ?? "", reason: recreated.get(id)! }));
  return { order: r.order, movedToEnd: r.movedToEnd, deleted, keptFiles: r.keptFiles, keptRecreated };
}

/** Get-VMFirmware's BootOrder entries: BootOrder first, then options the order does not list. */
export function bootEntriesView(store: VarStore, layout: FirmwareDeviceLayout): BootEntry[] {
  return [...readBootConfiguration(store, layout).entries];
}

/** One row of the boot-entries view. */
export interface BootEntryRow {
  /** Index in the stored BootOrder; null for a Boot#### BootOrder does not list, or a pending addition. */
  readonly position: number | null;
  readonly id: number;
  /** "Boot0001" */
  readonly name: string;
  /**
   * stored: the Boot#### exists; missing: BootOrder lists a number without a Boot####;
   * duplicate: BootOrder lists this number again (`entry` as for its first listing, null if missing);
   * pending: not stored yet, vmhost adds it before the next start.
   */
  readonly status: "stored" | "missing" | "duplicate" | "pending";
  /** The entry (for pending rows: as it will be stored); null when missing. */
  readonly entry: BootEntry | null;
  /** For duplicates: the position of the number's first listing. */
  readonly duplicateOf: number | null;
  /** What vmhost will do to the entry before the next start (given a plan), else null. */
  readonly pending: { readonly action: "add" | "remove" | "rewrite"; readonly description: string } | null;
  /** Why deleting it would not stick (recreatedAtBoot), else null. */
  readonly recreatedAtBoot: string | null;
}

export interface BootEntriesView {
  /** BootOrder as stored; null when the variable is absent or unreadable. */
  readonly bootOrder: readonly number[] | null;
  readonly bootNext: number | null;
  /** BootOrder positions in order (stored, missing, duplicate), then Boot#### outside it ascending, then pending additions. */
  readonly rows: readonly BootEntryRow[];
  /** BootOrder after the pending plan, when a plan was given and changes it. */
  readonly pendingBootOrder: readonly number[] | null;
  /** BootNext is deleted by the pending plan. */
  readonly pendingClearsBootNext: boolean;
}

/**
 * Get-VMFirmware's view of what the store holds: every BootOrder position, including numbers
 * without a Boot#### variable and repeated numbers (listed as such, not dropped), then the
 * Boot#### variables outside BootOrder. Each entry carries its hidden flag and optional data
 * (length and hex). With `plan` (planDeviceEntries, for a VM whose store is written before its
 * next start) the rows it would change are marked pending and its additions are listed as
 * pending rows; the store itself is not changed.
 */
export function describeBootEntries(
  store: VarStore,
  layout: FirmwareDeviceLayout,
  options: { plan?: DeviceEntryPlan; protocol?: PreferredNetworkBootProtocol; map?: MapOptions } = {},
): BootEntriesView {
  const conf = readBootConfiguration(store, layout, options.map);
  const byId = new Map(conf.entries.map((e) => [e.id, e]));
  const recreated = recreatedAtBoot(store, layout, options.protocol);
  const plan = options.plan;
  const pendingOf = (id: number): BootEntryRow["pending"] => {
    const rm = plan?.removed.find((x) => x.id === id);
    if (rm !== undefined) return { action: "remove", description: `its device is no longer attached: ${rm.description} is deleted` };
    const rw = plan?.rewritten.find((x) => x.id === id);
    if (rw !== undefined) return { action: "rewrite", description: `rewritten in place as "${rw.to}"` };
    return null;
  };
  const rows: BootEntryRow[] = [];
  const first = new Map<number, number>();
  (conf.bootOrder ?? []).forEach((id, position) => {
    const entry = byId.get(id) ?? null;
    const dup = first.get(id);
    if (dup === undefined) first.set(id, position);
    rows.push({
      position, id, name: bootOptionName(id),
      status: dup !== undefined ? "duplicate" : entry === null ? "missing" : "stored",
      entry, duplicateOf: dup ?? null, pending: pendingOf(id), recreatedAtBoot: recreated.get(id) ?? null,
    });
  });
  for (const e of conf.entries) {
    if (first.has(e.id)) continue;
    rows.push({ position: null, id: e.id, name: e.name, status: "stored", entry: e, duplicateOf: null, pending: pendingOf(e.id), recreatedAtBoot: recreated.get(e.id) ?? null });
  }
  for (const a of plan?.added ?? []) {
    rows.push({
      position: null, id: a.id, name: bootOptionName(a.id), status: "pending",
      entry: describeBootOption(a.id, a.bytes, layout, true, options.map),
      duplicateOf: null, pending: { action: "add", description: `added at the end of the boot order for ${a.ref}` }, recreatedAtBoot: null,
    });
  }
  return {
    bootOrder: conf.bootOrder,
    bootNext: conf.bootNext,
    rows,
    pendingBootOrder: plan !== undefined && plan.bootOrderChanged ? plan.bootOrder : null,
    pendingClearsBootNext: plan?.clearsBootNext ?? false,
  };
}
