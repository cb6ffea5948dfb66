import { isAbsolute } from "node:path";
import { CopyFileError, type CopyResult } from "../guest/copyfile.js";
import { GuestAgentError, GuestAgentUnavailable } from "../guest/agent.js";
import { GuestSession, type SessionTiming } from "../guest/session.js";
import { KvpError, checkKey, checkValue, type KvpItem, type KvpPoolName } from "../guest/kvp.js";
import { SERVICES, defaultSettings, findService, serviceStatus, type ServiceSettings, type ServiceStatus } from "../guest/services.js";
import { GuestSessions } from "../guest/registry.js";
import type { RunPaths } from "../home/vm-home.js";
import { IntegrationServices, type ConfigStore, type VmConfig } from "../model/index.js";
import type { Supervisor } from "../supervisor/supervisor.js";
import { VmhostError, notFound } from "../util/errors.js";
import type { VmChanges } from "./changes.js";

/** The per-VM integration settings with Hyper-V's defaults filled in (old vm.json files have none). */
export function integrationOf(vm: VmConfig): { enabled: ServiceSettings; hostKvpItems: KvpItem[] } {
  const s = IntegrationServices.parse(vm.integrationServices ?? {});
  return { enabled: { ...defaultSettings(), ...s.enabled }, hostKvpItems: s.hostKvpItems.map((i) => ({ ...i })) };
}

export interface IntegrationView {
  vm: string;
  state: string;
  services: ServiceStatus[];
}

/** Errors of the guest layer as the API reports them. */
export function toVmhostError(err: unknown): unknown {
  if (err instanceof KvpError) return new VmhostError("bad-kvp", err.message, 400);
  if (err instanceof CopyFileError) return new VmhostError(`copy-${err.code}`, err.message, err.code === "verify-failed" ? 500 : 409);
  if (err instanceof GuestAgentUnavailable) return new VmhostError("agent-unavailable", err.message, 503);
  if (err instanceof GuestAgentError) return new VmhostError("agent-error", err.message, 502);
  return err;
}

async function mapped<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    throw toVmhostError(err);
  }
}

/**
 * vmhostd's side of the integration services: one GuestSession per running VM (made when the
 * supervisor attaches to a QEMU, closed when it goes), the settings in each VM's configuration,
 * and the operations the API offers.
 */
export class IntegrationManager {
  /** The VM each session belongs to (name kept current), by VM id. */
  private readonly vms = new Map<string, VmConfig>();
  /** Settings cache per VM id, so the heartbeat loop never reads vm.json. */
  private readonly settings = new Map<string, { enabled: ServiceSettings; hostKvpItems: KvpItem[] }>();
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  readonly sessions: GuestSessions;

  constructor(
    deps: { store: ConfigStore; supervisor: Supervisor; changes: VmChanges; sessions: GuestSessions },
    private readonly timing: Partial<SessionTiming> = {},
  ) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.sessions = deps.sessions;
    const sup = this.supervisor;
    sup.on("attached", (vm, run) => this.attach(vm, run));
    sup.on("detached", (vm) => this.detach(vm.id));
    sup.on("state", (vm, state) => this.sessions.get(vm.id)?.onVmState(state));
    sup.on("qmp-event", (vm, ev) => {
      if (ev.event === "RESET") this.sessions.get(vm.id)?.onGuestReset();
    });
    sup.on("vm-event", (ev) => {
      if (ev.type === "restored") this.sessions.get(ev.vmId)?.onRestored();
    });
    // Every committed change: the running session sees the new settings and name at once.
    this.changes.on("committed", (_before, after) => {
      if (!this.sessions.get(after.id)) return;
      this.settings.set(after.id, integrationOf(after));
      this.vms.set(after.id, after);
    });
  }

  private attach(vm: VmConfig, run: RunPaths): void {
    this.detach(vm.id);
    this.settings.set(vm.id, integrationOf(vm));
    this.vms.set(vm.id, vm);
    const sup = this.supervisor;
    const session = new GuestSession(
      {
        vmName: vm.name,
        vmState: () => sup.stateOf(vm) ?? "Off",
        settings: () => this.settings.get(vm.id)?.enabled ?? defaultSettings(),
        hostKvpItems: () => this.settings.get(vm.id)?.hostKvpItems ?? [],
        journal: (type, message, data) => void sup.event({ id: vm.id, name: this.vms.get(vm.id)?.name ?? vm.name }, type, message, data),
      },
      run.agentSocket,
      this.timing,
    );
    this.sessions.set(vm.id, session);
    session.start();
  }

  private detach(id: string): void {
    this.sessions.delete(id)?.close();
    this.vms.delete(id);
  }

  /** The running VM's session, or a clear error. */
  private async sessionOf(ref: string): Promise<{ vm: VmConfig; session: GuestSession }> {
    const vm = await this.store.resolve(ref);
    const s = this.sessions.get(vm.id);
    if (!s) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
    return { vm, session: s };
  }

  /** Change the integration part of a VM's configuration: one change transaction. */
  private async updateConfig(ref: string, fn: (vm: VmConfig, cur: ReturnType<typeof integrationOf>) => void): Promise<VmConfig> {
    const { vm } = await this.changes.change(ref, (ctx) => {
      const cur = integrationOf(ctx.vm);
      fn(ctx.vm, cur);
      ctx.vm.integrationServices = { enabled: cur.enabled, hostKvpItems: cur.hostKvpItems };
    });
    return vm;
  }

  // ---- Get-VMIntegrationService / Enable- / Disable- --------------------------------------------

  async list(ref: string): Promise<IntegrationView> {
    const vm = await this.store.resolve(ref);
    const s = this.sessions.get(vm.id);
    const state = await this.supervisor.state(vm);
    if (s) return { vm: vm.name, state, services: s.statuses() };
    const enabled = integrationOf(vm).enabled;
    return { vm: vm.name, state, services: SERVICES.map((d) => serviceStatus(d, enabled[d.key], { vmState: state, contact: "No Contact", details: {} })) };
  }

  async setEnabled(ref: string, service: string, enabled: boolean): Promise<IntegrationView> {
    const def = findService(service);
    if (!def) throw new VmhostError("bad-request", `no integration service "${service}"; the services are: ${SERVICES.map((s) => s.name).join(", ")}`);
    let changed = false;
    const vm = await this.updateConfig(ref, (_vm, cur) => {
      changed = cur.enabled[def.key] !== enabled;
      cur.enabled[def.key] = enabled;
    });
    if (changed) await this.supervisor.event(vm, enabled ? "integration-enabled" : "integration-disabled", `${def.name} ${enabled ? "enabled" : "disabled"}`, { service: def.name });
    return this.list(vm.id);
  }

  /** For `show`: the heartbeat's status line, while the VM runs. */
  heartbeatOf(vm: { id: string }): { status: string; detail: string } | undefined {
    const s = this.sessions.get(vm.id);
    if (!s) return undefined;
    const hb = s.statuses().find((x) => x.key === "heartbeat");
    return hb ? { status: hb.primaryStatus, detail: hb.detail } : undefined;
  }

  // ---- KVP --------------------------------------------------------------------------------------

  async kvpGet(ref: string, pool?: KvpPoolName): Promise<Partial<Record<KvpPoolName, Record<string, string>>>> {
    const vm = await this.store.resolve(ref);
    const s = this.sessions.get(vm.id);
    const out: Partial<Record<KvpPoolName, Record<string, string>>> = {};
    const toMap = (items: KvpItem[]) => Object.fromEntries(items.map((i) => [i.key, i.value]));
    const kvpOn = integrationOf(vm).enabled.keyValuePairExchange;
    const needGuest = (what: string) => {
      if (!s) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running; the ${what} pool lives in the guest`, 409);
      if (!kvpOn) throw new VmhostError("service-disabled", `the Key-Value Pair Exchange integration service is disabled for VM "${vm.name}"`, 409);
      return s;
    };
    if (!pool || pool === "external") out.external = toMap(integrationOf(vm).hostKvpItems);
    if (pool === "intrinsic" || (!pool && s && kvpOn)) out.intrinsic = await mapped(needGuest("intrinsic").intrinsic());
    if (pool === "guest" || (!pool && s && kvpOn)) out.guest = toMap((await mapped(needGuest("guest").guestPool())).items);
    return out;
  }

  async kvpSet(ref: string, key: string, value: string): Promise<{ key: string; value: string; delivered: boolean; note?: string }> {
    await mapped(Promise.resolve().then(() => (checkKey(key), checkValue(value))));
    const vm = await this.updateConfig(ref, (_vm, cur) => {
      const i = cur.hostKvpItems.findIndex((x) => x.key === key);
      if (i >= 0) cur.hostKvpItems[i]!.value = value;
      else cur.hostKvpItems.push({ key, value });
      if (cur.hostKvpItems.length > 1024) throw new VmhostError("too-many", "a VM holds at most 1024 host KVP items");
    });
    const r = await this.deliver(vm);
    await this.supervisor.event(vm, "kvp-set", `KVP: host item "${key}" set${r.delivered ? " and delivered to the guest" : ""}`, { key, delivered: r.delivered });
    return { key, value, ...r };
  }

  async kvpRemove(ref: string, key: string): Promise<{ key: string; removed: boolean; delivered: boolean; note?: string }> {
    let removed = false;
    const vm = await this.updateConfig(ref, (_vm, cur) => {
      const i = cur.hostKvpItems.findIndex((x) => x.key === key);
      if (i >= 0) {
        cur.hostKvpItems.splice(i, 1);
        removed = true;
      }
    });
    if (!removed) throw notFound(`host KVP item "${key}" on VM "${vm.name}"`);
    const r = await this.deliver(vm);
    await this.supervisor.event(vm, "kvp-removed", `KVP: host item "${key}" removed${r.delivered ? " from the guest's pool" : ""}`, { key, delivered: r.delivered });
    return { key, removed, ...r };
  }

  /** Write the external pool now when the guest is reachable; otherwise it is written at the next contact. */
  private async deliver(vm: VmConfig): Promise<{ delivered: boolean; note?: string }> {
    const s = this.sessions.get(vm.id);
    if (!s) return { delivered: false, note: "the VM is not running; the item reaches the guest when it next runs" };
    if (!integrationOf(vm).enabled.keyValuePairExchange) return { delivered: false, note: "Key-Value Pair Exchange is disabled for this VM" };
    if (s.heartbeat.primaryStatus !== "OK") return { delivered: false, note: "the guest agent does not answer now; the item is delivered when it does" };
    try {
      await s.syncKvp();
      return { delivered: true };
    } catch (err) {
      return { delivered: false, note: `writing the guest's pool failed (${(err as Error).message}); it is retried` };
    }
  }

  // ---- Copy-VMFile ----------------------------------------------------------------------------

  async copyFile(
    name: string,
    req: { source: string; destination: string; createFullPath: boolean; force: boolean },
    onProgress?: (done: number, total: number) => void,
  ): Promise<CopyResult> {
    if (!isAbsolute(req.source)) throw new VmhostError("bad-request", "the source must be an absolute host path");
    const { session } = await this.sessionOf(name);
    return mapped(session.copyFile(req.source, req.destination, { createFullPath: req.createFullPath, force: req.force, onProgress }));
  }

  // ---- VSS ------------------------------------------------------------------------------------

  async freeze(name: string, timeoutMs?: number) {
    const { session } = await this.sessionOf(name);
    return mapped(session.freeze(timeoutMs));
  }

  async thaw(name: string) {
    const { session } = await this.sessionOf(name);
    return mapped(session.thaw("request"));
  }

  async vssStatus(name: string) {
    const { session } = await this.sessionOf(name);
    return mapped(session.vssStatus());
  }

  /** For checkpoints: run fn with the guest's file systems frozen; the thaw always follows. */
  async withGuestFrozen<T>(name: string, fn: () => Promise<T>, timeoutMs?: number): Promise<T> {
    await this.freeze(name, timeoutMs);
    try {
      return await fn();
    } finally {
      await this.thaw(name).catch(() => undefined);
    }
  }
}
