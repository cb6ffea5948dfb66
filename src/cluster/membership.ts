import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import { castGrpcError, EtcdLeaseInvalidError, type Etcd3, type IKeyValue } from "etcd3";
import { z } from "zod";
import { memberClient, type ClusterConnection } from "./connection.js";
import { ClusterConfigError } from "./errors.js";
import { memberKey, MEMBERS, ROOT, validateHostName } from "./keys.js";
import type { PlacementCandidate } from "./placement.js";
import { RESTART_STATES } from "./failover.js";
import { VmRegistry } from "./registry.js";
import { SelfFence, type FenceAction, type RecoveredAction, type SelfFenceAction, type SelfFenceState } from "./selffence.js";

/**
 * What a host publishes at /vmhost/members/<host> (bound to its lease, so the key exists exactly
 * while the lease is alive).
 * - `host`: cluster name; `address`: where other hosts reach it (etcd peer and migration traffic);
 * - `apiUrl`: its vmhostd API for host-to-host calls;
 * - `freeMemoryMiB` / `totalMemoryMiB`: memory for VMs, as the host measures it (MiB);
 * - `switches` / `storage`: names of the virtual switches it has and the storage it sees;
 * - `drained`: takes no new VMs (Suspend-ClusterNode -Drain); `version`: vmhost's version;
 * - `labels`: free-form facts for people and later rules.
 */
export const memberInfoSchema = z.object({
  host: z.string().transform((h) => validateHostName(h)),
  address: z.string().min(1),
  apiUrl: z.string().min(1),
  freeMemoryMiB: z.number().int().nonnegative(),
  totalMemoryMiB: z.number().int().nonnegative().optional(),
  switches: z.array(z.string().min(1)).default([]),
  storage: z.array(z.string().min(1)).default([]),
  drained: z.boolean().default(false),
  version: z.string().optional(),
  labels: z.record(z.string()).optional(),
});
export type MemberInfo = z.output<typeof memberInfoSchema>;
export type MemberInfoInput = z.input<typeof memberInfoSchema>;

/** A member key as read: the info plus the lease it is bound to (hex) and the key's mod_revision. */
export type MemberView = MemberInfo & { leaseId: string; revision: string };

export interface MembershipOptions {
  /** Lease TTL in seconds (default 10). The same on every host. */
  ttlSeconds?: number;
  /** Time between renewals in ms (default TTL/3, as etcd's Go client does). */
  renewIntervalMs?: number;
  /** Time before retrying a failed renewal in ms (default 250); retries go to the next endpoint. */
  retryIntervalMs?: number;
  /**
   * Called once each time this host must fence (selffence.ts): the service turns this host's
   * clustered VMs off (or pauses them) and must be done within the cluster's fencing margin.
   * A rejection is reported as a 'fence-failed' event; escalate then (kill the QEMUs).
   */
  onFence: (action: FenceAction) => void | Promise<void>;
  /** A lease this host held before (hex id, e.g. from before a vmhostd restart): kept if still alive. */
  resumeLeaseId?: string;
  /** Monotonic clock in ms (default performance.now); injectable for tests. */
  now?: () => number;
}

/**
 * This host's membership: a lease with TTL `ttlSeconds`, the member key bound to it, renewals
 * every TTL/3 (retried quickly on failure, each retry through another endpoint), and
 * self-fencing (selffence.ts) when no renewal has been acknowledged for a TTL or etcd says the
 * lease is gone. After a lost lease the host registers again with a new one by itself.
 *
 * Events: 'renewed' (lastRenewalAt), 'fenced' (FenceAction), 'fence-failed' (Error),
 * 'recovered' (RecoveredAction), 'renewal-failed' (Error; informational, retried).
 */
export class HostMembership extends EventEmitter {
  private readonly fence: SelfFence;
  private readonly now: () => number;
  private readonly ttlSeconds: number;
  private readonly renewIntervalMs: number;
  private readonly retryIntervalMs: number;
  private renewTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private fencing: Promise<void> = Promise.resolve();
  /** One client per endpoint for renewals, used in turn: see {@link renew}. */
  private readonly renewClients: Etcd3[];
  private renewVia = 0;

  private constructor(
    private readonly conn: ClusterConnection,
    private _info: MemberInfo,
    private _leaseId: string,
    grantSentAt: number,
    private readonly opts: MembershipOptions,
  ) {
    super();
    this.now = opts.now ?? (() => performance.now());
    this.ttlSeconds = opts.ttlSeconds ?? 10;
    this.renewIntervalMs = opts.renewIntervalMs ?? (this.ttlSeconds * 1000) / 3;
    this.retryIntervalMs = opts.retryIntervalMs ?? 250;
    this.fence = new SelfFence(this.ttlSeconds * 1000, grantSentAt);
    this.renewClients = conn.endpoints.map((e) => memberClient(e, conn.requestTimeoutMs));
  }

  /**
   * Grants (or resumes) the lease and puts the member key. Throws QuorumLostError /
   * ClusterUnreachableError when etcd cannot take it; the host is then not a member.
   */
  static async join(conn: ClusterConnection, input: MemberInfoInput, opts: MembershipOptions): Promise<HostMembership> {
    const info = memberInfoSchema.parse(input);
    const now = opts.now ?? (() => performance.now());
    const ttl = opts.ttlSeconds ?? 10;
    if (!Number.isInteger(ttl) || ttl < 2) throw new ClusterConfigError("cluster-lease-ttl", `the lease TTL must be a whole number of seconds >= 2, got ${ttl}`);
    let leaseId: string | undefined;
    let sentAt = now();
    if (opts.resumeLeaseId) {
      const id = BigInt(`0x${opts.resumeLeaseId}`).toString();
      const ttlLeft = await keepaliveOnce(conn.etcd, id, conn.requestTimeoutMs).catch(() => "0");
      if (ttlLeft !== "0") leaseId = id;
    }
    if (!leaseId) {
      sentAt = now();
      leaseId = (await conn.guard("join the cluster (grant the membership lease)", () => conn.ns.leaseClient.leaseGrant({ TTL: ttl }))).ID;
    }
    const m = new HostMembership(conn, info, leaseId, sentAt, opts);
    await m.putKey("join the cluster (publish this host)");
    m.armDeadline();
    m.scheduleRenew(Math.max(0, sentAt + m.renewIntervalMs - now()));
    return m;
  }

  get host(): string {
    return this._info.host;
  }

  get info(): MemberInfo {
    return this._info;
  }

  /** The lease id (hex, as etcdctl prints it): keep it to resume after a service restart. */
  get leaseId(): string {
    return BigInt(this._leaseId).toString(16);
  }

  get state(): SelfFenceState {
    return this.fence.state;
  }

  /** Send time (monotonic ms) of the newest acknowledged renewal. */
  get lastRenewalAt(): number {
    return this.fence.lastRenewalAt;
  }

  /** Publishes changed facts (free memory, drained, switches ...) under the same lease. */
  async update(patch: Partial<MemberInfoInput>): Promise<MemberInfo> {
    const next = memberInfoSchema.parse({ ...this._info, ...patch, host: this._info.host });
    const prev = this._info;
    this._info = next;
    try {
      await this.putKey(`update this host's membership`);
    } catch (err) {
      this._info = prev;
      throw err;
    }
    return next;
  }

  /**
   * Leaves gracefully: revokes the lease, so the key is deleted at once. The others treat the
   * key's deletion like a death, so a host that still owns running clustered VMs is refused
   * (move them away or turn them off first) unless `force`.
   */
  async leave(opts: { force?: boolean } = {}): Promise<void> {
    if (!opts.force) {
      const owned = (await new VmRegistry(this.conn).list()).filter((e) => e.owner === this.host && RESTART_STATES.has(e.state));
      if (owned.length) {
        throw new ClusterConfigError(
          "cluster-leave-owns-vms",
          `${this.host} still owns running clustered VMs (${owned.map((e) => e.name).join(", ")}); move them to other hosts or turn them off before leaving`,
        );
      }
    }
    this.close();
    await this.conn.guard("leave the cluster (revoke the membership lease)", () => this.conn.ns.leaseClient.leaseRevoke({ ID: this._leaseId }));
  }

  /** Stops renewing without revoking (the lease then runs out); timers are cleared. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.renewTimer);
    clearTimeout(this.deadlineTimer);
    for (const c of this.renewClients) c.close();
  }

  /** Resolves when the fence callbacks started so far have finished. */
  settled(): Promise<void> {
    return this.fencing;
  }

  private async putKey(what: string): Promise<void> {
    await this.conn.guard(what, () => this.conn.ns.put(memberKey(this._info.host)).value(JSON.stringify(this._info)).lease(this._leaseId).exec());
  }

  private scheduleRenew(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => void this.renew(), delayMs);
  }

  /**
   * One renewal. Each endpoint has its own client and the last one that worked is used until it
   * fails; then the next one is tried after `retryIntervalMs`. (etcd3's pool picks a random
   * endpoint per call, and a keepalive stream to a dead member took 1-3 s to fail here, so a
   * random pick could miss several renewals in a row and fence a healthy host.) An attempt gets
   * half a renewal interval (at least 500 ms, at most the request timeout), so one unreachable
   * member cannot use up the TTL: within one TTL every endpoint is tried.
   */
  private async renew(): Promise<void> {
    if (this.stopped) return;
    if (this.fence.leaseLost) return this.register();
    const sentAt = this.now();
    const attemptMs = Math.max(500, Math.min(this.conn.requestTimeoutMs, this.renewIntervalMs / 2));
    const via = this.renewClients[this.renewVia % this.renewClients.length]!;
    try {
      const ttl = await keepaliveOnce(via, this._leaseId, attemptMs);
      if (this.stopped) return;
      if (ttl === "0") throw new EtcdLeaseInvalidError(this._leaseId);
      const actions = this.fence.renewed(sentAt, this.now());
      this.apply(actions);
      if (actions.some((a) => a.type === "recovered")) await this.putKey("refresh this host's membership").catch(() => undefined);
      this.emit("renewed", this.fence.lastRenewalAt);
      this.scheduleRenew(Math.max(0, sentAt + this.renewIntervalMs - this.now()));
    } catch (err) {
      if (this.stopped) return;
      if (err instanceof EtcdLeaseInvalidError) {
        this.apply(this.fence.leaseExpired(this.now()));
        return this.register();
      }
      this.renewVia++;
      this.emit("renewal-failed", err);
      this.scheduleRenew(this.retryIntervalMs);
    }
  }

  /** After the lease expired: a new lease and the key again, retried until it works. */
  private async register(): Promise<void> {
    if (this.stopped) return;
    const sentAt = this.now();
    try {
      const res = await this.conn.ns.leaseClient.leaseGrant({ TTL: this.ttlSeconds });
      this._leaseId = res.ID;
      await this.putKey("register again");
      if (this.stopped) return;
      this.apply(this.fence.regranted(sentAt, this.now()));
      this.scheduleRenew(Math.max(0, sentAt + this.renewIntervalMs - this.now()));
    } catch (err) {
      this.emit("renewal-failed", err);
      this.scheduleRenew(this.retryIntervalMs);
    }
  }

  private apply(actions: SelfFenceAction[]): void {
    for (const a of actions) {
      if (a.type === "fence") this.runFence(a);
      else this.emit("recovered", a satisfies RecoveredAction);
    }
    this.armDeadline();
  }

  private runFence(a: FenceAction): void {
    this.emit("fenced", a);
    this.fencing = this.fencing.then(async () => {
      try {
        await this.opts.onFence(a);
      } catch (err) {
        this.emit("fence-failed", err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  private armDeadline(): void {
    clearTimeout(this.deadlineTimer);
    if (this.stopped) return;
    const d = this.fence.nextDeadline();
    if (d === undefined) return;
    this.deadlineTimer = setTimeout(() => this.apply(this.fence.tick(this.now())), Math.max(0, Math.ceil(d - this.now())));
  }
}

/**
 * One LeaseKeepAlive round trip (its own stream, `timeoutMs` deadline). Resolves with the TTL
 * etcd granted ("0" = the lease no longer exists); rejects on transport failure.
 */
export async function keepaliveOnce(client: Etcd3, leaseId: string, timeoutMs: number): Promise<string> {
  const stream = await client.leaseClient.leaseKeepAlive({ deadline: Date.now() + timeoutMs });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<string>((resolve, reject) => {
      // grpc's deadline did not always end a stream to a dead member in time here: end it ourselves.
      timer = setTimeout(() => reject(new Error(`no keepalive answer within ${timeoutMs} ms`)), timeoutMs);
      stream.on("data", (r) => resolve(r.TTL));
      stream.on("error", (e) => reject(castGrpcError(e)));
      stream.on("end", () => reject(new Error("the keepalive stream ended without an answer")));
      stream.write({ ID: leaseId });
    });
  } finally {
    clearTimeout(timer);
    stream.on("error", () => undefined); // the cancel below surfaces as a late 'error'
    stream.cancel();
  }
}

/** The hosts whose member key exists (their lease is alive), by name. */
export async function listMembers(conn: ClusterConnection, opts: { serializable?: boolean } = {}): Promise<MemberView[]> {
  const res = await conn.guard("read the cluster's members", () => conn.ns.getAll().prefix(MEMBERS).serializable(opts.serializable ?? false).exec());
  return res.kvs.map(decodeMember).sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0));
}

export function decodeMember(kv: IKeyValue): MemberView {
  const key = ROOT + kv.key.toString(); // read through the namespace: relative to /vmhost/
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value.toString());
  } catch {
    throw new ClusterConfigError("cluster-member-record", `${key} holds no JSON`);
  }
  const r = memberInfoSchema.safeParse(raw);
  if (!r.success) throw new ClusterConfigError("cluster-member-record", `${key} is damaged: ${r.error.message}`);
  return { ...r.data, leaseId: BigInt(kv.lease).toString(16), revision: kv.mod_revision };
}

/** The host name a member key belongs to (keys as the /vmhost/ namespace gives them: "members/<host>"). */
export function hostOfMemberKey(key: string): string {
  return key.slice(MEMBERS.length);
}

/** Members as placement sees them (alive: their key exists). */
export function toCandidates(members: readonly MemberView[]): PlacementCandidate[] {
  return members.map((m) => ({ host: m.host, alive: true, drained: m.drained, freeMemoryMiB: m.freeMemoryMiB, switches: m.switches, storage: m.storage }));
}
