import { z } from "zod";
import { GuestAgentError, type AgentCaller } from "./agent.js";
import { execOk, execStart } from "./exec.js";

/**
 * VSS: freeze and thaw of the guest's file systems (guest-fsfreeze-*), for application-
 * consistent checkpoints. A freeze is only made together with two independent thaws:
 *  - vmhostd's own timer, which thaws when the caller does not in time;
 *  - a watchdog in the guest, started through guest-exec *before* freezing (qemu-ga refuses
 *    guest-exec while frozen): `sleep N`, then FITHAW on every block-device mount. It covers
 *    vmhostd dying mid-way, when no host-side timer is left. Watchdogs are found by their $0
 *    marker and killed after every thaw and before every freeze, so one left by a vmhostd that
 *    died can never thaw a later freeze early.
 * A guest that cannot run the watchdog (no guest-exec, no fsfreeze program) is not frozen.
 */

export const FreezeStatus = z.enum(["thawed", "frozen"]);
export type FreezeStatus = z.infer<typeof FreezeStatus>;
const Count = z.number().int().min(0).max(100_000);

/** Longest freeze a caller may ask for; Windows VSS itself allows 10 s of freeze. */
export const MAX_FREEZE_MS = 300_000;
export const DEFAULT_FREEZE_MS = 10_000;
/** The guest watchdog fires this long after vmhostd's timer would have. */
export const WATCHDOG_MARGIN_MS = 5_000;

/**
 * The guest-side watchdog. $1 = seconds. Mount points come from /proc/self/mounts (the same
 * block-device mounts qemu-ga freezes); FITHAW on one that is not frozen fails harmlessly.
 * Programs run from a frozen file system still start: reads and skipped atime updates do not block.
 */
export const WATCHDOG_SCRIPT = [
  "PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH",
  'sleep "$1" || exit 0',
  "while read -r dev mnt rest; do",
  '  case "$dev" in /*) fsfreeze --unfreeze "$mnt" >/dev/null 2>&1 && echo "vmhost-vss-watchdog: thawed $mnt" >/dev/console ;; esac',
  "done </proc/self/mounts",
].join("\n");

export const WATCHDOG_MARKER = "vmhost-vss-watchdog";

/** Kills every watchdog shell ($1 = the marker; itself excluded). Its sleep child is left to expire harmlessly. */
const KILL_SCRIPT = [
  "for p in /proc/[0-9]*; do",
  '  pid=${p#/proc/}',
  '  [ "$pid" = "$$" ] && continue',
  '  cmd=$(tr "\\000" " " <"$p/cmdline" 2>/dev/null) || continue',
  '  case "$cmd" in *" $1 "*) kill -TERM "$pid" 2>/dev/null ;; esac',
  "done",
  "exit 0",
].join("\n");

const PROBE_SCRIPT = "PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH; command -v fsfreeze >/dev/null && command -v sleep >/dev/null && echo ok";

export async function freezeStatus(agent: AgentCaller): Promise<FreezeStatus> {
  return agent.call("guest-fsfreeze-status", undefined, FreezeStatus, { timeoutMs: 5_000 });
}

/** Whether the guest can run the watchdog (asked once per session). */
export async function canRunWatchdog(agent: AgentCaller): Promise<boolean> {
  try {
    return (await execOk(agent, "/bin/sh", ["-c", PROBE_SCRIPT], 15_000)).trim() === "ok";
  } catch {
    return false;
  }
}

export interface FreezeResult {
  /** File systems qemu-ga froze (0 when the guest has none it can freeze, e.g. only tmpfs/rootfs). */
  frozen: number;
  /** The guest watchdog's pid (to kill it after a normal thaw). */
  watchdogPid: number;
  watchdogSeconds: number;
}

export async function freeze(agent: AgentCaller, thawAfterMs: number): Promise<FreezeResult> {
  if ((await freezeStatus(agent)) === "frozen") {
    throw new GuestAgentError("guest-fsfreeze-freeze", "InvalidState", "the guest's file systems are already frozen");
  }
  const watchdogSeconds = Math.ceil((thawAfterMs + WATCHDOG_MARGIN_MS) / 1000);
  await killWatchdogs(agent);
  const watchdogPid = await execStart(agent, "/bin/sh", ["-c", WATCHDOG_SCRIPT, WATCHDOG_MARKER, String(watchdogSeconds)], false);
  let frozen: number;
  try {
    frozen = await agent.call("guest-fsfreeze-freeze", undefined, Count, { timeoutMs: 60_000 });
  } catch (err) {
    // A failed or timed-out freeze may have frozen some file systems: thaw what there is.
    await agent.call("guest-fsfreeze-thaw", undefined, Count, { timeoutMs: 60_000 }).catch(() => undefined);
    await killWatchdogs(agent);
    throw err;
  }
  return { frozen, watchdogPid, watchdogSeconds };
}

/** guest-fsfreeze-thaw: how many file systems it thawed (0 when none was frozen). */
export async function thaw(agent: AgentCaller, timeoutMs = 60_000): Promise<number> {
  return agent.call("guest-fsfreeze-thaw", undefined, Count, { timeoutMs });
}

/** After a thaw the watchdogs have nothing to do; killing their shells stops them before FITHAW. */
export async function killWatchdogs(agent: AgentCaller): Promise<void> {
  await execOk(agent, "/bin/sh", ["-c", KILL_SCRIPT, "vmhost-vss-stop", WATCHDOG_MARKER], 15_000).catch(() => undefined);
}
