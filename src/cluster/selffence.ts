/**
 * Self-fencing, as a pure state machine (times are milliseconds of a monotonic clock the caller
 * owns; nothing here reads a clock or sets a timer, so every transition is unit-testable).
 *
 * The rule: a host may run clustered VMs only while it can prove its membership lease is alive.
 * etcd renews a lease when a keepalive reaches its leader, so after a keepalive *sent* at time t
 * is acknowledged, the lease cannot expire before t + TTL (etcd counts the TTL from when it
 * processed the keepalive, which is after t). The host therefore keeps `lastRenewalAt` = send
 * time of the newest acknowledged renewal (or of the grant) and fences at lastRenewalAt + TTL
 * unless a newer renewal was acknowledged. It also fences at once when etcd says the lease is
 * gone. Either way the fence callback turns this host's clustered VMs off.
 *
 * The coordinator restarts those VMs elsewhere only `fencingMargin` after it saw the host's key
 * expire (failover.ts); expiry happens no earlier than lastRenewalAt + TTL, so the host has at
 * least the margin to finish fencing.
 */

export type SelfFenceState = "alive" | "fenced";

export interface FenceAction {
  type: "fence";
  /** "renewal-timeout": no renewal acknowledged for a TTL; "lease-expired": etcd said the lease is gone. */
  reason: "renewal-timeout" | "lease-expired";
  lastRenewalAt: number;
  /** lastRenewalAt + TTL. */
  deadline: number;
  now: number;
}

export interface RecoveredAction {
  type: "recovered";
  /**
   * true: the same lease was renewed again, so etcd never expired it, the host's key never
   * vanished and no failover of its VMs can have happened; false: a new lease was granted after
   * the old one expired, so the coordinator may be moving (or have moved) this host's VMs.
   * Either way the registry's ownership decides what this host may start (failover.ts planRejoin).
   */
  leaseSurvived: boolean;
  now: number;
}

export type SelfFenceAction = FenceAction | RecoveredAction;

export class SelfFence {
  private _state: SelfFenceState = "alive";
  private _lastRenewalAt: number;
  private leaseGone = false;

  /** `grantSentAt`: when the lease grant request was sent (a grant is the first renewal). */
  constructor(
    readonly ttlMs: number,
    grantSentAt: number,
  ) {
    if (!(ttlMs > 0)) throw new RangeError(`TTL must be positive, got ${ttlMs}`);
    this._lastRenewalAt = grantSentAt;
  }

  get state(): SelfFenceState {
    return this._state;
  }

  /** Send time of the newest acknowledged renewal. */
  get lastRenewalAt(): number {
    return this._lastRenewalAt;
  }

  /** When this host must be fenced unless a renewal is acknowledged first. */
  get deadline(): number {
    return this._lastRenewalAt + this.ttlMs;
  }

  /** Whether the current lease is known to be gone (waiting for a new grant). */
  get leaseLost(): boolean {
    return this.leaseGone;
  }

  /** The time {@link tick} must be called at next, or undefined when nothing is pending. */
  nextDeadline(): number | undefined {
    return this._state === "alive" ? this.deadline : undefined;
  }

  /** Time passes: fences when the deadline is reached without a newer acknowledged renewal. */
  tick(now: number): SelfFenceAction[] {
    if (this._state === "alive" && now >= this.deadline) return [this.fence("renewal-timeout", now)];
    return [];
  }

  /**
   * A keepalive sent at `sentAt` was acknowledged at `now` with a TTL > 0: the lease is alive.
   * Recovers a fenced host (leaseSurvived) only when the proof is still fresh (now < sentAt + TTL).
   * An acknowledgement of the old lease after it was reported gone is ignored.
   */
  renewed(sentAt: number, now: number): SelfFenceAction[] {
    if (this.leaseGone) return [];
    if (sentAt > this._lastRenewalAt) this._lastRenewalAt = sentAt;
    if (now >= this.deadline) return this.tick(now);
    if (this._state === "fenced") {
      this._state = "alive";
      return [{ type: "recovered", leaseSurvived: true, now }];
    }
    return [];
  }

  /** etcd answered that the lease no longer exists (keepalive TTL 0 / "lease not found"). */
  leaseExpired(now: number): SelfFenceAction[] {
    this.leaseGone = true;
    if (this._state === "alive") return [this.fence("lease-expired", now)];
    return [];
  }

  /** A new lease, requested at `sentAt`, was granted (and the member key put with it) at `now`. */
  regranted(sentAt: number, now: number): SelfFenceAction[] {
    this.leaseGone = false;
    this._lastRenewalAt = sentAt;
    if (now >= this.deadline) return this.tick(now);
    if (this._state === "fenced") {
      this._state = "alive";
      return [{ type: "recovered", leaseSurvived: false, now }];
    }
    return [];
  }

  private fence(reason: FenceAction["reason"], now: number): FenceAction {
    this._state = "fenced";
    return { type: "fence", reason, lastRenewalAt: this._lastRenewalAt, deadline: this.deadline, now };
  }
}
