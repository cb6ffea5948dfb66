import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { ClusterConfigError } from "../../src/cluster/errors.js";
import { clientUrlOf, createCluster, joinCluster, leaveCluster, NO_QUORUM_TOLERANCE_WARNING, type LocalMemberOptions } from "../../src/cluster/formation.js";
import { freePorts } from "../../src/cluster/lab.js";
import { EtcdMember } from "../../src/cluster/member.js";
import { clusterStatus } from "../../src/cluster/status.js";

// etcd's reconfiguration check makes each join after the second wait ~5 s; a leave may too.
const T = 180_000;

test("formation: create a cluster of one, join two hosts through a member's client API, restart a member, leave", { timeout: T }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-formation-"));
  const ports = await freePorts(8);
  const opt = (name: string, i: number): LocalMemberOptions => ({ name, address: "127.0.0.1", clientPort: ports[2 * i]!, peerPort: ports[2 * i + 1]!, dir: join(dir, name) });
  const started: EtcdMember[] = [];
  t.after(async () => {
    for (const m of started) await m.kill();
    await rm(dir, { recursive: true, force: true });
  });

  const a = await createCluster(opt("a", 0));
  started.push(a.member);
  assert.deepEqual(a.warnings, [NO_QUORUM_TOLERANCE_WARNING], "a single-member cluster is allowed, with the warning");
  const one = ClusterConnection.open({ endpoints: [clientUrlOf(opt("a", 0))] });
  await one.ns.put("probe").value("from-a");
  one.close();

  const b = await joinCluster({ ...opt("b", 1), via: [clientUrlOf(opt("a", 0))] });
  started.push(b.member);
  assert.deepEqual(b.warnings, [NO_QUORUM_TOLERANCE_WARNING], "two members still have no quorum tolerance");
  const c = await joinCluster({ ...opt("c", 2), via: [clientUrlOf(opt("b", 1)), clientUrlOf(opt("a", 0))] });
  started.push(c.member);
  assert.deepEqual(c.warnings, []);

  const conn = ClusterConnection.open({ endpoints: ["a", "b", "c"].map((n, i) => clientUrlOf(opt(n, i))) });
  t.after(() => conn.close());
  const list = await conn.etcd.cluster.memberList({});
  assert.deepEqual(list.members.map((m) => [m.name, m.isLearner]).sort(), [["a", false], ["b", false], ["c", false]], "joined as learners, then promoted to voters");
  // What was written to the one-member cluster is there, read through the newest member.
  const viaC = ClusterConnection.open({ endpoints: [clientUrlOf(opt("c", 2))] });
  assert.equal(await viaC.ns.get("probe").string(), "from-a");
  viaC.close();

  await assert.rejects(
    joinCluster({ ...opt("b", 3), via: [clientUrlOf(opt("a", 0))] }),
    (e: unknown) => e instanceof ClusterConfigError && e.rule === "cluster-member-unique",
  );
  assert.equal((await conn.etcd.cluster.memberList({})).members.length, 3, "the refused join added nothing");

  // vmhostd restarts find their member running (same process), and a killed member comes back from its data.
  const adopted = await EtcdMember.adopt(opt("a", 0).dir);
  assert.equal(adopted?.pid, a.member.pid);
  await a.member.kill();
  assert.equal(await EtcdMember.adopt(opt("a", 0).dir), undefined, "a dead member is not adopted");
  const again = await EtcdMember.restart(opt("a", 0).dir);
  started.push(again);
  await again.waitReady();

  const st = await clusterStatus(conn);
  assert.deepEqual(st.quorum, { ok: true, members: 3, reachable: 3, hasLeader: true, leader: st.quorum.leader });
  assert.ok(["a", "b", "c"].includes(st.quorum.leader!));
  assert.deepEqual(st.hosts.map((h) => [h.host, h.etcdMember?.reachable, h.leaseAlive]), [["a", true, false], ["b", true, false], ["c", true, false]]);

  // c leaves: removed from etcd's membership, its process stopped, its data gone.
  const left = await leaveCluster({ name: "c", dir: opt("c", 2).dir, via: [clientUrlOf(opt("a", 0)), clientUrlOf(opt("b", 1))] });
  assert.deepEqual(left.warnings, [NO_QUORUM_TOLERANCE_WARNING]);
  assert.deepEqual((await conn.etcd.cluster.memberList({})).members.map((m) => m.name).sort(), ["a", "b"]);
  assert.equal(await c.member.isAlive(), false);
  await assert.rejects(stat(join(opt("c", 2).dir, "data")), /ENOENT/);
  assert.equal(await conn.guard("read", () => conn.ns.get("probe").string()), "from-a", "the two left still serve");
});

test("formation: the last member cannot leave (there is nothing to leave); a join to nowhere names the address", { timeout: T }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-last-"));
  const ports = await freePorts(4);
  const a = await createCluster({ name: "solo", address: "127.0.0.1", clientPort: ports[0]!, peerPort: ports[1]!, dir: join(dir, "solo") });
  t.after(async () => {
    await a.member.kill();
    await rm(dir, { recursive: true, force: true });
  });
  await assert.rejects(
    leaveCluster({ name: "solo", dir: join(dir, "solo"), via: [`http://127.0.0.1:${ports[0]}`] }),
    (e: unknown) => e instanceof ClusterConfigError && e.rule === "cluster-last-member",
  );
  assert.equal(await a.member.isAlive(), true);
  await assert.rejects(
    joinCluster({ name: "b", address: "127.0.0.1", clientPort: ports[2]!, peerPort: ports[3]!, dir: join(dir, "b"), via: [`http://127.0.0.1:${ports[3]}`] }),
    (e: unknown) => (e as { code?: string }).code === "cluster-unreachable" && (e as Error).message.includes(`http://127.0.0.1:${ports[3]}`),
  );
});
