import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../helpers/harness.js";
import { processStartTime } from "../../src/supervisor/proc.js";

/** Gen1: SeaBIOS, IDE boot disk, the PIT present; the CLI exits and the VM goes on; ACPI stop. */
let host: TestHost;
const VM = "g1";

before(async () => {
  host = await TestHost.create();
});
after(async () => {
  await host.cleanup();
});

test("gen1 appliance boots through SeaBIOS from IDE to the ready line; the CLI exits and the VM keeps running", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", VM, "--generation", "1", "--appliance"]);
  const show0 = await host.json<{ disks: { ref: string }[] }>(["show", VM]);
  assert.deepEqual(show0.disks.map((d) => d.ref), ["IDE 0:0"]);
  await host.ok(["start", VM]); // the CLI process has exited here
  const text = await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
  assert.match(text, /SYSLINUX/, "booted by the BIOS boot loader on the MBR disk");
  assert.match(text, /booted via BIOS/);
  const show = await host.json<{ state: string; generation: number; pid: number }>(["show", VM]);
  assert.equal(show.state, "Running");
  assert.equal(show.generation, 1);
  assert.notEqual(await processStartTime(show.pid), undefined, "QEMU runs on after the CLI exited");
});

test("a legacy adapter is accepted on generation 1 while off, refused while running", async () => {
  const r = await host.cli(["nic", "add", VM, "--legacy"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /needs VM "g1" Off, but it is Running/);
});

test("stop reaches Off through ACPI within 30 s", { timeout: 60_000 }, async () => {
  const t0 = Date.now();
  await host.ok(["stop", VM, "--timeout", "30"]);
  assert.ok(Date.now() - t0 < 30_000);
  assert.equal(await host.state(VM), "Off");
  await host.ok(["nic", "add", VM, "--legacy"]);
  const show = await host.json<{ nics: { type: string }[] }>(["show", VM]);
  assert.deepEqual(show.nics.map((n) => n.type), ["Synthetic", "Legacy"]);
  await sleep(10);
});
