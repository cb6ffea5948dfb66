import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { resolve } from "node:path";
import { Transform } from "node:stream";
import { Command, Option } from "commander";
import type { JobView } from "../api/views.js";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { out } from "./args.js";
import type { Connection } from "./connection.js";
import { changeCommand, readCommand, type CliContext } from "./context.js";
import { printTable } from "./format.js";
import { ProgressBar } from "./progress.js";

/** The integration-services commands: integration, kvp, copy-file, vss, and events --follow. */

interface IntegrationView {
  vm: string;
  state: string;
  services: { name: string; enabled: boolean; primaryStatus: string; detail: string }[];
}

function printServices(v: IntegrationView): void {
  printTable(
    ["Name", "Enabled", "PrimaryStatus", "Detail"],
    v.services.map((s) => [s.name, s.enabled ? "True" : "False", s.primaryStatus, s.detail]),
  );
}

export function guestCommands(program: Command, ctx: CliContext): void {
  const integration = program.command("integration").description("integration services (Get/Enable/Disable-VMIntegrationService)");
  readCommand(integration, "list", "the six services and their status")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const view = await (await ctx.conn()).api.integration.list({ vm: name });
      out(o.json, view, () => printServices(view));
    });
  for (const sub of ["enable", "disable"] as const) {
    changeCommand(integration, sub, `${sub} a service (e.g. "Guest Service Interface")`)
      .argument("<name>", "VM name or id")
      .argument("<service...>", "the service's name")
      .action(async (name: string, service: string[], o: { json?: boolean }) => {
        const view = await (await ctx.conn()).api.integration.set({ vm: name, service: service.join(" "), enabled: sub === "enable" });
        out(o.json, view, () => printServices(view));
      });
  }

  const kvp = program.command("kvp").description("key-value pair exchange (Hyper-V's KVP pools)");
  readCommand(kvp, "get", "the pools: external (host items), intrinsic and guest while the guest answers")
    .argument("<name>", "VM name or id")
    .addOption(new Option("--pool <pool>", "one pool").choices(["intrinsic", "guest", "external"]))
    .action(async (name: string, o: { pool?: "intrinsic" | "guest" | "external"; json?: boolean }) => {
      const c = await ctx.conn();
      const pools = o.pool ? await c.api.integration.kvpPool({ vm: name, pool: o.pool }) : await c.api.integration.kvp({ vm: name });
      out(o.json, pools, () =>
        printTable(
          ["Pool", "Key", "Value"],
          Object.entries(pools).flatMap(([pl, items]) => Object.entries(items).map(([k, val]) => [pl, k, val])),
        ),
      );
    });
  changeCommand(kvp, "set", "set a host item (the guest's external pool)")
    .argument("<name>", "VM name or id")
    .argument("<key>")
    .argument("<value>")
    .action(async (name: string, key: string, value: string, o: { json?: boolean }) => {
      const res = await (await ctx.conn()).api.integration.kvpSet({ vm: name, key, value });
      out(o.json, res, () => console.log(`${name}: ${res.key} set${res.delivered ? " (in the guest's external pool)" : `; ${res.note ?? "not delivered yet"}`}`));
    });
  changeCommand(kvp, "remove", "remove a host item")
    .argument("<name>", "VM name or id")
    .argument("<key>")
    .action(async (name: string, key: string, o: { json?: boolean }) => {
      const res = await (await ctx.conn()).api.integration.kvpRemove({ vm: name, key });
      out(o.json, res, () => console.log(`${name}: ${res.key} removed${res.delivered ? " (from the guest's external pool)" : `; ${res.note ?? ""}`}`));
    });

  changeCommand(program, "copy-file", "copy a host file into the guest (Copy-VMFile): chunked, verified by size and SHA-256, with a progress bar")
    .argument("<name>", "VM name or id")
    .argument("<source>", "a file on this machine")
    .argument("<dest>", "the full path in the guest")
    .option("--create-full-path", "create the guest folders that are missing")
    .option("--force", "overwrite an existing file")
    .option("--upload", "send the file's bytes over the API even to the local host (remote hosts always get them so)")
    .option("--progress", "show the progress bar even when stderr is not a terminal")
    .option("--no-progress", "no progress bar")
    .action(async (name: string, source: string, destination: string, o: { createFullPath?: boolean; force?: boolean; upload?: boolean; progress?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      const src = resolve(source);
      const show = o.progress ?? (!o.json && process.stderr.isTTY === true);
      const job = await startCopy(c, name, src, destination, o.createFullPath === true, o.force === true, o.upload === true, show);
      const bar = show ? new ProgressBar("copying  ") : undefined;
      const done = await c.client.followJob(job.id, (j) => {
        if (j.progress.total > 0) bar?.update(j.progress.done, j.progress.total);
      });
      bar?.finish();
      if (done.state !== "succeeded") throw new VmhostError(done.error?.code ?? done.state, done.error?.message ?? `the copy ${done.state}`);
      const r = done.result as { source: string; destination: string; bytes: number; seconds: number; sha256: string; verifiedBy: string };
      out(o.json, r, () =>
        console.log(
          `Copied ${source} to ${name}:${r.destination}: ${formatSize(r.bytes)} in ${r.seconds.toFixed(1)} s, verified (size and SHA-256 ${r.sha256} ${r.verifiedBy === "sha256sum" ? "computed in the guest" : "read back from the guest"})`,
        ),
      );
    });

  const vss = program.command("vss").description("freeze and thaw the guest's file systems (the guest agent's fsfreeze)");
  changeCommand(vss, "freeze", "freeze; thawed by the timeout at the latest")
    .argument("<name>", "VM name or id")
    .option("--timeout <seconds>", "thaw after this many seconds at the latest")
    .action(async (name: string, o: { timeout?: string; json?: boolean }) => {
      if (o.timeout !== undefined && !/^\d+$/.test(o.timeout)) throw new VmhostError("usage", "--timeout must be whole seconds");
      const res = (await (await ctx.conn()).api.integration.freeze({ vm: name, ...(o.timeout ? { timeoutSeconds: Number(o.timeout) } : {}) })) as { frozen: number; thawBy: string };
      out(o.json, res, () => console.log(`${name}: ${res.frozen} file system(s) frozen; thawed by ${res.thawBy} at the latest`));
    });
  changeCommand(vss, "thaw", "thaw")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const res = (await (await ctx.conn()).api.integration.thaw({ vm: name })) as { thawed: number };
      out(o.json, res, () => console.log(`${name}: ${res.thawed} file system(s) thawed`));
    });
  readCommand(vss, "status", "whether the guest's file systems are frozen")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const res = (await (await ctx.conn()).api.integration.vss({ vm: name })) as { status: string; thawBy?: string };
      out(o.json, res, () => console.log(`${name}: ${res.status}${res.thawBy ? ` (thawed by ${res.thawBy} at the latest)` : ""}`));
    });
}

/** Starts the copy job: a local path for the local host, else the file's bytes as an upload (with its own bar). */
async function startCopy(c: Connection, vm: string, src: string, destination: string, createFullPath: boolean, force: boolean, upload: boolean, show: boolean): Promise<JobView> {
  if (c.local && !upload) return c.api.integration.copyFile({ vm, source: src, destination, createFullPath, force });
  const st = await stat(src).catch(() => undefined);
  if (!st?.isFile()) throw new VmhostError("source", `the source ${src} is not a readable regular file`);
  const bar = show ? new ProgressBar("uploading") : undefined;
  let sent = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      bar?.update(sent, st.size);
      cb(null, chunk);
    },
  });
  const data = createReadStream(src).pipe(counter);
  try {
    return await c.api.integration.copyFileUpload({ vm, destination, createFullPath: createFullPath ? "true" : "false", force: force ? "true" : "false" }, data);
  } finally {
    bar?.finish();
  }
}

/** events NAME --follow: the journal, then new events as they happen (Ctrl-C ends it). */
export async function followEvents(c: Connection, name: string, json: boolean): Promise<void> {
  for await (const line of c.api.vms.eventsFollow({ vm: name })) {
    if (line.type !== "event") continue;
    const e = line.event;
    if (json) process.stdout.write(JSON.stringify(e) + "\n");
    else console.log(`${e.at}  ${e.type.padEnd(20)} ${e.message}`);
  }
}
