import { VmhostError } from "../util/errors.js";

/**
 * Errors of the cluster layer. Each one is a {@link VmhostError}: `code` is stable for scripts,
 * `status` is what the API answers with, and the message names the problem and what to do.
 */

/**
 * A revision-checked change lost a race: the registry entry changed (or appeared, or vanished)
 * since the caller read it. `expected` is the mod_revision the caller read ("0" = "must not
 * exist"); `actual` is the entry's revision now (undefined when it no longer exists).
 * Revisions are etcd mod_revisions as decimal strings (etcd's int64).
 */
export class RevisionConflictError extends VmhostError {
  constructor(
    readonly key: string,
    readonly expected: string,
    readonly actual: string | undefined,
  ) {
    super(
      "cluster-revision-conflict",
      actual === undefined
        ? `${key} changed: it no longer exists (you read revision ${expected}); read it again and retry`
        : expected === "0"
          ? `${key} already exists (revision ${actual}); read it and update it instead`
          : `${key} changed since you read it (you read revision ${expected}, it is now ${actual}); read it again and retry`,
      409,
    );
    this.name = "RevisionConflictError";
  }
}

/** What this host saw of the etcd members when it decided there is no quorum. */
export interface QuorumView {
  /** Members in etcd's member list (or the endpoints configured when the list is unreadable). */
  members: number;
  /** Members that answered a status call. */
  reachable: number;
  /** Whether any reachable member knows a raft leader. */
  hasLeader: boolean;
}

/**
 * The cluster has no quorum as seen from this host: fewer than a majority of the etcd members
 * answer, or those that answer have no raft leader. etcd then cannot commit anything, so every
 * change is refused; running VMs are not touched by the refusal itself (see index.ts for the
 * self-fencing rule that applies when this lasts longer than the lease TTL).
 *
 * One window is inherent to any consensus system: in the first election timeout after losing
 * its followers, a leader may still accept a proposal into its log; the caller gets this error
 * (the request timed out) and the change then commits if quorum returns with that log. Every
 * registry change is revision-checked, so after quorum returns the caller re-reads and sees
 * from the revision whether it happened. Once no member has a leader, nothing is accepted.
 */
export class QuorumLostError extends VmhostError {
  constructor(
    readonly view: QuorumView,
    readonly operation: string,
  ) {
    const needed = Math.floor(view.members / 2) + 1;
    super(
      "cluster-no-quorum",
      `cannot ${operation}: the cluster has no quorum (${view.reachable} of ${view.members} etcd members answer` +
        `${view.reachable > 0 && !view.hasLeader ? ", none has a leader" : ""}; ${needed} are needed). ` +
        `Changes are refused until a majority of members is back. Running VMs are not stopped by this; ` +
        `a host that cannot renew its lease for a whole TTL turns its clustered VMs off (self-fencing) and starts ` +
        `them again once quorum is back. Bring the missing hosts (or their etcd members) back, then retry; ` +
        `'vmhost cluster status' shows which members answer.`,
      503,
    );
    this.name = "QuorumLostError";
  }
}

/** No etcd member could be reached at all from this host (none of the endpoints answered). */
export class ClusterUnreachableError extends VmhostError {
  constructor(
    readonly endpoints: readonly string[],
    readonly operation: string,
    override readonly cause?: unknown,
  ) {
    super(
      "cluster-unreachable",
      `cannot ${operation}: no etcd member answers at ${endpoints.join(", ")}` +
        `${cause instanceof Error ? ` (${cause.message})` : ""}. ` +
        `Check that this host's etcd member runs ('vmhost cluster status') and that the network to the others is up.`,
      503,
    );
    this.name = "ClusterUnreachableError";
  }
}

/**
 * etcd did not answer in time although a majority of members is up and has a leader (an
 * overloaded member, a leader election in progress). Transient: retry.
 */
export class ClusterTimeoutError extends VmhostError {
  constructor(
    readonly operation: string,
    override readonly cause?: unknown,
  ) {
    super(
      "cluster-timeout",
      `cannot ${operation}: etcd did not answer in time${cause instanceof Error ? ` (${cause.message})` : ""}, ` +
        `although a majority of its members is up with a leader; retry in a moment`,
      503,
    );
    this.name = "ClusterTimeoutError";
  }
}

/** A cluster lock was still held by someone else when the caller's deadline passed. */
export class LockTimeoutError extends VmhostError {
  constructor(
    readonly lock: string,
    readonly waitedMs: number,
    readonly attempts: number,
  ) {
    super(
      "cluster-lock-timeout",
      `the cluster lock '${lock}' is still held by another operation after ${waitedMs} ms (${attempts} attempts); ` +
        `wait for it to finish and retry (a holder that died releases it when its lease runs out)`,
      409,
    );
    this.name = "LockTimeoutError";
  }
}

/** The local etcd member could not be started, joined, or did not become ready. `logTail` is its last output. */
export class EtcdMemberError extends VmhostError {
  constructor(
    message: string,
    readonly logTail = "",
  ) {
    super("cluster-member-failed", logTail ? `${message}\n--- etcd log (last lines) ---\n${logTail}` : message, 500);
    this.name = "EtcdMemberError";
  }
}

/** Input to the cluster layer that breaks a rule (bad host name, bad URL, a second member with the same name ...). */
export class ClusterConfigError extends VmhostError {
  constructor(
    readonly rule: string,
    message: string,
  ) {
    super("cluster-invalid", `${message} (rule ${rule})`, 400);
    this.name = "ClusterConfigError";
  }
}
