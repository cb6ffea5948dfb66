import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { VmhostClient, type Api, type Transport } from "../../packages/sdk/src/index.js";
import { unixTransport } from "../../packages/sdk/src/node.js";
import { hostLayout } from "../home/layout.js";
import { VmhostError } from "../util/errors.js";

const DAEMON = join(dirname(fileURLToPath(import.meta.url)), "daemon.js");

const NO_SERVICE = new Set(["ENOENT", "ECONNREFUSED"]);

/**
 * The local client of vmhostd: the SDK over the home's unix socket, starting vmhostd on demand
 * when nothing answers there (vmhostd outlives the CLI). A caller without access to the socket
 * (not root, not in the vmhost group) gets an error that says so.
 */
export class ServiceClient {
  readonly layout = hostLayout();
  readonly sdk: VmhostClient;

  constructor() {
    const inner = unixTransport(this.layout.serviceSocket);
    const transport: Transport = {
      request: (r) => this.withService(() => inner.request(r)),
      websocket: (p) => this.withService(() => inner.websocket(p)),
      close: () => inner.close?.(),
    };
    this.sdk = new VmhostClient(transport);
  }

  /** Typed methods for every route (the SDK's). */
  get api(): Api {
    return this.sdk.api;
  }

  /** Runs a request; when no service answers on the socket, starts one and runs it once more. */
  async withService<T>(attempt: () => Promise<T>): Promise<T> {
    try {
      return await attempt();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EACCES") {
        throw new VmhostError(
          "no-access",
          `you may not use vmhostd's socket ${this.layout.serviceSocket}: run as root or as a member of the vmhost group (usermod -aG vmhost USER, then log in again)`,
          403,
        );
      }
      if (!code || !NO_SERVICE.has(code)) throw err;
      await this.startService();
      return attempt();
    }
  }

  /** A JSON call by method and path (for scripts and benchmarks; the typed `api` is the usual way). */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.sdk.transport.request({
      method,
      path,
      headers: body === undefined ? { accept: "application/json" } : { accept: "application/json", "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    let text = "";
    for await (const c of res.body) text += Buffer.from(c).toString("utf8");
    const data = text ? (JSON.parse(text) as unknown) : null;
    if (res.status >= 400) {
      const e = (data as { error?: { code?: string; message?: string } } | null)?.error;
      throw new VmhostError(e?.code ?? "error", e?.message ?? `vmhostd answered ${res.status}`, res.status);
    }
    return data as T;
  }

  async isServiceRunning(): Promise<boolean> {
    const probe = new VmhostClient(unixTransport(this.layout.serviceSocket));
    try {
      await Promise.race([probe.api.session.whoami(), new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 2000).unref())]);
      return true;
    } catch {
      return false;
    } finally {
      probe.close();
    }
  }

  /** Spawn vmhostd detached (it must outlive this CLI) and wait for its socket. */
  async startService(): Promise<void> {
    mkdirSync(this.layout.home, { recursive: true });
    const logFd = openSync(this.layout.serviceLog, "a");
    try {
      const child = spawn(process.execPath, ["--expose-gc", DAEMON], { detached: true, stdio: ["ignore", logFd, logFd], env: process.env });
      child.unref();
    } finally {
      closeSync(logFd);
    }
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (await this.isServiceRunning()) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new VmhostError("service", `vmhostd did not start; see ${this.layout.serviceLog}`, 500);
  }

  close(): void {
    this.sdk.close();
  }
}
