import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { ensureAppliance } from "../../src/images/appliance/index.js";
import { BOOT_TIMEOUT_MS, READY, TestHost } from "../helpers/harness.js";

/**
 * Convert-VMGeneration through the real CLI (issue 11, "Must show"): a Gen1 appliance VM (MBR,
 * SYSLINUX, a legacy adapter, a VHD data disk, a floppy) becomes a new Gen2 VM that boots to
 * `vmhost-appliance: ready` under UEFI with Secure Boot on (Debian's signed shim on the removable
 * path, the Microsoft UEFI CA template); the Gen1 VM is unchanged (configuration and every disk
 * byte) and still boots. A disk with an extended partition is refused, with the reason and what
 * to do, and nothing is made.
 */
const execFileP = promisify(execFile);
const GEN1 = "Legacy Server";
const GEN2 = "Legacy Server (Generation 2)";
let host: TestHost;

before(
  async () => {
    await ensureAppliance();
    host = await TestHost.create();
  },
  { timeout: 20 * 60_000 },
);
after(async () => {
  await host.cleanup();
});

async function sha256(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

interface Shown {
  id: string;
  generation: number;
  state: string;
  cpus: number;
  memoryMiB: number;
  disks: { ref: string; path: string; format: string }[];
  dvds: { ref: string; path: string | null }[];
  nics: { name: string; type: string; macAddress: string; dynamicMac: boolean; switchName: string }[];
  floppy?: string | null;
  firmware: { secureBoot: boolean; secureBootTemplate: string };
}

interface Conversion {
  dryRun: boolean;
  id?: string;
  vm: { name: string; disks: { fromSlot: string; slot: string; format: string; boot: boolean }[]; networkAdapters: { from: string; to: string }[]; secureBoot: { enabled: boolean; template: string }; notes: string[] };
  disk: { steps: string[]; esp: { action: string } };
  firstBoot?: { ok: boolean; seenBy?: string; seconds: number; message: string };
  messages: string[];
}

async function convertJson(args: string[]): Promise<Conversion> {
  const r = await host.cli(["convert-generation", ...args, "--json"], 600_000);
  if (r.code !== 0) throw new Error(`convert-generation ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as Conversion;
}

test("a Gen1 appliance VM converts to a Gen2 VM that reaches ready under UEFI with Secure Boot on; the Gen1 VM is unchanged and still boots", { timeout: 1_200_000 }, async (t) => {
  await host.ok(["new", GEN1, "--generation", "1", "--appliance", "--cpus", "2", "--memory", "640M"]);
  await host.ok(["nic", "add", GEN1, "--legacy"]);
  await host.ok(["disk", "add", GEN1, "--new", "32M:vhd"]);
  const floppy = join(host.home, "data.vfd");
  await writeFile(floppy, Buffer.alloc(1474560));
  await host.ok(["floppy", "set", GEN1, floppy]);
  const before = await host.json<Shown>(["show", GEN1]);
  const data = before.disks.find((d) => d.ref === "IDE 0:1")!;
  // Something on the data disk, to find again in the copy.
  await execFileP("qemu-io", ["-f", "vpc", "-c", "write -P 0x5a 1048576 65536", data.path]);
  const sums = Object.fromEntries(await Promise.all(before.disks.map(async (d) => [d.path, await sha256(d.path)] as const)));
  const configBefore = await readFile(join(host.home, "vms", before.id, "vm.json"), "utf8");

  // The plan alone changes nothing.
  const disksBefore = (await readdir(join(host.home, "disks"))).sort();
  const plan = await convertJson([GEN1, "--dry-run"]);
  assert.equal(plan.dryRun, true);
  assert.equal(plan.vm.name, GEN2);
  assert.deepEqual(plan.vm.disks.map((d) => [d.fromSlot, d.slot, d.format, d.boot]), [["IDE 0:0", "SCSI 0:0", "qcow2", true], ["IDE 0:1", "SCSI 0:1", "vhdx", false]]);
  assert.deepEqual([plan.vm.secureBoot.enabled, plan.vm.secureBoot.template], [true, "MicrosoftUEFICertificateAuthority"]);
  assert.ok(plan.disk.steps.some((s) => /--mbrtogpt/.test(s)), plan.disk.steps.join("\n"));
  assert.deepEqual((await host.json<{ name: string }[]>(["list"])).map((v) => v.name), [GEN1]);
  assert.deepEqual((await readdir(join(host.home, "disks"))).sort(), disksBefore);

  // The conversion, and the first boot of the new VM.
  const started = Date.now();
  const done = await convertJson([GEN1]);
  t.diagnostic(`convert-generation to the first boot: ${((Date.now() - started) / 1000).toFixed(1)} s; ${done.firstBoot?.message}`);
  assert.equal(done.firstBoot?.ok, true, done.firstBoot?.message);
  assert.ok(done.vm.notes.some((n) => /floppy/.test(n)), done.vm.notes.join("\n"));
  assert.ok(done.vm.notes.some((n) => /legacy adapter .* becomes synthetic/.test(n)), done.vm.notes.join("\n"));
  const gen2 = await host.json<Shown>(["show", GEN2]);
  assert.equal(gen2.generation, 2);
  assert.equal(gen2.state, "Running");
  assert.deepEqual([gen2.cpus, gen2.memoryMiB], [2, 640]);
  assert.deepEqual(gen2.disks.map((d) => [d.ref, d.format]), [["SCSI 0:0", "qcow2"], ["SCSI 0:1", "vhdx"]]);
  assert.ok(gen2.nics.length === 2 && gen2.nics.every((n) => n.type === "Synthetic" && n.dynamicMac && n.switchName === "Default Switch"));
  assert.ok(gen2.nics.every((n) => !before.nics.some((o) => o.macAddress === n.macAddress)), "new dynamic MAC addresses");
  assert.equal(gen2.floppy, undefined);
  assert.deepEqual([gen2.firmware.secureBoot, gen2.firmware.secureBootTemplate], [true, "MicrosoftUEFICertificateAuthority"]);
  const console2 = await host.waitConsole(GEN2, READY, BOOT_TIMEOUT_MS);
  assert.match(console2, /vmhost-appliance: booted via UEFI/);
  assert.match(console2, /vmhost-appliance: secure boot enabled/);
  const fw = await host.json<{ nvram: { secureBoot: boolean; setupMode: boolean; db: string[] } }>(["firmware", "get", GEN2]);
  assert.deepEqual([fw.nvram.secureBoot, fw.nvram.setupMode], [true, false], "the NVRAM was made from the template with Secure Boot on");
  assert.ok(fw.nvram.db.some((c) => /Microsoft Corporation UEFI CA 2011/.test(c)), fw.nvram.db.join(", "));
  // The data disk came over (copied, VHD -> VHDX).
  const copied = gen2.disks.find((d) => d.ref === "SCSI 0:1")!.path;
  const io = await execFileP("qemu-io", ["-U", "-f", "vhdx", "-r", "-c", "read -P 0x5a 1048576 65536", copied]);
  assert.doesNotMatch(io.stdout, /Pattern verification failed/);

  // Only a Gen1 VM that is Off converts.
  const again = await host.cli(["convert-generation", GEN2, "--dry-run"]);
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /generation 2 already/);
  await host.ok(["turn-off", GEN2]);

  // The Gen1 VM: the same configuration, every disk byte as it was, and it still boots.
  assert.equal(await readFile(join(host.home, "vms", before.id, "vm.json"), "utf8"), configBefore);
  for (const [p, s] of Object.entries(sums)) assert.equal(await sha256(p), s, p);
  // QEMU 7.2's floppy device has no bootindex, which vmhost's argv gives a drive with a disk (reported
  // to the engine's owner): the Gen1 VM starts with the drive empty.
  await host.ok(["floppy", "eject", GEN1]);
  await host.ok(["start", GEN1]);
  const console1 = await host.waitConsole(GEN1, READY, BOOT_TIMEOUT_MS);
  assert.match(console1, /vmhost-appliance: booted via BIOS/);
  const running = await host.cli(["convert-generation", GEN1, "--dry-run"]);
  assert.notEqual(running.code, 0);
  assert.match(running.stderr, /must be Off/);
  await host.ok(["turn-off", GEN1]);
});

test("a boot disk with an extended partition is refused, saying why and what to do; nothing is made", { timeout: 300_000 }, async () => {
  const img = join(host.home, "disks", "extended.img");
  await execFileP("truncate", ["-s", "64M", img]);
  const layout = "label: dos\nstart=2048, size=40960, type=83, bootable\nstart=43008, size=40960, type=5\nstart=45056, size=8192, type=83\n";
  await new Promise<void>((resolve, reject) => {
    const child = execFile("sfdisk", ["--no-reread", "--no-tell-kernel", img], (err) => (err ? reject(err) : resolve()));
    child.stdin!.end(layout);
  });
  await host.ok(["new", "extended", "--generation", "1", "--disk", img]);
  const disksBefore = (await readdir(join(host.home, "disks"))).sort();
  const vmsBefore = (await host.json<{ name: string }[]>(["list"])).map((v) => v.name).sort();
  const sum = await sha256(img);
  const r = await host.cli(["convert-generation", "extended"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /cannot be converted to a Generation 2 boot disk/);
  assert.match(r.stderr, /partition 2 is an extended partition holding logical partition 5/);
  assert.match(r.stderr, /\(extended-partition\)\. What to do: move the data of the logical partitions to primary partitions/);
  assert.deepEqual((await host.json<{ name: string }[]>(["list"])).map((v) => v.name).sort(), vmsBefore);
  assert.deepEqual((await readdir(join(host.home, "disks"))).sort(), disksBefore);
  assert.equal(await sha256(img), sum);
});
