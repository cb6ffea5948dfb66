import { test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The module graph of src/ has no cycle (type-only imports included: a cycle of types is still a
 * tangle a newcomer has to untie), and each folder imports only the folders DEVELOPERS.md allows.
 */
const SRC = resolve(dirname(fileURLToPath(import.meta.url)), "../../../src");

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await files(p)));
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

async function graph(): Promise<Map<string, string[]>> {
  const g = new Map<string, string[]>();
  for (const f of await files(SRC)) {
    const text = await readFile(f, "utf8");
    const deps: string[] = [];
    for (const m of text.matchAll(/^(?:import|export)\s[^;]*?from\s+"(\.{1,2}\/[^"]+)"/gms)) {
      deps.push(resolve(dirname(f), m[1]!.replace(/\.js$/, ".ts")));
    }
    g.set(f, deps);
  }
  return g;
}

test("src/ has no import cycle", async () => {
  const g = await graph();
  const state = new Map<string, "visiting" | "done">();
  const stack: string[] = [];
  const cycles: string[] = [];
  const visit = (n: string) => {
    state.set(n, "visiting");
    stack.push(n);
    for (const d of g.get(n) ?? []) {
      if (state.get(d) === "visiting") cycles.push([...stack.slice(stack.indexOf(d)), d].map((x) => relative(SRC, x)).join(" -> "));
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(n, "done");
  };
  for (const n of g.keys()) if (!state.has(n)) visit(n);
  assert.deepEqual(cycles, []);
});

test("folders import only what DEVELOPERS.md allows (model knows nothing of QEMU, the service layer is on top)", async () => {
  const allowed: Record<string, string[]> = {
    util: [],
    types: [],
    home: ["util"],
    model: ["home", "util"],
    firmware: ["util"],
    engine: ["model", "home", "util"],
    checkpoints: ["model", "home", "images", "util"],
    api: ["model", "images", "checkpoints", "home", "util"],
    images: ["util"],
    guest: ["engine", "model", "home", "util"],
    supervisor: ["model", "engine", "home", "util"],
  };
  const g = await graph();
  const bad: string[] = [];
  for (const [f, deps] of g) {
    const top = relative(SRC, f).split("/")[0]!;
    const rule = allowed[top];
    if (!rule) continue;
    for (const d of deps) {
      const to = relative(SRC, d).split("/")[0]!;
      if (to !== top && !rule.includes(to)) bad.push(`${relative(SRC, f)} imports ${relative(SRC, d)}`);
    }
  }
  assert.deepEqual(bad, []);
});
