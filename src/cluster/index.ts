/**
 * # vmhost clusters on etcd
 *
 * Several vmhost hosts form a failover cluster (Hyper-V's New-Cluster / Add-ClusterNode) on an
 * existing distributed engine: etcd (Debian's etcd-server 3.4, one member per host, started and
 * supervised by vmhost) through the etcd3 npm client. This layer is a library; vmhostd calls it.
 *
 * ## Keys (all under /vmhost/, keys.ts)
 * | key | value | written by |
 * |---|---|---|
 * | `/vmhost/members/<host>` | {@link MemberInfo}: address, apiUrl, free memory (MiB), switches, storage, drained | the host, bound to its lease |
 * | `/vmhost/vms/<id>` | {@link VmRecord}: name, owner host, state, placement needs, config (opaque JSON) | owner / coordinator, revision-checked |
 * | `/vmhost/election/coordinator/<lease>` | the candidate's host name; the oldest key is the coordinator | etcd3 election |
 * | `/vmhost/locks/<name>` | (empty) bound to the holder's lease | etcd3 lock |
 *
 * ## Rules
 * 1. **Membership** (membership.ts). A host is a member while its lease (TTL default 10 s,
 *    renewed every TTL/3) is alive; the member key exists exactly that long. `leave()` revokes it.
 * 2. **Registry** (registry.ts). Every change is a transaction comparing the key's mod_revision
 *    with the one the caller read; the loser of a race gets RevisionConflictError with both
 *    revisions. Only a VM's `owner` starts it.
 * 3. **Coordinator** (coordinator.ts). Exactly one, by election (campaign lease TTL default
 *    10 s). It moves a dead host's VMs by changing their owner; each move's transaction also
 *    checks the dead host's key is still absent and the coordinator's own campaign key still
 *    exists (so a deposed coordinator cannot move anything).
 * 4. **Locks** (locks.ts): etcd3's try-once lock, retried with backoff until a deadline.
 * 5. **Placement** (placement.ts): among live, undrained hosts that have the VM's switches and
 *    storage and enough free memory, the most free memory; ties by host name.
 * 6. **Self-fencing** (selffence.ts). A host fences (the service turns its clustered VMs off)
 *    when no renewal has been acknowledged for a TTL, counted from the renewal's *send* time,
 *    or at once when etcd says its lease is gone.
 * 7. **Failover timing** (failover.ts). etcd deletes the member key no earlier than TTL after the
 *    host's last successful renewal, which is exactly when the host fenced at the latest. The
 *    coordinator moves the host's VMs only `fencingMarginMs` (default 5 s) after it saw the key
 *    gone, so the host had that long to finish fencing. The key's deletion is etcd's record of
 *    the last renewal; no wall clocks of different hosts are compared (they may disagree).
 *    The margin must cover the fence callback's duration and timer lateness.
 * 8. **Rejoin** (failover.ts planRejoin). A host that is back reads the registry after its key
 *    is back; local copies of VMs owned elsewhere are turned off and never started; VMs it
 *    still owns are kept/resumed/started. Ownership in the registry decides, nothing local.
 * 9. **Quorum loss.** Changes are refused with QuorumLostError ("cluster-no-quorum": how many
 *    members answer, that none has a leader, how many are needed); linearizable reads fail the
 *    same way; status falls back to serializable reads marked `stale`. The refusal itself stops
 *    nothing. But a host that cannot renew its lease for a whole TTL fences, *also* when the
 *    reason is quorum loss: from inside, "the cluster lost quorum" and "I am the minority of a
 *    partition and the majority will restart my VMs after TTL + margin" look the same, and
 *    only fencing in both cases keeps a VM from running twice. This is Proxmox HA's rule: the
 *    LRM holds a per-node lock in the cluster file system and feeds the watchdog only while it
 *    holds it; "if the node loses quorum … the watchdog is no longer updated" and the node is
 *    reset after 60 s, and the CRM recovers the node's services only once it can take that
 *    lock (proxmox/pve-ha-manager README "Self fencing"; pve-docs ha-manager.adoc "Cluster
 *    Resource Manager"). Ours is narrower: only *clustered* VMs are turned off, never the host,
 *    never unclustered VMs, and only after a TTL (a shorter quorum loss fences nothing).
 *    When quorum returns, etcd's new leader extends every lease by a full TTL (etcd
 *    lease/lessor.go Promote), so no key expired during the outage and nobody failed over: each
 *    host renews its *same* lease ("recovered", leaseSurvived) and restarts the VMs it still
 *    owns. Measured here: a 3 s lease outlived a quorum loss longer than its TTL (cluster-quorum test).
 *    A longer TTL trades failover speed for riding out longer outages.
 *    One window is inherent: a leader that has not yet noticed (one election timeout) that it
 *    lost its followers may accept a change that then times out for the caller and commits
 *    when quorum returns; revision checks make that visible on the next read.
 *
 * ## Known limits
 * - Fencing needs vmhostd alive: if vmhostd is killed or frozen while its QEMUs run, nobody turns
 *   them off, yet its lease runs out and the coordinator restarts them elsewhere. Proxmox closes
 *   this hole with a watchdog (watchdog-mux over /dev/watchdog, softdog fallback) that resets
 *   the node when its daemon stops feeding it; vmhost needs an equivalent before failover is
 *   enabled in production (see the report that came with this layer).
 * - TTL and fencing margin must be the same on every host (they are options today).
 *
 * ## What the service calls
 * Formation: {@link createCluster}, {@link joinCluster}, {@link leaveCluster} (one {@link EtcdMember}
 * per host; {@link EtcdMember.adopt} after a vmhostd restart). At service start, with the
 * cluster joined: {@link ClusterConnection.open}, {@link HostMembership.join} (with `onFence` and
 * `resumeLeaseId`), {@link Coordinator.start}, and a {@link VmRegistry}; then
 * {@link planRejoin} on every 'recovered' event and at start; {@link placeVm} for new VMs;
 * {@link withLock} around changes; {@link clusterStatus} for `vmhost cluster status --json`.
 */
export { ClusterConnection, isUnavailability, memberClient, memberStatus, type ConnectionOptions, type MemberStatus } from "./connection.js";
export { Coordinator, currentCoordinator, observeCoordinator, type CoordinatorOptions, type UnplaceableEvent } from "./coordinator.js";
export {
  ClusterConfigError,
  ClusterTimeoutError,
  ClusterUnreachableError,
  EtcdMemberError,
  LockTimeoutError,
  QuorumLostError,
  RevisionConflictError,
  type QuorumView,
} from "./errors.js";
export {
  FailoverTracker,
  planFailover,
  planRejoin,
  RESTART_STATES,
  type FailoverDue,
  type FailoverMove,
  type FailoverPlan,
  type LocalCopy,
  type RejoinAction,
} from "./failover.js";
export {
  clientUrlOf,
  createCluster,
  joinCluster,
  leaveCluster,
  NO_QUORUM_TOLERANCE_WARNING,
  peerUrlOf,
  type FormationResult,
  type LocalMemberOptions,
} from "./formation.js";
export { COORDINATOR_ELECTION, memberKey, ROOT, validateHostName, validateLockName, validateVmId, vmKey } from "./keys.js";
export { acquireLock, withLock, type HeldLock, type LockOptions } from "./locks.js";
export { ETCD_BINARY, EtcdMember, etcdArgv, memberSpecSchema, type EtcdMemberSpec } from "./member.js";
export {
  HostMembership,
  listMembers,
  memberInfoSchema,
  toCandidates,
  type MemberInfo,
  type MemberInfoInput,
  type MemberView,
  type MembershipOptions,
} from "./membership.js";
export { placeMany, placeVm, type PlacementCandidate, type PlacementNeeds, type PlacementResult, type Rejection, type RejectionReason } from "./placement.js";
export {
  clusteredVmStateSchema,
  VmRegistry,
  vmRecordSchema,
  type ClusteredVmState,
  type JsonValue,
  type RegistryEntry,
  type RegistryEvent,
  type VmRecord,
  type VmRecordInput,
} from "./registry.js";
export { SelfFence, type FenceAction, type RecoveredAction, type SelfFenceAction, type SelfFenceState } from "./selffence.js";
export { clusterStatus, type ClusterStatus, type HostStatus, type VmStatus } from "./status.js";
