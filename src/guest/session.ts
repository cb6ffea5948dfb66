import { z } from "zod";
import { AnyReply, Empty, GuestAgent, GuestAgentError, GuestAgentUnavailable, guestText, type GuestAgentOptions } from "./agent.js";
import { copyFileToGuest, type CopyOptions, type CopyResult } from "./copyfile.js";
import { execOk } from "./exec.js";
import { DEFAULT_HEARTBEAT, HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS, HeartbeatMonitor, type HeartbeatOptions } from "./heartbeat.js";
import {
  GuestInfo,
  HostName,
  KVP_DIR,
  KvpError,
  NetworkInterfaces,
  OsInfo,
  diffItems,
  intrinsicItems,
  poolPath,
  readPool,
  sameItems,
  writePool,
  type DecodedPool,
  type IntrinsicKey,
  type KvpItem,
} from "./kvp.js";
import { SERVICES, serviceStatus, type ServiceKey, type ServiceSettings, type ServiceStatus } from "./services.js";
import { TIME_CHECK_INTERVAL_MS, formatDrift, measureDrift, needsCorrection, setGuestTime } from "./timesync.js";
import { DEFAULT_FREEZE_MS, MAX_FREEZE_MS, canRunWatchdog, freeze, freezeStatus, killWatchdogs, thaw } from "./vss.js";
import { VmhostError } from "../util/errors.js";

/**
 * One running VM's integration services: the guest agent connection, the heartbeat loop,
 * time synchronization, KVP delivery and polling, VSS freeze state, and file copies. Made
 * when the supervisor starts or adopts the VM's QEMU and closed when QEMU goes away.
 */

export interface SessionHost {
  vmName: string;
  /** The VM's state as the supervisor sees it now. */
  vmState(): string;
  settings(): ServiceSettings;
  /** Host-to-guest items (persisted in the VM's configuration), delivered into the external pool. */
  hostKvpItems(): KvpItem[];
  journal(type: string, message: string, data?: Record<string, unknown>): void;
}

export interface SessionTiming {
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  /** Silence after the last answer that means Lost Communication. */
  heartbeatLostAfterMs: number;
  timeCheckIntervalMs: number;
  kvpPollIntervalMs: number;
  /**
   * A freeze past its deadline: how long one thaw attempt waits for the agent, and the pause
   * between attempts. The first attempt that goes unanswered makes the thaw overdue (an event).
   */
  thawAttemptTimeoutMs: number;
  thawRetryIntervalMs: number;
  agent: GuestAgentOptions;
}

export const DEFAULT_TIMING: SessionTiming = {
  heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS,
  heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
  heartbeatLostAfterMs: DEFAULT_HEARTBEAT.lostAfterMs,
  timeCheckIntervalMs: TIME_CHECK_INTERVAL_MS,
  kvpPollIntervalMs: 15_000,
  thawAttemptTimeoutMs: 5_000,
  thawRetryIntervalMs: HEARTBEAT_INTERVAL_MS,
  agent: {},
};

/** A refusal by the integration services (disabled service, no agent, bad state): 409 unless said. */
export class IntegrationError extends VmhostError {
  constructor(code: string, message: string, status = 409) {
    super(code, message, status);
    this.name = "IntegrationError";
  }
}

interface FrozenState {
  since: number;
  thawBy: number;
  count: number;
  /** Fires at thawBy and starts forceThaw(). */
  timer: NodeJS.Timeout;
  /** Set (to thawBy) once a thaw at the deadline went unanswered; cleared with the freeze. */
  overdueSince?: number;
  /** forceThaw() is running for this freeze. */
  forcing?: boolean;
}

/** Runs async work one at a time (KVP pool updates must not interleave). */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn, fn);
    this.tail = p.catch(() => undefined);
    return p;
  }
}

export class GuestSession {
  readonly agent: GuestAgent;
  readonly heartbeat: HeartbeatMonitor;
  private readonly t: SessionTiming;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private commands?: Set<string>;
  private agentVersion?: string;
  private lastTimeCheck = 0;
  private lastKvpPoll = 0;
  private pausedSeen = false;
  private readonly kvpSerial = new Serial();
  private guestItems?: KvpItem[];
  private externalItems?: KvpItem[];
  private kvpNote = "";
  private timeNote = "";
  private lastTimeErrorAt = 0;
  private frozen?: FrozenState;
  private watchdogOk?: boolean;
  private lastCopy?: CopyResult;
  private copying = 0;

  constructor(
    readonly host: SessionHost,
    socketPath: string,
    timing: Partial<SessionTiming> = {},
  ) {
    this.t = { ...DEFAULT_TIMING, ...timing };
    this.agent = new GuestAgent(socketPath, { syncTimeoutMs: this.t.heartbeatTimeoutMs, ...this.t.agent });
    this.heartbeat = new HeartbeatMonitor({ intervalMs: this.t.heartbeatIntervalMs, lostAfterMs: this.t.heartbeatLostAfterMs } satisfies HeartbeatOptions);
  }

  start(): void {
    this.schedule(0);
  }

  /** QEMU is gone or vmhostd is stopping. A freeze still in force is thawed first where possible. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const f = this.frozen;
    if (f) {
      clearTimeout(f.timer);
      this.frozen = undefined;
      // Best effort; the guest watchdog covers it if this cannot finish.
      void thaw(this.agent)
        .catch(() => undefined)
        .finally(() => this.agent.close());
      return;
    }
    this.agent.close();
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.tick(), ms);
    this.timer.unref();
  }

  // ---- the heartbeat loop ----------------------------------------------------------------

  /**
   * Every interval: judge the silence, and start a ping (plus the periodic work) unless the
   * previous one is still going. The loop itself never waits on the guest, so a ping stuck
   * behind a slow command still lets Lost Communication be noticed on time.
   */
  private tick(): void {
    if (this.closed) return;
    if (this.host.vmState() === "Running") {
      this.observe(Date.now());
      void this.work();
    }
    this.schedule(this.t.heartbeatIntervalMs);
  }

  private working?: Promise<void>;
  /** A first contact or a return seen by observe(), for work() to follow up. */
  private pendingContact?: { tr: "first-contact" | "restored"; lostForMs: number };

  /** One ping and its follow-up at a time, whether from the loop or from a request that needs contact now. */
  private work(): Promise<void> {
    this.working ??= this.workOnce()
      .catch(() => undefined)
      .finally(() => (this.working = undefined));
    return this.working;
  }

  /** Any answer from the agent is a beat; too long a silence is Lost Communication. */
  private observe(now: number): void {
    const settings = this.host.settings();
    const last = this.agent.lastReplyAt;
    if (last !== undefined) {
      const lostForMs = this.heartbeat.lastOkAt !== undefined ? last - this.heartbeat.lastOkAt : 0;
      const tr = this.heartbeat.beatOk(last);
      if (tr === "first-contact" || tr === "restored") {
        this.pendingContact = { tr, lostForMs };
        if (tr === "restored" && settings.heartbeat) {
          this.host.journal("heartbeat-restored", `Heartbeat: OK again after ${Math.round(lostForMs / 1000)} s without an answer`);
        }
      }
    }
    if (this.heartbeat.check(now) === "lost" && settings.heartbeat) {
      this.host.journal("heartbeat-lost", `Heartbeat: Lost Communication (no answer for ${Math.round((now - (this.heartbeat.lastOkAt ?? now)) / 1000)} s)`, {
        lastBeatAt: this.heartbeat.lastOkAt ? new Date(this.heartbeat.lastOkAt).toISOString() : undefined,
      });
    }
  }

  private async workOnce(): Promise<void> {
    try {
      await this.agent.call("guest-ping", undefined, Empty, { timeoutMs: this.t.heartbeatTimeoutMs });
    } catch (err) {
      const why = err instanceof GuestAgentUnavailable ? err.reason : "error";
      this.heartbeat.lastError = why === "timeout" ? "no answer" : why === "error" ? guestText((err as Error).message, 120) : why;
    }
    if (this.closed) return;
    this.observe(Date.now());
    if (this.heartbeat.primaryStatus !== "OK") return;
    const contact = this.pendingContact;
    this.pendingContact = undefined;
    if (contact) await this.onContact(contact.tr, contact.lostForMs);
    const settings = this.host.settings();
    const now = Date.now();
    if (this.frozen) return; // qemu-ga refuses nearly everything while frozen
    if (settings.timeSynchronization && now - this.lastTimeCheck >= this.t.timeCheckIntervalMs) await this.checkTime("drift", false);
    if (settings.keyValuePairExchange && now - this.lastKvpPoll >= this.t.kvpPollIntervalMs) await this.syncKvp().catch(() => undefined);
  }

  /** The agent answers again (or for the first time): learn what it offers and catch up. */
  private async onContact(tr: "first-contact" | "restored", _lostForMs: number): Promise<void> {
    const settings = this.host.settings();
    await this.refreshCapabilities().catch(() => undefined);
    if (tr === "first-contact") {
      this.host.journal("agent-contact", `the guest agent answers${this.agentVersion ? ` (qemu-ga ${this.agentVersion})` : ""}`, {
        agentVersion: this.agentVersion,
      });
    }
    await this.recoverFreeze().catch(() => undefined);
    if (settings.timeSynchronization) await this.checkTime(tr === "first-contact" ? "contact" : "contact-restored", false);
    if (settings.keyValuePairExchange) await this.syncKvp().catch(() => undefined);
  }

  private async refreshCapabilities(): Promise<void> {
    const info = await this.agent.call("guest-info", undefined, GuestInfo);
    this.agentVersion = guestText(info.version, 64);
    this.commands = new Set(info.supported_commands.filter((c) => c.enabled).map((c) => c.name));
  }

  /** A freeze left behind by a vmhostd that died mid-way (its timer died with it): thaw now. */
  private async recoverFreeze(): Promise<void> {
    if (this.frozen || (this.commands && !this.commands.has("guest-fsfreeze-status"))) return;
    if ((await freezeStatus(this.agent)) !== "frozen") return;
    const n = await thaw(this.agent);
    await killWatchdogs(this.agent);
    this.host.journal("vss-thawed", `VSS: the guest's file systems were left frozen (vmhost stopped while they were); thawed (${n} by this call, the rest by vmhost's watchdog in the guest)`, {
      thawed: n,
      reason: "left-frozen",
    });
    await this.afterThaw();
  }

  /**
   * qemu-ga disables all but a few commands while frozen and says so in guest-info
   * (qga/main.c, ga_freeze_allowlist), so capabilities read during a freeze are read again.
   */
  private async afterThaw(): Promise<void> {
    await this.refreshCapabilities().catch(() => undefined);
  }

  // ---- VM events ---------------------------------------------------------------------------

  /** Supervisor state changes: resume is when the guest clock has to catch up. */
  onVmState(state: string): void {
    if (state === "Paused") this.pausedSeen = true;
    else if (state === "Running" && this.pausedSeen) {
      this.pausedSeen = false;
      this.heartbeat.grace(Date.now());
      if (this.host.settings().timeSynchronization) void this.checkTime("resume", true);
    }
  }

  onRestored(): void {
    this.pausedSeen = false;
    this.heartbeat.grace(Date.now());
    if (this.host.settings().timeSynchronization) void this.checkTime("restore", true);
  }

  /** The guest was reset: its agent restarts, and what it said before no longer holds. */
  onGuestReset(): void {
    this.agent.desync();
    this.heartbeat.reset(Date.now());
    this.commands = undefined;
    this.guestItems = undefined;
    this.externalItems = undefined;
    if (this.frozen) {
      clearTimeout(this.frozen.timer);
      this.frozen = undefined; // a reset thaws everything
    }
  }

  // ---- time synchronization ----------------------------------------------------------------

  /**
   * Measure the drift and set the guest clock when it is beyond the limit, or always when
   * forced (after resume and restore, the guest clock has stood still). Each correction is an event.
   */
  async checkTime(reason: string, force: boolean): Promise<void> {
    this.lastTimeCheck = Date.now();
    try {
      // After a resume the agent may need a moment; give it a few beats' worth of tries.
      const tries = force ? 5 : 1;
      for (let i = 0; ; i++) {
        try {
          const d = await measureDrift(this.agent);
          if (!force && !needsCorrection(d)) {
            this.timeNote = `in sync (${formatDrift(d.driftMs)})`;
            return;
          }
          await setGuestTime(this.agent);
          const after = await measureDrift(this.agent).catch(() => undefined);
          this.timeNote = `corrected ${new Date().toISOString()} (${reason}): was ${formatDrift(d.driftMs)}`;
          this.host.journal("time-corrected", `Time Synchronization: guest clock set from the host (${reason}); it was ${formatDrift(d.driftMs)}`, {
            reason,
            driftMs: Math.round(d.driftMs),
            uncertaintyMs: Math.round(d.uncertaintyMs),
            ...(after ? { driftAfterMs: Math.round(after.driftMs) } : {}),
          });
          return;
        } catch (err) {
          if (i + 1 >= tries || this.closed) throw err;
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    } catch (err) {
      this.timeNote = `error: ${guestText((err as Error).message, 160)}`;
      if (Date.now() - this.lastTimeErrorAt > 300_000) {
        this.lastTimeErrorAt = Date.now();
        this.host.journal("time-sync-failed", `Time Synchronization: ${guestText((err as Error).message, 200)}`, { reason });
      }
    }
  }

  // ---- key-value pair exchange ----------------------------------------------------------------

  /**
   * Make the guest's external pool hold exactly the host's items, and read the guest pool;
   * changes the guest made are journaled.
   */
  syncKvp(): Promise<{ external: KvpItem[]; guest: DecodedPool }> {
    return this.kvpSerial.run(async () => {
      this.lastKvpPoll = Date.now();
      const want = this.host.hostKvpItems();
      const ext = await readPool(this.agent, "external");
      if (!sameItems(ext.items, want) || !ext.exists) {
        await this.writePoolCreatingDir("external", want);
        // qemu-ga creates files 0666; hv_kvp_daemon's pools are 0644.
        if (!ext.exists) await execOk(this.agent, "/bin/sh", ["-c", 'chmod 0644 "$1"', "vmhost-kvp-mode", poolPath("external")]).catch(() => undefined);
        if (this.externalItems === undefined && want.length) {
          this.host.journal("kvp-delivered", `KVP: ${want.length} host item(s) written to the guest's external pool`, { keys: want.map((i) => i.key) });
        }
      }
      this.externalItems = want;
      const guest = await readPool(this.agent, "guest");
      if (this.guestItems) {
        const d = diffItems(this.guestItems, guest.items);
        if (d.added.length || d.changed.length || d.removed.length) {
          this.host.journal("kvp-guest-changed", `KVP: the guest changed its pool (${[...d.added.map((k) => `+${k}`), ...d.changed.map((k) => `~${k}`), ...d.removed.map((k) => `-${k}`)].join(" ").slice(0, 400)})`, d);
        }
      }
      this.guestItems = guest.items;
      this.kvpNote = `${want.length} host item(s) delivered, ${guest.items.length} guest item(s)${guest.invalid ? `, ${guest.invalid} unreadable record(s) skipped` : ""}`;
      return { external: want, guest };
    });
  }

  private async writePoolCreatingDir(pool: "external" | "guest", items: KvpItem[]): Promise<void> {
    try {
      await writePool(this.agent, pool, items);
    } catch (err) {
      if (!(err instanceof GuestAgentError) || !/No such file or directory/.test(err.message)) throw err;
      // hv_kvp_daemon makes this folder (0755) when it starts; a guest without it gets it from us.
      await execOk(this.agent, "/bin/sh", ["-c", 'mkdir -p -m 0755 "$1"', "vmhost-kvp", KVP_DIR]);
      await writePool(this.agent, pool, items);
    }
  }

  async intrinsic(): Promise<Record<IntrinsicKey, string>> {
    await this.requireContact("Key-Value Pair Exchange");
    const opt = async <T>(cmd: string, schema: z.ZodType<T>): Promise<T | undefined> => {
      try {
        return await this.agent.call(cmd, undefined, schema);
      } catch (err) {
        if (err instanceof GuestAgentError) return undefined; // the guest does not offer it
        throw err;
      }
    };
    const os = await opt("guest-get-osinfo", OsInfo);
    const hostName = (await opt("guest-get-host-name", HostName))?.["host-name"];
    const interfaces = await opt("guest-network-get-interfaces", NetworkInterfaces);
    if (!this.agentVersion) await this.refreshCapabilities().catch(() => undefined);
    return intrinsicItems({ os, hostName, interfaces, agentVersion: this.agentVersion });
  }

  async guestPool(): Promise<DecodedPool> {
    await this.requireContact("Key-Value Pair Exchange");
    return (await this.syncKvp()).guest;
  }

  // ---- shutdown -----------------------------------------------------------------------------

  /** Ask the guest to shut down through its agent; false when the Shutdown service cannot (then ACPI is used). */
  async requestShutdown(): Promise<boolean> {
    if (!this.host.settings().shutdown || this.heartbeat.primaryStatus !== "OK") return false;
    if (this.commands && !this.commands.has("guest-shutdown")) return false;
    try {
      await this.agent.call("guest-shutdown", { mode: "powerdown" }, AnyReply, { noReplyOnSuccess: true, timeoutMs: 2000 });
      return true;
    } catch (err) {
      this.host.journal("shutdown-agent-failed", `Shutdown: the guest agent refused (${guestText((err as Error).message, 200)}); using ACPI`);
      return false;
    }
  }

  // ---- VSS ------------------------------------------------------------------------------------

  async freeze(timeoutMs = DEFAULT_FREEZE_MS): Promise<{ frozen: number; thawBy: string; watchdogSeconds: number }> {
    if (!this.host.settings().vss) throw new IntegrationError("service-disabled", `the VSS integration service is disabled for VM "${this.host.vmName}"`);
    await this.requireContact("VSS");
    if (this.frozen) throw new IntegrationError("invalid-state", "the guest's file systems are already frozen");
    if (this.copying) throw new IntegrationError("invalid-state", "a file copy into the guest is in progress");
    const ms = Math.min(Math.max(timeoutMs, 1000), MAX_FREEZE_MS);
    this.watchdogOk ??= await canRunWatchdog(this.agent);
    if (!this.watchdogOk) {
      throw new IntegrationError(
        "unsupported",
        "the guest cannot run vmhost's thaw watchdog (it needs guest-exec, sh, sleep and fsfreeze in the guest), so it is not frozen: a freeze must be sure to end",
      );
    }
    const r = await freeze(this.agent, ms);
    const since = Date.now();
    const f: FrozenState = { since, thawBy: since + ms, count: r.frozen, timer: setTimeout(() => void this.forceThaw(f), ms) };
    f.timer.unref();
    this.frozen = f;
    const thawBy = new Date(since + ms).toISOString();
    this.host.journal("vss-frozen", `VSS: ${r.frozen} file system(s) frozen; thawed by ${thawBy} at the latest`, {
      frozen: r.frozen,
      thawBy,
      watchdogSeconds: r.watchdogSeconds,
    });
    return { frozen: r.frozen, thawBy, watchdogSeconds: r.watchdogSeconds };
  }

  /**
   * Thaw on request. When the agent does not answer, the freeze stays recorded and its deadline
   * (or an overdue thaw's retries) still applies. Capabilities are read again afterwards.
   * Returns how many file systems this call thawed and whether vmhost had frozen them.
   */
  async thaw(reason: "request" = "request"): Promise<{ thawed: number; wasFrozen: boolean }> {
    const f = this.frozen;
    const n = await thaw(this.agent);
    this.endFreeze(f);
    await killWatchdogs(this.agent);
    if (f || n > 0) {
      const held = f ? `${((Date.now() - f.since) / 1000).toFixed(1)} s` : "?";
      const late = f?.overdueSince !== undefined ? ` (the thaw was overdue since ${new Date(f.overdueSince).toISOString()})` : "";
      this.host.journal("vss-thawed", `VSS: ${n} file system(s) thawed after ${held}${late}`, {
        thawed: n,
        reason,
        ...(f?.overdueSince !== undefined ? { overdueSince: new Date(f.overdueSince).toISOString() } : {}),
      });
    }
    await this.afterThaw();
    return { thawed: n, wasFrozen: !!f };
  }

  private endFreeze(f: FrozenState | undefined): void {
    if (!f) return;
    clearTimeout(f.timer);
    if (this.frozen === f) this.frozen = undefined;
  }

  /**
   * The freeze's deadline passed and nobody thawed: thaw, and when the agent does not answer,
   * journal "vss-thaw-overdue" once and try again every thawRetryIntervalMs until it does (or
   * the freeze ends otherwise: a thaw request, a guest reset, the session closing). The guest's
   * own watchdog may thaw first; the answer to a late thaw then counts 0 file systems.
   */
  private async forceThaw(f: FrozenState): Promise<void> {
    if (f.forcing) return;
    f.forcing = true;
    while (!this.closed && this.frozen === f) {
      let n: number | undefined;
      let why = "";
      try {
        n = await thaw(this.agent, this.t.thawAttemptTimeoutMs);
      } catch (err) {
        why = guestText((err as Error).message, 200);
        // An error answer: the agent is alive; what counts is whether the guest is still frozen.
        if (err instanceof GuestAgentError && (await freezeStatus(this.agent).catch(() => undefined)) === "thawed") n = 0;
      }
      if (this.closed || this.frozen !== f) return;
      if (n !== undefined) {
        this.endFreeze(f);
        await killWatchdogs(this.agent);
        const held = `${((Date.now() - f.since) / 1000).toFixed(1)} s`;
        const rest = n < f.count ? `; the rest had been thawed by vmhost's watchdog in the guest` : "";
        this.host.journal(
          "vss-thaw-forced",
          f.overdueSince !== undefined
            ? `VSS: the guest agent answers again; vmhost thawed ${n} file system(s) after ${held}, the thaw having been overdue since ${new Date(f.overdueSince).toISOString()}${rest}`
            : `VSS: nobody thawed within the limit; vmhost thawed ${n} file system(s) after ${held}`,
          {
            thawed: n,
            reason: "timeout",
            ...(f.overdueSince !== undefined ? { overdueSince: new Date(f.overdueSince).toISOString(), overdueMs: Date.now() - f.overdueSince } : {}),
          },
        );
        await this.afterThaw();
        return;
      }
      if (f.overdueSince === undefined) {
        f.overdueSince = f.thawBy;
        const thawBy = new Date(f.thawBy).toISOString();
        this.host.journal(
          "vss-thaw-overdue",
          `VSS: the guest's file systems were due to be thawed by ${thawBy}, but the thaw failed (${why}); vmhost retries it every ${this.t.thawRetryIntervalMs / 1000} s until the guest agent answers`,
          { thawBy, frozenSince: new Date(f.since).toISOString(), error: why },
        );
      }
      await new Promise<void>((r) => setTimeout(r, this.t.thawRetryIntervalMs).unref());
    }
  }

  /**
   * The agent's view of the freeze plus vmhost's: `thawOverdueSince` (ISO time) when the thaw
   * at the deadline has gone unanswered and is being retried.
   */
  async vssStatus(): Promise<{ status: "frozen" | "thawed"; frozenByVmhost: boolean; since?: string; thawBy?: string; count?: number; thawOverdueSince?: string }> {
    await this.requireContact("VSS");
    const status = await freezeStatus(this.agent);
    const f = this.frozen;
    return {
      status,
      frozenByVmhost: !!f,
      ...(f ? { since: new Date(f.since).toISOString(), thawBy: new Date(f.thawBy).toISOString(), count: f.count } : {}),
      ...(f?.overdueSince !== undefined ? { thawOverdueSince: new Date(f.overdueSince).toISOString() } : {}),
    };
  }

  // ---- guest service interface ------------------------------------------------------------

  async copyFile(source: string, destination: string, opts: CopyOptions): Promise<CopyResult> {
    if (!this.host.settings().guestServiceInterface) {
      throw new IntegrationError(
        "service-disabled",
        `the Guest Service Interface integration service is disabled for VM "${this.host.vmName}" (Hyper-V's default); enable it with: vmhost integration enable ${this.host.vmName} "Guest Service Interface"`,
      );
    }
    await this.requireContact("Guest Service Interface");
    if (this.frozen) throw new IntegrationError("invalid-state", "the guest's file systems are frozen (VSS); thaw them first");
    this.copying++;
    try {
      const r = await copyFileToGuest(this.agent, source, destination, opts);
      this.lastCopy = r;
      this.host.journal("file-copied", `Guest Service Interface: ${source} copied to ${destination} (${r.bytes} bytes, SHA-256 verified by ${r.verifiedBy})`, {
        source,
        destination,
        bytes: r.bytes,
        sha256: r.sha256,
        verifiedBy: r.verifiedBy,
        seconds: r.seconds,
      });
      return r;
    } catch (err) {
      this.host.journal("file-copy-failed", `Guest Service Interface: copying ${source} to ${destination} failed: ${guestText((err as Error).message, 300)}`, {
        source,
        destination,
      });
      throw err;
    } finally {
      this.copying--;
    }
  }

  // ---- status -----------------------------------------------------------------------------

  /** Contact now: one beat is tried first when the last one failed (or none was made yet). */
  private async requireContact(service: string): Promise<void> {
    if (this.host.vmState() !== "Running") throw new IntegrationError("invalid-state", `VM "${this.host.vmName}" is ${this.host.vmState()}; ${service} needs it Running`);
    if (this.heartbeat.primaryStatus !== "OK") await this.work();
    if (this.heartbeat.primaryStatus !== "OK") {
      throw new IntegrationError("no-contact", `${service}: the guest agent of VM "${this.host.vmName}" does not answer (${this.heartbeat.describe(Date.now())})`, 503);
    }
  }

  heartbeatDetail(): string {
    const state = this.host.vmState();
    const d = this.heartbeat.describe(Date.now());
    return state === "Running" ? d : `${d}; the VM is ${state}, so no beats are sent`;
  }

  statuses(): ServiceStatus[] {
    const settings = this.host.settings();
    const f = this.frozen;
    const details: Partial<Record<ServiceKey, string>> = {
      heartbeat: this.heartbeatDetail(),
      keyValuePairExchange: this.kvpNote || undefined,
      timeSynchronization: this.timeNote || undefined,
      vss: !f
        ? "thawed"
        : f.overdueSince !== undefined
          ? `thaw overdue since ${new Date(f.overdueSince).toISOString()}: frozen (${f.count} file system(s)) since ${new Date(f.since).toISOString()}; vmhost retries the thaw until the guest agent answers`
          : `frozen (${f.count} file system(s)) since ${new Date(f.since).toISOString()}, thawed by ${new Date(f.thawBy).toISOString()} at the latest`,
      shutdown: "shutdown requests go through the guest agent",
      guestServiceInterface: this.lastCopy ? `last copy: ${this.lastCopy.destination} (${this.lastCopy.bytes} bytes, verified)` : undefined,
    };
    if (this.heartbeat.primaryStatus !== "OK") {
      details.heartbeat = this.heartbeatDetail();
      for (const k of ["keyValuePairExchange", "timeSynchronization", "shutdown", "guestServiceInterface"] as const) delete details[k];
      // An overdue thaw is the one thing to say about VSS while the agent is silent.
      if (f?.overdueSince === undefined) delete details.vss;
    }
    return SERVICES.map((def) =>
      serviceStatus(def, settings[def.key], { vmState: this.host.vmState(), contact: this.heartbeat.primaryStatus, commands: this.commands, frozen: !!f, details }),
    );
  }
}

export { KvpError };
