/**
 * Failover decisions, as pure functions and a pure state machine (times are milliseconds of a
 * monotonic clock the caller owns). The coordinator (coordinator.ts) feeds them what it sees in
 * etcd and carries out what they decide; a returning host uses {@link planRejoin}.
 *
 * When may a dead host's VMs start elsewhere? Only when that host must have turned them off
 * itself (selffence.ts): it fences at lastRenewal + TTL, and etcd deletes its member key no
 * earlier than that, so once the coordinator has seen the key gone for `fencingMarginMs` the
 * host has had at least that margin to finish fencing. The key's deletion is etcd's own record
 * of "TTL passed since the host's last successful renewal"; no wall clocks of different hosts
 * are compared, so clock skew between hosts cannot make a VM run twice. The margin must cover
 * the fence callback's duration plus how late the host's timer may fire (default 5 s).
 * A coordinator that takes over treats a key missing at that moment as deleted just then.
 */
import { placeMany, placeVm, type PlacementCandidate, type Rejection } from "./placement.js";
import type { ClusteredVmState, RegistryEntry } from "./registry.js";

export interface FailoverDue {
  host: string;
  /** When the coordinator first saw the host's key missing. */
  goneSince: number;
  /** goneSince + fencing margin: when its VMs may start elsewhere. */
  dueAt: number;
}

/** Which hosts' VMs may be failed over, and from when. */
export class FailoverTracker {
  private readonly gone = new Map<string, { since: number; resolved: boolean }>();

  constructor(readonly fencingMarginMs: number) {
    if (!(fencingMarginMs >= 0)) throw new RangeError(`fencing margin must be >= 0, got ${fencingMarginMs}`);
  }

  /** The host's member key exists: it is alive; anything pending for it is cancelled. */
  present(host: string): void {
    this.gone.delete(host);
  }

  /**
   * The host's member key is missing (deleted, or absent when first looked at). The earliest
   * sighting counts unless `restart` (the caller may have missed events: count from now).
   */
  absent(host: string, now: number, opts: { restart?: boolean } = {}): void {
    const g = this.gone.get(host);
    if (!g || opts.restart) this.gone.set(host, { since: now, resolved: false });
  }

  /** All of the host's VMs were handled; stop reporting it until it is seen again. */
  resolved(host: string): void {
    const g = this.gone.get(host);
    if (g) g.resolved = true;
  }

  /** A host that was resolved gets VMs again (e.g. a VM could not be placed before): report it again. */
  reopen(host: string): void {
    const g = this.gone.get(host);
    if (g) g.resolved = false;
  }

  isGone(host: string): boolean {
    return this.gone.has(host);
  }

  /** Hosts whose VMs may be failed over now. */
  due(now: number): FailoverDue[] {
    return this.pending().filter((d) => d.dueAt <= now);
  }

  /** Hosts seen gone and not yet resolved, with when they become due. */
  pending(): FailoverDue[] {
    const out: FailoverDue[] = [];
    for (const [host, g] of [...this.gone].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (!g.resolved) out.push({ host, goneSince: g.since, dueAt: g.since + this.fencingMarginMs });
    }
    return out;
  }

  /** The earliest future due time (for the caller's timer), or undefined. */
  nextDeadline(now: number): number | undefined {
    const later = this.pending().map((d) => d.dueAt).filter((t) => t > now);
    return later.length ? Math.min(...later) : undefined;
  }
}

/** A VM to move off a dead host: the new owner and the state the new owner must bring it to. */
export interface FailoverMove {
  id: string;
  from: string;
  to: string;
  /** Running and Paused VMs restart ("Running"); Off and Saved ones keep their state. */
  state: ClusteredVmState;
  /** The registry revision the move was planned from (the update is checked against it). */
  revision: string;
}

export interface FailoverPlan {
  moves: FailoverMove[];
  unplaced: { id: string; rejected: Rejection[] }[];
}

/** States in which a VM was running on the dead host, so it is restarted elsewhere. */
export const RESTART_STATES: ReadonlySet<ClusteredVmState> = new Set<ClusteredVmState>(["Running", "Paused"]);

/**
 * Where each VM owned by `deadHost` goes. VMs that were running are placed first and reserve
 * their memory (placement.ts placeMany: larger first); VMs that were off or saved are placed on
 * what is left without reserving (they use no memory until started). The dead host is never a
 * target. Pure: the caller writes the moves with revision checks.
 */
export function planFailover(deadHost: string, entries: readonly RegistryEntry[], members: readonly PlacementCandidate[]): FailoverPlan {
  const owned = entries.filter((e) => e.owner === deadHost);
  const running = owned.filter((e) => RESTART_STATES.has(e.state));
  const idle = owned.filter((e) => !RESTART_STATES.has(e.state));
  const exclude = [deadHost];
  const { assignments, unplaced } = placeMany(running.map((e) => ({ id: e.id, needs: e.needs })), members, { exclude });
  const moves: FailoverMove[] = [];
  for (const e of running) {
    const to = assignments.get(e.id);
    if (to) moves.push({ id: e.id, from: deadHost, to, state: "Running", revision: e.revision });
  }
  // What the running VMs reserved, so idle VMs are placed against realistic free memory.
  const left = members.map((m) => ({
    ...m,
    freeMemoryMiB: m.freeMemoryMiB - running.filter((e) => assignments.get(e.id) === m.host).reduce((s, e) => s + e.needs.memoryMiB, 0),
  }));
  for (const e of [...idle].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    const r = placeVm(e.needs, left, { exclude });
    if (r.host) moves.push({ id: e.id, from: deadHost, to: r.host, state: e.state, revision: e.revision });
    else unplaced.push({ id: e.id, rejected: r.rejected });
  }
  return { moves, unplaced };
}

/** A clustered VM as the returning host finds it locally. Absent from the map = no local copy. */
export type LocalCopy = "running" | "paused" | "off";

export type RejoinAction =
  | { id: string; action: "keep" }
  | { id: string; action: "start" }
  | { id: string; action: "resume" }
  | { id: string; action: "turn-off"; reason: "owned-elsewhere" | "not-clustered" | "registry-off"; owner?: string };

/**
 * What a host does with clustered VMs after its lease is back (self-fencing recovered, or a
 * restart of the service). The registry's ownership decides; nothing local does:
 * - a local copy of a VM the registry gives to another host, or no longer has, is turned off and
 *   never started (it is stale: the VM may already run elsewhere);
 * - a VM this host owns in state Running is kept if it runs, resumed if it is paused (a fence
 *   that pauses instead of turning off leaves such copies; while this host owns the VM no other
 *   copy can exist), started if it is off or absent; one in state Paused is kept if present
 *   (running or paused), else started;
 * - a VM this host owns in state Off/Saved that runs locally is turned off.
 * Precondition: `entries` was read (linearizably) after this host's member key was put again,
 * so the coordinator can no longer move this host's VMs (its moves require the key absent).
 */
export function planRejoin(host: string, entries: readonly RegistryEntry[], local: ReadonlyMap<string, LocalCopy>): RejoinAction[] {
  const byId = new Map(entries.map((e) => [e.id, e]));
  const actions: RejoinAction[] = [];
  for (const [id, copy] of [...local].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const e = byId.get(id);
    if (copy === "off") continue;
    if (!e) actions.push({ id, action: "turn-off", reason: "not-clustered" });
    else if (e.owner !== host) actions.push({ id, action: "turn-off", reason: "owned-elsewhere", owner: e.owner });
  }
  for (const e of [...entries].filter((x) => x.owner === host).sort((a, b) => (a.id < b.id ? -1 : 1))) {
    const copy = local.get(e.id);
    if (RESTART_STATES.has(e.state)) {
      if (copy === "running" || (copy === "paused" && e.state === "Paused")) actions.push({ id: e.id, action: "keep" });
      else if (copy === "paused") actions.push({ id: e.id, action: "resume" });
      else actions.push({ id: e.id, action: "start" });
    } else if (copy === "running" || copy === "paused") {
      actions.push({ id: e.id, action: "turn-off", reason: "registry-off" });
    }
  }
  return actions;
}
