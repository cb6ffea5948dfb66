// Shared libraries of the host binaries copied into the initramfs (qemu-ga, efibootmgr).
import { run } from "./run.js";

/** Library paths from `ldd` output; vdso lines have no file and are skipped. */
export function parseLdd(output: string, binary = "binary"): string[] {
  const libs: string[] = [];
  for (const raw of output.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("linux-vdso") || line.startsWith("linux-gate")) continue;
    if (/not a dynamic executable|statically linked/.test(line)) continue;
    const arrow = /^(\S+)\s+=>\s+(.*)$/.exec(line);
    if (arrow) {
      const target = arrow[2]!.trim();
      if (target.startsWith("not found")) throw new Error(`${binary}: shared library ${arrow[1]} not found (ldd)`);
      const path = /^(\/\S+)/.exec(target)?.[1];
      if (path) libs.push(path);
      continue;
    }
    const direct = /^(\/\S+)\s+\(0x[0-9a-f]+\)$/.exec(line);
    if (direct) libs.push(direct[1]!);
  }
  return libs;
}

/** The union of the shared libraries (including the dynamic loader) of `binaries`, sorted. */
export async function sharedLibraries(binaries: readonly string[]): Promise<string[]> {
  const all = new Set<string>();
  for (const b of binaries) {
    const { stdout } = await run("ldd", [b], { okCodes: [0, 1] });
    for (const lib of parseLdd(stdout, b)) all.add(lib);
  }
  return [...all].sort();
}
