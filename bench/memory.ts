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

interface Sample {
  rss: number;
  live: number;
}

/** Medians of 9 samples of vmhostd's RSS (from /proc) and its live memory after a full GC (from the service). */
async function daemonMemoryMiB(host: TestHost): Promise<Sample> {
  const pid = await host.servicePid();
  const rss: number[] = [];
  const live: number[] = [];
  for (let i = 0; i < 9; i++) {
    const h = await host.json<{ service: { liveKiB: number; collected: boolean } }>(["host"]);
    if (!h.service.collected) throw new Error("vmhostd was not started with --expose-gc");
    live.push(h.service.liveKiB / 1024);
    await sleep(500);
    rss.push(((await processRssKiB(pid)) ?? 0) / 1024);
  }
  return { rss: median(rss), live: median(live) };
}

async function main(): Promise<void> {
  const host = await TestHost.create();
  try {
    for (let i = 0; i < N; i++) await host.ok(["new", `m${i}`, "--generation", "1", "--appliance", "--memory", "128M"]);
    // Idle is sampled before and after the loaded phase: the difference between the two is
    // the noise of V8's heap, against which the per-VM cost must be read.
    const idleBefore = await daemonMemoryMiB(host);
    for (let i = 0; i < N; i++) await host.ok(["start", `m${i}`]);
    await sleep(20_000); // agents connect, heartbeats and console watchers run
    const loaded = await daemonMemoryMiB(host);
    for (let i = 0; i < N; i++) await host.ok(["turn-off", `m${i}`]);
    const idleAfter = await daemonMemoryMiB(host);
    const rows: [string, number, string, number, string][] = [];
    for (const k of ["live", "rss"] as const) {
      const idle = (idleBefore[k] + idleAfter[k]) / 2;
      const perVm = (loaded[k] - idle) / N;
      const what = k === "live" ? "live memory after GC" : "resident set (RSS)";
      rows.push(
        [`(d) ${what}, ${N} VMs running`, loaded[k], "none running (mean of before/after)", idle, ratio(loaded[k], idle)],
        [`(d) ${what} per running VM`, perVm, "target per VM", 10, ratio(perVm, 10)],
        [`${what}, idle noise: before`, idleBefore[k], "after", idleAfter[k], ratio(idleBefore[k], idleAfter[k])],
      );
    }
    printTable(`vmhostd's own memory (MiB, medians of 9 samples), ${N} running VMs`, rows);
  } finally {
    await host.cleanup();
  }
}

await main();
