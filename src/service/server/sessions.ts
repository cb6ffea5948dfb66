import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Role } from "../../api/roles.js";

/** The browser session cookie's name. */
export const SESSION_COOKIE = "vmhost_session";
/** The header a browser session sends with every change (double-submit of the value login returned). */
export const CSRF_HEADER = "x-csrf-token";

export interface BrowserSession {
  /** The API token the session was opened with (its hash): revoking the token ends the session. */
  tokenSha256: string;
  tokenName: string;
  role: Role;
  csrf: string;
  expiresAt: number;
}

/**
 * Browser sessions (the web console): opened by logging in with an API token, held in vmhostd's
 * memory only (a restarted vmhostd logs everyone out), idle-expiring after `ttlMs` (30 min by
 * default; every request renews it). The cookie carries a random id; changes need the CSRF token
 * in a header as well, which another site's page cannot read or send (SameSite=Strict too).
 */
export class SessionStore {
  private readonly sessions = new Map<string, BrowserSession>();

  constructor(private readonly ttlMs = 30 * 60_000) {}

  open(tokenSha256: string, tokenName: string, role: Role): { id: string; session: BrowserSession } {
    this.sweep();
    const id = randomBytes(32).toString("base64url");
    const session: BrowserSession = { tokenSha256, tokenName, role, csrf: randomBytes(24).toString("base64url"), expiresAt: Date.now() + this.ttlMs };
    this.sessions.set(hash(id), session);
    return { id, session };
  }

  /** The live session of a cookie value, renewed; undefined when unknown or expired. */
  get(id: string): BrowserSession | undefined {
    const key = hash(id);
    const s = this.sessions.get(key);
    if (!s) return undefined;
    if (s.expiresAt <= Date.now()) {
      this.sessions.delete(key);
      return undefined;
    }
    s.expiresAt = Date.now() + this.ttlMs;
    return s;
  }

  close(id: string): void {
    this.sessions.delete(hash(id));
  }

  /** Ends every session opened with a token (when it is revoked). */
  closeForToken(tokenSha256: string): void {
    for (const [k, s] of this.sessions) if (s.tokenSha256 === tokenSha256) this.sessions.delete(k);
  }

  cookieMaxAgeSeconds(): number {
    return Math.floor(this.ttlMs / 1000);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [k, s] of this.sessions) if (s.expiresAt <= now) this.sessions.delete(k);
  }
}

/** Constant-time comparison of a CSRF header with the session's value. */
export function csrfMatches(session: BrowserSession, header: string | undefined): boolean {
  if (!header) return false;
  const a = Buffer.from(session.csrf);
  const b = Buffer.from(header);
  return a.length === b.length && timingSafeEqual(a, b);
}

function hash(id: string): string {
  return createHash("sha256").update(id).digest("hex");
}
