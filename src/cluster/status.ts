import type { ClusterConnection, MemberStatus } from "./connection.js";
import { currentCoordinator } from "./coordinator.js";
import { listMembers, type MemberView } from "./membership.js";
import { VmRegistry, type ClusteredVmState } from "./registry.js";

/** One host in `vmhost cluster status`. */
export interface HostStatus {
  host: string;
  /** Its member key exists, i.e. its lease is alive. */
  leaseAlive: boolean;
  /** Seconds the lease has left as etcd counts them (undefined when dead or unreadable). */
  leaseTtlSeconds?: number;
  drained?: boolean;
  freeMemoryMiB?: number;
  totalMemoryMiB?: number;
  address?: string;
  apiUrl?: string;
  /** Its etcd member: whether it is in etcd's member list and answers (undefined: not known). */
  etcdMember?: { id: string; reachable: boolean; isLearner: boolean };
  /** Clustered VMs it owns. */
  vms: number;
}

export interface VmStatus {
  id: string;
  name: string;
  owner: string;
  /** The owner's lease is alive. */
  ownerAlive: boolean;
  state: ClusteredVmState;
  revision: string;
  failedOverFrom?: string;
}

/** `vmhost cluster status --json`. */
export interface ClusterStatus {
  quorum: { ok: boolean; members: number; reachable: number; hasLeader: boolean; leader?: string };
  /** true when quorum is lost and the rest was read from a member without it (possibly out of date). */
  stale: boolean;
  coordinator: string | undefined;
  hosts: HostStatus[];
  vms: VmStatus[];
  warnings: string[];
}

/**
 * The cluster as this host sees it: quorum (every endpoint's Status), hosts (the union of live
 * member keys, etcd members and VM owners), the coordinator, and each clustered VM's owner and
 * state. Without quorum the reads fall back to serializable ones from a reachable member and
 * `stale` says so; with no member reachable it throws ClusterUnreachableError.
 */
export async function clusterStatus(conn: ClusterConnection): Promise<ClusterStatus> {
  const view = await conn.quorumView();
  const ok = view.hasLeader && view.reachable >= Math.floor(view.members / 2) + 1;
  const serializable = !ok;
  const warnings: string[] = [];
  if (!ok) warnings.push(`no quorum: ${view.reachable} of ${view.members} etcd members answer${view.hasLeader ? "" : " and none has a leader"}; changes are refused and what follows may be out of date`);
  if (view.members < 3) warnings.push(`only ${view.members} etcd member(s): the cluster cannot lose any member without losing quorum`);

  const registry = new VmRegistry(conn);
  const [members, entries, coordinator, etcdMembers] = await Promise.all([
    listMembers(conn, { serializable }),
    registry.list({ serializable }),
    currentCoordinator(conn, { serializable }),
    conn.guard("read the etcd member list", () => conn.etcd.cluster.memberList({ linearizable: false })).then(
      (r) => r.members,
      () => [],
    ),
  ]);
  const ttls = ok ? await leaseTtls(conn, members) : new Map<string, number>();
  const byHost = new Map(members.map((m) => [m.host, m]));
  const statusById = new Map(view.statuses.filter((s) => s.id).map((s) => [s.id!, s] as [string, MemberStatus]));
  const names = new Set<string>([...byHost.keys(), ...etcdMembers.map((m) => m.name).filter(Boolean), ...entries.map((e) => e.owner)]);
  const leaderMember = view.statuses.find((s) => s.leader)?.leader;

  const hosts: HostStatus[] = [...names].sort().map((host) => {
    const m = byHost.get(host);
    const em = etcdMembers.find((x) => x.name === host);
    const id = em ? BigInt(em.ID).toString(16) : undefined;
    return {
      host,
      leaseAlive: !!m,
      ...(m && ttls.has(host) ? { leaseTtlSeconds: ttls.get(host)! } : {}),
      ...(m ? { drained: m.drained, freeMemoryMiB: m.freeMemoryMiB, address: m.address, apiUrl: m.apiUrl } : {}),
      ...(m?.totalMemoryMiB !== undefined ? { totalMemoryMiB: m.totalMemoryMiB } : {}),
      ...(em && id ? { etcdMember: { id, reachable: statusById.get(id)?.reachable ?? false, isLearner: em.isLearner } } : {}),
      vms: entries.filter((e) => e.owner === host).length,
    };
  });
  const leaderName = leaderMember ? etcdMembers.find((x) => BigInt(x.ID).toString(16) === leaderMember)?.name : undefined;
  return {
    quorum: { ok, members: view.members, reachable: view.reachable, hasLeader: view.hasLeader, ...(leaderName ? { leader: leaderName } : {}) },
    stale: serializable,
    coordinator,
    hosts,
    vms: entries.map((e) => ({
      id: e.id,
      name: e.name,
      owner: e.owner,
      ownerAlive: byHost.has(e.owner),
      state: e.state,
      revision: e.revision,
      ...(e.failover ? { failedOverFrom: e.failover.from } : {}),
    })),
    warnings,
  };
}

async function leaseTtls(conn: ClusterConnection, members: readonly MemberView[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  await Promise.all(
    members.map(async (m) => {
      try {
        const r = await conn.ns.leaseClient.leaseTimeToLive({ ID: BigInt(`0x${m.leaseId}`).toString() });
        if (Number(r.TTL) >= 0) out.set(m.host, Number(r.TTL));
      } catch {
        /* a lease that just expired: the key will be gone on the next read */
      }
    }),
  );
  return out;
}
