import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { ClusterConfigError, RevisionConflictError } from "../../src/cluster/errors.js";
import { LabCluster } from "../../src/cluster/lab.js";
import { VmRegistry, type RegistryEvent, type VmRecordInput } from "../../src/cluster/registry.js";

const VM: VmRecordInput = {
  id: "6b1f2a3c-0d4e-4f50-8a61-7b8c9d0e1f23",
  name: "web",
  owner: "a",
  state: "Off",
  needs: { memoryMiB: 1024, switches: ["lan"], storage: ["shared"] },
  config: { generation: 2, disks: [{ path: "/shared/web.qcow2" }] },
};

test("registry: revision-checked changes: of two concurrent updates from one revision exactly one wins", { timeout: 120_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-registry-"));
  const lab = await LabCluster.start({ dir, names: ["a", "b", "c"] });
  // Two hosts' connections, each through a different member first.
  const c1 = ClusterConnection.open({ endpoints: lab.endpoints(["a", "b", "c"]) });
  const c2 = ClusterConnection.open({ endpoints: lab.endpoints(["c", "b", "a"]) });
  t.after(async () => {
    c1.close();
    c2.close();
    await lab.stop();
    await rm(dir, { recursive: true, force: true });
  });
  const r1 = new VmRegistry(c1);
  const r2 = new VmRegistry(c2);
  const events: RegistryEvent[] = [];
  const watch = await r2.watch((e) => events.push(e));
  t.after(() => watch.close());

  const added = await r1.add(VM);
  assert.equal(added.createRevision, added.revision);
  assert.deepEqual((await r2.get(VM.id))?.config, VM.config, "the opaque config comes back as it went in");
  await assert.rejects(r2.add({ ...VM, name: "other" }), (e: unknown) => e instanceof RevisionConflictError && e.expected === "0" && e.actual === added.revision);

  let rev = added.revision;
  const winners = { a: 0, b: 0 };
  for (let round = 0; round < 20; round++) {
    const [x, y] = await Promise.allSettled([
      r1.update(VM.id, rev, { ...VM, owner: "a", state: "Running", name: `web-${round}-a` }),
      r2.update(VM.id, rev, { ...VM, owner: "b", state: "Running", name: `web-${round}-b` }),
    ]);
    const won = [x, y].filter((s) => s.status === "fulfilled");
    const lost = [x, y].filter((s): s is PromiseRejectedResult => s.status === "rejected");
    assert.equal(won.length, 1, `round ${round}: exactly one update wins`);
    const winner = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof r1.update>>>).value;
    const err = lost[0]!.reason as RevisionConflictError;
    assert.ok(err instanceof RevisionConflictError, String(err));
    assert.equal(err.code, "cluster-revision-conflict");
    assert.equal(err.expected, rev);
    assert.equal(err.actual, winner.revision, "the loser is told the winner's revision");
    const now = await r1.get(VM.id);
    assert.equal(now?.name, winner.name, "the registry holds the winner's record, whole");
    assert.equal(now?.owner, winner.owner);
    assert.equal(now?.revision, winner.revision);
    winners[winner.owner as "a" | "b"]++;
    rev = winner.revision;
  }
  assert.equal(winners.a + winners.b, 20);

  // A function of the current record; a stale revision is refused before and at the write.
  const moved = await r2.update(VM.id, rev, (cur) => ({ ...cur, owner: "c" }));
  assert.equal(moved.owner, "c");
  await assert.rejects(r1.update(VM.id, rev, (cur) => ({ ...cur, owner: "a" })), RevisionConflictError);
  await assert.rejects(r1.update(VM.id, moved.revision, { ...VM, id: "other-id" }), (e: unknown) => e instanceof ClusterConfigError && e.rule === "cluster-vm-id-fixed");
  await assert.rejects(r1.remove(VM.id, rev), (e: unknown) => e instanceof RevisionConflictError && e.actual === moved.revision);
  await r1.remove(VM.id, moved.revision);
  assert.equal(await r2.get(VM.id), undefined);
  await assert.rejects(r1.update(VM.id, moved.revision, VM), (e: unknown) => e instanceof RevisionConflictError && e.actual === undefined);

  // The watcher saw every change, in order.
  const deadline = Date.now() + 10_000;
  while (events.length < 23 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(events.length, 23, "add + 20 updates + 1 move + 1 delete");
  assert.equal(events[0]?.type, "put");
  assert.equal(events.at(-1)?.type, "delete");
  const revs = events.map((e) => BigInt(e.type === "put" ? e.entry.revision : e.revision));
  assert.ok(revs.every((r, i) => i === 0 || r > revs[i - 1]!), "revisions only go up");

  // A damaged record is reported by its key.
  await c1.ns.put(`vms/broken`).value("{not json");
  await assert.rejects(r1.list(), (e: unknown) => e instanceof ClusterConfigError && /\/vmhost\/vms\/broken/.test((e as Error).message));
});
