// One dnsmasq per switch with DHCP: DHCPv4, router advertisements, stateful DHCPv6 and TFTP,
// with the boot file for PXEv4 (option 67 + next-server) and the boot-file URL for PXEv6
// (DHCPv6 option 59). dnsmasq daemonizes, so like QEMU it outlives vmhostd; a pid file plus
// its command line tell whether it still runs.
import { spawn } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import { processCmdline, processStartTime, sleep } from "../supervisor/proc.js";
import { dhcpRange, gatewayAddress, ipv6DhcpRange, ipv6Gateway, netmask, parseIpv4Subnet } from "./addr.js";
import type { SwitchConfig } from "./schema.js";

export interface DnsmasqPaths {
  pidFile: string;
  logFile: string;
  leaseFile: string;
}

const LEASE_TIME = "1h";

/** dnsmasq's argv (without the binary) for a switch serving on `iface`. Pure. */
export function dnsmasqArgv(sw: SwitchConfig, iface: string, paths: DnsmasqPaths): string[] {
  if (!sw.subnet) throw new Error(`switch "${sw.name}" has no subnet to serve`);
  const subnet = parseIpv4Subnet(sw.subnet);
  const range = dhcpRange(subnet);
  const a = [
    "--conf-file=/dev/null", // nothing from /etc/dnsmasq.conf or /etc/dnsmasq.d
    `--pid-file=${paths.pidFile}`,
    `--log-facility=${paths.logFile}`,
    "--log-dhcp",
    "--port=0", // no DNS: addresses and boot services only
    `--interface=${iface}`,
    "--bind-dynamic",
    "--except-interface=lo",
    "--dhcp-authoritative",
    `--dhcp-leasefile=${paths.leaseFile}`,
    `--dhcp-range=${range.start},${range.end},${netmask(subnet)},${LEASE_TIME}`,
  ];
  // Only a NAT switch routes; elsewhere dnsmasq must not offer itself as the default gateway.
  if (sw.type !== "NAT") a.push("--dhcp-option=option:router");
  if (sw.ipv6Prefix) {
    const r6 = ipv6DhcpRange(sw.ipv6Prefix);
    a.push(`--dhcp-range=${r6.start},${r6.end},64,${LEASE_TIME}`);
    // RAs with the Managed flag send clients to DHCPv6; router lifetime 0: nobody routes IPv6 here.
    a.push("--enable-ra", `--ra-param=${iface},60,0`);
  }
  if (sw.boot) {
    a.push("--enable-tftp", `--tftp-root=${sw.boot.dir}`, `--dhcp-boot=${sw.boot.file}`);
    if (sw.ipv6Prefix) a.push(`--dhcp-option=option6:bootfile-url,tftp://[${ipv6Gateway(sw.ipv6Prefix)}]/${sw.boot.file}`);
  }
  return a;
}

/** Where the switch's DHCP service has its addresses: the gateway address of each family. */
export function serviceAddresses(sw: SwitchConfig): string[] {
  const out: string[] = [];
  if (sw.subnet) {
    const s = parseIpv4Subnet(sw.subnet);
    out.push(`${gatewayAddress(s)}/${s.prefixLength}`);
  }
  if (sw.ipv6Prefix) out.push(`${ipv6Gateway(sw.ipv6Prefix)}/64`);
  return out;
}

/** The pid of this switch's dnsmasq when it runs (the pid file's process, started with that pid file). */
export async function dnsmasqPid(paths: DnsmasqPaths): Promise<number | undefined> {
  const pid = Number((await readFile(paths.pidFile, "utf8").catch(() => "")).trim());
  if (!(pid > 0)) return undefined;
  if ((await processStartTime(pid)) === undefined) return undefined;
  const cmd = await processCmdline(pid);
  return cmd.some((a) => a.endsWith("dnsmasq")) && cmd.includes(`--pid-file=${paths.pidFile}`) ? pid : undefined;
}

/** Start dnsmasq (optionally inside a named network namespace) and wait for its pid file. */
export async function startDnsmasq(argv: string[], paths: DnsmasqPaths, netns?: string): Promise<number> {
  await rm(paths.pidFile, { force: true });
  const [cmd, args] = netns ? ["ip", ["netns", "exec", netns, "dnsmasq", ...argv]] : ["dnsmasq", argv];
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(cmd, args as string[], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", (e) => resolve({ code: null, stderr: String(e) }));
    child.on("close", (c) => resolve({ code: c, stderr: err }));
  });
  if (code !== 0) throw new Error(`dnsmasq did not start: ${stderr.trim() || `exit ${code}`}`);
  for (let i = 0; i < 100; i++) {
    const pid = await dnsmasqPid(paths);
    if (pid) return pid;
    await sleep(20);
  }
  throw new Error(`dnsmasq started but wrote no pid file ${paths.pidFile}`);
}

export async function stopDnsmasq(paths: DnsmasqPaths): Promise<void> {
  const pid = await dnsmasqPid(paths);
  if (pid) {
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 100 && (await processStartTime(pid)) !== undefined; i++) await sleep(20);
    if ((await processStartTime(pid)) !== undefined) process.kill(pid, "SIGKILL");
  }
  await rm(paths.pidFile, { force: true });
}
