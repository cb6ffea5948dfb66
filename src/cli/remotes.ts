import { mkdir, readFile, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";

/**
 * Remote vmhost hosts this user trusts (`vmhost remote add`), kept in
 * `$XDG_CONFIG_HOME/vmhost` (else ~/.config/vmhost), folder 0700, files 0600:
 * remotes.json (name -> URL, pinned fingerprint, how we authenticate) and per remote
 * `remotes/NAME/{server.crt,client.key,client.crt,token}`.
 */

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  const x = env["XDG_CONFIG_HOME"];
  return join(x && x.length ? x : join(env["HOME"] || homedir(), ".config"), "vmhost");
}

const Remote = z.object({
  url: z.string(),
  fingerprint: z.string(),
  auth: z.enum(["certificate", "token"]),
  role: z.string().optional(),
  addedAt: z.string(),
});
export type Remote = z.infer<typeof Remote>;
const RemotesFile = z.object({ remotes: z.record(Remote) });

export interface RemoteCredentials extends Remote {
  name: string;
  serverCertificate: string;
  clientKey?: string;
  clientCert?: string;
  token?: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class RemoteStore {
  readonly dir: string;
  private readonly file: string;

  constructor(dir = configDir()) {
    this.dir = dir;
    this.file = join(dir, "remotes.json");
  }

  async list(): Promise<Record<string, Remote>> {
    const text = await readFile(this.file, "utf8").catch(() => "");
    if (!text) return {};
    const r = RemotesFile.safeParse(JSON.parse(text));
    if (!r.success) throw new VmhostError("damaged-file", `${this.file} is damaged; fix or remove it`);
    return r.data.remotes;
  }

  async get(name: string): Promise<RemoteCredentials> {
    const r = (await this.list())[name];
    if (!r) throw new VmhostError("no-remote", `no remote named "${name}"; add one with: vmhost remote add ${name} https://HOST:8443 --token TOKEN`, 404);
    const d = join(this.dir, "remotes", name);
    const read = (f: string) => readFile(join(d, f), "utf8").catch(() => undefined);
    const [serverCertificate, clientKey, clientCert, token] = await Promise.all([read("server.crt"), read("client.key"), read("client.crt"), read("token")]);
    if (!serverCertificate) throw new VmhostError("damaged-file", `the pinned certificate of remote "${name}" is missing (${d}/server.crt); add the remote again`);
    return { name, ...r, serverCertificate, ...(clientKey ? { clientKey } : {}), ...(clientCert ? { clientCert } : {}), ...(token ? { token: token.trim() } : {}) };
  }

  async add(name: string, c: Omit<RemoteCredentials, "name" | "addedAt">): Promise<void> {
    if (!NAME.test(name)) throw new VmhostError("usage", `"${name}" is not a remote name: letters, digits, . _ - (up to 64)`);
    const all = await this.list();
    if (all[name]) throw new VmhostError("exists", `a remote named "${name}" exists; remove it first (vmhost remote remove ${name})`, 409);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const d = join(this.dir, "remotes", name);
    await mkdir(d, { recursive: true, mode: 0o700 });
    await writeFileAtomic(join(d, "server.crt"), c.serverCertificate, 0o600);
    if (c.clientKey) await writeFileAtomic(join(d, "client.key"), c.clientKey, 0o600);
    if (c.clientCert) await writeFileAtomic(join(d, "client.crt"), c.clientCert, 0o600);
    if (c.token) await writeFileAtomic(join(d, "token"), c.token + "\n", 0o600);
    all[name] = { url: c.url, fingerprint: c.fingerprint, auth: c.auth, ...(c.role ? { role: c.role } : {}), addedAt: new Date().toISOString() };
    await writeFileAtomic(this.file, JSON.stringify({ remotes: all }, null, 2) + "\n", 0o600);
  }

  async remove(name: string): Promise<void> {
    const all = await this.list();
    if (!all[name]) throw new VmhostError("no-remote", `no remote named "${name}"`, 404);
    delete all[name];
    await writeFileAtomic(this.file, JSON.stringify({ remotes: all }, null, 2) + "\n", 0o600);
    await rm(join(this.dir, "remotes", name), { recursive: true, force: true });
  }
}
