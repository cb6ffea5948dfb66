import type { VmView } from "../api/views.js";
import { stripTerminalControls } from "../supervisor/console-log.js";
import { VmhostError } from "../util/errors.js";
import type { Connection } from "./connection.js";

export const READY_LINE = "vmhost-appliance: ready";
const DEMO_VM = "demo";

/**
 * The README's first command ends here: a Gen2 VM from the built-in appliance boots,
 * its console is shown as it comes, and it is shut down again through ACPI.
 */
export async function runDemo(c: Connection, opts: { keepRunning: boolean }): Promise<number> {
  const api = c.api;
  console.log("== Building (or reusing) the built-in appliance");
  await api.host.buildAppliance({ force: false });
  let vm: VmView;
  try {
    vm = await api.vms.get({ vm: DEMO_VM });
    console.log(`== Using the existing VM "${DEMO_VM}"`);
  } catch (err) {
    if ((err as { status?: number }).status !== 404) throw err;
    vm = await api.vms.create({ name: DEMO_VM, generation: 2, appliance: true });
    console.log(`== Created generation 2 VM "${DEMO_VM}" from the appliance`);
  }
  const host = (await api.host.get()) as { accelerator: string; acceleratorReason: string };
  console.log(`== Accelerator: ${host.accelerator.toUpperCase()} (${host.acceleratorReason})`);
  if (vm.state === "Running") await api.vms.turnOff({ vm: DEMO_VM });
  const offset = (await api.vms.consoleLog({ vm: DEMO_VM })).log.length;
  const t0 = Date.now();
  await api.vms.start({ vm: DEMO_VM });
  console.log(`== Started; the serial console follows`);
  let shown = 0;
  const deadline = Date.now() + 180_000;
  for (;;) {
    const text = (await api.vms.consoleLog({ vm: DEMO_VM })).log.slice(offset);
    if (text.length > shown) {
      process.stdout.write(stripTerminalControls(text.slice(shown)));
      shown = text.length;
    }
    if (text.includes(READY_LINE)) break;
    const state = (await api.vms.get({ vm: DEMO_VM })).state;
    if (state === "Off") throw new VmhostError("demo", "the demo VM stopped before it was ready");
    if (Date.now() > deadline) throw new VmhostError("demo", "the demo VM did not print its ready line within 180 s");
    await new Promise((r) => setTimeout(r, 200));
  }
  console.log(`\n== ${READY_LINE} after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (opts.keepRunning) {
    console.log(`== Left running: "bin/vmhost console ${DEMO_VM}" attaches, "bin/vmhost stop ${DEMO_VM}" shuts it down`);
    return 0;
  }
  const r = await api.vms.stop({ vm: DEMO_VM, force: true, timeoutSeconds: 30 });
  console.log(`== Shut down through ACPI: ${r.state}`);
  return 0;
}
