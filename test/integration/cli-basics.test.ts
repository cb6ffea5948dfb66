import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import { TestHost, VMHOST } from "../helpers/harness.js";

/** The CLI's own manners: help per command, suggestions, completion scripts that work in bash, --json. No VM boots. */

let host: TestHost;

before(async () => {
  host = await TestHost.create();
  await host.ok(["new", "web server", "--generation", "2"]);
  await host.ok(["new", "db", "--generation", "1", "--memory", "64"]);
});

after(async () => {
  await host?.cleanup();
});

function bash(script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["--norc", "--noprofile", "-c", script], { env: host.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`bash: ${code}: ${err}`))));
  });
}

test("`vmhost start --help` and `vmhost help start` describe the command; no command prints the list", async () => {
  const a = await host.cli(["start", "--help"]);
  assert.equal(a.code, 0);
  assert.match(a.stdout, /Usage: vmhost start \[options\] <name>/);
  assert.match(a.stdout, /Start-VM/);
  const b = await host.cli(["help", "start"]);
  assert.equal(b.stdout, a.stdout);
  const fw = await host.ok(["firmware", "set", "--help"]);
  assert.match(fw, /--boot-order <ids>/);
  const none = await host.cli([]);
  assert.equal(none.code, 2);
  assert.match(none.stdout, /copy-file \[options\] <name> <source> <dest>/);
});

test("a mistyped command gets a suggestion; usage errors exit 2", async () => {
  const r = await host.cli(["firmwre", "get", "db"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown command 'firmwre'/);
  assert.match(r.stderr, /Did you mean firmware\?/);
  const o = await host.cli(["stop", "db", "--forse"]);
  assert.equal(o.code, 2);
  assert.match(o.stderr, /Did you mean --force\?/);
  const m = await host.cli(["start"]);
  assert.equal(m.code, 2);
  assert.match(m.stderr, /missing required argument 'name'/);
});

test("bash completion: commands, VM names (with spaces), switch names, Boot#### ids, option values", async () => {
  const script = await host.ok(["completion", "bash"]);
  assert.match(script, /complete -o default -F _vmhost_complete vmhost/);
  const complete = (line: string[]) =>
    bash(`${script}\nCOMP_WORDS=(${line.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${line.length - 1}; _vmhost_complete; printf '%s\\n' "\${COMPREPLY[@]}"`).then((o) => o.split("\n").filter(Boolean));
  assert.deepEqual(await complete(["vmhost", "fi"]), ["firmware"]);
  assert.deepEqual((await complete(["vmhost", "start", ""])).sort(), ["db", "web\\ server"]);
  assert.deepEqual(await complete(["vmhost", "start", "we"]), ["web\\ server"]);
  assert.deepEqual(await complete(["vmhost", "firmware", "s"]), ["set"]);
  const boot = await complete(["vmhost", "firmware", "set", "web\\ server", "--boot-order", ""]);
  assert.ok(boot.length >= 2 && boot.every((b) => /^Boot[0-9A-F]{4}$/.test(b)), boot.join(","));
  const first = boot[0]!;
  const next = await complete(["vmhost", "firmware", "set", "web\\ server", "--boot-order", `${first},`]);
  assert.ok(next.every((b) => b.startsWith(`${first},Boot`)) && !next.includes(`${first},${first}`), next.join(","));
  assert.deepEqual(await complete(["vmhost", "nic", "add", "db", "--switch", ""]), ["Default\\ Switch"]);
  assert.deepEqual(await complete(["vmhost", "switch", "show", ""]), ["Default\\ Switch"]);
  assert.deepEqual(await complete(["vmhost", "set", "db", "--checkpoint-type", "P"]), ["Production", "ProductionOnly"]);
  assert.deepEqual(await complete(["vmhost", "set", "db", "--disp"]), ["--display"]);
});

test("the zsh completion script is valid zsh when zsh is there", async () => {
  const script = await host.ok(["completion", "zsh"]);
  assert.match(script, /^#compdef vmhost/);
  assert.match(script, /__complete zsh -- /);
  const zsh = await new Promise<boolean>((resolve) => spawn("zsh", ["-c", "exit 0"]).on("exit", (c) => resolve(c === 0)).on("error", () => resolve(false)));
  if (!zsh) return;
  await new Promise<void>((resolve, reject) => {
    const child = spawn("zsh", ["-n"], { stdio: ["pipe", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("exit", (c) => (c === 0 ? resolve() : reject(new Error(err))));
    child.stdin.end(script);
  });
  const words = await new Promise<string>((resolve) => {
    const c = spawn(process.execPath, [VMHOST, "__complete", "zsh", "--", "show", ""], { env: host.env });
    let o = "";
    c.stdout.on("data", (d: Buffer) => (o += d.toString()));
    c.on("exit", () => resolve(o));
  });
  assert.deepEqual(words.trim().split("\n").sort(), ["db", "web server"]);
});

test("every read takes --json and prints the API's reply", async () => {
  for (const args of [["list"], ["show", "db"], ["firmware", "get", "web server"], ["switch", "list"], ["integration", "list", "db"], ["events", "db"], ["jobs", "list"], ["media", "list"], ["token", "list"], ["trust", "list"], ["audit"], ["host"], ["service", "status"]]) {
    const out = await host.ok([...args, "--json"]);
    assert.doesNotThrow(() => JSON.parse(out), `${args.join(" ")} --json: ${out.slice(0, 200)}`);
  }
});
