import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { join } from "node:path";
import { EtcdMemberError } from "./errors.js";
import { clientUrlOf, createCluster, joinCluster, peerUrlOf, type LocalMemberOptions } from "./formation.js";
import { EtcdMember } from "./member.js";

/**
 * A whole cluster on one machine, for tests and benchmarks: N etcd members on one address with
 * distinct ports (or each on its own address, e.g. inside network namespaces). Production hosts
 * use formation.ts directly, one member each.
 */

/** `count` TCP ports free on `address` right now (the kernel picks them; they are released again). */
export async function freePorts(count: number, address = "127.0.0.1"): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => {
      const s = createServer();
      return new Promise<typeof s>((resolve, reject) => {
        s.once("error", reject);
        s.listen(0, address, () => resolve(s));
      });
    }),
  );
  const ports = servers.map((s) => {
    const a = s.address();
    if (!a || typeof a === "string") throw new Error("no port");
    return a.port;
  });
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

export interface LabMember {
  name: string;
  options: LocalMemberOptions;
  clientUrl: string;
  member: EtcdMember;
}

export interface LabClusterOptions {
  /** Directory for all members (each gets dir/<name>). */
  dir: string;
  names: string[];
  /** Address per member (default all on 127.0.0.1 with free ports). */
  addresses?: Record<string, string>;
  /** Argv prefix per member (e.g. nsenter into its namespace). */
  launchers?: Record<string, string[]>;
  /**
   * "join": create on the first, join the others one by one through formation.ts (what hosts do;
   * etcd's reconfiguration check makes each join after the second wait about 5 s).
   * "static": all members start at once with the full initial cluster (etcd's static bootstrap).
   */
  formation?: "join" | "static";
  readyTimeoutMs?: number;
}

export class LabCluster {
  private constructor(
    readonly dir: string,
    readonly members: Map<string, LabMember>,
  ) {}

  static async start(o: LabClusterOptions): Promise<LabCluster> {
    const ports = o.addresses ? [] : await freePorts(o.names.length * 2);
    const opts: LocalMemberOptions[] = o.names.map((name, i) => ({
      name,
      address: o.addresses?.[name] ?? "127.0.0.1",
      clientPort: o.addresses ? 2379 : ports[2 * i]!,
      peerPort: o.addresses ? 2380 : ports[2 * i + 1]!,
      dir: join(o.dir, name),
      ...(o.launchers?.[name] ? { launcher: o.launchers[name] } : {}),
      ...(o.readyTimeoutMs ? { readyTimeoutMs: o.readyTimeoutMs } : {}),
    }));
    const members = new Map<string, LabMember>();
    const lab = new LabCluster(o.dir, members);
    try {
      if ((o.formation ?? "static") === "static") {
        const token = `vmhost-lab-${randomBytes(6).toString("hex")}`;
        for (const mo of opts) {
          const member = await EtcdMember.start({
            name: mo.name,
            dir: mo.dir,
            clientUrl: clientUrlOf(mo),
            peerUrl: peerUrlOf(mo),
            initialCluster: opts.map((x) => ({ name: x.name, peerUrl: peerUrlOf(x) })),
            initialClusterState: "new",
            clusterToken: token,
            launcher: mo.launcher ?? [],
          });
          members.set(mo.name, { name: mo.name, options: mo, clientUrl: clientUrlOf(mo), member });
        }
        await Promise.all([...members.values()].map((m) => m.member.waitReady({ timeoutMs: o.readyTimeoutMs ?? 30_000 })));
      } else {
        const [first, ...rest] = opts;
        const created = await createCluster(first!);
        members.set(first!.name, { name: first!.name, options: first!, clientUrl: clientUrlOf(first!), member: created.member });
        for (const mo of rest) {
          const joined = await joinCluster({ ...mo, via: [...members.values()].map((m) => m.clientUrl) });
          members.set(mo.name, { name: mo.name, options: mo, clientUrl: clientUrlOf(mo), member: joined.member });
        }
      }
      return lab;
    } catch (err) {
      await lab.stop();
      throw err;
    }
  }

  get(name: string): LabMember {
    const m = this.members.get(name);
    if (!m) throw new EtcdMemberError(`no lab member '${name}'`);
    return m;
  }

  /** Client URLs, in member order (or of the named members). */
  endpoints(names?: string[]): string[] {
    return (names ?? [...this.members.keys()]).map((n) => this.get(n).clientUrl);
  }

  /** SIGKILL one member. */
  async kill(name: string): Promise<void> {
    await this.get(name).member.kill();
  }

  /** Starts a killed member again from its data (same flags). */
  async restart(name: string): Promise<EtcdMember> {
    const m = this.get(name);
    m.member = await EtcdMember.restart(m.options.dir);
    return m.member;
  }

  /** Kills every member (tests delete `dir` themselves). */
  async stop(): Promise<void> {
    await Promise.all([...this.members.values()].map((m) => m.member.kill().catch(() => undefined)));
  }
}
