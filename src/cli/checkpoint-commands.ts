import type { Command } from "commander";
import type { CheckpointRemoved, CheckpointResult } from "../api/views.js";
import { VmhostError } from "../util/errors.js";
import { out } from "./args.js";
import type { Connection } from "./connection.js";
import { changeCommand, readCommand, type CliContext } from "./context.js";

/** The checkpoint commands (Checkpoint-VM, Get-VMSnapshot, Restore-, Remove-, Rename-VMSnapshot); apply and remove are jobs with progress. */

interface CheckpointList {
  vm: string;
  checkpointType: string;
  current: string | null;
  checkpoints: { id: string; name: string; depth: number; createdAt: string; type: string; hasMemory: boolean }[];
  removing?: string;
}

function printTree(l: CheckpointList): void {
  console.log(`${l.vm} (checkpoint type ${l.checkpointType}):${l.checkpoints.length ? "" : " no checkpoints"}`);
  for (const c of l.checkpoints) {
    const marks = [c.type, c.hasMemory ? "memory" : "", c.id === l.current ? "<- Now" : ""].filter(Boolean).join(", ");
    console.log(`${"  ".repeat(c.depth + 1)}${c.name}  (${c.createdAt.replace("T", " ").slice(0, 19)}; ${marks}; ${c.id})`);
  }
  if (l.current === null && l.checkpoints.length) console.log("  Now is not below any checkpoint");
  if (l.removing) console.log(`  (the removal of "${l.removing}" is being finished)`);
}

/** Follows a checkpoint job with a progress bar on a terminal; its result, or its error thrown. */
async function finish<T>(c: Connection, jobId: string, label: string, show: boolean): Promise<T> {
  const bar = show ? new Bar(label) : undefined;
  const job = await c.client.followJob(jobId, (j) => bar?.update(j.progress.done, j.progress.total, j.progress.phase));
  bar?.finish();
  if (job.state !== "succeeded") throw new VmhostError(job.error?.code ?? job.state, job.error?.message ?? `the ${job.kind} job ${job.state}`);
  return job.result as T;
}

/** The checkpoint jobs count per mille, not bytes: a bar with the step's name. */
class Bar {
  private last = "";
  constructor(private readonly label: string) {}
  update(done: number, total: number, phase?: string): void {
    if (!(total > 0)) return;
    const frac = Math.min(1, done / total);
    const fill = Math.round(frac * 30);
    const text = `\r${this.label} [${"#".repeat(fill)}${".".repeat(30 - fill)}] ${Math.floor(frac * 100).toString().padStart(3)}%  ${(phase ?? "").padEnd(24)}`;
    if (text !== this.last) process.stderr.write((this.last = text));
  }
  finish(): void {
    if (this.last) process.stderr.write("\n");
  }
}

export function checkpointCommands(program: Command, ctx: CliContext): void {
  const cp = program.command("checkpoint").description("checkpoints (Checkpoint-VM, Get-VMSnapshot, Restore-/Remove-/Rename-VMSnapshot); a checkpoint is named by its name or id");
  // `vmhost checkpoint NAME` takes a checkpoint, as before: create is the default subcommand.
  cp.command("create", { isDefault: true })
    .description("take a checkpoint (the default: vmhost checkpoint NAME [--name CP]); its type follows set NAME --checkpoint-type")
    .option("--json", "print the reply as JSON")
    .argument("<name>", "VM name or id")
    .option("--name <checkpoint>", "the checkpoint's name")
    .action(async (vm: string, o: { name?: string; json?: boolean }) => {
      const r = await (await ctx.conn()).api.checkpoints.create({ vm, name: o.name });
      out(o.json, r, () => {
        console.log(`${vm}: ${r.checkpoint.type} checkpoint "${r.checkpoint.name}" (${r.checkpoint.id})${r.checkpoint.hasMemory ? " with memory" : ""}${r.pausedMs !== undefined ? `; the guest was paused ${r.pausedMs.toFixed(0)} ms` : ""}`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
    });
  readCommand(cp, "list", "the checkpoint tree")
    .argument("<name>", "VM name or id")
    .action(async (vm: string, o: { json?: boolean }) => {
      const l = await (await ctx.conn()).api.checkpoints.list({ vm });
      out(o.json, l, () => printTree(l));
    });
  changeCommand(cp, "apply", "apply a checkpoint (Restore-VMSnapshot)")
    .argument("<name>", "VM name or id")
    .argument("<checkpoint>", "checkpoint name or id")
    .option("--checkpoint-current", "checkpoint Now first")
    .action(async (vm: string, checkpoint: string, o: { checkpointCurrent?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      const job = await c.api.checkpoints.apply({ vm, checkpoint, checkpointCurrent: o.checkpointCurrent === true });
      const r = await finish<CheckpointResult>(c, job.id, "applying", !o.json && process.stderr.isTTY === true);
      out(o.json, r, () => {
        console.log(`${vm}: checkpoint "${r.checkpoint.name}" applied`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
    });
  changeCommand(cp, "remove", "remove a checkpoint (merges: nothing is lost)")
    .argument("<name>", "VM name or id")
    .argument("<checkpoint>", "checkpoint name or id")
    .option("--subtree", "remove its descendants too")
    .action(async (vm: string, checkpoint: string, o: { subtree?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      const job = await c.api.checkpoints.remove({ vm, checkpoint, subtree: o.subtree === true });
      const r = await finish<CheckpointRemoved>(c, job.id, "merging", !o.json && process.stderr.isTTY === true);
      out(o.json, r, () => {
        for (const m of r.messages) console.log(`${vm}: ${m}`);
      });
    });
  changeCommand(cp, "rename", "rename a checkpoint")
    .argument("<name>", "VM name or id")
    .argument("<checkpoint>", "checkpoint name or id")
    .argument("<newname>", "its new name")
    .action(async (vm: string, checkpoint: string, name: string, o: { json?: boolean }) => {
      const r = await (await ctx.conn()).api.checkpoints.rename({ vm, checkpoint, name });
      out(o.json, r, () => console.log(`${vm}: checkpoint renamed to "${r.checkpoint.name}"`));
    });
}
