import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { basename, resolve } from "node:path";
import { Transform } from "node:stream";
import { Command, Option } from "commander";
import { VmhostClient } from "../../packages/sdk/src/index.js";
import { decodeTrustToken, enroll, fetchPinnedCertificate, httpsTransport } from "../../packages/sdk/src/node.js";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { out } from "./args.js";
import { changeCommand, readCommand, type CliContext } from "./context.js";
import { printTable } from "./format.js";
import { ProgressBar } from "./progress.js";
import { RemoteStore } from "./remotes.js";

const ROLES = ["reader", "operator", "administrator"] as const;

/** Trust, API tokens, remotes, the audit log, jobs and uploaded media. */
export function accessCommands(program: Command, ctx: CliContext): void {
  // ---- trust --------------------------------------------------------------------------------------
  const trust = program.command("trust").description("client certificates trusted over HTTPS, added with one-time tokens");
  changeCommand(trust, "add", "print a one-time token for a new client (it runs: vmhost remote add NAME https://HOST:8443 --token TOKEN)")
    .argument("<name>", "the client's name (a laptop, another host)")
    .addOption(new Option("--role <role>", "what it may do").choices(ROLES).default("administrator"))
    .option("--expires <hours>", "the token's life", "24")
    .action(async (name: string, o: { role: (typeof ROLES)[number]; expires: string; json?: boolean }) => {
      const hours = Number(o.expires);
      if (!(hours > 0 && hours <= 168)) throw new VmhostError("usage", "--expires must be 1 to 168 hours");
      const c = await ctx.conn();
      const t = await c.api.trust.add({ name, role: o.role, expiresInSeconds: Math.round(hours * 3600) });
      const l = await c.api.service.get().catch(() => undefined);
      out(o.json, t, () => {
        console.log(`Trust token for "${t.name}" (${t.role}), valid until ${t.expiresAt}, usable once:`);
        console.log(t.token);
        console.log(`On the client: vmhost remote add ${t.name} https://THIS-HOST:${l?.address?.split(":").pop() ?? "8443"} --token ${t.token.slice(0, 12)}...`);
        if (!l?.listening) console.log("Note: vmhostd does not listen on HTTPS yet: vmhost service listen :8443");
      });
    });
  readCommand(trust, "list", "trusted certificates and pending tokens").action(async (o: { json?: boolean }) => {
    const t = await (await ctx.conn()).api.trust.list();
    out(o.json, t, () => {
      printTable(["Name", "Role", "Added", "Fingerprint (SHA-256)"], t.certificates.map((x) => [x.name, x.role, x.addedAt, x.fingerprint]));
      for (const p of t.pending) console.log(`pending token: ${p.name} (${p.role}) until ${p.expiresAt}`);
    });
  });
  changeCommand(trust, "remove", "stop trusting a client (or drop its pending token); at once")
    .argument("<name>", "the client's name")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await (await ctx.conn()).api.trust.remove({ name });
      out(o.json, r, () => console.log(`"${name}" is not trusted any more`));
    });

  // ---- API tokens ---------------------------------------------------------------------------------
  const token = program.command("token").description("named API tokens (Authorization: Bearer) with a role; stored hashed");
  changeCommand(token, "add", "make a token; its secret is printed once")
    .argument("<name>", "the token's name")
    .addOption(new Option("--role <role>", "what it may do").choices(ROLES).makeOptionMandatory())
    .action(async (name: string, o: { role: (typeof ROLES)[number]; json?: boolean }) => {
      const t = await (await ctx.conn()).api.tokens.add({ name, role: o.role });
      out(o.json, t, () => {
        console.log(`API token "${t.name}" (${t.role}); shown once, keep it:`);
        console.log(t.token);
      });
    });
  readCommand(token, "list", "the tokens (never their secrets)").action(async (o: { json?: boolean }) => {
    const l = await (await ctx.conn()).api.tokens.list();
    out(o.json, l, () => printTable(["Name", "Role", "Created"], l.map((t) => [t.name, t.role, t.createdAt])));
  });
  changeCommand(token, "remove", "revoke a token (and its browser sessions); at once")
    .argument("<name>", "the token's name")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await (await ctx.conn()).api.tokens.remove({ name });
      out(o.json, r, () => console.log(`API token "${name}" revoked`));
    });

  // ---- remotes (this user's) ----------------------------------------------------------------------
  const remote = program.command("remote").description("remote vmhost hosts this user manages with --remote NAME (kept in ~/.config/vmhost)");
  remote
    .command("add")
    .description("join a remote host with the one-time token `vmhost trust add` printed there (or an API token and the server's fingerprint)")
    .argument("<name>", "a name for the remote")
    .argument("<url>", "https://HOST:8443")
    .option("--token <trust-token>", "the one-time trust token")
    .option("--api-token <token>", "an API token instead (vmhost token add)")
    .option("--fingerprint <sha256>", "with --api-token: the server certificate's SHA-256 (vmhost service status there)")
    .option("--json", "print as JSON")
    .action(async (name: string, url: string, o: { token?: string; apiToken?: string; fingerprint?: string; json?: boolean }) => {
      const store = new RemoteStore();
      if (!/^https:\/\//.test(url)) throw new VmhostError("usage", `${url} is not an https:// URL`);
      if (o.token) {
        decodeTrustToken(o.token);
        const e = await enroll(url, o.token, name);
        await store.add(name, { url, fingerprint: e.fingerprint, auth: "certificate", role: e.role, serverCertificate: e.serverCertificate, clientKey: e.clientKey, clientCert: e.clientCert });
        out(o.json, { name, url, fingerprint: e.fingerprint, role: e.role, auth: "certificate" }, () =>
          console.log(`Remote "${name}" added: ${url}, server certificate ${e.fingerprint} pinned, this client trusted there as "${e.name}" (${e.role}).`),
        );
        return;
      }
      if (o.apiToken) {
        if (!o.fingerprint) throw new VmhostError("usage", "--api-token needs --fingerprint (the server certificate's SHA-256, from vmhost service status on that host)");
        const fp = o.fingerprint.toUpperCase();
        const serverCertificate = await fetchPinnedCertificate(url, fp);
        const client = new VmhostClient(httpsTransport({ url, serverCertificate, token: o.apiToken }));
        try {
          const who = await client.api.session.whoami();
          await store.add(name, { url, fingerprint: fp, auth: "token", role: who.identity.role, serverCertificate, token: o.apiToken });
          out(o.json, { name, url, fingerprint: fp, role: who.identity.role, auth: "token" }, () => console.log(`Remote "${name}" added: ${url} as ${who.identity.name} (${who.identity.role}).`));
        } finally {
          client.close();
        }
        return;
      }
      throw new VmhostError("usage", "remote add NAME URL --token TRUST-TOKEN (or --api-token TOKEN --fingerprint SHA256)");
    });
  readCommand(remote, "list", "the remotes").action(async (o: { json?: boolean }) => {
    const all = await new RemoteStore().list();
    out(o.json, all, () => printTable(["Name", "URL", "Auth", "Role", "Fingerprint"], Object.entries(all).map(([n, r]) => [n, r.url, r.auth, r.role ?? "", r.fingerprint])));
  });
  remote
    .command("remove")
    .description("forget a remote (its key and pinned certificate)")
    .argument("<name>")
    .action(async (name: string) => {
      await new RemoteStore().remove(name);
      console.log(`Remote "${name}" removed.`);
    });

  // ---- audit, jobs, media -------------------------------------------------------------------------
  readCommand(program, "audit", "the audit log: every change, who, when, result")
    .option("--limit <n>", "the last N entries", "50")
    .action(async (o: { limit: string; json?: boolean }) => {
      const l = await (await ctx.conn()).api.audit.list({ limit: Number(o.limit) });
      out(o.json, l, () => printTable(["When", "Who", "What", "Target", "Result"], l.map((e) => [e.at, e.who, `${e.method} ${e.route}`, e.target ?? "", `${e.result} ${e.status}`])));
    });

  const jobs = program.command("jobs").description("long operations (copy-file, and later checkpoints, export, migration)");
  readCommand(jobs, "list", "running and recent jobs").action(async (o: { json?: boolean }) => {
    const l = await (await ctx.conn()).api.jobs.list();
    out(o.json, l, () =>
      printTable(["Id", "Kind", "VM", "State", "Progress", "By"], l.map((j) => [j.id, j.kind, j.vm ?? "", j.state, j.progress.total ? `${Math.floor((100 * j.progress.done) / j.progress.total)}%` : "", j.by])),
    );
  });
  readCommand(jobs, "show", "one job").argument("<id>").action(async (id: string, o: { json?: boolean }) => {
    const j = await (await ctx.conn()).api.jobs.get({ id });
    out(o.json, j, () => console.log(`${j.id} ${j.kind} ${j.state}${j.error ? `: ${j.error.message}` : ""}`));
  });
  changeCommand(jobs, "cancel", "cancel a job where that is safe").argument("<id>").action(async (id: string, o: { json?: boolean }) => {
    const j = await (await ctx.conn()).api.jobs.cancel({ id });
    out(o.json, j, () => console.log(`${j.id} ${j.kind}: ${j.state}`));
  });

  const media = program.command("media").description("ISOs, disk and floppy images uploaded to the host (remote callers name only these)");
  readCommand(media, "list", "the media folder").action(async (o: { json?: boolean }) => {
    const l = await (await ctx.conn()).api.media.list();
    out(o.json, l, () => printTable(["Name", "Size", "Path"], l.map((m) => [m.name, formatSize(m.bytes), m.path])));
  });
  changeCommand(media, "upload", "upload a file; use the path it prints with new --dvd/--disk, dvd set, disk add")
    .argument("<file>", "a file on this machine")
    .option("--name <name>", "its name on the host (default: the file's name)")
    .option("--progress", "show the progress bar even when stderr is not a terminal")
    .action(async (file: string, o: { name?: string; progress?: boolean; json?: boolean }) => {
      const path = resolve(file);
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) throw new VmhostError("source", `${path} is not a readable regular file`);
      const bar = o.progress || (!o.json && process.stderr.isTTY) ? new ProgressBar("uploading") : undefined;
      let sent = 0;
      const counter = new Transform({
        transform(chunk: Buffer, _e, cb) {
          sent += chunk.length;
          bar?.update(sent, st.size);
          cb(null, chunk);
        },
      });
      const m = await (await ctx.conn()).api.media.upload({ file: o.name ?? basename(path) }, createReadStream(path).pipe(counter));
      bar?.finish();
      out(o.json, m, () => console.log(`Uploaded ${m.name} (${formatSize(m.bytes)}): ${m.path}`));
    });
  changeCommand(media, "remove", "delete an uploaded file (refused while a VM uses it)")
    .argument("<name>")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await (await ctx.conn()).api.media.remove({ file: name });
      out(o.json, r, () => console.log(`Removed ${name}.`));
    });
}
