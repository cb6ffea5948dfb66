import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { FailoverTracker, planFailover, planRejoin, type LocalCopy } from "../../src/cluster/failover.js";
import type { PlacementCandidate } from "../../src/cluster/placement.js";
import type { ClusteredVmState, RegistryEntry } from "../../src/cluster/registry.js";
import { SelfFence } from "../../src/cluster/selffence.js";

const MARGIN = 5000;

function entry(id: string, owner: string, state: ClusteredVmState, memoryMiB = 1024, rev = "10"): RegistryEntry {
  return { id, name: `vm-${id}`, owner, state, needs: { memoryMiB, switches: ["lan"], storage: ["shared"] }, config: { any: ["json"] }, revision: rev, createRevision: "5" };
}
function member(host: string, freeMemoryMiB: number, extra: Partial<PlacementCandidate> = {}): PlacementCandidate {
  return { host, alive: true, drained: false, freeMemoryMiB, switches: ["lan"], storage: ["shared"], ...extra };
}

test("tracker: a host's VMs are due exactly fencing-margin after its key was first seen missing", () => {
  const t = new FailoverTracker(MARGIN);
  t.absent("a", 1000);
  t.absent("a", 3000); // a later sighting of the same absence does not postpone it
  assert.deepEqual(t.due(5999), []);
  assert.equal(t.nextDeadline(0), 6000);
  assert.deepEqual(t.due(6000), [{ host: "a", goneSince: 1000, dueAt: 6000 }]);
});

test("tracker: the key coming back cancels; going again starts a new margin", () => {
  const t = new FailoverTracker(MARGIN);
  t.absent("a", 1000);
  t.present("a");
  assert.deepEqual(t.due(100_000), []);
  assert.equal(t.isGone("a"), false);
  t.absent("a", 7000);
  assert.deepEqual(t.due(11_999), []);
  assert.equal(t.due(12_000).length, 1);
});

test("tracker: restart (events may have been missed) counts the margin from now, never earlier", () => {
  const t = new FailoverTracker(MARGIN);
  t.absent("a", 1000);
  t.absent("a", 4000, { restart: true });
  assert.deepEqual(t.due(8999), []);
  assert.equal(t.due(9000)[0]!.goneSince, 4000);
});

test("tracker: resolved hosts are no longer due; reopen brings them back; hosts are reported in name order", () => {
  const t = new FailoverTracker(MARGIN);
  t.absent("b", 0);
  t.absent("a", 0);
  assert.deepEqual(t.due(MARGIN).map((d) => d.host), ["a", "b"]);
  t.resolved("a");
  assert.deepEqual(t.due(MARGIN).map((d) => d.host), ["b"]);
  t.reopen("a");
  assert.deepEqual(t.due(MARGIN).map((d) => d.host), ["a", "b"]);
  assert.equal(t.nextDeadline(MARGIN), undefined, "nothing in the future");
  assert.throws(() => new FailoverTracker(-1), RangeError);
});

/**
 * The two halves together on one timeline: the dead host fences by its SelfFence; etcd deletes
 * its key when a TTL passes without a processed renewal; the coordinator sees the deletion after
 * some delay and moves the VMs when the tracker says so. A VM may start elsewhere only after the
 * host has fenced plus the margin (the margin is the time the fence itself may take).
 */
test("failover (model): VMs never become due elsewhere earlier than fencing-margin after the host fenced", () => {
  const TTL = 10_000;
  fc.assert(
    fc.property(
      fc.array(fc.record({ gap: fc.integer({ min: 1, max: 4000 }), procDelay: fc.integer({ min: 0, max: 3000 }), ackDelay: fc.integer({ min: 0, max: 3000 }), lost: fc.boolean() }), { maxLength: 20 }),
      fc.integer({ min: 0, max: 5000 }),
      (renewals, observeDelay) => {
        const host = new SelfFence(TTL, 0);
        const processed = [0];
        const acks: { at: number; sentAt: number }[] = [];
        let t = 0;
        for (const r of renewals) {
          t += r.gap;
          processed.push(t + r.procDelay);
          if (!r.lost) acks.push({ at: t + r.procDelay + r.ackDelay, sentAt: t });
        }
        processed.sort((a, b) => a - b);
        let expiry = TTL;
        for (const p of processed) if (p < expiry) expiry = Math.max(expiry, p + TTL);
        let fencedAt: number | undefined;
        for (const a of acks.sort((x, y) => x.at - y.at)) {
          if (a.at >= expiry) break; // the host is dead from here on: nothing reaches it
          for (let d = host.nextDeadline(); d !== undefined && d <= a.at; d = host.nextDeadline()) if (host.tick(d).length) fencedAt ??= d;
          if (host.renewed(a.sentAt, a.at).some((x) => x.type === "fence")) fencedAt ??= a.at;
        }
        for (let d = host.nextDeadline(); d !== undefined; d = host.nextDeadline()) if (host.tick(d).length) fencedAt ??= d;
        const tracker = new FailoverTracker(MARGIN);
        tracker.absent("a", expiry + observeDelay);
        const dueAt = tracker.pending()[0]!.dueAt;
        assert.ok(fencedAt !== undefined);
        assert.ok(dueAt - fencedAt! >= MARGIN, `fenced at ${fencedAt}, VMs due elsewhere at ${dueAt}`);
      },
    ),
    { numRuns: 2000 },
  );
});

test("planFailover: running VMs restart on the live host with the most memory; off and saved ones only change owner", () => {
  const entries = [entry("1", "a", "Running", 2048), entry("2", "a", "Paused", 1024), entry("3", "a", "Off", 4096), entry("4", "a", "Saved", 512), entry("5", "b", "Running")];
  const plan = planFailover("a", entries, [member("b", 3000), member("c", 2500)]);
  assert.deepEqual(
    plan.moves.map((m) => [m.id, m.to, m.state]),
    [
      ["1", "b", "Running"], // 2048 first: b (3000) -> 952 left
      ["2", "c", "Running"], // Paused restarts as Running: c (2500) -> 1476
      ["4", "c", "Saved"], // off/saved are placed on what is left (c 1476 > b 952) without reserving
    ],
  );
  assert.deepEqual(plan.unplaced.map((u) => [u.id, u.rejected.map((r) => r.reason)]), [["3", ["not-enough-memory", "not-enough-memory"]]]);
  assert.ok(plan.moves.every((m) => m.from === "a" && m.revision === "10"));
});

test("planFailover: the dead host is never a target even if it is still listed; drained and unfit hosts are skipped", () => {
  const plan = planFailover("a", [entry("1", "a", "Running")], [member("a", 99_999), member("b", 8192, { drained: true }), member("c", 8192, { switches: [] }), member("d", 1024)]);
  assert.deepEqual(plan.moves.map((m) => m.to), ["d"]);
});

test("planFailover: a host that owns nothing yields an empty plan", () => {
  assert.deepEqual(planFailover("z", [entry("1", "a", "Running")], [member("b", 8192)]), { moves: [], unplaced: [] });
});

test("planRejoin: the registry's owner decides: stale copies are turned off, never started; owned VMs are kept, resumed or started", () => {
  const entries = [
    entry("moved", "b", "Running"), // failed over while we were away
    entry("mine-run", "a", "Running"),
    entry("mine-fenced", "a", "Running"),
    entry("mine-paused", "a", "Running"),
    entry("mine-missing", "a", "Running"),
    entry("mine-off", "a", "Off"),
    entry("user-paused", "a", "Paused"),
  ];
  const local = new Map<string, LocalCopy>([
    ["moved", "paused"],
    ["mine-run", "running"],
    ["mine-fenced", "off"],
    ["mine-paused", "paused"],
    ["mine-off", "running"],
    ["user-paused", "paused"],
    ["gone", "running"], // no longer clustered
  ]);
  assert.deepEqual(planRejoin("a", entries, local), [
    { id: "gone", action: "turn-off", reason: "not-clustered" },
    { id: "moved", action: "turn-off", reason: "owned-elsewhere", owner: "b" },
    { id: "mine-fenced", action: "start" },
    { id: "mine-missing", action: "start" },
    { id: "mine-off", action: "turn-off", reason: "registry-off" },
    { id: "mine-paused", action: "resume" },
    { id: "mine-run", action: "keep" },
    { id: "user-paused", action: "keep" },
  ]);
});

test("planRejoin: whatever the local copies, a VM owned by another host is never started or kept here", () => {
  const copies: (LocalCopy | undefined)[] = ["running", "paused", "off", undefined];
  const states: ClusteredVmState[] = ["Running", "Paused", "Saved", "Off"];
  for (const copy of copies)
    for (const state of states)
      for (const owner of ["a", "b"]) {
        const local = new Map<string, LocalCopy>(copy ? [["x", copy]] : []);
        const acts = planRejoin("a", [entry("x", owner, state)], local);
        if (owner === "b") assert.ok(acts.every((x) => x.action === "turn-off"), `${copy} ${state}`);
        if (owner === "b" && (copy === "running" || copy === "paused")) assert.equal(acts.length, 1);
        if (owner === "a" && (state === "Running" || state === "Paused")) assert.equal(acts.length, 1);
      }
});
