import { createServer } from "node:http";
import { chmod, mkdir, open, readFile, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { VmManager } from "./manager.js";
import { apiHandler } from "./api.js";
import { processCmdline } from "../supervisor/proc.js";

/** No requests and no running VM for this long: the on-demand service exits. 0 keeps it up. */
const IDLE_EXIT_MS = Number(process.env["VMHOST_IDLE_EXIT_MS"] ?? 10 * 60 * 1000);

function log(msg: string): void {
  process.stdout.write(`${new Date().toISOString()} vmhostd[${process.pid}] ${msg}\n`);
}

/** One service per VMHOST_HOME: an exclusive pid file, with stale-file detection. */
async function takeLock(pidFile: string): Promise<boolean> {
  await mkdir(dirname(pidFile), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(pidFile, "wx", 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const pid = Number((await readFile(pidFile, "utf8").catch(() => "")).trim());
      const cmd = pid > 0 ? await processCmdline(pid) : [];
      if (cmd.some((a) => a.endsWith("daemon.js"))) return false;
      await rm(pidFile, { force: true });
    }
  }
  return false;
}

async function main(): Promise<void> {
  const manager = new VmManager();
  const { serviceSocket, servicePidFile } = manager.layout;
  if (!(await takeLock(servicePidFile))) {
    log("another vmhostd already serves this home");
    return;
  }
  await rm(serviceSocket, { force: true });
  await manager.init();
  let lastActivity = Date.now();
  const server = createServer(apiHandler(manager, () => (lastActivity = Date.now())));
  server.keepAliveTimeout = 1000;
  server.requestTimeout = 0;
  await new Promise<void>((resolve) => server.listen(serviceSocket, resolve));
  await chmod(serviceSocket, 0o600);
  log(`serving ${manager.layout.home} on ${serviceSocket}`);

  const shutdown = async (why: string) => {
    log(`stopping (${why}); running VMs keep running and are adopted by the next vmhostd`);
    server.close();
    manager.supervisor.close();
    await rm(serviceSocket, { force: true });
    await rm(servicePidFile, { force: true });
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
  manager.supervisor.on("vm-event", (ev: { vm: string; type: string; message: string }) => log(`${ev.vm}: ${ev.type}: ${ev.message}`));

  if (IDLE_EXIT_MS > 0) {
    setInterval(() => {
      if (manager.supervisor.runningPids().length === 0 && Date.now() - lastActivity > IDLE_EXIT_MS) void shutdown("idle");
    }, Math.min(IDLE_EXIT_MS, 30_000)).unref();
  }
}

main().catch((err: Error) => {
  log(`fatal: ${err.stack ?? err.message}`);
  process.exit(1);
});
