import { readFile } from "node:fs/promises";
import { createServer, type Server } from "node:https";
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { writeFileAtomic } from "../../util/atomic.js";
import { VmhostError } from "../../util/errors.js";
import { buildApp, closeApp, DEFAULT_LIMITS, serverOptions, type Handlers, type ListenerControl, type ServerDeps, type ServerLimits } from "./app.js";

/** "host:port" as `vmhost service listen` takes it: ":8443" (every address), "127.0.0.1:8443", "[::1]:8443", "8443"; port 0 picks a free one (tests). */
export function parseListenAddress(text: string): { host: string | undefined; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*))?:?(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[3]);
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new VmhostError("bad-address", `"${text}" is not an address to listen on; give ":8443", "127.0.0.1:8443" or "[::1]:8443"`, 400);
  }
  const host = m[1] ?? (m[2] ? m[2] : undefined);
  return { host, port };
}

const ListenFile = z.object({ address: z.string().nullable() });

/**
 * vmhostd's HTTPS listener (off by default): TLS 1.3 only, a client certificate is asked for but
 * checked by vmhostd against its trust store (self-signed client certificates are the norm, so
 * there is no CA to verify against), the server certificate from the access store. The address
 * is kept in `$VMHOST_HOME/host/listen.json`, so a restarted vmhostd listens again.
 */
export class HttpsListener implements ListenerControl {
  private server?: Server;
  private app?: FastifyInstance;
  private address: string | null = null;
  private lastError?: string;

  constructor(
    private readonly deps: Omit<ServerDeps, "listener">,
    private readonly handlers: Handlers,
    private readonly file: string,
    private readonly limits: ServerLimits = DEFAULT_LIMITS,
  ) {}

  /** Listens again where the last vmhostd listened; a failure is logged and kept for `view`, not fatal. */
  async restore(): Promise<void> {
    const text = await readFile(this.file, "utf8").catch(() => "");
    if (!text) return;
    const saved = ListenFile.safeParse(JSON.parse(text));
    if (!saved.success || !saved.data.address) return;
    this.address = saved.data.address;
    try {
      await this.start(saved.data.address);
    } catch (err) {
      this.lastError = (err as Error).message;
      this.deps.log(`HTTPS listener on ${saved.data.address} not started: ${this.lastError}`);
    }
  }

  async view() {
    const tls = await this.deps.access.serverTls();
    const bound = this.server?.listening ? this.server.address() : null;
    const port = bound && typeof bound === "object" ? bound.port : null;
    return { address: this.address, listening: port !== null, port, fingerprint: tls.fingerprint, ...(this.lastError ? { error: this.lastError } : {}) };
  }

  async listen(address: string) {
    parseListenAddress(address);
    await this.stop();
    await this.start(address);
    this.address = address;
    this.lastError = undefined;
    await writeFileAtomic(this.file, JSON.stringify({ address }) + "\n", 0o600);
    return this.view();
  }

  async unlisten() {
    await this.stop();
    this.address = null;
    this.lastError = undefined;
    await writeFileAtomic(this.file, JSON.stringify({ address: null }) + "\n", 0o600);
    return this.view();
  }

  /** True while the HTTPS listener serves (an idle vmhostd that listens does not exit). */
  isListening(): boolean {
    return this.server?.listening ?? false;
  }

  /** Stops listening (vmhostd's shutdown); the saved address stays. */
  async close(): Promise<void> {
    await this.stop();
  }

  private async start(address: string): Promise<void> {
    const { host, port } = parseListenAddress(address);
    const tls = await this.deps.access.serverTls();
    const server = createServer({
      ...serverOptions(this.limits),
      key: tls.key,
      cert: tls.cert,
      minVersion: "TLSv1.3",
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: this.limits.headersTimeoutMs,
      ALPNProtocols: ["http/1.1"],
    });
    const app = await buildApp({ ...this.deps, listener: this }, this.handlers, "https", server, this.limits);
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err: NodeJS.ErrnoException) =>
        reject(new VmhostError("listen-failed", `cannot listen on ${address}: ${err.code === "EADDRINUSE" ? "the port is in use" : err.message}`, 409)),
      );
      server.listen({ port, ...(host ? { host } : {}) }, () => resolve());
    }).catch(async (err) => {
      await closeApp(app, server).catch(() => undefined);
      throw err;
    });
    server.on("error", (err) => this.deps.log(`HTTPS listener: ${err.message}`));
    // A failed TLS handshake is the client's problem, not the service's.
    server.on("tlsClientError", () => undefined);
    this.server = server;
    this.app = app;
    this.deps.log(`listening on https://${address} (TLS 1.3; server certificate SHA-256 ${tls.fingerprint})`);
  }

  private async stop(): Promise<void> {
    const app = this.app;
    const server = this.server;
    this.app = undefined;
    this.server = undefined;
    if (app && server) await closeApp(app, server);
  }
}
