import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VmHost } from "../../src/service/vmhost.js";
import type { MigrationPeer } from "../../src/api/migration.js";
import { BOOT_TIMEOUT_MS, READY, sleep, typeInto } from "../helpers/harness.js";

/**
 * Move-VM's engine between two vmhost hosts in one process (two homes, loopback): the source
 * and destination sides talk through an in-process peer, so what is proven here is the QEMU and
 * file work (the host-to-host API over HTTPS is tested with namespaces elsewhere): with shared
 * storage, with storage and checkpoints copied, and a move that fails half way.
 */
let a: VmHost;
let b: VmHost;
const homes: string[] = [];

function peerOf(host: VmHost, name: string, hooks: { beforeFinish?: () => Promise<void> } = {}): MigrationPeer {
  return {
    name,
    compare: (req) => host.incoming.compare(req),
    prepare: (req) => host.incoming.prepare(req),
    upload: (id, rel, data) => host.incoming.upload(id, rel, data),
    start: (id) => host.incoming.start(id),
    finish: async (id) => {
      await hooks.beforeFinish?.();
      return host.incoming.finish(id);
    },
    abort: (id) => host.incoming.abort(id),
    status: (id) => host.incoming.status(id),
  };
}

async function consoleOf(host: VmHost, vm: string): Promise<string> {
  const cfg = await host.vms.get(vm);
  return (await readFile(host.store.home(cfg.id).consoleLog).catch(() => Buffer.alloc(0))).toString("utf8");
}

async function waitConsole(host: VmHost, vm: string, pattern: RegExp | string, from = 0, timeoutMs = BOOT_TIMEOUT_MS): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await consoleOf(host, vm)).slice(from);
    if (typeof pattern === "string" ? text.includes(pattern) : pattern.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`console of ${vm} never showed ${String(pattern)}; last:\n${text.slice(-800)}`);
    await sleep(200);
  }
}

async function run(host: VmHost, vm: string, command: string, expect: RegExp): Promise<string> {
  const from = (await consoleOf(host, vm)).length;
  await typeInto(await host.vms.consoleSocket(vm), command + "\n");
  const text = await waitConsole(host, vm, expect, from, 30_000);
  return expect.exec(text)![0];
}

before(async () => {
  process.env["VMHOST_ACCEL"] = "tcg";
  for (let i = 0; i < 2; i++) homes.push(await mkdtemp(join(tmpdir(), `vmhost-mig-${i}-`)));
  a = new VmHost(homes[0]);
  b = new VmHost(homes[1]);
  await a.init();
  await b.init();
});

after(async () => {
  for (const h of [a, b]) {
    for (const vm of await h.vms.list().catch(() => [])) await h.vms.turnOff(vm.name).catch(() => undefined);
    h.close();
  }
  for (const d of homes) await rm(d, { recursive: true, force: true });
});

test("with storage: the disks are copied while the guest runs; memory, NVRAM and the boot go on; the source keeps nothing", { timeout: BOOT_TIMEOUT_MS + 300_000 }, async () => {
  await a.vms.create({ name: "web", generation: 2, appliance: true, memoryMiB: 512 });
  await a.vms.start("web");
  await waitConsole(a, "web", READY);
  await run(a, "web", "echo moved-value > /tmp/value; echo written-ok", /written-ok/);
  const id0 = await run(a, "web", "echo id-$(cat /proc/sys/kernel/random/boot_id)", /id-[0-9a-f-]{36}/);
  const fw0 = await a.firmware.view("web");
  const r = await a.moves.move("web", peerOf(b, "B"), { listenAddress: "127.0.0.1", includeStorage: true });
  console.log(`move with storage: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms, mirrored ${r.mirroredBytes} bytes`);
  assert.deepEqual((await a.vms.list()).map((v) => v.name), [], "the source keeps nothing of it");
  const shown = await b.vms.show("web");
  assert.equal(shown.state, "Running");
  for (const d of shown.disks) assert.ok(d.path.startsWith(homes[1]!), `${d.path} is in the destination's home`);
  assert.equal(await run(b, "web", "echo id-$(cat /proc/sys/kernel/random/boot_id)", /id-[0-9a-f-]{36}/), id0, "the same boot goes on");
  assert.match(await run(b, "web", "echo v=$(cat /tmp/value)=", /v=[\w-]+=/), /v=moved-value=/);
  const fw1 = await b.firmware.view("web");
  assert.deepEqual(fw1.bootOrder!.map((e) => [e.id, e.description, e.firmwarePath]), fw0.bootOrder!.map((e) => [e.id, e.description, e.firmwarePath]));
  assert.deepEqual(fw1.nvram?.secureBoot, fw0.nvram?.secureBoot);
});

test("with storage and a checkpoint: the tree comes along and its checkpoint applies on the new host", { timeout: 600_000 }, async () => {
  await b.devices.set("web", { checkpointType: "Standard" });
  await b.checkpoints.create("web", { name: "before" });
  await run(b, "web", "echo after-cp > /tmp/value; echo ok-after", /ok-after/);
  const r = await b.moves.move("web", peerOf(a, "A"), { listenAddress: "127.0.0.1", includeStorage: true });
  console.log(`move with storage and a checkpoint: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms`);
  assert.equal((await a.vms.show("web")).state, "Running");
  assert.deepEqual((await b.vms.list()).map((v) => v.name), []);
  assert.match(await run(a, "web", "echo v=$(cat /tmp/value)=", /v=[\w-]+=/), /v=after-cp=/);
  const list = await a.checkpoints.list("web");
  assert.deepEqual(list.checkpoints.map((c) => c.name), ["before"]);
  await a.checkpoints.apply("web", "before");
  await sleep(1000);
  assert.match(await run(a, "web", "echo v=$(cat /tmp/value)=", /v=[\w-]+=/), /v=moved-value=/);
});

test("shared storage: only memory and devices move; the disks stay where both hosts see them", { timeout: 300_000 }, async () => {
  const disksBefore = (await a.vms.show("web")).disks.map((d) => d.path);
  const id0 = await run(a, "web", "echo id-$(cat /proc/sys/kernel/random/boot_id)", /id-[0-9a-f-]{36}/);
  const r = await a.moves.move("web", peerOf(b, "B"), { listenAddress: "127.0.0.1" });
  console.log(`shared storage move: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms`);
  const shown = await b.vms.show("web");
  assert.equal(shown.state, "Running");
  assert.deepEqual(shown.disks.map((d) => d.path), disksBefore);
  assert.equal(await run(b, "web", "echo id-$(cat /proc/sys/kernel/random/boot_id)", /id-[0-9a-f-]{36}/), id0);
  assert.deepEqual((await a.vms.list()).map((v) => v.name), []);
});

test("a move that fails half way leaves the guest running on the source and nothing on the destination", { timeout: 300_000 }, async () => {
  const peer = peerOf(a, "A", {
    // The destination dies just before it would run the guest: its QEMU is killed.
    beforeFinish: async () => {
      const pid = (await a.vms.show("web")).pid!;
      process.kill(pid, "SIGKILL");
      await sleep(500);
      throw new Error("destination gone");
    },
  });
  await assert.rejects(b.moves.move("web", peer, { listenAddress: "127.0.0.1" }), /did not run the guest|migration/);
  assert.equal((await b.vms.show("web")).state, "Running");
  assert.match(await run(b, "web", "echo alive-$((2+3))", /alive-\d/), /alive-5/);
  assert.deepEqual((await a.vms.list()).map((v) => v.name), [], "nothing is left on the destination");
});
