import { test } from "node:test";
import assert from "node:assert/strict";
import {
  BootError, makeLoadOption, parseBootTarget, parseVarStore, readBootConfiguration, readBootNext, readBootOption, readBootOptionBytes, readBootOrder,
  resolveBootTarget, setBootOrder, setFirstBootDevice, syncDeviceEntries, writeBootNext, writeBootOption, writeBootOrder,
  type FirmwareDeviceLayout,
} from "../../src/firmware/index.js";
import { fixture } from "../fixtures/firmware/helpers.js";
import { MMX_ENTRY } from "../fixtures/firmware/bds-experiments.js";

const LAYOUT: FirmwareDeviceLayout = {
  scsiControllers: [{ controller: 0, pciSlot: 3 }],
  scsiDevices: [{ controller: 0, location: 0, kind: "disk", ref: "SCSI 0:0" }],
  nics: [{ index: 0, pciSlot: 8, mac: "00:15:5D:00:00:01", ref: "Network Adapter" }],
};

function store() {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  syncDeviceEntries(s, LAYOUT, "IPv4"); // BootOrder 0000 UiApp, 0001 disk, 0002 PXEv4, 0004 HTTPv4, 0006 Shell
  return s;
}

test("targets: Boot#### ids and devices (an adapter stands for its PXE and HTTP entries)", () => {
  const s = store();
  assert.deepEqual(parseBootTarget("Boot0004"), { kind: "id", id: 4 });
  assert.deepEqual(parseBootTarget("000a"), { kind: "id", id: 10 });
  assert.deepEqual(parseBootTarget("Network Adapter"), { kind: "device", ref: "Network Adapter" });
  assert.deepEqual(resolveBootTarget(s, LAYOUT, parseBootTarget("Network Adapter")), [2, 4]);
  assert.deepEqual(resolveBootTarget(s, LAYOUT, parseBootTarget("SCSI 0:0")), [1]);
  assert.throws(() => resolveBootTarget(s, LAYOUT, parseBootTarget("Boot0077")), BootError);
  assert.throws(() => resolveBootTarget(s, LAYOUT, parseBootTarget("SCSI 0:5")), /no boot entry points at/);
});

test("--first-boot-device: the device's entries go first, the rest keep their order", () => {
  const s = store();
  setFirstBootDevice(s, [2, 4]);
  assert.deepEqual(readBootOrder(s), [2, 4, 0, 1, 6]);
});

test("--boot-order: entries left out move to the end (Hyper-V would delete them)", () => {
  const s = store();
  const r = setBootOrder(s, LAYOUT, [2]);
  assert.deepEqual(r.order, [2, 0, 1, 4, 6]);
  assert.deepEqual(r.movedToEnd, [0, 1, 4, 6]);
  assert.deepEqual(r.deleted, []);
  assert.equal(readBootConfiguration(s, LAYOUT).entries.length, 5);
});

test("--prune deletes what is left out, except File entries (need --prune-files, then named) and what OVMF re-creates", () => {
  const s = parseVarStore(fixture("ovmf4m-custom.fd"));
  const files = readBootConfiguration(s).entries.filter((e) => e.type === "File").map((e) => e.id);
  const r = setBootOrder(s, LAYOUT, [0], { prune: true, protocol: "IPv4" });
  // Boot0006 is OVMF's EFI Internal Shell: deleting it would not stick (bds-experiments "pruned").
  assert.deepEqual(r.deleted, []);
  assert.deepEqual(r.keptRecreated.map((k) => k.id), [6]);
  assert.match(r.keptRecreated[0]!.reason, /EFI Internal Shell again at each boot/);
  assert.deepEqual(r.keptFiles, files);
  assert.deepEqual(readBootOrder(s), [0, ...files, 6]);
  const r2 = setBootOrder(s, LAYOUT, [0], { prune: true, pruneFiles: true });
  assert.deepEqual(r2.deleted.map((d) => d.id), files);
  assert.ok(r2.deleted.every((d) => d.type === "File" && d.description.startsWith("vmhost")));
  assert.deepEqual(readBootOrder(s), [0, 6]);
});

test("F.15: --prune of an attached device's entry does not delete what OVMF would re-create; a gone device's entry is deleted", () => {
  const s = store(); // BootOrder 0000 UiApp, 0001 disk, 0002 PXEv4, 0004 HTTPv4, 0006 Shell
  // An auto-created entry of a device the VM does not have (the Secure Boot template's SATA entry).
  const sata = parseVarStore(fixture("pristine-OVMF_VARS.ms.fd"));
  const sataId = readBootConfiguration(sata).entries.find((e) => e.firmwarePath.includes("Sata("))!.id;
  s.set("Boot0009", "8be4df61-93ca-11d2-aa0d-00e098032b8c", 7, readBootOptionBytes(sata, sataId)!);
  writeBootOrder(s, [...readBootOrder(s)!, 9]);
  const r = setBootOrder(s, LAYOUT, [1], { prune: true, protocol: "IPv4" });
  assert.deepEqual(r.deleted.map((d) => [d.id, d.type]), [[9, "Drive"]], "only the entry nothing re-creates is deleted");
  assert.deepEqual(r.keptRecreated.map((k) => k.id), [0, 2, 4, 6]);
  for (const k of r.keptRecreated.filter((x) => x.id === 2 || x.id === 4)) assert.match(k.reason, /remove Network Adapter from the VM/);
  assert.deepEqual(readBootOrder(s), [1, 0, 2, 4, 6]);
  // The same prune asked again is stable: the store does not change.
  const before = s.toBuffer();
  setBootOrder(s, LAYOUT, [1], { prune: true, protocol: "IPv4" });
  assert.deepEqual(s.toBuffer(), before);
});

test("F.16: an OS-made application entry on a disk (0x101, HD()/\\EFI\\BOOT\\mmx64.efi) is File: --prune keeps it without --prune-files", () => {
  const s = store();
  writeBootOption(s, 7, makeLoadOption(MMX_ENTRY));
  writeBootOrder(s, [...readBootOrder(s)!, 7]);
  assert.equal(readBootConfiguration(s, LAYOUT).entries.find((e) => e.id === 7)?.type, "File");
  const r = setBootOrder(s, LAYOUT, [1], { prune: true, protocol: "IPv4" });
  assert.deepEqual(r.keptFiles, [7]);
  assert.ok(!r.deleted.some((d) => d.id === 7));
  assert.ok(readBootOption(s, 7) !== undefined);
  const r2 = setBootOrder(s, LAYOUT, [1], { prune: true, pruneFiles: true, protocol: "IPv4" });
  assert.deepEqual(r2.deleted.map((d) => d.id), [7]);
});

test("F.17: --boot-order leaves a Boot#### outside BootOrder (a BootNext target, one an OS took out) outside unless named", () => {
  const s = store();
  writeBootOption(s, 7, makeLoadOption(MMX_ENTRY));
  writeBootOption(s, 8, makeLoadOption({ description: "one-shot", path: "HD(2,MBR,0x1234ABCD,0x800,0x2000)/\\EFI\\x.efi" }));
  writeBootNext(s, 8);
  for (const prune of [false, true]) {
    const r = setBootOrder(s, LAYOUT, [2], { prune, protocol: "IPv4" });
    assert.ok(!r.order.includes(7) && !r.order.includes(8), `prune ${prune}: ${r.order}`);
    assert.ok(readBootOption(s, 7) !== undefined && readBootOption(s, 8) !== undefined);
    assert.equal(readBootNext(s), 8);
  }
  const named = setBootOrder(s, LAYOUT, [7, 2]);
  assert.deepEqual(named.order.slice(0, 2), [7, 2]);
  assert.ok(!named.order.includes(8));
});
