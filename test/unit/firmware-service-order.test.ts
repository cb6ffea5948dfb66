import { test } from "node:test";
import assert from "node:assert/strict";
import {
  BootError, parseBootTarget, parseVarStore, readBootConfiguration, readBootOrder, resolveBootTarget, setBootOrder, setFirstBootDevice,
  syncDeviceEntries, type FirmwareDeviceLayout,
} from "../../src/firmware/index.js";
import { fixture } from "../fixtures/firmware/helpers.js";

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

test("--prune deletes what is left out, except File entries, which need --prune-files and are then named", () => {
  const s = parseVarStore(fixture("ovmf4m-custom.fd"));
  const files = readBootConfiguration(s).entries.filter((e) => e.type === "File").map((e) => e.id);
  const r = setBootOrder(s, LAYOUT, [0], { prune: true });
  assert.deepEqual(r.deleted.map((d) => d.id), [6]);
  assert.deepEqual(r.keptFiles, files);
  assert.deepEqual(readBootOrder(s), [0, ...files]);
  const r2 = setBootOrder(s, LAYOUT, [0], { prune: true, pruneFiles: true });
  assert.deepEqual(r2.deleted.map((d) => d.id), files);
  assert.ok(r2.deleted.every((d) => d.type === "File" && d.description.startsWith("vmhost")));
  assert.deepEqual(readBootOrder(s), [0]);
});
