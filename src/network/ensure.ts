// "Recreate what is missing": a switch's host side (bridge, host NIC or address, the private
// switch's service namespace, firewall tables, dnsmasq) brought to what its definition says.
// Run when a switch is created and before every VM start that uses it, so switches come back
// after a host reboot. Teardown removes every one of those objects.
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { gatewayAddress, parseIpv4Subnet } from "./addr.js";
import { dnsmasqArgv, dnsmasqPid, serviceAddresses, startDnsmasq, stopDnsmasq, type DnsmasqPaths } from "./dnsmasq.js";
import { applyFirewall, firewallPresent, removeFirewall, type FirewallSpec } from "./firewall.js";
import { link, netnsList, setSysctl } from "./host.js";
import {
  deleteLink,
  deleteNetns,
  disableIpv6,
  ensureAddress,
  ensureBridge,
  ensureMaster,
  ensureNetns,
  ensureVethInto,
  releaseFromBridge,
} from "./links.js";
import { NAMES } from "./names.js";
import type { SwitchConfig } from "./schema.js";

export function dnsmasqPaths(stateDir: string): DnsmasqPaths {
  return { pidFile: join(stateDir, "dnsmasq.pid"), logFile: join(stateDir, "dnsmasq.log"), leaseFile: join(stateDir, "leases") };
}

function firewallSpec(sw: SwitchConfig): FirewallSpec {
  const bridge = NAMES.bridge(sw.id);
  return {
    switchId: sw.id,
    switchName: sw.name,
    bridge,
    ...(sw.type === "NAT" && sw.subnet ? { masquerade: { subnet: sw.subnet, ...(sw.netAdapter ? { uplink: sw.netAdapter } : {}) } } : {}),
    ...(sw.type === "Private" ? { isolateHost: true } : {}),
  };
}

/** Where the switch's dnsmasq runs: on the bridge itself, or (Private) in the service namespace. */
function dhcpPlacement(sw: SwitchConfig): { iface: string; netns?: string } {
  if (sw.type === "Private") return { iface: NAMES.serviceVethNs(sw.id), netns: NAMES.serviceNetns(sw.id) };
  return { iface: NAMES.bridge(sw.id) };
}

export interface EnsureReport {
  /** What had to be (re)created; empty when everything was in place. */
  created: string[];
}

export async function ensureSwitch(sw: SwitchConfig, stateDir: string): Promise<EnsureReport> {
  const created: string[] = [];
  const bridge = NAMES.bridge(sw.id);
  if (!(await link(bridge))) created.push(`bridge ${bridge}`);
  await ensureBridge(bridge);

  switch (sw.type) {
    case "External": {
      const nic = sw.netAdapter!;
      if (!(await link(nic))) throw new Error(`host network adapter "${nic}" of external switch "${sw.name}" does not exist`);
      if ((await link(nic))?.master !== bridge) created.push(`${nic} enslaved to ${bridge}`);
      await ensureMaster(nic, bridge);
      break;
    }
    case "Internal":
    case "NAT":
      for (const cidr of serviceAddresses(sw)) await ensureAddress(bridge, cidr);
      if (sw.type === "NAT") await setSysctl("net.ipv4.ip_forward", "1");
      break;
    case "Private":
      // The host keeps no address on a private switch, not even an IPv6 link-local one.
      await disableIpv6(bridge);
      if (sw.dhcp) {
        const ns = NAMES.serviceNetns(sw.id);
        if (!(await netnsList()).includes(ns)) created.push(`namespace ${ns}`);
        await ensureNetns(ns);
        await ensureVethInto(NAMES.serviceVethHost(sw.id), NAMES.serviceVethNs(sw.id), ns, bridge);
        for (const cidr of serviceAddresses(sw)) await ensureAddress(NAMES.serviceVethNs(sw.id), cidr, ns);
      }
      break;
  }

  const fw = firewallSpec(sw);
  if (fw.masquerade || fw.isolateHost) {
    if ((await firewallPresent(sw.id)).length === 0) created.push(`nft table ${NAMES.nftTable(sw.id)}`);
    await applyFirewall(fw);
  }

  if (sw.dhcp) {
    await mkdir(stateDir, { recursive: true });
    const paths = dnsmasqPaths(stateDir);
    if (!(await dnsmasqPid(paths))) {
      const where = dhcpPlacement(sw);
      await startDnsmasq(dnsmasqArgv(sw, where.iface, paths), paths, where.netns);
      created.push("dnsmasq");
    }
  }
  return { created };
}

export async function teardownSwitch(sw: SwitchConfig, stateDir: string): Promise<void> {
  const bridge = NAMES.bridge(sw.id);
  await stopDnsmasq(dnsmasqPaths(stateDir));
  await removeFirewall(sw.id);
  if (sw.type === "External" && sw.netAdapter) await releaseFromBridge(sw.netAdapter, bridge);
  await deleteNetns(NAMES.serviceNetns(sw.id));
  await deleteLink(NAMES.serviceVethHost(sw.id));
  await deleteLink(bridge);
}

export interface SwitchStatus {
  bridge: string;
  bridgePresent: boolean;
  dnsmasqPid?: number;
  firewall: string[];
  serviceNetns?: string;
  hostAddress?: string;
}

export async function switchStatus(sw: SwitchConfig, stateDir: string): Promise<SwitchStatus> {
  const bridge = NAMES.bridge(sw.id);
  const pid = sw.dhcp ? await dnsmasqPid(dnsmasqPaths(stateDir)) : undefined;
  return {
    bridge,
    bridgePresent: (await link(bridge)) !== undefined,
    ...(pid ? { dnsmasqPid: pid } : {}),
    firewall: await firewallPresent(sw.id).catch(() => []),
    ...(sw.type === "Private" && sw.dhcp ? { serviceNetns: NAMES.serviceNetns(sw.id) } : {}),
    ...((sw.type === "Internal" || sw.type === "NAT") && sw.subnet ? { hostAddress: gatewayAddress(parseIpv4Subnet(sw.subnet)) } : {}),
  };
}
