import type { GuestSession } from "./session.js";

/**
 * The guest sessions of the running VMs, by VM id. Made before the supervisor and handed to it
 * (as its GuestPort) and to the integration services, which fill it as QEMUs come and go; so
 * nothing is wired in after construction.
 */
export class GuestSessions {
  private readonly sessions = new Map<string, GuestSession>();

  get(vmId: string): GuestSession | undefined {
    return this.sessions.get(vmId);
  }

  set(vmId: string, session: GuestSession): void {
    this.sessions.set(vmId, session);
  }

  delete(vmId: string): GuestSession | undefined {
    const s = this.sessions.get(vmId);
    this.sessions.delete(vmId);
    return s;
  }

  /** The Shutdown integration service: true when the guest agent took the request. */
  async requestShutdown(vmId: string): Promise<boolean> {
    const s = this.sessions.get(vmId);
    return s ? s.requestShutdown() : false;
  }

  /** True while the guest agent answers (the guest is up), for boot diagnostics. */
  isAlive(vmId: string): boolean {
    const hb = this.sessions.get(vmId)?.statuses().find((x) => x.key === "heartbeat");
    return hb !== undefined && hb.primaryStatus === "OK" && hb.detail !== "disabled";
  }
}
