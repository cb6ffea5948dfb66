import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigStore, DamagedConfigError, RuleError, validateName, validateVm, firstFreeSlot } from "../../src/model/index.js";
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

test("names: valid names pass; anything that could escape a directory is refused", () => {
  for (const ok of ["a", "web-01", "A.b_c", "x".repeat(64)]) assert.equal(validateName(ok), ok);
  for (const bad of ["", ".", "..", "../x", "a/b", "a b", "x".repeat(65), "-rf", "ä", "a\0b"]) {
    assert.throws(() => validateName(bad), /invalid/, bad);
  }
});

test("rules: generation 2 refuses IDE, legacy adapters; generation 1 takes them", () => {
  const ide = { controllerType: "IDE" as const, controllerNumber: 0, controllerLocation: 0, path: "/d.vhdx", format: "vhdx" as const };
  assert.equal(ruleOf(() => validateVm(sampleVm({ hardDisks: [ide] }), HOST)), "generation-2-no-ide");
  const legacy = { name: "L", type: "Legacy" as const, macAddress: "00:15:5D:00:00:01", dynamicMac: true, switchName: "Default Switch" };
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
  const nic = (i: number, type: "Synthetic" | "Legacy") => ({ name: `n${i}`, type, macAddress: `00:15:5D:00:00:${i.toString(16).padStart(2, "0").toUpperCase()}`, dynamicMac: true, switchName: "s" });
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

test("store: atomic write, reread, damaged file reported by name and left untouched", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-store-"));
  const store = new ConfigStore(dir);
  await store.create(sampleVm());
  assert.equal((await store.get("a")).memoryMiB, 512);
  await assert.rejects(store.create(sampleVm()), /already exists/);
  const vm = await store.get("a");
  vm.memoryMiB = 1024;
  await store.save(vm);
  assert.equal((await store.get("a")).memoryMiB, 1024);
  // no temp files left behind
  assert.deepEqual(await readdir(join(dir, "a")), ["vm.json"]);

  await store.create(sampleVm({ name: "broken", id: "2b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11" }));
  const file = store.configPath("broken");
  await writeFile(file, '{"formatVersion": 1, "name": "broken", trunc');
  await assert.rejects(store.get("broken"), (err: unknown) => err instanceof DamagedConfigError && err.message.includes(file));
  const listed = await store.list();
  assert.deepEqual(
    listed.map((l) => (l.ok ? l.config.name : `damaged:${l.name}`)),
    ["a", "damaged:broken"],
  );
  assert.equal(await readFile(file, "utf8"), '{"formatVersion": 1, "name": "broken", trunc');
});
