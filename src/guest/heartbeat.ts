/**
 * Heartbeat: vmhost pings the guest agent periodically, and any answer from the agent counts
 * as a beat (a long file copy keeps it alive as well as pings do). This is the state machine
 * that turns beats and silence into Hyper-V's primary status. Pure (time is passed in) so it
 * is tested without a guest. Silence is measured, not counted pings: a ping stuck behind a
 * slow command on the one serial channel still lets silence be noticed on time.
 */

export type PrimaryStatus = "OK" | "No Contact" | "Lost Communication";

export type HeartbeatTransition = "first-contact" | "lost" | "restored";

export const HEARTBEAT_INTERVAL_MS = 2_000;
/** How long one ping may take before it is given up (it starts when the ping is sent). */
export const HEARTBEAT_TIMEOUT_MS = 3_000;
/** Beats missed in a row before Lost Communication. */
export const HEARTBEAT_MISSES_FOR_LOST = 3;

export interface HeartbeatOptions {
  intervalMs: number;
  /** Silence after the last beat that means Lost Communication. */
  lostAfterMs: number;
}

export const DEFAULT_HEARTBEAT: HeartbeatOptions = {
  intervalMs: HEARTBEAT_INTERVAL_MS,
  lostAfterMs: HEARTBEAT_INTERVAL_MS * HEARTBEAT_MISSES_FOR_LOST + HEARTBEAT_TIMEOUT_MS,
};

export class HeartbeatMonitor {
  private status: PrimaryStatus = "No Contact";
  lastOkAt?: number;
  lostAt?: number;
  /** Why the last ping failed (no answer, agent error), for the detail line. */
  lastError?: string;
  /** Silence is counted from here at the earliest (a resume: the guest could not answer while paused). */
  private graceFrom = 0;
  /** Beats from before a guest reset say nothing about the guest now. */
  private ignoreBefore = 0;

  constructor(private readonly opts: HeartbeatOptions = DEFAULT_HEARTBEAT) {}

  get primaryStatus(): PrimaryStatus {
    return this.status;
  }

  /** An answer from the agent at time `at`. */
  beatOk(at: number): HeartbeatTransition | undefined {
    if (at < this.ignoreBefore || (this.lastOkAt !== undefined && at <= this.lastOkAt)) return undefined;
    const before = this.status;
    this.status = "OK";
    this.lastOkAt = at;
    this.lastError = undefined;
    this.lostAt = undefined;
    if (before === "No Contact") return "first-contact";
    if (before === "Lost Communication") return "restored";
    return undefined;
  }

  /** Evaluate the silence; returns "lost" once when it becomes too long. */
  check(now: number): HeartbeatTransition | undefined {
    if (this.status !== "OK") return undefined;
    const from = Math.max(this.lastOkAt ?? now, this.graceFrom);
    if (now - from <= this.opts.lostAfterMs) return undefined;
    this.status = "Lost Communication";
    this.lostAt = now;
    return "lost";
  }

  /** The VM was paused and runs again: the pause is not silence. */
  grace(now: number): void {
    this.graceFrom = now;
  }

  /** The guest was reset: no contact until its agent answers again. */
  reset(now: number): void {
    this.status = "No Contact";
    this.lastOkAt = undefined;
    this.lostAt = undefined;
    this.lastError = undefined;
    this.ignoreBefore = now;
  }

  missedBeats(now: number): number {
    return this.lastOkAt === undefined ? 0 : Math.max(0, Math.floor((now - this.lastOkAt) / this.opts.intervalMs));
  }

  /** "OK, 2 s ago" / "Lost Communication, last beat 14 s ago (no answer)" / "No Contact". */
  describe(now: number): string {
    const ago = (t: number) => `${Math.max(0, Math.round((now - t) / 1000))} s ago`;
    switch (this.status) {
      case "OK":
        return `OK, ${ago(this.lastOkAt ?? now)}`;
      case "Lost Communication":
        return `Lost Communication, last beat ${ago(this.lastOkAt ?? now)} (${this.missedBeats(now)} missed${this.lastError ? `: ${this.lastError}` : ""})`;
      default:
        return this.lastError ? `No Contact (${this.lastError})` : "No Contact";
    }
  }
}
