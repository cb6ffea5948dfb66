// Spawning the build's tools: always an argv array, never a shell string.
import { spawn } from "node:child_process";

export interface RunOptions {
  cwd?: string;
  input?: string | Buffer;
  env?: Record<string, string>;
  /** Exit codes that count as success (default [0]). */
  okCodes?: number[];
  maxBuffer?: number;
}

export interface RunResult {
  code: number;
  stdout: string;
  stdoutBuffer: Buffer;
  stderr: string;
}

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(" ")} failed (exit ${code ?? "signal"}): ${stderr.trim().slice(-2000)}`);
    this.name = "CommandError";
  }
}

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = [cmd, ...args];
  const okCodes = opts.okCodes ?? [0];
  const maxBuffer = opts.maxBuffer ?? 64 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, LC_ALL: "C", ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    child.stdout.on("data", (b: Buffer) => {
      size += b.length;
      if (size > maxBuffer) child.kill("SIGKILL");
      else out.push(b);
    });
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e) => reject(new CommandError(argv, null, String(e))));
    child.on("close", (code) => {
      const stdoutBuffer = Buffer.concat(out);
      const stdout = stdoutBuffer.toString("utf8");
      const stderr = Buffer.concat(err).toString("utf8");
      if (size > maxBuffer) reject(new CommandError(argv, code, `output larger than ${maxBuffer} bytes`));
      else if (code !== null && okCodes.includes(code)) resolve({ code, stdout, stdoutBuffer, stderr });
      else reject(new CommandError(argv, code, stderr || stdout));
    });
    child.stdin.on("error", () => undefined); // the tool may exit before reading all input
    child.stdin.end(opts.input ?? "");
  });
}
