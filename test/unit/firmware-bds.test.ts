/**
 * vmhost's model of OVMF's boot manager against real boots (test/fixtures/firmware/
 * bds-experiments.ts: OVMF 2022.11, 2 MiB build, a blank SCSI disk and a virtio-net adapter;
 * each store was changed with the codec, booted until the first boot attempt, and kept):
 *   - what recreatedAtBoot says would come back does come back, whether it was deleted, made
 *     inactive or hidden, or taken out of BootOrder: a prune of it cannot stick;
 *   - the device entries planDeviceEntries predicts are byte for byte the ones OVMF made, and
 *     vmhost never takes the number of a Boot#### outside BootOrder (OVMF does, and destroys it);
 *   - a store of another build than the code is refused by checkVarStoreForFirmware, and OVMF
 *     indeed persisted nothing in it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  checkVarStoreForFirmware, GUIDS, listBootOptionIds, OVMF_FLASH_BUILDS, parseVarStore, planDeviceEntries, readBootConfiguration,
  readBootOption, readBootOptionBytes, readBootOrder, recreatedAtBoot, VarStoreError, type FirmwareDeviceLayout, type VarStore,
} from "../../src/firmware/index.js";
import { fixture, fixtureText } from "../fixtures/firmware/helpers.js";
import { EXPERIMENTS, MMX_ENTRY } from "../fixtures/firmware/bds-experiments.js";

/** The devices of the experiments' QEMU command line, as vmhost's engine describes them. */
const LAYOUT: FirmwareDeviceLayout = {
  scsiControllers: [{ controller: 0, pciSlot: 3 }],
  scsiDevices: [{ controller: 0, location: 0, kind: "disk", ref: "SCSI 0:0" }],
  nics: [{ index: 0, pciSlot: 8, mac: "00:15:5D:00:00:01", ref: "Network Adapter" }],
};

/** The store an experiment booted with (rebuilt from its recipe) and the one OVMF left. */
function experiment(name: string): { before: VarStore; after: VarStore; original: VarStore } {
  const e = EXPERIMENTS.find((x) => x.name === name)!;
  const before = parseVarStore(fixture(e.from));
  e.prepare(before);
  return { before, after: parseVarStore(fixture(`bds-${name}.fd`)), original: parseVarStore(fixture(e.from)) };
}

const hex = (b: Uint8Array | undefined): string => (b === undefined ? "-" : Buffer.from(b).toString("hex"));

/** Numbers in BootOrder whose Boot#### has exactly these bytes. */
function inOrderWithBytes(s: VarStore, bytes: Uint8Array): number[] {
  return (readBootOrder(s) ?? []).filter((id) => hex(readBootOptionBytes(s, id)) === hex(bytes));
}

test("an entry recreatedAtBoot names comes back after OVMF boots, however it was pruned", () => {
  const { original } = experiment("pruned");
  // ovmf2m: 0 UiApp, 1 disk, 2 PXEv4, 3 PXEv6, 4 HTTPv4, 5 HTTPv6, 6 Shell; all six device
  // entries and both firmware applications are ones OVMF makes by itself.
  const recreated = recreatedAtBoot(original, LAYOUT);
  assert.deepEqual([...recreated.keys()].sort(), [0, 1, 2, 3, 4, 5, 6]);
  const cases: [string, number[]][] = [
    ["pruned", [0, 1, 6]], // deleted and out of BootOrder
    ["inactive", [1, 6]], // ACTIVE cleared / HIDDEN set
    ["outside", [1]], // kept, but out of BootOrder
  ];
  for (const [name, ids] of cases) {
    const { before, after } = experiment(name);
    for (const id of ids) {
      const bytes = readBootOptionBytes(original, id)!;
      assert.equal(inOrderWithBytes(before, bytes).length, 0, `${name}: Boot${id} pruned before the boot`);
      assert.equal(inOrderWithBytes(after, bytes).length, 1, `${name}: OVMF made Boot${id} again, active, in BootOrder`);
      const at = readBootOrder(after)!.indexOf(inOrderWithBytes(after, bytes)[0]!);
      assert.ok(at >= readBootOrder(before)!.filter((x) => !ids.includes(x)).length, `${name}: at the end of BootOrder`);
    }
  }
  // The entries nothing re-creates keep their place: no device or firmware entry was left out
  // in "outside" but the disk, and the others are untouched.
  const { before, after } = experiment("outside");
  assert.deepEqual(readBootOrder(after)!.slice(0, readBootOrder(before)!.length), readBootOrder(before));
});

test("planDeviceEntries predicts the bytes OVMF writes and never reuses the number of an entry outside BootOrder", () => {
  for (const name of ["pruned", "inactive", "outside", "clobber"]) {
    const { before, after } = experiment(name);
    const plan = planDeviceEntries(before, LAYOUT, "IPv4");
    const disk = plan.added.find((a) => a.ref === "SCSI 0:0") ?? plan.rewritten.find((w) => w.to.includes("HARDDISK"));
    if (name === "outside") {
      // The disk's entry still exists outside BootOrder: the plan puts it back at the end (as OVMF did).
      assert.equal(disk, undefined);
      assert.deepEqual(plan.bootOrder.slice(-1), [1]);
      // (The runs had no fw_cfg protocol switches, so OVMF also kept the IPv6 entries vmhost removes for IPv4.)
      assert.deepEqual(plan.bootOrder, readBootOrder(after)!.filter((id) => !plan.removed.some((r) => r.id === id)));
      continue;
    }
    assert.ok(disk !== undefined, name);
    assert.equal(inOrderWithBytes(after, disk.bytes).length, 1, `${name}: OVMF wrote the bytes vmhost planned for the disk`);
  }
  // "clobber": an OS-made entry sat at Boot0001 outside BootOrder. OVMF gave the disk's new
  // entry the lowest number BootOrder and BootNext do not use, 0001, and destroyed it.
  const { before, after } = experiment("clobber");
  assert.equal(readBootOption(before, 1)?.description, MMX_ENTRY.description);
  assert.equal(readBootOption(after, 1)?.description, "UEFI QEMU QEMU HARDDISK ");
  const plan = planDeviceEntries(before, LAYOUT, "IPv4");
  const disk = plan.added.find((a) => a.ref === "SCSI 0:0")!;
  const kept = listBootOptionIds(before).filter((id) => !plan.removed.some((r) => r.id === id));
  assert.ok(kept.includes(1) && !kept.includes(disk.id), `vmhost takes a free number (${disk.id}), not 0001`);
  assert.equal(readBootConfiguration(before, LAYOUT).entries.find((e) => e.id === 1)?.type, "File");
});

test("a store of the 2 MiB build with the 4 MiB code is refused; OVMF indeed kept nothing in it", () => {
  const { before, after } = experiment("mismatch");
  const code4m = OVMF_FLASH_BUILDS.find((b) => b.name === "4M")!.codeSize;
  assert.throws(() => checkVarStoreForFirmware(before, code4m), (e: unknown) => e instanceof VarStoreError && e.code === "FIRMWARE_MISMATCH");
  // OVMF booted (it tried the disk: bds-mismatch.console.txt) with its variables in RAM only.
  assert.deepEqual(after.toBuffer(), before.toBuffer());
  assert.equal(after.get("BootOrder", GUIDS.globalVariable), undefined);
  assert.match(fixtureText("bds-mismatch.console.txt"), /failed to load Boot0001 "UEFI QEMU QEMU HARDDISK "/);
});
