/**
 * A lab "host" for tests and benchmarks: one process holding this host's membership lease (and,
 * with --campaign, running a coordinator), printing what happens as JSON lines on stdout, each
 * with `mono` = CLOCK_MONOTONIC in ms (the same clock in every process on the machine, so
 * events of different processes can be ordered). Host death = SIGKILL of this process.
 *
 *   node dist/src/cluster/lab-host.js --host a --endpoints http://127.0.0.1:2379[,...]
 *     [--ttl 10] [--margin-ms 5000] [--campaign] [--election-ttl 10] [--request-timeout-ms 3000]
 *     [--free-memory 4096] [--switches lan,...] [--storage shared,...] [--running vm1,vm2]
 *     [--resume-lease HEX]
 *
 * Local "VMs" are only names in a map (no QEMU): --running marks copies as running here; a
 * fence turns them all off; after recovery the registry decides (failover.ts planRejoin); a
 * registry change that makes this host the owner of a Running VM starts it ('vm-started').
 * Commands on stdin, one JSON object a line: {"cmd":"update","patch":{...}},
 * {"cmd":"lock","name":"x","deadlineMs":N}, {"cmd":"unlock"}, {"cmd":"leave"}, {"cmd":"exit"}.
 */
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { ClusterConnection } from "./connection.js";
import { Coordinator } from "./coordinator.js";
import { planRejoin, type LocalCopy } from "./failover.js";
import { acquireLock, type HeldLock } from "./locks.js";
import { HostMembership } from "./membership.js";
import { VmRegistry, type RegistryEntry } from "./registry.js";

const mono = (): number => Number(process.hrtime.bigint() / 1000n) / 1000;
const say = (event: string, fields: Record<string, unknown> = {}): void => {
  process.stdout.write(`${JSON.stringify({ event, mono: mono(), ...fields })}\n`);
};
const list = (s: string | undefined): string[] => (s ? s.split(",").filter(Boolean) : []);

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      host: { type: "string" },
      endpoints: { type: "string" },
      ttl: { type: "string", default: "10" },
      "margin-ms": { type: "string", default: "5000" },
      campaign: { type: "boolean", default: false },
      "election-ttl": { type: "string" },
      "request-timeout-ms": { type: "string", default: "3000" },
      "free-memory": { type: "string", default: "4096" },
      switches: { type: "string", default: "" },
      storage: { type: "string", default: "" },
      running: { type: "string", default: "" },
      "resume-lease": { type: "string" },
    },
  });
  const host = a.host!;
  const ttl = Number(a.ttl);
  const conn = ClusterConnection.open({ endpoints: list(a.endpoints), requestTimeoutMs: Number(a["request-timeout-ms"]) });
  const local = new Map<string, LocalCopy>(list(a.running).map((id) => [id, "running"]));
  const registry = new VmRegistry(conn);

  const membership = await HostMembership.join(
    conn,
    { host, address: "127.0.0.1", apiUrl: `lab://${host}`, freeMemoryMiB: Number(a["free-memory"]), switches: list(a.switches), storage: list(a.storage) },
    {
      ttlSeconds: ttl,
      ...(a["resume-lease"] ? { resumeLeaseId: a["resume-lease"] } : {}),
      onFence: (f) => {
        for (const id of local.keys()) local.set(id, "off");
        say("fence-done", { reason: f.reason, lastRenewalAt: f.lastRenewalAt, vmsOff: [...local.keys()] });
      },
    },
  );
  membership.on("fenced", (f) => say("fenced", { reason: f.reason }));
  membership.on("fence-failed", (e: Error) => say("fence-failed", { error: e.message }));
  membership.on("renewal-failed", (e: Error) => say("renewal-failed", { error: e.message }));
  membership.on("recovered", (r: { leaseSurvived: boolean }) => {
    void (async () => {
      say("recovered", { leaseSurvived: r.leaseSurvived });
      // Read after the key is back (join/register put it before 'recovered').
      for (let i = 0; ; i++) {
        try {
          const entries = await registry.list();
          const actions = planRejoin(host, entries, local);
          for (const x of actions) {
            if (x.action === "start" || x.action === "resume" || x.action === "keep") local.set(x.id, "running");
            else local.set(x.id, "off");
          }
          say("rejoin-plan", { actions, local: Object.fromEntries(local), registry: entries.map((e) => ({ id: e.id, owner: e.owner, state: e.state, revision: e.revision })) });
          return;
        } catch (err) {
          if (i > 20) return say("rejoin-failed", { error: err instanceof Error ? err.message : String(err) });
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    })();
  });
  say("joined", { host, leaseId: membership.leaseId, pid: process.pid });

  // What the service's reconciler will do: start what the registry gives this host while its
  // lease is provably alive (failover moves VMs here by changing their owner). The watch is
  // the fast path; a re-read every second covers a watch stuck on an unreachable member.
  const startOwned = (e: RegistryEntry): void => {
    if (membership.state !== "alive") return;
    if (e.owner === host && e.state === "Running" && local.get(e.id) !== "running") {
      local.set(e.id, "running");
      say("vm-started", { id: e.id, revision: e.revision });
    }
  };
  await registry.watch((ev) => {
    if (ev.type === "put") startOwned(ev.entry);
  });
  setInterval(() => {
    if (membership.state !== "alive") return;
    registry.list().then((entries) => entries.forEach(startOwned), () => undefined);
  }, 1000);

  let coordinator: Coordinator | undefined;
  if (a.campaign) {
    coordinator = Coordinator.start(conn, { host, fencingMarginMs: Number(a["margin-ms"]), electionTtlSeconds: Number(a["election-ttl"] ?? ttl) });
    coordinator.on("elected", () => say("elected"));
    coordinator.on("deposed", (e: Error) => say("deposed", { error: e.message }));
    coordinator.on("fence-wait", (d) => say("fence-wait", d));
    coordinator.on("failover", (m) => say("failover", m));
    coordinator.on("unplaceable", (u) => say("unplaceable", u));
    coordinator.on("error", (e: Error) => say("coordinator-error", { error: e.message }));
  }

  let held: HeldLock | undefined;
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    void (async () => {
      let cmd: { cmd: string; patch?: Record<string, unknown>; name?: string; deadlineMs?: number };
      try {
        cmd = JSON.parse(line) as typeof cmd;
      } catch {
        return say("bad-command", { line });
      }
      try {
        if (cmd.cmd === "update") say("updated", { info: await membership.update(cmd.patch ?? {}) });
        else if (cmd.cmd === "lock") {
          say("lock-waiting", { name: cmd.name });
          held = await acquireLock(conn, cmd.name!, {
            ttlSeconds: ttl,
            deadlineMs: cmd.deadlineMs ?? 30_000,
            onWait: (attempt, waitMs) => say("lock-retry", { name: cmd.name, attempt, waitMs }),
          });
          say("locked", { name: cmd.name, attempts: held.attempts });
        } else if (cmd.cmd === "unlock") {
          await held?.release();
          say("unlocked", { name: held?.name });
          held = undefined;
        } else if (cmd.cmd === "leave") {
          await coordinator?.stop();
          await membership.leave({ force: true });
          say("left");
        } else if (cmd.cmd === "exit") {
          membership.close();
          await coordinator?.stop();
          conn.close();
          process.exit(0);
        }
      } catch (err) {
        say("command-failed", { cmd: cmd.cmd, code: (err as { code?: string }).code, error: err instanceof Error ? err.message : String(err) });
      }
    })();
  });
}

main().catch((err: unknown) => {
  say("failed", { error: err instanceof Error ? err.message : String(err), code: (err as { code?: string }).code });
  process.exit(1);
});
