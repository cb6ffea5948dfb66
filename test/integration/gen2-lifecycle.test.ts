import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../helpers/harness.js";
import { processStartTime } from "../../src/supervisor/proc.js";

/**
 * One Gen2 appliance VM taken through its life: boot to the ready line, the generation rule,
 * pause/resume, SCSI hot-add seen by the guest, save/restore with guest memory intact,
 * vmhostd killed and the VM adopted again, and an ACPI stop. Steps run in order.
 */
let host: TestHost;
const VM = "g2";

before(async () => {
  host = await TestHost.create();
});
after(async () => {
  await host.cleanup();
});

test("gen2 appliance boots to the ready line and shows Running", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", VM, "--generation", "2", "--appliance", "--memory", "512M"]);
  // A DVD drive on SCSI (Gen2 has no IDE), holding a 1 MiB image.
  await writeFile(`${host.home}/media.iso`, Buffer.alloc(1024 * 1024, 0x41));
  await host.ok(["dvd", "set", VM, `${host.home}/media.iso`]);
  const t0 = Date.now();
  await host.ok(["start", VM]);
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
  const log = await host.ok(["console", VM, "--log"]);
  assert.ok(log.includes(READY));
  assert.match(log, /BdsDxe: (loading|starting) Boot/, "OVMF's boot manager ran (UEFI boot)");
  const show = await host.json<{ state: string; generation: number; cpus: number; memoryMiB: number; disks: unknown[]; nics: { type: string; macAddress: string }[] }>(["show", VM]);
  assert.equal(show.state, "Running");
  assert.equal(show.generation, 2);
  assert.equal(show.memoryMiB, 512);
  assert.equal(show.disks.length, 1);
  assert.deepEqual((show as unknown as { dvds: { ref: string }[] }).dvds.map((d) => d.ref), ["SCSI 0:1"]);
  assert.equal(show.nics[0]?.type, "Synthetic");
  assert.match(show.nics[0]!.macAddress, /^00:15:5D:/);
  console.log(`gen2 ready after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

test("a legacy adapter is refused by the generation rule and the config file is untouched", async () => {
  const file = (await host.json<{ paths: { config: string } }>(["show", VM])).paths.config;
  const before = await readFile(file);
  const r = await host.cli(["nic", "add", VM, "--legacy"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /Generation 2/);
  assert.match(r.stderr, /legacy network adapter/);
  assert.match(r.stderr, /rule generation-2-no-legacy-adapter/);
  assert.deepEqual(await readFile(file), before);
});

test("a floppy drive is refused on generation 2, by rule", async () => {
  const r = await host.cli(["floppy", "set", VM, `${host.home}/media.iso`]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /rule generation-2-no-floppy/);
});

test("the DVD's media is seen by the guest, ejected and changed while it runs", { timeout: 120_000 }, async () => {
  // /sys/block/sr0/size counts 512-byte sectors: 1 MiB = 2048; an empty drive has 0.
  await host.run(VM, "echo dvd-size-$(cat /sys/block/sr0/size)", /dvd-size-2048/);
  await host.ok(["dvd", "eject", VM]);
  // The sr driver notices a media change when the device is opened.
  await host.run(VM, "dd if=/dev/sr0 of=/dev/null bs=2048 count=1; echo dvd-read-done", /No medium found[\s\S]*dvd-read-done/);
  await writeFile(`${host.home}/media2.iso`, Buffer.alloc(2 * 1024 * 1024, 0x42));
  await host.ok(["dvd", "set", VM, `${host.home}/media2.iso`]);
  await host.run(VM, "dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>/dev/null; echo dvd-size-$(cat /sys/block/sr0/size)", /dvd-size-4096/);
});

test("the guest answers on its serial console; pause stops it and resume continues", { timeout: 120_000 }, async () => {
  await host.run(VM, "echo probe-$((6*7))", /probe-42/);
  await host.ok(["pause", VM]);
  assert.equal(await host.state(VM), "Paused");
  const socket = (await host.json<{ paths: { serialSocket: string } }>(["show", VM])).paths.serialSocket;
  const from = (await host.consoleText(VM)).length;
  const { typeInto } = await import("../helpers/harness.js");
  await typeInto(socket, "echo while-$((1+1))-paused\n");
  await sleep(2000);
  assert.equal((await host.consoleText(VM)).slice(from).includes("while-2-paused"), false, "a paused guest runs nothing");
  await host.ok(["resume", VM]);
  assert.equal(await host.state(VM), "Running");
  await host.waitConsole(VM, "while-2-paused", 30_000, from);
});

test("a SCSI disk hot-added to the running Gen2 VM is seen by the guest", { timeout: 120_000 }, async () => {
  await host.run(VM, "cat /proc/partitions | grep -c sd; echo parts-done", /parts-done/);
  const out = await host.json<{ disks: { ref: string }[] }>(["disk", "add", VM, "--new", "64M:qcow2"]);
  // SCSI 0:1 holds the DVD drive, so the next free location is 0:2.
  assert.deepEqual(
    out.disks.map((d) => d.ref),
    ["SCSI 0:0", "SCSI 0:2"],
  );
  // 64 MiB = 65536 1K-blocks in /proc/partitions.
  const text = await host.run(VM, "sleep 1; grep -w 65536 /proc/partitions; echo hot-done", /65536\s+sd[b-z][\s\S]*hot-done/, 60_000);
  assert.match(text, /sd[b-z]/);
});

test("save writes the state and stops QEMU; start restores the running guest with its memory", { timeout: 240_000 }, async () => {
  await host.run(VM, "echo kept-$((40+2)) > /tmp/value; echo wrote", /wrote/);
  const pidBefore = (await host.json<{ pid: number }>(["show", VM])).pid;
  await host.ok(["save", VM]);
  const saved = await host.json<{ state: string; hasSavedState: boolean; pid?: number }>(["show", VM]);
  assert.equal(saved.state, "Saved");
  assert.equal(saved.hasSavedState, true);
  assert.equal(saved.pid, undefined);
  assert.equal(await processStartTime(pidBefore), undefined, "QEMU is gone while Saved");
  await host.ok(["start", VM]);
  assert.equal(await host.state(VM), "Running");
  const text = await host.run(VM, "cat /tmp/value", /kept-42/);
  assert.match(text, /kept-42/);
  assert.equal((await host.json<{ hasSavedState: boolean }>(["show", VM])).hasSavedState, false, "the saved state is consumed");
});

test("vmhostd is killed; the VM keeps running and the restarted service adopts it, console capture included", { timeout: 120_000 }, async () => {
  const shown = await host.json<{ pid: number }>(["show", VM]);
  const daemonPid = await host.servicePid();
  process.kill(daemonPid, "SIGKILL");
  await sleep(500);
  // A zombie counts as dead: nobody may reap it in a container whose init does not.
  assert.equal(await processStartTime(daemonPid), undefined, "the service is dead");
  assert.notEqual(await processStartTime(shown.pid), undefined, "QEMU is still running");
  const after = await host.json<{ state: string; pid: number }>(["show", VM]); // starts a new service
  assert.equal(after.state, "Running");
  assert.equal(after.pid, shown.pid);
  const newDaemon = await host.servicePid();
  assert.notEqual(newDaemon, daemonPid);
  await host.run(VM, "echo adopted-$((3*3))", /adopted-9/);
  const events = await host.json<{ type: string }[]>(["events", VM]);
  assert.ok(events.some((e) => e.type === "adopted"));
});

test("stop shuts the guest down through ACPI and reaches Off within 30 s", { timeout: 60_000 }, async () => {
  const t0 = Date.now();
  const out = await host.ok(["stop", VM, "--timeout", "30"]);
  assert.match(out, /Off/);
  assert.ok(Date.now() - t0 < 30_000);
  const show = await host.json<{ state: string; lastExit: { reason: string } }>(["show", VM]);
  assert.equal(show.state, "Off");
  assert.equal(show.lastExit.reason, "the guest shut down");
});
