import { randomBytes } from "node:crypto";
import { run } from "../../src/images/appliance/run.js";
import { TestHost } from "./harness.js";
import { TestNetns } from "./netns.js";

/**
 * Several vmhost "hosts" on one machine for a test: each in a network namespace of its own
 * (its vmhostd, QEMUs and, for clusters, etcd member run inside it), all joined by a bridge in
 * another namespace playing the LAN, each with its own address. Their homes are folders of this
 * machine's file system, so a folder they all name is "shared storage". Everything is deleted at
 * cleanup, also after a failure.
 */
export interface LabHost {
  name: string;
  address: string;
  ns: TestNetns;
  host: TestHost;
  /** The LAN side of its cable (set down to cut the host off: a partition). */
  lanPort: string;
}

export class HostLab {
  private constructor(
    readonly lan: TestNetns,
    readonly hosts: LabHost[],
    readonly subnet: string,
  ) {}

  /** `names.length` hosts on 10.<random>.0.0/24, the first at .1. */
  static async create(names: string[]): Promise<HostLab> {
    const octet = 100 + (randomBytes(1)[0]! % 100);
    const lan = await TestNetns.create("lan");
    await lan.ip("link", "add", "br0", "type", "bridge");
    await lan.ip("link", "set", "br0", "up");
    const hosts: LabHost[] = [];
    try {
      for (const [i, name] of names.entries()) {
        const ns = await TestNetns.create(name);
        const lanPort = `p${i}${randomBytes(2).toString("hex")}`;
        await lan.ip("link", "add", lanPort, "type", "veth", "peer", "name", "eth0", "netns", ns.name);
        await lan.ip("link", "set", lanPort, "master", "br0");
        await lan.ip("link", "set", lanPort, "up");
        const address = `10.${octet}.0.${i + 1}`;
        await ns.ip("addr", "add", `${address}/24`, "dev", "eth0");
        await ns.ip("link", "set", "eth0", "up");
        const host = await TestHost.create({ netns: ns.name });
        host.env["VMHOST_HOST_NAME"] = name;
        hosts.push({ name, address, ns, host, lanPort });
      }
    } catch (err) {
      for (const h of hosts) await h.ns.cleanup().catch(() => undefined);
      await lan.cleanup();
      throw err;
    }
    return new HostLab(lan, hosts, `10.${octet}.0.0/24`);
  }

  get(name: string): LabHost {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no lab host ${name}`);
    return h;
  }

  /** Makes `to` reach `from`'s service: `from` listens on HTTPS, trusts `to`, and `to` adds it as peer `from.name`. */
  async trust(to: string, from: string): Promise<void> {
    const a = this.get(to);
    const b = this.get(from);
    await b.host.ok(["service", "listen", `${b.address}:8443`]);
    const token = (await b.host.json<{ token: string }>(["trust", "add", `host-${a.name}`])).token;
    await a.host.ok(["peer", "add", b.name, `https://${b.address}:8443`, "--token", token]);
  }

  /** Cuts a host off the LAN (its cable's LAN side down) or plugs it back. */
  async cable(name: string, up: boolean): Promise<void> {
    await this.lan.ip("link", "set", this.get(name).lanPort, up ? "up" : "down");
  }

  async cleanup(): Promise<void> {
    for (const h of this.hosts) await h.host.cleanup().catch(() => undefined);
    for (const h of this.hosts) await h.ns.cleanup().catch(() => undefined);
    await this.lan.cleanup().catch(() => undefined);
    await run("true", []);
  }
}
