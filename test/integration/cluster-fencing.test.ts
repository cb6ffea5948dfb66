import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { LabCluster, LabHostProcess, monoNow, type LabEvent } from "../../src/cluster/lab.js";
import { VmRegistry } from "../../src/cluster/registry.js";
import { clusterStatus } from "../../src/cluster/status.js";

const TTL = 3; // a's, the host that fences; the others renew with 10 s (no fencing of theirs on a loaded machine)
const MARGIN_MS = 3000;
const WAIT = 45_000;
const needs = { memoryMiB: 1024, switches: ["lan"], storage: ["shared"] };

test("self-fencing: a host whose only etcd member dies fences itself; the majority restarts its VMs only afterwards; back, it starts no stale copy", { timeout: 180_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-fence-"));
  const lab = await LabCluster.start({ dir, names: ["a", "b", "c"] });
  const conn = ClusterConnection.open({ endpoints: lab.endpoints(["b", "c"]) });
  const registry = new VmRegistry(conn);
  const hosts: LabHostProcess[] = [];
  t.after(async () => {
    for (const h of hosts) await h.kill();
    conn.close();
    await lab.stop();
    await rm(dir, { recursive: true, force: true });
  });
  await registry.add({ id: "vm1", name: "web", owner: "a", state: "Running", needs, config: {} });
  await registry.add({ id: "vm2", name: "db", owner: "a", state: "Off", needs, config: {} });

  // Host a sees etcd only through its own member (a "1-host view"); b coordinates; c is a spare.
  const a = LabHostProcess.spawn({ host: "a", endpoints: lab.endpoints(["a"]), ttlSeconds: TTL, running: ["vm1"], switches: ["lan"], storage: ["shared"], freeMemoryMiB: 8192 });
  const b = LabHostProcess.spawn({ host: "b", endpoints: lab.endpoints(["b", "c"]), ttlSeconds: 10, campaign: true, fencingMarginMs: MARGIN_MS, switches: ["lan"], storage: ["shared"], freeMemoryMiB: 8192 });
  const c = LabHostProcess.spawn({ host: "c", endpoints: lab.endpoints(["c", "b"]), ttlSeconds: 10, switches: ["lan"], storage: ["shared"], freeMemoryMiB: 2048 });
  hosts.push(a, b, c);
  await Promise.all([a.waitFor("joined", WAIT), b.waitFor("elected", WAIT), c.waitFor("joined", WAIT)]);

  const cutAt = monoNow();
  await lab.kill("a"); // a's etcd is gone; b and c still have quorum (2 of 3)

  const fenced = await a.waitFor((e) => e.event === "fence-done" && e.mono > cutAt, WAIT);
  assert.deepEqual(fenced["vmsOff"], ["vm1"]);
  const moved = await b.waitFor((e) => e.event === "failover" && e["id"] === "vm1", WAIT);
  const started = await b.waitFor((e) => e.event === "vm-started" && e["id"] === "vm1", WAIT);
  assert.equal(moved["to"], "b", "the live host with the most free memory that has the switch and storage");
  // The safety property: the copy on a was off before the VM started anywhere else.
  assert.ok(fenced.mono < moved.mono, `fenced at ${fenced.mono}, moved at ${moved.mono}`);
  assert.ok(fenced.mono < started.mono);
  t.diagnostic(`a fenced ${(moved.mono - fenced.mono).toFixed(0)} ms before the coordinator moved vm1 (margin ${MARGIN_MS} ms)`);
  const wait = b.events.find((e) => e.event === "fence-wait" && e["host"] === "a") as LabEvent | undefined;
  assert.ok(wait, "the coordinator waited out the fencing margin");
  assert.ok(moved.mono >= Number(wait["dueAt"]) - 1, "and moved nothing before it was due");

  const vm1 = await registry.get("vm1");
  assert.deepEqual([vm1?.owner, vm1?.state, vm1?.failover?.from], ["b", "Running", "a"]);
  const vm2 = await registry.get("vm2");
  assert.deepEqual([vm2?.owner, vm2?.state], ["b", "Off"], "an off VM only changes owner");
  assert.equal(c.all("vm-started").length, 0);

  // a's member comes back: a's old lease expired, so it registers anew and the registry decides.
  await lab.restart("a");
  const back = await a.waitFor((e) => e.event === "recovered" && e.mono > fenced.mono, WAIT);
  assert.equal(back["leaseSurvived"], false);
  const plan = await a.waitFor((e) => e.event === "rejoin-plan" && e.mono > back.mono, WAIT);
  // vm1 belongs to b now: nothing to start here, and the fenced copy stays off.
  assert.deepEqual(plan["actions"], []);
  assert.deepEqual(plan["local"], { vm1: "off" });
  assert.equal(a.all("vm-started").length, 0, "a never started a stale copy");

  const st = await clusterStatus(conn);
  assert.equal(st.coordinator, "b");
  assert.deepEqual(st.vms.map((v) => [v.id, v.owner, v.ownerAlive, v.state, v.failedOverFrom]), [["vm1", "b", true, "Running", "a"], ["vm2", "b", true, "Off", "a"]]);
  assert.deepEqual(st.hosts.map((h) => [h.host, h.leaseAlive, h.vms]), [["a", true, 0], ["b", true, 2], ["c", true, 0]]);
});
