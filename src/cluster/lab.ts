import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
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

/** CLOCK_MONOTONIC in ms: the clock lab hosts stamp their events with (comparable across processes). */
export function monoNow(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

/** One line a lab host printed: `event`, `mono` (ms, see {@link monoNow}) and the event's fields. */
export interface LabEvent {
  event: string;
  mono: number;
  [field: string]: unknown;
}

export interface LabHostOptions {
  host: string;
  endpoints: string[];
  ttlSeconds?: number;
  fencingMarginMs?: number;
  campaign?: boolean;
  electionTtlSeconds?: number;
  requestTimeoutMs?: number;
  freeMemoryMiB?: number;
  switches?: string[];
  storage?: string[];
  /** Ids of clustered VMs this host starts with a local running copy of. */
  running?: string[];
  /** Resume this lease (hex) if it is still alive, as vmhostd does after a restart. */
  resumeLeaseId?: string;
  /** Argv prefix (e.g. nsenter into the host's network namespace). */
  launcher?: string[];
}

/**
 * A lab host process (lab-host.ts) and the events it printed. Waits are for conditions with a
 * deadline, never for a guessed time.
 */
export class LabHostProcess {
  readonly events: LabEvent[] = [];
  private readonly waiters: { match: (e: LabEvent) => boolean; resolve: (e: LabEvent) => void }[] = [];
  private exited: Promise<void>;
  private stderr = "";

  private constructor(
    readonly host: string,
    private readonly child: ChildProcessWithoutNullStreams,
  ) {
    let buf = "";
    child.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let e: LabEvent;
        try {
          e = JSON.parse(line) as LabEvent;
        } catch {
          continue;
        }
        this.events.push(e);
        for (const w of [...this.waiters]) {
          if (w.match(e)) {
            this.waiters.splice(this.waiters.indexOf(w), 1);
            w.resolve(e);
          }
        }
      }
    });
    child.stderr.on("data", (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.exited = new Promise((r) => child.once("exit", () => r()));
  }

  static spawn(o: LabHostOptions): LabHostProcess {
    const script = new URL("./lab-host.js", import.meta.url).pathname;
    const args = [script, "--host", o.host, "--endpoints", o.endpoints.join(","), "--ttl", String(o.ttlSeconds ?? 10)];
    if (o.fencingMarginMs !== undefined) args.push("--margin-ms", String(o.fencingMarginMs));
    if (o.campaign) args.push("--campaign");
    if (o.electionTtlSeconds !== undefined) args.push("--election-ttl", String(o.electionTtlSeconds));
    if (o.requestTimeoutMs !== undefined) args.push("--request-timeout-ms", String(o.requestTimeoutMs));
    if (o.freeMemoryMiB !== undefined) args.push("--free-memory", String(o.freeMemoryMiB));
    if (o.switches?.length) args.push("--switches", o.switches.join(","));
    if (o.storage?.length) args.push("--storage", o.storage.join(","));
    if (o.running?.length) args.push("--running", o.running.join(","));
    if (o.resumeLeaseId) args.push("--resume-lease", o.resumeLeaseId);
    const [cmd, ...pre] = o.launcher?.length ? [...o.launcher, process.execPath] : [process.execPath];
    const child = spawn(cmd!, [...pre, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    return new LabHostProcess(o.host, child);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The first event (already printed or still to come) that matches, or a rejection after `timeoutMs`. */
  waitFor(match: string | ((e: LabEvent) => boolean), timeoutMs: number): Promise<LabEvent> {
    const m = typeof match === "string" ? (e: LabEvent) => e.event === match : match;
    const seen = this.events.find(m);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = {
        match: m,
        resolve: (e: LabEvent) => {
          clearTimeout(t);
          resolve(e);
        },
      };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`lab host ${this.host}: no ${typeof match === "string" ? `'${match}'` : "matching"} event within ${timeoutMs} ms; events: ${JSON.stringify(this.events.map((e) => e.event))}; stderr: ${this.stderr}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** Events named `name` so far. */
  all(name: string): LabEvent[] {
    return this.events.filter((e) => e.event === name);
  }

  send(cmd: Record<string, unknown>): void {
    this.child.stdin.write(`${JSON.stringify(cmd)}\n`);
  }

  /** SIGKILL (host death) and wait until the process is gone. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }
}
