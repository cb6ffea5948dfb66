import { createServer } from "node:http";
import { chmod, rm } from "node:fs/promises";
import { mkdir } from "node:fs/promises";
import { ServiceLock } from "../home/lock.js";
import { VmHost } from "./vmhost.js";
import { apiHandler } from "./api.js";

/** No requests and no running VM for this long: the on-demand service exits. 0 keeps it up. */
const IDLE_EXIT_MS = Number(process.env["VMHOST_IDLE_EXIT_MS"] ?? 10 * 60 * 1000);

function log(msg: string): void {
  process.stdout.write(`${new Date().toISOString()} vmhostd[${process.pid}] ${msg}\n`);
}

async function main(): Promise<void> {
  const host = new VmHost();
  const { serviceSocket, serviceLock, hostDir, home } = host.layout;
  await mkdir(home, { recursive: true, mode: 0o700 });
  await mkdir(hostDir, { recursive: true, mode: 0o700 });
  // One vmhostd per home, decided by a lock the kernel drops when its holder dies.
  const lock = await ServiceLock.acquire(serviceLock);
  if (!lock) {
    log("another vmhostd already serves this home");
    return;
  }
  await host.init();
  if (host.migration?.moved.length || host.migration?.skipped.length) {
    log(`home layout ${host.migration.from} -> ${host.migration.to}: moved ${host.migration.moved.map((m) => `${m.from} -> ${m.to}`).join(", ") || "nothing"}${host.migration.skipped.length ? `; left as they were: ${host.migration.skipped.map((s) => `${s.folder} (${s.reason})`).join(", ")}` : ""}`);
  }
  await rm(serviceSocket, { force: true });
  let lastActivity = Date.now();
  const server = createServer(apiHandler(host, () => (lastActivity = Date.now())));
  server.keepAliveTimeout = 1000;
  server.requestTimeout = 0;
  await new Promise<void>((resolve) => server.listen(serviceSocket, resolve));
  await chmod(serviceSocket, 0o600);
  log(`serving ${home} on ${serviceSocket}`);

  const shutdown = async (why: string) => {
    log(`stopping (${why}); running VMs keep running and are adopted by the next vmhostd`);
    server.close();
    host.close();
    await rm(serviceSocket, { force: true });
    await lock.release();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  host.supervisor.on("vm-event", (ev) => log(`${ev.vm}: ${ev.type}: ${ev.message}`));

  if (IDLE_EXIT_MS > 0) {
    setInterval(() => {
      if (host.supervisor.runningPids().length === 0 && Date.now() - lastActivity > IDLE_EXIT_MS) void shutdown("idle");
    }, Math.min(IDLE_EXIT_MS, 30_000)).unref();
  }
}

main().catch((err: Error) => {
  log(`fatal: ${err.stack ?? err.message}`);
  process.exit(1);
});
