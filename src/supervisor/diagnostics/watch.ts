import type { EventEmitter } from "node:events";
import type { VmHome } from "../../home/vm-home.js";
import type { VmConfig, VmState } from "../../model/schema.js";
import { readRuntime } from "../records.js";
import type { SupervisorEvents, VmRef } from "../supervisor.js";
import { BootMatcher, CATALOGUE, type Change, type CompiledCatalogue } from "./match.js";
import { readDiagnosisRecord, writeDiagnosisRecord } from "./store.js";
import { factsOf, type Diagnosis } from "./types.js";

/** What the watcher needs from the supervisor (its events plus these). */
export interface DiagnosticsHost extends EventEmitter<SupervisorEvents> {
  home(vm: { id: string }): VmHome;
  event(vm: VmRef, type: string, message: string, data?: Record<string, unknown>): Promise<void>;
  stateOf(vm: { id: string }): VmState | undefined;
  consoleQuietSeconds(vm: { id: string }): number | undefined;
  consolePending?(vm: { id: string }): string | undefined;
}

/** Seconds of console silence before a boot that is not up counts as stalled (VMHOST_STALL_SECONDS; 0 turns it off). */
export const DEFAULT_STALL_SECONDS = 90;

export function stallSecondsFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env["VMHOST_STALL_SECONDS"];
  if (raw === undefined || raw.trim() === "") return DEFAULT_STALL_SECONDS;
  const n = Number(raw);
  return Number.isFinite(n) && n >= 0 ? n : DEFAULT_STALL_SECONDS;
}

interface Session {
  vm: VmConfig;
  home: VmHome;
  matcher: BootMatcher;
  startedAt?: string;
  /** The unterminated console line last looked at. */
  lastPartial?: string;
  /** Writes and events in order, one at a time. */
  queue: Promise<void>;
  ready: Promise<void>;
}

/**
 * Boot diagnostics: follows every running VM's console through the supervisor's events,
 * matches it against the catalogue, watches for a boot that goes silent, and keeps the
 * diagnosis in diagnosis.json (so `show` has it after the VM is off) and in the event journal.
 */
export class BootDiagnostics {
  private readonly sessions = new Map<string, Session>();
  private readonly timer: NodeJS.Timeout;
  private readonly onAttached = (vm: VmConfig): void => this.attach(vm);
  private readonly onLine = (vm: VmRef, line: string): void => this.line(vm.id, line);
  private readonly onDetached = (vm: VmRef): void => void this.sessions.delete(vm.id);
  /** A restored or adopted guest is running already: no stall is judged for it until it is reset. */
  private readonly onVmEvent = (ev: { vmId: string; type: string }): void => {
    if (ev.type === "restored" || ev.type === "adopted") this.sessions.get(ev.vmId)?.matcher.notFromStart();
  };
  /** A reset (by the guest or the host) starts a new boot. */
  private readonly onQmpEvent = (vm: VmRef, ev: { event: string }): void => {
    if (ev.event === "RESET") this.sessions.get(vm.id)?.matcher.newBoot();
  };

  /**
   * `opts.guestAlive` (from the integration services): true while the guest agent answers, so a
   * quiet console of a guest that is up is no stalled boot.
   */
  constructor(
    private readonly host: DiagnosticsHost,
    readonly opts: { stallSeconds?: number; tickMs?: number; catalogue?: CompiledCatalogue; now?: () => Date; guestAlive?: (vmId: string) => boolean } = {},
  ) {
    host.on("attached", this.onAttached).on("console-line", this.onLine).on("detached", this.onDetached).on("qmp-event", this.onQmpEvent).on("vm-event", this.onVmEvent);
    this.timer = setInterval(() => this.tick(), opts.tickMs ?? 2000);
    this.timer.unref();
  }

  get stallSeconds(): number {
    return this.opts.stallSeconds ?? stallSecondsFromEnv();
  }

  close(): void {
    clearInterval(this.timer);
    this.host.off("attached", this.onAttached).off("console-line", this.onLine).off("detached", this.onDetached).off("qmp-event", this.onQmpEvent).off("vm-event", this.onVmEvent);
    this.sessions.clear();
  }

  /** The diagnosis of a VM being watched now (tests; `show` reads diagnosis.json). */
  current(vmId: string): Diagnosis | null | undefined {
    return this.sessions.get(vmId)?.matcher.diagnosis;
  }

  private attach(vm: VmConfig): void {
    const home = this.host.home(vm);
    const s: Session = {
      vm,
      home,
      matcher: new BootMatcher(factsOf(vm), this.opts.catalogue ?? CATALOGUE, this.opts.now),
      queue: Promise.resolve(),
      ready: Promise.resolve(),
    };
    this.sessions.set(vm.id, s);
    // A new start clears the last run's diagnosis; an adopted run (same startedAt) keeps it.
    s.ready = (async () => {
      const rt = await readRuntime(home).catch(() => undefined);
      s.startedAt = rt?.startedAt ?? new Date().toISOString();
      const prev = await readDiagnosisRecord(home.diagnosis).catch(() => undefined);
      if (prev && prev.startedAt === s.startedAt) {
        if (prev.diagnosis && !s.matcher.diagnosis) s.matcher.restore(prev.diagnosis);
      } else if (prev) {
        await writeDiagnosisRecord(home.diagnosis, { startedAt: s.startedAt, diagnosis: null }).catch(() => undefined);
      }
    })();
    s.queue = s.ready;
  }

  private line(vmId: string, text: string): void {
    const s = this.sessions.get(vmId);
    if (s) this.apply(s, s.matcher.line(text));
  }

  /** For every running VM: the unterminated last line is matched, and a quiet console checked for a stall. */
  tick(): void {
    for (const s of this.sessions.values()) {
      if (this.host.stateOf(s.vm) !== "Running") continue;
      const quiet = this.host.consoleQuietSeconds(s.vm);
      if (quiet === undefined) continue;
      if (!s.matcher.guestUp && this.opts.guestAlive?.(s.vm.id)) s.matcher.markUp();
      const pending = this.host.consolePending?.(s.vm) ?? "";
      const changes = pending && pending !== s.lastPartial ? s.matcher.partial(pending) : [];
      s.lastPartial = pending;
      const stalled = s.matcher.stall(quiet, this.stallSeconds, pending);
      this.apply(s, stalled ? [...changes, stalled] : changes);
    }
  }

  private apply(s: Session, changes: Change[]): void {
    if (changes.length === 0) return;
    const current = s.matcher.diagnosis;
    s.queue = s.queue.then(async () => {
      for (const c of changes) {
        if (c.kind === "set") {
          const d = c.diagnosis;
          await this.host.event(s.vm, "diagnosis", `${d.title}: ${d.fix}`, { id: d.id, kind: d.kind, evidence: d.evidence });
        } else {
          await this.host.event(s.vm, "diagnosis-cleared", `diagnosis withdrawn (${c.previous.title}): ${c.reason}`, { id: c.previous.id });
        }
      }
      await writeDiagnosisRecord(s.home.diagnosis, { startedAt: s.startedAt ?? new Date().toISOString(), diagnosis: current }).catch(() => undefined);
    });
  }

  /** Waits until everything decided so far is written (tests). */
  async settled(vmId: string): Promise<void> {
    await this.sessions.get(vmId)?.queue;
  }
}
