import { z } from "zod";
import { GuestAgentError, guestText, type AgentCaller } from "./agent.js";

/** Running a program in the guest through guest-exec (argv arrays only, never a shell string from input). */

const ExecReply = z.object({ pid: z.number().int().positive() }).passthrough();
const ExecStatus = z
  .object({
    exited: z.boolean(),
    exitcode: z.number().int().optional(),
    signal: z.number().int().optional(),
    "out-data": z.string().optional(),
    "err-data": z.string().optional(),
    "out-truncated": z.boolean().optional(),
    "err-truncated": z.boolean().optional(),
  })
  .passthrough();

export interface ExecResult {
  exitCode: number | undefined;
  signal: number | undefined;
  stdout: string;
  stderr: string;
}

/** Most output we keep from a guest program; more is cut (the program's own output is untrusted). */
const MAX_OUTPUT = 64 * 1024;

function decodeOutput(b64: string | undefined): string {
  if (!b64) return "";
  return Buffer.from(b64.slice(0, Math.ceil((MAX_OUTPUT * 4) / 3) + 4), "base64").subarray(0, MAX_OUTPUT).toString("utf8");
}

/** Start a program in the guest and return its pid without waiting. */
export async function execStart(agent: AgentCaller, path: string, args: string[], captureOutput: boolean): Promise<number> {
  const r = await agent.call("guest-exec", { path, arg: args, "capture-output": captureOutput }, ExecReply, { timeoutMs: 15_000 });
  return r.pid;
}

/** Run a program in the guest and wait for it to exit (polling guest-exec-status). */
export async function execWait(agent: AgentCaller, path: string, args: string[], timeoutMs = 60_000): Promise<ExecResult> {
  const pid = await execStart(agent, path, args, true);
  const deadline = Date.now() + timeoutMs;
  let delay = 20;
  for (;;) {
    const s = await agent.call("guest-exec-status", { pid }, ExecStatus);
    if (s.exited) {
      return { exitCode: s.exitcode, signal: s.signal, stdout: decodeOutput(s["out-data"]), stderr: decodeOutput(s["err-data"]) };
    }
    if (Date.now() > deadline) throw new GuestAgentError("guest-exec", "Timeout", `${path} did not finish within ${timeoutMs} ms in the guest`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 500);
  }
}

/** Run and insist on exit status 0. */
export async function execOk(agent: AgentCaller, path: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await execWait(agent, path, args, timeoutMs);
  if (r.exitCode !== 0) {
    const why = r.signal !== undefined ? `signal ${r.signal}` : `status ${r.exitCode ?? "?"}`;
    throw new GuestAgentError("guest-exec", "ExitStatus", `${path} ${args.slice(0, 2).join(" ")} failed in the guest (${why}): ${guestText(r.stderr || r.stdout)}`);
  }
  return r.stdout;
}
