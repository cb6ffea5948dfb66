import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError, notFound } from "../util/errors.js";
import { validateName } from "./names.js";
import { VmConfig } from "./schema.js";

export class DamagedConfigError extends VmhostError {
  constructor(
    readonly file: string,
    reason: string,
  ) {
    super("damaged-config", `configuration file ${file} is damaged: ${reason}; it was left as it is`, 500);
  }
}

export type ListedVm = { ok: true; config: VmConfig } | { ok: false; name: string; file: string; error: string };

/**
 * One human-readable JSON file per VM at vms/NAME/vm.json, written atomically.
 * A file that does not parse or validate is reported by name and never replaced.
 */
export class ConfigStore {
  constructor(readonly vmsDir: string) {}

  vmDir(name: string): string {
    return join(this.vmsDir, validateName(name));
  }

  configPath(name: string): string {
    return join(this.vmDir(name), "vm.json");
  }

  async exists(name: string): Promise<boolean> {
    try {
      await readFile(this.configPath(name));
      return true;
    } catch {
      return false;
    }
  }

  async get(name: string): Promise<VmConfig> {
    const file = this.configPath(name);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") throw notFound(`VM "${name}"`);
      throw err;
    }
    return parseConfig(file, text);
  }

  async list(): Promise<ListedVm[]> {
    let names: string[];
    try {
      names = (await readdir(this.vmsDir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    names.sort();
    const out = await Promise.all(
      names.map(async (name): Promise<ListedVm | undefined> => {
        const file = join(this.vmsDir, name, "vm.json");
        let text: string;
        try {
          text = await readFile(file, "utf8");
        } catch {
          return undefined; // a directory without a config (e.g. half-removed) is not a VM
        }
        try {
          return { ok: true, config: parseConfig(file, text) };
        } catch (err) {
          return { ok: false, name, file, error: (err as Error).message };
        }
      }),
    );
    return out.filter((x): x is ListedVm => x !== undefined);
  }

  async configs(): Promise<VmConfig[]> {
    return (await this.list()).flatMap((l) => (l.ok ? [l.config] : []));
  }

  /** Creates the VM's directory; refuses when a VM of that name exists. */
  async create(config: VmConfig): Promise<void> {
    const dir = this.vmDir(config.name);
    await mkdir(this.vmsDir, { recursive: true });
    try {
      await mkdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") {
        if (await this.exists(config.name)) {
          throw new VmhostError("exists", `a VM named "${config.name}" already exists`, 409);
        }
      } else throw err;
    }
    await this.save(config);
  }

  async save(config: VmConfig): Promise<void> {
    const checked = VmConfig.parse(config);
    await writeFileAtomic(this.configPath(checked.name), JSON.stringify(checked, null, 2) + "\n", 0o600);
  }

  async removeDir(name: string): Promise<void> {
    await rm(this.vmDir(name), { recursive: true, force: true });
  }
}

export function parseConfig(file: string, text: string): VmConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new DamagedConfigError(file, `not valid JSON (${(err as Error).message})`);
  }
  const parsed = VmConfig.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? issue.path.join(".") || "(top)" : "(top)";
    throw new DamagedConfigError(file, `${where}: ${issue?.message ?? "invalid"}`);
  }
  return parsed.data;
}
