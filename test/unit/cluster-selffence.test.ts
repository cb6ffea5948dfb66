import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { SelfFence, type SelfFenceAction } from "../../src/cluster/selffence.js";

const TTL = 10_000;

test("self-fence: alive until exactly TTL after the last acknowledged renewal's send time, then one fence", () => {
  const f = new SelfFence(TTL, 1000);
  assert.equal(f.nextDeadline(), 11_000);
  assert.deepEqual(f.tick(10_999), []);
  assert.equal(f.state, "alive");
  const [a, ...rest] = f.tick(11_000);
  assert.deepEqual(rest, []);
  assert.deepEqual(a, { type: "fence", reason: "renewal-timeout", lastRenewalAt: 1000, deadline: 11_000, now: 11_000 });
  assert.equal(f.state, "fenced");
  assert.deepEqual(f.tick(12_000), [], "fenced once per episode");
  assert.equal(f.nextDeadline(), undefined);
});

test("self-fence: a renewal counts from when it was sent, not from when the answer came", () => {
  const f = new SelfFence(TTL, 0);
  assert.deepEqual(f.renewed(3000, 9000), []);
  assert.equal(f.deadline, 13_000, "sent at 3000: etcd renewed it no earlier than that");
  assert.deepEqual(f.renewed(2000, 9500), [], "an older acknowledgement never moves the deadline back");
  assert.equal(f.deadline, 13_000);
});

test("self-fence: an answer that arrives a TTL or more after its request proves nothing: fence", () => {
  const f = new SelfFence(TTL, 0);
  const acts = f.renewed(1000, 11_000);
  assert.equal(acts.length, 1);
  assert.equal(acts[0]!.type, "fence");
  assert.equal(f.state, "fenced");
});

test("self-fence: after a fence, a fresh renewal of the same lease recovers with leaseSurvived", () => {
  const f = new SelfFence(TTL, 0);
  f.tick(10_000);
  assert.deepEqual(f.renewed(1_000, 12_000), [], "stale: 1000 + TTL <= 12000");
  assert.equal(f.state, "fenced");
  assert.deepEqual(f.renewed(12_500, 12_600), [{ type: "recovered", leaseSurvived: true, now: 12_600 }]);
  assert.equal(f.state, "alive");
  assert.equal(f.nextDeadline(), 22_500);
});

test("self-fence: etcd saying the lease is gone fences at once; only a new grant recovers, with leaseSurvived false", () => {
  const f = new SelfFence(TTL, 0);
  const [a] = f.leaseExpired(4000);
  assert.equal(a?.type, "fence");
  assert.equal(a?.type === "fence" ? a.reason : "", "lease-expired");
  assert.ok(f.leaseLost);
  assert.deepEqual(f.renewed(4100, 4200), [], "a late acknowledgement of the old lease is ignored");
  assert.equal(f.state, "fenced");
  assert.deepEqual(f.leaseExpired(4300), [], "no second fence");
  assert.deepEqual(f.regranted(5000, 5100), [{ type: "recovered", leaseSurvived: false, now: 5100 }]);
  assert.equal(f.state, "alive");
  assert.equal(f.leaseLost, false);
  assert.equal(f.deadline, 15_000);
});

test("self-fence: a TTL that is not positive is refused", () => {
  assert.throws(() => new SelfFence(0, 0), RangeError);
});

/**
 * The safety property against a model of etcd: renewals are sent at random times, etcd processes
 * each at some time between send and answer (or the answer is lost), and etcd expires the lease
 * when a TTL passes with no processed renewal. Driven the way membership.ts drives it (tick at
 * nextDeadline), the host must be fenced no later than etcd's expiry, and must never be "alive"
 * at a moment when its newest acknowledged proof is a TTL old.
 */
test("self-fence (model): the host is always fenced no later than etcd expires its lease", () => {
  const renewal = fc.record({
    gap: fc.integer({ min: 1, max: 8000 }),
    processDelay: fc.integer({ min: 0, max: 6000 }),
    answerDelay: fc.integer({ min: 0, max: 6000 }),
    answerLost: fc.boolean(),
    requestLost: fc.boolean(),
  });
  fc.assert(
    fc.property(fc.array(renewal, { maxLength: 30 }), (rs) => {
      const f = new SelfFence(TTL, 0);
      type Ev = { at: number; kind: "ack"; sentAt: number };
      const acks: Ev[] = [];
      const processed: number[] = [0]; // the grant
      let t = 0;
      for (const r of rs) {
        t += r.gap;
        if (r.requestLost) continue;
        const proc = t + r.processDelay;
        processed.push(proc);
        if (!r.answerLost) acks.push({ at: proc + r.answerDelay, kind: "ack", sentAt: t });
      }
      processed.sort((a, b) => a - b);
      // etcd's expiry: the first moment a TTL has passed since the last processed renewal.
      let expiry = processed[0]! + TTL;
      for (const p of processed) {
        if (p >= expiry) break;
        expiry = Math.max(expiry, p + TTL);
      }
      acks.sort((a, b) => a.at - b.at);
      let fencedAt: number | undefined;
      const apply = (acts: SelfFenceAction[], now: number): void => {
        for (const a of acts) if (a.type === "fence" && fencedAt === undefined) fencedAt = now;
      };
      for (const ev of acks) {
        for (let d = f.nextDeadline(); d !== undefined && d <= ev.at; d = f.nextDeadline()) apply(f.tick(d), d);
        apply(f.renewed(ev.sentAt, ev.at), ev.at);
        if (f.state === "alive") assert.ok(ev.at < f.lastRenewalAt + TTL);
      }
      for (let d = f.nextDeadline(); d !== undefined; d = f.nextDeadline()) apply(f.tick(d), d);
      assert.notEqual(fencedAt, undefined, "with no more renewals the host ends fenced");
      assert.ok(fencedAt! <= expiry, `fenced at ${fencedAt}, etcd expired the lease at ${expiry}`);
    }),
    { numRuns: 2000 },
  );
});
