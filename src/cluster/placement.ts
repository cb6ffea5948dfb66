/**
 * Placement: which host a clustered VM should run on. Pure functions of the members' reported
 * facts; no etcd, no clock.
 *
 * What is weighed, in this order (Hyper-V's failover clustering and Proxmox's CRS weigh similar
 * facts; Proxmox's basic scheduler counts services, we count memory because memory is what a VM
 * cannot run without):
 * 1. **Hard requirements** (a host failing any one is never chosen):
 *    - the host is alive (its membership lease is alive: its key exists in etcd);
 *    - it is not drained (Suspend-ClusterNode -Drain: takes no new VMs);
 *    - it is not excluded by the caller (e.g. the host a VM is failing over from);
 *    - it has every virtual switch the VM's adapters connect to (by name);
 *    - it sees every storage the VM's files live on (by name);
 *    - its free memory is at least the VM's memory.
 * 2. **Preference**: the most free memory (MiB, as the host last reported it).
 * 3. **Tie-break**: the host name, ascending (code-unit order), so the choice is deterministic.
 * CPU load, VM counts and affinity are not weighed (yet).
 */

/** What a VM needs from a host. `switches` and `storage` are names every host reports the same way. */
export interface PlacementNeeds {
  memoryMiB: number;
  switches: readonly string[];
  storage: readonly string[];
}

/** A host as placement sees it (from its membership record; `alive` = its lease key exists). */
export interface PlacementCandidate {
  host: string;
  alive: boolean;
  drained: boolean;
  freeMemoryMiB: number;
  switches: readonly string[];
  storage: readonly string[];
}

export type RejectionReason = "not-alive" | "excluded" | "drained" | "missing-switch" | "missing-storage" | "not-enough-memory";

/** Why a host was not chosen: the first hard requirement (in the order above) it fails. */
export interface Rejection {
  host: string;
  reason: RejectionReason;
  detail: string;
}

export interface PlacementResult {
  /** The chosen host, or undefined when no host meets the hard requirements. */
  host: string | undefined;
  /** Every host that was not eligible, with its reason (in host-name order). */
  rejected: Rejection[];
}

/** The first hard requirement `c` fails for `needs`, or undefined when it is eligible. */
export function rejectionOf(needs: PlacementNeeds, c: PlacementCandidate, exclude: ReadonlySet<string> = new Set()): Rejection | undefined {
  if (!c.alive) return { host: c.host, reason: "not-alive", detail: `${c.host}: its membership lease is not alive` };
  if (exclude.has(c.host)) return { host: c.host, reason: "excluded", detail: `${c.host}: excluded` };
  if (c.drained) return { host: c.host, reason: "drained", detail: `${c.host}: drained (takes no new VMs)` };
  const sw = needs.switches.filter((s) => !c.switches.includes(s));
  if (sw.length) return { host: c.host, reason: "missing-switch", detail: `${c.host}: has no switch ${sw.map((s) => `'${s}'`).join(", ")}` };
  const st = needs.storage.filter((s) => !c.storage.includes(s));
  if (st.length) return { host: c.host, reason: "missing-storage", detail: `${c.host}: does not see storage ${st.map((s) => `'${s}'`).join(", ")}` };
  if (c.freeMemoryMiB < needs.memoryMiB) {
    return { host: c.host, reason: "not-enough-memory", detail: `${c.host}: ${c.freeMemoryMiB} MiB free < ${needs.memoryMiB} MiB needed` };
  }
  return undefined;
}

/** Chooses a host for one VM (rules in the module docstring). */
export function placeVm(needs: PlacementNeeds, candidates: readonly PlacementCandidate[], opts: { exclude?: readonly string[] } = {}): PlacementResult {
  const exclude = new Set(opts.exclude ?? []);
  const rejected: Rejection[] = [];
  let best: PlacementCandidate | undefined;
  for (const c of [...candidates].sort(byHost)) {
    const r = rejectionOf(needs, c, exclude);
    if (r) rejected.push(r);
    else if (!best || c.freeMemoryMiB > best.freeMemoryMiB) best = c; // sorted by name: the first of equals stays
  }
  return { host: best?.host, rejected };
}

export interface PlacementRequest {
  id: string;
  needs: PlacementNeeds;
}

/**
 * Places several VMs at once (a failed host's VMs): larger VMs first (then by id), each by
 * {@link placeVm} against the hosts' free memory minus what this plan already put on them.
 * Returns the chosen host per VM id and, for VMs no host can take, the reasons.
 */
export function placeMany(
  vms: readonly PlacementRequest[],
  candidates: readonly PlacementCandidate[],
  opts: { exclude?: readonly string[] } = {},
): { assignments: Map<string, string>; unplaced: { id: string; rejected: Rejection[] }[] } {
  const pool = candidates.map((c) => ({ ...c }));
  const assignments = new Map<string, string>();
  const unplaced: { id: string; rejected: Rejection[] }[] = [];
  const order = [...vms].sort((a, b) => b.needs.memoryMiB - a.needs.memoryMiB || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const vm of order) {
    const r = placeVm(vm.needs, pool, opts);
    if (r.host === undefined) {
      unplaced.push({ id: vm.id, rejected: r.rejected });
      continue;
    }
    assignments.set(vm.id, r.host);
    const chosen = pool.find((c) => c.host === r.host)!;
    chosen.freeMemoryMiB -= vm.needs.memoryMiB;
  }
  return { assignments, unplaced };
}

function byHost(a: PlacementCandidate, b: PlacementCandidate): number {
  return a.host < b.host ? -1 : a.host > b.host ? 1 : 0;
}
