/**
 * `firmware get` on a 4 MiB OVMF store (OVMF_VARS_4M layout, 540 KiB file): in-process read of
 * the bytes, parse and render (the Get-VMFirmware view with device mapping and the Secure
 * Boot key lists), median of 1000 against the 5 ms target; then the CLI's whole wall time
 * against `vmhost list --json` (the fixed cost of a CLI call), side by side with hyperfine.
 *
 *   node dist/bench/firmware.js
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { GUIDS, applySecureBootTemplate, parseVarStore, syncDeviceEntries } from "../src/firmware/index.js";
import { firmwareLayout, renderFirmwareView } from "../src/service/firmware.js";
import { TestHost, VMHOST } from "../test/helpers/harness.js";
import { sampleVm } from "../test/helpers/sample-vm.js";
import { fixture } from "../test/fixtures/firmware/helpers.js";
import { median, printTable, ratio } from "./stats.js";

const RUNS = 1000;

function inProcess(): { parseRender: number; parseOnly: number; entries: number; bytes: number } {
  // A busy store: OVMF's own entries plus 36 user entries, with the UEFI CA template's keys.
  const vm = sampleVm({
    hardDisks: [{ controllerType: "SCSI", controllerNumber: 0, controllerLocation: 0, path: "/x.qcow2", format: "qcow2" }],
    networkAdapters: [{ name: "Network Adapter", type: "Synthetic", macAddress: "00:15:5D:00:00:01", dynamicMac: false, switchName: "Default Switch", pciSlot: 8 }],
  });
  const store = parseVarStore(fixture("ovmf4m-custom.fd"));
  applySecureBootTemplate(store, parseVarStore(fixture("pristine-OVMF_VARS.ms.fd")), "MicrosoftUEFICertificateAuthority", true);
  syncDeviceEntries(store, firmwareLayout(vm), "IPv4");
  const bytes = store.toBuffer().slice();
  if (!store.get("db", GUIDS.imageSecurityDatabase)) throw new Error("no db");
  let entries = 0;
  const both: number[] = [];
  const parse: number[] = [];
  for (let i = 0; i < RUNS + 50; i++) {
    // Interleaved, so both see the same machine noise.
    let t = performance.now();
    const s = parseVarStore(bytes);
    const view = renderFirmwareView(vm, "Off", s, "nvram.fd", [], null, null);
    const a = performance.now() - t;
    t = performance.now();
    parseVarStore(bytes);
    const b = performance.now() - t;
    entries = view.bootOrder!.length;
    if (i >= 50) {
      both.push(a);
      parse.push(b);
    }
  }
  return { parseRender: median(both), parseOnly: median(parse), entries, bytes: bytes.length };
}

async function cli(): Promise<{ get: number; list: number }> {
  const host = await TestHost.create();
  try {
    await host.ok(["new", "a", "--generation", "2", "--new-disk", "64M:raw"]);
    await host.ok(["firmware", "set", "a", "--secure-boot", "on"]);
    const out = join(host.home, "hyperfine.json");
    execFileSync(
      "hyperfine",
      [
        "--warmup", "3", "--runs", "20", "--export-json", out, "-N",
        "-n", "firmware get", `env VMHOST_HOME=${host.home} ${process.execPath} ${VMHOST} firmware get a --json`,
        "-n", "list", `env VMHOST_HOME=${host.home} ${process.execPath} ${VMHOST} list --json`,
      ],
      { stdio: ["ignore", "inherit", "inherit"] },
    );
    const res = (JSON.parse(readFileSync(out, "utf8")) as { results: { median: number }[] }).results;
    return { get: res[0]!.median, list: res[1]!.median };
  } finally {
    await host.cleanup();
  }
}

const p = inProcess();
console.log(`store ${p.bytes} bytes, ${p.entries} boot entries`);
printTable(`firmware get in process (ms, median of ${RUNS}, interleaved)`, [
  ["parse + render", p.parseRender, "target", 5, ratio(p.parseRender, 5)],
  ["parse + render", p.parseRender, "parse only", p.parseOnly, ratio(p.parseRender, p.parseOnly)],
]);
const c = await cli();
printTable("`vmhost firmware get --json` wall time (seconds, median of 20, hyperfine)", [["firmware get", c.get, "list --json", c.list, ratio(c.get, c.list)]]);
