import { test } from "node:test";
import assert from "node:assert/strict";
import {
  applyDeviceEntryPlan, bootOptionName, describeBootEntries, expectedDeviceEntries, parseVarStore, planDeviceEntries, readBootConfiguration,
  readBootOptionBytes, readBootOrder, setBootOrder, syncDeviceEntries, VarStoreError, writeBootNext, writeBootOrder,
  type FirmwareDeviceLayout,
} from "../../src/firmware/index.js";
import { buildVarStoreImage, fixture } from "../fixtures/firmware/helpers.js";

/** The devices of the fixture VM (make-fixtures.ts): disk at SCSI 0:0 (slot 3), NIC 00:15:5D:00:00:01 at slot 8. */
const LAYOUT: FirmwareDeviceLayout = {
  scsiControllers: [{ controller: 0, pciSlot: 3 }],
  scsiDevices: [{ controller: 0, location: 0, kind: "disk", ref: "SCSI 0:0" }],
  nics: [{ index: 0, pciSlot: 8, mac: "00:15:5D:00:00:01", ref: "Network Adapter" }],
};

const eq = (a: Uint8Array | undefined, b: Uint8Array): boolean => a !== undefined && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

test("the entries vmhost predicts are byte for byte the ones OVMF wrote (disk, PXE and HTTP, v4 and v6)", () => {
  const store = parseVarStore(fixture("ovmf4m.fd"));
  const v4 = expectedDeviceEntries(LAYOUT, "IPv4");
  const v6 = expectedDeviceEntries(LAYOUT, "IPv6");
  assert.deepEqual(v4.map((e) => e.description), ["UEFI QEMU QEMU HARDDISK ", "UEFI PXEv4 (MAC:00155D000001)", "UEFI HTTPv4 (MAC:00155D000001)"]);
  // OVMF's Boot0001 disk, 0002 PXEv4, 0003 PXEv6, 0004 HTTPv4, 0005 HTTPv6.
  assert.ok(eq(readBootOptionBytes(store, 1), v4[0]!.bytes));
  assert.ok(eq(readBootOptionBytes(store, 2), v4[1]!.bytes));
  assert.ok(eq(readBootOptionBytes(store, 4), v4[2]!.bytes));
  assert.ok(eq(readBootOptionBytes(store, 3), v6[1]!.bytes));
  assert.ok(eq(readBootOptionBytes(store, 5), v6[2]!.bytes));
});

test("DVD drives come first and equal descriptions get OVMF's ' 2' suffix; LUNs after a gap are not seen", () => {
  const layout: FirmwareDeviceLayout = {
    scsiControllers: [{ controller: 0, pciSlot: 3 }, { controller: 1, pciSlot: 4 }],
    scsiDevices: [
      { controller: 0, location: 0, kind: "disk", ref: "SCSI 0:0" },
      { controller: 0, location: 1, kind: "dvd", ref: "SCSI 0:1" },
      { controller: 0, location: 2, kind: "dvd", ref: "SCSI 0:2" },
      { controller: 0, location: 4, kind: "disk", ref: "SCSI 0:4" },
      { controller: 1, location: 0, kind: "disk", ref: "SCSI 1:0" },
    ],
    nics: [],
  };
  const e = expectedDeviceEntries(layout, "IPv4");
  assert.deepEqual(
    e.map((x) => [x.description, x.path]),
    [
      ["UEFI QEMU QEMU CD-ROM ", "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x1)"],
      ["UEFI QEMU QEMU CD-ROM  2", "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x2)"],
      ["UEFI QEMU QEMU HARDDISK ", "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)"],
      ["UEFI QEMU QEMU HARDDISK  2", "PciRoot(0x0)/Pci(0x4,0x0)/Scsi(0x0,0x0)"],
    ],
  );
});

test("sync on a store OVMF made: the other protocol's entries go, the rest stays where it was", () => {
  const store = parseVarStore(fixture("ovmf4m.fd"));
  const r = syncDeviceEntries(store, LAYOUT, "IPv4");
  assert.deepEqual(r.added, []);
  assert.deepEqual(r.removed.map((x) => x.description), ["UEFI PXEv6 (MAC:00155D000001)", "UEFI HTTPv6 (MAC:00155D000001)"]);
  assert.deepEqual(readBootOrder(store), [0, 1, 2, 4, 6]);
  // A second run changes nothing.
  const again = syncDeviceEntries(store, LAYOUT, "IPv4");
  assert.deepEqual([again.added, again.removed, again.rewritten], [[], [], []]);
});

test("a protocol change rewrites each adapter's entries in place, keeping their position", () => {
  const store = parseVarStore(fixture("ovmf4m.fd"));
  syncDeviceEntries(store, LAYOUT, "IPv4");
  const r = syncDeviceEntries(store, LAYOUT, "IPv6");
  assert.deepEqual(r.rewritten.map((x) => [x.id, x.to]), [[2, "UEFI PXEv6 (MAC:00155D000001)"], [4, "UEFI HTTPv6 (MAC:00155D000001)"]]);
  assert.deepEqual(readBootOrder(store), [0, 1, 2, 4, 6]);
  const conf = readBootConfiguration(store, LAYOUT);
  assert.equal(conf.entries.find((e) => e.id === 2)?.network?.protocol, "PXEv6");
});

test("a new device's entry goes to the bottom; a removed device's entries go; File entries stay", () => {
  const store = parseVarStore(fixture("ovmf4m-custom.fd"));
  const before = readBootConfiguration(store);
  const files = before.entries.filter((e) => e.type === "File").map((e) => e.id);
  assert.ok(files.length > 10);
  const layout: FirmwareDeviceLayout = {
    ...LAYOUT,
    scsiDevices: [...LAYOUT.scsiDevices, { controller: 0, location: 1, kind: "disk", ref: "SCSI 0:1" }],
    nics: [],
  };
  const r = syncDeviceEntries(store, layout, "IPv4");
  // This store has no disk entries at all: both disks get theirs, at the end, in OVMF's order.
  assert.deepEqual(r.added.map((a) => a.ref), ["SCSI 0:0", "SCSI 0:1"]);
  const order = readBootOrder(store)!;
  assert.deepEqual(order.slice(-2), r.added.map((a) => a.id), "the new disks are last");
  const after = readBootConfiguration(store, layout);
  for (const id of files) assert.ok(after.entries.some((e) => e.id === id && e.type === "File"), `${bootOptionName(id)} kept`);
  assert.ok(!after.entries.some((e) => e.type === "Network"), "the adapter's entries are gone with it");
});

test("a fresh store gets entries for every device, in OVMF's order", () => {
  const store = parseVarStore(fixture("pristine-OVMF_VARS.fd"));
  const r = syncDeviceEntries(store, LAYOUT, "IPv4");
  assert.deepEqual(r.added.map((a) => [bootOptionName(a.id), a.ref]), [
    ["Boot0000", "SCSI 0:0"],
    ["Boot0001", "Network Adapter"],
    ["Boot0002", "Network Adapter"],
  ]);
  assert.deepEqual(readBootOrder(store), [0, 1, 2]);
});

test("an adapter that moves to another slot (an earlier one was removed) keeps its entries' place", () => {
  const store = parseVarStore(fixture("ovmf4m.fd"));
  const two: FirmwareDeviceLayout = { ...LAYOUT, nics: [...LAYOUT.nics, { index: 1, pciSlot: 9, mac: "00:15:5D:00:00:02", ref: "Network Adapter 2" }] };
  syncDeviceEntries(store, two, "IPv4");
  const order = readBootOrder(store)!;
  const moved: FirmwareDeviceLayout = { ...LAYOUT, nics: [{ index: 0, pciSlot: 8, mac: "00:15:5D:00:00:02", ref: "Network Adapter 2" }] };
  const r = syncDeviceEntries(store, moved, "IPv4");
  assert.deepEqual(r.added, []);
  assert.equal(r.rewritten.length, 2);
  assert.deepEqual(r.removed.map((x) => x.description), ["UEFI PXEv4 (MAC:00155D000001)", "UEFI HTTPv4 (MAC:00155D000001)"]);
  const conf = readBootConfiguration(store, moved);
  const net = conf.entries.filter((e) => e.type === "Network");
  assert.ok(net.every((e) => e.device?.ref === "Network Adapter 2" && e.firmwarePath.startsWith("PciRoot(0x0)/Pci(0x8,0x0)/MAC(00155D000002")));
  assert.deepEqual(readBootOrder(store), order.filter((id) => conf.entries.some((e) => e.id === id)));
});

test("F.15: planDeviceEntries changes nothing; applying the plan is what syncDeviceEntries does", () => {
  const layouts: [string, FirmwareDeviceLayout, "IPv4" | "IPv6"][] = [
    ["ovmf4m.fd", LAYOUT, "IPv4"],
    ["ovmf4m.fd", LAYOUT, "IPv6"],
    ["ovmf4m-custom.fd", { ...LAYOUT, scsiDevices: [...LAYOUT.scsiDevices, { controller: 0, location: 1, kind: "dvd", ref: "SCSI 0:1" }] }, "IPv4"],
    ["pristine-OVMF_VARS.fd", LAYOUT, "IPv4"],
    ["ovmf2m.fd", { ...LAYOUT, nics: [] }, "IPv4"],
  ];
  for (const [name, layout, protocol] of layouts) {
    const bytes = fixture(name);
    const store = parseVarStore(bytes);
    const plan = planDeviceEntries(store, layout, protocol);
    assert.deepEqual(store.toBuffer(), bytes, `${name}: planning wrote nothing`);
    const viaPlan = applyDeviceEntryPlan(store, plan);
    const direct = parseVarStore(bytes);
    const viaSync = syncDeviceEntries(direct, layout, protocol);
    assert.deepEqual(viaPlan, viaSync, name);
    assert.deepEqual(readBootConfiguration(store, layout), readBootConfiguration(direct, layout), name);
    assert.deepEqual(readBootOrder(store), plan.bootOrderChanged ? plan.bootOrder : readBootOrder(parseVarStore(bytes)), name);
    assert.equal(planDeviceEntries(store, layout, protocol).empty, true, `${name}: nothing left to do`);
  }
});

test("F.15: a plan is made even when its entries would not fit; applying it then fails with STORE_FULL", () => {
  const store = parseVarStore(buildVarStoreImage(200));
  const plan = planDeviceEntries(store, LAYOUT, "IPv4");
  assert.equal(plan.added.length, 3);
  assert.throws(() => applyDeviceEntryPlan(store, plan), (e: unknown) => e instanceof VarStoreError && e.code === "STORE_FULL");
});

test("F.15: the view shows what the store holds and marks what vmhost will add, rewrite or remove as pending", () => {
  // A new VM's store before its first start: nothing stored yet, three entries pending.
  const fresh = parseVarStore(fixture("pristine-OVMF_VARS.fd"));
  const v = describeBootEntries(fresh, LAYOUT, { plan: planDeviceEntries(fresh, LAYOUT, "IPv4"), protocol: "IPv4" });
  assert.equal(v.bootOrder, null);
  assert.deepEqual(v.rows.map((r) => [r.name, r.status, r.pending?.action, r.entry?.type]), [
    ["Boot0000", "pending", "add", "Drive"],
    ["Boot0001", "pending", "add", "Network"],
    ["Boot0002", "pending", "add", "Network"],
  ]);
  assert.deepEqual(v.pendingBootOrder, [0, 1, 2]);
  // A store OVMF made, the VM now set to IPv4 only: the IPv6 entries are still stored, pending removal.
  const booted = parseVarStore(fixture("ovmf4m.fd"));
  const w = describeBootEntries(booted, LAYOUT, { plan: planDeviceEntries(booted, LAYOUT, "IPv4"), protocol: "IPv4" });
  assert.deepEqual(w.rows.map((r) => [r.id, r.status, r.position, r.pending?.action ?? null]), [
    [0, "stored", 0, null], [1, "stored", 1, null], [2, "stored", 2, null], [3, "stored", 3, "remove"],
    [4, "stored", 4, null], [5, "stored", 5, "remove"], [6, "stored", 6, null],
  ]);
  assert.deepEqual(w.pendingBootOrder, [0, 1, 2, 4, 6]);
  // After --boot-order "SCSI 0:0" --prune on an Off VM: what the store holds, and why the rest stayed.
  syncDeviceEntries(booted, LAYOUT, "IPv4");
  const r = setBootOrder(booted, LAYOUT, [1], { prune: true, protocol: "IPv4" });
  const after = describeBootEntries(booted, LAYOUT, { plan: planDeviceEntries(booted, LAYOUT, "IPv4"), protocol: "IPv4" });
  assert.deepEqual(after.rows.map((x) => x.id), [1, ...r.keptRecreated.map((k) => k.id)]);
  assert.ok(after.rows.every((x) => x.pending === null), "nothing pending: the store already is what vmhost keeps");
  assert.ok(after.rows.slice(1).every((x) => x.recreatedAtBoot !== null));
});

test("F.18: BootOrder numbers without a Boot#### and repeated numbers are rows of their own, not dropped", () => {
  const store = parseVarStore(fixture("ovmf4m.fd"));
  writeBootOrder(store, [1, 0x30, 2, 1, 0x30]);
  writeBootNext(store, 0x30);
  const v = describeBootEntries(store, LAYOUT);
  assert.deepEqual(v.rows.map((r) => [r.name, r.position, r.status, r.duplicateOf]), [
    ["Boot0001", 0, "stored", null],
    ["Boot0030", 1, "missing", null],
    ["Boot0002", 2, "stored", null],
    ["Boot0001", 3, "duplicate", 0],
    ["Boot0030", 4, "duplicate", 1],
    ["Boot0000", null, "stored", null],
    ["Boot0003", null, "stored", null],
    ["Boot0004", null, "stored", null],
    ["Boot0005", null, "stored", null],
    ["Boot0006", null, "stored", null],
  ]);
  assert.equal(v.rows[1]!.entry, null);
  assert.equal(v.rows[3]!.entry?.description, "UEFI QEMU QEMU HARDDISK ");
  assert.equal(v.bootNext, 0x30);
  assert.equal(v.rows.find((r) => r.id === 0)!.entry!.hidden, true);
  assert.equal(v.rows.find((r) => r.id === 1)!.entry!.optionalDataLength, 16);
});
