import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { TestHost } from "../helpers/harness.js";

let host: TestHost;
before(async () => {
  host = await TestHost.create({ accel: "probe" });
});
after(async () => {
  await host.cleanup();
});

test("vmhost host names the accelerator it chose and why (a real probe, no override)", { timeout: 60_000 }, async () => {
  const h = await host.json<{
    accelerator: string;
    acceleratorReason: string;
    acceleratorProbe: { tcgLoopMs?: number; kvmLoopMs?: number };
    qemu: { version: string };
    ovmf: { version?: string };
  }>(["host"]);
  assert.match(h.qemu.version, /^\d+\.\d+/);
  assert.ok(h.ovmf.version);
  const human = await host.ok(["host"]);
  assert.match(human, /^Accelerator: (KVM|TCG) — .+/m);
  // On machines whose /dev/kvm only pretends (this project's), the probe must fall back to TCG.
  if (process.env["VMHOST_EXPECT_ACCEL"]) assert.equal(h.accelerator, process.env["VMHOST_EXPECT_ACCEL"]);
  if (h.accelerator === "tcg") {
    assert.match(h.acceleratorReason, /\/dev\/kvm (not present|present but guest code is emulated|not accessible)|KVM failed/);
  } else {
    // KVM only with the measurement to back it: its loop clearly faster than TCG's.
    const { kvmLoopMs, tcgLoopMs } = h.acceleratorProbe;
    assert.ok(kvmLoopMs !== undefined && tcgLoopMs !== undefined && kvmLoopMs < tcgLoopMs * 0.5, JSON.stringify(h.acceleratorProbe));
  }
});
