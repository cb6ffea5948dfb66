import { request } from "node:http";
import { VmhostError } from "../util/errors.js";
import type { ServiceClient } from "./client.js";

/**
 * A call whose answer is a stream of JSON lines (copy-file progress, events --follow).
 * A plain JSON answer (an error before the stream began) is turned into a VmhostError.
 */
export async function streamCall(api: ServiceClient, method: string, path: string, body: unknown, onLine: (obj: Record<string, unknown>) => void): Promise<void> {
  await api.withService(() => once(api, method, path, body, onLine));
}

/** Longest line accepted from the service. */
const MAX_LINE = 4 * 1024 * 1024;

function once(api: ServiceClient, method: string, path: string, body: unknown, onLine: (obj: Record<string, unknown>) => void): Promise<void> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      api.requestOptions(method, path, payload),
      (res) => {
        res.setEncoding("utf8");
        const streaming = String(res.headers["content-type"] ?? "").startsWith("application/x-ndjson");
        let buf = "";
        res.on("data", (chunk: string) => {
          buf += chunk;
          if (!streaming) return;
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!line.trim()) continue;
            try {
              onLine(JSON.parse(line) as Record<string, unknown>);
            } catch (err) {
              req.destroy();
              reject(err);
              return;
            }
          }
          if (buf.length > MAX_LINE) {
            req.destroy();
            reject(new Error("vmhostd sent a line that is too long"));
          }
        });
        res.on("end", () => {
          if (streaming) return resolve();
          type Reply = { error?: { code?: string; message?: string } } | null;
          let data: Reply = null;
          try {
            data = buf ? (JSON.parse(buf) as Reply) : null;
          } catch {
            return reject(new Error(`vmhostd answered with something that is not JSON: ${buf.slice(0, 200)}`));
          }
          if ((res.statusCode ?? 500) >= 400 || data?.error) {
            return reject(new VmhostError(data?.error?.code ?? "error", data?.error?.message ?? `vmhostd answered ${res.statusCode}`, res.statusCode ?? 500));
          }
          resolve();
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (payload) req.write(payload);
    req.end();
  });
}
