import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { BOOT_TIMEOUT_MS, READY, sleep, type TestHost } from "../helpers/harness.js";
import { HostLab } from "../helpers/hosts.js";

/**
 * Move-VM between two vmhost hosts, each in a network namespace of its own with its own vmhostd
 * and home, over the real host-to-host API (HTTPS, client certificates through trust tokens):
 * a running Gen2 appliance VM moves with its storage; its guest runs on (same boot, uptime going
 * on, memory kept), its NVRAM arrives as it was, its agent and console are followed there, and the
 * source keeps nothing. Then a move whose destination host dies half way (its vmhostd and its
 * QEMU SIGKILLed while the stream flows): the VM runs on at the source and the destination, once
 * its service is back, holds nothing of it.
 */
const execFileP = promisify(execFile);
let lab: HostLab;
let a: TestHost;
let b: TestHost;

before(async () => {
  lab = await HostLab.create(["a", "b"]);
  a = lab.get("a").host;
  b = lab.get("b").host;
  await lab.trust("a", "b");
});
after(async () => {
  await lab.cleanup();
});

async function guestLine(h: TestHost, vm: string, cmd: string, re: RegExp): Promise<string> {
  const text = await h.run(vm, cmd, re);
  const all = [...text.matchAll(new RegExp(re.source, "g"))];
  return all[all.length - 1]![0];
}

interface Fw {
  bootOrder: { id: string; description: string; firmwarePath: string; bootType: string }[];
  nvram: { secureBoot: boolean; setupMode: boolean; pkEnrolled: boolean };
  secureBoot: string;
}

test("move --include-storage: the guest runs on at the destination, NVRAM as it was, nothing left at the source", { timeout: BOOT_TIMEOUT_MS + 300_000 }, async () => {
  await a.ok(["new", "web", "--generation", "2", "--appliance"]);
  await a.ok(["start", "web"]);
  await a.waitConsole("web", READY, BOOT_TIMEOUT_MS);
  await guestLine(a, "web", "echo ram-before-move > /tmp/value; echo written-ok", /written-ok/);
  const bootId = await guestLine(a, "web", "echo id-$(cat /proc/sys/kernel/random/boot_id)-", /id-[0-9a-f-]{36}-/);
  const up0 = Number(/up-(\d+)/.exec(await guestLine(a, "web", "echo up-$(cut -d. -f1 /proc/uptime)", /up-\d+/))![1]);
  const fw0 = await a.json<Fw>(["firmware", "get", "web"]);
  const id = (await a.json<{ id: string }>(["show", "web"])).id;

  const r = await a.json<{ downtimeMs: number; totalMs: number; destination: string }>(["move", "web", "--destination", "b", "--include-storage"]);
  console.log(`move with storage between namespaces: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms`);
  assert.equal(r.destination, "b");

  const shown = await b.json<{ state: string; id: string; disks: { path: string }[] }>(["show", "web"]);
  assert.deepEqual([shown.state, shown.id], ["Running", id]);
  for (const d of shown.disks) assert.ok(d.path.startsWith(b.home), `${d.path} is on the destination`);
  assert.equal(await guestLine(b, "web", "echo id-$(cat /proc/sys/kernel/random/boot_id)-", /id-[0-9a-f-]{36}-/), bootId, "the same boot goes on");
  const up1 = Number(/up-(\d+)/.exec(await guestLine(b, "web", "echo up-$(cut -d. -f1 /proc/uptime)", /up-\d+/))![1]);
  assert.ok(up1 >= up0, `the guest's uptime goes on (${up0} s before, ${up1} s after)`);
  assert.match(await guestLine(b, "web", "echo v=$(cat /tmp/value)=", /v=[\w-]+=/), /v=ram-before-move=/);
  const fw1 = await b.json<Fw>(["firmware", "get", "web"]);
  assert.deepEqual(fw1.bootOrder.map((e) => [e.id, e.bootType, e.description, e.firmwarePath]), fw0.bootOrder.map((e) => [e.id, e.bootType, e.description, e.firmwarePath]));
  assert.deepEqual([fw1.secureBoot, fw1.nvram.secureBoot, fw1.nvram.setupMode, fw1.nvram.pkEnrolled], [fw0.secureBoot, fw0.nvram.secureBoot, fw0.nvram.setupMode, fw0.nvram.pkEnrolled]);

  // Its integration services go on at the destination: the heartbeat answers there.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const svc = await b.json<{ services: { name: string; primaryStatus: string }[] }>(["integration", "list", "web"]);
    if (svc.services.find((s) => s.name === "Heartbeat")?.primaryStatus === "OK") break;
    if (Date.now() > deadline) throw new Error(`no heartbeat at the destination: ${JSON.stringify(svc)}`);
    await sleep(1000);
  }
  // Events on both hosts.
  assert.ok((await b.json<{ type: string }[]>(["events", "web"])).some((e) => e.type === "migration-finished"));
  const hostEvents = await readFile(join(a.home, "host", "events.jsonl"), "utf8");
  assert.match(hostEvents, /"vm-moved-away"/);

  // The source has no trace of it.
  assert.deepEqual(await a.json<unknown[]>(["list"]), []);
  const { stdout } = await execFileP("find", [a.home, "-name", `*${id}*`]);
  assert.equal(stdout.trim(), "", `files of the moved VM left at the source:\n${stdout}`);
});

test("the destination dies half way: the VM runs on at the source, the destination keeps nothing", { timeout: BOOT_TIMEOUT_MS + 300_000 }, async () => {
  await a.ok(["new", "web2", "--generation", "2", "--appliance"]);
  await a.ok(["start", "web2"]);
  await a.waitConsole("web2", READY, BOOT_TIMEOUT_MS);
  const bootId = await guestLine(a, "web2", "echo id-$(cat /proc/sys/kernel/random/boot_id)-", /id-[0-9a-f-]{36}-/);
  const id = (await a.json<{ id: string }>(["show", "web2"])).id;
  // The destination's next vmhostd dies, with its QEMU, once the migration stream flows.
  await b.ok(["service", "stop"]);
  b.env["VMHOST_TEST_KILL_AT"] = "incoming-stream";
  await b.ok(["service", "start"]);
  const r = await a.cli(["move", "web2", "--destination", "b", "--include-storage"]);
  assert.notEqual(r.code, 0, "the move fails");
  assert.match(r.stderr, /migration|b/);
  delete b.env["VMHOST_TEST_KILL_AT"];

  assert.equal(await a.state("web2"), "Running");
  assert.equal(await guestLine(a, "web2", "echo id-$(cat /proc/sys/kernel/random/boot_id)-", /id-[0-9a-f-]{36}-/), bootId, "the guest never stopped being itself");
  // The destination's service comes back (recovery removes the half-made VM).
  const names = (await b.json<{ name: string }[]>(["list"])).map((v) => v.name);
  assert.deepEqual(names.sort(), ["web"], "only the VM moved earlier is there");
  const { stdout } = await execFileP("find", [b.home, "-name", `*${id}*`]);
  assert.equal(stdout.trim(), "", `files of the failed move left at the destination:\n${stdout}`);
});
