import type { PrimaryStatus } from "./heartbeat.js";

/**
 * The six Hyper-V integration services (Get-VMIntegrationService), what each needs from the
 * guest agent, and how their status is worked out. Pure: the session supplies the facts.
 */

export type ServiceKey = "guestServiceInterface" | "heartbeat" | "keyValuePairExchange" | "shutdown" | "timeSynchronization" | "vss";

export type ServiceSettings = Record<ServiceKey, boolean>;

export interface ServiceDef {
  key: ServiceKey;
  /** Hyper-V's display name. */
  name: string;
  /** Hyper-V's default: everything on except Guest Service Interface. */
  defaultEnabled: boolean;
  /** qemu-ga commands the service uses; missing ones mean the guest's side is not there. */
  commands: readonly string[];
  aliases: readonly string[];
}

/** In the order Get-VMIntegrationService lists them. */
export const SERVICES: readonly ServiceDef[] = [
  {
    key: "guestServiceInterface",
    name: "Guest Service Interface",
    defaultEnabled: false,
    commands: ["guest-file-open", "guest-file-write", "guest-file-close", "guest-exec", "guest-exec-status"],
    aliases: ["gsi", "guest-service-interface", "guestserviceinterface", "copy-file"],
  },
  { key: "heartbeat", name: "Heartbeat", defaultEnabled: true, commands: ["guest-ping"], aliases: ["heartbeat"] },
  {
    key: "keyValuePairExchange",
    name: "Key-Value Pair Exchange",
    defaultEnabled: true,
    commands: ["guest-file-open", "guest-file-read", "guest-file-write", "guest-file-close"],
    aliases: ["kvp", "key-value-pair-exchange", "keyvaluepairexchange"],
  },
  { key: "shutdown", name: "Shutdown", defaultEnabled: true, commands: ["guest-shutdown"], aliases: ["shutdown"] },
  {
    key: "timeSynchronization",
    name: "Time Synchronization",
    defaultEnabled: true,
    commands: ["guest-get-time", "guest-set-time"],
    aliases: ["timesync", "time", "time-synchronization", "timesynchronization"],
  },
  {
    key: "vss",
    name: "VSS",
    defaultEnabled: true,
    commands: ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fsfreeze-status"],
    aliases: ["vss", "backup", "fsfreeze"],
  },
];

export function defaultSettings(): ServiceSettings {
  return Object.fromEntries(SERVICES.map((s) => [s.key, s.defaultEnabled])) as ServiceSettings;
}

/** A service by Hyper-V name ("Time Synchronization"), key, or alias; case and spacing do not matter. */
export function findService(text: string): ServiceDef | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[\s_-]+/g, "");
  const t = norm(text);
  return SERVICES.find((s) => norm(s.name) === t || norm(s.key) === t || s.aliases.some((a) => norm(a) === t));
}

export interface ServiceFacts {
  /** The VM's state; integration services only have a status while it runs. */
  vmState: string;
  /** Whether the agent answers (the heartbeat monitor's status, kept even when Heartbeat is off). */
  contact: PrimaryStatus;
  /** qemu-ga's enabled commands, once known (guest-info). */
  commands?: ReadonlySet<string>;
  /**
   * vmhost froze the guest's file systems: qemu-ga then disables every command outside its
   * freeze allowlist (qga/main.c ga_freeze_allowlist) until the thaw.
   */
  frozen?: boolean;
  /** Per-service detail from the session (heartbeat age, last correction, freeze state...). */
  details: Partial<Record<ServiceKey, string>>;
}

export interface ServiceStatus {
  name: string;
  key: ServiceKey;
  enabled: boolean;
  /** Empty while the VM is not running, as Hyper-V shows it. */
  primaryStatus: PrimaryStatus | "";
  detail: string;
}

export function serviceStatus(def: ServiceDef, enabled: boolean, f: ServiceFacts): ServiceStatus {
  const base = { name: def.name, key: def.key, enabled };
  if (f.vmState !== "Running" && f.vmState !== "Paused" && f.vmState !== "Stopping") {
    return { ...base, primaryStatus: "", detail: `the VM is ${f.vmState}` };
  }
  // Hyper-V shows a disabled service as OK: nothing is wrong, it is just not offered.
  if (!enabled) return { ...base, primaryStatus: "OK", detail: "disabled" };
  if (f.contact !== "OK") {
    return { ...base, primaryStatus: f.contact, detail: f.details[def.key] ?? (f.contact === "No Contact" ? "the guest agent has not answered" : "the guest agent stopped answering") };
  }
  // While frozen, qemu-ga disables guest-fsfreeze-freeze itself; VSS's state is then the freeze.
  if (f.commands && !(f.frozen && def.key === "vss")) {
    const missing = def.commands.filter((c) => !f.commands!.has(c));
    if (missing.length) {
      const why = f.frozen ? " while the guest's file systems are frozen (VSS)" : "";
      return { ...base, primaryStatus: "No Contact", detail: `the guest agent does not offer ${missing.join(", ")}${why}` };
    }
  }
  return { ...base, primaryStatus: "OK", detail: f.details[def.key] ?? "OK" };
}
