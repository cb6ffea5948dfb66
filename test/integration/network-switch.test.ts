import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../helpers/harness.js";
import { TestNetns, killAndDelete, netnsExists, switchNamespaces } from "../helpers/netns.js";
import { processStartTime } from "../../src/supervisor/proc.js";
import { NAMES } from "../../src/network/names.js";

/**
 * Switches end to end, all inside namespaces this test makes: "host" (vmhostd, its bridges,
 * taps, dnsmasqs and nft rules) and "lan" (a physical LAN with its own dnsmasq on the far end
 * of a veth, and the host's uplink). Two Gen1 appliance VMs:
 *   a: private, internal, NAT        b: private, external
 */
let hostNs: TestNetns;
let lanNs: TestNetns;
let host: TestHost;
let work: string;
let hostListener: { output: () => string };
let wanListener: { output: () => string };
const dnsmasqPids: number[] = [];
const addr: Record<string, string> = {};

interface SwitchJson {
  name: string;
  type: string;
  id: string;
  subnet?: string;
  hostAddress?: string;
  status?: { bridge: string; bridgePresent: boolean; dnsmasqPid?: number; firewall: string[]; serviceNetns?: string };
}
interface VmJson {
  nics: { name: string; macAddress: string; switchName: string; dynamicMac: boolean }[];
}

before(async () => {
  hostNs = await TestNetns.create("host");
  lanNs = await TestNetns.create("lan");
  work = await mkdtemp(join(tmpdir(), "vmh-net-"));
  // The "physical NIC" the external switch bridges, and the host's routed uplink, both into "lan".
  await hostNs.ip("link", "add", "name", "lanport", "type", "veth", "peer", "name", "eth0", "netns", lanNs.name);
  await hostNs.ip("link", "add", "name", "wan0", "type", "veth", "peer", "name", "wan1", "netns", lanNs.name);
  await hostNs.ip("link", "set", "lanport", "up");
  await hostNs.ip("addr", "add", "10.98.0.1/24", "dev", "wan0");
  await hostNs.ip("link", "set", "wan0", "up");
  await hostNs.ip("route", "add", "default", "via", "10.98.0.2");
  await lanNs.ip("addr", "add", "10.66.0.1/24", "dev", "eth0");
  await lanNs.ip("addr", "add", "10.98.0.2/24", "dev", "wan1");
  await lanNs.ip("link", "set", "eth0", "up");
  await lanNs.ip("link", "set", "wan1", "up");
  lanNs.spawn([
    "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
    "--dhcp-range=10.66.0.50,10.66.0.99,255.255.255.0,1h", `--dhcp-leasefile=${join(work, "lan.leases")}`,
    `--pid-file=${join(work, "lan.pid")}`, "--log-facility=-",
  ]);
  hostListener = hostNs.listen(7001);
  wanListener = lanNs.listen(7002);
  host = await TestHost.create({ netns: hostNs.name });
});

after(async () => {
  const serviceNamespaces = await switchNamespaces(host.home).catch(() => [] as string[]);
  await host.cleanup();
  for (const ns of serviceNamespaces) await killAndDelete(ns);
  await hostNs.cleanup();
  await lanNs.cleanup();
  await rm(work, { recursive: true, force: true });
});

async function waitAddr(vm: string, dev: string, prefix: string): Promise<string> {
  const text = await host.run(
    vm,
    `for i in $(seq 60); do ip -4 -o addr show dev ${dev} | grep -q 'inet ${prefix}' && break; sleep 1; done; echo ADDR-${dev}=$(ip -4 -o addr show dev ${dev} | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p')`,
    // Up to the end of the line: the console log may be read while the address is half printed.
    new RegExp(`ADDR-${dev}=${prefix.replaceAll(".", "\\.")}[0-9.]+\\r?\\n`),
    90_000,
  );
  return new RegExp(`ADDR-${dev}=(${prefix.replaceAll(".", "\\.")}[0-9.]+)\\r?\\n`).exec(text)![1]!;
}

test("switches of every type are created; each shows its bridge, dnsmasq and firewall", { timeout: 120_000 }, async () => {
  await host.ok(["switch", "new", "priv", "--type", "private", "--subnet", "10.61.0.0/24", "--dhcp", "on"]);
  await host.ok(["switch", "new", "int", "--type", "internal", "--subnet", "10.62.0.0/24", "--dhcp", "on"]);
  const inUse = await host.cli(["switch", "new", "bad", "--type", "external", "--adapter", "wan0"]);
  assert.match(inUse.stderr, /"wan0" has the host's address\(es\) 10\.98\.0\.1\/24: bridging it would cut the host off/);
  await host.ok(["switch", "new", "ext", "--type", "external", "--adapter", "lanport"]);
  await host.ok(["switch", "new", "nat", "--type", "nat", "--subnet", "10.64.0.0/24", "--dhcp", "on", "--adapter", "wan0"]);
  const list = await host.json<SwitchJson[]>(["switch", "list"]);
  assert.deepEqual(list.map((s) => `${s.name}:${s.type}`), ["Default Switch:Default", "ext:External", "int:Internal", "nat:NAT", "priv:Private"]);
  const links = await hostNs.ip("-j", "link", "show");
  for (const s of list.filter((x) => x.status)) {
    assert.ok(s.status!.bridgePresent, `${s.name}'s bridge is there`);
    assert.ok(links.includes(`"${s.status!.bridge}"`));
    if (s.name !== "ext") {
      assert.ok(s.status!.dnsmasqPid, `${s.name} runs dnsmasq`);
      dnsmasqPids.push(s.status!.dnsmasqPid!);
    }
  }
  const int = list.find((s) => s.name === "int")!;
  assert.equal(int.hostAddress, "10.62.0.1");
  assert.match(await hostNs.ip("-4", "-o", "addr", "show", "dev", int.status!.bridge), /inet 10\.62\.0\.1\/24/);
  // Private: no host address of either family, and the bridge hands nothing to the host.
  const priv = list.find((s) => s.name === "priv")!;
  assert.equal((await hostNs.ip("-o", "addr", "show", "dev", priv.status!.bridge)).trim(), "");
  assert.deepEqual(priv.status!.firewall, [`netdev vmhost_${priv.id.replace(/-/g, "").slice(0, 8)}`]);
  assert.ok(await netnsExists(priv.status!.serviceNetns!), "the private switch's DHCP lives in its own namespace");
  const ext = JSON.parse(await hostNs.ip("-j", "link", "show", "dev", "lanport")) as { master?: string }[];
  assert.equal(ext[0]?.master, list.find((s) => s.name === "ext")!.status!.bridge, "the external switch enslaves the host NIC");
  const ruleset = await hostNs.exec(["nft", "list", "ruleset"]);
  assert.match(ruleset, /masquerade/);
  assert.match(ruleset, /oifname "wan0"/);
  // The switch definitions are files under $VMHOST_HOME/switches.
  assert.equal(JSON.parse(await readFile(join(host.home, "switches", "priv.json"), "utf8")).type, "Private");
});

test("adapters: dynamic MACs from 00:15:5D; a duplicate static MAC on one switch is refused, on another it is not", { timeout: 240_000 }, async () => {
  for (const vm of ["a", "b"]) await host.ok(["new", vm, "--generation", "1", "--appliance", "--memory", "256M"]);
  await host.ok(["nic", "connect", "a", "Network Adapter", "priv"]);
  await host.ok(["nic", "add", "a", "--switch", "int"]);
  await host.ok(["nic", "add", "a", "--switch", "nat"]);
  await host.ok(["nic", "connect", "b", "Network Adapter", "priv"]);
  const a = await host.json<VmJson>(["show", "a"]);
  const aPrivMac = a.nics[0]!.macAddress;
  const refused = await host.cli(["nic", "add", "b", "--switch", "priv", "--mac", aPrivMac]);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /already used on switch "priv" by adapter "Network Adapter" of VM "a"/);
  assert.match(refused.stderr, /rule mac-in-use-on-switch/);
  await host.ok(["nic", "add", "b", "--switch", "ext", "--mac", aPrivMac.toLowerCase().replaceAll(":", "-")]);
  const b = await host.json<VmJson>(["show", "b"]);
  assert.deepEqual(b.nics.map((n) => [n.switchName, n.dynamicMac]), [["priv", true], ["ext", false]]);
  assert.equal(b.nics[1]!.macAddress, aPrivMac);
  const dynamic = [...a.nics, b.nics[0]!].map((n) => n.macAddress);
  for (const m of dynamic) assert.match(m, /^00:15:5D:[0-9A-F]{2}:[0-9A-F]{2}:[0-9A-F]{2}$/);
  assert.equal(new Set(dynamic).size, dynamic.length, "dynamic MACs are never handed out twice");
  const unknown = await host.cli(["nic", "connect", "a", "Network Adapter", "nope"]);
  assert.match(unknown.stderr, /switch "nope" not found/);
});

test("after a simulated host reboot, starting the VMs recreates what was missing", { timeout: BOOT_TIMEOUT_MS * 2 + 60_000 }, async () => {
  const priv = await host.json<SwitchJson>(["switch", "show", "priv"]);
  const int = await host.json<SwitchJson>(["switch", "show", "int"]);
  // A reboot loses bridges, namespaces and processes; the definitions stay.
  await hostNs.ip("link", "del", "dev", priv.status!.bridge);
  await killAndDelete(priv.status!.serviceNetns!);
  process.kill(int.status!.dnsmasqPid!, "SIGKILL");
  await sleep(200);
  const down = await host.json<SwitchJson>(["switch", "show", "priv"]);
  assert.equal(down.status!.bridgePresent, false);
  assert.equal(down.status!.dnsmasqPid, undefined);
  await host.ok(["start", "a"]);
  await host.ok(["start", "b"]);
  const up = await host.json<SwitchJson>(["switch", "show", "priv"]);
  assert.equal(up.status!.bridgePresent, true);
  assert.ok(up.status!.dnsmasqPid);
  assert.ok((await host.json<SwitchJson>(["switch", "show", "int"])).status!.dnsmasqPid);
  dnsmasqPids.push(up.status!.dnsmasqPid!, (await host.json<SwitchJson>(["switch", "show", "int"])).status!.dnsmasqPid!);
  await host.waitConsole("a", READY, BOOT_TIMEOUT_MS);
  await host.waitConsole("b", READY, BOOT_TIMEOUT_MS);
  addr["a.priv"] = await waitAddr("a", "eth0", "10.61.0.");
  addr["a.int"] = await waitAddr("a", "eth1", "10.62.0.");
  addr["a.nat"] = await waitAddr("a", "eth2", "10.64.0.");
  addr["b.priv"] = await waitAddr("b", "eth0", "10.61.0.");
  addr["b.ext"] = await waitAddr("b", "eth1", "10.66.0.");
  console.log(`addresses: ${JSON.stringify(addr)}`);
});

test("two VMs on the private switch reach each other, and neither reaches the host", { timeout: 180_000 }, async () => {
  await host.run("a", `ping -c 3 -W 3 ${addr["b.priv"]}; echo PING-B=$?`, /PING-B=0/, 30_000);
  await host.run("b", `ping -c 3 -W 3 ${addr["a.priv"]}; echo PING-A=$?`, /PING-A=0/, 30_000);
  // Aim at the host's addresses straight through the private switch (on-link routes): no answer,
  // no connection, and the host's listener hears nothing.
  for (const vm of ["a", "b"]) {
    const text = await host.run(
      vm,
      `ip route add 10.62.0.1/32 dev eth0; ip route add 10.98.0.1/32 dev eth0; ` +
        `ping -c 2 -W 2 10.62.0.1; echo HOST1=$?; ping -c 2 -W 2 10.98.0.1; echo HOST2=$?; ` +
        `echo leak-${vm} | timeout 5 nc 10.62.0.1 7001; echo NC=$?; ip route del 10.62.0.1/32; ip route del 10.98.0.1/32; echo ISO-$((1+1))-DONE`,
      /ISO-2-DONE/,
      60_000,
    );
    assert.match(text, /HOST1=1/);
    assert.match(text, /HOST2=1/);
    assert.doesNotMatch(text, /NC=0/);
  }
  assert.doesNotMatch(hostListener.output(), /leak-/);
});

test("a VM on the internal switch reaches a host-side listener on the bridge address", { timeout: 60_000 }, async () => {
  await host.run("a", "echo from-a-$((6*7)) | nc 10.62.0.1 7001; echo SENT-$((2+2))", /SENT-4/, 30_000);
  for (let i = 0; i < 50 && !/SENT from-a-42/.test(hostListener.output()); i++) await sleep(100);
  assert.match(hostListener.output(), new RegExp(`PEER (::ffff:)?${addr["a.int"]!.replaceAll(".", "\\.")} SENT from-a-42`));
});

test("the external switch puts the VM on the LAN: its address comes from the LAN's own dnsmasq", { timeout: 60_000 }, async () => {
  const b = await host.json<VmJson>(["show", "b"]);
  const leases = await readFile(join(work, "lan.leases"), "utf8");
  assert.ok(leases.includes(b.nics[1]!.macAddress.toLowerCase()), `the LAN's dnsmasq leased ${addr["b.ext"]} to ${b.nics[1]!.macAddress}`);
  assert.ok(leases.includes(addr["b.ext"]!));
  await host.run("b", "ping -c 2 -W 3 10.66.0.1; echo LAN=$?", /LAN=0/, 30_000);
});

test("the NAT switch masquerades out of the host's uplink", { timeout: 60_000 }, async () => {
  await host.run("a", "echo via-nat | nc 10.98.0.2 7002; echo SENT-$((3+3))", /SENT-6/, 30_000);
  for (let i = 0; i < 50 && !/SENT via-nat/.test(wanListener.output()); i++) await sleep(100);
  assert.match(wanListener.output(), /PEER (::ffff:)?10\.98\.0\.1 SENT via-nat/, "the far side sees the host's uplink address, not the VM's");
});

test("a switch in use is not removed; after the VMs stop, removal leaves no link, rule, namespace or process", { timeout: 120_000 }, async () => {
  const inUse = await host.cli(["switch", "remove", "priv"]);
  assert.notEqual(inUse.code, 0);
  assert.match(inUse.stderr, /in use by running VM/);
  // Connect-VMNetworkAdapter on a running VM: between two bridged switches its tap changes bridge at once.
  const b = await host.json<VmJson & { id: string }>(["show", "b"]);
  const moved = await host.json<VmJson>(["nic", "connect", "b", b.nics[1]!.name, "int"]);
  assert.equal(moved.nics[1]!.switchName, "int");
  const tap = JSON.parse(await hostNs.ip("-j", "link", "show", "dev", NAMES.tap(b.id, b.nics[1]!.name))) as { master?: string }[];
  assert.equal(tap[0]?.master, (await host.json<SwitchJson>(["switch", "show", "int"])).status!.bridge);
  const toDefault = await host.cli(["nic", "connect", "b", b.nics[1]!.name, "Default Switch"]);
  assert.match(toDefault.stderr, /needs VM "b" off/);
  const switches = (await host.json<SwitchJson[]>(["switch", "list"])).filter((s) => s.status);
  const serviceNs = switches.flatMap((s) => (s.status!.serviceNetns ? [s.status!.serviceNetns] : []));
  await host.ok(["turn-off", "a"]);
  await host.ok(["turn-off", "b"]);
  await sleep(500);
  assert.doesNotMatch(await hostNs.ip("-o", "link", "show"), /vmht[0-9a-f]{10}/, "the VMs' taps went with QEMU");
  for (const s of switches) await host.ok(["switch", "remove", s.name]);
  assert.deepEqual((await host.json<SwitchJson[]>(["switch", "list"])).map((s) => s.name), ["Default Switch"]);
  const links = await hostNs.ip("-o", "link", "show");
  assert.doesNotMatch(links, /vmh(br|sv)[0-9a-f]{8}|vmht[0-9a-f]{10}/, `no vmhost link is left:\n${links}`);
  const lanport = JSON.parse(await hostNs.ip("-j", "link", "show", "dev", "lanport")) as { master?: string }[];
  assert.equal(lanport[0]?.master, undefined, "the host NIC is released");
  assert.doesNotMatch(await hostNs.exec(["nft", "list", "ruleset"]), /vmhost/);
  for (const ns of serviceNs) assert.equal(await netnsExists(ns), false, `${ns} is gone`);
  for (const pid of dnsmasqPids) assert.equal(await processStartTime(pid), undefined, `dnsmasq ${pid} is gone`);
  for (const pid of await hostNs.pids()) {
    const comm = (await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "")).trim();
    assert.ok(comm !== "dnsmasq" && !comm.startsWith("qemu"), `process ${pid} (${comm}) is left in the host namespace`);
  }
});
