import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { TestHost, VMHOST, type CliResult } from "../helpers/harness.js";

/**
 * Access to the unix socket is its group's: a member of `vmhost` (a real unprivileged user made
 * for this test) manages VMs without root; another user is refused and sees nothing of the home.
 * The service runs as root, as it does on a host.
 */

const suffix = randomBytes(3).toString("hex");
const MEMBER = `vmhm${suffix}`;
const OTHER = `vmho${suffix}`;
let host: TestHost;

function uidOf(user: string): number {
  return Number(execFileSync("id", ["-u", user]).toString().trim());
}

/** The CLI as another user (setpriv: that user's uid, gid and supplementary groups; the environment, with VMHOST_HOME, kept). */
function cliAs(user: string, args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn("setpriv", [`--reuid=${user}`, `--regid=${user}`, "--init-groups", "--", process.execPath, VMHOST, ...args], {
      env: { ...host.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("exit", (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

before(async () => {
  execFileSync("sh", ["-c", "getent group vmhost >/dev/null || groupadd --system vmhost"]);
  execFileSync("useradd", ["--no-create-home", "--shell", "/usr/sbin/nologin", "-G", "vmhost", MEMBER]);
  execFileSync("useradd", ["--no-create-home", "--shell", "/usr/sbin/nologin", OTHER]);
  host = await TestHost.create();
  await host.ok(["service", "start"]);
});

after(async () => {
  await host?.cleanup();
  for (const u of [MEMBER, OTHER]) {
    try {
      execFileSync("userdel", [u], { stdio: "ignore" });
    } catch {
      /* not made */
    }
  }
});

test("the socket is 0660 in the vmhost group and only the group can reach it", async () => {
  const gid = Number(execFileSync("getent", ["group", "vmhost"]).toString().split(":")[2]);
  const sock = await stat(join(host.home, "run", "vmhostd.sock"));
  assert.equal(sock.mode & 0o777, 0o660);
  assert.equal(sock.gid, gid);
  for (const dir of [host.home, join(host.home, "run")]) {
    const st = await stat(dir);
    assert.equal(st.mode & 0o777, 0o710, `${dir} is reachable by the group only`);
    assert.equal(st.gid, gid);
  }
  for (const dir of ["vms", "host", "disks", "media"]) assert.equal((await stat(join(host.home, dir))).mode & 0o777, 0o700, `${dir} stays private`);
});

test("a member of the vmhost group manages VMs without root, and the audit log names it", async () => {
  let r = await cliAs(MEMBER, ["new", "group vm", "--generation", "1", "--memory", "64"]);
  assert.equal(r.code, 0, r.stderr);
  r = await cliAs(MEMBER, ["set", "group vm", "--notes", "made by a group member"]);
  assert.equal(r.code, 0, r.stderr);
  r = await cliAs(MEMBER, ["list", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual((JSON.parse(r.stdout) as { name: string }[]).map((v) => v.name), ["group vm"]);
  r = await cliAs(MEMBER, ["remove", "group vm"]);
  assert.equal(r.code, 0, r.stderr);
  const audit = (await readFile(join(host.home, "host", "audit.log"), "utf8")).trim().split("\n").map((l) => JSON.parse(l) as { who: string; route: string; result: string });
  const uid = uidOf(MEMBER);
  const mine = audit.filter((e) => e.who === `local uid ${uid} (${MEMBER})`).map((e) => `${e.route} ${e.result}`);
  assert.deepEqual(mine, ["vms.create ok", "vms.set ok", "vms.remove ok"]);
});

test("another user is refused with a message that names the group", async () => {
  const r = await cliAs(OTHER, ["list"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /you may not use vmhostd's socket .*vmhost group/);
  const n = await cliAs(OTHER, ["new", "intruder", "--generation", "1"]);
  assert.equal(n.code, 1);
  assert.deepEqual(JSON.parse(await host.ok(["list", "--json"])), []);
});
