import { resolve } from "node:path";
import type { ServiceClient } from "../service/client.js";
import { streamCall } from "../service/client-stream.js";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { args, enc, need, out } from "./args.js";
import { printTable } from "./format.js";

/** The integration-services commands: integration, kvp, copy-file, vss, and events --follow. */

export const GUEST_USAGE = `Integration services
  integration list NAME [--json]            integration enable|disable NAME SERVICE
  kvp get NAME [--pool intrinsic|guest|external] [--json]
  kvp set NAME KEY VALUE                    kvp remove NAME KEY
  copy-file NAME SOURCE DEST [--create-full-path] [--force]
  vss freeze NAME [--timeout SECONDS]       vss thaw NAME        vss status NAME
  events NAME [--json] [--follow]`;

interface ServiceStatus {
  name: string;
  enabled: boolean;
  primaryStatus: string;
  detail: string;
}
interface IntegrationView {
  vm: string;
  state: string;
  services: ServiceStatus[];
}

function printServices(v: IntegrationView): void {
  printTable(
    ["Name", "Enabled", "PrimaryStatus", "Detail"],
    v.services.map((s) => [s.name, s.enabled ? "True" : "False", s.primaryStatus, s.detail]),
  );
}

export async function guestCommand(api: ServiceClient, cmd: string, rest: string[]): Promise<number> {
  switch (cmd) {
    case "integration": {
      const [sub, ...r] = rest;
      if (sub === "list") {
        const { values: v, positionals: p } = args(r);
        const view = await api.call<IntegrationView>("GET", `/v1/vms/${enc(need(p, 0, "VM name"))}/integration`);
        out(!!v["json"], view, () => printServices(view));
        return 0;
      }
      if (sub === "enable" || sub === "disable") {
        const { values: v, positionals: p } = args(r);
        const name = need(p, 0, "VM name");
        const service = p.slice(1).join(" ");
        if (!service) throw new VmhostError("usage", `integration ${sub} NAME SERVICE (e.g. "Guest Service Interface")`);
        const view = await api.call<IntegrationView>("POST", `/v1/vms/${enc(name)}/integration`, { service, enabled: sub === "enable" });
        out(!!v["json"], view, () => printServices(view));
        return 0;
      }
      throw new VmhostError("usage", "integration list|enable|disable NAME [SERVICE]");
    }

    case "kvp": {
      const [sub, ...r] = rest;
      if (sub === "get") {
        const { values: v, positionals: p } = args(r, { pool: { type: "string" } });
        const pool = v["pool"];
        if (pool !== undefined && pool !== "intrinsic" && pool !== "guest" && pool !== "external") {
          throw new VmhostError("usage", "--pool must be intrinsic, guest or external");
        }
        const pools = await api.call<Record<string, Record<string, string>>>("GET", `/v1/vms/${enc(need(p, 0, "VM name"))}/kvp${pool ? `/${pool}` : ""}`);
        out(!!v["json"], pools, () =>
          printTable(
            ["Pool", "Key", "Value"],
            Object.entries(pools).flatMap(([pl, items]) => Object.entries(items).map(([k, val]) => [pl, k, val])),
          ),
        );
        return 0;
      }
      if (sub === "set") {
        const { values: v, positionals: p } = args(r);
        const name = need(p, 0, "VM name");
        const res = await api.call<{ key: string; delivered: boolean; note?: string }>("POST", `/v1/vms/${enc(name)}/kvp`, {
          key: need(p, 1, "KEY"),
          value: need(p, 2, "VALUE"),
        });
        out(!!v["json"], res, () => console.log(`${name}: ${res.key} set${res.delivered ? " (in the guest's external pool)" : `; ${res.note ?? "not delivered yet"}`}`));
        return 0;
      }
      if (sub === "remove") {
        const { values: v, positionals: p } = args(r);
        const name = need(p, 0, "VM name");
        const res = await api.call<{ key: string; delivered: boolean; note?: string }>("POST", `/v1/vms/${enc(name)}/kvp/remove`, { key: need(p, 1, "KEY") });
        out(!!v["json"], res, () => console.log(`${name}: ${res.key} removed${res.delivered ? " (from the guest's external pool)" : `; ${res.note ?? ""}`}`));
        return 0;
      }
      throw new VmhostError("usage", "kvp get|set|remove NAME ...");
    }

    case "copy-file": {
      const { values: v, positionals: p } = args(rest, { "create-full-path": { type: "boolean" }, force: { type: "boolean" } });
      const name = need(p, 0, "VM name");
      const source = resolve(need(p, 1, "SOURCE (a host file)"));
      const destination = need(p, 2, "DEST (a full path in the guest)");
      const bar = !v["json"] && process.stderr.isTTY ? new ProgressBar() : undefined;
      let result: Record<string, unknown> | undefined;
      let failure: { code?: string; message?: string } | undefined;
      await streamCall(api, "POST", `/v1/vms/${enc(name)}/copy-file`, { source, destination, createFullPath: v["create-full-path"] === true, force: v["force"] === true }, (line) => {
        if (line["type"] === "progress") bar?.update(Number(line["done"]), Number(line["total"]));
        else if (line["type"] === "result") result = line["result"] as Record<string, unknown>;
        else if (line["type"] === "error") failure = line["error"] as typeof failure;
      });
      bar?.finish();
      if (failure) throw new VmhostError(failure.code ?? "error", failure.message ?? "the copy failed");
      if (!result) throw new VmhostError("error", "vmhostd ended the copy without a result");
      const r = result;
      out(!!v["json"], r, () =>
        console.log(
          `Copied ${String(r["source"])} to ${name}:${String(r["destination"])}: ${formatSize(Number(r["bytes"]))} in ${Number(r["seconds"]).toFixed(1)} s, verified (size and SHA-256 ${String(r["sha256"])} ${r["verifiedBy"] === "sha256sum" ? "computed in the guest" : "read back from the guest"})`,
        ),
      );
      return 0;
    }

    case "vss": {
      const [sub, ...r] = rest;
      const { values: v, positionals: p } = args(r, { timeout: { type: "string" } });
      const name = need(p, 0, "VM name");
      if (sub === "freeze") {
        const t = v["timeout"];
        if (t !== undefined && (typeof t !== "string" || !/^\d+$/.test(t))) throw new VmhostError("usage", "--timeout must be whole seconds");
        const res = await api.call<{ frozen: number; thawBy: string }>("POST", `/v1/vms/${enc(name)}/vss/freeze`, t ? { timeoutSeconds: Number(t) } : {});
        out(!!v["json"], res, () => console.log(`${name}: ${res.frozen} file system(s) frozen; thawed by ${res.thawBy} at the latest`));
        return 0;
      }
      if (sub === "thaw") {
        const res = await api.call<{ thawed: number }>("POST", `/v1/vms/${enc(name)}/vss/thaw`);
        out(!!v["json"], res, () => console.log(`${name}: ${res.thawed} file system(s) thawed`));
        return 0;
      }
      if (sub === "status") {
        const res = await api.call<{ status: string; thawBy?: string }>("GET", `/v1/vms/${enc(name)}/vss`);
        out(!!v["json"], res, () => console.log(`${name}: ${res.status}${res.thawBy ? ` (thawed by ${res.thawBy} at the latest)` : ""}`));
        return 0;
      }
      throw new VmhostError("usage", "vss freeze|thaw|status NAME");
    }

    default:
      throw new VmhostError("usage", `unknown command "${cmd}"`);
  }
}

interface EventLine {
  at: string;
  type: string;
  message: string;
}

/** events NAME --follow: the journal, then new events as they happen (Ctrl-C ends it). */
export async function followEvents(api: ServiceClient, name: string, json: boolean): Promise<number> {
  await streamCall(api, "GET", `/v1/vms/${enc(name)}/events/follow`, undefined, (line) => {
    if (line["type"] === "error") {
      const e = line["error"] as { code?: string; message?: string };
      throw new VmhostError(e.code ?? "error", e.message ?? "error");
    }
    if (line["type"] !== "event") return;
    const e = line["event"] as EventLine;
    if (json) process.stdout.write(JSON.stringify(e) + "\n");
    else console.log(`${e.at}  ${e.type.padEnd(20)} ${e.message}`);
  });
  return 0;
}

class ProgressBar {
  private last = "";
  update(done: number, total: number): void {
    const width = 30;
    const frac = total > 0 ? done / total : 1;
    const fill = Math.round(frac * width);
    const text = `\r[${"#".repeat(fill)}${".".repeat(width - fill)}] ${Math.floor(frac * 100)
      .toString()
      .padStart(3)}%  ${formatSize(done)} / ${formatSize(total)}`;
    if (text === this.last) return;
    this.last = text;
    process.stderr.write(text);
  }
  finish(): void {
    if (this.last) process.stderr.write("\n");
  }
}
