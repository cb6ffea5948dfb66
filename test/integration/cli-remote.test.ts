import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { VmhostClient, ApiError, type SocketLike } from "../../packages/sdk/src/index.js";
import { httpsTransport } from "../../packages/sdk/src/node.js";
import { RemoteStore } from "../../src/cli/remotes.js";
import { BOOT_TIMEOUT_MS, READY, TestHost, VMHOST, type CliResult } from "../helpers/harness.js";

/**
 * Issue 10's "must show", on loopback: after `vmhost service listen` and `vmhost trust add laptop`,
 * a second shell with a fresh HOME adds the remote with the token and runs list, start, console
 * (the serial console over vmhostd's WebSocket), copy-file with its progress bars (an upload) and
 * the graphical console (RFB over the WebSocket) against it; the audit log names the laptop. One
 * appliance VM boots.
 */

const VM = "web";
let host: TestHost;
let laptopHome: string;
let laptopEnv: NodeJS.ProcessEnv;
let url: string;

function laptop(args: string[], input?: (child: ReturnType<typeof spawn>, out: { stdout: string; stderr: string }) => void, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VMHOST, ...args], { env: laptopEnv, stdio: ["pipe", "pipe", "pipe"] });
    const out = { stdout: "", stderr: "" };
    child.stdout!.on("data", (d: Buffer) => (out.stdout += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (out.stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`vmhost ${args.join(" ")} did not finish within ${timeoutMs} ms: ${out.stderr}${out.stdout}`));
    }, timeoutMs);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, ...out });
    });
    if (input) input(child, out);
    else child.stdin!.end();
  });
}

async function waitFor(what: () => boolean, timeoutMs: number, why: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!what()) {
    if (Date.now() > deadline) throw new Error(why());
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  host = await TestHost.create();
  laptopHome = await mkdtemp(join(tmpdir(), "vmhost-laptop-"));
  // The second shell: a fresh HOME, no VMHOST_HOME it could use, only the remote.
  laptopEnv = { PATH: process.env["PATH"], HOME: laptopHome, VMHOST_HOME: join(laptopHome, "no-local-vmhost") };
});

after(async () => {
  await host?.cleanup();
  if (laptopHome) await rm(laptopHome, { recursive: true, force: true });
});

test("service listen + trust add; a fresh HOME adds the remote with the token", { timeout: 120_000 }, async () => {
  await host.ok(["new", VM, "--generation", "2", "--appliance", "--memory", "512M"]);
  await host.ok(["set", VM, "--display", "on"]);
  await host.ok(["integration", "enable", VM, "Guest Service Interface"]);
  const listen = await host.ok(["service", "listen", "127.0.0.1:0"]);
  assert.match(listen, /listens on https:\/\/127\.0\.0\.1:0 \(TLS 1\.3\)/);
  const status = await host.json<{ listening: boolean; port: number; fingerprint: string }>(["service", "status"]);
  assert.equal(status.listening, true);
  url = `https://127.0.0.1:${status.port}`;
  const out = await host.ok(["trust", "add", "laptop"]);
  const token = out.split("\n")[1]!.trim();
  assert.match(out, /Trust token for "laptop" \(administrator\)/);

  const add = await laptop(["remote", "add", "laptop", url, "--token", token]);
  assert.equal(add.code, 0, add.stderr);
  assert.match(add.stdout, new RegExp(`server certificate ${status.fingerprint} pinned`));
  const key = await stat(join(laptopHome, ".config", "vmhost", "remotes", "laptop", "client.key"));
  assert.equal(key.mode & 0o777, 0o600);
  const again = await laptop(["remote", "add", "laptop2", url, "--token", token]);
  assert.equal(again.code, 1, "a trust token is used once");
  assert.match(again.stderr, /unknown, used or expired/);
});

test("--remote list, start, show over HTTPS; nothing local is used or leaked", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  const list = await laptop(["--remote", "laptop", "list", "--json"]);
  assert.equal(list.code, 0, list.stderr);
  assert.deepEqual((JSON.parse(list.stdout) as { name: string; state: string }[]).map((v) => [v.name, v.state]), [[VM, "Off"]]);
  const start = await laptop(["--remote", "laptop", "start", VM]);
  assert.equal(start.code, 0, start.stderr);
  assert.match(start.stdout, /web: Running/);
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
  const show = await laptop(["show", VM, "--json"].concat(["--remote", "laptop"]));
  const vm = JSON.parse(show.stdout) as { state: string; paths?: unknown };
  assert.equal(vm.state, "Running");
  assert.equal(vm.paths, undefined, "no host paths for a remote caller");
  await assert.rejects(stat(laptopEnv["VMHOST_HOME"]!), "the laptop never used a local vmhost");
});

test("--remote console: the serial console over vmhostd's WebSocket, Ctrl-] detaches", { timeout: 120_000 }, async () => {
  const word = `remote-${randomBytes(3).toString("hex")}`;
  const r = await laptop(["--remote", "laptop", "console", VM], (child, out) => {
    void (async () => {
      await waitFor(() => out.stderr.includes("Connected to web's serial console"), 30_000, () => `no console: ${out.stderr}`);
      child.stdin!.write(`echo ${word}-$((6*7))\n`);
      await waitFor(() => out.stdout.includes(`${word}-42`), 60_000, () => `the guest did not echo: ${out.stdout.slice(-500)}`);
      child.stdin!.write(Buffer.from([0x1d]));
    })().catch((err: Error) => {
      out.stderr += err.message;
      child.kill();
    });
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`${word}-42`));
  assert.match(r.stderr, /Detached from web/);
});

test("VMHOST_REMOTE copy-file uploads with a progress bar, then the copy job's bar; verified in the guest", { timeout: 240_000 }, async () => {
  const file = join(laptopHome, "tool.bin");
  await writeFile(file, randomBytes(3 * 1024 * 1024));
  laptopEnv["VMHOST_REMOTE"] = "laptop";
  const c = await laptop(["copy-file", VM, file, "/tmp/tool2.bin", "--progress"], undefined, 200_000);
  delete laptopEnv["VMHOST_REMOTE"];
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stderr, /uploading \[#{30}\] 100%  3 MiB \/ 3 MiB/);
  assert.match(c.stderr, /copying {3}\[#{30}\] 100%  3 MiB \/ 3 MiB/);
  assert.match(c.stdout, /Copied .*tool\.bin to web:\/tmp\/tool2\.bin: 3 MiB .* verified/);
  const jobs = await host.json<{ kind: string; state: string; by: string }[]>(["jobs", "list"]);
  assert.ok(jobs.some((j) => j.kind === "copy-file" && j.state === "succeeded" && j.by === "certificate laptop"));
});

test("the graphical console: RFB through the WebSocket after authentication, refused without", { timeout: 60_000 }, async () => {
  const creds = await new RemoteStore(join(laptopHome, ".config", "vmhost")).get("laptop");
  const client = new VmhostClient(httpsTransport({ url, serverCertificate: creds.serverCertificate, clientKey: creds.clientKey!, clientCert: creds.clientCert! }));
  const anon = new VmhostClient(httpsTransport({ url, serverCertificate: creds.serverCertificate }));
  try {
    await assert.rejects(anon.api.vms.graphicalConsole({ vm: VM }), (e: ApiError) => e.status === 401);
    const ws: SocketLike = await client.api.vms.graphicalConsole({ vm: VM });
    const banner = await new Promise<string>((resolve) => ws.addEventListener("message", (ev) => resolve(Buffer.from(ev.data as Buffer).toString("latin1"))));
    assert.match(banner, /^RFB 003\.00\d\n/);
    ws.close();
  } finally {
    client.close();
    anon.close();
  }
});

test("the audit log names the laptop for each change it made", async () => {
  const log = (await readFile(join(host.home, "host", "audit.log"), "utf8")).trim().split("\n").map((l) => JSON.parse(l) as { who: string; route: string; result: string; transport: string });
  const laptopChanges = log.filter((e) => e.who === "certificate laptop").map((e) => `${e.route} ${e.result}`);
  for (const want of ["vms.start ok", "vms.serialConsole ok", "integration.copyFileUpload ok", "vms.graphicalConsole ok"]) assert.ok(laptopChanges.includes(want), `${want} in ${laptopChanges.join(", ")}`);
  assert.ok(log.some((e) => e.route === "trust.redeem" && e.result === "ok" && e.transport === "https"));
  assert.ok(log.some((e) => e.route === "vms.graphicalConsole" && e.result === "denied"));
  await host.ok(["turn-off", VM]);
});
