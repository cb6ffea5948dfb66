import { readFile } from "node:fs/promises";
import { Command } from "commander";
import { VmhostError } from "../util/errors.js";
import { out } from "./args.js";
import { changeCommand, readCommand, type CliContext } from "./context.js";

/** vmhostd itself: start, stop, status, and its HTTPS listener. Stopping it never stops running VMs. */
export function serviceCommands(program: Command, ctx: CliContext): void {
  const service = program.command("service").description("vmhostd: start, stop, status, the HTTPS listener");
  const local = async () => {
    const c = await ctx.conn();
    if (!c.local) throw new VmhostError("usage", "service start|stop|status act on this host's vmhostd; drop --remote");
    return c.local;
  };
  service
    .command("status")
    .description("whether vmhostd runs, and where it listens")
    .option("--json", "print as JSON")
    .action(async (o: { json?: boolean }) => {
      const c = await ctx.conn();
      if (c.local && !(await c.local.isServiceRunning())) {
        out(o.json, { running: false }, () => console.log("vmhostd is not running"));
        process.exitCode = 3;
        return;
      }
      const l = await c.api.service.get();
      const pid = c.local ? (await readFile(c.local.layout.serviceLock, "utf8").catch(() => "")).trim() : undefined;
      out(o.json, { running: true, ...(pid ? { pid: Number(pid) } : {}), ...l }, () => {
        console.log(`vmhostd is running${pid ? ` (pid ${pid})` : ""}${c.local ? ` on ${c.local.layout.serviceSocket}` : ` (remote ${c.remote})`}`);
        console.log(
          l.listening
            ? `HTTPS: https://${l.address} (TLS 1.3), server certificate SHA-256 ${l.fingerprint}`
            : `HTTPS: off${l.address ? ` (${l.address} configured${l.error ? `: ${l.error}` : ""})` : ""}; vmhost service listen :8443 turns it on`,
        );
      });
    });
  service
    .command("start")
    .description("start vmhostd (commands start it on demand anyway)")
    .action(async () => {
      const l = await local();
      if (!(await l.isServiceRunning())) await l.startService();
      console.log("vmhostd is running");
    });
  service
    .command("stop")
    .description("stop vmhostd; running VMs keep running and are adopted by the next one")
    .action(async () => {
      const l = await local();
      if (!(await l.isServiceRunning())) {
        console.log("vmhostd is not running");
        return;
      }
      const pid = Number((await readFile(l.layout.serviceLock, "utf8")).trim());
      process.kill(pid, "SIGTERM");
      for (let i = 0; i < 200 && (await l.isServiceRunning()); i++) await new Promise((r) => setTimeout(r, 25));
      console.log("vmhostd stopped (running VMs keep running)");
    });
  changeCommand(service, "listen", "serve the API over HTTPS (TLS 1.3) too; kept across restarts")
    .argument("<address>", '":8443" (every address), "127.0.0.1:8443", "[::1]:8443"')
    .action(async (address: string, o: { json?: boolean }) => {
      const l = await (await ctx.conn()).api.service.listen({ address });
      out(o.json, l, () => {
        console.log(`vmhostd listens on https://${l.address} (TLS 1.3)`);
        console.log(`Server certificate SHA-256: ${l.fingerprint}`);
        console.log("Trust a client with: vmhost trust add NAME (prints a one-time token), or make an API token: vmhost token add NAME --role ROLE");
      });
    });
  changeCommand(service, "unlisten", "stop serving HTTPS").action(async (o: { json?: boolean }) => {
    const l = await (await ctx.conn()).api.service.unlisten();
    out(o.json, l, () => console.log("vmhostd does not listen on HTTPS now"));
  });
  void readCommand;
}
