import type { VmView } from "../api/views.js";

export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd();
  console.log(line(header));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const r of rows) console.log(line(r));
}

export function printVm(vm: VmView): void {
  console.log(`Name:        ${vm.name}`);
  console.log(`Id:          ${vm.id}`);
  console.log(`Generation:  ${vm.generation}`);
  console.log(`State:       ${vm.state}${vm.pid ? ` (QEMU pid ${vm.pid}, ${vm.accelerator?.toUpperCase()})` : ""}`);
  console.log(`Processors:  ${vm.cpus}`);
  console.log(`Memory:      ${vm.memoryMiB} MiB`);
  if (vm.notes) console.log(`Notes:       ${vm.notes}`);
  if (vm.appliance) console.log(`Appliance:   ${vm.appliance.id} (kernel ${vm.appliance.kernel})`);
  for (const d of vm.disks) console.log(`Disk:        ${d.ref}  ${d.path} (${d.format})`);
  for (const d of vm.dvds) console.log(`DVD:         ${d.ref}  ${d.path ?? "(empty)"}`);
  if (vm.floppy !== undefined) console.log(`Floppy:      ${vm.floppy ?? "(empty)"}`);
  for (const n of vm.nics) console.log(`Adapter:     ${n.name}  ${n.type}  ${n.macAddress}${n.dynamicMac ? " (dynamic)" : ""}  -> ${n.switchName}`);
  if (vm.heartbeat) console.log(`Heartbeat:   ${vm.heartbeat.detail === "disabled" ? "OK (disabled)" : vm.heartbeat.detail}`);
  if (vm.diagnosis) {
    console.log(`Diagnosis:   ${vm.diagnosis.title} (${vm.diagnosis.id}, ${vm.diagnosis.at})`);
    console.log(`  Why:       ${vm.diagnosis.explanation}`);
    console.log(`  Fix:       ${vm.diagnosis.fix}`);
    for (const l of vm.diagnosis.evidence) console.log(`  | ${l}`);
  }
  if (vm.lastExit) {
    console.log(`Last exit:   ${vm.lastExit.at}: ${vm.lastExit.reason}`);
    if (vm.lastExit.consoleTail.length) {
      console.log("Last console lines:");
      for (const l of vm.lastExit.consoleTail) console.log(`  | ${l}`);
    }
  }
  if (vm.paths) console.log(`Console log: ${vm.paths.console}`);
}

export function printHost(h: Record<string, unknown>): void {
  const g = (k: string) => h[k] as Record<string, unknown> | undefined;
  console.log(`Accelerator: ${String(h["accelerator"]).toUpperCase()} — ${String(h["acceleratorReason"])}`);
  console.log(`QEMU:        ${String(g("qemu")?.["version"])} ${g("qemu")?.["package"] ? `(${String(g("qemu")?.["package"])})` : ""} ${String(g("qemu")?.["binary"])}`);
  const ovmf = g("ovmf");
  const plain = ovmf?.["plain4m"] as Record<string, string> | undefined;
  console.log(`OVMF:        ${String(ovmf?.["version"] ?? "?")} ${plain?.["code"] ?? ""}`);
  console.log(`SeaBIOS:     ${String(g("seabios")?.["version"] ?? "?")} ${String(g("seabios")?.["bios"] ?? "")}`);
  console.log(`Host:        ${String(h["logicalProcessors"])} logical processors, ${String(h["memoryMiB"])} MiB`);
  const paths = g("paths");
  console.log(`Home:        ${String(paths?.["home"])}`);
  console.log(`Service:     vmhostd pid ${String(g("service")?.["pid"])}`);
}
