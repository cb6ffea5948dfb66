import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError, notFound } from "../util/errors.js";
import { NAMES } from "./names.js";
import { SwitchConfig, SwitchName } from "./schema.js";

export type ListedSwitch = { ok: true; config: SwitchConfig } | { ok: false; name: string; file: string; error: string };

/**
 * Switch definitions at $VMHOST_HOME/switches/NAME.json, written atomically; a file that does
 * not parse is reported by name and left alone. Each switch's runtime files (dnsmasq's pid,
 * log and leases) sit in switches/<id>/ beside it.
 */
export class SwitchStore {
  constructor(readonly dir: string) {}

  private file(name: string): string {
    const r = SwitchName.safeParse(name);
    if (!r.success) throw new VmhostError("bad-name", `switch name ${JSON.stringify(name)} is invalid: ${r.error.issues[0]?.message ?? "invalid"}`);
    return join(this.dir, `${name}.json`);
  }

  stateDir(sw: SwitchConfig): string {
    return join(this.dir, NAMES.stateDir(sw.id));
  }

  async list(): Promise<ListedSwitch[]> {
    let files: string[];
    try {
      files = (await readdir(this.dir)).filter((f) => f.endsWith(".json") && !f.startsWith("."));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    files.sort();
    return Promise.all(
      files.map(async (f): Promise<ListedSwitch> => {
        const file = join(this.dir, f);
        const name = f.slice(0, -".json".length);
        try {
          return { ok: true, config: parse(file, await readFile(file, "utf8")) };
        } catch (err) {
          return { ok: false, name, file, error: (err as Error).message };
        }
      }),
    );
  }

  async configs(): Promise<SwitchConfig[]> {
    return (await this.list()).flatMap((l) => (l.ok ? [l.config] : []));
  }

  /** Switch names are case-insensitive, as on Hyper-V. */
  async find(name: string): Promise<SwitchConfig | undefined> {
    const listed = await this.list();
    const hit = listed.find((l) => (l.ok ? l.config.name : l.name).toLowerCase() === name.toLowerCase());
    if (!hit) return undefined;
    if (!hit.ok) throw new VmhostError("damaged-config", `switch file ${hit.file} is damaged: ${hit.error}; it was left as it is`, 500);
    return hit.config;
  }

  async get(name: string): Promise<SwitchConfig> {
    const sw = await this.find(name);
    if (!sw) throw notFound(`switch "${name}"`);
    return sw;
  }

  async create(sw: SwitchConfig): Promise<void> {
    if (await this.find(sw.name)) throw new VmhostError("exists", `a switch named "${sw.name}" already exists`, 409);
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(this.file(sw.name), JSON.stringify(SwitchConfig.parse(sw), null, 2) + "\n");
  }

  async remove(sw: SwitchConfig): Promise<void> {
    await rm(this.file(sw.name), { force: true });
    await rm(this.stateDir(sw), { recursive: true, force: true });
  }
}

function parse(file: string, text: string): SwitchConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not valid JSON (${(err as Error).message})`);
  }
  const r = SwitchConfig.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new Error(`${file}: ${i ? `${i.path.join(".") || "switch"}: ${i.message}` : "invalid"}`);
  }
  return r.data;
}
