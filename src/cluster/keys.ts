import { ClusterConfigError } from "./errors.js";

/**
 * The etcd key layout of a vmhost cluster. Everything lives under one prefix so that a cluster
 * could share an etcd with other software and `etcdctl get --prefix /vmhost/` shows all of it.
 *
 * - `/vmhost/members/<host>`          one per live host, bound to that host's lease (membership.ts)
 * - `/vmhost/vms/<id>`                the registry of clustered VMs (registry.ts)
 * - `/vmhost/election/coordinator/…`  the coordinator election (etcd3's election layout: one key per
 *                                     candidate, named by its lease id; the oldest key wins)
 * - `/vmhost/locks/<name>`            locks for changes (locks.ts)
 */
export const ROOT = "/vmhost/";
/** Relative to {@link ROOT} (the client works in a namespace rooted there). */
export const MEMBERS = "members/";
export const VMS = "vms/";
export const LOCKS = "locks/";
/** etcd3 puts an election named N under `election/N/` of the namespace. */
export const COORDINATOR_ELECTION = "coordinator";

export const memberKey = (host: string): string => `${MEMBERS}${host}`;
export const vmKey = (id: string): string => `${VMS}${id}`;
export const lockKey = (name: string): string => `${LOCKS}${name}`;

/**
 * A host's name in the cluster. It is also its etcd member name and part of etcd keys, so it is
 * kept to DNS-label form (RFC 1123): lowercase letters, digits and '-', 1-63 characters, not
 * starting or ending with '-'.
 */
export function validateHostName(name: string): string {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(name)) {
    throw new ClusterConfigError(
      "cluster-host-name",
      `invalid cluster host name '${name}': use 1-63 lowercase letters, digits and '-' (not at either end)`,
    );
  }
  return name;
}

/** A clustered VM's id (the VM's own id, a UUID in vmhost): letters, digits, '-', '_', '.'; no '/'. */
export function validateVmId(id: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(id)) {
    throw new ClusterConfigError("cluster-vm-id", `invalid clustered VM id '${id}': use letters, digits, '.', '_' and '-' (up to 128)`);
  }
  return id;
}

/** A lock name: like a VM id, optionally with ':' separating a kind and a name ("vm:1234", "placement"). */
export function validateLockName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(name)) {
    throw new ClusterConfigError("cluster-lock-name", `invalid lock name '${name}': use letters, digits, '.', '_', ':' and '-'`);
  }
  return name;
}
