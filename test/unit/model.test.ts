import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mkdir } from "node:fs/promises";
import { ConfigStore, DamagedConfigError, RuleError, serializeConfig, upgradeConfig, validateVmName, validateVm, firstFreeSlot, firstFreeAdapterSlot } from "../../src/model/index.js";
import { sampleVm } from "../helpers/sample-vm.js";

const HOST = { logicalProcessors: 2, memoryMiB: 4096 };


function ruleOf(fn: () => void): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof RuleError) return err.rule;
    throw err;
  }
  return "(no error)";
}

test("names as Hyper-V takes them: 1-100 printable characters, spaces and any script included", () => {
  for (const ok of ["a", "Boot Order Example", "Test VM", "../x", "a/b", "-rf", "Ünïcødé Сервер 東京", "x".repeat(100), "👩‍💻 dev", "."]) {
    assert.equal(validateVmName(ok), ok);
  }
  for (const bad of ["", " lead", "trail ", "\ttab", "x".repeat(101), "a\0b", "line\nbreak", "bell\u0007", "rtl\u202eoverride", "lone\ud800"]) {
    assert.throws(() => validateVmName(bad), /invalid/, JSON.stringify(bad));
  }
});

test("names are unique ignoring case, by rule", () => {
  const a = sampleVm({ name: "Boot Order Example" });
  const b = sampleVm({ name: "boot order example", id: "1b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11" });
  assert.equal(ruleOf(() => validateVm(b, HOST, [a])), "vm-name-in-use");
  assert.doesNotThrow(() => validateVm(sampleVm({ name: "Boot Order Example 2", id: b.id }), HOST, [a]));
});

test("adapters keep their PCI slot: the first free one is given, removing one frees only its own", () => {
  const nic = (slot: number) => ({ name: `n${slot}`, type: "Synthetic" as const, macAddress: `00:15:5D:00:00:${slot.toString(16).padStart(2, "0").toUpperCase()}`, dynamicMac: true, switchName: "s", pciSlot: slot });
  const vm = sampleVm({ networkAdapters: [nic(8), nic(9), nic(10)] });
  vm.networkAdapters.splice(0, 1);
  assert.deepEqual(vm.networkAdapters.map((n) => n.pciSlot), [9, 10]);
  assert.equal(firstFreeAdapterSlot(vm), 8);
  assert.equal(ruleOf(() => validateVm(sampleVm({ networkAdapters: [nic(9), { ...nic(9), name: "x", macAddress: "00:15:5D:00:00:FF" }] }), HOST)), "adapter-slot");
  assert.equal(ruleOf(() => validateVm(sampleVm({ networkAdapters: [nic(31)] }), HOST)), "adapter-slot");
});

test("a format-1 configuration is upgraded: adapters get the slots they had (8 + position)", () => {
  const v1 = { ...JSON.parse(serializeConfig(sampleVm())), formatVersion: 1, networkAdapters: [
    { name: "A", type: "Synthetic", macAddress: "00:15:5D:00:00:01", dynamicMac: true, switchName: "s" },
    { name: "B", type: "Synthetic", macAddress: "00:15:5D:00:00:02", dynamicMac: true, switchName: "s" },
  ] };
  const up = upgradeConfig(v1) as { formatVersion: number; networkAdapters: { pciSlot: number }[] };
  assert.equal(up.formatVersion, 2);
  assert.deepEqual(up.networkAdapters.map((n) => n.pciSlot), [8, 9]);
});

test("rules: generation 2 refuses IDE, legacy adapters; generation 1 takes them", () => {
  const ide = { controllerType: "IDE" as const, controllerNumber: 0, controllerLocation: 0, path: "/d.vhdx", format: "vhdx" as const };
  assert.equal(ruleOf(() => validateVm(sampleVm({ hardDisks: [ide] }), HOST)), "generation-2-no-ide");
  const legacy = { name: "L", type: "Legacy" as const, macAddress: "00:15:5D:00:00:01", dynamicMac: true, switchName: "Default Switch", pciSlot: 8 };
  assert.equal(ruleOf(() => validateVm(sampleVm({ networkAdapters: [legacy] }), HOST)), "generation-2-no-legacy-adapter");
  assert.doesNotThrow(() => validateVm(sampleVm({ generation: 1, hardDisks: [ide], networkAdapters: [legacy] }), HOST));
});

test("rules: generation 2 refuses a floppy drive; generation 1 has one", () => {
  assert.equal(ruleOf(() => validateVm(sampleVm({ floppy: { path: null } }), HOST)), "generation-2-no-floppy");
  assert.doesNotThrow(() => validateVm(sampleVm({ generation: 1, floppy: { path: "/f.vfd" } }), HOST));
});

test("rules: controller limits, slot reuse, adapter limits", () => {
  const disk = (t: "IDE" | "SCSI", c: number, l: number, p = `/d${t}${c}${l}`) => ({ controllerType: t, controllerNumber: c, controllerLocation: l, path: p, format: "raw" as const });
  assert.equal(ruleOf(() => validateVm(sampleVm({ generation: 1, hardDisks: [disk("IDE", 2, 0)] }), HOST)), "ide-limit");
  assert.equal(ruleOf(() => validateVm(sampleVm({ generation: 1, hardDisks: [disk("IDE", 0, 2)] }), HOST)), "ide-limit");
  assert.equal(ruleOf(() => validateVm(sampleVm({ hardDisks: [disk("SCSI", 4, 0)] }), HOST)), "scsi-limit");
  assert.equal(ruleOf(() => validateVm(sampleVm({ hardDisks: [disk("SCSI", 0, 64)] }), HOST)), "scsi-limit");
  assert.doesNotThrow(() => validateVm(sampleVm({ hardDisks: [disk("SCSI", 3, 63)] }), HOST));
  assert.equal(ruleOf(() => validateVm(sampleVm({ hardDisks: [disk("SCSI", 0, 0), disk("SCSI", 0, 0, "/other")] }), HOST)), "slot-in-use");
  const nic = (i: number, type: "Synthetic" | "Legacy") => ({ name: `n${i}`, type, macAddress: `00:15:5D:00:00:${i.toString(16).padStart(2, "0").toUpperCase()}`, dynamicMac: true, switchName: "s", pciSlot: 8 + i });
  assert.equal(ruleOf(() => validateVm(sampleVm({ networkAdapters: Array.from({ length: 9 }, (_, i) => nic(i, "Synthetic")) }), HOST)), "synthetic-adapter-limit");
  assert.equal(ruleOf(() => validateVm(sampleVm({ generation: 1, networkAdapters: Array.from({ length: 5 }, (_, i) => nic(i, "Legacy")) }), HOST)), "legacy-adapter-limit");
  assert.equal(ruleOf(() => validateVm(sampleVm({ generation: 1, dvdDrives: [{ controllerType: "SCSI", controllerNumber: 0, controllerLocation: 0, path: null }] }), HOST)), "generation-1-dvd-on-ide");
});

test("rules: one disk image belongs to one VM; memory and processors checked against the host", () => {
  const d = { controllerType: "SCSI" as const, controllerNumber: 0, controllerLocation: 0, path: "/x/disk.vhdx", format: "vhdx" as const };
  const other = sampleVm({ name: "b", id: "1b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11", hardDisks: [d] });
  assert.equal(ruleOf(() => validateVm(sampleVm({ hardDisks: [d] }), HOST, [other])), "disk-in-use");
  assert.equal(ruleOf(() => validateVm(sampleVm({ processorCount: 3 }), HOST)), "processor-count");
  assert.equal(ruleOf(() => validateVm(sampleVm({ memoryMiB: 8192 }), HOST)), "memory-host");
  assert.equal(ruleOf(() => validateVm(sampleVm({ memoryMiB: 513 }), HOST)), "memory-granularity");
  assert.equal(ruleOf(() => validateVm(sampleVm({ memoryMiB: 16 }), HOST)), "memory-minimum");
});

test("firstFreeSlot fills controller 0 first and reports when full", () => {
  const vm = sampleVm({ generation: 1 });
  assert.deepEqual(firstFreeSlot(vm, "IDE"), { controllerType: "IDE", controllerNumber: 0, controllerLocation: 0 });
  vm.hardDisks.push({ controllerType: "IDE", controllerNumber: 0, controllerLocation: 0, path: "/a", format: "raw" });
  vm.dvdDrives.push({ controllerType: "IDE", controllerNumber: 0, controllerLocation: 1, path: null });
  assert.deepEqual(firstFreeSlot(vm, "IDE"), { controllerType: "IDE", controllerNumber: 1, controllerLocation: 0 });
});

test("store: folders by id, found by id or name (any case); damaged files reported by name and left untouched", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-store-"));
  const store = new ConfigStore(dir, join(dir, "run"), join(dir, "disks"));
  const put = async (vm: ReturnType<typeof sampleVm>, text = serializeConfig(vm)) => {
    await mkdir(store.home(vm.id).dir, { recursive: true });
    await writeFile(store.home(vm.id).config, text);
  };
  const a = sampleVm({ name: "Boot Order Example" });
  await put(a);
  assert.equal((await store.resolve("boot order EXAMPLE")).id, a.id);
  assert.equal((await store.resolve(a.id)).name, "Boot Order Example");
  assert.equal((await store.get(a.id)).memoryMiB, 512);
  await assert.rejects(store.resolve("nothing"), /not found/);

  const broken = sampleVm({ name: "broken", id: "2b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11" });
  await put(broken, '{"formatVersion": 2, "name": "broken", trunc');
  const file = store.home(broken.id).config;
  await assert.rejects(store.get(broken.id), (err: unknown) => err instanceof DamagedConfigError && err.message.includes(file));
  const listed = await store.list();
  assert.deepEqual(listed.map((l) => (l.ok ? l.config.name : `damaged:${l.id}`)), ["Boot Order Example", `damaged:${broken.id}`]);
  assert.equal(await readFile(file, "utf8"), '{"formatVersion": 2, "name": "broken", trunc');

  // A folder copied by hand: its configuration's id is another VM's. Refused as damaged, naming the file.
  const copyId = "3b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11";
  await mkdir(join(dir, copyId), { recursive: true });
  await writeFile(join(dir, copyId, "vm.json"), serializeConfig(sampleVm({ name: "copy", id: a.id })));
  await assert.rejects(store.get(copyId), (err: unknown) => err instanceof DamagedConfigError && err.message.includes(join(dir, copyId, "vm.json")) && /not the id of its folder/.test(err.message));

  // A configuration that is a directory is damaged, by name.
  const dirId = "4b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11";
  await mkdir(join(dir, dirId, "vm.json"), { recursive: true });
  await assert.rejects(store.get(dirId), (err: unknown) => err instanceof DamagedConfigError && err.message.includes(join(dir, dirId, "vm.json")));
  assert.deepEqual((await readdir(dir)).sort(), [a.id, broken.id, copyId, dirId].sort());
});
