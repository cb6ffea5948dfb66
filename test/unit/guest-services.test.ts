import { test } from "node:test";
import assert from "node:assert/strict";
import { HeartbeatMonitor } from "../../src/guest/heartbeat.js";
import { SERVICES, defaultSettings, findService, serviceStatus } from "../../src/guest/services.js";
import { drift, formatDrift, needsCorrection } from "../../src/guest/timesync.js";
import { IntegrationServices, VmConfig } from "../../src/model/schema.js";
import { sampleVm } from "../helpers/sample-vm.js";

test("the six services in Get-VMIntegrationService order, with Hyper-V's defaults", () => {
  assert.deepEqual(
    SERVICES.map((s) => s.name),
    ["Guest Service Interface", "Heartbeat", "Key-Value Pair Exchange", "Shutdown", "Time Synchronization", "VSS"],
  );
  assert.deepEqual(defaultSettings(), {
    guestServiceInterface: false,
    heartbeat: true,
    keyValuePairExchange: true,
    shutdown: true,
    timeSynchronization: true,
    vss: true,
  });
});

test("services are found by Hyper-V name, key or alias", () => {
  assert.equal(findService("Guest Service Interface")?.key, "guestServiceInterface");
  assert.equal(findService("guest-service-interface")?.key, "guestServiceInterface");
  assert.equal(findService("key-value pair exchange")?.key, "keyValuePairExchange");
  assert.equal(findService("KVP")?.key, "keyValuePairExchange");
  assert.equal(findService("time_synchronization")?.key, "timeSynchronization");
  assert.equal(findService("vss")?.key, "vss");
  assert.equal(findService("nonsense"), undefined);
});

test("status: empty while off, OK when disabled (as Hyper-V), contact otherwise, No Contact when the agent lacks commands", () => {
  const hb = SERVICES.find((s) => s.key === "heartbeat")!;
  const vss = SERVICES.find((s) => s.key === "vss")!;
  assert.equal(serviceStatus(hb, true, { vmState: "Off", contact: "No Contact", details: {} }).primaryStatus, "");
  assert.deepEqual(serviceStatus(hb, false, { vmState: "Running", contact: "Lost Communication", details: {} }), {
    name: "Heartbeat",
    key: "heartbeat",
    enabled: false,
    primaryStatus: "OK",
    detail: "disabled",
  });
  assert.equal(serviceStatus(hb, true, { vmState: "Running", contact: "Lost Communication", details: {} }).primaryStatus, "Lost Communication");
  assert.equal(serviceStatus(hb, true, { vmState: "Running", contact: "OK", details: { heartbeat: "OK, 2 s ago" } }).detail, "OK, 2 s ago");
  const noFreeze = serviceStatus(vss, true, { vmState: "Running", contact: "OK", commands: new Set(["guest-ping"]), details: {} });
  assert.equal(noFreeze.primaryStatus, "No Contact");
  assert.match(noFreeze.detail, /guest-fsfreeze-freeze/);
});

test("heartbeat: No Contact, OK, Lost Communication after too long a silence, OK again; pauses and resets", () => {
  const m = new HeartbeatMonitor({ intervalMs: 2000, lostAfterMs: 9000 });
  assert.equal(m.primaryStatus, "No Contact");
  assert.equal(m.check(60_000), undefined, "silence before first contact stays No Contact");
  assert.equal(m.beatOk(1000), "first-contact");
  assert.equal(m.describe(3400), "OK, 2 s ago");
  assert.equal(m.beatOk(900), undefined, "an older answer changes nothing");
  assert.equal(m.check(10_000), undefined);
  assert.equal(m.primaryStatus, "OK");
  m.lastError = "no answer";
  assert.equal(m.check(10_001), "lost");
  assert.equal(m.primaryStatus, "Lost Communication");
  assert.equal(m.check(20_000), undefined, "lost is reported once");
  assert.equal(m.describe(21_000), "Lost Communication, last beat 20 s ago (10 missed: no answer)");
  assert.equal(m.beatOk(22_000), "restored");
  // A pause is not silence: counting starts again at the resume.
  m.grace(100_000);
  assert.equal(m.check(105_000), undefined);
  assert.equal(m.check(109_001), "lost");
  m.reset(200_000);
  assert.equal(m.primaryStatus, "No Contact");
  assert.equal(m.beatOk(199_000), undefined, "answers from before a guest reset do not count");
  assert.equal(m.beatOk(201_000), "first-contact");
});

test("time drift is measured against the middle of the round trip and corrected beyond 1 s", () => {
  const d = drift(1_000_000, (1_000_050 - 5_000) * 1e6, 1_000_100);
  assert.equal(d.driftMs, -5000);
  assert.equal(d.uncertaintyMs, 50);
  assert.equal(needsCorrection(d), true);
  assert.equal(needsCorrection({ driftMs: 900, uncertaintyMs: 5 }), false);
  assert.equal(needsCorrection({ driftMs: 1200, uncertaintyMs: 400 }), false, "a slow answer is not trusted to be drift");
  assert.equal(formatDrift(-15_400), "15 s behind");
  assert.equal(formatDrift(1500), "1.5 s ahead");
});

test("the VM configuration takes integration settings, with defaults for older files", () => {
  const vm = VmConfig.parse(sampleVm());
  assert.equal(vm.integrationServices, undefined);
  const parsed = IntegrationServices.parse({});
  assert.deepEqual(parsed.enabled, defaultSettings());
  assert.deepEqual(parsed.hostKvpItems, []);
  const withIs = VmConfig.parse({ ...sampleVm(), integrationServices: { enabled: { guestServiceInterface: true }, hostKvpItems: [{ key: "Color", value: "blue" }] } });
  assert.equal(withIs.integrationServices?.enabled.guestServiceInterface, true);
  assert.equal(withIs.integrationServices?.enabled.heartbeat, true);
  assert.throws(() => VmConfig.parse({ ...sampleVm(), integrationServices: { enabled: { bogus: true } } }));
});
