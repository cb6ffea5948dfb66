import { spawn } from "node:child_process";
import { mkdir, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic.js";
import { isSameProcessAlive, processStartTime } from "../supervisor/proc.js";
import { memberStatus, type MemberStatus } from "./connection.js";
import { EtcdMemberError } from "./errors.js";
import { validateHostName } from "./keys.js";

/** Debian 12's etcd (package etcd-server 3.4.23). */
export const ETCD_BINARY = "/usr/bin/etcd";

const urlSchema = z
  .string()
  .url()
  .refine((u) => /^http:\/\/[^/]+:\d+$/.test(u), "expected http://ADDRESS:PORT");

/**
 * Everything needed to run one etcd member (one per host). Stored as `member.json` in `dir`, so
 * the member can be restarted or adopted after vmhostd restarts.
 *
 * - `name`: the host's cluster name (also the etcd member name).
 * - `dir`: the member's own directory: `data/` (etcd's --data-dir, mode 0700), `etcd.log`, `member.json`.
 * - `clientUrl` / `peerUrl`: http://ADDRESS:PORT this member listens on and advertises (clients, raft peers).
 * - `initialCluster`: the members etcd should expect on first start (create: just this one;
 *   join: all current members plus this one, as returned by MemberAdd). Ignored by etcd once
 *   `data/` holds a WAL, so restarts use the same spec.
 * - `initialClusterState`: "new" for create, "existing" for join.
 * - `clusterToken`: --initial-cluster-token; keeps two clusters made on one network apart.
 * - `heartbeatMs` / `electionTimeoutMs`: etcd's raft timing (defaults 100 / 1000, etcd's own).
 * - `launcher`: an argv prefix to run etcd under (tests: ["nsenter", "--net=/run/netns/X"]).
 */
export const memberSpecSchema = z.object({
  name: z.string().transform((n) => validateHostName(n)),
  dir: z.string().min(1),
  clientUrl: urlSchema,
  peerUrl: urlSchema,
  initialCluster: z.array(z.object({ name: z.string().min(1), peerUrl: urlSchema })).min(1),
  initialClusterState: z.enum(["new", "existing"]),
  clusterToken: z.string().min(1),
  heartbeatMs: z.number().int().positive().default(100),
  electionTimeoutMs: z.number().int().positive().default(1000),
  launcher: z.array(z.string()).default([]),
  etcdBinary: z.string().default(ETCD_BINARY),
});
export type EtcdMemberSpec = z.input<typeof memberSpecSchema>;
type Spec = z.output<typeof memberSpecSchema>;

interface MemberState {
  spec: Spec;
  pid: number;
  startTime: number;
}

/**
 * etcd's command line for a spec (etcd 3.4 flags, `etcd --help`). Listen and advertise URLs are
 * the same: a member is reached where it listens. v2 is off; the log is zap's JSON on stderr;
 * the revision history is compacted hourly so the registry's history does not grow forever.
 */
export function etcdArgv(input: EtcdMemberSpec): string[] {
  const s = memberSpecSchema.parse(input);
  return [
    "--name", s.name,
    "--data-dir", join(s.dir, "data"),
    "--listen-client-urls", s.clientUrl,
    "--advertise-client-urls", s.clientUrl,
    "--listen-peer-urls", s.peerUrl,
    "--initial-advertise-peer-urls", s.peerUrl,
    "--initial-cluster", s.initialCluster.map((m) => `${m.name}=${m.peerUrl}`).join(","),
    "--initial-cluster-state", s.initialClusterState,
    "--initial-cluster-token", s.clusterToken,
    "--heartbeat-interval", String(s.heartbeatMs),
    "--election-timeout", String(s.electionTimeoutMs),
    "--enable-v2=false",
    "--auto-compaction-mode", "periodic",
    "--auto-compaction-retention", "1h",
    "--logger", "zap",
    "--log-outputs", "stderr",
  ];
}

/**
 * One etcd member process, started detached (it outlives vmhostd, as QEMU does, so restarting
 * the service does not shake the cluster) and identified by pid + start time so a reused pid is
 * never mistaken for it.
 */
export class EtcdMember {
  private constructor(
    readonly spec: Spec,
    readonly pid: number,
    private readonly startTime: number,
  ) {}

  get logPath(): string {
    return join(this.spec.dir, "etcd.log");
  }

  /**
   * Starts etcd for `spec` (argv array, clean environment: no ETCD_* variables leak in) and
   * records it in `dir/member.json`. Returns once the process exists; call {@link waitReady}.
   * Throws {@link EtcdMemberError} when the binary cannot be started.
   */
  static async start(input: EtcdMemberSpec): Promise<EtcdMember> {
    const spec = memberSpecSchema.parse(input);
    await mkdir(join(spec.dir, "data"), { recursive: true, mode: 0o700 });
    const log = await open(join(spec.dir, "etcd.log"), "a", 0o600);
    let pid: number | undefined;
    try {
      const [cmd, ...pre] = spec.launcher.length ? spec.launcher : [spec.etcdBinary];
      const args = spec.launcher.length ? [...pre, spec.etcdBinary, ...etcdArgv(spec)] : etcdArgv(spec);
      const child = spawn(cmd!, args, {
        detached: true,
        stdio: ["ignore", log.fd, log.fd],
        env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
      });
      pid = await new Promise<number>((resolve, reject) => {
        child.once("spawn", () => resolve(child.pid!));
        child.once("error", (e) => reject(new EtcdMemberError(`cannot start ${spec.etcdBinary}: ${e.message}; install Debian's etcd-server (./setup does)`)));
      });
      child.unref();
    } finally {
      await log.close();
    }
    const startTime = await processStartTime(pid);
    if (startTime === undefined) {
      const m = new EtcdMember(spec, pid, 0);
      throw new EtcdMemberError(`etcd member '${spec.name}' exited at once`, await m.logTail());
    }
    await writeFileAtomic(join(spec.dir, "member.json"), JSON.stringify({ spec, pid, startTime } satisfies MemberState, null, 2), 0o600);
    return new EtcdMember(spec, pid, startTime);
  }

  /** The spec stored in `dir`, or undefined when no member was ever started there. */
  static async readSpec(dir: string): Promise<EtcdMemberSpec | undefined> {
    const state = await readState(dir);
    return state?.spec;
  }

  /** The member recorded in `dir` when that very process still runs (after a vmhostd restart). */
  static async adopt(dir: string): Promise<EtcdMember | undefined> {
    const state = await readState(dir);
    if (!state || !(await isSameProcessAlive(state.pid, state.startTime))) return undefined;
    return new EtcdMember(memberSpecSchema.parse(state.spec), state.pid, state.startTime);
  }

  /** Starts the member recorded in `dir` again (same flags; etcd reuses its data). */
  static async restart(dir: string): Promise<EtcdMember> {
    const spec = await EtcdMember.readSpec(dir);
    if (!spec) throw new EtcdMemberError(`no etcd member was ever started in ${dir}`);
    return EtcdMember.start(spec);
  }

  isAlive(): Promise<boolean> {
    return isSameProcessAlive(this.pid, this.startTime);
  }

  status(timeoutMs = 1000): Promise<MemberStatus> {
    return memberStatus(this.spec.clientUrl, timeoutMs);
  }

  /**
   * Resolves when the member answers a Status call on its client URL and, with
   * `requireLeader` (the default), knows a raft leader: it is then part of a working cluster.
   * Polls (every 100 ms) rather than sleeping a guess. Throws {@link EtcdMemberError} with the
   * log's last lines when the process exits or `timeoutMs` (default 30 s) passes.
   */
  async waitReady(opts: { timeoutMs?: number; requireLeader?: boolean } = {}): Promise<MemberStatus> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    const requireLeader = opts.requireLeader ?? true;
    let last: MemberStatus | undefined;
    while (Date.now() < deadline) {
      if (!(await this.isAlive())) throw new EtcdMemberError(`etcd member '${this.spec.name}' exited while starting`, await this.logTail());
      last = await this.status(Math.min(1000, Math.max(1, deadline - Date.now())));
      if (last.reachable && (!requireLeader || last.leader !== undefined)) return last;
      await sleep(100);
    }
    throw new EtcdMemberError(
      `etcd member '${this.spec.name}' at ${this.spec.clientUrl} was not ready within ${opts.timeoutMs ?? 30_000} ms` +
        (last?.reachable ? " (it answers but knows no leader: are enough of the other members up?)" : ` (${last?.error ?? "no answer"})`),
      await this.logTail(),
    );
  }

  /** SIGTERM, then SIGKILL after `timeoutMs` (default 10 s); resolves when the process is gone. */
  async stop(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (!(await this.isAlive())) return;
    signal(this.pid, "SIGTERM");
    if (await this.waitGone(opts.timeoutMs ?? 10_000)) return;
    signal(this.pid, "SIGKILL");
    await this.waitGone(5_000);
  }

  /** SIGKILL at once (what a host crash looks like to the others); resolves when it is gone. */
  async kill(): Promise<void> {
    signal(this.pid, "SIGKILL");
    await this.waitGone(5_000);
  }

  async logTail(lines = 20): Promise<string> {
    const text = await readFile(this.logPath, "utf8").catch(() => "");
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  }

  private async waitGone(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!(await this.isAlive())) return true;
      await sleep(25);
    }
    return !(await this.isAlive());
  }
}

async function readState(dir: string): Promise<MemberState | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, "member.json"), "utf8");
  } catch {
    return undefined;
  }
  try {
    const raw = JSON.parse(text) as { spec: unknown; pid: unknown; startTime: unknown };
    return { spec: memberSpecSchema.parse(raw.spec), pid: z.number().int().parse(raw.pid), startTime: z.number().parse(raw.startTime) };
  } catch (err) {
    throw new EtcdMemberError(`${join(dir, "member.json")} is damaged (${err instanceof Error ? err.message : String(err)}); remove the member's directory and join again`);
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
