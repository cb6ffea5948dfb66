import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../helpers/harness.js";

/** A QEMU killed from outside is noticed within a second: Off, the reason, the last console lines. */
let host: TestHost;
const VM = "victim";

before(async () => {
  host = await TestHost.create();
});
after(async () => {
  await host.cleanup();
});

test("kill -9 of QEMU shows Off with the exit reason and the last console lines", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", VM, "--generation", "1", "--appliance"]);
  await host.ok(["start", VM]);
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
  await host.run(VM, "echo last-words-$((5*5))", /last-words-25/);
  const { pid } = await host.json<{ pid: number }>(["show", VM]);
  const t0 = Date.now();
  process.kill(pid, "SIGKILL");
  let state = "";
  while (Date.now() - t0 < 5000) {
    state = await host.state(VM);
    if (state === "Off") break;
    await sleep(50);
  }
  const noticedMs = Date.now() - t0;
  assert.equal(state, "Off");
  assert.ok(noticedMs < 1500, `noticed after ${noticedMs} ms (includes one CLI round trip)`);
  const show = await host.json<{ lastExit: { reason: string; consoleTail: string[] } }>(["show", VM]);
  assert.equal(show.lastExit.reason, "QEMU was killed by SIGKILL");
  assert.ok(show.lastExit.consoleTail.some((l) => l.includes("last-words-25")), show.lastExit.consoleTail.join("\n"));
  const human = await host.ok(["show", VM]);
  assert.match(human, /Last exit:.*killed by SIGKILL/);
  const events = await host.json<{ type: string; message: string }[]>(["events", VM]);
  assert.ok(events.some((e) => e.type === "exited" && /SIGKILL/.test(e.message)));
});

test("restart resets the guest: it boots again to the ready line", { timeout: BOOT_TIMEOUT_MS * 2 }, async () => {
  await host.ok(["start", VM]);
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
  const from = (await host.consoleText(VM)).length;
  await host.ok(["restart", VM]);
  assert.equal(await host.state(VM), "Running");
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS, from);
});

test("a guest that ignores shutdown requests: stop times out and says so; --force turns it off", { timeout: 120_000 }, async () => {
  // With the Shutdown integration service off, stop presses the ACPI power button, and a guest
  // without acpid ignores it. (The appliance respawns qemu-ga, so killing it would not do.)
  await host.ok(["integration", "disable", VM, "Shutdown"]);
  await host.run(VM, "killall acpid; echo deaf-$((2+3))", /deaf-5/);
  const r = await host.cli(["stop", VM, "--timeout", "3"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /did not shut down within 3 s/);
  assert.match(r.stderr, /--force/);
  assert.equal(await host.state(VM), "Running");
  const out = await host.ok(["stop", VM, "--force", "--timeout", "3"]);
  assert.match(out, /Off \(turned off after the guest did not shut down\)/);
  const show = await host.json<{ state: string; lastExit: { reason: string } }>(["show", VM]);
  assert.equal(show.state, "Off");
  assert.equal(show.lastExit.reason, "turned off");
});
