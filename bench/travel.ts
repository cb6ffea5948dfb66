/**
 * Benchmarks of VMs that travel (issue 11), each side by side in one run, interleaved:
 *  (a) `vmhost export` of an Off Gen1 VM with a 4 GiB raw disk holding 1 GiB of data, against
 *      `cp --sparse=always` of the same disk file into the same folder, and against what an export
 *      does at least (that cp, `sha256sum` of the copy, `sync` of it); the same with the disk as a
 *      4 GiB qcow2 (1 GiB allocated);
 *  (b) `vmhost import --copy --generate-new-id` of that export, against `cp -r --sparse=always` of
 *      the export's folder;
 *  (c) `vmhost convert-generation` of the appliance's Gen1 VM until its first Gen2 boot reported
 *      `vmhost-appliance: ready`, against `vmhost start` of a Gen2 appliance VM until ready.
 * Every side reads warm data (the same files were read in the round before).
 *
 *   node dist/bench/travel.js [rounds]        (boots VMs: run under flock /tmp/vmhost-boot.lock)
 */
import { execFile } from "node:child_process";
import { rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { READY, TestHost } from "../test/helpers/harness.js";
import { median, printTable, ratio } from "./stats.js";

const execFileP = promisify(execFile);
const ROUNDS = Number(process.argv[2] ?? 3);
const GiB = 1024 * 1024 * 1024;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

async function allocated(path: string): Promise<number> {
  const { stdout } = await execFileP("du", ["-s", "-B1", path]);
  return Number(stdout.split(/\s/)[0]);
}

interface Shown {
  id: string;
  disks: { path: string; format: string }[];
}

async function main(): Promise<void> {
  const host = await TestHost.create();
  const rows: [string, number, string, number, string][] = [];
  const notes: string[] = [];
  try {
    // ---- (a) export of a 4 GiB VM with 1 GiB used, raw and qcow2 --------------------------
    for (const format of ["raw", "qcow2"] as const) {
      const vm = `big-${format}`;
      await host.ok(["new", vm, "--generation", "1", "--new-disk", `4G:${format}`]);
      const disk = (await host.json<Shown>(["show", vm])).disks[0]!;
      // 1 GiB of data in four 256 MiB runs spread over the disk, as a guest's file system leaves them.
      for (let i = 0; i < 4; i++) await execFileP("qemu-io", ["-f", format, "-c", `write -P 0x${(0x31 + i).toString(16)} ${i * GiB} 256M`, disk.path]);
      const out = join(host.home, "bench-export");
      const exportS: number[] = [];
      const cpS: number[] = [];
      const floorS: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        await rm(out, { recursive: true, force: true });
        exportS.push(await timed(() => host.ok(["export", vm, out])));
        const exported = join(out, vm);
        if (r === 0) notes.push(`(a) ${format}: the export holds ${(await allocated(exported)) / GiB} GiB allocated of ${(await stat(disk.path)).size / GiB} GiB disk`);
        const cpDir = join(host.home, "bench-cp");
        await rm(cpDir, { recursive: true, force: true });
        await execFileP("mkdir", ["-p", cpDir]);
        cpS.push(await timed(() => execFileP("cp", ["--sparse=always", disk.path, cpDir])));
        if (r === 0) notes.push(`(a) ${format}: cp --sparse=always made ${(await allocated(cpDir)) / GiB} GiB allocated`);
        await rm(cpDir, { recursive: true, force: true });
        await execFileP("mkdir", ["-p", cpDir]);
        const copied = join(cpDir, disk.path.split("/").pop()!);
        floorS.push(
          await timed(async () => {
            await execFileP("cp", ["--sparse=always", disk.path, cpDir]);
            await execFileP("sha256sum", [copied]);
            await execFileP("sync", [copied]);
          }),
        );
        await rm(cpDir, { recursive: true, force: true });
      }
      rows.push([`(a) export, 4 GiB ${format} disk, 1 GiB used (s)`, median(exportS), "cp --sparse=always of the disk file", median(cpS), ratio(median(exportS), median(cpS))]);
      rows.push([`(a) export, 4 GiB ${format} disk, 1 GiB used (s)`, median(exportS), "that cp + sha256sum + sync of the copy", median(floorS), ratio(median(exportS), median(floorS))]);
      notes.push(`(a) ${format} all runs (s): export ${exportS.map((x) => x.toFixed(2)).join(" ")}; cp ${cpS.map((x) => x.toFixed(2)).join(" ")}; cp + sha256sum + sync ${floorS.map((x) => x.toFixed(2)).join(" ")}`);

      // ---- (b) import of that export as a copy with a new id ------------------------------
      const exported = join(out, vm);
      const importS: number[] = [];
      const cpR: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        importS.push(await timed(() => host.ok(["import", exported, "--copy", "--generate-new-id", "--name", "imported"])));
        await host.ok(["remove", "imported", "--delete-disks"]);
        const cpDir = join(host.home, "bench-cp");
        await rm(cpDir, { recursive: true, force: true });
        cpR.push(await timed(() => execFileP("cp", ["-r", "--sparse=always", exported, cpDir])));
        await rm(cpDir, { recursive: true, force: true });
      }
      rows.push([`(b) import --copy --generate-new-id, ${format} (s)`, median(importS), "cp -r --sparse=always of the export", median(cpR), ratio(median(importS), median(cpR))]);
      notes.push(`(b) ${format} all runs (s): import ${importS.map((x) => x.toFixed(2)).join(" ")}; cp ${cpR.map((x) => x.toFixed(2)).join(" ")}`);
      await rm(out, { recursive: true, force: true });
      await host.ok(["remove", vm, "--delete-disks"]);
    }

    // ---- (c) convert-generation to the first Gen2 boot, against a Gen2 appliance boot ----------
    await host.ok(["new", "gen1", "--generation", "1", "--appliance"]);
    await host.ok(["new", "gen2", "--generation", "2", "--appliance"]);
    const convertS: number[] = [];
    const firstBootS: number[] = [];
    const bootS: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const name = `gen1 (Generation 2)`;
      let reported = 0;
      convertS.push(
        await timed(async () => {
          const res = await host.cli(["convert-generation", "gen1", "--json"], 900_000);
          if (res.code !== 0) throw new Error(`convert-generation failed: ${res.stderr}${res.stdout}`);
          const j = JSON.parse(res.stdout) as { firstBoot: { ok: boolean; seconds: number } };
          if (!j.firstBoot.ok) throw new Error(`the first boot failed: ${res.stdout}`);
          reported = j.firstBoot.seconds;
        }),
      );
      firstBootS.push(reported);
      await host.ok(["turn-off", name]);
      await host.ok(["remove", name, "--delete-disks"]);
      host.forget(name);
      const from = (await host.consoleText("gen2")).length;
      bootS.push(
        await timed(async () => {
          await host.ok(["start", "gen2"]);
          await host.waitConsole("gen2", READY, 600_000, from);
        }),
      );
      await host.ok(["turn-off", "gen2"]);
    }
    rows.push(["(c) convert-generation until the Gen2 VM is ready (s)", median(convertS), "start of a Gen2 appliance VM until ready", median(bootS), ratio(median(convertS), median(bootS))]);
    rows.push(["(c) of which the first boot, as reported", median(firstBootS), "start of a Gen2 appliance VM until ready", median(bootS), ratio(median(firstBootS), median(bootS))]);
    notes.push(`(c) all runs (s): convert ${convertS.map((x) => x.toFixed(1)).join(" ")}; first boot ${firstBootS.map((x) => x.toFixed(1)).join(" ")}; Gen2 boot ${bootS.map((x) => x.toFixed(1)).join(" ")}`);

    printTable(`VMs that travel (${ROUNDS} rounds, medians)`, rows);
    console.log("");
    for (const n of notes) console.log(`- ${n}`);
  } finally {
    await host.cleanup();
  }
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
