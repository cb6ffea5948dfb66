/**
 * Device paths: every node type against the text edk2's DevicePathToText prints
 * (MdePkg/Library/UefiDevicePathLib/DevicePathToText.c, expected strings written by hand
 * from its format strings: %x is uppercase, %g an uppercase GUID), text -> binary -> text,
 * the fixtures' paths byte for byte, and the paths OVMF itself printed on the console.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  devicePathFromText, devicePathToText, DevicePathError, encodeDevicePath, guidToBytes, nodeFromText, nodeToText,
  parseDevicePath, parseDevicePathList, parseVarStore, decodeLoadOption, loadOptionPaths, listBootOptionIds,
  readBootOption, GUIDS, decodeNode, type DevicePathNode, type ToTextOptions,
} from "../../src/firmware/index.js";
import { BOOTED_STORES, fixture, fixtureText, PRISTINE_FIXTURES } from "../fixtures/firmware/helpers.js";

const hex = (s: string): Uint8Array => Uint8Array.from((s.replace(/\s+/g, "").match(/../g) ?? []).map((b) => parseInt(b, 16)));
const cat = (...parts: (Uint8Array | string)[]): Uint8Array => {
  const bs = parts.map((p) => (typeof p === "string" ? hex(p) : p));
  const out = new Uint8Array(bs.reduce((n, b) => n + b.length, 0));
  let o = 0;
  for (const b of bs) {
    out.set(b, o);
    o += b.length;
  }
  return out;
};
const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const ucs2 = (s: string): Uint8Array => {
  const out = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) out[i * 2] = s.charCodeAt(i);
  return out;
};
const u64 = (v: bigint): string => {
  let s = "";
  for (let i = 0n; i < 8n; i++) s += Number((v >> (8n * i)) & 0xffn).toString(16).padStart(2, "0");
  return s;
};
const node = (type: number, subType: number, data: Uint8Array | string): DevicePathNode => ({
  type, subType, data: typeof data === "string" ? hex(data) : data,
});
const G1 = "01020304-0506-0708-090A-0B0C0D0E0F10";
const G2 = "12345678-9ABC-DEF0-1234-56789ABCDEF0";
const g = (s: string): Uint8Array => guidToBytes(s);

interface Case {
  what: string;
  node: DevicePathNode;
  text: string;
  opts?: ToTextOptions;
  /** Text -> binary gives the node back (default true unless opts make it lossy). */
  reversible?: boolean;
}

const CASES: Case[] = [
  // Hardware
  { what: "Pci", node: node(1, 1, "021F"), text: "Pci(0x1F,0x2)" },
  { what: "PcCard", node: node(1, 2, "01"), text: "PcCard(0x1)" },
  { what: "MemoryMapped", node: node(1, 3, "0B000000" + u64(0x1000n) + u64(0x1fffn)), text: "MemoryMapped(0xB,0x1000,0x1FFF)" },
  { what: "VenHw", node: node(1, 4, cat(g(G2), "0102AB")), text: `VenHw(${G2},0102AB)` },
  { what: "VenHw no data", node: node(1, 4, g(G2)), text: `VenHw(${G2})` },
  { what: "Ctrl", node: node(1, 5, "02000000"), text: "Ctrl(0x2)" },
  { what: "BMC", node: node(1, 6, "01" + u64(0xca2n)), text: "BMC(0x1,0xCA2)" },
  // ACPI
  { what: "PciRoot", node: node(2, 1, "D041030A00000000"), text: "PciRoot(0x0)" },
  { what: "PcieRoot", node: node(2, 1, "D041080A01000000"), text: "PcieRoot(0x1)" },
  { what: "Floppy", node: node(2, 1, "D041040600000000"), text: "Floppy(0x0)" },
  { what: "Keyboard", node: node(2, 1, "D041010300000000"), text: "Keyboard(0x0)" },
  { what: "Serial", node: node(2, 1, "D041010501000000"), text: "Serial(0x1)" },
  { what: "ParallelPort", node: node(2, 1, "D041010400000000"), text: "ParallelPort(0x0)" },
  { what: "Acpi PNP", node: node(2, 1, "D041030300000000"), text: "Acpi(PNP0303,0x0)" },
  { what: "Acpi non-EISA", node: node(2, 1, "7856341201000000"), text: "Acpi(0x12345678,0x1)" },
  {
    what: "AcpiEx", node: node(2, 2, cat("D041080A 01000000 D041030A", ascii("ABC\0DEF\0\0"))),
    text: "AcpiEx(PNP0A08,PNP0A03,0x1,ABC,,DEF)",
  },
  { what: "AcpiExp", node: node(2, 2, cat("D041080A 00000000 D041030A", ascii("\0XYZ\0\0"))), text: "AcpiExp(PNP0A08,PNP0A03,XYZ)" },
  // OVMF 2022.11 (its console, see the custom fixture): a zero CID prints as 0, and AcpiExp()
  // is used whenever only the UID string is set, hiding a UID number.
  { what: "AcpiExp, CID 0", node: node(2, 2, cat("D041080A 00000000 00000000", ascii("\0XYZ\0\0"))), text: "AcpiExp(PNP0A08,0,XYZ)" },
  {
    what: "AcpiExp hides the UID (edk2)", node: node(2, 2, cat("D041080A 05000000 D041030A", ascii("\0X\0\0"))),
    text: "AcpiExp(PNP0A08,PNP0A03,X)", opts: { exact: false }, reversible: false,
  },
  { what: "AcpiExp hides the UID (exact)", node: node(2, 2, cat("D041080A 05000000 D041030A", ascii("\0X\0\0"))), text: "AcpiEx(PNP0A08,PNP0A03,0x5,,,X)" },
  { what: "AcpiEx, no strings", node: node(2, 2, cat("D041080A 00000000 D041030A", ascii("\0\0\0"))), text: "AcpiEx(PNP0A08,PNP0A03,0x0,,,)" },
  {
    what: "AcpiEx string HID (Hyper-V VMBus)", node: node(2, 2, cat("00000000 00000000 00000000", ascii("VMBus\0\0\0"))),
    text: "AcpiEx(@@@0000,@@@0000,0x0,VMBus,,)",
  },
  {
    what: "AcpiEx shortcut", node: node(2, 2, cat("00000000 00000000 00000000", ascii("VMBus\0\0\0"))),
    text: "AcpiEx(VMBus,,)", opts: { allowShortcuts: true, exact: false }, reversible: false,
  },
  { what: "AcpiAdr", node: node(2, 3, "00010180"), text: "AcpiAdr(0x80010100)" },
  { what: "AcpiAdr several", node: node(2, 3, "0001018000020180"), text: "AcpiAdr(0x80010100,0x80010200)" },
  // Messaging
  { what: "Ata", node: node(3, 1, "01010500"), text: "Ata(Secondary,Slave,0x5)" },
  { what: "Ata primary", node: node(3, 1, "00000000"), text: "Ata(Primary,Master,0x0)" },
  { what: "Ata display", node: node(3, 1, "01010500"), text: "Ata(0x5)", opts: { displayOnly: true }, reversible: false },
  { what: "Scsi", node: node(3, 2, "00000100"), text: "Scsi(0x0,0x1)" },
  { what: "Fibre", node: node(3, 3, "00000000" + u64(0x1234n) + u64(0x5678n)), text: "Fibre(0x1234,0x5678)" },
  { what: "I1394", node: node(3, 4, "00000000" + u64(0x0123456789abcdefn)), text: "I1394(0123456789ABCDEF)" },
  { what: "USB", node: node(3, 5, "0100"), text: "USB(0x1,0x0)" },
  { what: "I2O", node: node(3, 6, "07000000"), text: "I2O(0x7)" },
  {
    what: "Infiniband", node: node(3, 9, cat("01000000", g(G1), u64(2n) + u64(3n) + u64(4n))),
    text: `Infiniband(0x1,${G1},0x2,0x3,0x4)`,
  },
  { what: "VenMsg", node: node(3, 10, cat(g(G2), "FF")), text: `VenMsg(${G2},FF)` },
  { what: "VenMsg PcAnsi (no shortcuts)", node: node(3, 10, g("E0C14753-F9BE-11D2-9A0C-0090273FC14D")), text: "VenMsg(E0C14753-F9BE-11D2-9A0C-0090273FC14D)" },
  { what: "VenPcAnsi", node: node(3, 10, g("E0C14753-F9BE-11D2-9A0C-0090273FC14D")), text: "VenPcAnsi()", opts: { allowShortcuts: true } },
  { what: "VenVt100", node: node(3, 10, g("DFA66065-B419-11D3-9A2D-0090273FC14D")), text: "VenVt100()", opts: { allowShortcuts: true } },
  { what: "VenVt100Plus", node: node(3, 10, g("7BAEC70B-57E0-4C76-8E87-2F9E28088343")), text: "VenVt100Plus()", opts: { allowShortcuts: true } },
  { what: "VenUtf8", node: node(3, 10, g("AD15A0D6-8BEC-4ACF-A073-D01DE77E2D88")), text: "VenUtf8()", opts: { allowShortcuts: true } },
  { what: "DebugPort", node: node(3, 10, g("EBA4E8D2-3858-41EC-A281-2647BA9660D0")), text: "DebugPort()", opts: { allowShortcuts: true } },
  {
    what: "UartFlowCtrl", node: node(3, 10, cat(g("37499A9D-542F-4C89-A026-35DA142094E4"), "01000000")),
    text: "UartFlowCtrl(Hardware)", opts: { allowShortcuts: true },
  },
  {
    what: "UartFlowCtrl XonXoff", node: node(3, 10, cat(g("37499A9D-542F-4C89-A026-35DA142094E4"), "02000000")),
    text: "UartFlowCtrl(XonXoff)", opts: { allowShortcuts: true },
  },
  {
    what: "VenPcAnsi with data falls back to VenMsg when exact", node: node(3, 10, cat(g("E0C14753-F9BE-11D2-9A0C-0090273FC14D"), "AA")),
    text: "VenMsg(E0C14753-F9BE-11D2-9A0C-0090273FC14D,AA)", opts: { allowShortcuts: true },
  },
  { what: "MAC", node: node(3, 11, cat("00155D000001", new Uint8Array(26), "01")), text: "MAC(00155D000001,0x1)" },
  {
    what: "MAC other ifType prints 32 bytes", node: node(3, 11, cat("0102030405060708", new Uint8Array(24), "06")),
    text: `MAC(0102030405060708${"00".repeat(24)},0x6)`,
  },
  {
    what: "IPv4", node: node(3, 12, "C0A80102 C0A80101 0000 0000 0600 01 C0A801FE FFFFFF00"),
    text: "IPv4(192.168.1.1,TCP,Static,192.168.1.2,192.168.1.254,255.255.255.0)",
  },
  {
    what: "IPv4 OVMF PXE", node: node(3, 12, "00000000 00000000 0000 0000 0000 00 00000000 00000000"),
    text: "IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)",
  },
  { what: "IPv4 UDP", node: node(3, 12, "00000000 0A000202 0000 0000 1100 00 00000000 00000000"), text: "IPv4(10.0.2.2,UDP,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)" },
  {
    what: "IPv4 display", node: node(3, 12, "C0A80102 C0A80101 0000 0000 0600 01 C0A801FE FFFFFF00"),
    text: "IPv4(192.168.1.1)", opts: { displayOnly: true }, reversible: false,
  },
  {
    what: "IPv6",
    node: node(3, 13, "FE800000000000005054FFFFFE123456 20010DB8000000000000000000000001 0000 0000 1100 01 40 20010DB800000000000000000000FFFF"),
    text: "IPv6(2001:0DB8:0000:0000:0000:0000:0000:0001,UDP,StatelessAutoConfigure,FE80:0000:0000:0000:5054:FFFF:FE12:3456,0x40,2001:0DB8:0000:0000:0000:0000:0000:FFFF)",
  },
  {
    what: "IPv6 stateful", node: node(3, 13, "00".repeat(32) + "0000 0000 0600 02 00" + "00".repeat(16)),
    text: `IPv6(${"0000:".repeat(7)}0000,TCP,StatefulAutoConfigure,${"0000:".repeat(7)}0000,0x0,${"0000:".repeat(7)}0000)`,
  },
  {
    what: "IPv6 display", node: node(3, 13, "00".repeat(16) + "20010DB8000000000000000000000001 0000 0000 1100 01 40" + "00".repeat(16)),
    text: "IPv6(2001:0DB8:0000:0000:0000:0000:0000:0001)", opts: { displayOnly: true }, reversible: false,
  },
  { what: "Uart", node: node(3, 14, "00000000" + u64(115200n) + "080101"), text: "Uart(115200,8,N,1)" },
  { what: "Uart defaults", node: node(3, 14, "00000000" + u64(0n) + "000000"), text: "Uart(DEFAULT,DEFAULT,D,D)" },
  { what: "Uart 1.5 stop, odd parity", node: node(3, 14, "00000000" + u64(9600n) + "070302"), text: "Uart(9600,7,O,1.5)" },
  { what: "Uart mark/space, 2 stop", node: node(3, 14, "00000000" + u64(300n) + "050403"), text: "Uart(300,5,M,2)" },
  { what: "UsbHID", node: node(3, 15, "0100 0200 03 04 05"), text: "UsbHID(0x1,0x2,0x4,0x5)" },
  { what: "UsbMassStorage", node: node(3, 15, "F446 0100 08 06 50"), text: "UsbMassStorage(0x46F4,0x1,0x6,0x50)" },
  { what: "UsbDeviceFirmwareUpdate", node: node(3, 15, "0100 0200 FE 01 05"), text: "UsbDeviceFirmwareUpdate(0x1,0x2,0x5)" },
  { what: "UsbTestAndMeasurement", node: node(3, 15, "0100 0200 FE 03 05"), text: "UsbTestAndMeasurement(0x1,0x2,0x5)" },
  { what: "UsbClass", node: node(3, 15, "0100 0200 FF 04 05"), text: "UsbClass(0x1,0x2,0xFF,0x4,0x5)" },
  { what: "UsbWwid", node: node(3, 16, cat("0000 3412 7856", ucs2("SER"))), text: 'UsbWwid(0x1234,0x5678,0x0,"SER")' },
  { what: "Unit", node: node(3, 17, "03"), text: "Unit(0x3)" },
  { what: "Sata", node: node(3, 18, "0000 FFFF 0000"), text: "Sata(0x0,0xFFFF,0x0)" },
  { what: "Vlan", node: node(3, 20, "2A00"), text: "Vlan(42)" },
  { what: "FibreEx", node: node(3, 21, "00000000 0102030405060708 0000000000000001"), text: "FibreEx(0x0102030405060708,0x0000000000000001)" },
  { what: "NVMe", node: node(3, 23, "01000000 7766554433221100"), text: "NVMe(0x1,00-11-22-33-44-55-66-77)" },
  { what: "Uri", node: node(3, 24, ascii("http://10.0.2.2:8000/boot.efi")), text: "Uri(http://10.0.2.2:8000/boot.efi)" },
  { what: "Uri empty (OVMF HTTP boot)", node: node(3, 24, ""), text: "Uri()" },
  { what: "UFS", node: node(3, 25, "0102"), text: "UFS(0x1,0x2)" },
  { what: "SD", node: node(3, 26, "03"), text: "SD(0x3)" },
  { what: "Bluetooth", node: node(3, 27, "0011223344FF"), text: "Bluetooth(0011223344FF)" },
  { what: "Wi-Fi", node: node(3, 28, cat(ascii("vmhost-ssid"), new Uint8Array(21))), text: "Wi-Fi(vmhost-ssid)" },
  { what: "eMMC", node: node(3, 29, "04"), text: "eMMC(0x4)" },
  { what: "BluetoothLE", node: node(3, 30, "AABBCCDDEEFF01"), text: "BluetoothLE(AABBCCDDEEFF,0x01)" },
  { what: "Dns v4", node: node(3, 31, cat("00", "0A000203", new Uint8Array(12), "08080808", new Uint8Array(12))), text: "Dns(10.0.2.3,8.8.8.8)" },
  { what: "Dns v6", node: node(3, 31, cat("01", "20010DB8000000000000000000000053")), text: "Dns(2001:0DB8:0000:0000:0000:0000:0000:0053)" },
  // Media
  {
    what: "HD GPT", node: node(4, 1, cat("01000000", u64(0x800n) + u64(0x100000n), g("1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9"), "0202")),
    text: "HD(1,GPT,1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9,0x800,0x100000)",
  },
  {
    what: "HD MBR", node: node(4, 1, cat("02000000", u64(0x800n) + u64(0x2000n), "CDAB3412", new Uint8Array(12), "0101")),
    text: "HD(2,MBR,0x1234ABCD,0x800,0x2000)",
  },
  { what: "HD no signature", node: node(4, 1, cat("03000000", u64(1n) + u64(2n), new Uint8Array(16), "0000")), text: "HD(3,0,0,0x1,0x2)" },
  { what: "CDROM", node: node(4, 2, "01000000" + u64(0x10n) + u64(0x20n)), text: "CDROM(0x1,0x10,0x20)" },
  { what: "CDROM display", node: node(4, 2, "01000000" + u64(0x10n) + u64(0x20n)), text: "CDROM(0x1)", opts: { displayOnly: true }, reversible: false },
  { what: "VenMedia", node: node(4, 3, g(G2)), text: `VenMedia(${G2})` },
  { what: "file path", node: node(4, 4, ucs2("\\EFI\\BOOT\\BOOTX64.EFI\0")), text: "\\EFI\\BOOT\\BOOTX64.EFI" },
  { what: "Media", node: node(4, 5, g(G1)), text: `Media(${G1})` },
  { what: "FvFile", node: node(4, 6, g("7C04A583-9E3E-4F1C-AD65-E05268D0B4D1")), text: "FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)" },
  { what: "Fv", node: node(4, 7, g("7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1")), text: "Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)" },
  { what: "Offset", node: node(4, 8, "00000000" + u64(0x10n) + u64(0x20n)), text: "Offset(0x10,0x20)" },
  {
    what: "VirtualDisk", node: node(4, 9, cat(u64(0x1000n) + u64(0x1fffn), g("77AB535A-45FC-624B-5560-F7B281D1F96E"), "0000")),
    text: "VirtualDisk(0x1000,0x1FFF,0)",
  },
  {
    what: "VirtualCD", node: node(4, 9, cat(u64(0x1000n) + u64(0x1fffn), g("3D5ABD30-4175-87CE-6D64-D2ADE523C4BB"), "0100")),
    text: "VirtualCD(0x1000,0x1FFF,1)",
  },
  {
    what: "PersistentVirtualDisk", node: node(4, 9, cat(u64(1n) + u64(2n), g("5CEA02C9-4D07-69D3-269F-4496FBE096F9"), "0000")),
    text: "PersistentVirtualDisk(0x1,0x2,0)",
  },
  {
    what: "PersistentVirtualCD", node: node(4, 9, cat(u64(1n) + u64(2n), g("08018188-42CD-BB48-100F-5387D53DED3D"), "0000")),
    text: "PersistentVirtualCD(0x1,0x2,0)",
  },
  { what: "RamDisk", node: node(4, 9, cat(u64(0x2000n) + u64(0x2fffn), g(G1), "0100")), text: `RamDisk(0x2000,0x2FFF,1,${G1})` },
  // BBS
  { what: "BBS", node: node(5, 1, cat("0200 0000", ascii("Disk\0"))), text: "BBS(HD,Disk,0x0)" },
  { what: "BBS other type", node: node(5, 1, cat("8000 0100", ascii("X\0"))), text: "BBS(0x80,X,0x1)" },
  { what: "BBS display", node: node(5, 1, cat("0200 0000", ascii("Disk\0"))), text: "BBS(HD,Disk)", opts: { displayOnly: true }, reversible: false },
  // Generic (DevPathToTextNodeGeneric)
  { what: "unknown hardware", node: node(1, 99, ""), text: "HardwarePath(99)" },
  { what: "unknown ACPI", node: node(2, 9, "FF"), text: "AcpiPath(9,FF)" },
  { what: "unknown messaging", node: node(3, 100, "0102"), text: "Msg(100,0102)" },
  { what: "unknown media", node: node(4, 50, "00"), text: "MediaPath(50,00)" },
  { what: "unknown BBS", node: node(5, 2, "AB"), text: "BbsPath(2,AB)" },
  { what: "unknown type", node: node(6, 1, "AB"), text: "Path(6,1,AB)" },
  { what: "End type, odd subtype", node: node(0x7f, 2, ""), text: "Path(127,2)" },
  { what: "known type, wrong length", node: node(1, 1, "021F00"), text: "HardwarePath(1,021F00)" },
  // Lossy named forms: exact mode keeps the bytes, edk2 mode prints what edk2 prints.
  {
    what: "IPv4 with ports (exact)", node: node(3, 12, "00000000 0A000202 4500 4400 1100 00 00000000 00000000"),
    text: "Msg(12,000000000A000202450044001100000000000000000000)",
  },
  {
    what: "IPv4 with ports (edk2)", node: node(3, 12, "00000000 0A000202 4500 4400 1100 00 00000000 00000000"),
    text: "IPv4(10.0.2.2,UDP,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)", opts: { exact: false }, reversible: false,
  },
  { what: "Uart bad parity (edk2)", node: node(3, 14, "00000000" + u64(115200n) + "080901"), text: "Uart(115200,8,x,1)", opts: { exact: false }, reversible: false },
  { what: "Uart bad parity (exact)", node: node(3, 14, "00000000" + u64(115200n) + "080901"), text: "Msg(14,0000000000C2010000000000080901)" },
  { what: "file path with / and , (edk2)", node: node(4, 4, ucs2("\\a/b,c\0")), text: "\\a/b,c", opts: { exact: false }, reversible: false },
  { what: "file path with / and , (exact)", node: node(4, 4, ucs2("\\a/b,c\0")), text: "MediaPath(4,5C0061002F0062002C0063000000)" },
  { what: "file path without NUL (exact)", node: node(4, 4, ucs2("\\x")), text: "MediaPath(4,5C007800)" },
  { what: "Uri with NUL (exact)", node: node(3, 24, "6100"), text: "Msg(24,6100)" },
];

for (const c of CASES) {
  test(`device path node: ${c.what}`, () => {
    assert.equal(nodeToText(c.node, c.opts), c.text);
    if (c.reversible !== false) {
      const back = nodeFromText(c.text);
      assert.equal(back.type, c.node.type);
      assert.equal(back.subType, c.node.subType);
      assert.deepEqual(Array.from(back.data), Array.from(c.node.data));
    }
  });
}

test("the table covers every node type the issue asks for", () => {
  const kinds = new Set(CASES.map((c) => decodeNode(c.node)?.kind).filter((k) => k !== undefined));
  for (const k of ["Pci", "Acpi", "AcpiEx", "Scsi", "Sata", "NVMe", "MAC", "IPv4", "IPv6", "Uri", "HD", "FilePath", "Fv", "FvFile", "VenHw", "VenMsg", "Uart", "USB"]) {
    assert.ok(kinds.has(k as never), k);
  }
});

test("paths: separators, End Instance printed as edk2 does (',/')", () => {
  const text = "PciRoot(0x0)/Pci(0x10,0x0),/PciRoot(0x0)/Pci(0x11,0x1)/Ctrl(0x2)";
  const path = devicePathFromText(text);
  assert.equal(path.length, 7);
  assert.equal(devicePathToText(path), text);
  // The same path written without the slash after the comma parses identically.
  assert.deepEqual(encodeDevicePath(devicePathFromText("PciRoot(0x0)/Pci(0x10,0x0),PciRoot(0x0)/Pci(0x11,0x1)/Ctrl(0x2)")), encodeDevicePath(path));
  // Leading, doubled and trailing instance separators survive a round trip.
  for (const t of [",/PciRoot(0x0)", "PciRoot(0x0),,/Pci(0x1,0x0)", "PciRoot(0x0),"]) {
    const p = devicePathFromText(t);
    assert.equal(devicePathToText(p), t);
  }
});

test("paths: the serial console variables OVMF writes", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const conOut = s.get("ConOut", GUIDS.globalVariable)!.data;
  assert.equal(devicePathToText(conOut), "PciRoot(0x0)/Pci(0x1F,0x0)/Serial(0x0)/Uart(115200,8,N,1)/VenMsg(E0C14753-F9BE-11D2-9A0C-0090273FC14D)");
  assert.equal(devicePathToText(conOut, { allowShortcuts: true }), "PciRoot(0x0)/Pci(0x1F,0x0)/Serial(0x0)/Uart(115200,8,N,1)/VenPcAnsi()");
  const conIn = s.get("ConIn", GUIDS.globalVariable)!.data;
  assert.equal(
    devicePathToText(conIn, { allowShortcuts: true }),
    "PciRoot(0x0)/Pci(0x1F,0x0)/Acpi(PNP0303,0x0),/PciRoot(0x0)/Pci(0x1F,0x0)/Serial(0x0)/Uart(115200,8,N,1)/VenPcAnsi(),/UsbHID(0xFFFF,0xFFFF,0x1,0x1)",
  );
  for (const v of [conOut, conIn]) {
    for (const opts of [{}, { allowShortcuts: true }]) {
      assert.deepEqual(encodeDevicePath(devicePathFromText(devicePathToText(v, opts))), v);
    }
  }
});

/** Every device path in the fixtures: Boot#### file path lists and the console variables. */
function fixturePaths(): { where: string; bytes: Uint8Array }[] {
  const out: { where: string; bytes: Uint8Array }[] = [];
  for (const name of [...BOOTED_STORES, ...PRISTINE_FIXTURES]) {
    const s = parseVarStore(fixture(name));
    for (const id of listBootOptionIds(s)) {
      const o = readBootOption(s, id)!;
      for (const [i, p] of loadOptionPaths(o).entries()) out.push({ where: `${name} Boot${id.toString(16)} path ${i}`, bytes: encodeDevicePath(p) });
    }
    for (const v of ["ConIn", "ConOut", "ErrOut", "ConInDev", "ConOutDev", "ErrOutDev"]) {
      const d = s.get(v, GUIDS.globalVariable);
      if (d !== undefined) out.push({ where: `${name} ${v}`, bytes: d.data });
    }
  }
  return out;
}

test("every device path in the fixtures round-trips byte for byte, through binary and through text", () => {
  const paths = fixturePaths();
  assert.ok(paths.length > 60, `only ${paths.length} paths`);
  for (const { where, bytes } of paths) {
    const parsed = parseDevicePath(bytes);
    assert.deepEqual(encodeDevicePath(parsed), bytes, where);
    for (const opts of [{}, { allowShortcuts: true }]) {
      const text = devicePathToText(parsed, opts);
      assert.deepEqual(encodeDevicePath(devicePathFromText(text)), bytes, `${where}: ${text}`);
      assert.equal(devicePathToText(devicePathFromText(text), opts), text, where);
    }
  }
});

/** `BdsDxe: failed to load Boot0007 "desc" from PATH: Not Found` and the loading/starting lines. */
function bdsLines(consoleText: string): { id: number; description: string; path: string }[] {
  const out: { id: number; description: string; path: string }[] = [];
  for (const line of consoleText.split("\n")) {
    const m = /^BdsDxe: (?:loading|starting|failed to load|failed to start) Boot([0-9A-F]{4}) "(.*)" from (.*?)(?:: [A-Z][A-Za-z ]+)?$/.exec(line);
    if (m !== null) out.push({ id: parseInt(m[1]!, 16), description: m[2]!, path: m[3]! });
  }
  return out;
}

test("paths OVMF printed on its console (edk2's own DevicePathToText) equal ours", () => {
  let checked = 0;
  for (const name of ["ovmf4m", "ovmf2m", "ovmf4m-ms", "ovmf4m-custom"]) {
    const store = parseVarStore(fixture(`${name}.fd`));
    for (const line of bdsLines(fixtureText(`${name}.console.txt`))) {
      const option = readBootOption(store, line.id);
      assert.ok(option !== undefined, `${name}: Boot${line.id.toString(16)} is in the store`);
      assert.equal(option.description, line.description);
      const first = loadOptionPaths(option)[0]!;
      assert.equal(devicePathToText(first, { exact: false }), line.path, `${name} ${line.description}`);
      // The exact form differs only where edk2's text would lose bytes.
      if (!line.description.startsWith("vmhost lossy") && line.description !== "vmhost acpiex uid") {
        assert.equal(devicePathToText(first), line.path, `${name} ${line.description}`);
      }
      checked++;
    }
  }
  assert.ok(checked >= 40, `checked only ${checked} console lines`);
});

test("console cross-check covers many node kinds", () => {
  const store = parseVarStore(fixture("ovmf4m-custom.fd"));
  const kinds = new Set<string>();
  for (const line of bdsLines(fixtureText("ovmf4m-custom.console.txt"))) {
    for (const p of loadOptionPaths(readBootOption(store, line.id)!)) for (const n of p) kinds.add(decodeNode(n)?.kind ?? `generic ${n.type}`);
  }
  assert.ok(kinds.size >= 40, `only ${kinds.size}: ${[...kinds].join(" ")}`);
});

test("binary errors are typed", () => {
  const cases: [string, Uint8Array, string][] = [
    ["empty", hex(""), "EMPTY"],
    ["short header", hex("7FFF"), "TRUNCATED"],
    ["length < 4", hex("01010200"), "BAD_NODE_LENGTH"],
    ["node past end", hex("0101060002"), "TRUNCATED"],
    ["no end node", hex("010106000200"), "MISSING_END"],
    ["bytes after end", hex("7FFF040000"), "TRAILING_BYTES"],
  ];
  for (const [what, bytes, code] of cases) {
    assert.throws(() => parseDevicePath(bytes), (e: unknown) => e instanceof DevicePathError && e.code === code, what);
  }
  assert.throws(() => parseDevicePathList(hex("7FFF0400 0101")), DevicePathError);
  assert.equal(parseDevicePathList(hex("7FFF0400 7FFF0400")).length, 2);
});

test("text errors are typed", () => {
  const cases: [string, string][] = [
    ["", "EMPTY"],
    ["Pci(0x1,0x100)", "BAD_ARGUMENT"],
    ["Pci(zz,0)", "BAD_ARGUMENT"],
    ["Pci(1,2,3)", "BAD_ARGUMENT"],
    ["Fv(not-a-guid)", "BAD_ARGUMENT"],
    ["Frobnicate(1)", "UNKNOWN_NODE"],
    ["IPv4(300.1.1.1)", "BAD_ARGUMENT"],
    ["IPv6(1::2::3)", "BAD_ARGUMENT"],
    ["MAC(0011223344556677,0x1)", "BAD_ARGUMENT"],
    ["Uri(\u20ac)", "BAD_ARGUMENT"],
    ["Msg(1,ABC)", "BAD_ARGUMENT"],
  ];
  for (const [text, code] of cases) {
    assert.throws(() => devicePathFromText(text), (e: unknown) => e instanceof DevicePathError && e.code === code, text);
  }
  // edk2 makes unknown names file paths; so do we when asked.
  const p = devicePathFromText("Frobnicate(1)", { strict: false });
  assert.equal(decodeNode(p[0]!)?.kind, "FilePath");
  assert.equal(devicePathToText(p, { exact: false }), "Frobnicate(1)");
  // The exact form must parse with the default (strict) parser, so it is the generic one.
  assert.equal(devicePathToText(p), "MediaPath(4,460072006F0062006E00690063006100740065002800310029000000)");
});

test("text parsing accepts what users type: decimal, compressed IPv6, colon MACs, lowercase GUIDs", () => {
  const eq = (a: string, b: string): void => assert.deepEqual(encodeDevicePath(devicePathFromText(a)), encodeDevicePath(devicePathFromText(b)));
  eq("Pci(31,2)", "Pci(0x1F,0x2)");
  eq("MAC(00:15:5d:00:00:01,0x1)", "MAC(00155D000001,0x1)");
  eq("IPv6(::1,UDP,Static,fe80::1,0x40,::)", "IPv6(0000:0000:0000:0000:0000:0000:0000:0001,UDP,Static,FE80:0000:0000:0000:0000:0000:0000:0001,0x40,0000:0000:0000:0000:0000:0000:0000:0000)");
  eq("Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)", "Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)");
  eq("/PciRoot(0x0)//Pci(0x1,0x0)", "PciRoot(0x0)/Pci(0x1,0x0)");
  eq("HD(1,-1,0,0x1,0x2)", "HD(1,0xFF,0,0x1,0x2)");
  // A partition number of 2^31 or more prints negative with %d, and reads back.
  const big = devicePathFromText("HD(-1,MBR,0x1,0x0,0x0)");
  assert.equal(devicePathToText(big), "HD(-1,MBR,0x00000001,0x0,0x0)");
  // Uri keeps commas and slashes.
  assert.equal(devicePathToText(devicePathFromText("Uri(http://h/a,b/(c))")), "Uri(http://h/a,b/(c))");
});

test("decodeLoadOption + text on OVMF's own entries gives the documented forms", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const text = (id: number): string => devicePathToText(loadOptionPaths(decodeLoadOption(s.get(`Boot000${id}`, GUIDS.globalVariable)!.data))[0]!);
  assert.equal(text(0), "Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(462CAA21-7614-4503-836E-8AB6F4662331)");
  assert.equal(text(1), "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)");
  assert.equal(text(2), "PciRoot(0x0)/Pci(0x8,0x0)/MAC(00155D000001,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)");
  const z = "0000:0000:0000:0000:0000:0000:0000:0000";
  assert.equal(text(3), `PciRoot(0x0)/Pci(0x8,0x0)/MAC(00155D000001,0x1)/IPv6(${z},0x0,Static,${z},0x40,${z})`);
  assert.equal(text(4), "PciRoot(0x0)/Pci(0x8,0x0)/MAC(00155D000001,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)/Uri()");
  assert.equal(text(5), `PciRoot(0x0)/Pci(0x8,0x0)/MAC(00155D000001,0x1)/IPv6(${z},0x0,Static,${z},0x40,${z})/Uri()`);
  assert.equal(text(6), "Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)");
});
