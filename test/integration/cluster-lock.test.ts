import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClusterConnection } from "../../src/cluster/connection.js";
import { LockTimeoutError } from "../../src/cluster/errors.js";
import { LabCluster, LabHostProcess, monoNow } from "../../src/cluster/lab.js";
import { acquireLock, withLock } from "../../src/cluster/locks.js";

const WAIT = 30_000;

test("locks: one holder at a time; waiters retry with backoff until it is released or its holder's lease runs out", { timeout: 120_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-cluster-lock-"));
  const lab = await LabCluster.start({ dir, names: ["a", "b", "c"] });
  const conn = ClusterConnection.open({ endpoints: lab.endpoints() });
  // Lock leases of 10 s: a loaded machine must not let p1's lock lapse while it holds it.
  const p1 = LabHostProcess.spawn({ host: "p1", endpoints: lab.endpoints(), ttlSeconds: 10 });
  // p2's locks live 10 s after it dies: long enough that "still held right after its death" is certain.
  const p2 = LabHostProcess.spawn({ host: "p2", endpoints: lab.endpoints(), ttlSeconds: 10 });
  t.after(async () => {
    await p1.kill();
    await p2.kill();
    conn.close();
    await lab.stop();
    await rm(dir, { recursive: true, force: true });
  });
  await Promise.all([p1.waitFor("joined", WAIT), p2.waitFor("joined", WAIT)]);

  p1.send({ cmd: "lock", name: "vm:web" });
  await p1.waitFor("locked", WAIT);

  // Try-once underneath, retried here until the deadline: then a clear, typed error.
  const err = await acquireLock(conn, "vm:web", { deadlineMs: 1500 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof LockTimeoutError, String(err));
  assert.equal(err.code, "cluster-lock-timeout");
  assert.ok(err.attempts > 1, `retried (${err.attempts} attempts)`);
  assert.match(err.message, /'vm:web' is still held/);

  // A second host waits; it can only get the lock after the first one was told to let go.
  p2.send({ cmd: "lock", name: "vm:web" });
  await p2.waitFor("lock-retry", WAIT); // p2 found it held at least once
  const unlockSentAt = monoNow();
  p1.send({ cmd: "unlock" });
  const got = await p2.waitFor("locked", WAIT);
  assert.ok(got.mono > unlockSentAt, "p2 held the lock only after p1 was told to release it");
  assert.ok(Number(got["attempts"]) > 1);

  // The holder dies: its lock is still held (its lease has up to 10 s left) ...
  await p2.kill();
  await assert.rejects(acquireLock(conn, "vm:web", { deadlineMs: 0 }), LockTimeoutError);
  // ... until the lease runs out; then a waiter gets it.
  const held = await acquireLock(conn, "vm:web", { deadlineMs: WAIT, ttlSeconds: 3 });
  assert.ok(held.attempts > 1);
  await held.release();

  // withLock releases also when the work throws.
  await assert.rejects(withLock(conn, "vm:web", async () => Promise.reject(new Error("work failed"))), /work failed/);
  const again = await acquireLock(conn, "vm:web", { deadlineMs: 5000 });
  assert.equal(again.attempts, 1, "free at once");
  await again.release();
});
