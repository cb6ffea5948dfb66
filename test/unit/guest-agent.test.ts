import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { Empty, GuestAgent, GuestAgentError, GuestAgentUnavailable } from "../../src/guest/agent.js";
import { FakeQga } from "../helpers/fake-qga.js";

let qga: FakeQga;
before(async () => {
  qga = await FakeQga.start();
});
after(async () => {
  await qga.stop();
});

function fresh(opts: ConstructorParameters<typeof GuestAgent>[1] = {}): GuestAgent {
  qga.override = undefined;
  qga.noiseBeforeReply = [];
  qga.paused = false;
  return new GuestAgent(qga.socketPath, { syncTimeoutMs: 500, defaultTimeoutMs: 500, minBackoffMs: 10, maxBackoffMs: 50, ...opts });
}

test("the first call syncs with guest-sync-delimited, preceded by 0xFF, and echoes ids", async () => {
  const a = fresh();
  const before = qga.received.length;
  await a.call("guest-ping", undefined, Empty);
  const sent = qga.received.slice(before);
  assert.equal(sent[0]?.execute, "guest-sync-delimited");
  assert.equal(sent[1]?.execute, "guest-ping");
  assert.match(String(sent[1]?.id), /^vmhost-[0-9a-f]{8}-\d+$/);
  assert.equal(a.syncs, 1);
  await a.call("guest-ping", undefined, Empty);
  assert.equal(a.syncs, 1, "a healthy stream is not re-synced");
  a.close();
});

test("stale lines before the reply are discarded", async () => {
  const a = fresh();
  qga.noiseBeforeReply = ['{"return": 12345}', "garbage that is not json", '{"return": {}, "id": "someone-else"}', "[1,2,3]"];
  const r = await a.call("guest-get-host-name", undefined, z.object({ "host-name": z.string() }));
  assert.equal(r["host-name"], "fakehost");
  a.close();
});

test("a timed-out call makes the next one re-sync with a fresh id, and the late answer is dropped", async () => {
  const a = fresh();
  await a.call("guest-ping", undefined, Empty);
  const syncsBefore = qga.syncIds.length;
  qga.paused = true; // an agent stopped inside the guest
  await assert.rejects(a.call("guest-get-time", undefined, z.number(), { timeoutMs: 200 }), (e: unknown) => e instanceof GuestAgentUnavailable && e.reason === "timeout");
  assert.equal(a.isSynced, false);
  await assert.rejects(a.call("guest-ping", undefined, Empty), (e: unknown) => e instanceof GuestAgentUnavailable && e.reason === "timeout");
  qga.resume(); // the queued (stale) answers arrive now
  const host = await a.call("guest-get-host-name", undefined, z.object({ "host-name": z.string() }));
  assert.equal(host["host-name"], "fakehost", "the stale guest-get-time number was not taken as this reply");
  const ids = qga.syncIds.slice(syncsBefore);
  assert.ok(ids.length >= 2);
  assert.equal(new Set(ids).size, ids.length, "every handshake uses a fresh id");
  a.close();
});

test("reconnects (with a new handshake) after the channel closes", async () => {
  const a = fresh();
  await a.call("guest-ping", undefined, Empty);
  const n = a.syncs;
  qga.dropClients();
  await new Promise((r) => setTimeout(r, 50));
  let ok = false;
  for (let i = 0; i < 20 && !ok; i++) {
    try {
      await a.call("guest-ping", undefined, Empty);
      ok = true;
    } catch (err) {
      assert.ok(err instanceof GuestAgentUnavailable);
      await new Promise((r) => setTimeout(r, 30));
    }
  }
  assert.ok(ok, "the agent came back");
  assert.equal(a.syncs, n + 1);
  a.close();
});

test("a reply longer than the bound is discarded and fails the call; the stream recovers", async () => {
  const a = fresh({ maxLineBytes: 64 * 1024 });
  await a.call("guest-ping", undefined, Empty);
  qga.override = (cmd) => (cmd.execute === "guest-get-host-name" ? { return: { "host-name": "x".repeat(200 * 1024) } } : "default");
  await assert.rejects(a.call("guest-get-host-name", undefined, z.object({ "host-name": z.string() })), (e: unknown) => e instanceof GuestAgentUnavailable && e.reason === "protocol");
  qga.override = undefined;
  const r = await a.call("guest-get-host-name", undefined, z.object({ "host-name": z.string() }));
  assert.equal(r["host-name"], "fakehost");
  a.close();
});

test("answers that do not match the schema are refused; guest errors are bounded and clean", async () => {
  const a = fresh();
  qga.override = (cmd) => (cmd.execute === "guest-get-time" ? { return: "not a number" } : "default");
  await assert.rejects(a.call("guest-get-time", undefined, z.number()), (e: unknown) => e instanceof GuestAgentUnavailable && e.reason === "protocol");
  qga.override = (cmd) => (cmd.execute === "guest-get-time" ? { error: { class: "GenericError", desc: "bad\u0007thing\n" + "y".repeat(5000) } } : "default");
  await assert.rejects(a.call("guest-get-time", undefined, z.number()), (e: unknown) => {
    assert.ok(e instanceof GuestAgentError);
    assert.ok(e.message.length < 500);
    assert.doesNotMatch(e.message, /[\u0007\n]/);
    return true;
  });
  a.close();
});

test("a command that does not answer on success resolves after its wait; an error reply fails it", async () => {
  const a = fresh();
  const n = qga.shutdowns;
  await a.call("guest-shutdown", { mode: "powerdown" }, z.unknown(), { noReplyOnSuccess: true, timeoutMs: 150 });
  assert.equal(qga.shutdowns, n + 1);
  qga.override = (cmd) => (cmd.execute === "guest-shutdown" ? { error: { class: "GenericError", desc: "child process has failed to shutdown" } } : "default");
  await assert.rejects(a.call("guest-shutdown", { mode: "powerdown" }, z.unknown(), { noReplyOnSuccess: true, timeoutMs: 500 }), GuestAgentError);
  // A guest that powers off at once closes the channel before the wait ends: taken, too.
  qga.override = (cmd) => {
    if (cmd.execute !== "guest-shutdown") return "default";
    setTimeout(() => qga.dropClients(), 20);
    return undefined;
  };
  await a.call("guest-shutdown", { mode: "powerdown" }, z.unknown(), { noReplyOnSuccess: true, timeoutMs: 2000 });
  qga.override = undefined;
  a.close();
});

test("a closed agent refuses calls; no connection is an 'unavailable' error, retried with backoff", async () => {
  const a = fresh();
  a.close();
  await assert.rejects(a.call("guest-ping", undefined, Empty), (e: unknown) => e instanceof GuestAgentUnavailable && e.reason === "closed");
  const b = new GuestAgent("/nonexistent/agent.sock", { minBackoffMs: 10_000 });
  await assert.rejects(b.call("guest-ping", undefined, Empty), (e: unknown) => e instanceof GuestAgentUnavailable && e.reason === "disconnected");
  await assert.rejects(b.call("guest-ping", undefined, Empty), /next attempt in/);
  b.close();
});

const timedOut = (e: unknown): boolean => e instanceof GuestAgentUnavailable && e.reason === "timeout";

/** Lets socket I/O and the promise jobs it starts run (setImmediate is not among the mocked timers). */
async function turns(n = 20): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

test("a call's deadline counts from when it was queued: 64 calls behind a silent agent all fail at their own deadline, unsent", async (t) => {
  const a = fresh({ defaultTimeoutMs: 10_000, syncTimeoutMs: 5_000 });
  await a.call("guest-ping", undefined, Empty); // connected and synced, on real timers
  // Mocked clock from here: the test moves time itself, so no outcome depends on the machine's speed.
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  const sentBefore = qga.received.length;
  qga.paused = true; // an agent stopped inside the guest
  const outcomes: unknown[] = [];
  const calls = Array.from({ length: 64 }, (_, i) =>
    a.call("guest-get-host-name", { n: i }, z.object({ "host-name": z.string() })).then(
      () => (outcomes[i] = "answered"),
      (e: unknown) => (outcomes[i] = e),
    ),
  );
  await turns();
  assert.equal(qga.received.length - sentBefore, 1, "only the first call is on the wire");
  t.mock.timers.tick(9_999);
  await turns();
  assert.equal(outcomes.filter((o) => o !== undefined).length, 0, "nothing fails before its deadline");
  t.mock.timers.tick(1);
  await turns();
  // Before: only the first call had failed here; the 64th would have failed ~64 x (10 s + a 5 s handshake) later.
  assert.equal(outcomes.filter((o) => o !== undefined).length, 64, "all 64 failed at 10 s");
  for (const o of outcomes) assert.ok(timedOut(o), String(o));
  assert.match((outcomes[63] as Error).message, /within 10000 ms \(the call waited behind earlier ones and was never sent\)/);
  await Promise.all(calls);
  assert.equal(qga.received.length - sentBefore, 1, "the calls that expired in the queue were never sent");
  t.mock.timers.reset();
  qga.resume(); // the stale answer arrives now; the next call re-syncs and gets its own answer
  const r = await a.call("guest-get-host-name", undefined, z.object({ "host-name": z.string() }));
  assert.equal(r["host-name"], "fakehost");
  a.close();
});

test("a short call queued behind a long one fails at its own deadline, not the long one's", async (t) => {
  const a = fresh({ syncTimeoutMs: 5_000 });
  await a.call("guest-ping", undefined, Empty);
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  qga.paused = true;
  const got: { long?: unknown; short?: unknown } = {};
  const pLong = a.call("guest-get-osinfo", undefined, z.unknown(), { timeoutMs: 60_000 }).then(() => (got.long = "answered"), (e: unknown) => (got.long = e));
  const pShort = a.call("guest-ping", undefined, Empty, { timeoutMs: 3_000 }).then(() => (got.short = "answered"), (e: unknown) => (got.short = e));
  await turns();
  t.mock.timers.tick(3_000);
  await turns();
  assert.ok(timedOut(got.short), "the ping failed at 3 s");
  assert.equal(got.long, undefined, "the long call still waits for its answer");
  t.mock.timers.tick(57_000);
  await turns();
  assert.ok(timedOut(got.long), "the long call failed at 60 s");
  await Promise.all([pLong, pShort]);
  t.mock.timers.reset();
  qga.resume();
  a.close();
});
