import { spawn } from "node:child_process";
import { request, type RequestOptions } from "node:http";
import { openSync, closeSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { hostLayout } from "../home/layout.js";
import { VmhostError } from "../util/errors.js";

const DAEMON = join(dirname(fileURLToPath(import.meta.url)), "daemon.js");

/** A client of vmhostd over its unix socket; starts the service on demand. */
export class ServiceClient {
  readonly layout = hostLayout();

  /** Options of an HTTP request to vmhostd, with its JSON body. */
  requestOptions(method: string, path: string, payload: string | undefined, timeoutMs = 0): RequestOptions {
    return {
      socketPath: this.layout.serviceSocket,
      method,
      path,
      headers: payload ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {},
      timeout: timeoutMs,
    };
  }

  /** Runs a request; when no service answers on the socket, starts one and runs it once more. */
  async withService<T>(attempt: () => Promise<T>): Promise<T> {
    try {
      return await attempt();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ECONNREFUSED") throw err;
      await this.startService();
      return attempt();
    }
  }

  private raw(method: string, path: string, body?: unknown, timeoutMs = 0): Promise<{ status: number; data: unknown }> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        this.requestOptions(method, path, payload, timeoutMs),
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            try {
              resolve({ status: res.statusCode ?? 500, data: text ? (JSON.parse(text) as unknown) : null });
            } catch {
              reject(new Error(`vmhostd answered with something that is not JSON: ${text.slice(0, 200)}`));
            }
          });
        },
      );
      req.on("error", reject);
      if (payload) req.write(payload);
      req.end();
    });
  }

  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.withService(() => this.raw(method, path, body));
    if (res.status >= 400) {
      const e = (res.data as { error?: { code?: string; message?: string } } | null)?.error;
      throw new VmhostError(e?.code ?? "error", e?.message ?? `vmhostd answered ${res.status}`, res.status);
    }
    return res.data as T;
  }

  async isServiceRunning(): Promise<boolean> {
    try {
      await this.raw("GET", "/v1/vms", undefined, 2000);
      return true;
    } catch {
      return false;
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
}
