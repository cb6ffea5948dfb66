import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TestHost, sleep } from "../helpers/harness.js";
import { stripTerminalControls } from "../../src/supervisor/console-log.js";
import { TestNetns } from "../helpers/netns.js";
import { buildNetbootPayload } from "../../src/images/netboot.js";

/**
 * vmhost run by an unprivileged user (nobody, no capabilities), inside a namespace this test
 * makes: the Default Switch (user-mode networking) works; everything that needs root says so.
 */
const NOBODY = 65534;
let ns: TestNetns;
let host: TestHost;
let bootDir: string;

before(async () => {
  ns = await TestNetns.create("user");
  host = await TestHost.create({ netns: ns.name, user: NOBODY });
  // Made as root beforehand (it reads the appliance cache); world-readable, as TFTP wants it.
  bootDir = await mkdtemp(join(tmpdir(), "vmh-nobody-boot-"));
  await buildNetbootPayload(bootDir, { marker: "nobody" });
});

after(async () => {
  await host.cleanup();
  await ns.cleanup();
  await rm(bootDir, { recursive: true, force: true });
});

test("without root, switch commands that need it say so and change nothing; the Default Switch is listed", { timeout: 60_000 }, async () => {
  const list = JSON.parse(await host.ok(["switch", "list", "--json"])) as { name: string; type: string }[];
  assert.deepEqual(list.map((s) => s.name), ["Default Switch"]);
  for (const type of ["internal", "private", "nat"]) {
    const r = await host.cli(["switch", "new", "lab", "--type", type, "--dhcp", "on"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /creating switch "lab" .* needs root: vmhost creates Linux bridges, taps and firewall rules for it, which takes CAP_NET_ADMIN/);
    assert.match(r.stderr, /use the "Default Switch" \(user-mode networking\), which needs no privileges/);
  }
  await assert.rejects(stat(join(host.home, "switches", "lab.json")), "nothing was written");
  const pids = await ns.pids();
  for (const pid of pids) assert.notEqual((await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "")).trim(), "dnsmasq");
});

test("without root, a VM on the Default Switch gets its address from user-mode networking and network-boots over it", { timeout: 240_000 }, async () => {
  await host.ok(["new", "web", "--generation", "2", "--memory", "512M"]);
  // The Default Switch's own TFTP (QEMU's slirp): no bridge, no dnsmasq, no root.
  await host.ok(["firmware", "set", "web", "--network-boot-dir", bootDir, "--network-boot-file", "bootx64.efi"]);
  await host.ok(["start", "web"]);
  const show = JSON.parse(await host.ok(["show", "web", "--json"])) as { state: string; pid: number; nics: { switchName: string }[] };
  assert.equal(show.state, "Running");
  assert.equal(show.nics[0]!.switchName, "Default Switch");
  const status = await readFile(`/proc/${show.pid}/status`, "utf8");
  assert.match(status, new RegExp(`^Uid:\\s+${NOBODY}\\s`, "m"), "QEMU runs as nobody");
  // No disk: OVMF's PXE asks the Default Switch's DHCP (QEMU's slirp) for an address and the payload.
  const deadline = Date.now() + 200_000;
  let text = "";
  while (Date.now() < deadline && !/vmhost-netboot: payload nobody running \(via uefi\)/.test(text)) {
    text = stripTerminalControls(await host.consoleText("web"));
    await sleep(500);
  }
  assert.match(text, /Station IP address is 10\.0\.2\.15/);
  assert.match(text, /vmhost-netboot: payload nobody running \(via uefi\)/);
  await host.ok(["turn-off", "web"]);
});

test("without root, starting a VM whose adapter is on a bridged switch fails with a clear error", { timeout: 60_000 }, async () => {
  // A switch an administrator defined (as root would have written it).
  await mkdir(join(host.home, "switches"), { recursive: true });
  await writeFile(
    join(host.home, "switches", "corp.json"),
    JSON.stringify({ formatVersion: 1, name: "corp", id: "0b6c2f4e-5d7a-4e1b-9c3d-2a1f0e9d8c7b", type: "Internal", subnet: "10.91.0.0/24", dhcp: false, createdAt: new Date().toISOString() }),
  );
  await host.cli(["turn-off", "web"]);
  await host.ok(["nic", "connect", "web", "Network Adapter", "corp"]);
  const r = await host.cli(["start", "web"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /starting VM "web", whose adapter "Network Adapter" is on switch "corp" \(Internal\), needs root/);
  assert.equal(JSON.parse(await host.ok(["show", "web", "--json"])).state, "Off");
  const rm1 = await host.cli(["switch", "remove", "corp"]);
  assert.match(rm1.stderr, /removing switch "corp" needs root/);
});
