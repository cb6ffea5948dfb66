import { z } from "zod";
import { Empty, type AgentCaller } from "./agent.js";

/**
 * Time Synchronization: the guest clock is compared with the host's through guest-get-time
 * and set with guest-set-time (which also writes the guest's RTC).
 */

/** A correction is made when the guest is off by more than this. */
export const TIME_DRIFT_LIMIT_MS = 1_000;
/** How often the drift is checked while the VM runs. */
export const TIME_CHECK_INTERVAL_MS = 10_000;

/** Nanoseconds since the epoch; a JSON number (precise to ~256 ns at today's values, plenty). */
const GuestTime = z.number().finite().nonnegative();

export interface DriftSample {
  /** Guest minus host, in ms (negative: the guest is behind). */
  driftMs: number;
  /** Half the round trip: how far off the estimate can be. */
  uncertaintyMs: number;
}

/** The guest's reading is compared with the host clock at the middle of the round trip. */
export function drift(hostBeforeMs: number, guestNs: number, hostAfterMs: number): DriftSample {
  const mid = (hostBeforeMs + hostAfterMs) / 2;
  return { driftMs: guestNs / 1e6 - mid, uncertaintyMs: (hostAfterMs - hostBeforeMs) / 2 };
}

/** Correct only when the drift is beyond the limit even allowing for the measurement's uncertainty. */
export function needsCorrection(s: DriftSample, limitMs = TIME_DRIFT_LIMIT_MS): boolean {
  return Math.abs(s.driftMs) - s.uncertaintyMs > limitMs;
}

export async function measureDrift(agent: AgentCaller, now: () => number = Date.now): Promise<DriftSample> {
  const before = now();
  const guestNs = await agent.call("guest-get-time", undefined, GuestTime, { timeoutMs: 5_000 });
  return drift(before, guestNs, now());
}

/** Set the guest clock to the host's now. */
export async function setGuestTime(agent: AgentCaller, now: () => number = Date.now): Promise<void> {
  await agent.call("guest-set-time", { time: Math.round(now() * 1e6) }, Empty, { timeoutMs: 15_000 });
}

export function formatDrift(ms: number): string {
  const a = Math.abs(ms);
  const mag = a >= 10_000 ? `${(a / 1000).toFixed(0)} s` : a >= 1000 ? `${(a / 1000).toFixed(1)} s` : `${Math.round(a)} ms`;
  return ms < 0 ? `${mag} behind` : `${mag} ahead`;
}
