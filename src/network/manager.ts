// Switches and how VMs' adapters reach them: the switch definitions, their host side, and one tap
// per adapter of a running VM (created and enslaved before QEMU starts, removed after it exits).
import { randomUUID } from "node:crypto";
import { stat } from "node:fs/promises";
import { isAbsolute, join, normalize, resolve } from "node:path";
import type { EngineOptions, NetAttachment } from "../engine/qemu/argv.js";
import type { ConfigStore } from "../model/store.js";
import type { NetworkAdapter, VmConfig, VmState } from "../model/schema.js";
import type { Supervisor } from "../supervisor/supervisor.js";
import { VmhostError, notFound } from "../util/errors.js";
import { KeyedMutex } from "../util/mutex.js";
import {
  checkSwitchIpv6Prefix,
  checkSwitchSubnet,
  formatIpv4Subnet,
  gatewayAddress,
  parseIpv4,
  parseIpv4Subnet,
  parseIpv6Prefix,
  subnetsOverlap,
  ulaPrefix,
  type HostNetworks,
  type Ipv4Subnet,
} from "./addr.js";
import { ensureSwitch, switchStatus, teardownSwitch, type SwitchStatus } from "./ensure.js";
import { hasNetAdmin, hostAddresses, ip, link, netError, readHostNetworks, requireNetAdmin } from "./host.js";
import { deleteLink, ensureMaster, ensureTap } from "./links.js";
import { NAMES } from "./names.js";
import { DEFAULT_SWITCH, SwitchConfig, SwitchName, SwitchType } from "./schema.js";
import { SwitchStore } from "./store.js";

export interface CreateSwitchRequest {
  name: string;
  type: "external" | "internal" | "private" | "nat";
  netAdapter?: string;
  subnet?: string;
  ipv6Prefix?: string;
  dhcp?: boolean;
  bootDir?: string;
  bootFile?: string;
}

export interface SwitchView {
  name: string;
  /** "Default" is the built-in switch; "Damaged" a definition file that does not parse (left as it is). */
  type: SwitchType | "Default" | "Damaged";
  builtIn: boolean;
  id?: string;
  netAdapter?: string;
  subnet?: string;
  hostAddress?: string;
  ipv6Prefix?: string;
  dhcp: boolean;
  boot?: { dir: string; file: string };
  notes?: string;
  status?: SwitchStatus;
  adapters: { vm: string; adapter: string; macAddress: string; running: boolean }[];
  paths?: { config: string; state: string };
}

const TYPES: Record<CreateSwitchRequest["type"], SwitchType> = { external: "External", internal: "Internal", private: "Private", nat: "NAT" };

export function isDefaultSwitch(name: string): boolean {
  return name.toLowerCase() === DEFAULT_SWITCH.toLowerCase();
}

export class NetworkManager {
  readonly store: SwitchStore;
  private readonly locks = new KeyedMutex();

  constructor(
    home: string,
    private readonly vms: ConfigStore,
    private readonly supervisor: Supervisor,
  ) {
    this.store = new SwitchStore(join(home, "switches"));
    // QEMU is gone (Off or Saved): its taps go too.
    supervisor.on("state", (vm, state: VmState) => {
      if (state !== "Off" && state !== "Saved") return;
      void this.vms
        .get(vm.id)
        .then((vm) => this.releaseTaps(vm))
        .catch(() => undefined);
    });
  }

  /** At service start: taps of VMs that are not running (QEMU died while vmhostd was away) are removed. */
  async init(): Promise<void> {
    if (!hasNetAdmin()) return;
    for (const vm of await this.vms.configs()) {
      if (!this.supervisor.isRunning(vm.id)) await this.releaseTaps(vm).catch(() => undefined);
    }
  }

  // ---- switches ---------------------------------------------------------------------

  async list(): Promise<SwitchView[]> {
    const configs = await this.vms.configs();
    const out: SwitchView[] = [this.defaultView(configs)];
    for (const l of await this.store.list()) {
      if (!l.ok) {
        out.push({ name: l.name, type: "Damaged", builtIn: false, dhcp: false, notes: l.error, adapters: [] });
        continue;
      }
      out.push(await this.view(l.config, configs));
    }
    return out;
  }

  async show(name: string): Promise<SwitchView> {
    const configs = await this.vms.configs();
    if (isDefaultSwitch(name)) return this.defaultView(configs);
    return this.view(await this.store.get(name), configs);
  }

  private adaptersOn(name: string, configs: VmConfig[]): SwitchView["adapters"] {
    return configs.flatMap((vm) =>
      vm.networkAdapters
        .filter((n) => n.switchName.toLowerCase() === name.toLowerCase())
        .map((n) => ({ vm: vm.name, adapter: n.name, macAddress: n.macAddress, running: this.supervisor.isRunning(vm.id) })),
    );
  }

  private defaultView(configs: VmConfig[]): SwitchView {
    return {
      name: DEFAULT_SWITCH,
      type: "Default",
      builtIn: true,
      dhcp: true,
      subnet: "10.0.2.0/24",
      notes: "QEMU user-mode networking, one NAT per VM: outbound connections only, no root needed",
      adapters: this.adaptersOn(DEFAULT_SWITCH, configs),
    };
  }

  private async view(sw: SwitchConfig, configs: VmConfig[]): Promise<SwitchView> {
    const stateDir = this.store.stateDir(sw);
    return {
      name: sw.name,
      type: sw.type,
      builtIn: false,
      id: sw.id,
      ...(sw.netAdapter ? { netAdapter: sw.netAdapter } : {}),
      ...(sw.subnet ? { subnet: sw.subnet } : {}),
      ...((sw.type === "Internal" || sw.type === "NAT") && sw.subnet ? { hostAddress: gatewayAddress(parseIpv4Subnet(sw.subnet)) } : {}),
      ...(sw.ipv6Prefix ? { ipv6Prefix: sw.ipv6Prefix } : {}),
      dhcp: sw.dhcp,
      ...(sw.boot ? { boot: sw.boot } : {}),
      status: await switchStatus(sw, stateDir),
      adapters: this.adaptersOn(sw.name, configs),
      paths: { config: join(this.store.dir, `${sw.name}.json`), state: stateDir },
    };
  }

  async create(req: CreateSwitchRequest): Promise<SwitchView> {
    const nameCheck = SwitchName.safeParse(req.name);
    if (!nameCheck.success) throw new VmhostError("bad-name", `switch name ${JSON.stringify(req.name)} is invalid: ${nameCheck.error.issues[0]?.message}`);
    if (isDefaultSwitch(req.name)) throw new VmhostError("exists", `"${DEFAULT_SWITCH}" is built in`, 409);
    const type = TYPES[req.type];
    const id = randomUUID();
    const dhcp = req.dhcp ?? false;
    const bad = (msg: string) => new VmhostError("bad-request", `switch "${req.name}" (${type}): ${msg}`);

    if (type === "External") {
      if (!req.netAdapter) throw bad("an external switch needs --adapter HOSTNIC, the host network adapter it bridges");
      if (req.subnet || req.ipv6Prefix || dhcp || req.bootDir) throw bad("an external switch takes its addresses from the physical network: --subnet, --ipv6-prefix, --dhcp and --boot-dir do not apply");
    } else if (req.netAdapter && type !== "NAT") {
      throw bad("--adapter applies to external switches (the bridged NIC) and NAT switches (the uplink)");
    }
    if ((req.bootDir === undefined) !== (req.bootFile === undefined)) throw bad("--boot-dir and --boot-file go together");
    if (req.bootDir && !dhcp) throw bad("network boot needs --dhcp on (DHCP hands out the boot file)");

    const others = await this.store.configs();
    let subnet: Ipv4Subnet | undefined;
    if (req.subnet) {
      try {
        subnet = parseIpv4Subnet(req.subnet);
      } catch (err) {
        throw bad((err as Error).message);
      }
    } else if (type === "Internal" || type === "NAT" || (type === "Private" && dhcp)) {
      subnet = await this.pickSubnet(others);
    }
    if (subnet) {
      for (const o of others) {
        if (o.subnet && subnetsOverlap(subnet, parseIpv4Subnet(o.subnet))) throw bad(`subnet ${formatIpv4Subnet(subnet)} overlaps switch "${o.name}" (${o.subnet})`);
      }
    }
    let ipv6Prefix: string | undefined;
    if (req.ipv6Prefix) {
      if (type === "External") throw bad("--ipv6-prefix does not apply");
      try {
        ipv6Prefix = parseIpv6Prefix(req.ipv6Prefix);
      } catch (err) {
        throw bad((err as Error).message);
      }
    } else if (dhcp) {
      ipv6Prefix = ulaPrefix(id);
    }
    // The host's own networks and reserved ranges are refused (a switch on the host's LAN would
    // give the host its gateway's address). A private switch puts no address on the host.
    if (subnet || ipv6Prefix) {
      const hostNets: HostNetworks = type === "Private" ? { routes: [], addresses: [] } : await readHostNetworks();
      try {
        if (subnet) checkSwitchSubnet(subnet, hostNets);
        if (ipv6Prefix) checkSwitchIpv6Prefix(ipv6Prefix, hostNets);
      } catch (err) {
        if (err instanceof VmhostError) throw new VmhostError(err.code, `switch "${req.name}" (${type}): ${err.message}`, err.status);
        throw err;
      }
    }
    let boot: SwitchConfig["boot"];
    if (req.bootDir && req.bootFile) {
      const dir = resolve(req.bootDir);
      const st = await stat(dir).catch(() => undefined);
      if (!st?.isDirectory()) throw bad(`boot directory ${dir} does not exist`);
      const file = normalize(req.bootFile);
      if (isAbsolute(file) || file.startsWith("..") || /[\s,]/.test(file)) throw bad(`--boot-file "${req.bootFile}" must be a plain path inside the boot directory`);
      boot = { dir, file };
    }
    const sw: SwitchConfig = SwitchConfig.parse({
      formatVersion: 1,
      name: req.name,
      id,
      type,
      ...(req.netAdapter ? { netAdapter: req.netAdapter } : {}),
      ...(subnet ? { subnet: formatIpv4Subnet(subnet) } : {}),
      ...(ipv6Prefix ? { ipv6Prefix } : {}),
      dhcp,
      ...(boot ? { boot } : {}),
      createdAt: new Date().toISOString(),
    });
    requireNetAdmin(`creating switch "${sw.name}" (${type})`);
    if (type === "External") {
      if (!(await link(sw.netAdapter!))) throw bad(`host network adapter "${sw.netAdapter}" does not exist`);
      // Enslaved, the NIC's own addresses stop working; vmhost does not move them to the bridge.
      const addrs = await hostAddresses(sw.netAdapter!);
      if (addrs.length) {
        throw bad(
          `host network adapter "${sw.netAdapter}" has the host's address(es) ${addrs.join(", ")}: bridging it would cut the host off that network. ` +
            "Move them off it first, or bridge an adapter the host does not use",
        );
      }
    }
    await this.store.create(sw);
    try {
      await this.locks.run(sw.id, () => ensureSwitch(sw, this.store.stateDir(sw)));
    } catch (err) {
      await teardownSwitch(sw, this.store.stateDir(sw)).catch(() => undefined);
      await this.store.remove(sw);
      throw err instanceof VmhostError ? err : netError(`creating switch "${sw.name}" failed`, err);
    }
    return this.show(sw.name);
  }

  /** A free /24 in 192.168.100-254 that no switch and no route of this host uses. */
  private async pickSubnet(others: SwitchConfig[]): Promise<Ipv4Subnet> {
    const taken: Ipv4Subnet[] = others.flatMap((o) => (o.subnet ? [parseIpv4Subnet(o.subnet)] : []));
    try {
      const routes = JSON.parse((await ip(["-j", "-4", "route", "show"])) || "[]") as { dst?: string }[];
      for (const r of routes) {
        if (!r.dst || r.dst === "default") continue;
        const [a, p] = r.dst.split("/");
        const prefixLength = Number(p ?? 32);
        taken.push({ network: (parseIpv4(a!) & (prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0)) >>> 0, prefixLength });
      }
    } catch {
      /* no route table to look at: the switches alone decide */
    }
    for (let n = 100; n <= 254; n++) {
      const cand = parseIpv4Subnet(`192.168.${n}.0/24`);
      if (!taken.some((t) => subnetsOverlap(t, cand))) return cand;
    }
    throw new VmhostError("no-subnet", "no free 192.168.x.0/24 subnet is left: give --subnet");
  }

  async remove(name: string): Promise<{ removed: string; disconnected: { vm: string; adapter: string }[] }> {
    if (isDefaultSwitch(name)) throw new VmhostError("invalid-state", `"${DEFAULT_SWITCH}" is built in and cannot be removed`, 409);
    const sw = await this.store.get(name);
    requireNetAdmin(`removing switch "${sw.name}"`);
    return this.locks.run(sw.id, async () => {
      const adapters = this.adaptersOn(sw.name, await this.vms.configs());
      const running = adapters.filter((a) => a.running);
      if (running.length) {
        throw new VmhostError(
          "invalid-state",
          `switch "${sw.name}" is in use by running VM(s) ${[...new Set(running.map((a) => `"${a.vm}"`))].join(", ")}: turn them off or connect their adapters to another switch first`,
          409,
        );
      }
      try {
        await teardownSwitch(sw, this.store.stateDir(sw));
      } catch (err) {
        throw netError(`removing switch "${sw.name}" failed`, err);
      }
      await this.store.remove(sw);
      // As on Hyper-V, their adapters stay configured but are not connected anywhere.
      return { removed: sw.name, disconnected: adapters.map((a) => ({ vm: a.vm, adapter: a.adapter })) };
    });
  }

  /** The switch's canonical name; the Default Switch always exists. */
  async resolveName(name: string): Promise<string> {
    if (isDefaultSwitch(name)) return DEFAULT_SWITCH;
    const sw = await this.store.find(name);
    if (!sw) throw notFound(`switch "${name}"`);
    return sw.name;
  }

  // ---- adapters ---------------------------------------------------------------------

  private async switchOf(vm: VmConfig, nic: NetworkAdapter): Promise<SwitchConfig | undefined> {
    if (isDefaultSwitch(nic.switchName)) return undefined;
    const sw = await this.store.find(nic.switchName);
    if (!sw) {
      throw new VmhostError(
        "switch-missing",
        `adapter "${nic.name}" of VM "${vm.name}" is connected to switch "${nic.switchName}", which does not exist: ` +
          `connect it to another one with "vmhost nic connect ${vm.name} '${nic.name}' SWITCH"`,
        409,
      );
    }
    return sw;
  }

  private ensure(sw: SwitchConfig): Promise<unknown> {
    return this.locks.run(sw.id, () => ensureSwitch(sw, this.store.stateDir(sw)));
  }

  /**
   * The supervisor's engineExtras hook: every adapter not on the Default Switch gets its switch
   * recreated where missing and a tap on the switch's bridge.
   */
  async engineExtras(vm: VmConfig): Promise<Partial<EngineOptions>> {
    const networks: Record<string, NetAttachment> = {};
    const made: string[] = [];
    try {
      for (const nic of vm.networkAdapters) {
        const sw = await this.switchOf(vm, nic);
        if (!sw) continue;
        requireNetAdmin(`starting VM "${vm.name}", whose adapter "${nic.name}" is on switch "${sw.name}" (${sw.type}),`);
        await this.ensure(sw).catch((err: unknown) => {
          throw err instanceof VmhostError ? err : netError(`switch "${sw.name}" could not be brought up`, err);
        });
        const tap = NAMES.tap(vm.id, nic.name);
        made.push(tap);
        await ensureTap(tap, NAMES.bridge(sw.id)).catch((err: unknown) => {
          throw netError(`the tap of adapter "${nic.name}" could not be made`, err);
        });
        networks[nic.name] = { kind: "tap", ifname: tap };
      }
    } catch (err) {
      for (const t of made) await deleteLink(t).catch(() => undefined);
      throw err;
    }
    // The firmware's network-boot switches (preferred protocol) are argv's, from engine/qemu/fwcfg.ts.
    return { networks };
  }

  async releaseTaps(vm: VmConfig): Promise<void> {
    for (const nic of vm.networkAdapters) {
      const tap = NAMES.tap(vm.id, nic.name);
      if (await link(tap)) await deleteLink(tap);
    }
  }

  /**
   * Connect an adapter to a switch. While the VM runs, an adapter moves between two bridged
   * switches at once (its tap changes bridge); to or from the Default Switch it needs the VM off.
   */
  async connect(vm: VmConfig, nic: NetworkAdapter, target: string, running: boolean): Promise<string> {
    const name = await this.resolveName(target);
    if (!running) return name;
    const from = await this.switchOf(vm, nic).catch(() => undefined);
    const to = isDefaultSwitch(name) ? undefined : await this.store.get(name);
    if (!from || !to) {
      throw new VmhostError("invalid-state", `moving adapter "${nic.name}" to or from the "${DEFAULT_SWITCH}" needs VM "${vm.name}" off`, 409);
    }
    requireNetAdmin(`connecting adapter "${nic.name}" to switch "${to.name}"`);
    await this.ensure(to);
    await ensureMaster(NAMES.tap(vm.id, nic.name), NAMES.bridge(to.id));
    return name;
  }
}
