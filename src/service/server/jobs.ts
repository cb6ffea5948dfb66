import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Role } from "../../api/roles.js";
import type { JobView } from "../../api/views.js";
import { VmhostError, notFound } from "../../util/errors.js";
import { httpError } from "./errors.js";

/**
 * Long operations as jobs (GET /v1/jobs, /v1/jobs/{id}/follow, POST /v1/jobs/{id}/cancel).
 *
 * Adding a job kind (checkpoint apply/remove, export, migration ...):
 *
 *   export const checkpointApply = defineJob<{ vm: string; checkpoint: string }, CheckpointView>({
 *     kind: "checkpoint-apply",
 *     cancellable: false,                       // true only when stopping half-way leaves things whole
 *     run: async (ctx, input) => {
 *       ctx.progress(0, 3, "stopping");         // any unit; total 0 while unknown
 *       if (ctx.signal.aborted) ...             // cancellable jobs watch ctx.signal (or ctx.throwIfCancelled())
 *       return host.checkpoints.apply(input.vm, input.checkpoint);
 *     },
 *   });
 *
 * and start it from the route's handler (src/service/server/handlers.ts):
 *
 *   "checkpoints.apply": (c, { params, body }) => c.jobs.start(checkpointApply, { vm: params.vm, ... }, c.job(params.vm)),
 *
 * whose contract entry replies with V.JobView. The caller follows the job's progress with
 * jobs.follow (the SDK's `followJob`, the CLI's progress bar). A job's result and error are kept
 * with it; the registry keeps the last `keep` finished jobs in memory (vmhostd restarts forget them).
 */
export interface JobContext {
  readonly id: string;
  /** Aborted when a caller cancels the job (only for cancellable kinds). */
  readonly signal: AbortSignal;
  progress(done: number, total: number, phase?: string): void;
  /** Throws the cancellation error once the job was cancelled; call it between steps. */
  throwIfCancelled(): void;
}

export interface JobKind<I, R> {
  kind: string;
  cancellable: boolean;
  run(ctx: JobContext, input: I): Promise<R>;
}

export function defineJob<I, R>(k: JobKind<I, R>): JobKind<I, R> {
  return k;
}

/** Who started a job and what it concerns. */
export interface JobOwner {
  by: string;
  /** The least role that may cancel it: the role its route needed. */
  role: Role;
  vm?: string;
}

interface Entry {
  view: JobView;
  role: Role;
  abort: AbortController;
  done: Promise<void>;
}

export class JobCancelled extends VmhostError {
  constructor() {
    super("cancelled", "the job was cancelled", 409);
  }
}

/** Progress updates at most this often per job (the last one always goes out). */
const PROGRESS_EVERY_MS = 100;

export class JobRegistry extends EventEmitter<{ update: [JobView] }> {
  private readonly jobs = new Map<string, Entry>();

  constructor(private readonly keep = 100) {
    super();
    this.setMaxListeners(0);
  }

  /** Starts a job now; resolves to its view at once (the job runs on). */
  start<I, R>(kind: JobKind<I, R>, input: I, owner: JobOwner): JobView {
    const id = randomUUID();
    const abort = new AbortController();
    const view: JobView = {
      id,
      kind: kind.kind,
      ...(owner.vm ? { vm: owner.vm } : {}),
      state: "running",
      progress: { done: 0, total: 0 },
      cancellable: kind.cancellable,
      startedAt: new Date().toISOString(),
      by: owner.by,
    };
    let lastEmit = 0;
    const ctx: JobContext = {
      id,
      signal: abort.signal,
      progress: (done, total, phase) => {
        view.progress = { done, total, ...(phase ? { phase } : {}) };
        const now = Date.now();
        if (done >= total || now - lastEmit >= PROGRESS_EVERY_MS) {
          lastEmit = now;
          this.emit("update", { ...view });
        }
      },
      throwIfCancelled: () => {
        if (abort.signal.aborted) throw new JobCancelled();
      },
    };
    const entry: Entry = { view, role: owner.role, abort, done: Promise.resolve() };
    this.jobs.set(id, entry);
    entry.done = Promise.resolve()
      .then(() => kind.run(ctx, input))
      .then(
        (result) => {
          view.state = "succeeded";
          view.result = result;
        },
        (err: unknown) => {
          const e = httpError(err).body.error;
          view.state = abort.signal.aborted ? "cancelled" : "failed";
          view.error = { code: abort.signal.aborted ? "cancelled" : e.code, message: e.message };
        },
      )
      .then(() => {
        view.endedAt = new Date().toISOString();
        this.emit("update", { ...view });
        this.trim();
      });
    this.emit("update", { ...view });
    return { ...view };
  }

  list(): JobView[] {
    return [...this.jobs.values()].map((e) => ({ ...e.view }));
  }

  get(id: string): JobView {
    const e = this.jobs.get(id);
    if (!e) throw notFound(`job ${id}`);
    return { ...e.view };
  }

  /** The least role that may cancel a job. */
  roleOf(id: string): Role {
    const e = this.jobs.get(id);
    if (!e) throw notFound(`job ${id}`);
    return e.role;
  }

  /** Asks a cancellable job to stop; resolves once it has ended. */
  async cancel(id: string): Promise<JobView> {
    const e = this.jobs.get(id);
    if (!e) throw notFound(`job ${id}`);
    if (e.view.state !== "running") return { ...e.view };
    if (!e.view.cancellable) throw new VmhostError("not-cancellable", `a ${e.view.kind} job cannot be cancelled safely; wait for it to end`, 409);
    e.abort.abort();
    await e.done;
    return { ...e.view };
  }

  /** Resolves when the job has ended (for tests and for callers that wait). */
  async wait(id: string): Promise<JobView> {
    const e = this.jobs.get(id);
    if (!e) throw notFound(`job ${id}`);
    await e.done;
    return { ...e.view };
  }

  private trim(): void {
    const finished = [...this.jobs.values()].filter((e) => e.view.state !== "running");
    for (const e of finished.slice(0, Math.max(0, finished.length - this.keep))) this.jobs.delete(e.view.id);
  }
}
