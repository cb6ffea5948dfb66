import { readFile } from "node:fs/promises";
import type { ServiceClient } from "../service/client.js";
import { VmhostError } from "../util/errors.js";

/** Start, stop or ask about vmhostd. Stopping it never stops running VMs. */
export async function serviceCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const sub = rest[0];
  const running = await api.isServiceRunning();
  if (sub === "status") {
    const pid = (await readFile(api.layout.serviceLock, "utf8").catch(() => "")).trim();
    console.log(running ? `vmhostd is running (pid ${pid}) on ${api.layout.serviceSocket}` : "vmhostd is not running");
    return running ? 0 : 3;
  }
  if (sub === "start") {
    if (!running) await api.startService();
    console.log("vmhostd is running");
    return 0;
  }
  if (sub === "stop") {
    if (!running) {
      console.log("vmhostd is not running");
      return 0;
    }
    const pid = Number((await readFile(api.layout.serviceLock, "utf8")).trim());
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 200 && (await api.isServiceRunning()); i++) await new Promise((r) => setTimeout(r, 25));
    console.log("vmhostd stopped (running VMs keep running)");
    return 0;
  }
  throw new VmhostError("usage", "service start|stop|status");
}
