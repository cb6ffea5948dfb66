import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import type { Campaign, Watcher } from "etcd3";
import type { ClusterConnection } from "./connection.js";
import { FailoverTracker, planFailover, type FailoverDue, type FailoverMove } from "./failover.js";
import { COORDINATOR_ELECTION, memberKey, MEMBERS, ROOT, validateHostName, vmKey } from "./keys.js";
import { hostOfMemberKey, listMembers, toCandidates } from "./membership.js";
import type { Rejection } from "./placement.js";
import { VmRegistry, type VmRecord } from "./registry.js";

export interface CoordinatorOptions {
  /** This host's cluster name (the value it campaigns with). */
  host: string;
  /** TTL of the campaign's lease in seconds (default 10): a dead coordinator is replaced after it. */
  electionTtlSeconds?: number;
  /**
   * How long after seeing a host's member key gone its VMs may start elsewhere, in ms (default
   * 5000). Must exceed the time the fence callback needs plus timer lateness (failover.ts).
   */
  fencingMarginMs?: number;
  /** Wait before re-examining a host whose VMs could not all be moved, in ms (default 2000). */
  retryMs?: number;
  /**
   * Interval of a full re-read of members and registry in ms (default 2000), besides the watch:
   * a watch stuck on an unreachable member is only noticed after the keepalive timeout, and
   * a missed deletion must not delay failover for long (a re-read counts absence from now).
   */
  pollMs?: number;
  /** Monotonic clock in ms (default performance.now). */
  now?: () => number;
}

export interface UnplaceableEvent {
  host: string;
  id: string;
  rejected: Rejection[];
}

/**
 * The coordinator: every host runs one; an etcd election (etcd3's election, the same algorithm
 * as etcd's Go concurrency package) makes exactly one of them active. The active coordinator
 * watches the member keys, feeds a {@link FailoverTracker}, and when a dead host's fencing
 * margin has passed, moves its clustered VMs to live hosts (placement.ts) by changing their
 * owner in the registry. It does not start VMs: the new owner's service sees the change
 * (registry watch) and starts them (failover.ts planRejoin rules).
 *
 * Every move is one etcd transaction that also checks that (1) the dead host's key is still
 * absent, (2) the VM's revision is the one planned from, and (3) this coordinator's campaign key
 * still exists. (3) is the fencing token of the coordinator role: a coordinator that lost its
 * campaign lease (paused, partitioned) cannot move anything even before it notices.
 *
 * Events: 'elected', 'deposed' (Error), 'fence-wait' (FailoverDue), 'failover' (FailoverMove),
 * 'unplaceable' (UnplaceableEvent), 'error' (Error: a failed pass; it is retried).
 */
export class Coordinator extends EventEmitter {
  private readonly tracker: FailoverTracker;
  private readonly registry: VmRegistry;
  private readonly now: () => number;
  private campaign: Campaign | undefined;
  private campaignKey: string | undefined;
  private watcher: Watcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private poll: NodeJS.Timeout | undefined;
  private active = false;
  private stopped = false;
  private running: Promise<void> = Promise.resolve();
  private readonly reported = new Set<string>();

  private constructor(
    private readonly conn: ClusterConnection,
    private readonly opts: CoordinatorOptions,
  ) {
    super();
    validateHostName(opts.host);
    this.tracker = new FailoverTracker(opts.fencingMarginMs ?? 5000);
    this.registry = new VmRegistry(conn);
    this.now = opts.now ?? (() => performance.now());
  }

  /** Starts campaigning at once; 'elected' tells when this host became the coordinator. */
  static start(conn: ClusterConnection, opts: CoordinatorOptions): Coordinator {
    const c = new Coordinator(conn, opts);
    c.campaignNow();
    return c;
  }

  get isCoordinator(): boolean {
    return this.active;
  }

  /** Hosts seen gone whose VMs are not all moved yet, with when they may be. */
  pendingFailovers(): FailoverDue[] {
    return this.tracker.pending();
  }

  /** Resigns (another host takes over at once) and stops. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.standDown();
    await this.campaign?.resign().catch(() => undefined);
  }

  private campaignNow(): void {
    if (this.stopped) return;
    const campaign = this.conn.ns.election(COORDINATOR_ELECTION, this.opts.electionTtlSeconds ?? 10).campaign(this.opts.host);
    this.campaign = campaign;
    campaign.on("elected", () => void this.takeOver(campaign));
    campaign.on("error", (err) => {
      if (this.campaign !== campaign) return;
      void this.standDown().then(() => {
        this.emit("deposed", err);
        // Campaign again: a new lease, a new key at the end of the line.
        setTimeout(() => this.campaignNow(), 1000);
      });
    });
  }

  private async takeOver(campaign: Campaign): Promise<void> {
    if (this.stopped || this.campaign !== campaign) return;
    try {
      this.campaignKey = await campaign.getCampaignKey();
      this.active = true;
      const w = await this.conn.ns.watch().prefix(MEMBERS).create();
      this.watcher = w;
      w.on("connected", () => this.kick(() => this.sync(true)));
      w.on("put", (kv) => {
        this.tracker.present(hostOfMemberKey(kv.key.toString()));
        this.kick(() => this.pass()); // more capacity may let unplaced VMs move
      });
      w.on("delete", (kv) => {
        this.tracker.absent(hostOfMemberKey(kv.key.toString()), this.now());
        this.kick(() => this.pass());
      });
      w.on("error", (err) => this.emit("error", err));
      await this.sync(false);
      this.poll = setInterval(() => this.kick(() => this.sync(false)), this.opts.pollMs ?? 2000);
      this.emit("elected");
    } catch (err) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
      await this.standDown();
      // Still elected (the campaign did not fail): take over again once etcd answers.
      setTimeout(() => void this.takeOver(campaign), this.opts.retryMs ?? 2000);
    }
  }

  private async standDown(): Promise<void> {
    this.active = false;
    clearTimeout(this.timer);
    clearInterval(this.poll);
    const w = this.watcher;
    this.watcher = undefined;
    await w?.cancel().catch(() => undefined);
  }

  /** Serialises passes (one at a time). */
  private kick(fn: () => Promise<void>): void {
    this.running = this.running.then(async () => {
      if (!this.active || this.stopped) return;
      try {
        await fn();
      } catch (err) {
        this.emit("error", err instanceof Error ? err : new Error(String(err)));
        this.arm(this.now() + (this.opts.retryMs ?? 2000));
      }
    });
  }

  /**
   * Compares the tracker with etcd: hosts that own VMs (or were seen) but have no key are gone
   * as of now. `restart`: after a (re)connected watch, events may have been missed, so every
   * absent host's margin starts again (late, never early).
   */
  private async sync(restart: boolean): Promise<void> {
    const [members, entries] = await Promise.all([listMembers(this.conn), this.registry.list()]);
    const alive = new Set(members.map((m) => m.host));
    const owners = new Set(entries.map((e) => e.owner));
    const now = this.now();
    for (const h of alive) this.tracker.present(h);
    for (const h of owners) if (!alive.has(h)) this.tracker.absent(h, now, { restart });
    for (const d of this.tracker.pending()) if (!alive.has(d.host) && !owners.has(d.host)) this.tracker.resolved(d.host);
    await this.pass();
  }

  /** Moves the VMs of every host whose margin has passed; arms the timer for the next one. */
  private async pass(): Promise<void> {
    const now = this.now();
    for (const d of this.tracker.pending()) {
      if (d.dueAt > now && !this.reported.has(`${d.host}@${d.goneSince}`)) {
        this.reported.add(`${d.host}@${d.goneSince}`);
        this.emit("fence-wait", d);
      }
    }
    let retry = false;
    for (const d of this.tracker.due(now)) {
      if (!(await this.failOver(d.host))) retry = true;
    }
    const next = this.tracker.nextDeadline(this.now());
    this.arm(retry ? Math.min(next ?? Infinity, this.now() + (this.opts.retryMs ?? 2000)) : next);
  }

  private arm(at: number | undefined): void {
    clearTimeout(this.timer);
    if (at === undefined || !this.active) return;
    this.timer = setTimeout(() => this.kick(() => this.pass()), Math.max(0, Math.ceil(at - this.now())));
  }

  /** Moves `host`'s VMs; true when nothing is left to move. */
  private async failOver(host: string): Promise<boolean> {
    const [members, entries] = await Promise.all([listMembers(this.conn), this.registry.list()]);
    if (members.some((m) => m.host === host)) {
      this.tracker.present(host);
      return true;
    }
    const plan = planFailover(host, entries, toCandidates(members));
    let done = plan.unplaced.length === 0;
    for (const move of plan.moves) {
      const entry = entries.find((e) => e.id === move.id)!;
      const { revision: _r, createRevision: _c, ...record } = entry;
      const next: VmRecord = { ...record, owner: move.to, state: move.state, failover: { from: host, reason: "host-lost", at: new Date().toISOString() } };
      const ok = await this.writeMove(host, move, next);
      if (ok === "moved") this.emit("failover", move);
      else if (ok === "host-back") {
        this.tracker.present(host);
        return true;
      } else if (ok === "deposed") {
        await this.standDown();
        return true;
      } else done = false;
    }
    for (const u of plan.unplaced) this.emit("unplaceable", { host, ...u } satisfies UnplaceableEvent);
    if (done) this.tracker.resolved(host);
    return done;
  }

  private async writeMove(host: string, move: FailoverMove, next: VmRecord): Promise<"moved" | "host-back" | "deposed" | "changed"> {
    const e = this.conn.etcd;
    const mKey = `${ROOT}${memberKey(host)}`;
    const vKey = `${ROOT}${vmKey(move.id)}`;
    const res = await this.conn.guard(`move clustered VM ${next.name} off ${host}`, () =>
      e
        .if(mKey, "Create", "==", 0)
        .and(vKey, "Mod", "==", move.revision)
        .and(this.campaignKey!, "Create", ">", 0)
        .then(e.put(vKey).value(JSON.stringify(next)))
        .else(e.get(mKey), e.get(this.campaignKey!))
        .commit(),
    );
    if (res.succeeded) return "moved";
    if ((res.responses[0]?.response_range?.kvs.length ?? 0) > 0) return "host-back";
    if ((res.responses[1]?.response_range?.kvs.length ?? 0) === 0) return "deposed";
    return "changed";
  }
}

/**
 * Follows who the coordinator is: `onChange` gets the host name (undefined while there is
 * none) whenever it changes. Any event under the election prefix, a (re)connected watch and a
 * re-read every `pollMs` (default 2000) make it read the oldest campaign key again, which is
 * the coordinator by definition. (etcd3's own ElectionObserver takes the *last* put of a batch
 * as the leader, so after a delayed watch it reported a host that was not the coordinator.)
 */
export async function observeCoordinator(
  conn: ClusterConnection,
  onChange: (host: string | undefined) => void,
  opts: { pollMs?: number } = {},
): Promise<{ current(): string | undefined; close(): Promise<void> }> {
  let current: string | undefined;
  let known = false;
  let closed = false;
  let chain: Promise<void> = Promise.resolve();
  const refresh = (): void => {
    chain = chain.then(async () => {
      if (closed) return;
      const now = await currentCoordinator(conn).catch(() => current);
      if (!known || now !== current) {
        known = true;
        current = now;
        if (!closed) onChange(now);
      }
    });
  };
  const w: Watcher = await conn.guard("observe the coordinator election", () => conn.ns.watch().prefix(`election/${COORDINATOR_ELECTION}/`).create());
  w.on("data", refresh);
  w.on("connected", refresh);
  const poll = setInterval(refresh, opts.pollMs ?? 2000);
  refresh();
  await chain;
  return {
    current: () => current,
    async close() {
      closed = true;
      clearInterval(poll);
      await w.cancel();
    },
  };
}

/** The coordinator now (the oldest campaign key's value), or undefined. `serializable` works without quorum (maybe stale). */
export async function currentCoordinator(conn: ClusterConnection, opts: { serializable?: boolean } = {}): Promise<string | undefined> {
  const res = await conn.guard("read the coordinator", () =>
    conn.ns
      .getAll()
      .prefix(`election/${COORDINATOR_ELECTION}/`)
      .sort("Create", "Ascend")
      .limit(1)
      .serializable(opts.serializable ?? false)
      .exec(),
  );
  return res.kvs[0]?.value.toString();
}
