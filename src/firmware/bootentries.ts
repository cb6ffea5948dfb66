/**
 * Boot entries as Hyper-V's Get-VMFirmware shows them: each Boot#### classed Drive, Network,
 * File or Firmware (Msvm_BootSourceSettingData.BootSourceType) and mapped to the VM device it
 * points at, from the PCI layout the engine assigned. No QEMU knowledge here: the layout is
 * an input.
 *
 * Classes: an option whose path is a file in the firmware's own volume (Fv()/FvFile(), or
 * the older MemoryMapped()/FvFile() form; UiApp, the Shell) is Firmware, whatever its
 * category. The rest is File (made by an OS or a user, e.g. shim's ACTIVE|CATEGORY_APP
 * `HD(...)/\EFI\BOOT\mmx64.efi`) unless its optional data is edk2's auto-created marker
 * (BmBoot.c marks what EfiBootManagerRefreshAllBootOption makes): then Network when the path
 * has MAC/IPv4/IPv6/Uri nodes, else Drive. An option that cannot be decoded is Unknown.
 */
import { z } from "zod";
import { BootError, FirmwareError } from "./errors.js";
import { instancesOf, type DevicePath } from "./devicepath/binary.js";
import { decodeNode, devicePathToText, type ToTextOptions } from "./devicepath/text.js";
import type { DecodedNode } from "./devicepath/nodes.js";
import { guidToString } from "./guid.js";
import { decodeLoadOption, isAutoCreated, LOAD_OPTION, loadOptionPaths, type LoadOption } from "./loadoption.js";
import { bootOptionName, listBootOptionIds, readBootNext, readBootOptionBytes, readBootOrder } from "./bootorder.js";
import type { VarStore } from "./varstore.js";

const MAC_RE = /^[0-9a-fA-F]{2}([:-]?[0-9a-fA-F]{2}){5}$/;

export const firmwareDeviceLayoutSchema = z.object({
  scsiControllers: z.array(z.object({ controller: z.number().int().min(0), pciSlot: z.number().int().min(0).max(31) })),
  scsiDevices: z.array(
    z.object({
      controller: z.number().int().min(0),
      location: z.number().int().min(0).max(0xffff),
      kind: z.enum(["disk", "dvd"]),
      ref: z.string(),
    }),
  ),
  nics: z.array(
    z.object({
      index: z.number().int().min(0),
      pciSlot: z.number().int().min(0).max(31),
      mac: z.string().regex(MAC_RE),
      ref: z.string(),
    }),
  ),
});

/** Where the engine put the bootable devices (all on PciRoot(0x0), function 0). */
export type FirmwareDeviceLayout = z.infer<typeof firmwareDeviceLayoutSchema>;

export const EMPTY_LAYOUT: FirmwareDeviceLayout = { scsiControllers: [], scsiDevices: [], nics: [] };

export type BootEntryType = "Drive" | "Network" | "File" | "Firmware" | "Unknown";
export type NetworkBootProtocol = "PXEv4" | "PXEv6" | "HTTPv4" | "HTTPv6" | "HTTP";

export type BootDevice =
  | { kind: "scsi"; controller: number; location: number; deviceKind: "disk" | "dvd"; ref: string }
  | { kind: "nic"; index: number; mac: string; ref: string };

/** What a short-form HD() node says about its partition. */
export interface HardDriveNodeInfo {
  partitionNumber: number;
  start: bigint;
  size: bigint;
  /** GPT unique partition GUID, lowercase, when the signature type is GPT. */
  gptPartitionGuid: string | null;
  /** MBR disk signature when the signature type is MBR. */
  mbrSignature: number | null;
}

export interface MapOptions {
  /**
   * Resolves a short-form `HD(...)/\path` entry to a disk (SCSI controller + location), from
   * partition tables the caller read. Without it such entries map to no device.
   */
  resolveHardDrive?: (hd: HardDriveNodeInfo) => { controller: number; location: number } | null;
  /** How paths are printed (default: edk2 DevicePathToText(path, FALSE, FALSE)). */
  text?: ToTextOptions;
}

export interface BootEntry {
  readonly id: number;
  /** "Boot0001" */
  readonly name: string;
  readonly description: string;
  readonly attributes: number;
  readonly active: boolean;
  readonly hidden: boolean;
  /** LOAD_OPTION category bits (0 boot, 0x100 application). */
  readonly category: number;
  readonly type: BootEntryType;
  /** Optional data is edk2's auto-created marker. */
  readonly autoCreated: boolean;
  /** Text of the first device path (Hyper-V's FirmwarePath); "" when undecodable. */
  readonly firmwarePath: string;
  /** Text of every device path in the option. */
  readonly filePaths: readonly string[];
  readonly device: BootDevice | null;
  /** For Network entries: the protocol and the MAC in the path. */
  readonly network: { readonly protocol: NetworkBootProtocol | null; readonly mac: string | null } | null;
  readonly optionalData: Uint8Array;
  /** optionalData.length, for views. */
  readonly optionalDataLength: number;
  /** optionalData as lowercase hex ("" when empty), for views. */
  readonly optionalDataHex: string;
  readonly inBootOrder: boolean;
  /** Why the option could not be decoded (type Unknown), else null. */
  readonly error: string | null;
}

export interface BootConfiguration {
  /** BootOrder as stored, or null when the variable is absent. */
  readonly bootOrder: readonly number[] | null;
  readonly bootNext: number | null;
  /** Entries in BootOrder order, then Boot#### not in BootOrder, ascending. */
  readonly entries: readonly BootEntry[];
  /** Numbers BootOrder lists that have no Boot#### variable (each once, in order). */
  readonly missing: readonly number[];
  /** Numbers BootOrder lists more than once, with every position (0-based) they are at. */
  readonly duplicates: readonly { readonly id: number; readonly positions: readonly number[] }[];
}

export function normalizeMac(mac: string): string {
  const hex = mac.replace(/[:-]/g, "").toLowerCase();
  return hex.match(/../g)?.join(":") ?? hex;
}

/** Nodes of the first instance, decoded; null for nodes the table does not know. */
function firstInstance(path: DevicePath): (DecodedNode | null)[] {
  return (instancesOf(path)[0] ?? []).map(decodeNode);
}

function known(nodes: readonly (DecodedNode | null)[]): DecodedNode[] {
  return nodes.filter((n): n is DecodedNode => n !== null);
}

function macOf(n: Extract<DecodedNode, { kind: "MAC" }>): string {
  return normalizeMac(Array.from(n.mac.subarray(0, n.ifType <= 1 ? 6 : 32), (b) => b.toString(16).padStart(2, "0")).join(""));
}

/** Network protocol of a path: .../MAC/IPv4 = PXEv4, .../IPv6 = PXEv6, .../Uri = HTTPv4/v6. */
export function networkProtocolOf(nodes: readonly DecodedNode[]): NetworkBootProtocol | null {
  const has = (k: DecodedNode["kind"]): boolean => nodes.some((n) => n.kind === k);
  if (has("Uri")) return has("IPv6") ? "HTTPv6" : has("IPv4") ? "HTTPv4" : "HTTP";
  if (has("IPv4")) return "PXEv4";
  if (has("IPv6")) return "PXEv6";
  return null;
}

function isNetworkPath(nodes: readonly DecodedNode[]): boolean {
  return nodes.some((n) => n.kind === "MAC" || n.kind === "IPv4" || n.kind === "IPv6" || n.kind === "Uri");
}

function isRootBridge(n: DecodedNode | null | undefined): boolean {
  return n !== undefined && n !== null && n.kind === "Acpi" && n.uid === 0 && (n.hid === 0x0a0341d0 || n.hid === 0x0a0841d0);
}

/**
 * The FvFile GUID when the path names a file in a firmware volume: FvFile() alone, or after
 * Fv() / MemoryMapped() (the forms OvmfPkg's RemoveStaleFvFileOptions treats as the
 * firmware's own binaries); else null.
 */
export function firmwareFileOf(path: DevicePath): string | null {
  const nodes = firstInstance(path);
  const [a, b] = nodes;
  if (a?.kind === "FvFile") return a.name;
  if ((a?.kind === "Fv" || a?.kind === "MemoryMapped") && b?.kind === "FvFile") return b.name;
  return null;
}

/**
 * Hyper-V's BootSourceType of an option: Firmware for a file of the firmware's own volume,
 * File for anything an OS or a user made (whatever its LOAD_OPTION category: an
 * application-category entry on a disk is still an OS's file), Drive/Network for what the
 * firmware's boot manager made for a device (edk2's auto-created marker).
 */
export function classifyLoadOption(option: LoadOption, paths: readonly DevicePath[]): BootEntryType {
  if (paths[0] === undefined) return "Unknown";
  if (firmwareFileOf(paths[0]) !== null) return "Firmware";
  if (!isAutoCreated(option)) return "File";
  return isNetworkPath(known(firstInstance(paths[0]))) ? "Network" : "Drive";
}

/** The VM device a device path points at, or null. */
export function mapDevicePath(path: DevicePath, layout: FirmwareDeviceLayout, options: MapOptions = {}): BootDevice | null {
  const nodes = firstInstance(path);
  if (nodes.length === 0 || nodes[0] === null) return null;
  const scsiAt = (controller: number, location: number): BootDevice | null => {
    const d = layout.scsiDevices.find((x) => x.controller === controller && x.location === location);
    return d === undefined ? null : { kind: "scsi", controller, location, deviceKind: d.kind, ref: d.ref };
  };
  const first = nodes[0]!;
  if (first.kind === "HD") {
    if (options.resolveHardDrive === undefined) return null;
    const hit = options.resolveHardDrive({
      partitionNumber: first.partitionNumber,
      start: first.start,
      size: first.size,
      gptPartitionGuid: first.signatureType === 2 ? guidToString(first.signature, 0) : null,
      mbrSignature:
        first.signatureType === 1
          ? (first.signature[0]! | (first.signature[1]! << 8) | (first.signature[2]! << 16) | (first.signature[3]! << 24)) >>> 0
          : null,
    });
    return hit === null ? null : scsiAt(hit.controller, hit.location);
  }
  const pci = nodes[1];
  if (!isRootBridge(first) || pci === undefined || pci === null || pci.kind !== "Pci" || pci.function !== 0) return null;
  const next = nodes[2];
  const ctrl = layout.scsiControllers.find((c) => c.pciSlot === pci.device);
  if (ctrl !== undefined) {
    if (next === undefined || next === null || next.kind !== "Scsi" || next.pun !== 0) return null;
    return scsiAt(ctrl.controller, next.lun);
  }
  const nic = layout.nics.find((n) => n.pciSlot === pci.device);
  if (nic !== undefined) {
    if (next !== undefined && next !== null && next.kind === "MAC" && macOf(next) !== normalizeMac(nic.mac)) return null;
    return { kind: "nic", index: nic.index, mac: normalizeMac(nic.mac), ref: nic.ref };
  }
  return null;
}

/** Builds the entry for one Boot#### body. Never throws on bad bytes: those give Unknown. */
export function describeBootOption(
  id: number, bytes: Uint8Array, layout: FirmwareDeviceLayout, inBootOrder: boolean, options: MapOptions = {},
): BootEntry {
  const base = { id, name: bootOptionName(id), inBootOrder };
  let option: LoadOption;
  let paths: DevicePath[];
  try {
    option = decodeLoadOption(bytes);
  } catch (e) {
    if (!(e instanceof FirmwareError)) throw e;
    return {
      ...base, description: "", attributes: 0, active: false, hidden: false, category: 0, type: "Unknown", autoCreated: false,
      firmwarePath: "", filePaths: [], device: null, network: null, optionalData: new Uint8Array(0), optionalDataLength: 0,
      optionalDataHex: "", error: e.message,
    };
  }
  const common = {
    ...base,
    description: option.description,
    attributes: option.attributes,
    active: (option.attributes & LOAD_OPTION.ACTIVE) !== 0,
    hidden: (option.attributes & LOAD_OPTION.HIDDEN) !== 0,
    category: option.attributes & LOAD_OPTION.CATEGORY_MASK,
    autoCreated: isAutoCreated(option),
    optionalData: option.optionalData,
    optionalDataLength: option.optionalData.length,
    optionalDataHex: Buffer.from(option.optionalData.buffer, option.optionalData.byteOffset, option.optionalData.length).toString("hex"),
  };
  try {
    paths = loadOptionPaths(option);
  } catch (e) {
    if (!(e instanceof FirmwareError)) throw e;
    return { ...common, type: "Unknown", firmwarePath: "", filePaths: [], device: null, network: null, error: e.message };
  }
  const type = classifyLoadOption(option, paths);
  const filePaths = paths.map((p) => devicePathToText(p, options.text));
  const nodes = known(firstInstance(paths[0]!));
  const macNode = nodes.find((n): n is Extract<DecodedNode, { kind: "MAC" }> => n.kind === "MAC");
  const network = isNetworkPath(nodes) ? { protocol: networkProtocolOf(nodes), mac: macNode !== undefined ? macOf(macNode) : null } : null;
  return {
    ...common,
    type,
    firmwarePath: filePaths[0] ?? "",
    filePaths,
    device: mapDevicePath(paths[0]!, layout, options),
    network,
    error: null,
  };
}

/**
 * Reads BootOrder, BootNext and every Boot#### from a store: entries in BootOrder order (each
 * number once), then the Boot#### BootOrder does not list, ascending. BootOrder numbers
 * without a variable are in `missing`, repeated ones in `duplicates`; an undecodable
 * BootOrder/BootNext reads as absent.
 */
export function readBootConfiguration(store: VarStore, layout: FirmwareDeviceLayout = EMPTY_LAYOUT, options: MapOptions = {}): BootConfiguration {
  const parsed = firmwareDeviceLayoutSchema.safeParse(layout);
  if (!parsed.success) throw new BootError("BAD_LAYOUT", `invalid device layout: ${parsed.error.issues[0]?.message ?? "?"}`);
  let bootOrder: number[] | null;
  let bootNext: number | null;
  try {
    bootOrder = readBootOrder(store);
  } catch {
    bootOrder = null;
  }
  try {
    bootNext = readBootNext(store);
  } catch {
    bootNext = null;
  }
  const ids = new Set(listBootOptionIds(store));
  const entries: BootEntry[] = [];
  const missing: number[] = [];
  const positions = new Map<number, number[]>();
  (bootOrder ?? []).forEach((id, i) => positions.set(id, [...(positions.get(id) ?? []), i]));
  for (const id of positions.keys()) {
    const bytes = readBootOptionBytes(store, id);
    if (bytes === undefined) missing.push(id);
    else entries.push(describeBootOption(id, bytes, parsed.data, true, options));
  }
  for (const id of ids) {
    if (positions.has(id)) continue;
    entries.push(describeBootOption(id, readBootOptionBytes(store, id)!, parsed.data, false, options));
  }
  const duplicates = [...positions].filter(([, p]) => p.length > 1).map(([id, p]) => ({ id, positions: p }));
  return { bootOrder, bootNext, entries, missing, duplicates };
}

/** A resolver for short-form HD() entries from partition facts the caller read from disks. */
export function partitionTableResolver(
  table: readonly { controller: number; location: number; gptPartitionGuids?: readonly string[]; mbrSignature?: number }[],
): (hd: HardDriveNodeInfo) => { controller: number; location: number } | null {
  return (hd) => {
    for (const row of table) {
      if (hd.gptPartitionGuid !== null && row.gptPartitionGuids?.some((g) => g.toLowerCase() === hd.gptPartitionGuid)) {
        return { controller: row.controller, location: row.location };
      }
      if (hd.mbrSignature !== null && row.mbrSignature === hd.mbrSignature) return { controller: row.controller, location: row.location };
    }
    return null;
  };
}
