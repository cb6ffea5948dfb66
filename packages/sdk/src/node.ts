import { X509Certificate } from "node:crypto";
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage, type RequestOptions } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { Readable } from "node:stream";
import { connect as tlsConnect, type PeerCertificate } from "node:tls";
import { WebSocket } from "ws";
import { ApiError, errorFromBody } from "./errors.js";
import { VmhostClient, type HttpRequest, type HttpResponse, type SocketLike, type Transport } from "./client.js";

/**
 * Node transports: the unix socket (local callers; access is the socket's group), and HTTPS with
 * a pinned server certificate and either a client certificate or an API token.
 */

function send(doRequest: typeof httpRequest, base: RequestOptions, r: HttpRequest): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const headers = { ...r.headers };
    if (typeof r.body === "string" || r.body instanceof Uint8Array) headers["content-length"] = String(Buffer.byteLength(r.body));
    const req = doRequest({ ...base, method: r.method, path: r.path, headers, ...(r.signal ? { signal: r.signal } : {}) }, (res: IncomingMessage) => {
      const h: Record<string, string | undefined> = {};
      for (const [k, v] of Object.entries(res.headers)) h[k] = Array.isArray(v) ? v.join(", ") : v;
      resolve({ status: res.statusCode ?? 500, headers: h, body: res });
    });
    req.on("error", reject);
    if (r.body === undefined) req.end();
    else if (typeof r.body === "string" || r.body instanceof Uint8Array) req.end(r.body);
    else {
      const src = Readable.from(r.body);
      src.on("error", (err) => req.destroy(err));
      src.pipe(req);
    }
  });
}

function openSocket(url: string, opts: ConstructorParameters<typeof WebSocket>[2]): Promise<SocketLike> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts);
    ws.binaryType = "nodebuffer";
    ws.once("open", () => resolve(ws as unknown as SocketLike));
    ws.once("unexpected-response", (_req, res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        let body: unknown = null;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          /* not JSON */
        }
        reject(errorFromBody(res.statusCode ?? 500, body));
      });
    });
    ws.once("error", reject);
  });
}

/** vmhostd over its unix socket. */
export function unixTransport(socketPath: string): Transport {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 16 });
  return {
    request: (r) => send(httpRequest, { socketPath, agent }, r),
    websocket: (path) => openSocket(`ws+unix://${socketPath}:${path}`, {}),
    close: () => agent.destroy(),
  };
}

/** What a client needs to reach a remote vmhostd over HTTPS. */
export interface HttpsCredentials {
  /** https://HOST:PORT */
  url: string;
  /** The server's certificate (PEM), pinned: the connection is refused when it presents another. */
  serverCertificate: string;
  /** A client certificate in the server's trust store ... */
  clientKey?: string;
  clientCert?: string;
  /** ... or an API token. */
  token?: string;
}

function pinned(serverCertificate: string) {
  const fingerprint = new X509Certificate(serverCertificate).fingerprint256;
  return {
    ca: [serverCertificate],
    // The certificate is pinned by its fingerprint; its names need not match the host dialled.
    checkServerIdentity: (_host: string, cert: PeerCertificate) =>
      cert.fingerprint256 === fingerprint ? undefined : new Error(`the server presented certificate ${cert.fingerprint256}, not the pinned ${fingerprint}`),
    minVersion: "TLSv1.3" as const,
  };
}

/** vmhostd over HTTPS (TLS 1.3), the server's certificate pinned. */
export function httpsTransport(c: HttpsCredentials): Transport {
  const u = new URL(c.url);
  if (u.protocol !== "https:") throw new TypeError(`${c.url} is not an https:// URL`);
  const tls = { ...pinned(c.serverCertificate), ...(c.clientKey && c.clientCert ? { key: c.clientKey, cert: c.clientCert } : {}) };
  const agent = new HttpsAgent({ keepAlive: true, maxSockets: 16, ...tls });
  const auth: Record<string, string> = c.token ? { authorization: `Bearer ${c.token}` } : {};
  const host = u.hostname.replace(/^\[|\]$/g, "");
  const port = Number(u.port || 443);
  return {
    request: (r) => send(httpsRequest, { host, port, agent }, { ...r, headers: { ...r.headers, ...auth } }),
    websocket: (path) => openSocket(`wss://${u.host}${path}`, { ...tls, headers: auth }),
    close: () => agent.destroy(),
  };
}

/**
 * Fetches the server's certificate over a TLS connection that carries no data, and returns its
 * PEM only when its SHA-256 fingerprint is the expected one (taken from a trust token).
 */
export function fetchPinnedCertificate(url: string, fingerprint: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: u.hostname.replace(/^\[|\]$/g, ""), port: Number(u.port || 443), rejectUnauthorized: false, minVersion: "TLSv1.3", servername: undefined }, () => {
      const cert = s.getPeerCertificate(true);
      s.end();
      if (!cert?.raw) return reject(new ApiError("tls", `${url} presented no certificate`, 0));
      if (cert.fingerprint256 !== fingerprint) {
        return reject(new ApiError("fingerprint-mismatch", `${url} presented certificate ${cert.fingerprint256}, but the trust token names ${fingerprint}: not the server that made the token`, 0));
      }
      resolve(`-----BEGIN CERTIFICATE-----\n${cert.raw.toString("base64").replace(/(.{64})/g, "$1\n").trimEnd()}\n-----END CERTIFICATE-----\n`);
    });
    s.setTimeout(15_000, () => s.destroy(new Error(`no TLS answer from ${url} within 15 s`)));
    s.once("error", (err) => reject(new ApiError("unreachable", `cannot reach ${url}: ${err.message}`, 0)));
  });
}

/** The trust token `vmhost trust add` prints: base64url JSON with the name, the server's fingerprint and the secret. */
export function decodeTrustToken(token: string): { name: string; fingerprint: string; secret: string } {
  try {
    const p = JSON.parse(Buffer.from(token.trim(), "base64url").toString("utf8")) as { v?: number; name?: unknown; fingerprint?: unknown; secret?: unknown };
    if (p.v === 1 && typeof p.name === "string" && typeof p.fingerprint === "string" && typeof p.secret === "string") return { name: p.name, fingerprint: p.fingerprint, secret: p.secret };
  } catch {
    /* fall through */
  }
  throw new ApiError("bad-token", "this is not a trust token printed by `vmhost trust add`", 400);
}

export interface Enrolled {
  url: string;
  serverCertificate: string;
  fingerprint: string;
  clientKey: string;
  clientCert: string;
  name: string;
  role: string;
}

/**
 * Joins a remote vmhostd with a one-time trust token: pins the server certificate named in the
 * token, makes a key and self-signed client certificate (EC P-256, with `selfsigned`), and
 * presents the token's secret once over a connection with that certificate, which the server
 * then trusts.
 */
export async function enroll(url: string, trustToken: string, clientName: string): Promise<Enrolled> {
  const t = decodeTrustToken(trustToken);
  const serverCertificate = await fetchPinnedCertificate(url, t.fingerprint);
  const { generate } = await import("selfsigned");
  const now = new Date(Date.now() - 60_000);
  const made = await generate([{ name: "commonName", value: clientName }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: now,
    notAfterDate: new Date(now.getTime() + 10 * 365 * 86400_000),
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true },
      { name: "extKeyUsage", clientAuth: true },
    ],
  });
  const client = new VmhostClient(httpsTransport({ url, serverCertificate, clientKey: made.private, clientCert: made.cert }));
  try {
    const r = await client.call("trust.redeem", { secret: t.secret });
    return { url, serverCertificate, fingerprint: t.fingerprint, clientKey: made.private, clientCert: made.cert, name: r.name, role: r.role };
  } finally {
    client.close();
  }
}

/** A client over the unix socket. */
export function connectUnix(socketPath: string): VmhostClient {
  return new VmhostClient(unixTransport(socketPath));
}

/** A client over HTTPS. */
export function connectHttps(c: HttpsCredentials): VmhostClient {
  return new VmhostClient(httpsTransport(c));
}
