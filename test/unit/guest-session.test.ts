import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CopyFileError } from "../../src/guest/copyfile.js";
import { decodePool, encodePool, type KvpItem } from "../../src/guest/kvp.js";
import { defaultSettings, type ServiceSettings } from "../../src/guest/services.js";
import { GuestSession, IntegrationError } from "../../src/guest/session.js";
import { FakeQga } from "../helpers/fake-qga.js";

/** A session against the fake agent, with fast timing; the journal is collected. */
let qga: FakeQga;
let dir: string;
before(async () => {
  qga = await FakeQga.start();
  dir = await mkdtemp(join(tmpdir(), "guest-session-"));
});
after(async () => {
  await qga.stop();
  await rm(dir, { recursive: true, force: true });
});

function session(over: Partial<ServiceSettings> = {}, items: KvpItem[] = []) {
  const journal: { type: string; message: string; data?: Record<string, unknown> }[] = [];
  let state = "Running";
  const settings = { ...defaultSettings(), ...over };
  const s = new GuestSession(
    { vmName: "t", vmState: () => state, settings: () => settings, hostKvpItems: () => items, journal: (type, message, data) => journal.push({ type, message, data }) },
    qga.socketPath,
    {
      heartbeatIntervalMs: 50,
      heartbeatTimeoutMs: 150,
      heartbeatLostAfterMs: 400,
      timeCheckIntervalMs: 200,
      kvpPollIntervalMs: 200,
      thawAttemptTimeoutMs: 200,
      thawRetryIntervalMs: 50,
      agent: { minBackoffMs: 10, maxBackoffMs: 50 },
    },
  );
  return { s, journal, settings, items, setState: (x: string) => (state = x) };
}

async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("heartbeat: OK, Lost Communication when the agent stops answering, OK again; events for each", async () => {
  const { s, journal } = session();
  s.start();
  try {
    await until("contact", () => s.heartbeat.primaryStatus === "OK");
    await until("contact event", () => journal.some((j) => j.type === "agent-contact"));
    assert.match(s.statuses().find((x) => x.key === "heartbeat")!.detail, /^OK, \d+ s ago$/);
    qga.paused = true;
    await until("lost", () => s.heartbeat.primaryStatus === "Lost Communication");
    assert.ok(journal.some((j) => j.type === "heartbeat-lost"));
    assert.ok(s.statuses().every((x) => !x.enabled || x.primaryStatus === "Lost Communication"));
    qga.resume();
    await until("restored", () => s.heartbeat.primaryStatus === "OK");
    assert.ok(journal.some((j) => j.type === "heartbeat-restored"));
  } finally {
    qga.paused = false;
    s.close();
  }
});

test("KVP: host items land in the external pool; a guest's own record is read and its change journaled", async () => {
  qga.files.clear();
  const items: KvpItem[] = [{ key: "Color", value: "blue" }];
  const { s, journal } = session({}, items);
  s.start();
  try {
    await until("pool 0 written", () => qga.files.has("/var/lib/hyperv/.kvp_pool_0"));
    assert.deepEqual(qga.files.get("/var/lib/hyperv/.kvp_pool_0"), encodePool(items));
    assert.equal((await s.guestPool()).items.length, 0);
    qga.files.set("/var/lib/hyperv/.kvp_pool_1", encodePool([{ key: "GuestKey", value: "hello" }]));
    await until("guest change seen", () => journal.some((j) => j.type === "kvp-guest-changed"));
    assert.deepEqual((await s.guestPool()).items, [{ key: "GuestKey", value: "hello" }]);
    // A guest that rewrote the host's pool gets it back on the next poll.
    qga.files.set("/var/lib/hyperv/.kvp_pool_0", Buffer.alloc(0));
    items.push({ key: "Size", value: "XL" });
    await until("pool 0 restored", () => decodePool(qga.files.get("/var/lib/hyperv/.kvp_pool_0") ?? Buffer.alloc(0)).items.length === 2);
    const intr = await s.intrinsic();
    assert.equal(intr.OSName, "Fake Linux");
    assert.equal(intr.NetworkAddressIPv4, "10.0.2.15");
    assert.equal(intr.IntegrationServicesVersion, "7.2.99");
  } finally {
    s.close();
  }
});

test("time: drift beyond 1 s is corrected and journaled; resume always sets the clock", async () => {
  qga.guestTimeOffsetMs = -30_000;
  const { s, journal, setState } = session();
  s.start();
  try {
    await until("corrected", () => journal.some((j) => j.type === "time-corrected"));
    assert.ok(Math.abs(qga.guestTimeOffsetMs) < 1000);
    const c = journal.find((j) => j.type === "time-corrected")!;
    assert.ok(Number(c.data?.["driftMs"]) < -29_000);
    const n = qga.timeSets.length;
    setState("Paused");
    s.onVmState("Paused");
    setState("Running");
    s.onVmState("Running");
    await until("resume correction", () => qga.timeSets.length > n);
    assert.ok(journal.some((j) => j.type === "time-corrected" && j.data?.["reason"] === "resume"));
  } finally {
    qga.guestTimeOffsetMs = 0;
    s.close();
  }
});

test("VSS: freeze starts the guest watchdog first; a thaw follows by itself when nobody thaws", async () => {
  const { s, journal } = session();
  s.start();
  try {
    await until("contact", () => s.heartbeat.primaryStatus === "OK");
    const execsBefore = qga.execs.length;
    const r = await s.freeze(1000);
    assert.equal(r.frozen, 1);
    assert.equal(qga.frozen, true);
    const watchdog = qga.execs.slice(execsBefore).find((e) => e[3] === "vmhost-vss-watchdog");
    assert.ok(watchdog, "the watchdog was started through guest-exec before the freeze");
    assert.equal(watchdog[4], "6", "it fires 5 s after vmhostd's own timer");
    await assert.rejects(s.freeze(1000), IntegrationError);
    // The event comes after the agent's answer (and the watchdog's removal): wait for it, then look.
    await until("timer thaw", () => journal.some((j) => j.type === "vss-thaw-forced"), 3000);
    assert.equal(qga.frozen, false);
    await s.freeze(5000);
    const t = await s.thaw();
    assert.deepEqual(t, { thawed: 1, wasFrozen: true });
    assert.ok(qga.execs.some((e) => e[3] === "vmhost-vss-stop"), "the watchdog is stopped after a normal thaw");
  } finally {
    s.close();
  }
});

test("VSS: a guest left frozen (vmhostd died mid-way) is thawed on contact", async () => {
  qga.frozen = true;
  const { s, journal } = session();
  s.start();
  try {
    await until("thawed", () => !qga.frozen);
    assert.ok(journal.some((j) => j.type === "vss-thawed" && j.data?.["reason"] === "left-frozen"));
  } finally {
    s.close();
  }
});

const allOk = (s: GuestSession) => s.statuses().every((x) => !x.enabled || x.primaryStatus === "OK");
const thawsSent = () => qga.received.filter((c) => c.execute === "guest-fsfreeze-thaw").length;

test("VSS: an agent hung past the thaw deadline: an overdue event, the thaw retried until it answers, then every service OK", async () => {
  const { s, journal } = session({ guestServiceInterface: true });
  s.start();
  try {
    await until("contact and capabilities", () => allOk(s) && journal.some((j) => j.type === "agent-contact"));
    await s.freeze(1000);
    const thawBy = String(journal.find((j) => j.type === "vss-frozen")?.data?.["thawBy"]);
    qga.paused = true; // the agent hangs (SIGSTOP) with the file systems frozen
    await until("overdue event", () => journal.some((j) => j.type === "vss-thaw-overdue"));
    const overdue = journal.find((j) => j.type === "vss-thaw-overdue")!;
    assert.equal(overdue.data?.["thawBy"], thawBy);
    assert.ok(Date.now() >= Date.parse(thawBy), "not before the deadline");
    const vss = () => s.statuses().find((x) => x.key === "vss")!;
    assert.ok(vss().detail.startsWith(`thaw overdue since ${thawBy}`), vss().detail);
    await until("Lost Communication", () => s.heartbeat.primaryStatus === "Lost Communication");
    assert.ok(vss().detail.startsWith(`thaw overdue since ${thawBy}`), `still said without contact: ${vss().detail}`);
    assert.equal(qga.frozen, true, "a hung agent thawed nothing");
    // The agent comes back having lost whatever it was sent while hung: only a retry thaws now.
    const sentBeforeRestart = thawsSent();
    qga.restartAgent();
    await until("thawed", () => journal.some((j) => j.type === "vss-thaw-forced"));
    assert.ok(thawsSent() > sentBeforeRestart, "the thaw was sent again");
    assert.equal(qga.frozen, false);
    assert.equal(journal.find((j) => j.type === "vss-thaw-forced")?.data?.["overdueSince"], thawBy);
    assert.equal(journal.filter((j) => j.type === "vss-thaw-overdue").length, 1, "one event per overdue thaw, not one per retry");
    await until("every service OK", () => allOk(s));
    assert.equal(vss().detail, "thawed");
  } finally {
    qga.paused = false;
    qga.frozen = false;
    s.close();
  }
});

test("VSS: capabilities read while frozen are read again after the thaw, so no service stays No Contact", async () => {
  const { s } = session({ guestServiceInterface: true });
  s.start();
  try {
    await until("contact and capabilities", () => allOk(s));
    await s.freeze(60_000);
    // The agent goes silent and comes back while frozen: on contact the session reads guest-info,
    // which (as qemu-ga does) lists most commands as disabled while frozen.
    qga.paused = true;
    await until("Lost Communication", () => s.heartbeat.primaryStatus === "Lost Communication");
    qga.resume();
    const kvp = () => s.statuses().find((x) => x.key === "keyValuePairExchange")!;
    await until("capabilities read while frozen", () => s.heartbeat.primaryStatus === "OK" && kvp().primaryStatus === "No Contact");
    assert.match(kvp().detail, /does not offer guest-file-open.* while the guest's file systems are frozen/);
    assert.equal(s.statuses().find((x) => x.key === "vss")!.primaryStatus, "OK", "VSS's own state while frozen is the freeze");
    assert.deepEqual(await s.thaw(), { thawed: 1, wasFrozen: true });
    await until("every service OK after the thaw", () => allOk(s));
  } finally {
    qga.paused = false;
    qga.frozen = false;
    s.close();
  }
});

test("copy-file: chunked, verified by size and SHA-256, refuses to overwrite without force, needs the service on", async () => {
  const { s, journal } = session({ guestServiceInterface: true });
  s.start();
  try {
    await until("contact", () => s.heartbeat.primaryStatus === "OK");
    const src = join(dir, "big.bin");
    const data = randomBytes(1536 * 1024 + 7);
    await writeFile(src, data);
    const progress: number[] = [];
    await assert.rejects(s.copyFile(src, "/opt/app/big.bin", { createFullPath: false, force: false }), (e: unknown) => e instanceof CopyFileError && /--create-full-path/.test(e.message));
    const r = await s.copyFile(src, "/opt/app/big.bin", { createFullPath: true, force: false, onProgress: (d) => progress.push(d) });
    assert.equal(r.bytes, data.length);
    assert.equal(r.sha256, createHash("sha256").update(data).digest("hex"));
    assert.equal(r.verifiedBy, "sha256sum");
    assert.deepEqual(qga.files.get("/opt/app/big.bin"), data);
    assert.ok(progress.length >= 4 && progress.at(-1) === data.length);
    assert.ok(![...qga.files.keys()].some((k) => k.endsWith(".partial")), "no temporary file is left");
    await assert.rejects(s.copyFile(src, "/opt/app/big.bin", { createFullPath: false, force: false }), (e: unknown) => e instanceof CopyFileError && e.code === "exists");
    await s.copyFile(src, "/opt/app/big.bin", { createFullPath: false, force: true });
    await assert.rejects(s.copyFile(src, "/opt/app", { createFullPath: false, force: true }), /folder/);
    assert.ok(journal.some((j) => j.type === "file-copied"));
    // A guest that lies about the hash: the copy is refused and the temporary file removed.
    qga.override = (cmd) => {
      const args = (cmd.arguments?.["arg"] as string[] | undefined) ?? [];
      if (cmd.execute === "guest-exec" && String(args[1]).includes("sha256sum")) {
        return { return: { pid: 4242 } };
      }
      if (cmd.execute === "guest-exec-status" && cmd.arguments?.["pid"] === 4242) {
        return { return: { exited: true, exitcode: 0, "out-data": Buffer.from(`${"0".repeat(64)}  x\n`).toString("base64") } };
      }
      return "default";
    };
    await assert.rejects(s.copyFile(src, "/opt/app/other.bin", { createFullPath: false, force: false }), (e: unknown) => e instanceof CopyFileError && e.code === "verify-failed");
    assert.ok(!qga.files.has("/opt/app/other.bin"));
    assert.ok(![...qga.files.keys()].some((k) => k.endsWith(".partial")));
  } finally {
    qga.override = undefined;
    s.close();
  }
  const off = session();
  await assert.rejects(off.s.copyFile("/etc/hostname", "/tmp/x", { createFullPath: false, force: false }), /Guest Service Interface integration service is disabled/);
  off.s.close();
});

test("shutdown goes through the agent only when the service is on and the agent answers", async () => {
  const on = session();
  on.s.start();
  try {
    await until("contact", () => on.s.heartbeat.primaryStatus === "OK");
    const n = qga.shutdowns;
    assert.equal(await on.s.requestShutdown(), true);
    assert.equal(qga.shutdowns, n + 1);
  } finally {
    on.s.close();
  }
  const off = session({ shutdown: false });
  off.s.start();
  try {
    await until("contact", () => off.s.heartbeat.primaryStatus === "OK");
    assert.equal(await off.s.requestShutdown(), false);
  } finally {
    off.s.close();
  }
  const silent = session();
  assert.equal(await silent.s.requestShutdown(), false, "no contact yet: ACPI");
  silent.s.close();
});
