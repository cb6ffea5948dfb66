import type { Readable } from "node:stream";
import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { VmhostClient } from "../../../packages/sdk/src/index.js";
import { enroll, httpsTransport } from "../../../packages/sdk/src/node.js";
import { writeFileAtomic } from "../../util/atomic.js";
import { VmhostError, notFound } from "../../util/errors.js";
import type { CompareReply, IncomingStatus, MigrationPeer, PrepareRequest, StartReply } from "../../api/migration.js";

/**
 * Other vmhost hosts this service talks to (Move-VM's destinations, cluster members): each
 * added once with a trust token the other host made (`vmhost trust add NAME` there), then
 * reached over HTTPS with this service's own client certificate, the other host's server
 * certificate pinned. Kept in `host/peers/<name>.json` (0600: it holds the client key).
 */
const PeerFile = z
  .object({
    name: z.string(),
    url: z.string().url(),
    serverCertificate: z.string(),
    fingerprint: z.string(),
    clientKey: z.string(),
    clientCert: z.string(),
    role: z.string(),
    addedAt: z.string(),
  })
  .strict();
type PeerFile = z.infer<typeof PeerFile>;

export interface PeerView {
  name: string;
  url: string;
  fingerprint: string;
  role: string;
  addedAt: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export class HostPeers {
  constructor(
    private readonly dir: string,
    /** This host's name, as the peers will see its client certificate. */
    private readonly self: () => string,
  ) {}

  private file(name: string): string {
    if (!NAME_RE.test(name)) throw new VmhostError("bad-request", `peer name ${JSON.stringify(name)} is invalid: letters, digits, . _ - (up to 63)`);
    return join(this.dir, `${name}.json`);
  }

  /** Enrolls with another host (its trust token) and keeps what is needed to reach it. */
  async add(name: string, url: string, token: string): Promise<PeerView> {
    const file = this.file(name);
    const e = await enroll(url, token, `vmhost host ${this.self()}`);
    const p: PeerFile = { name, url, serverCertificate: e.serverCertificate, fingerprint: e.fingerprint, clientKey: e.clientKey, clientCert: e.clientCert, role: e.role, addedAt: new Date().toISOString() };
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(file, JSON.stringify(p, null, 2) + "\n", 0o600);
    return view(p);
  }

  private async read(name: string): Promise<PeerFile> {
    let text: string;
    try {
      text = await readFile(this.file(name), "utf8");
    } catch {
      throw notFound(`peer host "${name}" (add it with vmhost peer add)`);
    }
    const r = PeerFile.safeParse(JSON.parse(text));
    if (!r.success) throw new VmhostError("damaged", `${this.file(name)} is damaged: ${r.error.issues[0]?.message}`, 500);
    return r.data;
  }

  async list(): Promise<PeerView[]> {
    const out: PeerView[] = [];
    for (const f of (await readdir(this.dir).catch(() => [] as string[])).sort()) {
      if (!f.endsWith(".json")) continue;
      const p = await this.read(f.slice(0, -5)).catch(() => undefined);
      if (p) out.push(view(p));
    }
    return out;
  }

  async remove(name: string): Promise<void> {
    await this.read(name);
    await rm(this.file(name), { force: true });
  }

  /** An API client of the peer (close it after use). */
  async client(name: string): Promise<{ client: VmhostClient; url: string }> {
    const p = await this.read(name);
    return { client: new VmhostClient(httpsTransport({ url: p.url, serverCertificate: p.serverCertificate, clientKey: p.clientKey, clientCert: p.clientCert })), url: p.url };
  }

  /** The peer as a live migration's destination (its host-to-host API). */
  async migrationPeer(name: string): Promise<MigrationPeer & { close(): void; address: string }> {
    const { client, url } = await this.client(name);
    const c = client;
    return {
      name,
      address: new URL(url).hostname.replace(/^\[|\]$/g, ""),
      close: () => c.close(),
      compare: (req: PrepareRequest) => c.call("migrations.compare", req) as Promise<CompareReply>,
      prepare: async (req: PrepareRequest) => {
        await c.call("migrations.prepare", req);
      },
      upload: async (id: string, rel: string, data: NodeJS.ReadableStream) => {
        await c.upload("migrations.upload", { id, rel }, data as Readable);
      },
      start: (id: string) => c.call("migrations.start", { id }) as Promise<StartReply>,
      finish: (id: string) => c.call("migrations.finish", { id }) as Promise<IncomingStatus>,
      abort: async (id: string) => {
        await c.call("migrations.abort", { id });
      },
      status: (id: string) => c.call("migrations.status", { id }) as Promise<IncomingStatus>,
    };
  }
}

function view(p: PeerFile): PeerView {
  return { name: p.name, url: p.url, fingerprint: p.fingerprint, role: p.role, addedAt: p.addedAt };
}
