/**
 * (c) `vmhost list --json` wall time with 500 defined VMs, against the same command with
 * one VM (the fixed cost of a CLI call), measured side by side with hyperfine.
 *
 *   node dist/bench/list.js [count=500]
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { TestHost, VMHOST } from "../test/helpers/harness.js";
import { printTable, ratio } from "./stats.js";
import { ServiceClient } from "../src/service/client.js";

const COUNT = Number(process.argv[2] ?? 500);

async function main(): Promise<void> {
  const big = await TestHost.create();
  const small = await TestHost.create();
  try {
    await small.ok(["new", "only", "--generation", "1"]);
    process.env["VMHOST_HOME"] = big.home;
    const api = new ServiceClient();
    for (let i = 0; i < COUNT; i++) await api.call("POST", "/v1/vms", { name: `vm-${String(i).padStart(3, "0")}`, generation: 1, memoryMiB: 256 });
    const n = (JSON.parse(await big.ok(["list", "--json"])) as unknown[]).length;
    if (n !== COUNT) throw new Error(`expected ${COUNT} VMs, listed ${n}`);
    const out = join(big.home, "hyperfine.json");
    execFileSync(
      "hyperfine",
      [
        "--warmup", "2", "--runs", "5", "--export-json", out, "-N",
        "-n", `list ${COUNT}`, `env VMHOST_HOME=${big.home} ${process.execPath} ${VMHOST} list --json`,
        "-n", "list 1", `env VMHOST_HOME=${small.home} ${process.execPath} ${VMHOST} list --json`,
      ],
      { stdio: ["ignore", "inherit", "inherit"] },
    );
    const res = (JSON.parse(readFileSync(out, "utf8")) as { results: { command: string; median: number }[] }).results;
    const a = res[0]!.median;
    const b = res[1]!.median;
    printTable("`vmhost list --json` wall time (seconds, median of 5, hyperfine)", [
      [`(c) ${COUNT} VMs defined`, a, "1 VM defined", b, ratio(a, b)],
    ]);
  } finally {
    await big.cleanup();
    await small.cleanup();
  }
}

await main();
