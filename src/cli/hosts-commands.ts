import type { Command } from "commander";
import type { MoveResult } from "../service/migration/move.js";
import { VmhostError } from "../util/errors.js";
import { out } from "./args.js";
import { changeCommand, group, readCommand, type CliContext } from "./context.js";
import { printTable } from "./format.js";
import { followJob } from "./travel-commands.js";

/**
 * Many hosts: the peer hosts this vmhostd reaches (host to host, over HTTPS with its own client
 * certificate), and Move-VM (live migration to one of them).
 */
export function hostsCommands(program: Command, ctx: CliContext): void {
  const peer = group(program, "peer", "other vmhost hosts this host's service reaches (Move-VM destinations, cluster members)");
  changeCommand(peer, "add", "enroll with another host: on it run `vmhost trust add THIS-HOST` and give its token here")
    .argument("<name>", "a name for the peer host")
    .argument("<url>", "its API, e.g. https://10.0.0.2:8443")
    .requiredOption("--token <token>", "the trust token the other host printed")
    .action(async (name: string, url: string, o: { token: string; json?: boolean }) => {
      const p = await (await ctx.conn()).api.peers.add({ name, url, token: o.token });
      out(o.json, p, () => console.log(`Peer "${p.name}" at ${p.url} (server certificate SHA-256 ${p.fingerprint}); this host is trusted there as ${p.role}`));
    });
  readCommand(peer, "list", "the peer hosts").action(async (o: { json?: boolean }) => {
    const l = await (await ctx.conn()).api.peers.list();
    out(o.json, l, () => printTable(["Name", "URL", "Role there", "Added"], l.map((p) => [p.name, p.url, p.role, p.addedAt])));
  });
  changeCommand(peer, "remove", "forget a peer host")
    .argument("<name>", "the peer's name")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await (await ctx.conn()).api.peers.remove({ name });
      out(o.json, r, () => console.log(`Peer "${name}" forgotten.`));
    });

  changeCommand(program, "move", "Move-VM: live-migrate a running VM to a peer host; the guest runs on, nothing of it is left here")
    .argument("<name>", "VM name or id")
    .requiredOption("--destination <peer>", "the peer host (vmhost peer add)")
    .option("--include-storage", "copy the disks (and checkpoints) while the guest runs; without it both hosts see the same storage")
    .option("--destination-storage-path <dir>", "where the destination keeps the copied disks (under its vmhost home)")
    .option("--migration-address <address>", "the destination address the streams use (a network you name; default: the peer's API address)")
    .option("--compare", "only report what would not fit on the destination (exit 1 when something does not)")
    .action(async (vm: string, o: { destination: string; includeStorage?: boolean; destinationStoragePath?: string; migrationAddress?: string; compare?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      const body = {
        vm,
        destination: o.destination,
        includeStorage: o.includeStorage === true,
        ...(o.destinationStoragePath ? { destinationStoragePath: o.destinationStoragePath } : {}),
        ...(o.migrationAddress ? { migrationAddress: o.migrationAddress } : {}),
      };
      if (o.compare) {
        const r = await c.api.vms.moveCompare(body);
        out(o.json, r, () => {
          if (r.fits) console.log(`VM "${vm}" fits ${o.destination}.`);
          for (const i of r.incompatibilities) console.log(`  ${i.what}\n      fix: ${i.fix}`);
        });
        if (!r.fits) process.exitCode = 1;
        return;
      }
      const job = await c.api.vms.move(body);
      const r = await followJob<MoveResult>(c, job.id, "moving", !o.json && process.stderr.isTTY === true);
      out(o.json, r, () => {
        console.log(`VM "${r.vm}" moved to ${r.destination}: downtime ${r.downtimeMs ?? "?"} ms, total ${r.totalMs ?? "?"} ms${r.mirroredBytes ? `, ${Math.round(r.mirroredBytes / 1048576)} MiB of disk copied` : ""}`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
      if (!r) throw new VmhostError("error", "the move ended without a result");
    });
}
