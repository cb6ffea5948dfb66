import { readdir, readFile, stat } from "node:fs/promises";
import { VmHome } from "../home/vm-home.js";
import { VmhostError, notFound } from "../util/errors.js";
import { isVmId, nameKey } from "./names.js";
import { VmConfig } from "./schema.js";
import { upgradeConfig } from "./upgrade.js";

/** A configuration file that cannot be used; it is named and left exactly as it is. */
export class DamagedConfigError extends VmhostError {
  constructor(
    readonly file: string,
    reason: string,
  ) {
    super("damaged-config", `configuration file ${file} is damaged: ${reason}; it was left as it is`, 500);
  }
}

export type ListedVm = { ok: true; config: VmConfig; home: VmHome } | { ok: false; id: string; file: string; error: string; home: VmHome };

interface CacheEntry {
  mtimeMs: number;
  size: number;
  ino: number;
  config: VmConfig;
}

/**
 * The VMs of a home: one folder per VM named by its id, `vms/<id>/vm.json` (home/vm-home.ts).
 * A VM is found by id or by name (names are unique ignoring case). A file that does not parse
 * or validate, or whose id disagrees with its folder (a folder copied by hand), is reported by
 * name and never replaced. Writing goes through a change transaction (service/changes.ts):
 * the store only reads, and serialises.
 *
 * Parsed configurations are cached by (inode, size, mtime), so listing 500 VMs costs a stat
 * per VM, not a parse.
 */
export class ConfigStore {
  private readonly cache = new Map<string, CacheEntry>();

  constructor(
    readonly vmsDir: string,
    readonly runRoot: string,
    readonly disksDir: string,
  ) {}

  /** Every path of the VM with this id. */
  home(id: string): VmHome {
    if (!isVmId(id)) throw new VmhostError("invalid-id", `${JSON.stringify(id)} is not a VM id (a GUID)`);
    return new VmHome(this.vmsDir, this.runRoot, this.disksDir, id);
  }

  /** Folders that hold a VM (named like a GUID); anything else in vms/ is not a VM. */
  async ids(): Promise<string[]> {
    try {
      return (await readdir(this.vmsDir, { withFileTypes: true }))
        .filter((d) => d.isDirectory() && isVmId(d.name))
        .map((d) => d.name)
        .sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
  }

  /** The configuration in the VM's folder; undefined when the folder holds none (half made, being removed). */
  private async load(id: string): Promise<VmConfig | undefined> {
    const home = this.home(id);
    let st;
    try {
      st = await stat(home.config);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        this.cache.delete(id);
        return undefined;
      }
      throw new DamagedConfigError(home.config, (err as Error).message);
    }
    if (!st.isFile()) throw new DamagedConfigError(home.config, "it is not a regular file");
    const hit = this.cache.get(id);
    if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size && hit.ino === st.ino) return structuredClone(hit.config);
    let text: string;
    try {
      text = await readFile(home.config, "utf8");
    } catch (err) {
      throw new DamagedConfigError(home.config, (err as Error).message);
    }
    const config = parseConfig(home.config, text);
    if (config.id !== id) throw new DamagedConfigError(home.config, `its id ${config.id} is not the id of its folder (${id}); was the folder copied by hand? Import a VM with "vmhost import" instead`);
    this.cache.set(id, { mtimeMs: st.mtimeMs, size: st.size, ino: st.ino, config: structuredClone(config) });
    return config;
  }

  async list(): Promise<ListedVm[]> {
    const out = await Promise.all(
      (await this.ids()).map(async (id): Promise<ListedVm | undefined> => {
        const home = this.home(id);
        try {
          const config = await this.load(id);
          return config ? { ok: true, config, home } : undefined;
        } catch (err) {
          return { ok: false, id, file: home.config, error: (err as Error).message, home };
        }
      }),
    );
    const listed = out.filter((x): x is ListedVm => x !== undefined);
    // Two folders claiming one name (made by hand): both are reported, neither is guessed at.
    const byName = new Map<string, number>();
    for (const l of listed) if (l.ok) byName.set(nameKey(l.config.name), (byName.get(nameKey(l.config.name)) ?? 0) + 1);
    return listed.map((l) =>
      l.ok && (byName.get(nameKey(l.config.name)) ?? 0) > 1
        ? { ok: false, id: l.config.id, file: l.home.config, error: `configuration file ${l.home.config} is damaged: another VM folder uses the name "${l.config.name}" too`, home: l.home }
        : l,
    );
  }

  async configs(): Promise<VmConfig[]> {
    return (await this.list()).flatMap((l) => (l.ok ? [l.config] : []));
  }

  /** The VM with this id; not-found or damaged errors name it. */
  async get(id: string): Promise<VmConfig> {
    const config = await this.load(id);
    if (!config) throw notFound(`VM ${id}`);
    return config;
  }

  /**
   * The VM a user means: its id, or its name ignoring case. A damaged configuration that
   * might be the one meant is reported rather than skipped.
   */
  async resolve(ref: string): Promise<VmConfig> {
    if (isVmId(ref.toLowerCase())) {
      const cfg = await this.load(ref.toLowerCase());
      if (cfg) return cfg;
    }
    const key = nameKey(ref);
    const listed = await this.list();
    const hit = listed.find((l) => l.ok && nameKey(l.config.name) === key);
    if (hit && hit.ok) return hit.config;
    const damaged = listed.filter((l) => !l.ok);
    if (damaged.length) {
      throw new VmhostError(
        "not-found",
        `VM "${ref}" not found; ${damaged.length === 1 ? "one VM configuration is" : `${damaged.length} VM configurations are`} damaged and may be it: ${damaged.map((d) => (d.ok ? "" : d.error)).join("; ")}`,
        404,
      );
    }
    throw notFound(`VM "${ref}"`);
  }

  /** Forget the cached parse of a VM (after its files changed outside a transaction). */
  invalidate(id: string): void {
    this.cache.delete(id);
  }
}

/** The text a configuration is stored as (validated first: never writes what it could not read back). */
export function serializeConfig(config: VmConfig): string {
  return JSON.stringify(VmConfig.parse(config), null, 2) + "\n";
}

/** Parses a stored configuration (upgrading older formats); errors name the file and the field. */
export function parseConfig(file: string, text: string): VmConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new DamagedConfigError(file, `not valid JSON (${(err as Error).message})`);
  }
  const parsed = VmConfig.safeParse(upgradeConfig(raw));
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? issue.path.join(".") || "(top)" : "(top)";
    throw new DamagedConfigError(file, `${where}: ${issue?.message ?? "invalid"}`);
  }
  return parsed.data;
}
