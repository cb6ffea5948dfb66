import { spawn } from "node:child_process";
import { chown, mkdtemp, readFile, rm } from "node:fs/promises";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const VMHOST = join(REPO, "bin", "vmhost");
export const READY = "vmhost-appliance: ready";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * A throw-away vmhost host for one test file: its own VMHOST_HOME, the real CLI and service,
 * and helpers that read what the guest printed on its serial console.
 */
export class TestHost {
  private constructor(
    readonly home: string,
    readonly env: NodeJS.ProcessEnv,
    /** A network namespace the test made: the CLI, and so vmhostd and its QEMUs, run inside it. */
    readonly netns?: string,
    /** Run the CLI (and so the service) as this unprivileged uid/gid; needs netns. */
    readonly user?: number,
  ) {}

  static async create(opts: { accel?: "tcg" | "probe"; netns?: string; user?: number } = {}): Promise<TestHost> {
    if (opts.user !== undefined && !opts.netns) throw new Error("TestHost: a user goes with a netns (nsenter switches both)");
    const home = await mkdtemp(join(tmpdir(), "vmhost-test-"));
    const env: NodeJS.ProcessEnv = { ...process.env, VMHOST_HOME: home, VMHOST_IDLE_EXIT_MS: "600000" };
    // The accelerator probe has its own tests; boot tests skip re-probing in every fresh home.
    if (opts.accel !== "probe") env["VMHOST_ACCEL"] = "tcg";
    else delete env["VMHOST_ACCEL"];
    if (opts.user !== undefined) {
      await chown(home, opts.user, opts.user);
      env["HOME"] = home;
    }
    return new TestHost(home, env, opts.netns, opts.user);
  }

  cli(args: string[], timeoutMs = 240_000): Promise<CliResult> {
    return new Promise((resolvePromise, reject) => {
      // nsenter (not "ip netns exec"): the network namespace only, the host's mounts stay shared.
      const asUser = this.user === undefined ? [] : [`--setuid=${this.user}`, `--setgid=${this.user}`];
      const [cmd, argv] = this.netns
        ? ["nsenter", [`--net=/run/netns/${this.netns}`, ...asUser, process.execPath, VMHOST, ...args]]
        : [process.execPath, [VMHOST, ...args]];
      const child = spawn(cmd, argv, { env: this.env, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`vmhost ${args.join(" ")} did not finish within ${timeoutMs} ms`));
      }, timeoutMs);
      child.on("exit", (code) => {
        clearTimeout(timer);
        resolvePromise({ code: code ?? 1, stdout, stderr });
      });
    });
  }

  /** Run the CLI and insist on success. */
  async ok(args: string[], timeoutMs?: number): Promise<string> {
    const r = await this.cli(args, timeoutMs);
    if (r.code !== 0) throw new Error(`vmhost ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  async json<T = Record<string, unknown>>(args: string[]): Promise<T> {
    return JSON.parse(await this.ok([...args, "--json"])) as T;
  }

  async state(name: string): Promise<string> {
    return (await this.json<{ state: string }>(["show", name])).state;
  }

  private readonly consoleFiles = new Map<string, string>();

  /** The VM's console log, as `show` names it (VM folders are keyed by id); remembered per name. */
  async consoleFile(name: string): Promise<string> {
    let file = this.consoleFiles.get(name);
    if (!file) {
      file = (await this.json<{ paths: { console: string } }>(["show", name])).paths.console;
      this.consoleFiles.set(name, file);
    }
    return file;
  }

  /** The pid of the running vmhostd (its lock file holds it). */
  async servicePid(): Promise<number> {
    return Number((await readFile(join(this.home, "host", "vmhostd.lock"), "utf8")).trim());
  }

  /** Forget what was remembered of a VM (after it was removed or renamed). */
  forget(name: string): void {
    this.consoleFiles.delete(name);
  }

  async consoleText(name: string): Promise<string> {
    return (await readFile(await this.consoleFile(name)).catch(() => Buffer.alloc(0))).toString("utf8");
  }

  /** Wait until the console (from byte `from` on) matches; returns the text. */
  async waitConsole(name: string, pattern: RegExp | string, timeoutMs: number, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = (await this.consoleText(name)).slice(from);
      if (typeof pattern === "string" ? text.includes(pattern) : pattern.test(text)) return text;
      if (Date.now() > deadline) {
        throw new Error(`console of ${name} did not show ${String(pattern)} within ${timeoutMs} ms; last output:\n${text.slice(-1500)}`);
      }
      await sleep(200);
    }
  }

  async waitState(name: string, state: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      last = await this.state(name);
      if (last === state) return;
      await sleep(200);
    }
    throw new Error(`${name} stayed ${last}, not ${state}, for ${timeoutMs} ms`);
  }

  /** Type a shell command on the guest's serial console and wait for a line it prints. */
  async run(name: string, command: string, expect: RegExp, timeoutMs = 30_000): Promise<string> {
    const from = (await this.consoleText(name)).length;
    await typeInto(await this.serialSocket(name), command + "\n");
    return this.waitConsole(name, expect, timeoutMs, from);
  }

  async serialSocket(name: string): Promise<string> {
    const socket = (await this.json<{ paths: { serialSocket?: string } }>(["show", name])).paths.serialSocket;
    if (!socket) throw new Error(`${name} is not running: no serial socket`);
    return socket;
  }

  /** Turn off every VM and stop the service; the home is removed. Runs even after failures. */
  async cleanup(): Promise<void> {
    try {
      const vms = JSON.parse((await this.cli(["list", "--json"], 30_000)).stdout || "[]") as { name: string; state: string }[];
      for (const vm of vms) if (vm.state !== "Off") await this.cli(["turn-off", vm.name], 30_000);
    } catch {
      /* best effort */
    }
    await this.cli(["service", "stop"], 30_000).catch(() => undefined);
    await rm(this.home, { recursive: true, force: true });
  }
}

export function typeInto(socket: string, text: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const conn = createConnection(socket);
    conn.once("error", reject);
    conn.once("connect", () => {
      conn.write(text, () => {
        // Give QEMU a moment to take the bytes before the client goes away.
        setTimeout(() => {
          conn.end();
          resolvePromise();
        }, 100);
      });
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Generous bounds: boots under TCG on a loaded 2-core machine. */
export const BOOT_TIMEOUT_MS = 120_000;
