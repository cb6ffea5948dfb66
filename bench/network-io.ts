/**
 * Issue 5 (5): legacy versus synthetic, measured inside real guests.
 *   network: two Gen1 appliance VMs, each with a legacy adapter (emulated e1000) on one private
 *            switch and a synthetic one (virtio-net) on another, legacy and synthetic runs
 *            interleaved on the same pair of VMs:
 *            - iperf3 (Debian's, with its libraries fetched by the guests from the switch's TFTP),
 *              10 s TCP from one VM to the other, the receiver's figure;
 *            - busybox nc: SIZE MiB from dd /dev/zero into a TCP connection; the sender's clock
 *              runs until the receiver has read everything and closed;
 *   disk:    one Gen1 appliance VM with a raw data disk on IDE 0:1 (ata_piix) and one on SCSI 0:0
 *            (virtio-scsi), same size and format; busybox dd with O_DIRECT in the guest, 1 MiB
 *            blocks, writes then reads, IDE and SCSI runs interleaved.
 * Everything runs in a network namespace this benchmark makes (private switches need root).
 *
 *   node dist/bench/network-io.js [runs=5] [netMiB=64] [diskMiB=512] [net|disk|all]
 */
import { chmod, copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { sharedLibraries } from "../src/images/appliance/ldd.js";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../test/helpers/harness.js";
import { TestNetns, killAndDelete, switchNamespaces } from "../test/helpers/netns.js";
import { median, printTable } from "./stats.js";

const RUNS = Number(process.argv[2] ?? 5);
const NET_MIB = Number(process.argv[3] ?? 64);
const DISK_MIB = Number(process.argv[4] ?? 512);
/** net, disk or both (the default). */
const PART = process.argv[5] ?? "all";
const SMALL_MIB = 16;
const IDE_SIZE_MIB = 1024;
const SCSI_SIZE_MIB = 1280;

let seq = 0;

/** Type a command; return the text of the first line matching `expect` (a unique token keeps echoes out). */
async function guest(host: TestHost, vm: string, command: string, expect: (tok: string) => RegExp, timeoutMs = 300_000): Promise<RegExpExecArray> {
  const tok = `R${++seq}X`;
  const re = expect(tok);
  const text = await host.run(vm, command.replaceAll("@TOK@", `${tok.slice(0, 1)}""${tok.slice(1)}`), re, timeoutMs);
  return re.exec(text)!;
}

async function waitAddr(host: TestHost, vm: string, dev: string, prefix: string): Promise<string> {
  const m = await guest(
    host,
    vm,
    `for i in $(seq 60); do ip -4 -o addr show dev ${dev} | grep -q 'inet ${prefix}' && break; sleep 1; done; echo @TOK@ $(ip -4 -o addr show dev ${dev} | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p')`,
    (t) => new RegExp(`${t} (${prefix.replaceAll(".", "\\.")}[0-9.]+)`),
    90_000,
  );
  return m[1]!;
}

/** One transfer of NET_MIB MiB from `from` to `to` (address on the switch under test); MB/s as the receiver counted it. */
async function transfer(host: TestHost, from: string, to: string, toAddr: string): Promise<number> {
  const rxTok = `RX${++seq}Z`;
  const rxFrom = (await host.consoleText(to)).length;
  await host.run(to, `nc -l -p 5001 | wc -c | sed "s/^/${rxTok.slice(0, 2)}""${rxTok.slice(2)} /"`, /nc -l/, 10_000);
  await sleep(500);
  const m = await guest(
    host,
    from,
    `t0=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=64k count=${NET_MIB * 16} 2>/dev/null | nc ${toAddr} 5001; t1=$(cut -d' ' -f1 /proc/uptime); echo @TOK@ $t0 $t1`,
    (t) => new RegExp(`${t} ([0-9.]+) ([0-9.]+)`),
  );
  const seconds = Number(m[2]) - Number(m[1]);
  const rx = await host.waitConsole(to, new RegExp(`${rxTok} (\\d+)`), 60_000, rxFrom);
  const bytes = Number(new RegExp(`${rxTok} (\\d+)`).exec(rx)![1]);
  if (bytes !== NET_MIB * 1048576) throw new Error(`receiver counted ${bytes} bytes, not ${NET_MIB * 1048576}`);
  return bytes / 1e6 / seconds;
}

/** iperf3 and the libraries the appliance lacks (it has libc, libm and the loader for qemu-ga). */
async function iperfFiles(dir: string): Promise<string[]> {
  const files = ["/usr/bin/iperf3", ...(await sharedLibraries(["/usr/bin/iperf3"])).filter((l) => !/\/(libc|libm|ld-linux[^/]*)\.so/.test(l))];
  // dnsmasq's TFTP runs unprivileged and serves world-readable files only.
  await chmod(dir, 0o755);
  for (const f of files) {
    await copyFile(f, join(dir, basename(f)));
    await chmod(join(dir, basename(f)), 0o755);
  }
  return files.map((f) => basename(f));
}

async function fetchIperf(host: TestHost, vm: string, server: string, files: string[]): Promise<void> {
  const cmds = files.map((f) => `tftp -g -r ${f} -l /tmp/ip/${f} ${server}`).join(" && ");
  await guest(host, vm, `mkdir -p /tmp/ip && ${cmds} && chmod +x /tmp/ip/iperf3 && LD_LIBRARY_PATH=/tmp/ip /tmp/ip/iperf3 --version | head -1 | sed "s/^/@TOK@ /"`, (t) => new RegExp(`${t} iperf (\\S+)`), 120_000);
}

/** 10 s of TCP with iperf3 from `from` to `to`; Mbit/s the receiver counted, as MB/s. */
async function iperf(host: TestHost, from: string, to: string, toAddr: string): Promise<number> {
  await guest(host, to, `LD_LIBRARY_PATH=/tmp/ip /tmp/ip/iperf3 -s -1 -D && sleep 1 && echo @TOK@`, (t) => new RegExp(`${t}`), 30_000);
  const m = await guest(
    host,
    from,
    `LD_LIBRARY_PATH=/tmp/ip /tmp/ip/iperf3 -c ${toAddr} -t 10 -f m | grep receiver | sed "s/^/@TOK@ /"`,
    (t) => new RegExp(`${t} .* ([0-9.]+) Mbits/sec\\s+receiver`),
    120_000,
  );
  return Number(m[1]) / 8;
}

/** One dd of `mib` MiB in `blockKiB` blocks with O_DIRECT; MB/s by the guest's clock (Debian's busybox dd prints no rate). */
async function ddRun(host: TestHost, vm: string, dev: string, write: boolean, blockKiB: number, mib: number): Promise<number> {
  const count = (mib * 1024) / blockKiB;
  const dd = write
    ? `dd if=/dev/zero of=/dev/${dev} bs=${blockKiB}k count=${count} oflag=direct`
    : `dd if=/dev/${dev} of=/dev/null bs=${blockKiB}k count=${count} iflag=direct`;
  const m = await guest(
    host,
    vm,
    `t0=$(cut -d' ' -f1 /proc/uptime); ${dd} 2>/tmp/dd.err; t1=$(cut -d' ' -f1 /proc/uptime); echo @TOK@ $t0 $t1 $(grep -c '^${count}+0 records out' /tmp/dd.err)`,
    (t) => new RegExp(`${t} ([0-9.]+) ([0-9.]+) (\\d+)`),
  );
  if (m[3] !== "1") throw new Error(`dd on /dev/${dev} did not copy ${mib} MiB`);
  return (mib * 1048576) / 1e6 / (Number(m[2]) - Number(m[1]));
}

const ratio2 = (a: number[], b: number[]) => `${(median(a) / median(b)).toFixed(2)}x`;
const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(" ");

async function networkBench(host: TestHost, scratch: string[]): Promise<void> {
  // The switches' TFTP carries iperf3 to the guests (no boot program is involved).
  const tools = await mkdtemp(join(tmpdir(), "vmh-bench-tools-"));
  scratch.push(tools);
  const files = await iperfFiles(tools);
  for (const [name, net] of [["bl", "10.51.0.0/24"], ["bs", "10.52.0.0/24"]] as const) {
    await host.ok(["switch", "new", name, "--type", "private", "--subnet", net, "--dhcp", "on", "--boot-dir", tools, "--boot-file", "iperf3"]);
  }
  for (const vm of ["n1", "n2"]) {
    await host.ok(["new", vm, "--generation", "1", "--appliance", "--memory", "512M"]);
    await host.ok(["nic", "remove", vm, "Network Adapter"]);
    await host.ok(["nic", "add", vm, "--legacy", "--switch", "bl"]);
    await host.ok(["nic", "add", vm, "--switch", "bs"]);
    await host.ok(["start", vm]);
  }
  for (const vm of ["n1", "n2"]) await host.waitConsole(vm, READY, BOOT_TIMEOUT_MS);
  // Which ethN is which: the guest names them in driver probe order.
  const ifOf = async (vm: string, driver: string) =>
    (await guest(host, vm, `for n in /sys/class/net/eth*; do [ $(basename $(readlink $n/device/driver)) = ${driver} ] && echo @TOK@ \${n##*/}; done`, (t) => new RegExp(`${t} (eth\\d+)`)))[1]!;
  const legacyAddr = await waitAddr(host, "n2", await ifOf("n2", "e1000"), "10.51.0.");
  const synthAddr = await waitAddr(host, "n2", await ifOf("n2", "virtio_net"), "10.52.0.");
  await waitAddr(host, "n1", await ifOf("n1", "e1000"), "10.51.0.");
  await waitAddr(host, "n1", await ifOf("n1", "virtio_net"), "10.52.0.");
  for (const vm of ["n1", "n2"]) await fetchIperf(host, vm, "10.52.0.1", files);
  await transfer(host, "n1", "n2", legacyAddr); // warm-up: ARP, TCP, page cache
  await transfer(host, "n1", "n2", synthAddr);
  const legacy: number[] = [];
  const synth: number[] = [];
  const legacyIperf: number[] = [];
  const synthIperf: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    legacyIperf.push(await iperf(host, "n1", "n2", legacyAddr));
    synthIperf.push(await iperf(host, "n1", "n2", synthAddr));
    legacy.push(await transfer(host, "n1", "n2", legacyAddr));
    synth.push(await transfer(host, "n1", "n2", synthAddr));
    process.stderr.write(
      `net run ${i + 1}/${RUNS}: iperf3 legacy ${legacyIperf.at(-1)!.toFixed(1)} synthetic ${synthIperf.at(-1)!.toFixed(1)} MB/s; ` +
        `nc legacy ${legacy.at(-1)!.toFixed(1)} synthetic ${synth.at(-1)!.toFixed(1)} MB/s\n`,
    );
  }
  for (const vm of ["n1", "n2"]) await host.ok(["turn-off", vm]);
  printTable(`Network throughput between two VMs on a private switch (MB/s, median of ${RUNS})`, [
    ["synthetic (virtio-net), iperf3 10 s", median(synthIperf), "legacy (e1000), iperf3 10 s", median(legacyIperf), ratio2(synthIperf, legacyIperf)],
    [`synthetic, busybox nc ${NET_MIB} MiB`, median(synth), `legacy, busybox nc ${NET_MIB} MiB`, median(legacy), ratio2(synth, legacy)],
  ]);
  console.log(`\nall runs (MB/s): iperf3 legacy ${list(legacyIperf)}; iperf3 synthetic ${list(synthIperf)}; nc legacy ${list(legacy)}; nc synthetic ${list(synth)}`);
}

async function diskBench(host: TestHost): Promise<void> {
  await host.ok(["new", "d1", "--generation", "1", "--appliance", "--memory", "512M"]);
  await host.ok(["disk", "add", "d1", "--new", `${IDE_SIZE_MIB}M:raw`, "--controller-type", "IDE", "--controller", "0", "--location", "1"]);
  await host.ok(["disk", "add", "d1", "--new", `${SCSI_SIZE_MIB}M:raw`, "--controller-type", "SCSI"]);
  await host.ok(["start", "d1"]);
  await host.waitConsole("d1", READY, BOOT_TIMEOUT_MS);
  // The two data disks told apart by size (sector counts).
  const devOf = async (mib: number) =>
    (await guest(host, "d1", `for d in /sys/block/sd*; do [ $(cat $d/size) = ${mib * 2048} ] && echo @TOK@ \${d##*/}; done`, (t) => new RegExp(`${t} (sd[a-z]+)`)))[1]!;
  const ide = await devOf(IDE_SIZE_MIB);
  const scsi = await devOf(SCSI_SIZE_MIB);
  // Large sequential blocks (bandwidth: mostly QEMU copying data) and 4 KiB blocks (requests:
  // the per-request cost of the emulated controller), both on the same two disks.
  const sizes = [
    { label: "1 MiB blocks", blockKiB: 1024, mib: DISK_MIB },
    { label: "4 KiB blocks", blockKiB: 4, mib: SMALL_MIB },
  ];
  await ddRun(host, "d1", ide, true, 1024, DISK_MIB); // allocate both files' blocks before timing
  await ddRun(host, "d1", scsi, true, 1024, DISK_MIB);
  const rows: [string, number, string, number, string][] = [];
  for (const sz of sizes) {
    const ideW: number[] = [];
    const scsiW: number[] = [];
    const ideR: number[] = [];
    const scsiR: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      ideW.push(await ddRun(host, "d1", ide, true, sz.blockKiB, sz.mib));
      scsiW.push(await ddRun(host, "d1", scsi, true, sz.blockKiB, sz.mib));
      ideR.push(await ddRun(host, "d1", ide, false, sz.blockKiB, sz.mib));
      scsiR.push(await ddRun(host, "d1", scsi, false, sz.blockKiB, sz.mib));
      process.stderr.write(`disk ${sz.label} run ${i + 1}/${RUNS}: IDE write ${ideW.at(-1)!.toFixed(1)} read ${ideR.at(-1)!.toFixed(1)}, SCSI write ${scsiW.at(-1)!.toFixed(1)} read ${scsiR.at(-1)!.toFixed(1)} MB/s\n`);
    }
    rows.push([`SCSI (virtio-scsi) write, ${sz.label}`, median(scsiW), "IDE (ata_piix) write", median(ideW), ratio2(scsiW, ideW)]);
    rows.push([`SCSI (virtio-scsi) read, ${sz.label}`, median(scsiR), "IDE (ata_piix) read", median(ideR), ratio2(scsiR, ideR)]);
    console.log(`all runs, ${sz.label} (MB/s): IDE write ${list(ideW)}; SCSI write ${list(scsiW)}; IDE read ${list(ideR)}; SCSI read ${list(scsiR)}`);
  }
  await host.ok(["turn-off", "d1"]);
  printTable(`Disk throughput, O_DIRECT in the guest, raw images, ${DISK_MIB} MiB (1 MiB blocks) / ${SMALL_MIB} MiB (4 KiB blocks) per run (MB/s, median of ${RUNS})`, rows);
}

async function main(): Promise<void> {
  const ns = await TestNetns.create("bench");
  const host = await TestHost.create({ netns: ns.name });
  const scratch: string[] = [];
  try {
    if (PART !== "disk") await networkBench(host, scratch);
    if (PART !== "net") await diskBench(host);
  } finally {
    const serviceNs = await switchNamespaces(host.home).catch(() => [] as string[]);
    for (const s of ["bl", "bs"]) await host.cli(["switch", "remove", s], 30_000).catch(() => undefined);
    await host.cleanup();
    for (const n of serviceNs) await killAndDelete(n);
    await ns.cleanup();
    for (const d of scratch) await rm(d, { recursive: true, force: true });
  }
}

await main();
