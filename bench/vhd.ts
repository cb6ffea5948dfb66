/**
 * VHD tools against plain qemu-img, side by side (issue 11 item 3): what vmhost's checks (format
 * against content, the backing chain walked member by member, the published-whole output) cost on top
 * of the qemu-img run that does the work.
 *   (a) convertVhd raw -> vhdx, 1 GiB with 128 MiB written, against `qemu-img convert` of the same
 *   (b) getVhd of a three-image chain (partition table read included), against `qemu-img info --backing-chain`
 *   (c) resizeVhd grow of that vhdx (a copy: QEMU cannot resize vhdx), against growing a qcow2 in place
 *
 *   node dist/bench/vhd.js [runs=5]
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { convertVhd, getVhd, newVhd, resizeVhd } from "../src/images/vhd.js";
import { median, printTable, ratio } from "./stats.js";

const RUNS = Number(process.argv[2] ?? 5);
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ["ignore", "ignore", "inherit"] });
}

async function timed(fn: () => Promise<void> | void): Promise<number> {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "vmhost-bench-vhd-"));
  const opts = { allowedDirs: [dir] };
  try {
    const src = join(dir, "src.img");
    await newVhd({ path: src, sizeBytes: GiB }, opts);
    // 128 MiB of data in 16 runs of 8 MiB spread over the disk.
    sh("qemu-io", ["-f", "raw", ...Array.from({ length: 16 }, (_, i) => ["-c", `write -P ${0x10 + i} ${i * 64}M 8M`]).flat(), src]);

    const ours: number[] = [];
    const theirs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const a = join(dir, `a${i}.vhdx`);
      const b = join(dir, `b${i}.vhdx`);
      theirs.push(await timed(() => sh("qemu-img", ["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic", src, b])));
      ours.push(await timed(() => convertVhd(src, a, {}, opts).then(() => undefined)));
      rmSync(a);
      rmSync(b);
    }

    const base = join(dir, "base.vhdx");
    await convertVhd(src, base, {}, opts);
    const mid = join(dir, "mid.qcow2");
    const top = join(dir, "top.qcow2");
    await newVhd({ path: mid, parent: { path: base } }, opts);
    await newVhd({ path: top, parent: { path: mid } }, opts);
    const getOurs: number[] = [];
    const getTheirs: number[] = [];
    for (let i = 0; i < RUNS * 2; i++) {
      getTheirs.push(await timed(() => sh("qemu-img", ["info", "--output=json", "--backing-chain", "-U", "-f", "qcow2", top])));
      getOurs.push(await timed(() => getVhd(top, opts).then(() => undefined)));
    }

    const growVhdx: number[] = [];
    const growQcow2: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const v = join(dir, `g${i}.vhdx`);
      const q = join(dir, `g${i}.qcow2`);
      sh("cp", ["--sparse=always", base, v]);
      sh("qemu-img", ["convert", "-f", "vhdx", "-O", "qcow2", base, q]);
      growVhdx.push(await timed(() => resizeVhd(v, 2 * GiB, {}, opts).then(() => undefined)));
      growQcow2.push(await timed(() => resizeVhd(q, 2 * GiB, {}, opts).then(() => undefined)));
      rmSync(v);
      rmSync(q);
    }

    const rows: [string, number, string, number, string][] = [
      ["(a) `convertVhd` raw -> vhdx, 1 GiB, 128 MiB written", median(ours), "`qemu-img convert` of the same", median(theirs), ratio(median(ours), median(theirs))],
      ["(b) `getVhd`, chain of 3, partition table read", median(getOurs), "`qemu-img info --backing-chain`", median(getTheirs), ratio(median(getOurs), median(getTheirs))],
      ["(c) `resizeVhd` vhdx 1 -> 2 GiB (copy)", median(growVhdx), "`resizeVhd` qcow2 1 -> 2 GiB (in place)", median(growQcow2), ratio(median(growVhdx), median(growQcow2))],
    ];
    printTable(`VHD tools (seconds, median of ${RUNS}; (b) of ${RUNS * 2})`, rows);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
