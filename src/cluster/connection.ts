import { InterceptingCall, type Interceptor } from "@grpc/grpc-js";
import { Etcd3, GRPCUnavailableError, isRecoverableError, type IOptions, type Namespace } from "etcd3";
import { circuitBreaker, ConsecutiveBreaker, ExponentialBackoff, handleWhen, isBrokenCircuitError, noop, retry } from "cockatiel";
import { ClusterTimeoutError, ClusterUnreachableError, QuorumLostError, type QuorumView } from "./errors.js";
import { ROOT } from "./keys.js";

/** How a host reaches the cluster. */
export interface ConnectionOptions {
  /**
   * Client URLs of etcd members, e.g. ["http://10.0.0.1:2379"]. Put this host's own member
   * first; listing the others as well lets this host keep its lease while only its own member
   * is down (with only its own member listed, losing that member means self-fencing).
   */
  endpoints: string[];
  /**
   * Deadline of each unary etcd call in ms (default 3000). etcd itself gives up on a proposal
   * after about 7 s without a leader (3.4: 5 s + 2 election timeouts); a shorter deadline
   * turns quorum loss into a prompt, clear error.
   */
  requestTimeoutMs?: number;
}

/** One etcd member as this host sees it (maintenance Status of that member). */
export interface MemberStatus {
  endpoint: string;
  reachable: boolean;
  /** etcd member id (hex) when reachable. */
  id?: string;
  /** The leader's member id (hex) this member believes in, or undefined when it knows none. */
  leader?: string;
  raftTerm?: string;
  error?: string;
}

/**
 * A connection to the cluster's etcd, rooted at /vmhost/ (see keys.ts). Calls fail fast: each
 * unary call has a deadline, a failed call is retried once per further endpoint (each retry picks
 * another member), and a member that failed is skipped for a second before it is tried again.
 */
export class ClusterConnection {
  readonly etcd: Etcd3;
  /** The etcd3 namespace at /vmhost/: all keys in this layer are relative to it. */
  readonly ns: Namespace;
  readonly endpoints: readonly string[];
  readonly requestTimeoutMs: number;

  private constructor(opts: ConnectionOptions) {
    if (!opts.endpoints.length) throw new RangeError("a cluster connection needs at least one etcd endpoint");
    this.endpoints = [...opts.endpoints];
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 3000;
    const timeout = this.requestTimeoutMs;
    this.etcd = new Etcd3({
      ...transportOptions(timeout),
      hosts: this.endpoints.slice(),
      faultHandling: {
        // A member that cannot be connected to is skipped for 1 s (then tried again), so calls
        // do not keep waiting on a dead member; a failed call is retried on the next member.
        // Only transport failures count: a member without a leader answers writes with
        // "etcdserver: request timed out" / "no leader" (also gRPC UNAVAILABLE) but still serves
        // serializable reads, so it must stay in use.
        host: () => circuitBreaker(handleWhen(isConnectionFailure), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(1) }),
        global: retry(handleWhen(isRecoverableError), { maxAttempts: this.endpoints.length - 1 }),
        watchBackoff: WATCH_BACKOFF,
      },
    });
    this.ns = this.etcd.namespace(ROOT);
  }

  static open(opts: ConnectionOptions): ClusterConnection {
    return new ClusterConnection(opts);
  }

  close(): void {
    this.etcd.close();
  }

  /**
   * Runs one etcd operation; when it fails for lack of etcd (not for a logical reason) the
   * failure becomes a {@link QuorumLostError}, a {@link ClusterUnreachableError} (no member
   * answers) or a {@link ClusterTimeoutError} (quorum is there; transient), decided by asking
   * every endpoint for its status. `operation` completes "cannot …" in the message.
   */
  async guard<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw await this.explain(operation, err);
    }
  }

  /** The error to surface for a failed etcd call (the original one when etcd is not the reason). */
  async explain(operation: string, err: unknown): Promise<unknown> {
    if (!(err instanceof Error) || !isUnavailability(err)) return err;
    const view = await this.quorumView();
    if (view.reachable === 0) return new ClusterUnreachableError(this.endpoints, operation, err);
    if (!view.hasLeader || view.reachable < Math.floor(view.members / 2) + 1) return new QuorumLostError(view, operation);
    return new ClusterTimeoutError(operation, err);
  }

  /**
   * What this host can see of quorum: every configured endpoint is asked for its status (each
   * with the request deadline, all at once). `members` is the size of etcd's member list as the
   * reachable members report it (their raft configuration), else the number of endpoints.
   */
  async quorumView(): Promise<QuorumView & { statuses: MemberStatus[] }> {
    const statuses = await Promise.all(this.endpoints.map((e) => memberStatus(e, this.requestTimeoutMs)));
    let members = this.endpoints.length;
    const up = statuses.find((s) => s.reachable);
    if (up) {
      const single = memberClient(up.endpoint, this.requestTimeoutMs);
      try {
        // Not linearizable: a member without a leader still answers from its own raft state
        // (etcd 3.4 always answers MemberList locally; 3.5 needs linearizable=false for that).
        const list = await single.cluster.memberList({ linearizable: false }, { deadline: Date.now() + this.requestTimeoutMs });
        members = list.members.filter((m) => !m.isLearner).length || members;
      } catch {
        /* keep the endpoint count */
      } finally {
        single.close();
      }
    }
    return {
      members,
      reachable: statuses.filter((s) => s.reachable).length,
      hasLeader: statuses.some((s) => s.reachable && s.leader !== undefined),
      statuses,
    };
  }
}

/** A client bound to exactly one member (no retries elsewhere): for status probes and formation. */
export function memberClient(endpoint: string, timeoutMs = 3000): Etcd3 {
  return new Etcd3({ ...transportOptions(timeoutMs), hosts: [endpoint], faultHandling: { host: () => noop, global: noop, watchBackoff: WATCH_BACKOFF } });
}

/**
 * How soon a broken watch stream is opened again: etcd3's default backoff grows to 30 s, so a
 * few failed reconnects while a member had no leader left watches (the coordinator's, election
 * observers) deaf for that long after the cluster was fine again. Capped at 1 s.
 */
const WATCH_BACKOFF = new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }).next();

/**
 * Streams (watches, lease keepalives) are opened "require leader", as etcd's Go client does with
 * WithRequireLeader: etcd then refuses or ends them when its member has no leader (etcd
 * v3rpc interceptor, metadata "hasleader"), instead of leaving a watch silently stuck on a
 * member in a minority. Unary calls are not marked, so a leaderless member still serves
 * serializable reads.
 */
const requireLeaderOnStreams: Interceptor = (options, nextCall) => {
  const path = options.method_definition.path;
  const streaming = options.method_definition.requestStream || options.method_definition.responseStream;
  return new InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      if (streaming && /\/(Watch|LeaseKeepAlive)$/.test(path)) metadata.set("hasleader", "true");
      next(metadata, listener);
    },
  });
};

/**
 * gRPC settings every client here shares: unary deadlines, and HTTP/2 keepalive pings so a
 * connection to a member that vanished from the network (no RST, e.g. a cut link) is declared
 * dead in about 9 s instead of never. etcd refuses pings more often than every 5 s
 * (--grpc-keepalive-min-time), hence 6 s.
 */
function transportOptions(timeoutMs: number): Pick<IOptions, "dialTimeout" | "defaultCallOptions" | "grpcOptions"> {
  return {
    dialTimeout: timeoutMs,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs }),
    // etcd3 hands these to each grpc Client: channel options plus client options (interceptors).
    grpcOptions: {
      "grpc.keepalive_time_ms": 6000,
      "grpc.keepalive_timeout_ms": 3000,
      "grpc.keepalive_permit_without_calls": 1,
      interceptors: [requireLeaderOnStreams],
    } as IOptions["grpcOptions"],
  };
}

/** Status of the member at one client URL; never throws (an unreachable member is an answer). */
export async function memberStatus(endpoint: string, timeoutMs = 3000): Promise<MemberStatus> {
  const c = memberClient(endpoint, timeoutMs);
  try {
    const s = await c.maintenance.status({ deadline: Date.now() + timeoutMs });
    return {
      endpoint,
      reachable: true,
      id: BigInt(s.header.member_id).toString(16),
      leader: s.leader === "0" ? undefined : BigInt(s.leader).toString(16),
      raftTerm: s.raftTerm,
    };
  } catch (err) {
    return { endpoint, reachable: false, error: err instanceof Error ? err.message : String(err) };
  } finally {
    c.close();
  }
}

/** A member could not be reached at all (as opposed to a member that answered with an error). */
export function isConnectionFailure(err: Error): boolean {
  return err instanceof GRPCUnavailableError && !/etcdserver:/.test(err.message);
}

/**
 * Whether an etcd call failed because etcd could not serve it (no connection, no leader, a
 * deadline) rather than for a logical reason. etcd3 marks transport failures "recoverable";
 * etcd's own "no leader", "request timed out" and dropped-proposal errors count too.
 */
export function isUnavailability(err: Error): boolean {
  if (isRecoverableError(err) || isBrokenCircuitError(err)) return true;
  return /no leader|request timed out|proposal dropped|leader changed|timed out waiting for read index|too many requests|not capable|stopped/i.test(err.message);
}
