/**
 * (d) vmhost's own memory per running VM, beyond QEMU's: vmhostd's resident set with N small
 * VMs running minus with none, divided by N. Target: under 10 MiB per VM. Five samples each.
 *
 *   node dist/bench/memory.js [vms=20]
 */
import { readFile } from "node:fs/promises";
import { TestHost, sleep } from "../test/helpers/harness.js";
import { processRssKiB } from "../src/supervisor/proc.js";
import { median, printTable, ratio } from "./stats.js";

const N = Number(process.argv[2] ?? 20);

async function daemonRssMiB(host: TestHost): Promise<number> {
  const pid = Number((await readFile(`${host.home}/run/vmhostd.pid`, "utf8")).trim());
  const xs: number[] = [];
  for (let i = 0; i < 9; i++) {
    await host.ok(["list", "--json"]); // exercise the service between samples
    await sleep(500);
    xs.push(((await processRssKiB(pid)) ?? 0) / 1024);
  }
  return median(xs);
}

async function main(): Promise<void> {
  const host = await TestHost.create();
  try {
    for (let i = 0; i < N; i++) await host.ok(["new", `m${i}`, "--generation", "1", "--appliance", "--memory", "128M"]);
    // Idle is sampled before and after the loaded phase: the difference between the two is
    // the noise of V8's heap, against which the per-VM cost must be read.
    const idleBefore = await daemonRssMiB(host);
    for (let i = 0; i < N; i++) await host.ok(["start", `m${i}`]);
    await sleep(20_000); // agents connect, heartbeats and console watchers run
    const loaded = await daemonRssMiB(host);
    for (let i = 0; i < N; i++) await host.ok(["turn-off", `m${i}`]);
    const idleAfter = await daemonRssMiB(host);
    const idle = (idleBefore + idleAfter) / 2;
    const perVm = (loaded - idle) / N;
    printTable(`vmhostd resident memory (MiB, median of 9 samples each), ${N} running VMs`, [
      [`(d) vmhostd with ${N} VMs running`, loaded, "vmhostd with none running (mean of before/after)", idle, ratio(loaded, idle)],
      ["(d) per running VM (delta / N)", perVm, "target per VM", 10, ratio(perVm, 10)],
      ["idle noise: before", idleBefore, "after", idleAfter, ratio(idleBefore, idleAfter)],
    ]);
  } finally {
    await host.cleanup();
  }
}

await main();
