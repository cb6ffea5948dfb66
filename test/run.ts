/**
 * The whole suite: build the appliance once up front (boot tests share it), then run unit and
 * integration tests with node's own runner. Boot tests are slow under TCG, so concurrency is
 * bounded to the two cores this kind of machine has; each test sets its own explicit timeout.
 */
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureAppliance } from "../src/images/appliance/index.js";

const here = dirname(fileURLToPath(import.meta.url));

async function main(): Promise<number> {
  const t0 = Date.now();
  const app = await ensureAppliance({ log: (l) => console.log(`appliance: ${l}`) });
  console.log(`appliance ${app.manifest.id} ready in ${((Date.now() - t0) / 1000).toFixed(1)} s (${app.dir})`);
  const dirs = (process.argv.slice(2).length ? process.argv.slice(2) : ["unit", "integration"]).map((d) => join(here, d));
  const args = ["--test", `--test-concurrency=${process.env["VMHOST_TEST_CONCURRENCY"] ?? 2}`, ...dirs];
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: "inherit" });
    child.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

process.exitCode = await main();
