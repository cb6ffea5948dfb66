import type { HttpResponse, SocketLike, Transport } from "./client.js";

/**
 * A browser transport on fetch(): the session cookie rides along (same origin), and changes carry
 * the CSRF token that login returned (`setCsrf`). WebSockets go to the same origin (cookies are
 * sent with the upgrade).
 */
export function fetchTransport(base = ""): Transport & { setCsrf(token: string | undefined): void } {
  let csrf: string | undefined;
  return {
    setCsrf: (t) => (csrf = t),
    headers: (method): Record<string, string> => (method !== "GET" && csrf ? { "x-csrf-token": csrf } : {}),
    request: async (r): Promise<HttpResponse> => {
      let body: BodyInit | undefined;
      if (typeof r.body === "string" || r.body instanceof Uint8Array) body = r.body as BodyInit;
      else if (r.body) {
        const parts: Uint8Array[] = [];
        for await (const c of r.body) parts.push(c);
        body = new Blob(parts as BlobPart[]);
      }
      const res = await fetch(base + r.path, { method: r.method, headers: r.headers, credentials: "same-origin", ...(body !== undefined ? { body } : {}), ...(r.signal ? { signal: r.signal } : {}) });
      const headers: Record<string, string | undefined> = {};
      res.headers.forEach((v, k) => (headers[k] = v));
      const reader = res.body?.getReader();
      return {
        status: res.status,
        headers,
        body: {
          async *[Symbol.asyncIterator]() {
            if (!reader) return;
            for (;;) {
              const { done, value } = await reader.read();
              if (done) return;
              yield value;
            }
          },
        },
      };
    },
    websocket: (path) =>
      new Promise<SocketLike>((resolve, reject) => {
        const loc = (globalThis as { location?: { protocol: string; host: string } }).location;
        const url = base ? base.replace(/^http/, "ws") + path : `${loc?.protocol === "https:" ? "wss" : "ws"}://${loc?.host}${path}`;
        const ws = new WebSocket(url);
        ws.binaryType = "arraybuffer";
        ws.addEventListener("open", () => resolve(ws as unknown as SocketLike));
        ws.addEventListener("error", () => reject(new Error(`the WebSocket ${path} did not open`)));
      }),
  };
}
