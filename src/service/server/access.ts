import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { Role } from "../../api/roles.js";
import { writeFileAtomic } from "../../util/atomic.js";
import { VmhostError, notFound } from "../../util/errors.js";

/**
 * Who may use vmhostd over HTTPS, kept under `$VMHOST_HOME/host/access/` (folder 0700, files 0600):
 *  - API tokens (tokens.json): a name, a role and the SHA-256 of the secret. The secret is 32
 *    random bytes (node:crypto), shown once; a hash of so much entropy needs no slow KDF
 *    (nothing to brute-force), so a lookup costs one SHA-256.
 *  - trusted client certificates (trust.json): a name, a role and the certificate's SHA-256
 *    fingerprint, added by redeeming a one-time trust token. Pending trust tokens are kept as
 *    the SHA-256 of their secret with an expiry.
 *  - the server's own key and self-signed certificate (tls/), made on first use with the
 *    `selfsigned` package (EC P-256, SHA-256); clients pin its fingerprint.
 * Every change is written through at once and the in-memory maps are what requests are checked
 * against, so a revocation takes effect for the very next request.
 */

const TokenEntry = z.object({ name: z.string(), role: Role, sha256: z.string(), createdAt: z.string(), lastUsedAt: z.string().optional() });
type TokenEntry = z.infer<typeof TokenEntry>;
const TokensFile = z.object({ tokens: z.array(TokenEntry) });
const CertEntry = z.object({ name: z.string(), role: Role, fingerprint: z.string(), addedAt: z.string(), subject: z.string().optional() });
type CertEntry = z.infer<typeof CertEntry>;
const PendingEntry = z.object({ name: z.string(), role: Role, sha256: z.string(), expiresAt: z.string() });
type PendingEntry = z.infer<typeof PendingEntry>;
const TrustFile = z.object({ certificates: z.array(CertEntry), pending: z.array(PendingEntry) });

/** What a trust token carries (base64url JSON): the name, the server's fingerprint to pin, the one-time secret. */
export const TrustTokenPayload = z.object({ v: z.literal(1), name: z.string(), fingerprint: z.string(), secret: z.string(), addresses: z.array(z.string()).optional() });
export type TrustTokenPayload = z.infer<typeof TrustTokenPayload>;

/** Decodes a trust token as `vmhost trust add` printed it; a clear error when it is not one. */
export function decodeTrustToken(token: string): TrustTokenPayload {
  try {
    return TrustTokenPayload.parse(JSON.parse(Buffer.from(token.trim(), "base64url").toString("utf8")));
  } catch {
    throw new VmhostError("bad-token", "this is not a trust token printed by `vmhost trust add`", 400);
  }
}

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");
const secret = () => randomBytes(32).toString("base64url");

/** A certificate's SHA-256 fingerprint as node prints it (uppercase hex pairs joined by colons). */
export function fingerprintOf(pemOrDer: string | Buffer): string {
  return new X509Certificate(pemOrDer).fingerprint256;
}

export interface TlsMaterial {
  key: string;
  cert: string;
  fingerprint: string;
}

/** A key and self-signed certificate (EC P-256, SHA-256, 10 years) for a server or a client. */
export async function makeCertificate(commonName: string, kind: "server" | "client", altNames: string[] = []): Promise<TlsMaterial> {
  const { generate } = await import("selfsigned");
  const notBeforeDate = new Date(Date.now() - 60_000);
  const notAfterDate = new Date(notBeforeDate.getTime() + 10 * 365 * 86400_000);
  const san = altNames.map((n) => (/^[\d.]+$|:/.test(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n }));
  const pems = await generate([{ name: "commonName", value: commonName }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
      { name: "extKeyUsage", serverAuth: kind === "server", clientAuth: kind === "client" },
      ...(san.length ? [{ name: "subjectAltName" as const, altNames: san }] : []),
    ],
  });
  return { key: pems.private, cert: pems.cert, fingerprint: fingerprintOf(pems.cert) };
}

export class AccessStore {
  readonly dir: string;
  private readonly tokensFile: string;
  private readonly trustFile: string;
  private readonly tlsDir: string;
  private tokens = new Map<string, TokenEntry>();
  private certs = new Map<string, CertEntry>();
  private pending: PendingEntry[] = [];
  private tls?: Promise<TlsMaterial>;

  constructor(hostDir: string) {
    this.dir = join(hostDir, "access");
    this.tokensFile = join(this.dir, "tokens.json");
    this.trustFile = join(this.dir, "trust.json");
    this.tlsDir = join(this.dir, "tls");
  }

  async load(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const t = await readJson(this.tokensFile, TokensFile, { tokens: [] });
    this.tokens = new Map(t.tokens.map((e) => [e.sha256, e]));
    const c = await readJson(this.trustFile, TrustFile, { certificates: [], pending: [] });
    this.certs = new Map(c.certificates.map((e) => [e.fingerprint, e]));
    this.pending = c.pending;
  }

  // ---- API tokens -----------------------------------------------------------------------------------

  async addToken(name: string, role: Role): Promise<TokenEntry & { token: string }> {
    if ([...this.tokens.values()].some((t) => t.name === name)) throw new VmhostError("exists", `an API token named "${name}" exists; remove it first or pick another name`, 409);
    const token = `vmh_${secret()}`;
    const entry: TokenEntry = { name, role, sha256: sha256(token), createdAt: new Date().toISOString() };
    this.tokens.set(entry.sha256, entry);
    await this.saveTokens();
    return { ...entry, token };
  }

  /** The token's entry, or undefined: revoked, unknown or malformed tokens are all simply not found. */
  token(token: string): TokenEntry | undefined {
    return this.tokens.get(sha256(token));
  }

  /** A token's entry by the hash of its secret (browser sessions keep only that). */
  tokenByHash(sha: string): TokenEntry | undefined {
    return this.tokens.get(sha);
  }

  listTokens(): { name: string; role: Role; createdAt: string }[] {
    return [...this.tokens.values()].map(({ name, role, createdAt }) => ({ name, role, createdAt }));
  }

  /** Revokes a token: the next request with it is refused. Returns the removed entry. */
  async removeToken(name: string): Promise<TokenEntry> {
    const e = [...this.tokens.values()].find((t) => t.name === name);
    if (!e) throw notFound(`API token "${name}"`);
    this.tokens.delete(e.sha256);
    await this.saveTokens();
    return e;
  }

  // ---- trust store ------------------------------------------------------------------------------------

  /** A one-time trust token for `name`; it carries the server certificate's fingerprint so the client can pin it. */
  async addTrustToken(name: string, role: Role, expiresInSeconds: number): Promise<{ name: string; role: Role; token: string; expiresAt: string }> {
    if ([...this.certs.values()].some((c) => c.name === name) || this.livePending().some((p) => p.name === name)) {
      throw new VmhostError("exists", `a trusted client or pending token named "${name}" exists; remove it first (vmhost trust remove ${name})`, 409);
    }
    const tls = await this.serverTls();
    const s = secret();
    const expiresAt = new Date(Date.now() + expiresInSeconds * 1000).toISOString();
    this.pending = [...this.livePending(), { name, role, sha256: sha256(s), expiresAt }];
    await this.saveTrust();
    const payload: TrustTokenPayload = { v: 1, name, fingerprint: tls.fingerprint, secret: s };
    return { name, role, token: Buffer.from(JSON.stringify(payload)).toString("base64url"), expiresAt };
  }

  /** Redeems a trust token's secret for the certificate the client presented on this TLS connection. */
  async redeem(secretText: string, clientCertDer: Buffer | undefined): Promise<CertEntry> {
    const h = sha256(secretText);
    const p = this.livePending().find((x) => x.sha256 === h);
    if (!p) throw new VmhostError("unauthorized", "this trust token is unknown, used or expired; ask for a new one (vmhost trust add NAME)", 401);
    if (!clientCertDer || clientCertDer.length === 0) throw new VmhostError("no-client-certificate", "present a client certificate on the TLS connection to redeem a trust token", 400);
    const x = new X509Certificate(clientCertDer);
    const entry: CertEntry = { name: p.name, role: p.role, fingerprint: x.fingerprint256, addedAt: new Date().toISOString(), subject: x.subject };
    this.pending = this.livePending().filter((q) => q !== p);
    this.certs.set(entry.fingerprint, entry);
    await this.saveTrust();
    return entry;
  }

  certificate(fingerprint: string): CertEntry | undefined {
    return this.certs.get(fingerprint);
  }

  listTrust(): { certificates: CertEntry[]; pending: { name: string; role: Role; expiresAt: string }[] } {
    return { certificates: [...this.certs.values()], pending: this.livePending().map(({ name, role, expiresAt }) => ({ name, role, expiresAt })) };
  }

  async removeTrust(name: string): Promise<void> {
    const c = [...this.certs.values()].find((x) => x.name === name);
    const before = this.pending.length;
    this.pending = this.pending.filter((p) => p.name !== name);
    if (!c && before === this.pending.length) throw notFound(`trusted client "${name}"`);
    if (c) this.certs.delete(c.fingerprint);
    await this.saveTrust();
  }

  private livePending(): PendingEntry[] {
    const now = Date.now();
    return this.pending.filter((p) => Date.parse(p.expiresAt) > now);
  }

  // ---- the server's certificate ------------------------------------------------------------------------

  /** The server's key and certificate, made on first use and kept. */
  serverTls(): Promise<TlsMaterial> {
    this.tls ??= (async () => {
      await mkdir(this.tlsDir, { recursive: true, mode: 0o700 });
      const keyFile = join(this.tlsDir, "server.key");
      const certFile = join(this.tlsDir, "server.crt");
      const [key, cert] = await Promise.all([readFile(keyFile, "utf8").catch(() => ""), readFile(certFile, "utf8").catch(() => "")]);
      if (key && cert) return { key, cert, fingerprint: fingerprintOf(cert) };
      const made = await makeCertificate(`vmhostd ${hostname()}`, "server", [hostname(), "localhost", "127.0.0.1", "::1"]);
      await writeFileAtomic(keyFile, made.key, 0o600);
      await writeFileAtomic(certFile, made.cert, 0o644);
      return made;
    })();
    this.tls.catch(() => (this.tls = undefined));
    return this.tls;
  }

  private saveTokens(): Promise<void> {
    return writeFileAtomic(this.tokensFile, JSON.stringify({ tokens: [...this.tokens.values()] }, null, 2) + "\n", 0o600);
  }

  private saveTrust(): Promise<void> {
    return writeFileAtomic(this.trustFile, JSON.stringify({ certificates: [...this.certs.values()], pending: this.pending }, null, 2) + "\n", 0o600);
  }
}

async function readJson<T>(file: string, schema: z.ZodType<T>, empty: T): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return empty;
    throw err;
  }
  const r = schema.safeParse(JSON.parse(text));
  if (!r.success) throw new VmhostError("damaged-file", `${file} is damaged (${r.error.issues[0]?.message}); fix or remove it`, 500);
  return r.data;
}
