/**
 * (a) `vmhost start` to the ready line versus the identical QEMU argv started by hand, and
 * (b) Gen1 versus Gen2 boot to the ready line. Runs are interleaved (A, B, A, B, ...) so both
 * sides see the same machine load; medians of N.
 *
 *   node dist/bench/boot.js [runs=5]
 */
import { spawn } from "node:child_process";
import { mkdir, readFile, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { READY, TestHost, sleep } from "../test/helpers/harness.js";
import { median, ratio, printTable } from "./stats.js";

const RUNS = Number(process.argv[2] ?? 5);

async function consoleSize(host: TestHost, vm: string): Promise<number> {
  return stat(await host.consoleFile(vm)).then((s) => s.size, () => 0);
}

async function waitReady(host: TestHost, vm: string, from: number, t0: number): Promise<number> {
  const file = await host.consoleFile(vm);
  for (;;) {
    const text = (await readFile(file).catch(() => Buffer.alloc(0))).subarray(from).toString("utf8");
    if (text.includes(READY)) return (performance.now() - t0) / 1000;
    if (performance.now() - t0 > 180_000) throw new Error(`${vm} not ready in 180 s`);
    await sleep(20);
  }
}

/** Start through vmhost (CLI process included), time until the ready line. */
async function viaVmhost(host: TestHost, vm: string): Promise<number> {
  const from = await consoleSize(host, vm);
  const t0 = performance.now();
  await host.ok(["start", vm]);
  const s = await waitReady(host, vm, from, t0);
  await host.ok(["turn-off", vm]);
  return s;
}

/** The argv vmhost used, read back from the running QEMU, then started by hand. */
async function captureArgv(host: TestHost, vm: string): Promise<string[]> {
  await host.ok(["start", vm]);
  const { pid } = await host.json<{ pid: number }>(["show", vm]);
  const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").filter(Boolean);
  await host.ok(["turn-off", vm]);
  return argv;
}

async function byHand(host: TestHost, vm: string, argv: string[]): Promise<number> {
  // vmhost removes the VM's run directory (sockets, pid file) when it stops; recreate it untimed.
  await mkdir(dirname(argv[argv.indexOf("-pidfile") + 1]!), { recursive: true });
  const from = await consoleSize(host, vm);
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { stdio: "ignore" });
  const s = await waitReady(host, vm, from, t0);
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  return s;
}

async function main(): Promise<void> {
  const host = await TestHost.create();
  try {
    await host.ok(["new", "b2", "--generation", "2", "--appliance"]);
    await host.ok(["new", "b1", "--generation", "1", "--appliance"]);
    const argv2 = await captureArgv(host, "b2");
    const vmhost2: number[] = [];
    const hand2: number[] = [];
    const vmhost1: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      vmhost2.push(await viaVmhost(host, "b2"));
      hand2.push(await byHand(host, "b2", argv2));
      vmhost1.push(await viaVmhost(host, "b1"));
      process.stderr.write(`run ${i + 1}/${RUNS}: gen2 vmhost ${vmhost2.at(-1)!.toFixed(2)} s, gen2 by hand ${hand2.at(-1)!.toFixed(2)} s, gen1 vmhost ${vmhost1.at(-1)!.toFixed(2)} s\n`);
    }
    printTable("Boot to `vmhost-appliance: ready` (seconds, median of " + RUNS + ")", [
      ["(a) Gen2 `vmhost start`", median(vmhost2), "Gen2 same argv by hand", median(hand2), ratio(median(vmhost2), median(hand2))],
      ["(b) Gen1 `vmhost start`", median(vmhost1), "Gen2 `vmhost start`", median(vmhost2), ratio(median(vmhost1), median(vmhost2))],
    ]);
  } finally {
    await host.cleanup();
  }
}

await main();
