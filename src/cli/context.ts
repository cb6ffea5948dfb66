import { Command } from "commander";
import type { Connection } from "./connection.js";

/** What every command file gets: the connection (opened on first use, local or `--remote`). */
export interface CliContext {
  conn(): Promise<Connection>;
}

/** A read command: `--json` prints the API's reply as it is. */
export function readCommand(parent: Command, spec: string, description: string): Command {
  return parent.command(spec).description(description).option("--json", "print the reply as JSON");
}

/** A change command: `--json` prints the reply too. */
export function changeCommand(parent: Command, spec: string, description: string): Command {
  return parent.command(spec).description(description).option("--json", "print the reply as JSON");
}

/** A group of subcommands (`firmware get|set|reset`, `switch new|list|...`). */
export function group(parent: Command, name: string, description: string): Command {
  return parent.command(name).description(description);
}
