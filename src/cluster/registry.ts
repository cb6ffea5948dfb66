import type { IKeyValue, Watcher } from "etcd3";
import { z } from "zod";
import type { ClusterConnection } from "./connection.js";
import { ClusterConfigError, RevisionConflictError } from "./errors.js";
import { ROOT, validateHostName, validateVmId, vmKey, VMS } from "./keys.js";

/** Any JSON value: the VM configuration is stored as the service gives it (opaque to this layer). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
const jsonValue: z.ZodType<JsonValue> = z.lazy(() =>
  z.union([z.null(), z.boolean(), z.number(), z.string(), z.array(jsonValue), z.record(jsonValue)]),
);

/**
 * A clustered VM's state as the cluster wants it and its owner last reported it (Hyper-V's
 * states that matter for placement and failover). Running and Paused VMs are restarted
 * elsewhere when their owner dies; Off and Saved ones only change owner.
 */
export const clusteredVmStateSchema = z.enum(["Running", "Paused", "Saved", "Off"]);
export type ClusteredVmState = z.infer<typeof clusteredVmStateSchema>;

/**
 * The value at /vmhost/vms/<id>.
 * - `id`: the VM's id (vmhost's VM UUID); `name`: its name (for people).
 * - `owner`: the host that runs it / may start it. Only the owner starts a clustered VM.
 * - `state`: see {@link clusteredVmStateSchema}.
 * - `needs`: what placement checks: memory (MiB), switch names, storage names.
 * - `config`: the VM's configuration, opaque JSON (the service's own schema).
 * - `failover`: set by the coordinator when it moved the VM off a dead host (`at` is ISO 8601).
 */
export const vmRecordSchema = z.object({
  id: z.string().transform((v) => validateVmId(v)),
  name: z.string().min(1),
  owner: z.string().transform((v) => validateHostName(v)),
  state: clusteredVmStateSchema,
  needs: z.object({
    memoryMiB: z.number().int().positive(),
    switches: z.array(z.string().min(1)),
    storage: z.array(z.string().min(1)),
  }),
  config: jsonValue,
  failover: z.object({ from: z.string(), reason: z.string(), at: z.string() }).optional(),
});
export type VmRecord = z.output<typeof vmRecordSchema>;
export type VmRecordInput = z.input<typeof vmRecordSchema>;

/**
 * A registry entry as read: the record plus etcd's revisions of its key (decimal strings of
 * etcd's int64). `revision` (the key's mod_revision) is what an update must name.
 */
export type RegistryEntry = VmRecord & { revision: string; createRevision: string };

export type RegistryEvent = { type: "put"; entry: RegistryEntry } | { type: "delete"; id: string; revision: string };

/**
 * The registry of clustered VMs. Every change is an etcd transaction that compares the key's
 * mod_revision with the one the caller read (optimistic concurrency): of two concurrent
 * updates from the same revision exactly one wins and the other gets a
 * {@link RevisionConflictError} naming both revisions. Reads are linearizable unless
 * `serializable` is asked for (a member without quorum can still answer those, possibly stale).
 * Failures for lack of etcd become QuorumLostError / ClusterUnreachableError (connection.ts).
 */
export class VmRegistry {
  constructor(private readonly conn: ClusterConnection) {}

  async list(opts: { serializable?: boolean } = {}): Promise<RegistryEntry[]> {
    const res = await this.conn.guard("read the clustered VMs", () =>
      this.conn.ns.getAll().prefix(VMS).serializable(opts.serializable ?? false).exec(),
    );
    return res.kvs.map((kv) => decode(kv)).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async get(id: string, opts: { serializable?: boolean } = {}): Promise<RegistryEntry | undefined> {
    validateVmId(id);
    const res = await this.conn.guard(`read clustered VM ${id}`, () => this.conn.ns.get(vmKey(id)).serializable(opts.serializable ?? false).exec());
    const kv = res.kvs[0];
    return kv ? decode(kv) : undefined;
  }

  /** Adds a VM to the registry; a {@link RevisionConflictError} (expected "0") if the id exists. */
  async add(input: VmRecordInput): Promise<RegistryEntry> {
    const record = parseRecord(input);
    return this.write(record, "0", `add clustered VM ${record.name}`);
  }

  /**
   * Replaces the record of `id` if its revision is still `expectedRevision`. `next` is the new
   * record or a function of the current one (its id cannot change). Returns the new entry.
   */
  async update(id: string, expectedRevision: string, next: VmRecordInput | ((current: RegistryEntry) => VmRecordInput)): Promise<RegistryEntry> {
    validateVmId(id);
    let input: VmRecordInput;
    if (typeof next === "function") {
      const current = await this.get(id);
      if (!current) throw new RevisionConflictError(`${ROOT}${vmKey(id)}`, expectedRevision, undefined);
      if (current.revision !== expectedRevision) throw new RevisionConflictError(`${ROOT}${vmKey(id)}`, expectedRevision, current.revision);
      input = next(current);
    } else {
      input = next;
    }
    const record = parseRecord(input);
    if (record.id !== id) throw new ClusterConfigError("cluster-vm-id-fixed", `a clustered VM's id cannot change (${id} -> ${record.id})`);
    return this.write(record, expectedRevision, `update clustered VM ${record.name}`);
  }

  /** Removes `id` if its revision is still `expectedRevision`. */
  async remove(id: string, expectedRevision: string): Promise<void> {
    validateVmId(id);
    const key = vmKey(id);
    const res = await this.conn.guard(`remove clustered VM ${id}`, () =>
      this.conn.ns.if(key, "Mod", "==", expectedRevision).then(this.conn.ns.delete().key(key)).else(this.conn.ns.get(key)).commit(),
    );
    if (!res.succeeded) throw new RevisionConflictError(`${ROOT}${key}`, expectedRevision, actualRevision(res.responses[0]));
  }

  /**
   * Calls `onEvent` for every change from now on (or after `fromRevision`, exclusive). The
   * watcher resumes by itself after a broken connection (etcd3 keeps its position).
   */
  async watch(onEvent: (e: RegistryEvent) => void, opts: { fromRevision?: string } = {}): Promise<{ close(): Promise<void> }> {
    let b = this.conn.ns.watch().prefix(VMS);
    if (opts.fromRevision) b = b.startRevision((BigInt(opts.fromRevision) + 1n).toString());
    const w: Watcher = await this.conn.guard("watch the clustered VMs", () => b.create());
    w.on("put", (kv) => {
      try {
        onEvent({ type: "put", entry: decode(kv) });
      } catch {
        /* a damaged record is reported by list/get, which name it */
      }
    });
    // Keys come relative to the /vmhost/ namespace: "vms/<id>".
    w.on("delete", (kv) => onEvent({ type: "delete", id: kv.key.toString().slice(VMS.length), revision: kv.mod_revision }));
    return { close: () => w.cancel() };
  }

  private async write(record: VmRecord, expectedRevision: string, what: string): Promise<RegistryEntry> {
    const key = vmKey(record.id);
    const ns = this.conn.ns;
    const res = await this.conn.guard(what, () =>
      (expectedRevision === "0" ? ns.if(key, "Create", "==", 0) : ns.if(key, "Mod", "==", expectedRevision))
        .then(ns.put(key).value(JSON.stringify(record)), ns.get(key))
        .else(ns.get(key))
        .commit(),
    );
    if (!res.succeeded) throw new RevisionConflictError(`${ROOT}${key}`, expectedRevision, actualRevision(res.responses[0]));
    // The get in the same transaction reads the key as this put left it (its new revisions).
    const kv = res.responses[1]?.response_range?.kvs[0];
    if (!kv) throw new Error(`etcd answered a committed transaction on ${key} without the key`);
    return decode(kv);
  }
}

function parseRecord(input: VmRecordInput): VmRecord {
  const r = vmRecordSchema.safeParse(input);
  if (!r.success) {
    throw new ClusterConfigError("cluster-vm-record", `invalid clustered VM record: ${r.error.issues.map((i) => `${i.path.join(".") || "(record)"}: ${i.message}`).join("; ")}`);
  }
  return r.data;
}

/** Decodes a registry key's value; a damaged one is reported by key. */
export function decode(kv: IKeyValue): RegistryEntry {
  const key = ROOT + kv.key.toString(); // read through the namespace: relative to /vmhost/
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value.toString());
  } catch {
    throw new ClusterConfigError("cluster-vm-record", `${key} holds no JSON; fix or remove it with etcdctl`);
  }
  const r = vmRecordSchema.safeParse(raw);
  if (!r.success) throw new ClusterConfigError("cluster-vm-record", `${key} is damaged: ${r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return { ...r.data, revision: kv.mod_revision, createRevision: kv.create_revision };
}

function actualRevision(op: { response_range?: { kvs: IKeyValue[] } } | undefined): string | undefined {
  return op?.response_range?.kvs[0]?.mod_revision;
}
