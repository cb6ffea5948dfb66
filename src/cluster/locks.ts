import { EtcdLockFailedError, type Lock } from "etcd3";
import type { ClusterConnection } from "./connection.js";
import { LockTimeoutError } from "./errors.js";
import { lockKey, validateLockName } from "./keys.js";

export interface LockOptions {
  /** TTL of the lock's lease in seconds (default 10): a holder that dies frees the lock after this. */
  ttlSeconds?: number;
  /** How long to keep trying in ms (default 30 000); then {@link LockTimeoutError}. */
  deadlineMs?: number;
  /** First wait between attempts in ms (default 50); doubles up to `maxBackoffMs` (default 1000). */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Aborts the wait (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
  /** Told each time the lock was found held, with the attempt number and the wait before the next (ms). */
  onWait?: (attempt: number, waitMs: number) => void;
}

/** A lock this process holds. `release()` is idempotent. */
export interface HeldLock {
  readonly name: string;
  /** Attempts it took (1 = free at once). */
  readonly attempts: number;
  release(): Promise<void>;
}

/**
 * Takes the cluster lock `name` (key /vmhost/locks/<name>). etcd3's lock().acquire() tries once
 * and fails with EtcdLockFailedError while someone else holds it, so this retries with
 * exponential backoff (±50% jitter, so waiters do not move in lockstep) until `deadlineMs`.
 * Etcd failures (no quorum, unreachable) end the wait at once with the clear error.
 * A holder that dies frees the lock when its lease (TTL) runs out.
 */
export async function acquireLock(conn: ClusterConnection, name: string, opts: LockOptions = {}): Promise<HeldLock> {
  validateLockName(name);
  const start = Date.now();
  const deadlineMs = opts.deadlineMs ?? 30_000;
  const maxBackoff = opts.maxBackoffMs ?? 1000;
  let backoff = opts.initialBackoffMs ?? 50;
  for (let attempt = 1; ; attempt++) {
    opts.signal?.throwIfAborted();
    const lock: Lock = conn.ns.lock(lockKey(name)).ttl(opts.ttlSeconds ?? 10);
    try {
      await conn.guard(`take the cluster lock '${name}'`, () => lock.acquire());
      let released = false;
      return {
        name,
        attempts: attempt,
        async release() {
          if (released) return;
          released = true;
          await conn.guard(`release the cluster lock '${name}'`, () => lock.release());
        },
      };
    } catch (err) {
      if (!(err instanceof EtcdLockFailedError)) throw err;
    }
    const left = start + deadlineMs - Date.now();
    if (left <= 0) throw new LockTimeoutError(name, Date.now() - start, attempt);
    const wait = Math.min(left, backoff * (0.5 + Math.random()));
    opts.onWait?.(attempt, wait);
    await sleep(wait, opts.signal);
    backoff = Math.min(maxBackoff, backoff * 2);
  }
}

/** Runs `fn` while holding the lock `name`; releases it afterwards, also when `fn` throws. */
export async function withLock<T>(conn: ClusterConnection, name: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const held = await acquireLock(conn, name, opts);
  try {
    return await fn();
  } finally {
    await held.release().catch(() => undefined); // its lease expiring frees it anyway
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
