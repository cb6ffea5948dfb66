import { chmod, lstat, mkdir } from "node:fs/promises";
import { ServiceLock } from "../home/lock.js";
import { VmHost } from "./vmhost.js";
import { SOCKET_GROUP, groupId, startServer } from "./server/index.js";

/** No requests and no running VM for this long: the on-demand service exits. 0 keeps it up. */
const IDLE_EXIT_MS = Number(process.env["VMHOST_IDLE_EXIT_MS"] ?? 10 * 60 * 1000);

function log(msg: string): void {
  process.stdout.write(`${new Date().toISOString()} vmhostd[${process.pid}] ${msg}\n`);
}

/**
 * vmhostd: one per home (a kernel lock). Serves the API (service/server) on the unix socket and,
 * where `vmhost service listen` asked for it, on HTTPS. A failure inside a request is that
 * request's error reply; anything that escapes (a stray callback) is logged and the service
 * keeps serving: the running VMs' supervision must not end because one client misbehaved.
 */
async function main(): Promise<void> {
  process.on("uncaughtException", (err) => log(`uncaught: ${err.stack ?? err.message}`));
  process.on("unhandledRejection", (err) => log(`unhandled rejection: ${(err as Error)?.stack ?? String(err)}`));
  const host = new VmHost();
  const { serviceLock, hostDir, home, runDir } = host.layout;
  await mkdir(home, { recursive: true, mode: 0o700 });
  await mkdir(hostDir, { recursive: true, mode: 0o700 });
  // One vmhostd per home, decided by a lock the kernel drops when its holder dies.
  const lock = await ServiceLock.acquire(serviceLock);
  if (!lock) {
    log("another vmhostd already serves this home");
    return;
  }
  // With a vmhost group, its members reach the socket through the run folder (0710 + group).
  const gid = process.geteuid?.() === 0 ? await groupId(SOCKET_GROUP) : undefined;
  const runDirMode = gid !== undefined ? 0o710 : 0o700;
  const st = await lstat(runDir).catch(() => undefined);
  if (st?.isDirectory() && !st.isSymbolicLink() && st.uid === process.geteuid?.()) await chmod(runDir, runDirMode);
  await host.init({ runDirMode });
  if (host.migration?.moved.length || host.migration?.skipped.length) {
    log(`home layout ${host.migration.from} -> ${host.migration.to}: moved ${host.migration.moved.map((m) => `${m.from} -> ${m.to}`).join(", ") || "nothing"}${host.migration.skipped.length ? `; left as they were: ${host.migration.skipped.map((s) => `${s.folder} (${s.reason})`).join(", ")}` : ""}`);
  }
  let lastActivity = Date.now();
  const server = await startServer(host, { log, onActivity: () => (lastActivity = Date.now()), socketGroup: gid !== undefined ? SOCKET_GROUP : null });
  log(`serving ${home} on ${host.layout.serviceSocket}${server.socketGid !== undefined ? ` (group ${SOCKET_GROUP}, 0660)` : " (0600)"}`);

  const shutdown = async (why: string) => {
    log(`stopping (${why}); running VMs keep running and are adopted by the next vmhostd`);
    await server.close().catch((err: Error) => log(`closing: ${err.message}`));
    host.close();
    await lock.release();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  host.supervisor.on("vm-event", (ev) => log(`${ev.vm}: ${ev.type}: ${ev.message}`));

  if (IDLE_EXIT_MS > 0) {
    setInterval(() => {
      const listening = server.https.isListening();
      if (!listening && host.supervisor.runningPids().length === 0 && Date.now() - lastActivity > IDLE_EXIT_MS) void shutdown("idle");
    }, Math.min(IDLE_EXIT_MS, 30_000)).unref();
  }
}

main().catch((err: Error) => {
  log(`fatal: ${err.stack ?? err.message}`);
  process.exit(1);
});
