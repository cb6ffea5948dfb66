/**
 * THE table of device-path node types. Each entry gives the binary layout of the node body,
 * how edk2's DevicePathToText prints it (MdePkg/Library/UefiDevicePathLib/DevicePathToText.c)
 * and the text names DevicePathFromText accepts for it. binary -> text and text -> binary
 * both go through this table and nothing else; nodes not in it are kept as bytes and printed
 * in edk2's generic form (see text.ts).
 */
import { DevicePathError } from "../errors.js";
import {
  asciiArg, asciiz, bytes, cstr, dec32, dec64, decodeLayout, encodeLayout, guid, guidUpper, hex2, hexBytes, hx,
  ipv4Text, ipv6Text, parseBig, parseGuidArg, parseHexBytes, parseHexFixed, parseIpv4, parseIpv6, parseNum,
  restAscii, restBytes, restU32, restUcs2, u16, u32, u64, u8,
  type FieldsOf, type Layout,
} from "./codec.js";
import { NODE_TYPE } from "./binary.js";

export interface PrintOptions {
  /** edk2 DisplayOnly: shorter, lossy forms for IPv4/IPv6/Ata/CDROM/BBS. */
  readonly displayOnly: boolean;
  /** edk2 AllowShortcuts: VenPcAnsi(), UartFlowCtrl(), AcpiEx short form... */
  readonly allowShortcuts: boolean;
  /** The node has the older, shorter length `legacyLength` (fields past it read as zero). */
  readonly legacy?: boolean;
}

/** Arguments of one text node; a missing argument reads as "" (as GetNextParamStr gives). */
export class Args {
  constructor(readonly name: string, readonly list: readonly string[], readonly raw: string) {}
  at(i: number): string {
    return this.list[i] ?? "";
  }
  max(n: number): this {
    if (this.list.length > n && !(this.list.length === 1 && n === 0 && this.list[0] === "")) {
      throw new DevicePathError("BAD_ARGUMENT", `${this.name}() takes at most ${n} arguments, got ${this.list.length}`);
    }
    return this;
  }
}

export interface NodeSpec<K extends string, L extends Layout> {
  readonly kind: K;
  readonly type: number;
  readonly subType: number;
  readonly layout: L;
  /**
   * edk2's text; or several texts, edk2's first, then lossless alternatives for when edk2's
   * form drops information.
   */
  print(f: FieldsOf<L>, o: PrintOptions): string | readonly string[];
  /** Text node names -> fields. Names are case-sensitive, as in edk2. */
  readonly parse: Readonly<Record<string, (a: Args) => FieldsOf<L>>>;
  /** Parse the whole argument text as one argument (Uri: URLs carry commas). */
  readonly rawArgs?: boolean;
  /** An older, shorter body edk2 still prints (UEFI 2.0 IPv4/IPv6 nodes, before gateway/prefix). */
  readonly legacy?: { readonly length: number; readonly fullLength: number };
}

function node<K extends string, L extends Layout>(s: NodeSpec<K, L>): NodeSpec<K, L> {
  return s;
}

const H = NODE_TYPE.HARDWARE;
const A = NODE_TYPE.ACPI;
const M = NODE_TYPE.MESSAGING;
const MD = NODE_TYPE.MEDIA;
const B = NODE_TYPE.BBS;

// --- ACPI helpers --------------------------------------------------------------------------

const PNP_EISA_ID_CONST = 0x41d0;
const eisaPnp = (num: number): number => ((num << 16) | PNP_EISA_ID_CONST) >>> 0;

/** EISA id as "%c%c%c%04X" (DevPathToTextAcpiEx). */
function eisaText(id: number): string {
  const c = (v: number): string => String.fromCharCode((v & 0x1f) + 0x40);
  return c(id >>> 10) + c(id >>> 5) + c(id) + ((id >>> 16) & 0xffff).toString(16).toUpperCase().padStart(4, "0");
}

/** EisaIdFromText, plus a plain 0x-number (edk2 prints non-EISA HIDs that way). */
function eisaFromText(text: string): number {
  const s = text.trim();
  if (s === "" || s === "0") return 0;
  if (/^0[xX][0-9a-fA-F]{1,8}$/.test(s)) return Number(BigInt(s));
  const m = /^([@-_])([@-_])([@-_])([0-9a-fA-F]{1,4})$/.exec(s);
  if (m === null) throw new DevicePathError("BAD_ARGUMENT", `bad EISA id: ${JSON.stringify(s.slice(0, 40))}`);
  const ch = (x: string): number => (x.charCodeAt(0) - 0x40) & 0x1f;
  return ((ch(m[1]!) << 10) | (ch(m[2]!) << 5) | ch(m[3]!) | (parseInt(m[4]!, 16) << 16)) >>> 0;
}

const ACPI_SHORT: readonly [string, number][] = [
  ["PciRoot", 0x0a03],
  ["PcieRoot", 0x0a08],
  ["Floppy", 0x0604],
  ["Keyboard", 0x0301],
  ["Serial", 0x0501],
  ["ParallelPort", 0x0401],
];

const acpiShortParsers = Object.fromEntries(
  ACPI_SHORT.map(([name, num]) => [name, (a: Args) => ({ hid: eisaPnp(num), uid: parseNum(a.max(1).at(0), 32, "UID") })]),
);

// --- Vendor helpers ------------------------------------------------------------------------

const vendorLayout = { guid, data: restBytes };
type VendorFields = FieldsOf<typeof vendorLayout>;

function vendorText(prefix: string, f: VendorFields): string {
  return `Ven${prefix}(${guidUpper(f.guid)}${f.data.length > 0 ? "," + hexBytes(f.data) : ""})`;
}

function vendorParse(a: Args): VendorFields {
  a.max(2);
  return { guid: parseGuidArg(a.at(0)), data: parseHexBytes(a.at(1), "vendor data") };
}

export const VENDOR_GUIDS = {
  pcAnsi: "e0c14753-f9be-11d2-9a0c-0090273fc14d",
  vt100: "dfa66065-b419-11d3-9a2d-0090273fc14d",
  vt100Plus: "7baec70b-57e0-4c76-8e87-2f9e28088343",
  vtUtf8: "ad15a0d6-8bec-4acf-a073-d01de77e2d88",
  uartFlowControl: "37499a9d-542f-4c89-a026-35da142094e4",
  sas: "d487ddb4-008b-11d9-afdc-001083ffca4d",
  debugPort: "eba4e8d2-3858-41ec-a281-2647ba9660d0",
} as const;

const MSG_VENDOR_SHORT: readonly [string, string][] = [
  ["VenPcAnsi", VENDOR_GUIDS.pcAnsi],
  ["VenVt100", VENDOR_GUIDS.vt100],
  ["VenVt100Plus", VENDOR_GUIDS.vt100Plus],
  ["VenUtf8", VENDOR_GUIDS.vtUtf8],
  ["DebugPort", VENDOR_GUIDS.debugPort],
];

const FLOW_NAMES = ["None", "Hardware", "XonXoff"];

function u32le(v: number): Uint8Array {
  return new Uint8Array([v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff]);
}

// --- USB class names -----------------------------------------------------------------------

const USB_CLASSES: readonly [string, number][] = [
  ["UsbAudio", 1],
  ["UsbCDCControl", 2],
  ["UsbHID", 3],
  ["UsbImage", 6],
  ["UsbPrinter", 7],
  ["UsbMassStorage", 8],
  ["UsbHub", 9],
  ["UsbCDCData", 10],
  ["UsbSmartCard", 11],
  ["UsbVideo", 14],
  ["UsbDiagnostic", 0xdc],
  ["UsbWireless", 0xe0],
];
const USB_RESERVED_SUBCLASSES: readonly [string, number][] = [
  ["UsbDeviceFirmwareUpdate", 1],
  ["UsbIrdaBridge", 2],
  ["UsbTestAndMeasurement", 3],
];

// --- RAM disk type GUIDs -------------------------------------------------------------------

const RAMDISK_TYPES: readonly [string, string][] = [
  ["VirtualDisk", "77ab535a-45fc-624b-5560-f7b281d1f96e"],
  ["VirtualCD", "3d5abd30-4175-87ce-6d64-d2ade523c4bb"],
  ["PersistentVirtualDisk", "5cea02c9-4d07-69d3-269f-4496fbe096f9"],
  ["PersistentVirtualCD", "08018188-42cd-bb48-100f-5387d53ded3d"],
];

const BBS_TYPES: readonly [string, number][] = [
  ["Floppy", 1],
  ["HD", 2],
  ["CDROM", 3],
  ["PCMCIA", 4],
  ["USB", 5],
  ["Network", 6],
];

const PARITY = "DNEOMS";
const STOP_BITS = ["D", "1", "1.5", "2"];

function protoText(p: number): string {
  return p === 6 ? "TCP" : p === 17 ? "UDP" : hx(p);
}
function protoParse(s: string): number {
  const t = s.trim();
  return t === "TCP" ? 6 : t === "UDP" ? 17 : parseNum(t, 16, "protocol");
}

// ===========================================================================================

export const NODE_SPECS = [
  // ---- Hardware (type 1) ----
  node({
    kind: "Pci", type: H, subType: 1,
    layout: { function: u8, device: u8 },
    print: (f) => `Pci(${hx(f.device)},${hx(f.function)})`,
    parse: { Pci: (a) => ({ device: parseNum(a.max(2).at(0), 8), function: parseNum(a.at(1), 8) }) },
  }),
  node({
    kind: "PcCard", type: H, subType: 2,
    layout: { functionNumber: u8 },
    print: (f) => `PcCard(${hx(f.functionNumber)})`,
    parse: { PcCard: (a) => ({ functionNumber: parseNum(a.max(1).at(0), 8) }) },
  }),
  node({
    kind: "MemoryMapped", type: H, subType: 3,
    layout: { memoryType: u32, start: u64, end: u64 },
    print: (f) => `MemoryMapped(${hx(f.memoryType)},${hx(f.start)},${hx(f.end)})`,
    parse: {
      MemoryMapped: (a) => ({ memoryType: parseNum(a.max(3).at(0), 32), start: parseBig(a.at(1), 64), end: parseBig(a.at(2), 64) }),
    },
  }),
  node({
    kind: "VenHw", type: H, subType: 4,
    layout: vendorLayout,
    print: (f) => vendorText("Hw", f),
    parse: { VenHw: vendorParse },
  }),
  node({
    kind: "Ctrl", type: H, subType: 5,
    layout: { controller: u32 },
    print: (f) => `Ctrl(${hx(f.controller)})`,
    parse: { Ctrl: (a) => ({ controller: parseNum(a.max(1).at(0), 32) }) },
  }),
  node({
    kind: "BMC", type: H, subType: 6,
    layout: { interfaceType: u8, baseAddress: u64 },
    print: (f) => `BMC(${hx(f.interfaceType)},${hx(f.baseAddress)})`,
    parse: { BMC: (a) => ({ interfaceType: parseNum(a.max(2).at(0), 8), baseAddress: parseBig(a.at(1), 64) }) },
  }),

  // ---- ACPI (type 2) ----
  node({
    kind: "Acpi", type: A, subType: 1,
    layout: { hid: u32, uid: u32 },
    print: (f) => {
      if ((f.hid & 0xffff) === PNP_EISA_ID_CONST) {
        const num = f.hid >>> 16;
        const short = ACPI_SHORT.find(([, n]) => n === num);
        if (short !== undefined) return `${short[0]}(${hx(f.uid)})`;
        return `Acpi(PNP${num.toString(16).toUpperCase().padStart(4, "0")},${hx(f.uid)})`;
      }
      return `Acpi(0x${f.hid.toString(16).toUpperCase().padStart(8, "0")},${hx(f.uid)})`;
    },
    parse: {
      Acpi: (a) => ({ hid: eisaFromText(a.max(2).at(0)), uid: parseNum(a.at(1), 32, "UID") }),
      ...acpiShortParsers,
    },
  }),
  node({
    kind: "AcpiEx", type: A, subType: 2,
    layout: { hid: u32, uid: u32, cid: u32, hidStr: asciiz, uidStr: asciiz, cidStr: asciiz },
    print: (f, o) => {
      const hidText = eisaText(f.hid);
      const cidText = eisaText(f.cid);
      // OVMF 2022.11 prints AcpiExp() whenever only the UID string is set (the UID number is
      // then not shown) and writes a zero CID as "0" (checked against its console output).
      const full = `AcpiEx(${hidText},${cidText},${hx(f.uid)},${f.hidStr},${f.cidStr},${f.uidStr})`;
      if (f.hidStr === "" && f.cidStr === "" && f.uidStr !== "") return [`AcpiExp(${hidText},${f.cid === 0 ? "0" : cidText},${f.uidStr})`, full];
      if (o.allowShortcuts) {
        return [`AcpiEx(${f.hid === 0 ? f.hidStr : hidText},${f.cid === 0 ? f.cidStr : cidText},${f.uid === 0 ? f.uidStr : hx(f.uid)})`, full];
      }
      return full;
    },
    parse: {
      AcpiEx: (a) => ({
        hid: eisaFromText(a.max(6).at(0)),
        cid: eisaFromText(a.at(1)),
        uid: parseNum(a.at(2), 32, "UID"),
        hidStr: asciiArg(a.at(3)),
        cidStr: asciiArg(a.at(4)),
        uidStr: asciiArg(a.at(5)),
      }),
      AcpiExp: (a) => ({
        hid: eisaFromText(a.max(3).at(0)),
        cid: eisaFromText(a.at(1)),
        uid: 0,
        hidStr: "",
        cidStr: "",
        uidStr: asciiArg(a.at(2)),
      }),
    },
  }),
  node({
    kind: "AcpiAdr", type: A, subType: 3,
    layout: { adr: u32, additional: restU32 },
    print: (f) => `AcpiAdr(${[f.adr, ...f.additional].map(hx).join(",")})`,
    parse: {
      AcpiAdr: (a) => ({ adr: parseNum(a.at(0), 32), additional: a.list.slice(1).map((x) => parseNum(x, 32)) }),
    },
  }),

  // ---- Messaging (type 3) ----
  node({
    kind: "Ata", type: M, subType: 1,
    layout: { primarySecondary: u8, slaveMaster: u8, lun: u16 },
    print: (f, o) =>
      o.displayOnly
        ? `Ata(${hx(f.lun)})`
        : `Ata(${f.primarySecondary === 1 ? "Secondary" : "Primary"},${f.slaveMaster === 1 ? "Slave" : "Master"},${hx(f.lun)})`,
    parse: {
      Ata: (a) => {
        a.max(3);
        const ps = a.at(0).trim();
        const sm = a.at(1).trim();
        return {
          primarySecondary: ps === "Primary" ? 0 : ps === "Secondary" ? 1 : parseNum(ps, 8),
          slaveMaster: sm === "Master" ? 0 : sm === "Slave" ? 1 : parseNum(sm, 8),
          lun: parseNum(a.at(2), 16),
        };
      },
    },
  }),
  node({
    kind: "Scsi", type: M, subType: 2,
    layout: { pun: u16, lun: u16 },
    print: (f) => `Scsi(${hx(f.pun)},${hx(f.lun)})`,
    parse: { Scsi: (a) => ({ pun: parseNum(a.max(2).at(0), 16), lun: parseNum(a.at(1), 16) }) },
  }),
  node({
    kind: "Fibre", type: M, subType: 3,
    layout: { reserved: u32, wwn: u64, lun: u64 },
    print: (f) => `Fibre(${hx(f.wwn)},${hx(f.lun)})`,
    parse: { Fibre: (a) => ({ reserved: 0, wwn: parseBig(a.max(2).at(0), 64), lun: parseBig(a.at(1), 64) }) },
  }),
  node({
    kind: "I1394", type: M, subType: 4,
    layout: { reserved: u32, guid: u64 },
    print: (f) => `I1394(${f.guid.toString(16).toUpperCase().padStart(16, "0")})`,
    parse: { I1394: (a) => ({ reserved: 0, guid: parseBig("0x" + a.max(1).at(0).trim().replace(/^0[xX]/, ""), 64) }) },
  }),
  node({
    kind: "USB", type: M, subType: 5,
    layout: { parentPort: u8, interface: u8 },
    print: (f) => `USB(${hx(f.parentPort)},${hx(f.interface)})`,
    parse: { USB: (a) => ({ parentPort: parseNum(a.max(2).at(0), 8), interface: parseNum(a.at(1), 8) }) },
  }),
  node({
    kind: "I2O", type: M, subType: 6,
    layout: { tid: u32 },
    print: (f) => `I2O(${hx(f.tid)})`,
    parse: { I2O: (a) => ({ tid: parseNum(a.max(1).at(0), 32) }) },
  }),
  node({
    kind: "Infiniband", type: M, subType: 9,
    layout: { resourceFlags: u32, portGid: guid, serviceId: u64, targetPortId: u64, deviceId: u64 },
    print: (f) =>
      `Infiniband(${hx(f.resourceFlags)},${guidUpper(f.portGid)},${hx(f.serviceId)},${hx(f.targetPortId)},${hx(f.deviceId)})`,
    parse: {
      Infiniband: (a) => ({
        resourceFlags: parseNum(a.max(5).at(0), 32),
        portGid: parseGuidArg(a.at(1)),
        serviceId: parseBig(a.at(2), 64),
        targetPortId: parseBig(a.at(3), 64),
        deviceId: parseBig(a.at(4), 64),
      }),
    },
  }),
  node({
    kind: "VenMsg", type: M, subType: 10,
    layout: vendorLayout,
    print: (f, o) => {
      if (o.allowShortcuts) {
        const short = MSG_VENDOR_SHORT.find(([, g]) => g === f.guid);
        if (short !== undefined) return `${short[0]}()`;
        if (f.guid === VENDOR_GUIDS.uartFlowControl) {
          const map = f.data.length >= 4 ? (f.data[0]! | (f.data[1]! << 8) | (f.data[2]! << 16) | (f.data[3]! << 24)) >>> 0 : 0;
          const name = FLOW_NAMES[map & 3];
          return name === undefined ? "" : `UartFlowCtrl(${name})`;
        }
      }
      return vendorText("Msg", f);
    },
    parse: {
      VenMsg: vendorParse,
      ...Object.fromEntries(
        MSG_VENDOR_SHORT.map(([name, g]) => [name, (a: Args) => (a.max(0), { guid: g, data: new Uint8Array(0) })]),
      ),
      UartFlowCtrl: (a) => {
        const v = a.max(1).at(0).trim();
        const map = v === "XonXoff" ? 2 : v === "Hardware" ? 1 : v === "None" || v === "" ? 0 : parseNum(v, 32);
        return { guid: VENDOR_GUIDS.uartFlowControl, data: u32le(map) };
      },
    },
  }),
  node({
    kind: "MAC", type: M, subType: 11,
    layout: { mac: bytes(32), ifType: u8 },
    print: (f) => `MAC(${hexBytes(f.mac.subarray(0, f.ifType <= 1 ? 6 : 32))},${hx(f.ifType)})`,
    parse: {
      MAC: (a) => {
        const ifType = parseNum(a.max(2).at(1), 8, "interface type");
        // edk2 reads 6 bytes for Ethernet (IfType 0/1), all 32 otherwise; the rest stays zero.
        return { mac: parseHexFixed(a.at(0), ifType <= 1 ? 6 : 32, "MAC address"), ifType };
      },
    },
  }),
  node({
    kind: "IPv4", type: M, subType: 12,
    layout: {
      local: bytes(4), remote: bytes(4), localPort: u16, remotePort: u16, protocol: u16, staticIp: u8, gateway: bytes(4), mask: bytes(4),
    },
    legacy: { length: 15, fullLength: 23 },
    print: (f, o) =>
      o.displayOnly
        ? `IPv4(${ipv4Text(f.remote)})`
        : `IPv4(${ipv4Text(f.remote)},${protoText(f.protocol)},${f.staticIp !== 0 ? "Static" : "DHCP"},${ipv4Text(f.local)}` +
          (o.legacy === true ? ")" : `,${ipv4Text(f.gateway)},${ipv4Text(f.mask)})`),
    parse: {
      IPv4: (a) => {
        a.max(6);
        const type = a.at(2).trim();
        return {
          local: parseIpv4(a.at(3)),
          remote: parseIpv4(a.at(0)),
          localPort: 0,
          remotePort: 0,
          protocol: protoParse(a.at(1)),
          staticIp: type === "Static" ? 1 : 0,
          gateway: parseIpv4(a.at(4)),
          mask: parseIpv4(a.at(5)),
        };
      },
    },
  }),
  node({
    kind: "IPv6", type: M, subType: 13,
    layout: {
      local: bytes(16), remote: bytes(16), localPort: u16, remotePort: u16, protocol: u16, origin: u8, prefixLength: u8, gateway: bytes(16),
    },
    print: (f, o) => {
      if (o.displayOnly) return `IPv6(${ipv6Text(f.remote)})`;
      const origin = f.origin === 0 ? "Static" : f.origin === 1 ? "StatelessAutoConfigure" : "StatefulAutoConfigure";
      const head = `IPv6(${ipv6Text(f.remote)},${protoText(f.protocol)},${origin},${ipv6Text(f.local)}`;
      return o.legacy === true ? `${head})` : `${head},${hx(f.prefixLength)},${ipv6Text(f.gateway)})`;
    },
    legacy: { length: 39, fullLength: 56 },
    parse: {
      IPv6: (a) => {
        a.max(6);
        const o = a.at(2).trim();
        return {
          local: parseIpv6(a.at(3)),
          remote: parseIpv6(a.at(0)),
          localPort: 0,
          remotePort: 0,
          protocol: protoParse(a.at(1)),
          origin: o === "Static" ? 0 : o === "StatelessAutoConfigure" ? 1 : o === "StatefulAutoConfigure" ? 2 : parseNum(o, 8),
          prefixLength: parseNum(a.at(4), 8),
          gateway: parseIpv6(a.at(5)),
        };
      },
    },
  }),
  node({
    kind: "Uart", type: M, subType: 14,
    layout: { reserved: u32, baudRate: u64, dataBits: u8, parity: u8, stopBits: u8 },
    print: (f) =>
      `Uart(${f.baudRate === 0n ? "DEFAULT" : dec64(f.baudRate)},${f.dataBits === 0 ? "DEFAULT" : dec32(f.dataBits)},` +
      `${PARITY[f.parity] ?? "x"},${STOP_BITS[f.stopBits] ?? "x"})`,
    parse: {
      // DEFAULT reads back as 0, the value it is printed for (edk2's parser says 115200 and 8).
      Uart: (a) => {
        a.max(4);
        const baud = a.at(0).trim();
        const bits = a.at(1).trim();
        const par = a.at(2).trim();
        const stop = a.at(3).trim();
        const pi = par.length === 1 ? PARITY.indexOf(par) : -1;
        const si = STOP_BITS.indexOf(stop);
        return {
          reserved: 0,
          baudRate: baud === "DEFAULT" ? 0n : parseBig(baud, 64, "baud rate"),
          dataBits: bits === "DEFAULT" ? 0 : parseNum(bits, 8, "data bits"),
          parity: pi >= 0 ? pi : parseNum(par, 8, "parity"),
          stopBits: si >= 0 ? si : parseNum(stop, 8, "stop bits"),
        };
      },
    },
  }),
  node({
    kind: "UsbClass", type: M, subType: 15,
    layout: { vendorId: u16, productId: u16, deviceClass: u8, deviceSubClass: u8, deviceProtocol: u8 },
    print: (f) => {
      const named = USB_CLASSES.find(([, c]) => c === f.deviceClass);
      if (named !== undefined) {
        return `${named[0]}(${hx(f.vendorId)},${hx(f.productId)},${hx(f.deviceSubClass)},${hx(f.deviceProtocol)})`;
      }
      if (f.deviceClass === 0xfe) {
        const sub = USB_RESERVED_SUBCLASSES.find(([, s]) => s === f.deviceSubClass);
        if (sub !== undefined) return `${sub[0]}(${hx(f.vendorId)},${hx(f.productId)},${hx(f.deviceProtocol)})`;
      }
      return `UsbClass(${hx(f.vendorId)},${hx(f.productId)},${hx(f.deviceClass)},${hx(f.deviceSubClass)},${hx(f.deviceProtocol)})`;
    },
    parse: {
      UsbClass: (a) => ({
        vendorId: parseNum(a.max(5).at(0), 16),
        productId: parseNum(a.at(1), 16),
        deviceClass: parseNum(a.at(2), 8),
        deviceSubClass: parseNum(a.at(3), 8),
        deviceProtocol: parseNum(a.at(4), 8),
      }),
      ...Object.fromEntries(
        USB_CLASSES.map(([name, c]) => [
          name,
          (a: Args) => ({
            vendorId: parseNum(a.max(4).at(0), 16),
            productId: parseNum(a.at(1), 16),
            deviceClass: c,
            deviceSubClass: parseNum(a.at(2), 8),
            deviceProtocol: parseNum(a.at(3), 8),
          }),
        ]),
      ),
      ...Object.fromEntries(
        USB_RESERVED_SUBCLASSES.map(([name, s]) => [
          name,
          (a: Args) => ({
            vendorId: parseNum(a.max(3).at(0), 16),
            productId: parseNum(a.at(1), 16),
            deviceClass: 0xfe,
            deviceSubClass: s,
            deviceProtocol: parseNum(a.at(2), 8),
          }),
        ]),
      ),
    },
  }),
  node({
    kind: "UsbWwid", type: M, subType: 16,
    layout: { interfaceNumber: u16, vendorId: u16, productId: u16, serialNumber: restUcs2 },
    print: (f) => `UsbWwid(${hx(f.vendorId)},${hx(f.productId)},${hx(f.interfaceNumber)},"${cstr(f.serialNumber)}")`,
    parse: {
      UsbWwid: (a) => {
        a.max(4);
        let serial = a.at(3);
        if (serial.length >= 2 && serial.startsWith('"') && serial.endsWith('"')) serial = serial.slice(1, -1);
        return { vendorId: parseNum(a.at(0), 16), productId: parseNum(a.at(1), 16), interfaceNumber: parseNum(a.at(2), 16), serialNumber: serial };
      },
    },
  }),
  node({
    kind: "Unit", type: M, subType: 17,
    layout: { lun: u8 },
    print: (f) => `Unit(${hx(f.lun)})`,
    parse: { Unit: (a) => ({ lun: parseNum(a.max(1).at(0), 8) }) },
  }),
  node({
    kind: "Sata", type: M, subType: 18,
    layout: { hbaPort: u16, portMultiplierPort: u16, lun: u16 },
    print: (f) => `Sata(${hx(f.hbaPort)},${hx(f.portMultiplierPort)},${hx(f.lun)})`,
    parse: {
      Sata: (a) => ({ hbaPort: parseNum(a.max(3).at(0), 16), portMultiplierPort: parseNum(a.at(1), 16), lun: parseNum(a.at(2), 16) }),
    },
  }),
  node({
    kind: "Vlan", type: M, subType: 20,
    layout: { vlanId: u16 },
    print: (f) => `Vlan(${f.vlanId})`,
    parse: { Vlan: (a) => ({ vlanId: parseNum(a.max(1).at(0), 16) }) },
  }),
  node({
    kind: "FibreEx", type: M, subType: 21,
    layout: { reserved: u32, wwn: bytes(8), lun: bytes(8) },
    print: (f) => `FibreEx(0x${hexBytes(f.wwn)},0x${hexBytes(f.lun)})`,
    parse: {
      FibreEx: (a) => ({
        reserved: 0,
        wwn: parseHexFixed(a.max(2).at(0).trim().replace(/^0[xX]/, "").padStart(16, "0"), 8),
        lun: parseHexFixed(a.at(1).trim().replace(/^0[xX]/, "").padStart(16, "0"), 8),
      }),
    },
  }),
  node({
    kind: "NVMe", type: M, subType: 23,
    layout: { namespaceId: u32, eui64: bytes(8) },
    print: (f) => `NVMe(${hx(f.namespaceId)},${Array.from(f.eui64).reverse().map(hex2).join("-")})`,
    parse: {
      NVMe: (a) => {
        const parts = a.max(2).at(1).trim().split("-");
        if (parts.length !== 8 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
          throw new DevicePathError("BAD_ARGUMENT", `bad NVMe EUI-64: ${JSON.stringify(a.at(1).slice(0, 40))}`);
        }
        return { namespaceId: parseNum(a.at(0), 32), eui64: Uint8Array.from(parts.reverse().map((p) => parseInt(p, 16))) };
      },
    },
  }),
  node({
    kind: "Uri", type: M, subType: 24,
    layout: { uri: restAscii },
    print: (f) => `Uri(${cstr(f.uri)})`,
    parse: { Uri: (a) => ({ uri: asciiArg(a.raw, "URI") }) },
    rawArgs: true,
  }),
  node({
    kind: "UFS", type: M, subType: 25,
    layout: { pun: u8, lun: u8 },
    print: (f) => `UFS(${hx(f.pun)},${hx(f.lun)})`,
    parse: { UFS: (a) => ({ pun: parseNum(a.max(2).at(0), 8), lun: parseNum(a.at(1), 8) }) },
  }),
  node({
    kind: "SD", type: M, subType: 26,
    layout: { slot: u8 },
    print: (f) => `SD(${hx(f.slot)})`,
    parse: { SD: (a) => ({ slot: parseNum(a.max(1).at(0), 8) }) },
  }),
  node({
    kind: "Bluetooth", type: M, subType: 27,
    layout: { address: bytes(6) },
    print: (f) => `Bluetooth(${hexBytes(f.address)})`,
    parse: { Bluetooth: (a) => ({ address: parseHexFixed(a.max(1).at(0), 6, "Bluetooth address") }) },
  }),
  node({
    kind: "Wi-Fi", type: M, subType: 28,
    layout: { ssid: bytes(32) },
    print: (f) => `Wi-Fi(${cstr(String.fromCharCode(...f.ssid))})`,
    parse: {
      "Wi-Fi": (a) => {
        const s = asciiArg(a.max(1).at(0), "SSID");
        if (s.length > 32) throw new DevicePathError("BAD_ARGUMENT", "SSID longer than 32 characters");
        const ssid = new Uint8Array(32);
        for (let i = 0; i < s.length; i++) ssid[i] = s.charCodeAt(i);
        return { ssid };
      },
    },
  }),
  node({
    kind: "eMMC", type: M, subType: 29,
    layout: { slot: u8 },
    print: (f) => `eMMC(${hx(f.slot)})`,
    parse: { eMMC: (a) => ({ slot: parseNum(a.max(1).at(0), 8) }) },
  }),
  node({
    kind: "BluetoothLE", type: M, subType: 30,
    layout: { address: bytes(6), addressType: u8 },
    print: (f) => `BluetoothLE(${hexBytes(f.address)},0x${hex2(f.addressType)})`,
    parse: {
      BluetoothLE: (a) => ({ address: parseHexFixed(a.max(2).at(0), 6, "Bluetooth address"), addressType: parseNum(a.at(1), 8) }),
    },
  }),
  node({
    kind: "Dns", type: M, subType: 31,
    layout: { isIPv6: u8, servers: restBytes },
    print: (f) => {
      const out: string[] = [];
      for (let i = 0; i + 16 <= f.servers.length; i += 16) {
        out.push(f.isIPv6 === 0 ? ipv4Text(f.servers.subarray(i, i + 4)) : ipv6Text(f.servers.subarray(i, i + 16)));
      }
      return `Dns(${out.join(",")})`;
    },
    parse: {
      Dns: (a) => {
        const list = a.list.filter((x, i) => !(i === 0 && a.list.length === 1 && x.trim() === ""));
        const v6 = list.some((x) => x.includes(":"));
        const servers = new Uint8Array(list.length * 16);
        list.forEach((x, i) => servers.set(v6 ? parseIpv6(x) : parseIpv4(x), i * 16));
        return { isIPv6: v6 ? 1 : 0, servers };
      },
    },
  }),

  // ---- Media (type 4) ----
  node({
    kind: "HD", type: MD, subType: 1,
    layout: { partitionNumber: u32, start: u64, size: u64, signature: bytes(16), mbrType: u8, signatureType: u8 },
    print: (f) => {
      let head: string;
      if (f.signatureType === 1) {
        const sig = (f.signature[0]! | (f.signature[1]! << 8) | (f.signature[2]! << 16) | (f.signature[3]! << 24)) >>> 0;
        head = `HD(${dec32(f.partitionNumber)},MBR,0x${sig.toString(16).toUpperCase().padStart(8, "0")},`;
      } else if (f.signatureType === 2) {
        head = `HD(${dec32(f.partitionNumber)},GPT,${guidUpper(guid.read(f.signature, 0)![0])},`;
      } else {
        head = `HD(${dec32(f.partitionNumber)},${f.signatureType},0,`;
      }
      return `${head}${hx(f.start)},${hx(f.size)})`;
    },
    parse: {
      HD: (a) => {
        a.max(5);
        const type = a.at(1).trim();
        const signature = new Uint8Array(16);
        let mbrType = 0;
        let signatureType: number;
        if (type === "MBR") {
          signatureType = 1;
          mbrType = 1;
          signature.set(u32le(parseNum(a.at(2), 32, "MBR signature")));
        } else if (type === "GPT") {
          signatureType = 2;
          mbrType = 2;
          signature.set(guid.write(parseGuidArg(a.at(2))));
        } else {
          signatureType = parseNum(type, 8, "signature type");
        }
        return {
          partitionNumber: parseNum(a.at(0), 32, "partition number"),
          start: parseBig(a.at(3), 64),
          size: parseBig(a.at(4), 64),
          signature,
          mbrType,
          signatureType,
        };
      },
    },
  }),
  node({
    kind: "CDROM", type: MD, subType: 2,
    layout: { bootEntry: u32, start: u64, size: u64 },
    print: (f, o) => (o.displayOnly ? `CDROM(${hx(f.bootEntry)})` : `CDROM(${hx(f.bootEntry)},${hx(f.start)},${hx(f.size)})`),
    parse: { CDROM: (a) => ({ bootEntry: parseNum(a.max(3).at(0), 32), start: parseBig(a.at(1), 64), size: parseBig(a.at(2), 64) }) },
  }),
  node({
    kind: "VenMedia", type: MD, subType: 3,
    layout: vendorLayout,
    print: (f) => vendorText("Media", f),
    parse: { VenMedia: vendorParse },
  }),
  node({
    // Printed bare; text.ts parses any node that is not Name(...) into this one.
    kind: "FilePath", type: MD, subType: 4,
    layout: { path: restUcs2 },
    print: (f) => cstr(f.path),
    parse: {},
  }),
  node({
    kind: "Media", type: MD, subType: 5,
    layout: { protocol: guid },
    print: (f) => `Media(${guidUpper(f.protocol)})`,
    parse: { Media: (a) => ({ protocol: parseGuidArg(a.max(1).at(0)) }) },
  }),
  node({
    kind: "FvFile", type: MD, subType: 6,
    layout: { name: guid },
    print: (f) => `FvFile(${guidUpper(f.name)})`,
    parse: { FvFile: (a) => ({ name: parseGuidArg(a.max(1).at(0)) }) },
  }),
  node({
    kind: "Fv", type: MD, subType: 7,
    layout: { name: guid },
    print: (f) => `Fv(${guidUpper(f.name)})`,
    parse: { Fv: (a) => ({ name: parseGuidArg(a.max(1).at(0)) }) },
  }),
  node({
    kind: "Offset", type: MD, subType: 8,
    layout: { reserved: u32, start: u64, end: u64 },
    print: (f) => `Offset(${hx(f.start)},${hx(f.end)})`,
    parse: { Offset: (a) => ({ reserved: 0, start: parseBig(a.max(2).at(0), 64), end: parseBig(a.at(1), 64) }) },
  }),
  node({
    kind: "RamDisk", type: MD, subType: 9,
    layout: { start: u64, end: u64, typeGuid: guid, instance: u16 },
    print: (f) => {
      const named = RAMDISK_TYPES.find(([, g]) => g === f.typeGuid);
      if (named !== undefined) return `${named[0]}(${hx(f.start)},${hx(f.end)},${f.instance})`;
      return `RamDisk(${hx(f.start)},${hx(f.end)},${f.instance},${guidUpper(f.typeGuid)})`;
    },
    parse: {
      RamDisk: (a) => ({
        start: parseBig(a.max(4).at(0), 64),
        end: parseBig(a.at(1), 64),
        instance: parseNum(a.at(2), 16),
        typeGuid: parseGuidArg(a.at(3)),
      }),
      ...Object.fromEntries(
        RAMDISK_TYPES.map(([name, g]) => [
          name,
          (a: Args) => ({ start: parseBig(a.max(3).at(0), 64), end: parseBig(a.at(1), 64), instance: parseNum(a.at(2), 16), typeGuid: g }),
        ]),
      ),
    },
  }),

  // ---- BIOS Boot Specification (type 5) ----
  node({
    kind: "BBS", type: B, subType: 1,
    layout: { deviceType: u16, statusFlag: u16, description: asciiz },
    print: (f, o) => {
      const named = BBS_TYPES.find(([, t]) => t === f.deviceType);
      const head = `BBS(${named !== undefined ? named[0] : hx(f.deviceType)},${f.description}`;
      return o.displayOnly ? `${head})` : `${head},${hx(f.statusFlag)})`;
    },
    parse: {
      BBS: (a) => {
        a.max(3);
        const t = a.at(0).trim();
        const named = BBS_TYPES.find(([n]) => n === t);
        return {
          deviceType: named !== undefined ? named[1] : parseNum(t, 16, "BBS type"),
          description: asciiArg(a.at(1)),
          statusFlag: parseNum(a.at(2), 16),
        };
      },
    },
  }),
] as const;

// ===========================================================================================

type Spec = (typeof NODE_SPECS)[number];

/** A node decoded through the table: its kind plus the fields of its layout. */
export type DecodedNode = Spec extends infer S ? (S extends NodeSpec<infer K, infer L> ? { kind: K } & FieldsOf<L> : never) : never;

export type NodeKind = DecodedNode["kind"];

/** The table with its types erased, for the generic walkers in text.ts. */
export interface AnyNodeSpec {
  readonly kind: string;
  readonly type: number;
  readonly subType: number;
  readonly rawArgs: boolean;
  decode(data: Uint8Array): Record<string, unknown> | null;
  /** Like decode, but also reads a legacy-length body (zero-padded); says which it was. */
  decodeLoose(data: Uint8Array): { fields: Record<string, unknown>; legacy: boolean } | null;
  encode(fields: Record<string, unknown>): Uint8Array;
  /** Candidate texts, edk2's first. */
  print(fields: Record<string, unknown>, o: PrintOptions): readonly string[];
}

const erased: AnyNodeSpec[] = NODE_SPECS.map((s) => {
  const spec = s as unknown as NodeSpec<string, Layout>;
  return {
    kind: spec.kind,
    type: spec.type,
    subType: spec.subType,
    rawArgs: spec.rawArgs === true,
    decode: (data: Uint8Array) => decodeLayout(spec.layout, data) as Record<string, unknown> | null,
    decodeLoose: (data: Uint8Array) => {
      const fields = decodeLayout(spec.layout, data) as Record<string, unknown> | null;
      if (fields !== null) return { fields, legacy: false };
      if (spec.legacy === undefined || data.length !== spec.legacy.length) return null;
      const padded = new Uint8Array(spec.legacy.fullLength);
      padded.set(data);
      const f = decodeLayout(spec.layout, padded) as Record<string, unknown> | null;
      return f === null ? null : { fields: f, legacy: true };
    },
    encode: (fields: Record<string, unknown>) => encodeLayout(spec.layout, fields as FieldsOf<Layout>),
    print: (fields: Record<string, unknown>, o: PrintOptions) => {
      const t = spec.print(fields as FieldsOf<Layout>, o);
      return typeof t === "string" ? [t] : t;
    },
  };
});

const byTypeKey = new Map<number, AnyNodeSpec>(erased.map((s) => [(s.type << 8) | s.subType, s]));

/** Text node name -> spec and its parser. */
export const TEXT_PARSERS: ReadonlyMap<string, { spec: AnyNodeSpec; parse: (a: Args) => Record<string, unknown> }> = new Map(
  NODE_SPECS.flatMap((s, i) =>
    Object.entries((s as unknown as NodeSpec<string, Layout>).parse).map(
      ([name, fn]) => [name, { spec: erased[i]!, parse: fn as (a: Args) => Record<string, unknown> }] as const,
    ),
  ),
);

export function specFor(type: number, subType: number): AnyNodeSpec | undefined {
  return byTypeKey.get((type << 8) | subType);
}

export function specOfKind(kind: NodeKind): AnyNodeSpec {
  const s = erased.find((x) => x.kind === kind);
  if (s === undefined) throw new DevicePathError("UNKNOWN_NODE", `no node kind ${kind}`);
  return s;
}
