import { realpath } from "node:fs/promises";
import type { IncomingMessage, Server as HttpServer, ServerResponse } from "node:http";
import { resolve, sep } from "node:path";
import type { TLSSocket } from "node:tls";
import websocket from "@fastify/websocket";
import { parseCookie } from "cookie";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { WebSocket } from "ws";
import { z } from "zod";
import { routeIds, routes, type RouteDef, type RouteId } from "../../api/contract.js";
import { roleAllows } from "../../api/roles.js";
import type { AuditEntry, Identity } from "../../api/views.js";
import * as V from "../../api/views.js";
import { VmhostError } from "../../util/errors.js";
import type { VmHost } from "../vmhost.js";
import type { AccessStore } from "./access.js";
import type { AuditLog } from "./audit.js";
import { httpError, zodMessage } from "./errors.js";
import type { JobRegistry } from "./jobs.js";
import { unixPeer } from "./peer.js";
import { CSRF_HEADER, SESSION_COOKIE, csrfMatches, type SessionStore } from "./sessions.js";
import { LineStream } from "./stream.js";

/**
 * vmhostd's HTTP server, built from the API contract (src/api/contract.ts), on Fastify 5.
 *
 * Why Fastify rather than Hono: vmhostd is a Node service whose listeners are node:http (the
 * unix socket) and node:https (TLS 1.3 with client certificates) servers it creates itself;
 * Fastify runs on those directly (serverFactory), exposes the raw request and socket (peer
 * certificate, unix peer, streaming uploads, NDJSON replies), routes WebSocket upgrades through
 * the same hooks as every other request (@fastify/websocket on `ws`, so authentication and role
 * checks run before an upgrade), and has inject() for tests. Hono targets the Fetch API first;
 * on Node it needs an adapter layer, and client certificates, upgrades and raw streams sit behind it.
 *
 * One app is built per transport (the unix socket, the HTTPS listener) from the same routes;
 * the transport decides how a caller is identified:
 *  - unix: every caller is an administrator (access is the socket's 0660 mode and vmhost group).
 *  - https: a trusted client certificate, `Authorization: Bearer <API token>`, or a browser
 *    session cookie (plus the X-CSRF-Token header on changes).
 * Every request: identify -> role check (contract) -> local-only check -> validate params, query
 * and body (contract; a 400 names the field) -> host paths check -> handler; every change is
 * audited when its reply is done, also when it was refused.
 */

export type Transport = "unix" | "https";

/** The HTTPS listener as the API controls it (listen.ts). */
export interface ListenerControl {
  view(): Promise<ListenerView>;
  listen(address: string): Promise<ListenerView>;
  unlisten(): Promise<ListenerView>;
}
export type ListenerView = z.input<typeof V.ListenView>;

export interface ServerDeps {
  host: VmHost;
  access: AccessStore;
  audit: AuditLog;
  sessions: SessionStore;
  jobs: JobRegistry;
  listener: ListenerControl;
  /** Uploads land here; remote callers may name only files in it. */
  mediaDir: string;
  /** Private scratch space for uploads in flight. */
  uploadDir: string;
  log: (msg: string) => void;
  /** Called on every request (vmhostd's idle exit). */
  onActivity?: () => void;
}

/** What a handler gets besides its input. */
export interface HandlerContext extends ServerDeps {
  caller: Identity;
  transport: Transport;
  route: RouteId;
  req: FastifyRequest;
  reply: FastifyReply;
  /** The credentials behind the caller (session login needs the token's hash). */
  tokenSha256?: string;
  sessionId?: string;
}

export interface Input<K extends RouteId> {
  params: z.output<(typeof routes)[K]["params"]>;
  query: z.output<(typeof routes)[K]["query"]>;
  body: z.output<(typeof routes)[K]["body"]>;
}
type ReplyIn<K extends RouteId> = z.input<(typeof routes)[K]["reply"]>;
type LineIn<K extends RouteId> = z.input<(typeof routes)[K]["line"]>;

export type JsonHandler<K extends RouteId> = (c: HandlerContext, i: Input<K>) => Promise<ReplyIn<K>>;
export type StreamHandler<K extends RouteId> = (c: HandlerContext, i: Input<K>, out: LineStream<LineIn<K>>) => Promise<void>;
export type UploadHandler<K extends RouteId> = (c: HandlerContext, i: Input<K>, data: IncomingMessage) => Promise<ReplyIn<K>>;
/** Runs before the upgrade (and may refuse it with an HTTP error); the function it returns gets the open WebSocket. */
export type SocketHandler<K extends RouteId> = (c: HandlerContext, i: Input<K>) => Promise<(ws: WebSocket) => void>;

export type Handler<K extends RouteId> = (typeof routes)[K]["kind"] extends "stream"
  ? StreamHandler<K>
  : (typeof routes)[K]["kind"] extends "upload"
    ? UploadHandler<K>
    : (typeof routes)[K]["kind"] extends "websocket"
      ? SocketHandler<K>
      : JsonHandler<K>;

/** One handler per route of the contract; the compiler insists on every one. */
export type Handlers = { [K in RouteId]: Handler<K> };

export interface ServerLimits {
  /** Longest time to receive a request's headers (slowloris). */
  headersTimeoutMs: number;
  /** Longest time to receive a JSON request body after its headers. */
  bodyTimeoutMs: number;
  /** A connection silent this long (no bytes either way) is closed; streams and consoles opt out. */
  idleTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  /** Largest JSON body. */
  bodyLimit: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 30_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 256,
  bodyLimit: 1024 * 1024,
};

/**
 * Options the node server must be created with: node enforces headersTimeout only when it checks
 * its connections, every `connectionsCheckingInterval` (30 s by default), so it checks often.
 */
export function serverOptions(limits: ServerLimits): { headersTimeout: number; requestTimeout: number; keepAliveTimeout: number; connectionsCheckingInterval: number } {
  return {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: 0,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(limits.headersTimeoutMs / 2))),
  };
}

interface RequestState {
  id: RouteId;
  def: RouteDef;
  caller?: Identity;
  tokenSha256?: string;
  sessionId?: string;
  /** The websocket handler's second half, set before the upgrade. */
  attach?: (ws: WebSocket) => void;
  input?: Input<RouteId>;
  audited?: boolean;
}

const kState = Symbol("vmhost-request");
type WithState = FastifyRequest & { [kState]?: RequestState };

const peerNames = new WeakMap<object, Promise<string>>();

/** Builds the app for one transport; `server` is the node server it is to run on. */
export async function buildApp(deps: ServerDeps, handlers: Handlers, transport: Transport, server: HttpServer, limits: ServerLimits = DEFAULT_LIMITS): Promise<FastifyInstance> {
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = 0; // uploads may be long; bodies are bounded by bodyTimeoutMs (JSON) and idleTimeoutMs
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.timeout = limits.idleTimeoutMs;
  server.maxConnections = limits.maxConnections;

  const app = Fastify({
    logger: false,
    serverFactory: (handler) => {
      server.on("request", handler);
      return server;
    },
    bodyLimit: limits.bodyLimit,
    forceCloseConnections: true,
    return503OnClosing: true,
    routerOptions: { maxParamLength: 2048 },
    frameworkErrors: (err, _req, reply) => {
      const h = httpError(err);
      void (reply as FastifyReply).code(h.status).send(h.body);
    },
  });
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });

  // Upload routes read the raw request themselves; the parser leaves the stream untouched.
  app.addContentTypeParser("application/octet-stream", (_req, _payload, done) => done(null, undefined));

  app.setErrorHandler((err, req, reply) => {
    const h = httpError(err);
    if (h.internal) deps.log(`${req.method} ${req.url}: ${(err as Error).stack ?? String(err)}`);
    void reply.code(h.status).send(h.body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: { code: "not-found", message: `no such API route: ${req.method} ${req.url.split("?")[0]}` } });
  });

  app.addHook("onRequest", async (req: WithState, reply) => {
    deps.onActivity?.();
    const id = (req.routeOptions.config as { id?: RouteId }).id;
    if (!id) return;
    const def = routes[id] as RouteDef;
    const st: RequestState = { id, def };
    req[kState] = st;
    if (def.kind !== "upload") bodyDeadline(req, reply, limits.bodyTimeoutMs);
    const who = await identify(deps, transport, req);
    // Who a local caller is, asked while the caller is surely still connected (`ss` lists live
    // sockets only); its audit entry is written after the reply.
    if (who?.identity.kind === "local" && def.change) await whoLocal(req, who.identity);
    if (who) {
      st.caller = who.identity;
      st.tokenSha256 = who.tokenSha256;
      st.sessionId = who.sessionId;
    }
    if (def.role === "public") return;
    if (!st.caller) throw new VmhostError("unauthorized", "authenticate with a trusted client certificate, an API token (Authorization: Bearer ...) or a session", 401);
    if (!roleAllows(st.caller.role, def.role)) {
      throw new VmhostError("forbidden", `${st.caller.name} is a ${st.caller.role}; ${req.method} ${def.path} needs ${def.role}`, 403);
    }
    if (def.localOnly && transport !== "unix") {
      throw new VmhostError("local-only", `${req.method} ${def.path} takes or gives host paths and is for local callers only (on the host, over the unix socket)`, 403);
    }
    if (st.caller.kind === "session" && def.kind === "websocket") {
      // A browser cannot add headers to a WebSocket upgrade; it always sends Origin, which must be this server.
      const origin = headerOf(req, "origin");
      let host: string | undefined;
      try {
        host = origin ? new URL(origin).host : undefined;
      } catch {
        host = undefined;
      }
      if (!host || host !== headerOf(req, "host")) throw new VmhostError("origin", `a console opened with a browser session must come from this server's own pages (Origin ${origin ?? "missing"})`, 403);
    } else if (st.caller.kind === "session" && def.change && !csrfMatches(deps.sessions.get(st.sessionId!)!, headerOf(req, CSRF_HEADER))) {
      throw new VmhostError("csrf", `a change made with a browser session needs the ${CSRF_HEADER} header login returned`, 403);
    }
  });

  app.addHook("onResponse", async (req: WithState, reply) => {
    const st = req[kState];
    if (!st || !st.def.change || st.audited) return;
    await audit(deps, transport, req, st, reply.statusCode);
  });

  // Websocket routes: validate and prepare before the upgrade, so a refusal is a plain HTTP error.
  app.addHook("preHandler", async (req: WithState, reply) => {
    const st = req[kState];
    if (!st) return;
    st.input = await parseInput(st.def, req, transport, deps);
    if (st.def.kind === "websocket") {
      const h = handlers[st.id] as unknown as SocketHandler<RouteId>;
      st.attach = await h(context(deps, transport, req, st, reply), st.input);
    }
  });

  for (const id of routeIds) {
    const def = routes[id] as RouteDef;
    const config = { id };
    if (def.kind === "websocket") {
      app.route({
        method: "GET",
        url: def.path,
        config,
        websocket: true,
        handler: (async (ws: WebSocket, req: WithState) => {
          const st = req[kState]!;
          // Consoles stay open while quiet; liveness is the WebSocket's ping.
          req.raw.socket.setTimeout(0);
          st.audited = true;
          void audit(deps, transport, req, st, 101);
          st.attach!(ws);
        }) as never,
      });
      continue;
    }
    app.route({
      method: def.method,
      url: def.path,
      config,
      handler: async (req: WithState, reply) => {
        const st = req[kState]!;
        const c = context(deps, transport, req, st, reply);
        const input = st.input!;
        switch (def.kind) {
          case "json":
            return (await (handlers[id] as unknown as JsonHandler<RouteId>)(c, input)) ?? null;
          case "upload": {
            if (!String(req.headers["content-type"] ?? "").startsWith("application/octet-stream")) {
              throw new VmhostError("unsupported-media-type", "send the file's bytes as application/octet-stream", 415);
            }
            req.raw.socket.setTimeout(limits.idleTimeoutMs);
            return (await (handlers[id] as unknown as UploadHandler<RouteId>)(c, input, req.raw)) ?? null;
          }
          case "stream": {
            reply.hijack();
            const out = new LineStream<unknown>(reply.raw as ServerResponse);
            try {
              await (handlers[id] as unknown as StreamHandler<RouteId>)(c, input, out);
            } catch (err) {
              const h = httpError(err);
              if (h.internal) deps.log(`${req.method} ${req.url}: ${(err as Error).stack ?? String(err)}`);
              out.fail(err);
            }
            if (st.def.change) {
              st.audited = true;
              void audit(deps, transport, req, st, reply.raw.statusCode);
            }
            return reply;
          }
        }
        return null;
      },
    });
  }
  await app.ready();
  return app;
}

/**
 * Stops an app and the node server it runs on: vmhostd listens on its servers itself, so
 * Fastify's close() does not close them; open connections (keep-alive, streams, consoles) are
 * closed too, so nothing outlives the service.
 */
export async function closeApp(app: FastifyInstance, server: HttpServer): Promise<void> {
  await app.close();
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
  await closed;
}

function context(deps: ServerDeps, transport: Transport, req: FastifyRequest, st: RequestState, reply: FastifyReply): HandlerContext {
  return {
    ...deps,
    caller: st.caller ?? { name: "anonymous", kind: "token", role: "reader", transport },
    transport,
    route: st.id,
    req,
    reply,
    ...(st.tokenSha256 ? { tokenSha256: st.tokenSha256 } : {}),
    ...(st.sessionId ? { sessionId: st.sessionId } : {}),
  };
}

function headerOf(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** A JSON body must arrive within `ms` of the headers (uploads are bounded by the idle timeout instead). */
function bodyDeadline(req: FastifyRequest, reply: FastifyReply, ms: number): void {
  if (req.raw.complete) return;
  const t = setTimeout(() => {
    if (!req.raw.complete) req.raw.socket.destroy();
  }, ms);
  t.unref();
  const clear = () => clearTimeout(t);
  req.raw.once("end", clear);
  reply.raw.once("close", clear);
}

async function identify(deps: ServerDeps, transport: Transport, req: FastifyRequest): Promise<{ identity: Identity; tokenSha256?: string; sessionId?: string } | undefined> {
  if (transport === "unix") return { identity: { name: "local", kind: "local", role: "administrator", transport } };
  const auth = headerOf(req, "authorization");
  if (auth !== undefined) {
    const m = /^Bearer\s+(\S+)$/i.exec(auth);
    const t = m ? deps.access.token(m[1]!) : undefined;
    if (!t) throw new VmhostError("unauthorized", "this API token is unknown or revoked", 401);
    return { identity: { name: `token ${t.name}`, kind: "token", role: t.role, transport }, tokenSha256: t.sha256 };
  }
  const cert = (req.raw.socket as TLSSocket).getPeerCertificate?.();
  if (cert && cert.fingerprint256) {
    const c = deps.access.certificate(cert.fingerprint256);
    if (c) return { identity: { name: `certificate ${c.name}`, kind: "certificate", role: c.role, transport } };
  }
  const cookieHeader = headerOf(req, "cookie");
  if (cookieHeader) {
    const sid = parseCookie(cookieHeader)[SESSION_COOKIE];
    const s = sid ? deps.sessions.get(sid) : undefined;
    // A revoked token ends its sessions at once, also ones opened before.
    if (s && deps.access.tokenByHash(s.tokenSha256)) {
      return { identity: { name: `session of token ${s.tokenName}`, kind: "session", role: s.role, transport }, tokenSha256: s.tokenSha256, sessionId: sid! };
    }
  }
  return undefined;
}

/** Parses params, query and body against the contract; a 400 names what is wrong. */
async function parseInput(def: RouteDef, req: FastifyRequest, transport: Transport, deps: ServerDeps): Promise<Input<RouteId>> {
  const part = (schema: z.AnyZodObject, value: unknown, where: string) => {
    const r = schema.safeParse(value ?? {});
    if (!r.success) throw new VmhostError("bad-request", zodMessage(r.error, where));
    return r.data;
  };
  const params = part(def.params, req.params, "path");
  const query = part(def.query, req.query, "query");
  const body = def.kind === "upload" ? {} : part(def.body, req.body, "body");
  if (transport !== "unix" && def.hostPaths) {
    for (const p of def.hostPaths(body as never)) if (typeof p === "string") await requireInMedia(deps.mediaDir, p);
  }
  return { params, query, body } as Input<RouteId>;
}

/** Remote callers may name host files only in the media folder (where their uploads land). */
async function requireInMedia(mediaDir: string, path: string): Promise<void> {
  const root = await realpath(mediaDir).catch(() => resolve(mediaDir));
  const real = await realpath(resolve(mediaDir, path)).catch(() => resolve(mediaDir, path));
  if (!real.startsWith(root + sep)) {
    throw new VmhostError("local-path", `remote callers cannot name host paths (${path}); upload the file (PUT /v1/media/NAME, vmhost media upload) and use the path that returns`, 403);
  }
}

async function audit(deps: ServerDeps, transport: Transport, req: WithState, st: RequestState, status: number): Promise<void> {
  const p = req.params as Record<string, string> | undefined;
  const target = p?.["vm"] ?? p?.["name"] ?? p?.["id"] ?? p?.["file"];
  const entry: AuditEntry = {
    at: new Date().toISOString(),
    who: st.caller ? await whoLocal(req, st.caller) : `anonymous (${req.ip || transport})`,
    role: st.caller?.role ?? "reader",
    transport,
    route: st.id,
    method: req.method,
    path: req.url.split("?")[0] ?? req.url,
    ...(target !== undefined ? { target } : {}),
    result: status === 401 || status === 403 ? "denied" : status < 400 ? "ok" : "error",
    status,
  };
  await deps.audit.append(entry, deps.log);
}

/** A local caller's uid and user (once per connection), for the audit log. */
function whoLocal(req: FastifyRequest, caller: Identity): Promise<string> | string {
  if (caller.kind !== "local") return caller.name;
  const sock = req.raw.socket;
  let p = peerNames.get(sock);
  if (!p) {
    p = unixPeer(sock).then(
      (x) => (x.uid !== undefined ? `local uid ${x.uid}${x.user ? ` (${x.user})` : ""}` : "local (unix socket)"),
      () => "local (unix socket)",
    );
    peerNames.set(sock, p);
  }
  return p;
}
