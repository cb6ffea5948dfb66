/**
 * Heartbeat: vmhost pings the guest agent periodically; this is the state machine that turns
 * answers and misses into Hyper-V's primary status. Pure (time is passed in) so it is tested
 * without a guest.
 */

export type PrimaryStatus = "OK" | "No Contact" | "Lost Communication";

export type HeartbeatTransition = "first-contact" | "lost" | "restored";

export interface HeartbeatOptions {
  /** Consecutive missed beats before the status becomes Lost Communication. */
  missesForLost: number;
}

export const HEARTBEAT_INTERVAL_MS = 2_000;
/** How long one beat may take before it counts as missed (it starts when the ping is sent). */
export const HEARTBEAT_TIMEOUT_MS = 3_000;
export const HEARTBEAT_MISSES_FOR_LOST = 3;

export class HeartbeatMonitor {
  private status: PrimaryStatus = "No Contact";
  private misses = 0;
  lastOkAt?: number;
  lostAt?: number;
  /** Why the last beat failed (timeout, agent error), for the detail line. */
  lastError?: string;

  constructor(private readonly opts: HeartbeatOptions = { missesForLost: HEARTBEAT_MISSES_FOR_LOST }) {}

  get primaryStatus(): PrimaryStatus {
    return this.status;
  }

  get missedBeats(): number {
    return this.misses;
  }

  beatOk(now: number): HeartbeatTransition | undefined {
    const before = this.status;
    this.status = "OK";
    this.misses = 0;
    this.lastOkAt = now;
    this.lastError = undefined;
    this.lostAt = undefined;
    if (before === "No Contact") return "first-contact";
    if (before === "Lost Communication") return "restored";
    return undefined;
  }

  beatMissed(now: number, why: string): HeartbeatTransition | undefined {
    this.misses++;
    this.lastError = why;
    if (this.status === "OK" && this.misses >= this.opts.missesForLost) {
      this.status = "Lost Communication";
      this.lostAt = now;
      return "lost";
    }
    return undefined;
  }

  /** The guest was reset (or the VM restarted): no contact until its agent answers again. */
  reset(): void {
    this.status = "No Contact";
    this.misses = 0;
    this.lastOkAt = undefined;
    this.lostAt = undefined;
    this.lastError = undefined;
  }

  /** "OK, 2 s ago" / "Lost Communication, last beat 14 s ago (3 missed)" / "No Contact". */
  describe(now: number): string {
    const ago = (t: number) => `${Math.max(0, Math.round((now - t) / 1000))} s ago`;
    switch (this.status) {
      case "OK":
        return `OK, ${ago(this.lastOkAt ?? now)}`;
      case "Lost Communication":
        return `Lost Communication, last beat ${ago(this.lastOkAt ?? now)} (${this.misses} missed${this.lastError ? `: ${this.lastError}` : ""})`;
      default:
        return this.lastError ? `No Contact (${this.lastError})` : "No Contact";
    }
  }
}
