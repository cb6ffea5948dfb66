import { chmod, chown, mkdir, readFile, rm } from "node:fs/promises";
import { createServer } from "node:http";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import type { VmHost } from "../vmhost.js";
import { AccessStore } from "./access.js";
import { buildApp, closeApp, DEFAULT_LIMITS, serverOptions, type ServerLimits } from "./app.js";
import { AuditLog } from "./audit.js";
import { handlers } from "./handlers.js";
import { JobRegistry } from "./jobs.js";
import { HttpsListener } from "./listen.js";
import { SessionStore } from "./sessions.js";

/** The group whose members may use the unix socket (Hyper-V's "Hyper-V Administrators"); `./setup` creates it. */
export const SOCKET_GROUP = "vmhost";

/** The gid of a group from /etc/group, or undefined when there is no such group. */
export async function groupId(name: string): Promise<number | undefined> {
  const text = await readFile("/etc/group", "utf8").catch(() => "");
  for (const l of text.split("\n")) {
    const f = l.split(":");
    if (f[0] === name && f[2] !== undefined) return Number(f[2]);
  }
  return undefined;
}

export interface VmhostServer {
  unix: FastifyInstance;
  https: HttpsListener;
  access: AccessStore;
  audit: AuditLog;
  jobs: JobRegistry;
  sessions: SessionStore;
  /** The socket's group, when the vmhost group exists. */
  socketGid?: number;
  close(): Promise<void>;
}

/**
 * Serves a VmHost: the API on the unix socket (mode 0660, group vmhost when that group exists;
 * the folders above it are then 0710 with that group, so members reach the socket and nothing
 * else), and the HTTPS listener where one was configured. Auth material, audit log and listener
 * address live under the home's host folder.
 */
export async function startServer(
  host: VmHost,
  opts: { log: (msg: string) => void; onActivity?: () => void; limits?: ServerLimits; socketGroup?: string | null } = { log: () => undefined },
): Promise<VmhostServer> {
  const { home, hostDir, runDir, serviceSocket } = host.layout;
  const access = new AccessStore(hostDir);
  await access.load();
  const audit = new AuditLog(join(hostDir, "audit.log"));
  const jobs = new JobRegistry();
  const sessions = new SessionStore();
  const mediaDir = join(home, "media");
  const uploadDir = join(hostDir, "uploads");
  await mkdir(mediaDir, { recursive: true, mode: 0o700 });
  await rm(uploadDir, { recursive: true, force: true });
  await mkdir(uploadDir, { recursive: true, mode: 0o700 });
  const limits = opts.limits ?? DEFAULT_LIMITS;
  const base = { host, access, audit, jobs, sessions, mediaDir, uploadDir, log: opts.log, ...(opts.onActivity ? { onActivity: opts.onActivity } : {}) };
  const https = new HttpsListener(base, handlers, join(hostDir, "listen.json"), limits);
  const deps = { ...base, listener: https };

  await rm(serviceSocket, { force: true });
  const server = createServer(serverOptions(limits));
  const unix = await buildApp(deps, handlers, "unix", server, limits);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(serviceSocket, () => resolve());
  });
  server.on("error", (err) => opts.log(`unix socket: ${err.message}`));
  const gid = opts.socketGroup === null ? undefined : await groupId(opts.socketGroup ?? SOCKET_GROUP);
  const uid = process.geteuid?.() ?? 0;
  if (gid !== undefined) {
    for (const dir of new Set([home, runDir])) {
      await chown(dir, uid, gid);
      await chmod(dir, 0o710);
    }
    await chown(serviceSocket, uid, gid);
    await chmod(serviceSocket, 0o660);
  } else {
    await chmod(serviceSocket, 0o600);
  }
  await https.restore();
  return {
    unix,
    https,
    access,
    audit,
    jobs,
    sessions,
    ...(gid !== undefined ? { socketGid: gid } : {}),
    close: async () => {
      await https.close();
      await closeApp(unix, server);
      await rm(serviceSocket, { force: true });
    },
  };
}
