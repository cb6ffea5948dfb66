import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, link, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { ensureAppliance } from "../../src/images/appliance/index.js";
import { processStartTime } from "../../src/supervisor/proc.js";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../helpers/harness.js";

/**
 * A home written by the previous vmhost (layout 1: VM folders named by VM name, configuration
 * format 1: adapters without stored PCI slots) opens under today's layout with nothing lost,
 * and its VMs start. Then the harder case: a VM running while the service that started it is
 * killed and its home is in the old layout is adopted again after the move.
 */
const FIXTURE = resolve(dirname(fileURLToPath(import.meta.url)), "../../../test/fixtures/home-v1");
const execFileP = promisify(execFile);
let host: TestHost;

/** Copies the fixture into the test's home, with the home's path put in and the disks made again. */
async function plantFixture(home: string): Promise<void> {
  await cp(FIXTURE, home, { recursive: true, filter: (src) => basename(src) !== "README.md" });
  for (const vm of ["legacy-web", "old-box"]) {
    for (const f of ["vm.json", "events.jsonl"]) {
      const file = join(home, "vms", vm, f);
      await writeFile(file, (await readFile(file, "utf8")).replaceAll("@HOME@", home));
    }
  }
  const app = await ensureAppliance();
  await mkdir(join(home, "appliance", app.manifest.id), { recursive: true });
  await mkdir(join(home, "disks"), { recursive: true });
  for (const [vm, base] of [["legacy-web", app.gen2Disk], ["old-box", app.gen1Disk]] as const) {
    const local = join(home, "appliance", app.manifest.id, basename(base));
    await link(base, local).catch(() => cp(base, local));
    await execFileP("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", local, join(home, "disks", `${vm}-appliance.qcow2`)]);
  }
}

before(async () => {
  host = await TestHost.create();
  await plantFixture(host.home);
});
after(async () => {
  await host.cleanup();
});

test("a layout-1 home opens: folders move to the VMs' ids, names, adapters and events are kept", { timeout: 60_000 }, async () => {
  const vms = await host.json<{ name: string; id: string; state: string }[]>(["list"]);
  assert.deepEqual(vms.map((v) => [v.name, v.state]).sort(), [["legacy-web", "Off"], ["old-box", "Off"]]);
  const folders = (await readdir(join(host.home, "vms"))).sort();
  assert.deepEqual(folders, vms.map((v) => v.id).sort(), "each VM's folder is named by its id");
  const layout = JSON.parse(await readFile(join(host.home, "host", "layout.json"), "utf8")) as { version: number };
  assert.equal(layout.version, 2);

  const web = await host.json<{ id: string; nics: { name: string; macAddress: string; pciSlot: number }[]; firmware: { secureBoot: boolean } }>(["show", "legacy-web"]);
  assert.equal(web.id, "6b7b146b-a524-4a70-8dc7-9f513f02cb10");
  assert.deepEqual(web.nics.map((n) => [n.name, n.macAddress, n.pciSlot]), [["Network Adapter", "00:15:5D:4A:46:00", 8], ["Network Adapter 2", "00:15:5D:4A:46:01", 9]]);
  assert.equal(web.firmware.secureBoot, true);
  const events = await host.json<{ type: string }[]>(["events", "legacy-web"]);
  assert.ok(events.some((e) => e.type === "created"), "the journal written by the old vmhost is still there");
  // The NVRAM came along untouched: the old store's bytes are the new store's.
  assert.deepEqual(await readFile(join(host.home, "vms", web.id, "nvram.fd")), await readFile(join(FIXTURE, "vms", "legacy-web", "nvram.fd")));
  // The MAC pool goes on where it was: a new adapter gets the next address, never one handed out.
  const box = await host.json<{ nics: { macAddress: string }[] }>(["nic", "add", "old-box"]);
  assert.ok(box.nics.some((n) => n.macAddress === "00:15:5D:4A:46:04"), JSON.stringify(box.nics));
});

test("the migrated Gen2 VM starts (Secure Boot on, its old NVRAM) and reaches the ready line", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["start", "legacy-web"]);
  await host.waitConsole("legacy-web", READY, BOOT_TIMEOUT_MS);
  const fw = await host.json<{ nvram: { secureBoot: boolean } }>(["firmware", "get", "legacy-web"]);
  assert.equal(fw.nvram.secureBoot, true);
});

test("a VM running while its home is in layout 1 is adopted after the move, console capture included", { timeout: 120_000 }, async () => {
  const shown = await host.json<{ id: string; pid: number }[] | { id: string; pid: number }>(["show", "legacy-web"]);
  const { id, pid } = shown as { id: string; pid: number };
  // Kill the service as a crash would, and put the home back into layout 1 around the running QEMU.
  process.kill(await host.servicePid(), "SIGKILL");
  await sleep(300);
  await rename(join(host.home, "vms", id), join(host.home, "vms", "legacy-web"));
  await rm(join(host.home, "host", "layout.json"));
  assert.notEqual(await processStartTime(pid), undefined, "QEMU still runs");

  const after = await host.json<{ id: string; state: string; pid: number }>(["show", "legacy-web"]); // a new service migrates and adopts
  assert.equal(after.state, "Running");
  assert.equal(after.pid, pid);
  assert.ok((await stat(join(host.home, "vms", id))).isDirectory());
  host.forget("legacy-web");
  await host.run("legacy-web", "echo moved-$((6*7))", /moved-42/);
  const events = await host.json<{ type: string }[]>(["events", "legacy-web"]);
  assert.ok(events.some((e) => e.type === "adopted"));
});

test("the migrated Gen1 VM starts under SeaBIOS with its legacy adapter where it was", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["turn-off", "legacy-web"]);
  await host.ok(["start", "old-box"]);
  await host.waitConsole("old-box", READY, BOOT_TIMEOUT_MS);
  const box = await host.json<{ nics: { type: string; pciSlot: number }[] }>(["show", "old-box"]);
  assert.deepEqual(box.nics.map((n) => [n.type, n.pciSlot]), [["Synthetic", 8], ["Legacy", 9], ["Synthetic", 10]]);
});
