import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { placeMany, placeVm, type PlacementCandidate, type PlacementNeeds, type RejectionReason } from "../../src/cluster/placement.js";

const NEEDS: PlacementNeeds = { memoryMiB: 1024, switches: ["lan"], storage: ["shared"] };
const MEMORY = [0, 1023, 1024, 2048, 4096];

interface Attrs {
  alive: boolean;
  drained: boolean;
  hasSwitch: boolean;
  hasStorage: boolean;
  free: number;
}

function* allAttrs(): Generator<Attrs> {
  for (const alive of [true, false])
    for (const drained of [true, false])
      for (const hasSwitch of [true, false])
        for (const hasStorage of [true, false])
          for (const free of MEMORY) yield { alive, drained, hasSwitch, hasStorage, free };
}

function candidate(host: string, a: Attrs): PlacementCandidate {
  return {
    host,
    alive: a.alive,
    drained: a.drained,
    freeMemoryMiB: a.free,
    switches: a.hasSwitch ? ["lan", "other"] : ["other"],
    storage: a.hasStorage ? ["local", "shared"] : ["local"],
  };
}

/** The rule, stated from the attributes alone (not from the code under test). */
function expectedReason(a: Attrs): RejectionReason | undefined {
  if (!a.alive) return "not-alive";
  if (a.drained) return "drained";
  if (!a.hasSwitch) return "missing-switch";
  if (!a.hasStorage) return "missing-storage";
  if (a.free < NEEDS.memoryMiB) return "not-enough-memory";
  return undefined;
}

test("placement: every combination of three hosts (alive, drained, switch, storage, free memory) picks the eligible host with the most free memory, ties by name", () => {
  const names = ["c", "a", "b"]; // not sorted: input order must not matter
  const attrs = [...allAttrs()];
  let cases = 0;
  let none = 0;
  let ties = 0;
  for (const x of attrs)
    for (const y of attrs)
      for (const z of attrs) {
        const hosts: [string, Attrs][] = [
          [names[0]!, x],
          [names[1]!, y],
          [names[2]!, z],
        ];
        const r = placeVm(NEEDS, hosts.map(([h, a]) => candidate(h, a)));
        const eligible = hosts.filter(([, a]) => expectedReason(a) === undefined);
        if (!eligible.length) {
          none++;
          assert.equal(r.host, undefined);
        } else {
          const best = Math.max(...eligible.map(([, a]) => a.free));
          const expected = eligible.filter(([, a]) => a.free === best).map(([h]) => h).sort()[0];
          if (eligible.filter(([, a]) => a.free === best).length > 1) ties++;
          assert.equal(r.host, expected);
        }
        // Each ineligible host is reported once, with the first rule it breaks, in name order.
        const rejected = hosts.filter(([, a]) => expectedReason(a) !== undefined).sort(([p], [q]) => (p < q ? -1 : 1));
        assert.deepEqual(
          r.rejected.map((j) => [j.host, j.reason]),
          rejected.map(([h, a]) => [h, expectedReason(a)]),
        );
        cases++;
      }
  assert.equal(cases, 80 ** 3);
  assert.ok(none > 0 && ties > 0, "the enumeration covers the no-host and the tie cases");
});

test("placement: an excluded host is never chosen, even when it has the most memory", () => {
  const hosts = [candidate("a", { alive: true, drained: false, hasSwitch: true, hasStorage: true, free: 8192 }), candidate("b", { alive: true, drained: false, hasSwitch: true, hasStorage: true, free: 2048 })];
  assert.equal(placeVm(NEEDS, hosts).host, "a");
  const r = placeVm(NEEDS, hosts, { exclude: ["a"] });
  assert.equal(r.host, "b");
  assert.deepEqual(r.rejected.map((j) => j.reason), ["excluded"]);
});

test("placement: rejection details name the missing switch, storage and the memory figures", () => {
  const r = placeVm({ memoryMiB: 2048, switches: ["lan", "dmz"], storage: ["nfs"] }, [
    { host: "a", alive: true, drained: false, freeMemoryMiB: 4096, switches: ["lan"], storage: ["nfs"] },
    { host: "b", alive: true, drained: false, freeMemoryMiB: 4096, switches: ["lan", "dmz"], storage: [] },
    { host: "c", alive: true, drained: false, freeMemoryMiB: 1000, switches: ["lan", "dmz"], storage: ["nfs"] },
  ]);
  assert.equal(r.host, undefined);
  assert.deepEqual(
    r.rejected.map((j) => j.detail),
    ["a: has no switch 'dmz'", "b: does not see storage 'nfs'", "c: 1000 MiB free < 2048 MiB needed"],
  );
});

test("placement: a VM that needs no switch and no storage fits any live, undrained host with memory", () => {
  const r = placeVm({ memoryMiB: 1, switches: [], storage: [] }, [{ host: "x", alive: true, drained: false, freeMemoryMiB: 1, switches: [], storage: [] }]);
  assert.equal(r.host, "x");
});

test("placeMany: larger VMs first, each placement reserves its memory", () => {
  const hosts: PlacementCandidate[] = [
    { host: "a", alive: true, drained: false, freeMemoryMiB: 3000, switches: [], storage: [] },
    { host: "b", alive: true, drained: false, freeMemoryMiB: 2500, switches: [], storage: [] },
  ];
  const need = (m: number): PlacementNeeds => ({ memoryMiB: m, switches: [], storage: [] });
  const r = placeMany(
    [
      { id: "small", needs: need(1000) },
      { id: "big", needs: need(2500) },
      { id: "mid", needs: need(1500) },
    ],
    hosts,
  );
  // big -> a (3000 -> 500); mid -> b (2500 -> 1000); small -> b (1000 >= 1000, a has 500).
  assert.deepEqual(Object.fromEntries(r.assignments), { big: "a", mid: "b", small: "b" });
  assert.deepEqual(r.unplaced, []);
  assert.equal(hosts[0]!.freeMemoryMiB, 3000, "the caller's candidates are not modified");
});

test("placeMany: never commits more memory to a host than it reported free; every unplaced VM fits nowhere that is left", () => {
  const hostArb = fc.record({ free: fc.integer({ min: 0, max: 8192 }), alive: fc.boolean(), drained: fc.boolean() });
  fc.assert(
    fc.property(fc.array(hostArb, { minLength: 1, maxLength: 5 }), fc.array(fc.integer({ min: 1, max: 4096 }), { maxLength: 12 }), (hs, vms) => {
      const hosts: PlacementCandidate[] = hs.map((h, i) => ({ host: `h${i}`, alive: h.alive, drained: h.drained, freeMemoryMiB: h.free, switches: [], storage: [] }));
      const reqs = vms.map((m, i) => ({ id: `v${String(i).padStart(2, "0")}`, needs: { memoryMiB: m, switches: [], storage: [] } }));
      const r = placeMany(reqs, hosts);
      const used = new Map<string, number>();
      for (const [id, h] of r.assignments) used.set(h, (used.get(h) ?? 0) + reqs.find((q) => q.id === id)!.needs.memoryMiB);
      for (const h of hosts) {
        assert.ok((used.get(h.host) ?? 0) <= h.freeMemoryMiB);
        if (used.has(h.host)) assert.ok(h.alive && !h.drained);
      }
      assert.equal(r.assignments.size + r.unplaced.length, reqs.length);
      const left = Math.max(0, ...hosts.filter((h) => h.alive && !h.drained).map((h) => h.freeMemoryMiB - (used.get(h.host) ?? 0)));
      for (const u of r.unplaced) assert.ok(reqs.find((q) => q.id === u.id)!.needs.memoryMiB > left);
    }),
  );
});
