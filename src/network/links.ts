// Bridges, taps and veths through `ip`: each function makes the state true and is a no-op when it
// already is, so "recreate what is missing" is just calling them again.
import { ip, ipMaybe, link, netnsList, setSysctl } from "./host.js";

export async function ensureBridge(name: string): Promise<void> {
  const l = await link(name);
  if (l && l.linkinfo?.info_kind !== "bridge") throw new Error(`${name} exists but is not a bridge`);
  if (!l) await ip(["link", "add", "name", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
  await ip(["link", "set", "dev", name, "up"]);
}

export async function deleteLink(name: string, netns?: string): Promise<void> {
  if (await link(name, netns)) await ip(["link", "del", "dev", name], netns);
}

export async function ensureMaster(dev: string, bridge: string): Promise<void> {
  const l = await link(dev);
  if (!l) throw new Error(`network interface ${dev} does not exist`);
  if (l.master !== bridge) await ip(["link", "set", "dev", dev, "master", bridge]);
  await ip(["link", "set", "dev", dev, "up"]);
}

export async function releaseFromBridge(dev: string, bridge: string): Promise<void> {
  const l = await link(dev);
  if (l?.master === bridge) await ip(["link", "set", "dev", dev, "nomaster"]);
}

/** A persistent tap QEMU opens by name (script=no); created and enslaved before QEMU starts. */
export async function ensureTap(name: string, bridge: string): Promise<void> {
  const l = await link(name);
  if (l && l.linkinfo?.info_kind !== "tun") throw new Error(`${name} exists but is not a tap`);
  if (!l) await ip(["tuntap", "add", "dev", name, "mode", "tap"]);
  await ensureMaster(name, bridge);
}

export async function ensureAddress(dev: string, cidr: string, netns?: string): Promise<void> {
  const v6 = cidr.includes(":");
  // nodad: the switch's own address is usable at once (the bridge may have no port yet, so DAD would stall).
  await ip(["addr", "replace", cidr, "dev", dev, ...(v6 ? ["nodad"] : [])], netns);
}

export async function disableIpv6(dev: string): Promise<void> {
  await setSysctl(`net.ipv6.conf.${dev}.disable_ipv6`, "1");
}

export async function ensureNetns(name: string): Promise<void> {
  if (!(await netnsList()).includes(name)) await ip(["netns", "add", name]);
  await ip(["link", "set", "dev", "lo", "up"], name);
}

export async function deleteNetns(name: string): Promise<void> {
  if ((await netnsList()).includes(name)) await ipMaybe(["netns", "del", name]);
}

/** A veth pair with one end here (enslaved to `bridge`) and the other in `netns`. */
export async function ensureVethInto(hostEnd: string, nsEnd: string, netns: string, bridge: string): Promise<void> {
  if (!(await link(hostEnd))) {
    // A stale inner end (its pair was lost) would block the name.
    await deleteLink(nsEnd, netns);
    await ip(["link", "add", "name", hostEnd, "type", "veth", "peer", "name", nsEnd, "netns", netns]);
  }
  await ensureMaster(hostEnd, bridge);
  await ip(["link", "set", "dev", nsEnd, "up"], netns);
}
