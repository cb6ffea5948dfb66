import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../../src/images/appliance/run.js";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { LabCluster, LabHostProcess, monoNow } from "../../src/cluster/lab.js";
import { VmRegistry } from "../../src/cluster/registry.js";
import { clusterStatus } from "../../src/cluster/status.js";
import { TestNetns } from "../helpers/netns.js";

// a's lease; b and c renew with 10 s so that the raft election after the cut (etcd here:
// election timeout 1 s, a new leader within ~2 s) never makes them fence as well.
const TTL = 4;
const MARGIN_MS = 3000;
const WAIT = 60_000;
const needs = { memoryMiB: 1024, switches: ["lan"], storage: ["shared"] };

/**
 * Three hosts, each in a network namespace of its own with its own address on one bridge (the
 * test itself reaches them through the bridge). Host a is cut off by taking its veth down: its
 * etcd member and its vmhost side are both in a minority of one.
 */
test("partition: a host cut off from the others (veth down) fences itself; the majority restarts its VM only afterwards; healed, it starts no stale copy", { timeout: 240_000 }, async (t) => {
  const tag = randomBytes(2).toString("hex");
  const net = `10.${randomInt(200, 250)}.${randomInt(0, 256)}`;
  const bridge = `vmhcb${tag}`;
  const names = ["a", "b", "c"];
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-partition-"));
  const spaces: TestNetns[] = [];
  const veth: Record<string, string> = {};
  const hosts: LabHostProcess[] = [];
  let lab: LabCluster | undefined;
  let conn: ClusterConnection | undefined;
  t.after(async () => {
    for (const h of hosts) await h.kill();
    conn?.close();
    await lab?.stop();
    // Deleting one end of a veth deletes both; a deleted namespace's veth lingered here otherwise.
    for (const v of Object.values(veth)) await run("ip", ["link", "del", v]).catch(() => undefined);
    for (const ns of spaces) await ns.cleanup(); // kills what runs inside, deletes it
    await run("ip", ["link", "del", bridge]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  await run("ip", ["link", "add", bridge, "type", "bridge"]);
  await run("ip", ["addr", "add", `${net}.254/24`, "dev", bridge]);
  await run("ip", ["link", "set", bridge, "up"]);
  const addr: Record<string, string> = {};
  const launcher: Record<string, string[]> = {};
  for (const [i, n] of names.entries()) {
    const ns = await TestNetns.create(`cl${n}`);
    spaces.push(ns);
    veth[n] = `vhc${tag}${n}`;
    addr[n] = `${net}.${i + 1}`;
    launcher[n] = ["nsenter", `--net=/run/netns/${ns.name}`];
    await run("ip", ["link", "add", veth[n]!, "type", "veth", "peer", "name", "eth0", "netns", ns.name]);
    await run("ip", ["link", "set", veth[n]!, "master", bridge, "up"]);
    await ns.ip("addr", "add", `${addr[n]}/24`, "dev", "eth0");
    await ns.ip("link", "set", "eth0", "up");
  }

  lab = await LabCluster.start({ dir, names, addresses: addr, launchers: launcher });
  conn = ClusterConnection.open({ endpoints: lab.endpoints(["b", "c", "a"]) });
  const registry = new VmRegistry(conn);
  await registry.add({ id: "vm1", name: "web", owner: "a", state: "Running", needs, config: {} });

  const spawnHost = (n: string, extra: Partial<Parameters<typeof LabHostProcess.spawn>[0]>): LabHostProcess => {
    const own = lab!.endpoints([n]);
    const h = LabHostProcess.spawn({ host: n, endpoints: [...own, ...lab!.endpoints(names.filter((x) => x !== n))], ttlSeconds: TTL, launcher: launcher[n], switches: ["lan"], storage: ["shared"], ...extra });
    hosts.push(h);
    return h;
  };
  const a = spawnHost("a", { running: ["vm1"], freeMemoryMiB: 8192 });
  const b = spawnHost("b", { campaign: true, fencingMarginMs: MARGIN_MS, freeMemoryMiB: 8192, ttlSeconds: 10 });
  const c = spawnHost("c", { freeMemoryMiB: 4096, ttlSeconds: 10 });
  await Promise.all([a.waitFor("joined", WAIT), b.waitFor("elected", WAIT), c.waitFor("joined", WAIT)]);

  const cutAt = monoNow();
  await run("ip", ["link", "set", veth["a"]!, "down"]);

  const fenced = await a.waitFor((e) => e.event === "fence-done" && e.mono > cutAt, WAIT);
  assert.deepEqual(fenced["vmsOff"], ["vm1"]);
  const moved = await b.waitFor((e) => e.event === "failover" && e["id"] === "vm1", WAIT);
  assert.equal(moved["to"], "b");
  const started = await b.waitFor((e) => e.event === "vm-started" && e["id"] === "vm1", WAIT);
  // vm1 ran on a until a fenced, and on b only from after that: never on both.
  // (b may see its own move through the registry watch before the transaction's answer: the
  // start and the 'failover' line of b are not ordered; both come after a's fence.)
  assert.ok(fenced.mono < moved.mono && fenced.mono < started.mono, `a fenced ${fenced.mono}, moved ${moved.mono}, b started ${started.mono}`);
  t.diagnostic(`a fenced ${(started.mono - fenced.mono).toFixed(0)} ms before b started vm1 (margin ${MARGIN_MS} ms)`);
  assert.equal(c.all("vm-started").length, 0);
  t.diagnostic(`fences on the majority side during the cut's raft election: b ${b.all("fenced").length}, c ${c.all("fenced").length}`);
  const vm1 = await registry.get("vm1");
  assert.deepEqual([vm1?.owner, vm1?.state, vm1?.failover?.from], ["b", "Running", "a"]);

  // Healed: a's old lease expired while it was cut off; it registers anew and the registry decides.
  await run("ip", ["link", "set", veth["a"]!, "up"]);
  const back = await a.waitFor((e) => e.event === "recovered" && e.mono > fenced.mono, WAIT);
  assert.equal(back["leaseSurvived"], false);
  const plan = await a.waitFor((e) => e.event === "rejoin-plan" && e.mono > back.mono, WAIT);
  assert.deepEqual(plan["actions"], [], "vm1 is b's now: nothing to start on a");
  assert.deepEqual(plan["local"], { vm1: "off" });
  assert.equal(a.all("vm-started").length, 0, "a never started a stale copy");
  const st = await clusterStatus(conn);
  assert.deepEqual(st.hosts.map((h) => [h.host, h.leaseAlive, h.etcdMember?.reachable]), [["a", true, true], ["b", true, true], ["c", true, true]]);
  assert.deepEqual(st.vms.map((v) => [v.id, v.owner]), [["vm1", "b"]]);
});
