import type { ServiceClient } from "../service/client.js";
import { streamCall } from "../service/client-stream.js";
import type { CheckpointList, CheckpointResult } from "../service/checkpoints.js";
import { VmhostError } from "../util/errors.js";
import { args, enc, need, out } from "./args.js";

/** The checkpoint commands (Checkpoint-VM, Get-VMSnapshot, Restore-, Remove-, Rename-VMSnapshot). */
export const CHECKPOINT_USAGE = `Checkpoints (Checkpoint-VM / Get-VMSnapshot / Restore-VMSnapshot / Remove-VMSnapshot)
  checkpoint NAME [--name CP]            (or: checkpoint create NAME [--name CP])
  checkpoint list NAME [--json]
  checkpoint apply NAME CP [--checkpoint-current]
  checkpoint remove NAME CP [--subtree]  (merges: nothing is lost)
  checkpoint rename NAME CP NEWNAME
  CP is a checkpoint's name or id. The type follows set NAME --checkpoint-type (default Production).`;

const SUBCOMMANDS = new Set(["create", "list", "apply", "remove", "rename"]);

/** A progress line on the terminal, for the long merges of remove and apply. */
class Progress {
  private last = "";
  constructor(private readonly enabled: boolean) {}
  update(fraction: number, what: string): void {
    if (!this.enabled) return;
    const width = 30;
    const fill = Math.round(Math.min(1, Math.max(0, fraction)) * width);
    const text = `\r[${"#".repeat(fill)}${".".repeat(width - fill)}] ${Math.floor(fraction * 100).toString().padStart(3)}%  ${what.padEnd(24)}`;
    if (text === this.last) return;
    this.last = text;
    process.stderr.write(text);
  }
  finish(): void {
    if (this.enabled && this.last) process.stderr.write("\n");
  }
}

async function streamed<T>(api: ServiceClient, path: string, body: unknown, bar: Progress): Promise<T> {
  let result: T | undefined;
  let failure: { code?: string; message?: string } | undefined;
  await streamCall(api, "POST", path, body, (line) => {
    if (line["type"] === "progress") bar.update(Number(line["fraction"]), String(line["what"] ?? ""));
    else if (line["type"] === "result") result = line["result"] as T;
    else if (line["type"] === "error") failure = line["error"] as typeof failure;
  });
  bar.finish();
  if (failure) throw new VmhostError(failure.code ?? "error", failure.message ?? "the operation failed");
  if (result === undefined) throw new VmhostError("error", "vmhostd ended the operation without a result");
  return result;
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

export async function checkpointCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const sub = rest[0] !== undefined && SUBCOMMANDS.has(rest[0]) ? rest[0] : "create";
  const r2 = sub === "create" && rest[0] !== "create" ? rest : rest.slice(1);
  const { values: v, positionals: p } = args(r2, {
    name: { type: "string" },
    "checkpoint-current": { type: "boolean" },
    subtree: { type: "boolean" },
  });
  const vm = need(p, 0, "VM name");
  const base = `/v1/vms/${enc(vm)}/checkpoints`;
  const bar = new Progress(!v["json"] && process.stderr.isTTY === true);
  switch (sub) {
    case "create": {
      const r = await api.call<CheckpointResult>("POST", base, { name: v["name"] as string | undefined });
      out(!!v["json"], r, () => {
        console.log(`${vm}: ${r.checkpoint.type} checkpoint "${r.checkpoint.name}" (${r.checkpoint.id})${r.checkpoint.hasMemory ? " with memory" : ""}${r.pausedMs !== undefined ? `; the guest was paused ${r.pausedMs.toFixed(0)} ms` : ""}`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
      return 0;
    }
    case "list": {
      const l = await api.call<CheckpointList>("GET", base);
      out(!!v["json"], l, () => printTree(l));
      return 0;
    }
    case "apply": {
      const r = await streamed<CheckpointResult>(api, `${base}/apply`, { checkpoint: need(p, 1, "checkpoint"), checkpointCurrent: v["checkpoint-current"] === true }, bar);
      out(!!v["json"], r, () => {
        console.log(`${vm}: checkpoint "${r.checkpoint.name}" applied`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
      return 0;
    }
    case "remove": {
      const r = await streamed<{ removed: string[]; messages: string[] }>(api, `${base}/remove`, { checkpoint: need(p, 1, "checkpoint"), subtree: v["subtree"] === true }, bar);
      out(!!v["json"], r, () => {
        for (const m of r.messages) console.log(`${vm}: ${m}`);
      });
      return 0;
    }
    case "rename": {
      const r = await api.call<CheckpointResult>("POST", `${base}/rename`, { checkpoint: need(p, 1, "checkpoint"), name: need(p, 2, "new name") });
      out(!!v["json"], r, () => console.log(`${vm}: checkpoint renamed to "${r.checkpoint.name}"`));
      return 0;
    }
  }
  throw new VmhostError("usage", "checkpoint [create|list|apply|remove|rename] NAME ...");
}
