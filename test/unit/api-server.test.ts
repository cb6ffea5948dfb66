import assert from "node:assert/strict";
import { readFile, rm, stat, mkdtemp } from "node:fs/promises";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { WebSocket } from "ws";
import { VmhostClient, ApiError, routes, routeIds, buildPath, roleAllows, type RouteId } from "../../packages/sdk/src/index.js";
import { enroll, fetchPinnedCertificate, httpsTransport, unixTransport } from "../../packages/sdk/src/node.js";
import type { RouteDef } from "../../src/api/contract.js";
import { AuditEntry } from "../../src/api/views.js";
import { defineJob } from "../../src/service/server/jobs.js";
import { startServer, type VmhostServer } from "../../src/service/server/index.js";
import { buildApp, closeApp, serverOptions } from "../../src/service/server/app.js";
import { handlers } from "../../src/service/server/handlers.js";
import { HttpsListener } from "../../src/service/server/listen.js";
import { createServer } from "node:http";
import { VmHost } from "../../src/service/vmhost.js";

/**
 * vmhostd's API served for real (a VmHost on a temp home, the unix socket and the HTTPS listener
 * on 127.0.0.1), driven through the SDK and raw sockets. No VM boots here.
 */

const LIMITS = { headersTimeoutMs: 400, bodyTimeoutMs: 400, idleTimeoutMs: 3000, keepAliveTimeoutMs: 1000, maxConnections: 12, bodyLimit: 64 * 1024 };

let home: string;
let host: VmHost;
let srv: VmhostServer;
let local: VmhostClient;
let url: string;
let serverCertificate: string;
const tokens: Record<string, string> = {};
const clients: VmhostClient[] = [];

function remote(opts: { token?: string; clientKey?: string; clientCert?: string } = {}): VmhostClient {
  const c = new VmhostClient(httpsTransport({ url, serverCertificate, ...opts }));
  clients.push(c);
  return c;
}

/** A raw request through a transport: status and parsed body. */
async function raw(c: VmhostClient, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await c.transport.request({
    method,
    path,
    headers: { ...(body !== undefined ? { "content-type": "application/json" } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  let text = "";
  for await (const ch of res.body) text += Buffer.from(ch).toString("utf8");
  let data: unknown = text;
  try {
    data = JSON.parse(text);
  } catch {
    /* NDJSON or empty */
  }
  return { status: res.status, data: data as { error?: { code: string; message: string } } & Record<string, unknown>, headers: res.headers };
}

/** A path for a route with harmless parameter values. */
function samplePath(id: RouteId): string {
  const def = routes[id] as RouteDef;
  return buildPath(def.path, { vm: "no such vm", id: "00000000-0000-4000-8000-000000000000", name: "nobody", file: "nothing.iso", pool: "guest" });
}

before(async () => {
  home = await mkdtemp(join(tmpdir(), "vmhost-api-"));
  host = new VmHost(home);
  await host.init();
  srv = await startServer(host, { log: () => undefined, limits: LIMITS, socketGroup: null });
  local = new VmhostClient(unixTransport(host.layout.serviceSocket));
  clients.push(local);
  const l = await local.api.service.listen({ address: "127.0.0.1:0" });
  assert.equal(l.listening, true);
  url = `https://127.0.0.1:${l.port}`;
  serverCertificate = await fetchPinnedCertificate(url, l.fingerprint!);
  for (const role of ["reader", "operator", "administrator"] as const) tokens[role] = (await local.api.tokens.add({ name: role, role })).token;
});

after(async () => {
  for (const c of clients) c.close();
  await srv.close();
  host.close();
  await rm(home, { recursive: true, force: true });
});

test("a malformed URL encoding is a 400 naming it, and the service keeps serving", async () => {
  const r = await raw(local, "GET", "/v1/vms/%ZZ/events/follow");
  assert.equal(r.status, 400);
  assert.match(r.data.error!.message, /not a valid url component/);
  const r2 = await raw(remote({ token: tokens["reader"] }), "GET", "/v1/vms/%E0%A4%A/firmware");
  assert.equal(r2.status, 400);
  assert.deepEqual(await local.api.vms.list(), []);
});

test("parameters, query and body are validated from the contract; the 400 names the field", async () => {
  let r = await raw(local, "PATCH", "/v1/vms/x", { memoryMiB: "lots" });
  assert.equal(r.status, 400);
  assert.match(r.data.error!.message, /body\.memoryMiB: Expected number, received string/);
  r = await raw(local, "DELETE", "/v1/vms/x?deleteDisks=maybe");
  assert.equal(r.status, 400);
  assert.match(r.data.error!.message, /query\.deleteDisks/);
  r = await raw(local, "GET", "/v1/vms?bogus=1");
  assert.equal(r.status, 400);
  assert.match(r.data.error!.message, /query.*bogus/);
  r = await raw(local, "GET", "/v1/jobs/not-a-job");
  assert.equal(r.status, 400);
  assert.match(r.data.error!.message, /path\.id: is not a job id/);
  r = await raw(local, "POST", "/v1/vms", { name: "x", generation: 2, surprise: true });
  assert.equal(r.status, 400);
  assert.match(r.data.error!.message, /surprise/);
  const bad = await local.transport.request({ method: "POST", path: "/v1/vms", headers: { "content-type": "application/json" }, body: "{not json" });
  for await (const _ of bad.body) void _;
  assert.equal(bad.status, 400);
});

test("console WebSockets: a VM that is not there or not running is a plain HTTP error before any upgrade", async () => {
  await assert.rejects(local.api.vms.serialConsole({ vm: "no such vm" }), (e: ApiError) => e.status === 404);
  await local.api.vms.create({ name: "off vm", generation: 2 });
  await assert.rejects(local.api.vms.serialConsole({ vm: "off vm" }), (e: ApiError) => e.status === 409 && /is not running/.test(e.message));
  await assert.rejects(remote({ token: tokens["operator"] }).api.vms.graphicalConsole({ vm: "off vm" }), (e: ApiError) => e.status === 409);
  await assert.rejects(remote({ token: tokens["reader"] }).api.vms.serialConsole({ vm: "off vm" }), (e: ApiError) => e.status === 403);
  await local.api.vms.remove({ vm: "off vm" });
});

test("VMs named with spaces and any Unicode are reached by name and by id, URL-encoded", async () => {
  const name = "Ünïcode VM 日本 🚀 / x";
  const vm = await local.api.vms.create({ name: name.replace(" / x", ""), generation: 2 });
  assert.equal((await local.api.vms.get({ vm: vm.name })).id, vm.id);
  assert.equal((await local.api.vms.get({ vm: vm.id })).name, vm.name);
  const r = await local.api.vms.rename({ vm: vm.id, name: "plain" });
  assert.equal(r.name, "plain");
  await local.api.vms.remove({ vm: "plain" });
});

test("without credentials every route is refused over HTTPS (401); public routes refuse bad tokens", async () => {
  const anon = remote();
  for (const id of routeIds) {
    const def = routes[id] as RouteDef;
    if (def.role === "public") {
      const body = id === "session.login" ? { token: "vmh_" + "x".repeat(43) } : { secret: "y".repeat(43) };
      const r = await raw(anon, def.method, samplePath(id), body);
      assert.equal(r.status, id === "trust.redeem" ? 401 : 401, `${id}: ${JSON.stringify(r.data)}`);
      continue;
    }
    const r = await raw(anon, def.method, samplePath(id), def.method === "GET" ? undefined : {});
    assert.equal(r.status, 401, `${id} answered ${r.status} without credentials`);
    assert.equal(r.data.error!.code, "unauthorized");
  }
  const forged = await raw(remote({ token: "vmh_forged" }), "GET", "/v1/vms");
  assert.equal(forged.status, 401);
});

test("a reader is refused every route that needs more (403), and allowed the rest", async () => {
  const reader = remote({ token: tokens["reader"] });
  let refused = 0;
  for (const id of routeIds) {
    const def = routes[id] as RouteDef;
    if (def.role === "public") continue;
    const r = await raw(reader, def.method, samplePath(id), def.method === "GET" ? undefined : {});
    if (roleAllows("reader", def.role)) {
      assert.ok(r.status !== 401 && r.status !== 403, `${id}: a reader was refused (${r.status} ${JSON.stringify(r.data)})`);
    } else {
      assert.equal(r.status, 403, `${id}: a reader got ${r.status}`);
      assert.equal(r.data.error!.code, "forbidden");
      refused++;
    }
  }
  // Every change route but logout (a reader may end its own session) needs more than reader.
  const changes = routeIds.filter((id) => (routes[id] as RouteDef).change && (routes[id] as RouteDef).role !== "public" && id !== "session.logout");
  assert.ok(refused >= changes.length, `${refused} refused, ${changes.length} change routes`);
});

test("an operator starts and stops but does not configure; local-only routes refuse remote callers", async () => {
  const op = remote({ token: tokens["operator"] });
  await assert.rejects(op.api.vms.create({ name: "nope", generation: 2 }), (e: ApiError) => e.status === 403);
  await assert.rejects(op.api.vms.start({ vm: "no such vm" }), (e: ApiError) => e.status === 404);
  const admin = remote({ token: tokens["administrator"] });
  await assert.rejects(admin.api.service.listen({ address: "127.0.0.1:0" }), (e: ApiError) => e.status === 403 && e.code === "local-only");
  await assert.rejects(admin.api.integration.copyFile({ vm: "x", source: "/etc/passwd", destination: "/tmp/p" }), (e: ApiError) => e.code === "local-only");
  await assert.rejects(admin.api.host.buildNetboot({ dir: "/tmp" }), (e: ApiError) => e.code === "local-only");
});

test("remote callers name host files only in the media folder: uploads land there", async () => {
  const admin = remote({ token: tokens["administrator"] });
  await assert.rejects(admin.api.vms.create({ name: "iso-vm", generation: 2, dvd: "/etc/passwd" }), (e: ApiError) => e.status === 403 && e.code === "local-path");
  await assert.rejects(admin.api.vms.create({ name: "iso-vm", generation: 2, dvd: `${home}/media/../host/access/tokens.json` }), (e: ApiError) => e.code === "local-path");
  const bytes = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
  const chunks = (async function* () {
    for (let i = 0; i < bytes.length; i += 65536) yield bytes.subarray(i, i + 65536);
  })();
  const m = await admin.api.media.upload({ file: "install disc.iso" }, chunks);
  assert.equal(m.bytes, bytes.length);
  assert.deepEqual(await readFile(m.path), bytes);
  assert.equal((await stat(m.path)).mode & 0o777, 0o600);
  await assert.rejects(admin.api.media.upload({ file: "install disc.iso" }, Buffer.from("again")), (e: ApiError) => e.status === 409);
  await assert.rejects(admin.api.media.upload({ file: "../escape.iso" }, Buffer.from("x")), (e: ApiError) => e.status === 400);
  const vm = await admin.api.vms.create({ name: "iso-vm", generation: 2, dvd: m.path });
  assert.equal(vm.dvds[0]?.path, m.path);
  assert.equal(vm.paths, undefined, "host paths of the VM are for local callers only");
  assert.ok((await local.api.vms.get({ vm: "iso-vm" })).paths?.console);
  await assert.rejects(admin.api.media.remove({ file: m.name }), (e: ApiError) => e.status === 409);
  await admin.api.vms.remove({ vm: "iso-vm" });
  await admin.api.media.remove({ file: m.name });
  assert.deepEqual(await admin.api.media.list(), []);
});

test("a revoked API token stops working at once, on the same connection", async () => {
  const t = await local.api.tokens.add({ name: "short-lived", role: "reader" });
  const c = remote({ token: t.token });
  assert.equal((await c.api.session.whoami()).identity.name, "token short-lived");
  await local.api.tokens.remove({ name: "short-lived" });
  await assert.rejects(c.api.vms.list(), (e: ApiError) => e.status === 401);
  const stored = await readFile(join(home, "host", "access", "tokens.json"), "utf8");
  assert.doesNotMatch(stored, new RegExp(tokens["reader"]!.slice(4)), "tokens are stored hashed");
  assert.equal((await stat(join(home, "host", "access", "tokens.json"))).mode & 0o777, 0o600);
});

test("a client certificate joins with a one-time trust token, pins the server, and is refused once removed", async () => {
  const t = await local.api.trust.add({ name: "laptop", role: "operator" });
  const e = await enroll(url, t.token, "laptop");
  assert.equal(e.role, "operator");
  const c = remote({ clientKey: e.clientKey, clientCert: e.clientCert });
  const who = await c.api.session.whoami();
  assert.deepEqual(who.identity, { name: "certificate laptop", kind: "certificate", role: "operator", transport: "https" });
  await assert.rejects(enroll(url, t.token, "again"), (err: ApiError) => err.status === 401, "the token is one-time");
  await assert.rejects(c.api.vms.create({ name: "x", generation: 2 }), (err: ApiError) => err.status === 403);
  // A trust token names the server's fingerprint: another server is refused before any secret is sent.
  const forged = Buffer.from(JSON.stringify({ v: 1, name: "x", fingerprint: "AA:BB", secret: "s".repeat(43) })).toString("base64url");
  await assert.rejects(enroll(url, forged, "x"), (err: ApiError) => err.code === "fingerprint-mismatch");
  await local.api.trust.remove({ name: "laptop" });
  await assert.rejects(c.api.session.whoami(), (err: ApiError) => err.status === 401);
});

test("browser sessions: HttpOnly SameSite=Strict cookie, CSRF header on changes, ended by revoking the token", async () => {
  const t = await local.api.tokens.add({ name: "web", role: "operator" });
  const anon = remote();
  const login = await raw(anon, "POST", "/v1/session", { token: t.token });
  assert.equal(login.status, 200);
  const cookie = String(login.headers["set-cookie"]);
  assert.match(cookie, /vmhost_session=[^;]+; Path=\/v1; HttpOnly; SameSite=Strict; Max-Age=\d+; Secure/);
  const jar = cookie.split(";")[0]!;
  const csrf = login.data["csrfToken"] as string;
  assert.equal((await raw(anon, "GET", "/v1/vms", undefined, { cookie: jar })).status, 200);
  const noCsrf = await raw(anon, "POST", "/v1/vms/nothing/start", {}, { cookie: jar });
  assert.equal(noCsrf.status, 403);
  assert.equal(noCsrf.data.error!.code, "csrf");
  assert.equal((await raw(anon, "POST", "/v1/vms/nothing/start", {}, { cookie: jar, "x-csrf-token": "wrong" })).status, 403);
  assert.equal((await raw(anon, "POST", "/v1/vms/nothing/start", {}, { cookie: jar, "x-csrf-token": csrf })).status, 404);
  // The consoles: a browser cannot send the CSRF header on an upgrade; its Origin must be this server.
  const upgrade = (origin: string | undefined) =>
    new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`wss://127.0.0.1:${new URL(url).port}/v1/vms/nothing/console/serial`, {
        ca: serverCertificate,
        // Pinned by the CA above; its names need not match 127.0.0.1.
        checkServerIdentity: (() => undefined) as never,
        headers: { cookie: jar, ...(origin ? { origin } : {}) },
      });
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.on("open", () => reject(new Error("upgraded")));
      ws.on("error", () => undefined);
    });
  assert.equal(await upgrade("https://evil.example"), 403);
  assert.equal(await upgrade(undefined), 403);
  assert.equal(await upgrade(url), 404, "from this server's own origin the request reaches the handler");
  await local.api.tokens.remove({ name: "web" });
  assert.equal((await raw(anon, "GET", "/v1/vms", undefined, { cookie: jar })).status, 401);
});

test("the audit log has every change: who, what, when, result; refused ones too", async () => {
  const admin = remote({ token: tokens["administrator"] });
  await admin.api.vms.create({ name: "audited", generation: 1 });
  await admin.api.vms.set({ vm: "audited", notes: "n" });
  await assert.rejects(admin.api.vms.start({ vm: "missing" }));
  await admin.api.vms.remove({ vm: "audited" });
  await raw(remote({ token: tokens["reader"] }), "POST", "/v1/vms/audited/start", {});
  const log = await srv.audit.read(10_000);
  for (const e of log) AuditEntry.parse(e);
  const mine = log.filter((e) => e.who === "token administrator");
  assert.deepEqual(
    mine.slice(-4).map((e) => [e.route, e.target, e.result]),
    [
      ["vms.create", undefined, "ok"],
      ["vms.set", "audited", "ok"],
      ["vms.start", "missing", "error"],
      ["vms.remove", "audited", "ok"],
    ],
  );
  assert.ok(log.some((e) => e.who === "token reader" && e.route === "vms.start" && e.result === "denied" && e.status === 403));
  assert.ok(log.some((e) => e.route === "tokens.add" && e.transport === "unix" && /^local uid 0/.test(e.who)), "local callers are named by uid");
  assert.ok(!log.some((e) => e.route === "vms.list"), "reads are not audited");
  assert.equal((await stat(srv.audit.file)).mode & 0o777, 0o600);
  const api = await admin.api.audit.list({ limit: 3 });
  assert.equal(api.length, 3);
});

test("jobs: progress is followed, a reader cannot cancel, an operator cancels a cancellable job", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const kind = defineJob<{ steps: number }, { ran: number }>({
    kind: "test-wait",
    cancellable: true,
    run: async (ctx, input) => {
      ctx.progress(1, input.steps, "waiting");
      await Promise.race([gate, new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(new Error("stopped"))))]);
      ctx.throwIfCancelled();
      return { ran: input.steps };
    },
  });
  const done = srv.jobs.start(kind, { steps: 4 }, { by: "test", role: "operator" });
  const reader = remote({ token: tokens["reader"] });
  const seen: string[] = [];
  const follow = reader.followJob(done.id, (j) => seen.push(`${j.state} ${j.progress.done}/${j.progress.total}`));
  assert.equal((await reader.api.jobs.get({ id: done.id })).kind, "test-wait");
  await assert.rejects(reader.api.jobs.cancel({ id: done.id }), (e: ApiError) => e.status === 403);
  const cancelled = await remote({ token: tokens["operator"] }).api.jobs.cancel({ id: done.id });
  assert.equal(cancelled.state, "cancelled");
  const end = await follow;
  assert.equal(end.state, "cancelled");
  assert.equal(seen.at(-1), "cancelled 1/4");
  release();
  const ok = srv.jobs.start(kind, { steps: 2 }, { by: "test", role: "operator" });
  assert.deepEqual(await local.jobResult(ok.id), { ran: 2 });
  assert.ok((await local.api.jobs.list()).some((j) => j.id === ok.id && j.state === "succeeded"));
});

test("the OpenAPI document is served and describes every route with its role", async () => {
  const doc = (await remote({ token: tokens["reader"] }).api.host.openapi()) as { openapi: string; paths: Record<string, Record<string, { operationId: string; "x-vmhost-role": string }>> };
  assert.equal(doc.openapi, "3.1.0");
  const ops = Object.values(doc.paths).flatMap((p) => Object.values(p));
  assert.deepEqual(ops.map((o) => o.operationId).sort(), [...routeIds].sort());
  assert.equal(doc.paths["/v1/vms/{vm}/start"]?.["post"]?.["x-vmhost-role"], "operator");
});

/** Resolves when the server closes the connection. */
function closed(s: Socket): Promise<void> {
  // Whatever the server sends (a 408) is read, so the end of the stream is seen.
  s.resume();
  return new Promise((resolve) => (s.destroyed ? resolve() : s.once("close", () => resolve())));
}

test("half-sent requests are dropped (headers and body deadlines), the service keeps serving", async () => {
  const socket = host.layout.serviceSocket;
  const slowHeaders = netConnect(socket);
  slowHeaders.on("error", () => undefined);
  slowHeaders.write("GET /v1/vms HTTP/1.1\r\nHost: x\r\n");
  const slowBody = netConnect(socket);
  slowBody.on("error", () => undefined);
  slowBody.write('POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"na');
  await Promise.all([closed(slowHeaders), closed(slowBody)]);
  // Over TLS too: a handshake that never finishes is dropped.
  const port = Number(new URL(url).port);
  const half = netConnect(port, "127.0.0.1");
  half.on("error", () => undefined);
  half.write(Buffer.from([0x16, 0x03, 0x01]));
  await closed(half);
  assert.equal((await local.api.vms.list()).length, 0);
});

test("connections are capped: past the cap a connection is closed at once; then service goes on", async () => {
  // Its own server with long timeouts, so only the cap closes connections here.
  const limits = { ...LIMITS, headersTimeoutMs: 60_000, idleTimeoutMs: 60_000, maxConnections: 5 };
  const server = createServer(serverOptions(limits));
  const deps = { host, access: srv.access, audit: srv.audit, sessions: srv.sessions, jobs: srv.jobs, listener: srv.https, mediaDir: join(home, "media"), uploadDir: join(home, "host", "uploads"), log: () => undefined };
  const app = await buildApp(deps, handlers, "unix", server, limits);
  const path = join(home, "capped.sock");
  await new Promise<void>((resolve) => server.listen(path, () => resolve()));
  try {
    const held: Socket[] = [];
    for (let i = 0; i < limits.maxConnections; i++) {
      const s = netConnect(path);
      s.on("error", () => undefined);
      await new Promise<void>((resolve) => s.once("connect", () => resolve()));
      held.push(s);
    }
    const count = () => new Promise<number>((resolve) => server.getConnections((_e, n) => resolve(n)));
    while ((await count()) < limits.maxConnections) await new Promise((r) => setTimeout(r, 10));
    const extra = netConnect(path);
    extra.on("error", () => undefined);
    await closed(extra);
    for (const s of held) s.destroy();
    while ((await count()) > 0) await new Promise((r) => setTimeout(r, 10));
    const c = new VmhostClient(unixTransport(path));
    clients.push(c);
    assert.deepEqual(await c.api.vms.list(), []);
  } finally {
    await closeApp(app, server);
  }
});

test("the HTTPS listener's address is kept: a restarted vmhostd listens again", async () => {
  const saved = JSON.parse(await readFile(join(home, "host", "listen.json"), "utf8")) as { address: string };
  assert.equal(saved.address, "127.0.0.1:0");
  const deps = { host, access: srv.access, audit: srv.audit, sessions: srv.sessions, jobs: srv.jobs, mediaDir: join(home, "media"), uploadDir: join(home, "host", "uploads"), log: () => undefined };
  const again = new HttpsListener(deps, handlers, join(home, "host", "listen.json"), LIMITS);
  await again.restore();
  try {
    const v = await again.view();
    assert.equal(v.listening, true);
    const c = new VmhostClient(httpsTransport({ url: `https://127.0.0.1:${v.port}`, serverCertificate, token: tokens["reader"]! }));
    clients.push(c);
    assert.equal((await c.api.session.whoami()).identity.role, "reader");
  } finally {
    await again.close();
  }
});
