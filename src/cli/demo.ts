import { readFile } from "node:fs/promises";
import type { ServiceClient } from "../service/client.js";
import type { VmView } from "../service/vms.js";
import { VmhostError } from "../util/errors.js";
import { stripTerminalControls } from "../supervisor/console-log.js";

export const READY_LINE = "vmhost-appliance: ready";
const DEMO_VM = "demo";

/**
 * The README's first command ends here: a Gen2 VM from the built-in appliance boots,
 * its console is shown as it comes, and it is shut down again through ACPI.
 */
export async function runDemo(api: ServiceClient, opts: { keepRunning: boolean }): Promise<number> {
  console.log("== Building (or reusing) the built-in appliance");
  await api.call("POST", "/v1/appliance/build", { force: false });
  let vm: VmView;
  try {
    vm = await api.call<VmView>("GET", `/v1/vms/${DEMO_VM}`);
    console.log(`== Using the existing VM "${DEMO_VM}"`);
  } catch (err) {
    if ((err as VmhostError).status !== 404) throw err;
    vm = await api.call<VmView>("POST", "/v1/vms", { name: DEMO_VM, generation: 2, appliance: true });
    console.log(`== Created generation 2 VM "${DEMO_VM}" from the appliance`);
  }
  const host = await api.call<{ accelerator: string; acceleratorReason: string }>("GET", "/v1/host");
  console.log(`== Accelerator: ${host.accelerator.toUpperCase()} (${host.acceleratorReason})`);
  if (vm.state === "Running") await api.call("POST", `/v1/vms/${DEMO_VM}/turn-off`);
  const logFile = vm.paths.console;
  const offset = await readFile(logFile).then((b) => b.length, () => 0);
  const t0 = Date.now();
  await api.call("POST", `/v1/vms/${DEMO_VM}/start`);
  console.log(`== Started; the serial console follows`);
  let shown = 0;
  const deadline = Date.now() + 180_000;
  for (;;) {
    const text = (await readFile(logFile).catch(() => Buffer.alloc(0))).subarray(offset).toString("utf8");
    if (text.length > shown) {
      process.stdout.write(stripTerminalControls(text.slice(shown)));
      shown = text.length;
    }
    if (text.includes(READY_LINE)) break;
    const state = (await api.call<VmView>("GET", `/v1/vms/${DEMO_VM}`)).state;
    if (state === "Off") throw new VmhostError("demo", "the demo VM stopped before it was ready");
    if (Date.now() > deadline) throw new VmhostError("demo", "the demo VM did not print its ready line within 180 s");
    await new Promise((r) => setTimeout(r, 200));
  }
  console.log(`\n== ${READY_LINE} after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (opts.keepRunning) {
    console.log(`== Left running: "bin/vmhost console ${DEMO_VM}" attaches, "bin/vmhost stop ${DEMO_VM}" shuts it down`);
    return 0;
  }
  const r = await api.call<{ state: string }>("POST", `/v1/vms/${DEMO_VM}/stop`, { force: true, timeoutSeconds: 30 });
  console.log(`== Shut down through ACPI: ${r.state}`);
  return 0;
}
