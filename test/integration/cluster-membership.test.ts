import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { MEMBERS } from "../../src/cluster/keys.js";
import { LabCluster, LabHostProcess, monoNow } from "../../src/cluster/lab.js";
import { hostOfMemberKey, listMembers } from "../../src/cluster/membership.js";
import { clusterStatus } from "../../src/cluster/status.js";

const TTL = 5;
/** Generous bounds for things that must happen (never a guess at when they happen). */
const WAIT = 30_000;

async function lab(t: { after(fn: () => Promise<void>): void }, tag: string): Promise<{ lab: LabCluster; conn: ClusterConnection; deletes: { host: string; mono: number }[] }> {
  const dir = await mkdtemp(join(tmpdir(), `vmhost-cluster-${tag}-`));
  const l = await LabCluster.start({ dir, names: ["a", "b", "c"] });
  const conn = ClusterConnection.open({ endpoints: l.endpoints() });
  const deletes: { host: string; mono: number }[] = [];
  const w = await conn.ns.watch().prefix(MEMBERS).create();
  w.on("delete", (kv) => deletes.push({ host: hostOfMemberKey(kv.key.toString()), mono: monoNow() }));
  t.after(async () => {
    await w.cancel();
    conn.close();
    await l.stop();
    await rm(dir, { recursive: true, force: true });
  });
  return { lab: l, conn, deletes };
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = WAIT): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("membership: a host's key lives exactly as long as its lease; SIGKILL of the host process lets it expire", { timeout: 120_000 }, async (t) => {
  const { lab: l, conn, deletes } = await lab(t, "member");
  const h = LabHostProcess.spawn({ host: "h1", endpoints: l.endpoints(), ttlSeconds: TTL, freeMemoryMiB: 3000, switches: ["lan"], storage: ["shared"] });
  t.after(() => h.kill());
  const joined = await h.waitFor("joined", WAIT);

  const [m] = await listMembers(conn);
  assert.equal(m?.host, "h1");
  assert.equal(m?.leaseId, joined["leaseId"]);
  assert.deepEqual([m?.freeMemoryMiB, m?.switches, m?.storage, m?.drained], [3000, ["lan"], ["shared"], false]);

  h.send({ cmd: "update", patch: { freeMemoryMiB: 1234, drained: true } });
  await h.waitFor("updated", WAIT);
  const [u] = await listMembers(conn);
  assert.deepEqual([u?.freeMemoryMiB, u?.drained, u?.leaseId], [1234, true, joined["leaseId"]], "updates keep the same lease");
  const st = await clusterStatus(conn);
  const row = st.hosts.find((x) => x.host === "h1");
  assert.equal(row?.leaseAlive, true);
  assert.ok(row!.leaseTtlSeconds! > 0 && row!.leaseTtlSeconds! <= TTL, `lease TTL left ${row?.leaseTtlSeconds}`);

  // Renewals keep it alive well past the TTL...
  const since = monoNow();
  await until("three TTLs of renewals", async () => (monoNow() - since > 3 * TTL * 1000 ? true : undefined), 4 * TTL * 1000 + WAIT);
  assert.equal(deletes.length, 0, "a renewing host's key never expired");
  // ...and death ends it: nobody revokes anything, the lease simply runs out.
  const killedAt = monoNow();
  await h.kill();
  await until("the dead host's key to expire", async () => ((await listMembers(conn)).length === 0 ? true : undefined));
  assert.equal(deletes.length, 1);
  assert.equal(deletes[0]!.host, "h1");
  assert.ok(deletes[0]!.mono - killedAt <= TTL * 1000 + 5000, `expired ${deletes[0]!.mono - killedAt} ms after the kill (TTL ${TTL} s)`);
  const after = await clusterStatus(conn);
  assert.equal(after.hosts.find((x) => x.host === "h1"), undefined, "a dead host with no VMs and no etcd member is not listed");
});

test("membership: leave revokes at once; a restarted host process resumes its lease without its key ever vanishing", { timeout: 120_000 }, async (t) => {
  const { lab: l, conn, deletes } = await lab(t, "resume");
  const leaver = LabHostProcess.spawn({ host: "leaver", endpoints: l.endpoints(), ttlSeconds: 60 });
  t.after(() => leaver.kill());
  await leaver.waitFor("joined", WAIT);
  leaver.send({ cmd: "leave" });
  await leaver.waitFor("left", WAIT);
  assert.deepEqual((await listMembers(conn)).map((m) => m.host), [], "the key went with the revoked lease, not after its 60 s TTL");

  // A long TTL: the replacement process must start within it (startup took ~3 s on a loaded machine).
  const first = LabHostProcess.spawn({ host: "svc", endpoints: l.endpoints(), ttlSeconds: 30 });
  t.after(() => first.kill());
  const j1 = await first.waitFor("joined", WAIT);
  await first.kill();
  const second = LabHostProcess.spawn({ host: "svc", endpoints: l.endpoints(), ttlSeconds: 30, resumeLeaseId: String(j1["leaseId"]) });
  t.after(() => second.kill());
  const j2 = await second.waitFor("joined", WAIT);
  assert.equal(j2["leaseId"], j1["leaseId"], "the same lease");
  assert.deepEqual(
    deletes.filter((d) => d.host === "svc"),
    [],
    "the key stayed: the others never saw this host die",
  );
  const [m] = await listMembers(conn);
  assert.equal(m?.leaseId, j1["leaseId"]);
});
