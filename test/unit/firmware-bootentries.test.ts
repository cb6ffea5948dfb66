/**
 * Boot entries classed and mapped as Get-VMFirmware shows them, on the stores OVMF wrote.
 * The layout is vmhost's engine convention: SCSI controller c at PCI slot 3+c, disks at
 * Scsi(0x0,<location>), NIC i at slot 8+i, all on PciRoot(0x0).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  autoCreatedMarker, BootError, describeBootOption, devicePathFromText, encodeLoadOption, EMPTY_LAYOUT, makeLoadOption,
  mapDevicePath, parseVarStore, partitionTableResolver, readBootConfiguration, writeBootOption, writeBootOrder,
  readBootOrder, type FirmwareDeviceLayout,
} from "../../src/firmware/index.js";
import { fixture } from "../fixtures/firmware/helpers.js";

const LAYOUT: FirmwareDeviceLayout = {
  scsiControllers: [{ controller: 0, pciSlot: 3 }, { controller: 1, pciSlot: 4 }],
  scsiDevices: [
    { controller: 0, location: 0, kind: "disk", ref: "scsi0:0" },
    { controller: 0, location: 1, kind: "dvd", ref: "scsi0:1" },
    { controller: 1, location: 3, kind: "disk", ref: "scsi1:3" },
  ],
  nics: [{ index: 0, pciSlot: 8, mac: "00:15:5D:00:00:01", ref: "nic0" }, { index: 1, pciSlot: 9, mac: "00155d000002", ref: "nic1" }],
};

test("fresh OVMF stores (4M, 2M, Secure Boot): Firmware, Drive and four Network entries, mapped", () => {
  for (const name of ["ovmf4m.fd", "ovmf2m.fd", "ovmf4m-ms.fd"]) {
    const cfg = readBootConfiguration(parseVarStore(fixture(name)), LAYOUT);
    assert.deepEqual(cfg.bootOrder, [0, 1, 2, 3, 4, 5, 6], name);
    assert.deepEqual(
      cfg.entries.map((e) => [e.name, e.type, e.network?.protocol ?? null, e.device?.ref ?? null]),
      [
        ["Boot0000", "Firmware", null, null],
        ["Boot0001", "Drive", null, "scsi0:0"],
        ["Boot0002", "Network", "PXEv4", "nic0"],
        ["Boot0003", "Network", "PXEv6", "nic0"],
        ["Boot0004", "Network", "HTTPv4", "nic0"],
        ["Boot0005", "Network", "HTTPv6", "nic0"],
        ["Boot0006", "Firmware", null, null],
      ],
      name,
    );
    const disk = cfg.entries[1]!;
    assert.deepEqual(disk.device, { kind: "scsi", controller: 0, location: 0, deviceKind: "disk", ref: "scsi0:0" });
    assert.equal(disk.firmwarePath, "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)");
    assert.equal(disk.autoCreated, true);
    assert.equal(cfg.entries[2]!.network?.mac, "00:15:5d:00:00:01");
    assert.deepEqual(cfg.entries[2]!.device, { kind: "nic", index: 0, mac: "00:15:5d:00:00:01", ref: "nic0" });
    assert.equal(cfg.entries[0]!.hidden, true);
    assert.equal(cfg.entries[0]!.category, 0x100);
    assert.deepEqual(cfg.missing, []);
    assert.equal(cfg.bootNext, null);
  }
});

test("the Secure Boot template's pre-made SATA entry is an auto-created Drive with no VM device", () => {
  const cfg = readBootConfiguration(parseVarStore(fixture("pristine-OVMF_VARS.ms.fd")), LAYOUT);
  const sata = cfg.entries.find((e) => e.firmwarePath.includes("Sata("))!;
  assert.equal(sata.type, "Drive");
  assert.equal(sata.device, null);
});

test("an added HD()/\\path entry without the marker is File; it maps to a disk only with partition facts", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  writeBootOption(s, 7, makeLoadOption({ description: "debian", path: "HD(1,GPT,1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9,0x800,0x100000)/\\EFI\\debian\\shimx64.efi" }));
  writeBootOption(s, 8, makeLoadOption({ description: "mbr", path: "HD(2,MBR,0x1234ABCD,0x800,0x2000)/\\EFI\\BOOT\\BOOTX64.EFI" }));
  writeBootOrder(s, [7, 8, ...readBootOrder(s)!]);
  let cfg = readBootConfiguration(s, LAYOUT);
  assert.deepEqual(cfg.entries.slice(0, 2).map((e) => [e.type, e.device, e.autoCreated]), [["File", null, false], ["File", null, false]]);
  const resolveHardDrive = partitionTableResolver([
    { controller: 1, location: 3, gptPartitionGuids: ["1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9"] },
    { controller: 0, location: 0, mbrSignature: 0x1234abcd },
  ]);
  cfg = readBootConfiguration(s, LAYOUT, { resolveHardDrive });
  assert.deepEqual(cfg.entries[0]!.device, { kind: "scsi", controller: 1, location: 3, deviceKind: "disk", ref: "scsi1:3" });
  assert.equal(cfg.entries[1]!.device?.ref, "scsi0:0");
});

test("entries OVMF kept and dropped: user entries stay, a stale auto-created one is gone", () => {
  const cfg = readBootConfiguration(parseVarStore(fixture("ovmf4m-custom.fd")), LAYOUT);
  const names = cfg.entries.map((e) => e.description);
  assert.ok(!names.includes("vmhost sata"), "auto-created entry for a missing device was deleted by OVMF");
  assert.ok(!names.includes("UEFI QEMU QEMU HARDDISK "), "the disk was not attached on that boot");
  for (const d of ["vmhost HD GPT", "vmhost file", "vmhost ipv4", "vmhost uri"]) {
    assert.equal(cfg.entries.find((e) => e.description === d)?.type, "File", d);
  }
  const uri = cfg.entries.find((e) => e.description === "vmhost uri")!;
  assert.deepEqual(uri.network, { protocol: "HTTP", mac: null });
  const two = cfg.entries.find((e) => e.description === "vmhost two paths")!;
  assert.deepEqual(two.filePaths, ["PciRoot(0x0)/Pci(0x12,0x0)", "\\second\\path.efi"]);
  assert.deepEqual(cfg.entries.filter((e) => e.type === "Firmware").map((e) => e.description), ["UiApp", "EFI Internal Shell"]);
});

test("mapping: DVD, second controller, wrong LUN/target, NIC with another MAC, other slots", () => {
  const map = (t: string) => mapDevicePath(devicePathFromText(t), LAYOUT);
  assert.equal(map("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x1)")?.ref, "scsi0:1");
  assert.deepEqual(map("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x1)"), { kind: "scsi", controller: 0, location: 1, deviceKind: "dvd", ref: "scsi0:1" });
  assert.equal(map("PciRoot(0x0)/Pci(0x4,0x0)/Scsi(0x0,0x3)/HD(1,GPT,1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9,0x800,0x100000)/\\EFI\\x.efi")?.ref, "scsi1:3");
  assert.equal(map("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x2)"), null, "no such LUN");
  assert.equal(map("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x1,0x0)"), null, "target 1 is not used");
  assert.equal(map("PciRoot(0x0)/Pci(0x3,0x1)/Scsi(0x0,0x0)"), null, "function 1");
  assert.equal(map("PciRoot(0x1)/Pci(0x3,0x0)/Scsi(0x0,0x0)"), null, "another root bridge");
  assert.equal(map("PciRoot(0x0)/Pci(0x9,0x0)/MAC(00155D000002,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)")?.ref, "nic1");
  assert.equal(map("PciRoot(0x0)/Pci(0x9,0x0)/MAC(00155D0000AA,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)"), null, "MAC changed");
  assert.equal(map("PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x0,0xFFFF,0x0)"), null);
  assert.equal(map("\\EFI\\BOOT\\BOOTX64.EFI"), null);
  assert.equal(map("PcieRoot(0x0)/Pci(0x8,0x0)")?.ref, "nic0");
});

test("classification rules: marker decides File vs Drive/Network; only the firmware's own volume is Firmware", () => {
  const cls = (path: string, auto: boolean, attributes = 1): string =>
    describeBootOption(1, encodeLoadOption(makeLoadOption({ description: "x", path, attributes, ...(auto ? { optionalData: autoCreatedMarker() } : {}) })), LAYOUT, true).type;
  assert.equal(cls("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)", true), "Drive");
  assert.equal(cls("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)", false), "File");
  assert.equal(cls("PciRoot(0x0)/Pci(0x8,0x0)/MAC(00155D000001,0x1)/IPv6(::,0x0,Static,::,0x40,::)", true), "Network");
  assert.equal(cls("Uri(http://example/boot.efi)", true), "Network");
  assert.equal(cls("Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)", false), "Firmware");
  assert.equal(cls("MemoryMapped(0xB,0x900000,0x10FFFFF)/FvFile(462CAA21-7614-4503-836E-8AB6F4662331)", false, 0x109), "Firmware");
  // F.16: an OS-made application entry on a disk is File, whatever its category.
  assert.equal(cls("\\EFI\\tool.efi", false, 0x101), "File");
  assert.equal(cls("HD(1,GPT,1C2A3B4D-5E6F-4071-8293-A4B5C6D7E8F9,0x800,0x100000)/\\EFI\\BOOT\\mmx64.efi", false, 0x101), "File");
});

test("F.18: each entry carries its hidden flag and its optional data (length and hex)", () => {
  const cfg = readBootConfiguration(parseVarStore(fixture("ovmf4m.fd")), LAYOUT);
  const uiApp = cfg.entries.find((e) => e.description === "UiApp")!;
  assert.equal(uiApp.hidden, true);
  assert.equal(uiApp.optionalDataLength, 0);
  assert.equal(uiApp.optionalDataHex, "");
  const disk = cfg.entries.find((e) => e.type === "Drive")!;
  assert.equal(disk.hidden, false);
  assert.equal(disk.optionalDataLength, 16);
  assert.equal(disk.optionalDataHex, "4eac0881119f594d850ee21a522c59b2", "edk2's auto-created marker, as stored");
});

test("undecodable options are Unknown (and still listed); BootOrder entries without Boot#### and repeated ones are reported", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  s.set("Boot0009", "8be4df61-93ca-11d2-aa0d-00e098032b8c", 7, Uint8Array.of(1, 0, 0, 0, 200, 0, 65, 0, 0, 0));
  s.set("Boot000A", "8be4df61-93ca-11d2-aa0d-00e098032b8c", 7, Uint8Array.of(1, 0, 0, 0, 4, 0, 65, 0, 0, 0, 1, 1, 3, 0));
  writeBootOrder(s, [0x20, 9, ...readBootOrder(s)!, 9, 0x20]);
  const cfg = readBootConfiguration(s, LAYOUT);
  assert.deepEqual(cfg.missing, [0x20]);
  assert.deepEqual(cfg.duplicates, [{ id: 0x20, positions: [0, 10] }, { id: 9, positions: [1, 9] }]);
  const bad = cfg.entries.find((e) => e.id === 9)!;
  assert.equal(bad.type, "Unknown");
  assert.match(bad.error ?? "", /FilePathListLength/);
  const orphan = cfg.entries.find((e) => e.id === 10)!;
  assert.equal(orphan.type, "Unknown");
  assert.equal(orphan.inBootOrder, false);
  assert.equal(cfg.entries.at(-1)!.id, 10, "entries outside BootOrder come last");
});

test("layout input is validated", () => {
  const s = parseVarStore(fixture("ovmf2m.fd"));
  const bad = { ...LAYOUT, nics: [{ index: 0, pciSlot: 8, mac: "nope", ref: "x" }] };
  assert.throws(() => readBootConfiguration(s, bad), (e: unknown) => e instanceof BootError && e.code === "BAD_LAYOUT");
  assert.equal(readBootConfiguration(s, EMPTY_LAYOUT).entries[1]!.device, null);
});
