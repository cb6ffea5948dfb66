/**
 * Issue 5 (5): legacy versus synthetic, measured inside real guests.
 *   network: two Gen1 appliance VMs, each with a legacy adapter (emulated e1000) on one private
 *            switch and a synthetic one (virtio-net) on another; the same pair of VMs sends
 *            SIZE MiB with busybox nc (dd from /dev/zero into a TCP connection; the sender's
 *            clock runs until the receiver has read everything and closed), legacy and synthetic
 *            runs interleaved;
 *   disk:    one Gen1 appliance VM with a raw data disk on IDE 0:1 (ata_piix) and one on SCSI 0:0
 *            (virtio-scsi), same size and format; busybox dd with O_DIRECT in the guest, 1 MiB
 *            blocks, writes then reads, IDE and SCSI runs interleaved.
 * Everything runs in a network namespace this benchmark makes (private switches need root).
 *
 *   node dist/bench/network-io.js [runs=5] [netMiB=64] [diskMiB=128]
 */
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../test/helpers/harness.js";
import { TestNetns, killAndDelete, switchNamespaces } from "../test/helpers/netns.js";
import { median, printTable } from "./stats.js";

const RUNS = Number(process.argv[2] ?? 5);
const NET_MIB = Number(process.argv[3] ?? 64);
const DISK_MIB = Number(process.argv[4] ?? 128);
const IDE_SIZE_MIB = 256;
const SCSI_SIZE_MIB = 320;

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

async function ddRun(host: TestHost, vm: string, dev: string, write: boolean): Promise<number> {
  const cmd = write
    ? `dd if=/dev/zero of=/dev/${dev} bs=1M count=${DISK_MIB} oflag=direct 2>&1 | tail -1 | sed "s/^/@TOK@ /"`
    : `dd if=/dev/${dev} of=/dev/null bs=1M count=${DISK_MIB} iflag=direct 2>&1 | tail -1 | sed "s/^/@TOK@ /"`;
  const m = await guest(host, vm, cmd, (t) => new RegExp(`${t} (\\d+) bytes .*copied, ([0-9.]+) seconds`));
  return Number(m[1]) / 1e6 / Number(m[2]);
}

async function main(): Promise<void> {
  const ns = await TestNetns.create("bench");
  const host = await TestHost.create({ netns: ns.name });
  try {
    // ---- network ----
    await host.ok(["switch", "new", "bl", "--type", "private", "--subnet", "10.51.0.0/24", "--dhcp", "on"]);
    await host.ok(["switch", "new", "bs", "--type", "private", "--subnet", "10.52.0.0/24", "--dhcp", "on"]);
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
    await transfer(host, "n1", "n2", legacyAddr); // warm-up: ARP, TCP, page cache
    await transfer(host, "n1", "n2", synthAddr);
    const legacy: number[] = [];
    const synth: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      legacy.push(await transfer(host, "n1", "n2", legacyAddr));
      synth.push(await transfer(host, "n1", "n2", synthAddr));
      process.stderr.write(`net run ${i + 1}/${RUNS}: legacy ${legacy.at(-1)!.toFixed(1)} MB/s, synthetic ${synth.at(-1)!.toFixed(1)} MB/s\n`);
    }
    for (const vm of ["n1", "n2"]) await host.ok(["turn-off", vm]);

    // ---- disk ----
    await host.ok(["new", "d1", "--generation", "1", "--appliance", "--memory", "512M"]);
    await host.ok(["disk", "add", "d1", "--new", `${IDE_SIZE_MIB}M:raw`, "--controller-type", "IDE", "--controller", "0", "--location", "1"]);
    await host.ok(["disk", "add", "d1", "--new", `${SCSI_SIZE_MIB}M:raw`, "--controller-type", "SCSI"]);
    await host.ok(["start", "d1"]);
    await host.waitConsole("d1", READY, BOOT_TIMEOUT_MS);
    const devOf = async (mib: number) =>
      (await guest(host, "d1", `for d in /sys/block/sd*; do [ $(cat $d/size) = ${mib * 2048} ] && echo @TOK@ \${d##*/} $(basename $(readlink -f $d/device/../..)); done`, (t) => new RegExp(`${t} (sd[a-z]+) (\\S+)`)))[1]!;
    const ide = await devOf(IDE_SIZE_MIB);
    const scsi = await devOf(SCSI_SIZE_MIB);
    const ideW: number[] = [];
    const scsiW: number[] = [];
    const ideR: number[] = [];
    const scsiR: number[] = [];
    await ddRun(host, "d1", ide, true); // allocate both files' blocks before timing
    await ddRun(host, "d1", scsi, true);
    for (let i = 0; i < RUNS; i++) {
      ideW.push(await ddRun(host, "d1", ide, true));
      scsiW.push(await ddRun(host, "d1", scsi, true));
      ideR.push(await ddRun(host, "d1", ide, false));
      scsiR.push(await ddRun(host, "d1", scsi, false));
      process.stderr.write(`disk run ${i + 1}/${RUNS}: IDE write ${ideW.at(-1)!.toFixed(1)} read ${ideR.at(-1)!.toFixed(1)}, SCSI write ${scsiW.at(-1)!.toFixed(1)} read ${scsiR.at(-1)!.toFixed(1)} MB/s\n`);
    }
    await host.ok(["turn-off", "d1"]);

    const r = (a: number[], b: number[]) => `${(median(a) / median(b)).toFixed(2)}x`;
    printTable(`Network throughput between two VMs on a private switch, ${NET_MIB} MiB per run (MB/s, median of ${RUNS})`, [
      ["synthetic (virtio-net)", median(synth), "legacy (e1000)", median(legacy), r(synth, legacy)],
    ]);
    printTable(`Disk throughput, direct I/O, 1 MiB blocks, ${DISK_MIB} MiB per run, raw images (MB/s, median of ${RUNS})`, [
      ["SCSI (virtio-scsi) write", median(scsiW), "IDE (ata_piix) write", median(ideW), r(scsiW, ideW)],
      ["SCSI (virtio-scsi) read", median(scsiR), "IDE (ata_piix) read", median(ideR), r(scsiR, ideR)],
    ]);
    console.log(`\nall runs (MB/s): legacy ${legacy.map((x) => x.toFixed(1)).join(" ")}; synthetic ${synth.map((x) => x.toFixed(1)).join(" ")}`);
    console.log(`IDE write ${ideW.map((x) => x.toFixed(1)).join(" ")}; SCSI write ${scsiW.map((x) => x.toFixed(1)).join(" ")}`);
    console.log(`IDE read ${ideR.map((x) => x.toFixed(1)).join(" ")}; SCSI read ${scsiR.map((x) => x.toFixed(1)).join(" ")}`);
  } finally {
    const serviceNs = await switchNamespaces(host.home).catch(() => [] as string[]);
    for (const s of ["bl", "bs"]) await host.cli(["switch", "remove", s], 30_000).catch(() => undefined);
    await host.cleanup();
    for (const n of serviceNs) await killAndDelete(n);
    await ns.cleanup();
  }
}

await main();
