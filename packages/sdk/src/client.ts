import type { z } from "zod";
import { buildPath, routes, type RouteDef, type RouteId, type RouteInput, type RouteLine, type RouteReply, type Routes } from "../../../src/api/contract.js";
import type { JobView } from "../../../src/api/views.js";
import { ApiError, errorFromBody } from "./errors.js";

/** One HTTP request as the client hands it to a transport. */
export interface HttpRequest {
  method: string;
  /** Path and query, already encoded. */
  path: string;
  headers: Record<string, string>;
  body?: string | Uint8Array | AsyncIterable<Uint8Array>;
  signal?: AbortSignal;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | undefined>;
  body: AsyncIterable<Uint8Array>;
}

/** The part of a WebSocket the SDK relies on (ws's WebSocket in node, the browser's WebSocket). */
export interface SocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "message", fn: (ev: { data: unknown }) => void): void;
  addEventListener(type: "close", fn: (ev: { code: number; reason: string }) => void): void;
  addEventListener(type: "open" | "error", fn: (ev: unknown) => void): void;
}

/** How the client reaches vmhostd: the unix socket, HTTPS (node.ts), or fetch in a browser (fetch.ts). */
export interface Transport {
  request(req: HttpRequest): Promise<HttpResponse>;
  /** Opens a WebSocket on a path (authenticated like every request). */
  websocket(path: string): Promise<SocketLike>;
  /** Headers every request carries (a browser session adds its CSRF token to changes). */
  headers?(method: string): Record<string, string>;
  close?(): void;
}

export interface CallOptions {
  signal?: AbortSignal;
}

/** Bytes to upload: a buffer or any async iterable of chunks (a node Readable, a file stream). */
export type UploadData = Uint8Array | AsyncIterable<Uint8Array>;

type Kind<K extends RouteId> = Routes[K]["kind"];
type Args<K extends RouteId> = {} extends RouteInput<K> ? [input?: RouteInput<K>] : [input: RouteInput<K>];

/** The SDK method of one route, by its kind. */
export type RouteMethod<K extends RouteId> = Kind<K> extends "stream"
  ? (...a: [...Args<K>, opts?: CallOptions]) => AsyncIterable<RouteLine<K>>
  : Kind<K> extends "upload"
    ? (input: RouteInput<K>, data: UploadData, opts?: CallOptions) => Promise<RouteReply<K>>
    : Kind<K> extends "websocket"
      ? (...a: Args<K>) => Promise<SocketLike>
      : (...a: [...Args<K>, opts?: CallOptions]) => Promise<RouteReply<K>>;

type Group<K> = K extends `${infer G}.${string}` ? G : never;
/** Typed methods for every route of the contract, grouped as their ids are: `api.vms.start({ vm: "web" })`. */
export type Api = { [G in Group<RouteId>]: { [K in RouteId as K extends `${G}.${infer M}` ? M : never]: RouteMethod<K> } };

const decoder = () => new TextDecoder();

async function readAll(body: AsyncIterable<Uint8Array>): Promise<string> {
  const d = decoder();
  let s = "";
  for await (const c of body) s += d.decode(c, { stream: true });
  return s + d.decode();
}

/**
 * A client of vmhostd for one transport. `api` has a typed method per route; `call`, `stream`,
 * `upload` and `socket` take a route id. The input is one object holding the route's path
 * parameters, query and body fields (the contract keeps their names apart).
 */
export class VmhostClient {
  readonly api: Api;

  constructor(readonly transport: Transport) {
    const api: Record<string, Record<string, unknown>> = {};
    for (const id of Object.keys(routes) as RouteId[]) {
      const [g, m] = id.split(".") as [string, string];
      const def = routes[id] as RouteDef;
      const group = (api[g] ??= {});
      group[m] =
        def.kind === "stream"
          ? (input?: object, opts?: CallOptions) => this.stream(id as never, input as never, opts)
          : def.kind === "upload"
            ? (input: object, data: UploadData, opts?: CallOptions) => this.upload(id as never, input as never, data, opts)
            : def.kind === "websocket"
              ? (input?: object) => this.socket(id as never, input as never)
              : (input?: object, opts?: CallOptions) => this.call(id as never, input as never, opts);
    }
    this.api = api as unknown as Api;
  }

  /** Splits an input object into path, query string and body by the route's schemas. */
  private prepare(id: RouteId, input: Record<string, unknown> = {}): { def: RouteDef; path: string; body: Record<string, unknown> | undefined } {
    const def = routes[id] as RouteDef;
    const pKeys = Object.keys(def.params.shape);
    const qKeys = Object.keys(def.query.shape);
    const bKeys = Object.keys(def.body.shape);
    const params: Record<string, unknown> = {};
    const query = new URLSearchParams();
    const body: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(input)) {
      if (v === undefined) continue;
      if (pKeys.includes(k)) params[k] = v;
      else if (qKeys.includes(k)) query.set(k, String(v));
      else if (bKeys.includes(k)) body[k] = v;
      else throw new TypeError(`${id} takes no "${k}" (it takes ${[...pKeys, ...qKeys, ...bKeys].join(", ") || "nothing"})`);
    }
    const qs = query.toString();
    return { def, path: buildPath(def.path, params) + (qs ? `?${qs}` : ""), body: bKeys.length ? body : undefined };
  }

  private async send(def: RouteDef, path: string, body: HttpRequest["body"], contentType: string | undefined, opts?: CallOptions): Promise<HttpResponse> {
    const headers: Record<string, string> = { accept: "application/json", ...(this.transport.headers?.(def.method) ?? {}) };
    if (contentType) headers["content-type"] = contentType;
    return this.transport.request({ method: def.method, path, headers, ...(body !== undefined ? { body } : {}), ...(opts?.signal ? { signal: opts.signal } : {}) });
  }

  private async json(res: HttpResponse): Promise<unknown> {
    const text = await readAll(res.body);
    let data: unknown = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      throw new ApiError("bad-reply", `vmhostd answered with something that is not JSON: ${text.slice(0, 200)}`, res.status);
    }
    if (res.status >= 400) throw errorFromBody(res.status, data);
    return data;
  }

  /** A JSON route. */
  async call<K extends RouteId>(id: K, input?: RouteInput<K>, opts?: CallOptions): Promise<RouteReply<K>> {
    const { def, path, body } = this.prepare(id, input as Record<string, unknown>);
    const res = await this.send(def, path, body === undefined ? undefined : JSON.stringify(body), body === undefined ? undefined : "application/json", opts);
    return (await this.json(res)) as RouteReply<K>;
  }

  /** An upload route: the bytes are the request body. */
  async upload<K extends RouteId>(id: K, input: RouteInput<K>, data: UploadData, opts?: CallOptions): Promise<RouteReply<K>> {
    const { def, path } = this.prepare(id, input as Record<string, unknown>);
    const res = await this.send(def, path, data, "application/octet-stream", opts);
    return (await this.json(res)) as RouteReply<K>;
  }

  /** A stream route: its NDJSON lines as they come; an `{type:"error"}` line (or an error reply) throws. */
  async *stream<K extends RouteId>(id: K, input?: RouteInput<K>, opts?: CallOptions): AsyncIterable<RouteLine<K>> {
    const { def, path, body } = this.prepare(id, input as Record<string, unknown>);
    const res = await this.send(def, path, body === undefined ? undefined : JSON.stringify(body), body === undefined ? undefined : "application/json", opts);
    if (res.status >= 400 || !String(res.headers["content-type"] ?? "").startsWith("application/x-ndjson")) {
      await this.json(res);
      return;
    }
    const d = decoder();
    let buf = "";
    for await (const chunk of res.body) {
      buf += d.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        const obj = JSON.parse(line) as { type?: string; error?: { code: string; message: string; rule?: string } };
        if (obj.type === "error" && obj.error) throw new ApiError(obj.error.code, obj.error.message, 500, obj.error.rule);
        yield obj as RouteLine<K>;
      }
      if (buf.length > 4 * 1024 * 1024) throw new ApiError("bad-reply", "vmhostd sent a line that is too long", 500);
    }
  }

  /** A WebSocket route (the consoles). */
  async socket<K extends RouteId>(id: K, input?: RouteInput<K>): Promise<SocketLike> {
    const { path } = this.prepare(id, input as Record<string, unknown>);
    return this.transport.websocket(path);
  }

  /**
   * Follows a job until it ends, calling `onProgress` at each change; resolves to the ended job
   * (whatever its state: check `state`), rejects only when the stream itself fails.
   */
  async followJob(id: string, onProgress?: (job: JobView) => void, opts?: CallOptions): Promise<JobView> {
    let last: JobView | undefined;
    for await (const line of this.stream("jobs.follow", { id }, opts)) {
      last = line.job;
      onProgress?.(line.job);
      if (line.job.state !== "running") return line.job;
    }
    if (last && last.state !== "running") return last;
    return this.call("jobs.get", { id });
  }

  /** Waits for a job and returns its result, throwing its error when it failed or was cancelled. */
  async jobResult<T = unknown>(id: string, onProgress?: (job: JobView) => void): Promise<T> {
    const job = await this.followJob(id, onProgress);
    if (job.state === "succeeded") return job.result as T;
    throw new ApiError(job.error?.code ?? job.state, job.error?.message ?? `the job ${job.state}`, 500);
  }

  close(): void {
    this.transport.close?.();
  }
}

/** Validates a reply against the route's schema (tests, and callers that want to be strict). */
export function parseReply<K extends RouteId>(id: K, data: unknown): z.output<Routes[K]["reply"]> {
  return (routes[id] as RouteDef).reply.parse(data) as z.output<Routes[K]["reply"]>;
}
