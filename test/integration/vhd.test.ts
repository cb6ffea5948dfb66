import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { ensureAppliance, type Appliance } from "../../src/images/appliance/index.js";
import { BOOT_TIMEOUT_MS, READY, TestHost } from "../helpers/harness.js";

/**
 * The VHD tools through the real CLI (issue 11, "Must show"): a fixed and a dynamic VHD made
 * from the appliance's Gen1 disk (`vhd convert --format vhd`) attach to Gen1 VMs as VHD (QEMU's
 * vpc driver, never raw) and the guest boots from each; the guest writes its disk's last sector
 * and the VHD holds it with its footer intact. `qemu-img check` cannot check vpc images (exit 63,
 * "This image format does not support checks"), so what the guest wrote is compared with what
 * qemu-io reads from the VHD, and every other sector with the source disk. Also: VHDX -> qcow2 ->
 * VHDX keeps every byte; a grown disk is seen by the guest; a differencing disk takes the guest's
 * writes while its parent is never written; disks a running VM holds are refused.
 */
const execFileP = promisify(execFile);
let host: TestHost;
let app: Appliance;
let disks: string;

before(
  async () => {
    app = await ensureAppliance();
    host = await TestHost.create();
    disks = join(host.home, "disks");
    await host.ok(["list"]); // starts the service, which makes the home's folders
  },
  { timeout: 20 * 60_000 },
);
after(async () => {
  await host.cleanup();
});

async function sha256(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

interface Vhd {
  path: string;
  vhdFormat: string;
  vhdType: string;
  size: number;
  parentPath?: string;
  attached: boolean;
  attachedTo?: string;
  usedBy: { vm: string; as: string; running: boolean }[];
}

/** The guest fills the last sector of /dev/`dev` with 0xAB (fsynced); returns the disk's size in sectors. */
async function writeLastSector(vm: string, dev: string): Promise<number> {
  const out = await host.run(
    vm,
    `n=$(cat /sys/block/${dev}/size); dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\\000' '\\253' | dd of=/dev/${dev} bs=512 seek=$((n-1)) count=1 conv=fsync 2>/dev/null && echo wr""ote-${dev}-$n`,
    new RegExp(`wrote-${dev}-\\d+`),
    60_000,
  );
  return Number(new RegExp(`wrote-${dev}-(\\d+)`).exec(out.slice(out.lastIndexOf(`wrote-${dev}-`)))![1]);
}

/** The guest's disks: name -> size in sectors. */
async function devices(vm: string): Promise<Record<string, number>> {
  const out = await host.run(vm, 'echo disks""-$(for d in /sys/block/sd*; do echo -n "$(basename $d)=$(cat $d/size),"; done)-end', /disks-[a-z0-9=,]*-end/);
  const list = /disks-([a-z0-9=,]*)-end/.exec(out.slice(out.lastIndexOf("disks-")))![1]!;
  const pairs = list.split(",").filter(Boolean).map((kv) => kv.split("="));
  return Object.fromEntries(pairs.map(([k, v]) => [k!, Number(v)]));
}

/** qemu-io's read of `length` bytes at `offset` checked against a byte pattern. */
async function holdsPattern(file: string, driver: string, offset: number, length: number, pattern: number): Promise<boolean> {
  const r = await execFileP("qemu-io", ["-f", driver, "-r", "-c", `read -P 0x${pattern.toString(16)} ${offset} ${length}`, file]).catch((e: { stdout: string }) => ({ stdout: e.stdout }));
  return !/Pattern verification failed/.test(r.stdout) && new RegExp(`read ${length}/${length} bytes at offset ${offset}`).test(r.stdout);
}

/** The appliance's Gen1 disk as the guest should leave it: its last sector 0xAB. */
async function expectedAfterWrite(name: string): Promise<string> {
  const expected = join(host.home, `${name}.expected.raw`);
  await copyFile(app.gen1Disk, expected);
  const fh = await open(expected, "r+");
  try {
    const size = (await fh.stat()).size;
    await fh.write(Buffer.alloc(512, 0xab), 0, 512, size - 512);
  } finally {
    await fh.close();
  }
  return expected;
}

test("the tools write only where vmhostd may (its home, VMHOST_STORAGE_DIRS), and say which", { timeout: 60_000 }, async () => {
  const r = await host.cli(["vhd", "new", "/var/tmp/vmhost-travel-not-allowed.vhdx", "--size", "16M"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /outside the directories vmhost writes to \(.*\): vmhostd runs as root/);
  assert.match(r.stderr, /VMHOST_STORAGE_DIRS/);
});

test("a fixed and a dynamic VHD boot a Gen1 VM; the guest's last-sector write lands in the VHD and its footer stays; grow, differencing and in-use rules", { timeout: 900_000 }, async (t) => {
  const fixed = join(disks, "gen1-fixed.vhd");
  const dynamic = join(disks, "gen1-dynamic.vhd");
  await host.ok(["vhd", "convert", app.gen1Disk, fixed, "--format", "vhd", "--fixed"]);
  await host.ok(["vhd", "convert", app.gen1Disk, dynamic, "--format", "vhd", "--dynamic"]);
  const sourceSize = (await host.json<Vhd>(["vhd", "get", app.gen1Disk])).size;
  for (const [path, type] of [[fixed, "Fixed"], [dynamic, "Dynamic"]] as const) {
    const v = await host.json<Vhd>(["vhd", "get", path]);
    assert.deepEqual([v.vhdFormat, v.vhdType, v.size, v.attached], ["vhd", type, sourceSize, false]);
  }

  // A data disk to grow, and a differencing disk on a parent.
  const data = join(disks, "data.vhdx");
  await host.ok(["vhd", "new", data, "--size", "64M"]);
  const parent = join(disks, "parent.vhdx");
  const child = join(disks, "child.qcow2");
  await host.ok(["vhd", "new", parent, "--size", "32M", "--fixed"]);
  await host.ok(["vhd", "new", child, "--differencing", "--parent", parent]);
  const parentSha = await sha256(parent);
  const c0 = await host.json<Vhd>(["vhd", "get", child]);
  assert.deepEqual([c0.vhdType, c0.parentPath], ["Differencing", parent]);

  await host.ok(["new", "fixed-vm", "--generation", "1", "--disk", fixed]);
  await host.ok(["disk", "add", "fixed-vm", data]);
  await host.ok(["disk", "add", "fixed-vm", child]);
  const shown = await host.json<{ disks: { ref: string; path: string; format: string }[] }>(["show", "fixed-vm"]);
  assert.deepEqual(shown.disks.map((d) => [d.ref, d.format]), [["IDE 0:0", "vhd"], ["IDE 0:1", "vhdx"], ["IDE 1:0", "qcow2"]], "a VHD is attached as vhd (vpc), never raw");
  const resized = await host.json<{ method: string; previousSize: number; disk: { size: number } }>(["vhd", "resize", data, "--size", "96M"]);
  assert.deepEqual([resized.previousSize, resized.disk.size], [64 * 1024 * 1024, 96 * 1024 * 1024]);

  const g = await host.json<Vhd>(["vhd", "get", fixed]);
  assert.equal(g.attachedTo, "fixed-vm");
  assert.equal(g.usedBy[0]?.running, false);

  await host.ok(["start", "fixed-vm"]);
  await host.waitConsole("fixed-vm", READY, BOOT_TIMEOUT_MS);
  t.diagnostic("fixed VHD: the guest booted from it");
  // The guest sees the grown disk (IDE disks are named by probe order, which varies: found by size).
  const devs = await devices("fixed-vm");
  const bySize = (sectors: number) => Object.entries(devs).find(([, n]) => n === sectors)?.[0];
  const boot = bySize(sourceSize / 512);
  const grown = bySize((96 * 1024 * 1024) / 512);
  const diff = bySize((32 * 1024 * 1024) / 512);
  assert.ok(boot && grown && diff, `the boot disk, the data disk grown to 96 MiB and the differencing disk: ${JSON.stringify(devs)}`);

  // Changes that need the disk offline are refused while the VM runs.
  const busy = await host.cli(["vhd", "resize", fixed, "--size", "80M"]);
  assert.notEqual(busy.code, 0);
  assert.match(busy.stderr, /is in use by VM "fixed-vm": turn the VM off/);
  assert.equal((await host.json<Vhd>(["vhd", "get", fixed])).usedBy[0]?.running, true);

  const n = await writeLastSector("fixed-vm", boot);
  assert.equal(n, sourceSize / 512);
  await host.run("fixed-vm", `dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\\000' '\\315' | dd of=/dev/${diff} bs=512 seek=100 count=1 conv=fsync 2>/dev/null && echo ch""ild-written`, /child-written/);
  await host.ok(["turn-off", "fixed-vm"]);

  // What the guest wrote is in the VHD, every other sector is the source's, and it is still a fixed VHD of the same size.
  assert.ok(await holdsPattern(fixed, "vpc", (n - 1) * 512, 512, 0xab), "qemu-io reads the guest's last sector from the fixed VHD");
  const expected = await expectedAfterWrite("fixed");
  assert.match((await execFileP("qemu-img", ["compare", "-f", "raw", "-F", "vpc", expected, fixed])).stdout, /Images are identical/);
  const after = await host.json<Vhd>(["vhd", "get", fixed]);
  assert.deepEqual([after.vhdFormat, after.vhdType, after.size], ["vhd", "Fixed", sourceSize]);
  const chk = await execFileP("qemu-img", ["check", "-f", "vpc", fixed]).catch((e: { code: number; stderr: string }) => e);
  assert.equal((chk as { code?: number }).code, 63, "qemu-img check cannot check vpc: hence the comparison above");

  // The differencing disk took the write; its parent was never written.
  assert.ok(await holdsPattern(child, "qcow2", 100 * 512, 512, 0xcd));
  assert.equal(await sha256(parent), parentSha, "the parent is byte for byte as before");
  // Merging it into its parent would take the VM's disk from under it: refused while the VM has it.
  const refused = await host.cli(["vhd", "merge", child]);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /read by VM "fixed-vm"/);
  await host.ok(["disk", "remove", "fixed-vm", "IDE 1:0"]);
  await host.ok(["vhd", "merge", child]);
  assert.ok(await holdsPattern(parent, "vhdx", 100 * 512, 512, 0xcd), "merged: the parent holds the child's data now");
  await assert.rejects(readFile(child), /ENOENT/);
  await host.ok(["remove", "fixed-vm"]);

  // The dynamic VHD.
  await host.ok(["new", "dynamic-vm", "--generation", "1", "--disk", dynamic]);
  await host.ok(["start", "dynamic-vm"]);
  await host.waitConsole("dynamic-vm", READY, BOOT_TIMEOUT_MS);
  t.diagnostic("dynamic VHD: the guest booted from it");
  const m = await writeLastSector("dynamic-vm", Object.keys(await devices("dynamic-vm"))[0]!);
  await host.ok(["turn-off", "dynamic-vm"]);
  assert.ok(await holdsPattern(dynamic, "vpc", (m - 1) * 512, 512, 0xab), "qemu-io reads the guest's last sector from the dynamic VHD");
  assert.match((await execFileP("qemu-img", ["compare", "-f", "raw", "-F", "vpc", await expectedAfterWrite("dynamic"), dynamic])).stdout, /Images are identical/);
  const dyn = await host.json<Vhd>(["vhd", "get", dynamic]);
  assert.deepEqual([dyn.vhdFormat, dyn.vhdType, dyn.size], ["vhd", "Dynamic", sourceSize]);
  await host.ok(["remove", "dynamic-vm"]);
});

test("vhd convert VHDX -> qcow2 -> VHDX keeps every byte and each format", { timeout: 120_000 }, async () => {
  const a = join(disks, "round.vhdx");
  const b = join(disks, "round.qcow2");
  const c = join(disks, "round-back.vhdx");
  await host.ok(["vhd", "convert", app.gen1Disk, a]);
  await host.ok(["vhd", "convert", a, b]);
  await host.ok(["vhd", "convert", b, c, "--format", "vhdx"]);
  for (const [p, f] of [[a, "vhdx"], [b, "qcow2"], [c, "vhdx"]] as const) assert.equal((await host.json<Vhd>(["vhd", "get", p])).vhdFormat, f);
  assert.match((await execFileP("qemu-img", ["compare", "-f", "raw", "-F", "vhdx", app.gen1Disk, c])).stdout, /Images are identical/);
  assert.match((await execFileP("qemu-img", ["compare", "-f", "qcow2", "-F", "vhdx", b, c])).stdout, /Images are identical/);
  // A format that disagrees with the name is refused before anything is written.
  const bad = await host.cli(["vhd", "convert", a, join(disks, "wrong.vhd"), "--format", "qcow2"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /its extension says vhd but the format asked for is qcow2/);
  for (const p of [a, b, c]) await rm(p);
});
