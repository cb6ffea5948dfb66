import { rm } from "node:fs/promises";
import type { TLSSocket } from "node:tls";
import type { z } from "zod";
import { routes } from "../../api/contract.js";
import type * as Q from "../../api/requests.js";
import { NewVhdRequestSchema } from "../../images/vhd-api.js";
import { openApiDocument } from "../../api/openapi.js";
import type { VmView } from "../../api/views.js";
import { ensureAppliance } from "../../images/appliance/index.js";
import { buildNetbootPayload } from "../../images/netboot.js";
import type { VmConfig } from "../../model/index.js";
import type { VmEvent } from "../../supervisor/events.js";
import { VmhostError } from "../../util/errors.js";
import type { HandlerContext, Handlers } from "./app.js";
import { openConsole } from "./consoles.js";
import { defineJob } from "./jobs.js";
import { listMedia, receiveFile, receiveScratch, removeMedia } from "./media.js";
import { SESSION_COOKIE } from "./sessions.js";
import type { VmHost } from "../vmhost.js";
import type { CopyResult } from "../../guest/copyfile.js";

/** Copy-VMFile as a job: progress in bytes; cancelling stops between chunks and removes the partial file in the guest. */
export const copyFileJob = defineJob<
  { host: VmHost; vm: string; source: string; destination: string; createFullPath: boolean; force: boolean; shownSource?: string; cleanup?: () => Promise<void> },
  CopyResult
>({
  kind: "copy-file",
  cancellable: true,
  run: async (ctx, i) => {
    try {
      const r = await i.host.integration.copyFile(i.vm, { source: i.source, destination: i.destination, createFullPath: i.createFullPath, force: i.force }, (done, total) => {
        // Thrown between chunks: copyFileToGuest closes and removes the partial file in the guest.
        ctx.throwIfCancelled();
        ctx.progress(done, total, "copying");
      });
      return i.shownSource ? { ...r, source: i.shownSource } : r;
    } finally {
      await i.cleanup?.();
    }
  },
});

/** Restore-VMSnapshot as a job: not cancellable (QEMU is stopped and restarted on the checkpoint's files). */
export const checkpointApplyJob = defineJob<{ host: VmHost; vm: string; checkpoint: string; checkpointCurrent: boolean }, unknown>({
  kind: "checkpoint-apply",
  cancellable: false,
  run: async (ctx, i) => {
    ctx.progress(0, 1, "applying");
    const r = await i.host.checkpoints.apply(i.vm, i.checkpoint, { checkpointCurrent: i.checkpointCurrent });
    ctx.progress(1, 1, "applied");
    return r;
  },
});

/** Remove-VMSnapshot as a job: a merge with progress (per mille); not cancellable, a removal once begun is finished (also by a restarted vmhostd). */
export const checkpointRemoveJob = defineJob<{ host: VmHost; vm: string; checkpoint: string; subtree: boolean }, unknown>({
  kind: "checkpoint-remove",
  cancellable: false,
  run: (ctx, i) => i.host.checkpoints.remove(i.vm, i.checkpoint, { subtree: i.subtree }, (fraction, what) => ctx.progress(Math.round(Math.min(1, fraction) * 1000), 1000, what)),
});

/** A travel operation (export, import, compare, conversion, VHD tools) as a job: progress as a fraction per mille, cancellable where the operation takes a signal. */
function travelJob<I>(kind: string, cancellable: boolean, run: (i: I, progress: (fraction: number, what: string) => void, signal: AbortSignal) => Promise<unknown>) {
  return defineJob<I, unknown>({
    kind,
    cancellable,
    run: (ctx, i) => run(i, (fraction, what) => ctx.progress(Math.round(Math.min(1, Math.max(0, fraction)) * 1000), 1000, what), ctx.signal),
  });
}

type HostInput<T> = { host: VmHost; req: T; vm?: string };
const exportJob = travelJob<HostInput<z.output<typeof Q.Export>>>("export", true, (i, p, s) => i.host.exports.export(i.vm!, i.req, p, s));
const importCompareJob = travelJob<HostInput<z.output<typeof Q.Import>>>("import-compare", true, (i, p, s) => i.host.imports.compare(i.req, p, s));
const importJob = travelJob<HostInput<z.output<typeof Q.Import>>>("import", true, (i, p, s) => i.host.imports.import(i.req, p, s));
const convertGenerationJob = travelJob<HostInput<z.output<typeof Q.ConvertGeneration>>>("convert-generation", false, (i, p) => i.host.conversions.convert(i.vm!, i.req, p));
const vhdNewJob = travelJob<HostInput<z.output<typeof NewVhdRequestSchema>>>("vhd-new", true, (i, p, s) => i.host.vhd.create(i.req, p, s));
const vhdConvertJob = travelJob<HostInput<z.output<typeof Q.VhdConvert>>>("vhd-convert", true, (i, p, s) => i.host.vhd.convert(i.req, p, s));
const vhdResizeJob = travelJob<HostInput<z.output<typeof Q.VhdResize>>>("vhd-resize", true, (i, p, s) => i.host.vhd.resize(i.req, p, s));
const vhdMergeJob = travelJob<HostInput<z.output<typeof Q.VhdMerge>>>("vhd-merge", true, (i, p, s) => i.host.vhd.merge(i.req, p, s));
const vhdCompactJob = travelJob<HostInput<z.output<typeof Q.VhdCompact>>>("vhd-compact", true, (i, p, s) => i.host.vhd.compact(i.req, p, s));

/** Move-VM as a job: not cancellable (a move stops only at its own safe points: it fails back to the source). */
const moveJob = defineJob<{ host: VmHost; vm: string; req: z.output<typeof Q.Move> }, unknown>({
  kind: "move",
  cancellable: false,
  run: async (ctx, i) => {
    const peer = await i.host.peers.migrationPeer(i.req.destination);
    try {
      return await i.host.moves.move(i.vm, peer, {
        includeStorage: i.req.includeStorage,
        ...(i.req.destinationStoragePath ? { destinationStoragePath: i.req.destinationStoragePath } : {}),
        listenAddress: i.req.migrationAddress ?? peer.address,
        ...(i.req.downtimeLimitMs ? { downtimeLimitMs: i.req.downtimeLimitMs } : {}),
        onProgress: (phase, f) => ctx.progress(Math.round(Math.min(1, f) * 1000), 1000, phase),
      });
    } finally {
      peer.close();
    }
  },
});

/** Get-VM's view as this caller may see it: host paths only for local callers. */
async function view(c: HandlerContext, vm: VmConfig): Promise<VmView> {
  const v = await c.host.vms.view(vm);
  if (c.transport === "unix") return v;
  const { paths: _paths, ...rest } = v;
  return rest;
}

async function state(p: Promise<string>): Promise<{ state: VmView["state"] }> {
  return { state: (await p) as VmView["state"] };
}

/** Who started a job, and the least role that may cancel it: the role of the route that started it. */
const owner = (c: HandlerContext, vm?: string) => ({ by: c.caller.name, role: routes[c.route].role === "operator" ? ("operator" as const) : ("administrator" as const), ...(vm ? { vm } : {}) });

/** vmhostd's handler of every route of the contract (src/api/contract.ts). */
export const handlers: Handlers = {
  "peers.list": (c) => c.host.peers.list(),
  "peers.add": (c, { body }) => c.host.peers.add(body.name, body.url, body.token),
  "peers.remove": async (c, { params }) => {
    await c.host.peers.remove(params.name);
    return { ok: true as const };
  },
  "vms.move": async (c, { params, body }) => {
    const vm = await c.host.vms.get(params.vm);
    return c.jobs.start(moveJob, { host: c.host, vm: vm.id, req: body }, owner(c, vm.name));
  },
  "vms.moveCompare": async (c, { params, body }) => {
    const peer = await c.host.peers.migrationPeer(body.destination);
    try {
      return await c.host.moves.compare(params.vm, peer, { includeStorage: body.includeStorage, ...(body.destinationStoragePath ? { destinationStoragePath: body.destinationStoragePath } : {}), listenAddress: body.migrationAddress ?? peer.address });
    } finally {
      peer.close();
    }
  },
  "migrations.compare": (c, { body }) => c.host.incoming.compare(body),
  "migrations.prepare": async (c, { body }) => {
    await c.host.incoming.prepare(body);
    return { ok: true as const };
  },
  "migrations.upload": async (c, { params, query }, data) => {
    await c.host.incoming.upload(params.id, query.rel, data);
    return { ok: true as const };
  },
  "migrations.start": (c, { params }) => c.host.incoming.start(params.id),
  "migrations.finish": (c, { params }) => c.host.incoming.finish(params.id),
  "migrations.abort": async (c, { params }) => {
    await c.host.incoming.abort(params.id);
    return { ok: true as const };
  },
  "migrations.status": (c, { params }) => c.host.incoming.status(params.id),
  "vms.export": async (c, { params, body }) => {
    const vm = await c.host.vms.get(params.vm);
    return c.jobs.start(exportJob, { host: c.host, vm: vm.id, req: body }, owner(c, vm.name));
  },
  "import.compare": async (c, { body }) => c.jobs.start(importCompareJob, { host: c.host, req: body }, owner(c)),
  "import.run": async (c, { body }) => c.jobs.start(importJob, { host: c.host, req: body }, owner(c)),
  "vms.convertGeneration": async (c, { params, body }) => {
    const vm = await c.host.vms.get(params.vm);
    return c.jobs.start(convertGenerationJob, { host: c.host, vm: vm.id, req: body }, owner(c, vm.name));
  },
  "vms.mbrToGpt": async (c, { params }) => (await c.host.conversions.mbr2gpt(params.vm)) as unknown as Record<string, unknown>,
  "vhd.get": async (c, { body }) => (await c.host.vhd.get(body)) as unknown as Record<string, unknown>,
  "vhd.new": async (c, { body }) => c.jobs.start(vhdNewJob, { host: c.host, req: parseWith(NewVhdRequestSchema, body) }, owner(c)),
  "vhd.convert": async (c, { body }) => c.jobs.start(vhdConvertJob, { host: c.host, req: body }, owner(c)),
  "vhd.resize": async (c, { body }) => c.jobs.start(vhdResizeJob, { host: c.host, req: body }, owner(c)),
  "vhd.merge": async (c, { body }) => c.jobs.start(vhdMergeJob, { host: c.host, req: body }, owner(c)),
  "vhd.compact": async (c, { body }) => c.jobs.start(vhdCompactJob, { host: c.host, req: body }, owner(c)),
  "host.get": (c) => c.host.host(),
  "host.probeAccelerator": (c) => c.host.accelerator(true),
  "host.buildAppliance": async (_c, { body }) => {
    const lines: string[] = [];
    const app = await ensureAppliance({ force: body.force, log: (l) => lines.push(l) });
    return { dir: app.dir, manifest: app.manifest, log: lines };
  },
  "host.buildNetboot": (_c, { body }) => buildNetbootPayload(body.dir, { marker: body.marker }),
  "host.openapi": async () => openApiDocument(),

  "vms.list": (c) => c.host.vms.list(),
  "vms.create": async (c, { body }) => {
    const v = await c.host.vms.create(body);
    return c.transport === "unix" ? v : view(c, await c.host.vms.get(v.id));
  },
  "vms.get": async (c, { params }) => view(c, await c.host.vms.get(params.vm)),
  "vms.set": async (c, { params, body }) => view(c, await c.host.devices.set(params.vm, body)),
  "vms.remove": (c, { params, query }) => c.host.vms.remove(params.vm, query.deleteDisks ?? false),
  "vms.rename": async (c, { params, body }) => {
    const v = await c.host.vms.rename(params.vm, body.name);
    return view(c, await c.host.vms.get(v.id));
  },
  "vms.start": (c, { params }) => state(c.host.vms.start(params.vm)),
  "vms.stop": (c, { params, body }) => c.host.vms.stop(params.vm, body.force, body.timeoutSeconds * 1000),
  "vms.turnOff": (c, { params }) => state(c.host.vms.turnOff(params.vm)),
  "vms.pause": (c, { params }) => state(c.host.vms.pause(params.vm)),
  "vms.resume": (c, { params }) => state(c.host.vms.resume(params.vm)),
  "vms.save": (c, { params }) => state(c.host.vms.save(params.vm)),
  "vms.restart": (c, { params }) => state(c.host.vms.restart(params.vm)),
  "vms.diskAdd": async (c, { params, body }) => view(c, await c.host.devices.diskAdd(params.vm, body)),
  "vms.diskRemove": async (c, { params, body }) => view(c, await c.host.devices.diskRemove(params.vm, body.ref)),
  "vms.dvdSet": async (c, { params, body }) => view(c, await c.host.devices.dvdSet(params.vm, body.path, body.drive)),
  "vms.floppySet": async (c, { params, body }) => view(c, await c.host.devices.floppySet(params.vm, body.path)),
  "vms.nicAdd": async (c, { params, body }) => view(c, await c.host.devices.nicAdd(params.vm, body)),
  "vms.nicRemove": async (c, { params, body }) => view(c, await c.host.devices.nicRemove(params.vm, body.ref)),
  "vms.nicConnect": async (c, { params, body }) => view(c, await c.host.devices.nicConnect(params.vm, body.adapter, body.switchName)),
  "vms.consoleLog": async (c, { params }) => ({ log: await c.host.vms.consoleLog(params.vm) }),
  "vms.serialConsole": (c, { params }) => openConsole(c.host, params.vm, "serial"),
  "vms.graphicalConsole": (c, { params }) => openConsole(c.host, params.vm, "vnc"),
  "vms.events": (c, { params }) => c.host.vms.events(params.vm),
  "vms.eventsFollow": (c, { params }, out) => followEvents(c.host, params.vm, out),

  "firmware.get": (c, { params }) => c.host.firmware.view(params.vm),
  "firmware.set": (c, { params, body }) => c.host.firmware.set(params.vm, body),
  "firmware.reset": (c, { params }) => c.host.firmware.reset(params.vm),

  "checkpoints.list": (c, { params }) => c.host.checkpoints.list(params.vm),
  "checkpoints.create": (c, { params, body }) => c.host.checkpoints.create(params.vm, body.name === undefined ? {} : { name: body.name }),
  "checkpoints.apply": async (c, { params, body }) => {
    const vm = await c.host.vms.get(params.vm);
    return c.jobs.start(checkpointApplyJob, { host: c.host, vm: vm.id, ...body }, owner(c, vm.name));
  },
  "checkpoints.remove": async (c, { params, body }) => {
    const vm = await c.host.vms.get(params.vm);
    return c.jobs.start(checkpointRemoveJob, { host: c.host, vm: vm.id, ...body }, owner(c, vm.name));
  },
  "checkpoints.rename": (c, { params, body }) => c.host.checkpoints.rename(params.vm, body.checkpoint, body.name),

  "integration.list": (c, { params }) => c.host.integration.list(params.vm),
  "integration.set": (c, { params, body }) => c.host.integration.setEnabled(params.vm, body.service, body.enabled),
  "integration.kvp": (c, { params }) => c.host.integration.kvpGet(params.vm),
  "integration.kvpPool": (c, { params }) => c.host.integration.kvpGet(params.vm, params.pool),
  "integration.kvpSet": (c, { params, body }) => c.host.integration.kvpSet(params.vm, body.key, body.value),
  "integration.kvpRemove": (c, { params, body }) => c.host.integration.kvpRemove(params.vm, body.key),
  "integration.vss": async (c, { params }) => ({ ...(await c.host.integration.vssStatus(params.vm)) }),
  "integration.freeze": async (c, { params, body }) => ({
    ...(await c.host.integration.freeze(params.vm, body.timeoutSeconds === undefined ? undefined : body.timeoutSeconds * 1000)),
  }),
  "integration.thaw": async (c, { params }) => ({ ...(await c.host.integration.thaw(params.vm)) }),
  "integration.copyFile": async (c, { params, body }) => {
    const vm = await c.host.vms.get(params.vm);
    if (!c.host.supervisor.runPaths(vm)) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
    return c.jobs.start(copyFileJob, { host: c.host, vm: vm.id, ...body }, owner(c, vm.name));
  },
  "integration.copyFileUpload": async (c, { params, query }, data) => {
    const vm = await c.host.vms.get(params.vm);
    if (!c.host.supervisor.runPaths(vm)) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
    const tmp = await receiveScratch(c.uploadDir, data);
    return c.jobs.start(
      copyFileJob,
      {
        host: c.host,
        vm: vm.id,
        source: tmp,
        destination: query.destination,
        createFullPath: query.createFullPath ?? false,
        force: query.force ?? false,
        shownSource: "(upload)",
        cleanup: () => rm(tmp, { force: true }),
      },
      owner(c, vm.name),
    );
  },

  "jobs.list": async (c) => c.jobs.list(),
  "jobs.get": async (c, { params }) => c.jobs.get(params.id),
  "jobs.follow": async (c, { params }, out) => {
    let job = c.jobs.get(params.id);
    if (job.state !== "running") return out.line({ type: "job", job }), out.end();
    await new Promise<void>((resolve) => {
      const on = (j: typeof job) => {
        if (j.id !== params.id) return;
        out.line({ type: "job", job: j });
        if (j.state !== "running") done();
      };
      const done = () => {
        c.jobs.off("update", on);
        resolve();
      };
      c.jobs.on("update", on);
      out.closed.addEventListener("abort", done);
      // The state now, after subscribing, so no change falls between the two.
      job = c.jobs.get(params.id);
      out.line({ type: "job", job });
      if (job.state !== "running") done();
    });
    out.end();
  },
  "jobs.cancel": async (c, { params }) => {
    const need = c.jobs.roleOf(params.id);
    if (need === "administrator" && c.caller.role !== "administrator") {
      throw new VmhostError("forbidden", `${c.caller.name} is a ${c.caller.role}; cancelling this job needs ${need}`, 403);
    }
    return c.jobs.cancel(params.id);
  },

  "media.list": (c) => listMedia(c.mediaDir),
  "media.upload": (c, { params }, data) => receiveFile(c.mediaDir, params.file, data),
  "media.remove": async (c, { params }) => {
    await removeMedia(c.mediaDir, params.file, c.host.store);
    return { ok: true as const };
  },

  "switches.list": (c) => c.host.network.list(),
  "switches.create": (c, { body }) => c.host.network.create(body),
  "switches.get": (c, { params }) => c.host.network.show(params.name),
  "switches.remove": (c, { params }) => c.host.network.remove(params.name),

  "service.get": (c) => c.listener.view(),
  "service.listen": (c, { body }) => c.listener.listen(body.address),
  "service.unlisten": (c) => c.listener.unlisten(),
  "trust.list": async (c) => c.access.listTrust(),
  "trust.add": (c, { body }) => c.access.addTrustToken(body.name, body.role, body.expiresInSeconds),
  "trust.remove": async (c, { params }) => {
    await c.access.removeTrust(params.name);
    return { ok: true as const };
  },
  "trust.redeem": async (c, { body }) => {
    if (c.transport !== "https") throw new VmhostError("bad-request", "a trust token is redeemed over HTTPS with the client certificate to trust", 400);
    const der = (c.req.raw.socket as TLSSocket).getPeerCertificate(true)?.raw;
    const e = await c.access.redeem(body.secret, der);
    c.log(`trusted client certificate "${e.name}" (${e.role}) ${e.fingerprint}`);
    return { name: e.name, role: e.role, fingerprint: e.fingerprint };
  },
  "tokens.list": async (c) => c.access.listTokens(),
  "tokens.add": async (c, { body }) => {
    const t = await c.access.addToken(body.name, body.role);
    return { name: t.name, role: t.role, createdAt: t.createdAt, token: t.token };
  },
  "tokens.remove": async (c, { params }) => {
    const t = await c.access.removeToken(params.name);
    c.sessions.closeForToken(t.sha256);
    return { ok: true as const };
  },
  "session.whoami": async (c) => {
    const s = c.sessionId ? c.sessions.get(c.sessionId) : undefined;
    return { identity: c.caller, ...(s ? { csrfToken: s.csrf, expiresAt: new Date(s.expiresAt).toISOString() } : {}) };
  },
  "session.login": async (c, { body }) => {
    const t = c.access.token(body.token);
    if (!t) throw new VmhostError("unauthorized", "this API token is unknown or revoked", 401);
    const { id, session } = c.sessions.open(t.sha256, t.name, t.role);
    void c.reply.header(
      "set-cookie",
      `${SESSION_COOKIE}=${id}; Path=/v1; HttpOnly; SameSite=Strict; Max-Age=${c.sessions.cookieMaxAgeSeconds()}${c.transport === "https" ? "; Secure" : ""}`,
    );
    return {
      identity: { name: `session of token ${t.name}`, kind: "session" as const, role: t.role, transport: c.transport },
      csrfToken: session.csrf,
      expiresAt: new Date(session.expiresAt).toISOString(),
    };
  },
  "session.logout": async (c) => {
    if (c.sessionId) c.sessions.close(c.sessionId);
    void c.reply.header("set-cookie", `${SESSION_COOKIE}=; Path=/v1; HttpOnly; SameSite=Strict; Max-Age=0`);
    return { ok: true as const };
  },
  "audit.list": (c, { query }) => c.audit.read(query.limit ?? 1000),
};

/** The journal so far, then each new event as it happens, until the client goes away. */
async function followEvents(host: VmHost, ref: string, out: { line(l: { type: "event"; event: VmEvent } | { type: "following" }): void; closed: AbortSignal }): Promise<void> {
  const vmId = (await host.vms.get(ref)).id;
  const live: VmEvent[] = [];
  let backlogDone = false;
  const onEvent = (ev: VmEvent) => {
    if (ev.vmId !== vmId) return;
    if (backlogDone) out.line({ type: "event", event: ev });
    else live.push(ev);
  };
  host.supervisor.on("vm-event", onEvent);
  try {
    const backlog = await host.vms.events(vmId);
    for (const ev of backlog) out.line({ type: "event", event: ev });
    // Events that arrived while the journal was read may be in it already.
    const tail = new Set(backlog.slice(-64).map((e) => JSON.stringify(e)));
    for (const ev of live) if (!tail.has(JSON.stringify(ev))) out.line({ type: "event", event: ev });
    backlogDone = true;
    out.line({ type: "following" });
    if (!out.closed.aborted) await new Promise<void>((resolve) => out.closed.addEventListener("abort", () => resolve(), { once: true }));
  } finally {
    host.supervisor.off("vm-event", onEvent);
  }
}

/** Checks a body against a schema with cross-field rules the contract's object schema cannot carry; a 400 naming the field otherwise. */
function parseWith<S extends z.ZodTypeAny>(schema: S, body: unknown): z.output<S> {
  const r = schema.safeParse(body);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new VmhostError("bad-request", `invalid request: ${i ? `${i.path.join(".") || "body"}: ${i.message}` : "invalid"}`);
  }
  return r.data;
}
