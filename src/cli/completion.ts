import { realpathSync } from "node:fs";
import { Argument, Command, Option } from "commander";
import { VmhostError } from "../util/errors.js";
import type { CliContext } from "./context.js";
import { RemoteStore } from "./remotes.js";

/**
 * Shell completion: `vmhost completion bash|zsh` prints a script that asks `vmhost __complete`
 * for candidates. The engine walks the commander tree (so it knows every command and option as
 * they are defined) and asks the service for what only it knows: VM names, switch names, adapters,
 * Boot#### ids of a VM, trusted clients, tokens, jobs and media; remote names come from this
 * user's configuration.
 */

const INTEGRATION_SERVICES = ["Guest Service Interface", "Heartbeat", "Key-Value Pair Exchange", "Shutdown", "Time Synchronization", "VSS"];

function pathOf(cmd: Command): string[] {
  const p: string[] = [];
  for (let c: Command | null = cmd; c && c.parent; c = c.parent) p.unshift(c.name());
  return p;
}

function longFlags(cmd: Command): Option[] {
  const all: Option[] = [...cmd.options];
  for (let c = cmd.parent; c; c = c.parent) all.push(...c.options);
  return all.filter((o) => o.long && !o.hidden);
}

/** Candidates for the last word of `words` (the words after "vmhost"; the last is what is being typed). */
export async function complete(program: Command, ctx: CliContext, words: string[]): Promise<string[]> {
  const current = words[words.length - 1] ?? "";
  let cmd = program;
  const positionals: string[] = [];
  let pendingOption: Option | undefined;
  for (const w of words.slice(0, -1)) {
    if (pendingOption) {
      pendingOption = undefined;
      continue;
    }
    if (w.startsWith("-")) {
      const o = longFlags(cmd).find((x) => x.long === w.split("=")[0] || x.short === w);
      if (o && (o.required || o.optional) && !w.includes("=")) pendingOption = o;
      continue;
    }
    const sub = positionals.length === 0 ? cmd.commands.find((c) => c.name() === w || c.aliases().includes(w)) : undefined;
    if (sub) cmd = sub;
    else positionals.push(w);
  }
  const path = pathOf(cmd);
  const pick = (xs: string[], prefix = current) => xs.filter((x) => x.startsWith(prefix));
  const vmNames = async () => (await (await ctx.conn()).api.vms.list()).map((v) => v.name);
  const switchNames = async () => (await (await ctx.conn()).api.switches.list()).map((s) => s.name);

  if (pendingOption) {
    if (pendingOption.argChoices) return pick(pendingOption.argChoices);
    const long = pendingOption.long;
    if (long === "--switch") return pick(await switchNames());
    if (long === "--remote") return pick(Object.keys(await new RemoteStore().list()));
    if (long === "--boot-order" || long === "--first-boot-device") {
      const vm = positionals[0];
      if (!vm) return [];
      const f = await (await ctx.conn()).api.firmware.get({ vm });
      const ids = (f.bootOrder ?? []).map((e) => e.id);
      if (long === "--boot-order") {
        const done = current.includes(",") ? current.slice(0, current.lastIndexOf(",") + 1) : "";
        const last = current.slice(done.length);
        return ids.filter((i) => i.startsWith(last) && !done.split(",").includes(i)).map((i) => done + i);
      }
      return pick([...ids, ...(f.bootOrder ?? []).map((e) => e.device?.ref).filter((x): x is string => !!x)]);
    }
    if (/^--(display|dhcp|secure-boot|pause-after-boot-failure)$/.test(long ?? "")) return pick(["on", "off"]);
    return [];
  }
  if (current.startsWith("-")) return pick(longFlags(cmd).map((o) => o.long!));
  if (cmd.commands.length > 0 && positionals.length === 0) {
    return pick(cmd.commands.filter((c) => !(c as unknown as { _hidden?: boolean })._hidden).map((c) => c.name()));
  }
  const arg: Argument | undefined = cmd.registeredArguments[Math.min(positionals.length, cmd.registeredArguments.length - 1)];
  if (!arg || (positionals.length >= cmd.registeredArguments.length && !arg.variadic)) return [];
  const name = arg.name();
  const top = path[0];
  if (top === "help") return pick(program.commands.map((c) => c.name()));
  if (name === "switch" || top === "switch") return pick(await switchNames());
  if (name === "adapter" && positionals[0]) return pick((await (await ctx.conn()).api.vms.get({ vm: positionals[0] })).nics.map((n) => n.name));
  if (name === "service") return pick(INTEGRATION_SERVICES);
  if (name === "name" || name === "id") {
    if (top === "trust") return pick((await (await ctx.conn()).api.trust.list()).certificates.map((c) => c.name));
    if (top === "token") return pick((await (await ctx.conn()).api.tokens.list()).map((t) => t.name));
    if (top === "remote") return pick(Object.keys(await new RemoteStore().list()));
    if (top === "media") return pick((await (await ctx.conn()).api.media.list()).map((m) => m.name));
    if (top === "jobs") return pick((await (await ctx.conn()).api.jobs.list()).map((j) => j.id));
    if (path.join(" ") === "trust add" || path.join(" ") === "token add" || path.join(" ") === "remote add" || path[0] === "new") return [];
    return pick(await vmNames());
  }
  return [];
}

/** Escapes a candidate for bash (which inserts COMPREPLY words as they are). */
function bashQuote(s: string): string {
  return s.replace(/([^A-Za-z0-9_@%+=:,./#-])/g, "\\$1");
}

/** bash's COMP_WORDS keep the user's backslashes and quotes; the engine wants the words. */
function bashUnquote(s: string): string {
  return s.replace(/^["']/, "").replace(/\\(.)/g, "$1");
}

function self(): string {
  try {
    return realpathSync(process.argv[1] ?? "vmhost");
  } catch {
    return "vmhost";
  }
}

export function bashScript(bin = self()): string {
  return `# bash completion for vmhost: eval "$(vmhost completion bash)", or save it as /etc/bash_completion.d/vmhost
_vmhost_complete() {
  local IFS=$'\\n'
  COMPREPLY=( $('${bin.replace(/'/g, "'\\''")}' __complete bash -- "\${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) )
}
complete -o default -F _vmhost_complete vmhost
`;
}

export function zshScript(bin = self()): string {
  return `#compdef vmhost
# zsh completion for vmhost: eval "$(vmhost completion zsh)" after compinit, or save it as _vmhost in $fpath
_vmhost() {
  local -a cands
  cands=("\${(@f)$('${bin.replace(/'/g, "'\\''")}' __complete zsh -- "\${(@Q)words[2,CURRENT]}" 2>/dev/null)}")
  compadd -- "\${cands[@]}"
}
compdef _vmhost vmhost
`;
}

export function completionCommands(program: Command, ctx: CliContext): void {
  program
    .command("completion")
    .description("print the shell completion script: eval \"$(vmhost completion bash)\" (or zsh)")
    .addArgument(new Argument("<shell>", "bash or zsh").choices(["bash", "zsh"]))
    .action((shell: "bash" | "zsh") => {
      process.stdout.write(shell === "bash" ? bashScript() : zshScript());
    });
  program
    .command("__complete", { hidden: true })
    .description("candidates for the shell completion scripts")
    .argument("<shell>")
    .argument("[words...]")
    .allowUnknownOption()
    .helpOption(false)
    .action(async (shell: string, words: string[]) => {
      if (shell !== "bash" && shell !== "zsh") throw new VmhostError("usage", "__complete bash|zsh -- WORDS");
      const w = shell === "bash" ? words.map(bashUnquote) : words;
      const list = await complete(program, ctx, w.length ? w : [""]).catch(() => [] as string[]);
      for (const c of list) process.stdout.write((shell === "bash" ? bashQuote(c) : c) + "\n");
    });
}
