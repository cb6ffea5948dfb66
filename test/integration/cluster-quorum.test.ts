import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { ClusterUnreachableError, QuorumLostError } from "../../src/cluster/errors.js";
import { LabCluster, LabHostProcess, monoNow } from "../../src/cluster/lab.js";
import { acquireLock } from "../../src/cluster/locks.js";
import { listMembers } from "../../src/cluster/membership.js";
import { VmRegistry } from "../../src/cluster/registry.js";
import { clusterStatus } from "../../src/cluster/status.js";

const TTL = 3;
const WAIT = 45_000;
const needs = { memoryMiB: 512, switches: [], storage: [] };

function isQuorumLost(e: unknown): boolean {
  return e instanceof QuorumLostError && e.code === "cluster-no-quorum" && e.status === 503 && e.view.members === 3 && e.view.reachable === 1 && !e.view.hasLeader;
}

test("quorum loss (2 of 3 members killed): changes are refused with a clear error, stale reads still answer; when quorum returns the same lease lives on and the owner restarts its VMs", { timeout: 180_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-quorum-"));
  const lab = await LabCluster.start({ dir, names: ["a", "b", "c"] });
  const conn = ClusterConnection.open({ endpoints: lab.endpoints(), requestTimeoutMs: 2000 });
  const registry = new VmRegistry(conn);
  const hosts: LabHostProcess[] = [];
  t.after(async () => {
    for (const x of hosts) await x.kill();
    conn.close();
    await lab.stop();
    await rm(dir, { recursive: true, force: true });
  });
  const added = await registry.add({ id: "vm1", name: "web", owner: "h", state: "Running", needs, config: {} });
  const h = LabHostProcess.spawn({ host: "h", endpoints: lab.endpoints(), ttlSeconds: TTL, running: ["vm1"] });
  hosts.push(h);
  const joined = await h.waitFor("joined", WAIT);

  const cutAt = monoNow();
  await lab.kill("b");
  await lab.kill("c");
  // Until the survivor notices (CheckQuorum: one election timeout), it may still act as leader
  // and append a proposal to its log, which would then commit when quorum returns: a refused
  // change is only certain not to happen once no member has a leader. Wait for that state.
  const deadline = Date.now() + WAIT;
  while ((await conn.quorumView()).hasLeader) {
    assert.ok(Date.now() < deadline, "the surviving member still has a leader");
    await new Promise((r) => setTimeout(r, 100));
  }

  // Changes: refused, naming the cause and the counts.
  const err = await registry.update("vm1", added.revision, { id: "vm1", name: "web", owner: "h", state: "Off", needs, config: {} }).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(isQuorumLost(err), String(err));
  assert.match((err as Error).message, /^cannot update clustered VM web: the cluster has no quorum \(1 of 3 etcd members answer, none has a leader; 2 are needed\)\. Changes are refused/);
  await assert.rejects(registry.add({ id: "vm2", name: "new", owner: "h", state: "Off", needs, config: {} }), isQuorumLost);
  await assert.rejects(acquireLock(conn, "vm:web", { deadlineMs: 1000 }), isQuorumLost);
  // Linearizable reads fail the same way; a serializable read answers from the member that is left.
  await assert.rejects(registry.list(), isQuorumLost);
  assert.deepEqual((await registry.list({ serializable: true })).map((e) => [e.id, e.owner, e.state]), [["vm1", "h", "Running"]]);
  const st = await clusterStatus(conn);
  assert.deepEqual([st.quorum.ok, st.quorum.reachable, st.quorum.members, st.stale], [false, 1, 3, true]);
  assert.deepEqual(st.vms.map((v) => [v.id, v.owner, v.state]), [["vm1", "h", "Running"]]);
  assert.match(st.warnings.join("\n"), /no quorum: 1 of 3 etcd members answer and none has a leader/);

  // The rule (index.ts): a host that cannot renew for a whole TTL fences; it cannot tell this from
  // being the minority side of a partition, where the majority would restart its VMs.
  const fenced = await h.waitFor((e) => e.event === "fence-done" && e.mono > cutAt, WAIT);
  assert.deepEqual(fenced["vmsOff"], ["vm1"]);

  // One member back: quorum again. etcd's new leader extends every lease by a full TTL, so h's
  // lease outlived the outage; nobody failed h over, and the registry (owner h) lets h start vm1.
  await lab.restart("b");
  const back = await h.waitFor((e) => e.event === "recovered" && e.mono > fenced.mono, WAIT);
  assert.equal(back["leaseSurvived"], true);
  const plan = await h.waitFor((e) => e.event === "rejoin-plan" && e.mono > back.mono, WAIT);
  assert.deepEqual(plan["actions"], [{ id: "vm1", action: "start" }], JSON.stringify(h.events));
  const [m] = await listMembers(conn);
  assert.equal(m?.leaseId, joined["leaseId"], "the member key is bound to the same lease");
  // The refused changes did not happen, and changes work again.
  assert.equal((await registry.get("vm1"))?.revision, added.revision);
  assert.equal(await registry.get("vm2"), undefined);
  // A host that can reach no member at all (c is still dead) is told so, by address.
  const onlyC = ClusterConnection.open({ endpoints: lab.endpoints(["c"]), requestTimeoutMs: 1000 });
  await assert.rejects(new VmRegistry(onlyC).list(), (e: unknown) => e instanceof ClusterUnreachableError && e.code === "cluster-unreachable" && (e as Error).message.includes(lab.endpoints(["c"])[0]!));
  onlyC.close();
  const updated = await registry.update("vm1", added.revision, { id: "vm1", name: "web", owner: "h", state: "Running", needs, config: { note: "changed after quorum returned" } });
  assert.ok(BigInt(updated.revision) > BigInt(added.revision));
});
