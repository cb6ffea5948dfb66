import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { memberClient } from "./connection.js";
import { ClusterConfigError, ClusterUnreachableError, EtcdMemberError } from "./errors.js";
import { validateHostName } from "./keys.js";
import { EtcdMember } from "./member.js";

/**
 * Forming a cluster: `vmhost cluster create|join|leave` (New-Cluster, Add-ClusterNode,
 * Remove-ClusterNode). Each host runs one etcd member; these functions start it and change
 * etcd's membership through the members' client API (etcd's runtime reconfiguration,
 * etcd.io/docs/v3.4/op-guide/runtime-configuration).
 */

/** Where this host's member lives and listens. Ports default to etcd's own (2379 client, 2380 peer). */
export interface LocalMemberOptions {
  /** The host's cluster name (DNS label; also its etcd member name). */
  name: string;
  /** The address other hosts reach this one at (an IPv4 address or a host name). */
  address: string;
  clientPort?: number;
  peerPort?: number;
  /** The member's directory (data/, etcd.log, member.json), e.g. $VMHOST_HOME/cluster/etcd. */
  dir: string;
  /** Argv prefix etcd runs under (tests run members inside network namespaces). */
  launcher?: string[];
  /** How long to wait for the member to be ready (default 30 s). */
  readyTimeoutMs?: number;
  heartbeatMs?: number;
  electionTimeoutMs?: number;
}

export interface FormationResult {
  member: EtcdMember;
  /** The member id etcd gave this member (hex). */
  memberId: string;
  /** Things the user must be told (for example that one member has no quorum tolerance). */
  warnings: string[];
}

/** Said whenever a cluster has fewer than three voting members. */
export const NO_QUORUM_TOLERANCE_WARNING =
  "this cluster has fewer than 3 members, so it has no quorum tolerance: if one member is lost, changes stop " +
  "and hosts fence their clustered VMs after the lease TTL. Fine for a lab; join at least 3 hosts for failover.";

export const clientUrlOf = (o: LocalMemberOptions): string => `http://${hostPort(o.address, o.clientPort ?? 2379)}`;
export const peerUrlOf = (o: LocalMemberOptions): string => `http://${hostPort(o.address, o.peerPort ?? 2380)}`;

function hostPort(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/**
 * `vmhost cluster create`: a new cluster whose only member is this host. The cluster token is
 * random, so two clusters created on one network never merge. Allowed for a lab; the result
 * carries {@link NO_QUORUM_TOLERANCE_WARNING}. Throws {@link EtcdMemberError} when the member
 * does not become ready (its log's last lines are in the message).
 */
export async function createCluster(o: LocalMemberOptions): Promise<FormationResult> {
  validateHostName(o.name);
  const member = await EtcdMember.start({
    name: o.name,
    dir: o.dir,
    clientUrl: clientUrlOf(o),
    peerUrl: peerUrlOf(o),
    initialCluster: [{ name: o.name, peerUrl: peerUrlOf(o) }],
    initialClusterState: "new",
    clusterToken: `vmhost-${randomBytes(8).toString("hex")}`,
    launcher: o.launcher ?? [],
    ...(o.heartbeatMs ? { heartbeatMs: o.heartbeatMs } : {}),
    ...(o.electionTimeoutMs ? { electionTimeoutMs: o.electionTimeoutMs } : {}),
  });
  try {
    const status = await member.waitReady({ timeoutMs: o.readyTimeoutMs ?? 30_000 });
    return { member, memberId: status.id!, warnings: [NO_QUORUM_TOLERANCE_WARNING] };
  } catch (err) {
    await member.kill();
    throw err;
  }
}

/**
 * `vmhost cluster join`: adds this host to an existing cluster reached at `via` (client URLs of
 * existing members). The new member is added as a raft *learner* first, which does not count
 * towards quorum, so a join that fails half way never costs the cluster its quorum; once the
 * learner has caught up with the leader it is promoted to a voting member (etcd 3.4
 * MemberAdd isLearner / MemberPromote). A failed join removes the member it added and its data.
 *
 * etcd admits one learner at a time and refuses changes until the leader has been connected to
 * every voting member for 5 s, so concurrent or back-to-back joins are retried until the ready
 * timeout (default 60 s). Throws {@link ClusterConfigError} when a member of this name already exists,
 * {@link ClusterUnreachableError} when no `via` member answers, {@link EtcdMemberError} when the
 * member does not start or catch up.
 */
export async function joinCluster(o: LocalMemberOptions & { via: string[] }): Promise<FormationResult> {
  validateHostName(o.name);
  const deadline = Date.now() + (o.readyTimeoutMs ?? 60_000);
  const peerUrl = peerUrlOf(o);
  const admin = adminClient(o.via);
  try {
    const list = await admin.call("read the member list", (c) => c.cluster.memberList({}));
    if (list.members.some((m) => m.name === o.name)) {
      throw new ClusterConfigError("cluster-member-unique", `a member named '${o.name}' is already in the cluster; run 'vmhost cluster leave' on it first or pick another name`);
    }
    // A member with our peer URL but no name was added by a join that never started: reuse it.
    let added = list.members.find((m) => m.name === "" && m.peerURLs.includes(peerUrl));
    let members = list.members;
    while (!added) {
      try {
        const res = await admin.call("add the member", (c) => c.cluster.memberAdd({ peerURLs: [peerUrl], isLearner: true }));
        added = res.member;
        members = res.members;
      } catch (err) {
        // "too many learner members in cluster": another join is in progress; take turns.
        // "unhealthy cluster": etcd's strict reconfiguration check wants the leader connected to
        // every voting member for 5 s (etcdserver HealthInterval) first, e.g. right after a join.
        if (!(err instanceof Error) || !/too many learner|unhealthy cluster/i.test(err.message) || Date.now() > deadline) throw err;
        await sleep(250);
      }
    }
    const id = added.ID;
    const initialCluster = members.map((m) => ({ name: m.ID === id ? o.name : m.name, peerUrl: m.peerURLs[0]! }));
    let member: EtcdMember | undefined;
    try {
      member = await EtcdMember.start({
        name: o.name,
        dir: o.dir,
        clientUrl: clientUrlOf(o),
        peerUrl,
        initialCluster,
        initialClusterState: "existing",
        clusterToken: "vmhost-join", // only read with --initial-cluster-state=new
        launcher: o.launcher ?? [],
        ...(o.heartbeatMs ? { heartbeatMs: o.heartbeatMs } : {}),
        ...(o.electionTimeoutMs ? { electionTimeoutMs: o.electionTimeoutMs } : {}),
      });
      await member.waitReady({ timeoutMs: Math.max(1000, deadline - Date.now()) });
      await promoteWhenCaughtUp(admin, id, deadline);
      const voters = members.filter((m) => !m.isLearner).length + 1;
      return { member, memberId: BigInt(id).toString(16), warnings: voters < 3 ? [NO_QUORUM_TOLERANCE_WARNING] : [] };
    } catch (err) {
      await member?.kill();
      await admin.call("remove the half-joined member", (c) => c.cluster.memberRemove({ ID: id })).catch(() => undefined);
      await rm(join(o.dir, "data"), { recursive: true, force: true });
      throw err;
    }
  } finally {
    admin.close();
  }
}

/**
 * `vmhost cluster leave`: removes this host's member from the cluster (through `via`, which may
 * include this host's own client URL), then stops it and deletes its data: a removed member must
 * never start again with its old data. The last member cannot leave this way (there would be no
 * cluster left to leave); stop it and delete its directory to dissolve the cluster. Like joins,
 * removals wait (up to `timeoutMs`, default 30 s) while etcd's reconfiguration check says the
 * cluster is not yet healthy. The service must first move this host's clustered VMs away and
 * end its membership lease.
 */
export async function leaveCluster(o: { name: string; dir: string; via: string[]; timeoutMs?: number }): Promise<{ warnings: string[] }> {
  const admin = adminClient(o.via);
  try {
    const list = await admin.call("read the member list", (c) => c.cluster.memberList({}));
    const me = list.members.find((m) => m.name === o.name);
    if (!me) throw new ClusterConfigError("cluster-member-known", `'${o.name}' is not a member of this cluster`);
    const voters = list.members.filter((m) => !m.isLearner);
    if (voters.length === 1 && !me.isLearner) {
      throw new ClusterConfigError("cluster-last-member", `'${o.name}' is the cluster's last member; there is nothing to leave (stop it and delete ${o.dir} to dissolve the cluster)`);
    }
    await whileBusy(Date.now() + (o.timeoutMs ?? 30_000), () => admin.call("remove the member", (c) => c.cluster.memberRemove({ ID: me.ID })));
    const member = await EtcdMember.adopt(o.dir);
    await member?.stop();
    await rm(join(o.dir, "data"), { recursive: true, force: true });
    return { warnings: voters.length - 1 < 3 ? [NO_QUORUM_TOLERANCE_WARNING] : [] };
  } finally {
    admin.close();
  }
}

/**
 * Runs a membership change, retrying while etcd's strict reconfiguration check refuses it
 * ("unhealthy cluster": the leader has not yet been connected to every voting member for 5 s,
 * etcdserver HealthInterval) until `deadline`.
 */
async function whileBusy<T>(deadline: number, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof Error) || !/unhealthy cluster/i.test(err.message) || Date.now() > deadline) throw err;
      await sleep(250);
    }
  }
}

/** etcd refuses to promote a learner that is behind the leader; retry until it has caught up. */
async function promoteWhenCaughtUp(admin: AdminClient, id: string, deadline: number): Promise<void> {
  for (;;) {
    try {
      await admin.call("promote the member", (c) => c.cluster.memberPromote({ ID: id }));
      return;
    } catch (err) {
      const behind = err instanceof Error && /not in sync|can only promote a learner|unhealthy cluster/i.test(err.message);
      if (!behind || Date.now() > deadline) {
        throw new EtcdMemberError(`the new member could not be promoted to a voting member: ${err instanceof Error ? err.message : String(err)}`);
      }
      await sleep(200);
    }
  }
}

type Client = ReturnType<typeof memberClient>;
interface AdminClient {
  call<T>(what: string, fn: (c: Client) => Promise<T>): Promise<T>;
  close(): void;
}

/** Runs admin calls against the first `via` member that answers. */
function adminClient(via: string[]): AdminClient {
  if (!via.length) throw new ClusterConfigError("cluster-join-via", "name at least one existing member's client URL (http://ADDRESS:2379)");
  const clients = via.map((u) => memberClient(u, 5000));
  return {
    async call(what, fn) {
      let lastErr: unknown;
      for (const c of clients) {
        try {
          return await fn(c);
        } catch (err) {
          lastErr = err;
          // Logical refusals (name taken, too many learners, not in sync) come from a member that
          // answered: do not ask the next one the same thing.
          if (err instanceof Error && /etcdserver:|learner/i.test(err.message)) throw err;
        }
      }
      throw new ClusterUnreachableError(via, what, lastErr);
    },
    close() {
      for (const c of clients) c.close();
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
