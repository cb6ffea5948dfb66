/**
 * Checkpoint benchmarks (issue 8 item 6), each side by side in one run:
 *  (a) the guest's pause during a Standard checkpoint of a running Gen2 appliance VM (512 MiB,
 *      TCG) as vmhost reports it, against the same QMP sequence run by hand on the same QEMU
 *      (stop, blockdev-add + blockdev-snapshot transaction, NVRAM copy, migrate to a file, cont);
 *      the hand-made overlay is committed back afterwards so vmhost's records stay true;
 *  (b) taking a checkpoint of an Off VM with 20 checkpoints already there against with none;
 *  (c) applying a Standard checkpoint with memory (the VM turned off, state restored) against
 *      `save` + `start` of the same VM (the same amount of state written and read back);
 *  (d) removing a checkpoint whose disk changed by 100 MiB against `qemu-img commit` of the same
 *      files by hand.
 *
 *   node dist/bench/checkpoints.js [rounds]
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, readFile, rm, unlink } from "node:fs/promises";
import { createServer } from "node:net";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { QemuMonitor } from "../src/engine/qemu/monitor.js";
import { READY, TestHost, sleep } from "../test/helpers/harness.js";
import { median, printTable, ratio } from "./stats.js";

const execFileP = promisify(execFile);
const ROUNDS = Number(process.argv[2] ?? 5);

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

interface Shown {
  id: string;
  disks: { path: string; format: string; controllerType: string; controllerNumber: number; controllerLocation: number }[];
  paths: { dir: string };
}

/** The Standard checkpoint's QMP sequence by hand, on the QEMU vmhost runs (vmhostd stopped meanwhile). Returns the pause in ms. */
async function byHand(host: TestHost, vm: string, round: number): Promise<number> {
  const shown = await host.json<Shown & { pid: number }>(["show", vm]);
  const run = join(host.home, "run", shown.id.slice(0, 13));
  await host.ok(["service", "stop"]);
  const work = join(host.home, "bench");
  await mkdir(work, { recursive: true });
  const disk = shown.disks[0]!;
  const overlay = join(work, `hand-${round}.qcow2`);
  const size = JSON.parse((await execFileP("qemu-img", ["info", "-U", "--output=json", "-f", disk.format, disk.path])).stdout)["virtual-size"] as number;
  await execFileP("qemu-img", ["create", "-q", "-f", "qcow2", "-F", disk.format, "-b", disk.path, "-u", overlay, String(size)]);
  const mon = await QemuMonitor.connect(join(run, "qmp.sock"));
  const blocks = await mon.queryBlock();
  const top = blocks.find((b) => b.qdev?.includes("scsi0-0"))!.inserted!["node-name"];
  const sock = join(work, "m.sock");
  const out = createWriteStream(join(work, `hand-${round}.vmstate`));
  let received: Promise<void> = Promise.resolve();
  const server = createServer((c) => (received = new Promise((res) => c.pipe(out).on("finish", res))));
  await new Promise<void>((r) => server.listen(sock, r));
  await mon.migrateSetParameters({ "max-bandwidth": 10 * 1024 * 1024 * 1024 });
  const t0 = performance.now();
  await mon.stop();
  await mon.blockdevAdd({ driver: "qcow2", "node-name": `hand${round}`, file: { driver: "file", filename: overlay }, backing: null });
  await mon.transaction([{ type: "blockdev-snapshot", data: { node: top, overlay: `hand${round}` } }]);
  await copyFile(join(shown.paths.dir, "nvram.fd"), join(work, `hand-${round}.nvram`));
  await mon.migrate(`unix:${sock}`);
  for (;;) {
    const s = (await mon.queryMigrate()).status;
    if (s === "completed") break;
    if (s === "failed" || s === "cancelled") throw new Error(`migration ${s}`);
    await sleep(5);
  }
  await received;
  await mon.cont();
  const pause = performance.now() - t0;
  server.close();
  // Undo: commit the hand-made overlay back into vmhost's image, pivot, so vmhost's records stay true.
  await mon.blockCommit(`undo${round}`, `hand${round}`, `hand${round}`, top);
  for (;;) {
    const j = (await mon.queryJobs()).find((x) => x.id === `undo${round}`);
    if (!j) break;
    if (j.status === "ready") await mon.blockJobComplete(`undo${round}`).catch(() => undefined);
    if (j.status === "concluded") {
      await mon.jobDismiss(`undo${round}`);
      break;
    }
    await sleep(20);
  }
  await mon.blockdevDel(`hand${round}`).catch(() => undefined);
  mon.close();
  await unlink(overlay).catch(() => undefined);
  await rm(join(work, `hand-${round}.vmstate`), { force: true });
  await rm(sock, { force: true });
  return pause;
}

async function main(): Promise<void> {
  const host = await TestHost.create();
  try {
    // ---- (a) pause during a Standard checkpoint -----------------------------------------
    await host.ok(["new", "a", "--generation", "2", "--appliance", "--memory", "512M"]);
    await host.ok(["set", "a", "--checkpoint-type", "Standard"]);
    await host.ok(["start", "a"]);
    await host.waitConsole("a", READY, 180_000);
    await sleep(3000);
    const vmhostPause: number[] = [];
    const handPause: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const r = await host.json<{ pausedMs: number; checkpoint: { id: string } }>(["checkpoint", "a"]);
      vmhostPause.push(r.pausedMs);
      handPause.push(await byHand(host, "a", i));
      // Keep the tree flat: merge the checkpoint away again (not measured).
      await host.ok(["checkpoint", "remove", "a", r.checkpoint.id]);
    }

    // ---- (c) apply with memory vs save + start -----------------------------------------
    const applyMs: number[] = [];
    const saveStartMs: number[] = [];
    const cp = await host.json<{ checkpoint: { id: string } }>(["checkpoint", "a", "--name", "apply-me"]);
    for (let i = 0; i < ROUNDS; i++) {
      applyMs.push(await timed(() => host.ok(["checkpoint", "apply", "a", cp.checkpoint.id])));
      saveStartMs.push(await timed(async () => {
        await host.ok(["save", "a"]);
        await host.ok(["start", "a"]);
      }));
    }
    await host.ok(["turn-off", "a"]);

    // ---- (b) checkpoint cost with 20 checkpoints vs none (VMs off) --------------------------
    await host.ok(["new", "deep", "--generation", "2", "--new-disk", "1G:qcow2"]);
    await host.ok(["new", "flat", "--generation", "2", "--new-disk", "1G:qcow2"]);
    for (let i = 0; i < 20; i++) await host.ok(["checkpoint", "deep", "--name", `d${i}`]);
    const deep: number[] = [];
    const flat: number[] = [];
    for (let i = 0; i < ROUNDS * 2; i++) {
      let id = "";
      deep.push(await timed(async () => (id = (await host.json<{ checkpoint: { id: string } }>(["checkpoint", "deep"])).checkpoint.id)));
      await host.ok(["checkpoint", "remove", "deep", id]);
      flat.push(await timed(async () => (id = (await host.json<{ checkpoint: { id: string } }>(["checkpoint", "flat"])).checkpoint.id)));
      await host.ok(["checkpoint", "remove", "flat", id]);
    }

    // ---- (d) removing a checkpoint whose disk changed by 100 MiB vs qemu-img commit --------
    await host.ok(["new", "merge", "--generation", "2", "--new-disk", "2G:qcow2"]);
    const removeMs: number[] = [];
    const commitMs: number[] = [];
    const work = join(host.home, "bench");
    await mkdir(work, { recursive: true });
    for (let i = 0; i < ROUNDS; i++) {
      const c = await host.json<{ checkpoint: { id: string } }>(["checkpoint", "merge"]);
      const now = (await host.json<Shown>(["show", "merge"])).disks[0]!;
      // 100 MiB written after the checkpoint (as a guest would).
      await execFileP("qemu-io", ["-f", "qcow2", "-c", `write -P ${0x10 + i} 0 100M`, now.path]);
      // The same two files by hand: a copy of the base and the overlay re-pointed at it.
      const tree = JSON.parse(await readFile(join((await host.json<Shown>(["show", "merge"])).paths.dir, "checkpoints", "tree.json"), "utf8")) as { now: { disks: { backing: { path: string } }[] } };
      const base = tree.now.disks[0]!.backing.path;
      const hb = join(work, `base-${i}.qcow2`);
      const ho = join(work, `over-${i}.qcow2`);
      await copyFile(base, hb);
      await copyFile(now.path, ho);
      await execFileP("qemu-img", ["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", hb, ho]);
      removeMs.push(await timed(() => host.ok(["checkpoint", "remove", "merge", c.checkpoint.id])));
      commitMs.push(await timed(() => execFileP("qemu-img", ["commit", "-f", "qcow2", "-d", "-b", hb, ho])));
      await rm(hb, { force: true });
      await rm(ho, { force: true });
    }

    // The fixed cost of any CLI call (node start, the request), for reading (b) and (d).
    const cli: number[] = [];
    for (let i = 0; i < ROUNDS * 2; i++) cli.push(await timed(() => host.ok(["list", "--json"])));

    printTable(`Checkpoints (${ROUNDS} rounds, medians, ms)`, [
      ["(a) guest paused, vmhost Standard checkpoint", median(vmhostPause), "same QMP sequence by hand, same QEMU", median(handPause), ratio(median(vmhostPause), median(handPause))],
      ["(b) checkpoint with 20 checkpoints (VM off, CLI wall)", median(deep), "with none", median(flat), ratio(median(deep), median(flat))],
      ["(c) checkpoint apply with memory (CLI wall)", median(applyMs), "save + start of the same VM", median(saveStartMs), ratio(median(applyMs), median(saveStartMs))],
      ["(d) remove, 100 MiB merged (CLI wall)", median(removeMs), "qemu-img commit by hand", median(commitMs), ratio(median(removeMs), median(commitMs))],
      ["(d) remove minus a CLI call's fixed cost", median(removeMs) - median(cli), "qemu-img commit by hand", median(commitMs), ratio(median(removeMs) - median(cli), median(commitMs))],
      ["a CLI call's fixed cost (`list --json`)", median(cli), "-", 1, "-"],
    ]);
    console.log(`\nraw: pause vmhost ${vmhostPause.map((x) => x.toFixed(0)).join(", ")}; by hand ${handPause.map((x) => x.toFixed(0)).join(", ")}`);
  } finally {
    await host.cleanup();
  }
}

await main();
