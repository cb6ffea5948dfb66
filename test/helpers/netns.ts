import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { run } from "../../src/images/appliance/run.js";
import { sleep } from "./harness.js";

/**
 * Network namespaces a test makes for itself: the "host" vmhost runs in (bridges, taps, dnsmasq
 * and nft rules land there, never on the real host) and, where a test needs one, a namespace
 * playing the physical LAN. Traffic stays inside them. Cleanup kills what runs inside and
 * deletes them, and runs even when the test failed.
 */
export class TestNetns {
  private readonly children: ChildProcess[] = [];

  private constructor(readonly name: string) {}

  static async create(tag: string): Promise<TestNetns> {
    const name = `vmhtest-${tag}-${randomBytes(3).toString("hex")}`;
    await run("ip", ["netns", "add", name]);
    await run("ip", ["-n", name, "link", "set", "lo", "up"]);
    return new TestNetns(name);
  }

  ip(...args: string[]): Promise<string> {
    return run("ip", ["-n", this.name, ...args]).then((r) => r.stdout);
  }

  /** A command inside the namespace, to completion. */
  exec(argv: string[]): Promise<string> {
    return run("nsenter", [`--net=/run/netns/${this.name}`, ...argv]).then((r) => r.stdout);
  }

  /** A long-running process inside the namespace; its output is collected; killed at cleanup. */
  spawn(argv: string[]): { child: ChildProcess; output: () => string } {
    const child = spawn("nsenter", [`--net=/run/netns/${this.name}`, ...argv], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
    this.children.push(child);
    return { child, output: () => out };
  }

  /** A TCP listener in the namespace that prints each peer's address and what it sent. */
  listen(port: number): { output: () => string } {
    const code = `require("net").createServer((s) => { let d = ""; s.on("data", (b) => (d += b)); s.on("end", () => { console.log("PEER " + s.remoteAddress + " SENT " + d.trim()); s.end(); }); }).listen(${port}, () => console.log("LISTENING"));`;
    return this.spawn([process.execPath, "-e", code]);
  }

  async pids(): Promise<number[]> {
    return pidsIn(this.name);
  }

  async cleanup(): Promise<void> {
    for (const c of this.children) if (c.exitCode === null) c.kill("SIGKILL");
    await killAndDelete(this.name);
  }
}

export async function pidsIn(netns: string): Promise<number[]> {
  const out = await run("ip", ["netns", "pids", netns]).then((r) => r.stdout, () => "");
  return out.split(/\s+/).filter(Boolean).map(Number);
}

/** Kill every process in a namespace (by pid, as listed by `ip netns pids`), then delete it. */
export async function killAndDelete(netns: string): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const pids = await pidsIn(netns);
    if (!pids.length) break;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone already */
      }
    }
    await sleep(300);
  }
  await run("ip", ["netns", "del", netns]).catch(() => undefined);
}

/** The service namespaces of the switches defined under a vmhost home (private switches with DHCP). */
export async function switchNamespaces(home: string): Promise<string[]> {
  const dir = join(home, "switches");
  const files = await readdir(dir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const f of files.filter((x) => x.endsWith(".json"))) {
    const sw = JSON.parse(await readFile(join(dir, f), "utf8")) as { id: string };
    out.push(`vmhost-sw-${sw.id.replace(/-/g, "").slice(0, 8)}`);
  }
  return out;
}

export async function netnsExists(name: string): Promise<boolean> {
  const out = await run("ip", ["netns", "list"]).then((r) => r.stdout);
  return out.split("\n").some((l) => l.split(/\s+/)[0] === name);
}
