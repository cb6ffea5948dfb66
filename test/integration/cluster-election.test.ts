import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { currentCoordinator, observeCoordinator } from "../../src/cluster/coordinator.js";
import { LabCluster, LabHostProcess, monoNow } from "../../src/cluster/lab.js";

const WAIT = 30_000;
// Campaign leases of 5 s: short enough for a quick test, long enough that a loaded machine does
// not let the coordinator's lease lapse on its own (which would elect another host by itself).
const TTL = 5;

test("coordinator: exactly one of three hosts is elected; when its process dies another takes over and observers see it", { timeout: 120_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-election-"));
  const lab = await LabCluster.start({ dir, names: ["a", "b", "c"] });
  const conn = ClusterConnection.open({ endpoints: lab.endpoints() });
  const seen: { host: string | undefined; mono: number }[] = [];
  const observer = await observeCoordinator(conn, (host) => seen.push({ host, mono: monoNow() }));
  const hosts = ["h1", "h2", "h3"].map((h) => LabHostProcess.spawn({ host: h, endpoints: lab.endpoints(), ttlSeconds: TTL, campaign: true }));
  t.after(async () => {
    for (const h of hosts) await h.kill();
    await observer.close();
    conn.close();
    await lab.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const first = await Promise.any(hosts.map((h) => h.waitFor("elected", WAIT).then(() => h)));
  const context = (): unknown => ({ seen, current: observer.current(), hosts: hosts.map((h) => [h.host, h.events.map((e) => e.event)]) });
  await until(() => observer.current() === first.host, "the observer to see the first coordinator", context);
  // Every host has joined and campaigns; only one may be elected.
  await Promise.all(hosts.map((h) => h.waitFor("joined", WAIT)));
  assert.deepEqual(hosts.filter((h) => h.all("elected").length > 0).map((h) => h.host), [first.host]);
  assert.equal(await currentCoordinator(conn), first.host);

  const killedAt = monoNow();
  await first.kill();
  const rest = hosts.filter((h) => h !== first);
  const second = await Promise.any(rest.map((h) => h.waitFor("elected", WAIT).then(() => h)));
  await until(() => observer.current() === second.host, "the observer to see the new coordinator", context);
  assert.deepEqual(rest.filter((h) => h.all("elected").length > 0).map((h) => h.host), [second.host], "still exactly one");
  assert.equal(await currentCoordinator(conn), second.host);
  const change = seen.find((s) => s.host === second.host && s.mono >= killedAt);
  assert.ok(change, `observer changes: ${JSON.stringify(seen)}`);
  t.diagnostic(`handover seen by the observer ${(change.mono - killedAt).toFixed(0)} ms after SIGKILL (campaign lease TTL ${TTL} s)`);
});

async function until(cond: () => boolean, what: string, context: () => unknown = () => ""): Promise<void> {
  const deadline = Date.now() + WAIT;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`not within ${WAIT} ms: ${what} (${JSON.stringify(context())})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
