// Owns running jobs at the edge: the job envelope (the container's `jobs::NewJob`,
// docs/JOBS.md), the registry of edge job handlers, and what the Queue consumer does with each
// message — run it when routes.json gives its kind to the edge, leave it to the container
// otherwise, retry with the container's backoff, and keep the container's `jobs` table as the
// one ledger: the edge marks the job's row `done`, records each failed attempt on it, marks it
// `dead` when the Queue gives up (the dead-letter consumer), or hands it back to the container.
//
// The row is found by the envelope's `dedupe_key`: every kind the edge can run has one.

import { type Db, withDb } from "./db";
import type { Env } from "./env";
import { ownerOf, STAYS_WITH_THE_CONTAINER, type WorkManifest } from "./manifest";

/** The container's job envelope (`jobs::NewJob`), what a Queue message carries. */
export interface JobEnvelope {
  kind: string;
  payload: Record<string, unknown>;
  dedupe_key?: string;
  run_at?: string;
  max_attempts?: number;
}

/** A failure retrying will not fix (the container's `jobs::Permanent`): the job goes `dead`. */
export class Permanent extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Permanent";
  }
}

/**
 * The edge recognises the job but leaves this case to the container (an inbound call to
 * answer, an interpreted call's legs): thrown before any effect, like DeferToOrigin for a
 * route. The consumer sets the row's `handed_back_at`, and the container's workers claim it.
 */
export class HandBack extends Error {
  constructor(readonly reason: string) {
    super(`handed back to the container: ${reason}`);
    this.name = "HandBack";
  }
}

/** Cloudflare Queues delay a message at most 12 hours (`delaySeconds`). */
export const MAX_QUEUE_DELAY_SECONDS = 43_200;

/**
 * The row is pending but not due yet (`run_at` ahead): a message that arrived early — the
 * relay's delay rounded, clocks apart, or a row whose `run_at` a retry moved later. The
 * consumer sends it again with the delay left instead of running it early (ADR 0043).
 */
export class NotYet extends Error {
  constructor(readonly seconds: number) {
    super(`not due for ${seconds} s`);
    this.name = "NotYet";
  }
}

/** What an edge job handler gets. `db` is one connection; the handler owns its transaction. */
export interface JobContext {
  env: Env;
  db: Db;
  envelope: JobEnvelope;
  /** 1 on the first delivery. */
  attempt: number;
  /**
   * Follow-up jobs the handler's committed transaction enqueued (their rows exist). The
   * consumer sends those of edge-owned kinds to the Queue once the handler returns, so they
   * do not wait for the cron's relay; the others the container's workers claim from the table.
   */
  enqueued: JobEnvelope[];
}

/**
 * Runs one job to completion. It must be idempotent, and must commit its effects together
 * with `completeIn` (the row's `done`) in one transaction, as the container's handlers do
 * (docs/JOBS.md, "exactly-once effects"). Throws Permanent, HandBack, or anything else (retried).
 */
export type JobHandler = (ctx: JobContext) => Promise<void>;

export type JobRegistry = Readonly<Record<string, JobHandler>>;

/** The edge may own a kind only if it has a handler here; checked when the Worker starts. */
export function checkJobRegistry(work: WorkManifest, handlers: JobRegistry): void {
  const missing = [...work.jobs]
    .filter(([kind, owner]) => owner === "edge" && handlers[kind] === undefined)
    .map(([k]) => (STAYS_WITH_THE_CONTAINER[k] ? `${k} (${STAYS_WITH_THE_CONTAINER[k]})` : k));
  if (missing.length > 0) throw new Error(`routes.json gives the edge job kinds it has no handler for: ${missing.join(", ")}`);
}

/**
 * Marks the job `done` inside the handler's transaction, so the effect and the completion
 * commit together. Only a row the container has not claimed (`pending`): one it is running
 * is the container's to finish (the inbox lock makes the second run a no-op).
 */
export async function completeIn(db: Db, envelope: JobEnvelope): Promise<void> {
  await db.query(
    `update jobs set status = 'done', finished_at = now(), updated_at = now(), locked_by = 'edge',
            locked_until = null, last_error = null
     where dedupe_key = $1 and status = 'pending'`,
    [envelope.dedupe_key],
  );
}

/**
 * The edge's lease on a job row, for kinds whose effects reach outside the database (a download
 * into R2, a submission to AssemblyAI), where no inbox row can serialise two runners. The edge
 * claims the row as the container's worker does (`running`, `attempts + 1`, `locked_by`,
 * `locked_until`), extends the lease while it works, and `complete` fences the effect's
 * transaction on it exactly like the container's `Job::complete_in`: a runner whose lease was
 * taken over cannot commit. A row leased by a live runner on either side is not claimed.
 */
export class LeaseLost extends Error {
  constructor(readonly dedupeKey: string) {
    super(`lost the lease on job ${dedupeKey}`);
    this.name = "LeaseLost";
  }
}

/** The container's lease (docs/JOBS.md): 60 s, extended every 20 s while the handler runs. */
export const LEASE_SECONDS = 60;
const EXTEND_EVERY_MS = 20_000;

export interface Lease {
  lockedBy: string;
  /** Marks the row `done` inside the effect's transaction; throws LeaseLost (roll back) if not ours. */
  complete(db: Db): Promise<void>;
}

/**
 * Runs `work` holding the row's lease. Returns without running when the row is already
 * `done` or `dead`; throws (a retry) while another runner's lease is live. On a throw the
 * row goes back to `pending` for the Queue's retry (or the dead letter) with the error.
 */
export async function withLease(db: Db, envelope: JobEnvelope, work: (lease: Lease) => Promise<void>): Promise<void> {
  const dedupeKey = envelope.dedupe_key!;
  const lockedBy = `edge:${crypto.randomUUID()}`;
  const claimed = await db.query(
    `update jobs set status = 'running', attempts = attempts + 1, locked_by = $2,
            locked_until = now() + make_interval(secs => $3), updated_at = now()
     where dedupe_key = $1 and ((status = 'pending' and run_at <= now()) or (status = 'running' and locked_until < now()))
     returning id`,
    [dedupeKey, lockedBy, LEASE_SECONDS],
  );
  if (claimed.rowCount !== 1) {
    const row = (
      await db.query<{ status: string; wait: number }>(
        "select status, ceil(extract(epoch from run_at - now()))::int as wait from jobs where dedupe_key = $1",
        [dedupeKey],
      )
    ).rows[0];
    if (row === undefined) throw new Permanent(`no job row for ${dedupeKey}`);
    if (row.status === "done" || row.status === "dead") return;
    if (row.status === "pending" && row.wait > 0) throw new NotYet(row.wait);
    throw new Error(`job ${dedupeKey} is running elsewhere (its lease is live)`);
  }
  // Queries on one pg client run one after another, so an extension never interleaves with a
  // statement of the handler; inside its open transaction it commits or rolls back with it.
  const extend = setInterval(() => {
    db.query(
      `update jobs set locked_until = now() + make_interval(secs => $3), updated_at = now()
       where dedupe_key = $1 and locked_by = $2 and status = 'running'`,
      [dedupeKey, lockedBy, LEASE_SECONDS],
    ).catch(() => {});
  }, EXTEND_EVERY_MS);
  const lease: Lease = {
    lockedBy,
    async complete(tx: Db) {
      const done = await tx.query(
        `update jobs set status = 'done', finished_at = now(), updated_at = now(), locked_until = null,
                last_error = null
         where dedupe_key = $1 and locked_by = $2 and status = 'running'`,
        [dedupeKey, lockedBy],
      );
      if (done.rowCount !== 1) throw new LeaseLost(dedupeKey);
    },
  };
  try {
    await work(lease);
  } catch (err) {
    const error = err instanceof Error ? err.message : String(err);
    await db
      .query(
        `update jobs set status = 'pending', locked_by = null, locked_until = null, run_at = now(),
                last_error = $3, updated_at = now()
         where dedupe_key = $1 and locked_by = $2 and status = 'running'`,
        [dedupeKey, lockedBy, `edge: ${error}`],
      )
      .catch(() => {});
    throw err;
  } finally {
    clearInterval(extend);
  }
}

/** The container's backoff (docs/JOBS.md): 2 s × 2^(attempt−1), at most 1 h, full jitter in [½, 1]. */
export function backoffSeconds(attempt: number, random: () => number = Math.random): number {
  const base = Math.min(2 * 2 ** Math.max(0, attempt - 1), 3600);
  return Math.max(1, Math.round(base * (0.5 + random() / 2)));
}

/** Reads a message body as a job envelope; null when it is not one. */
export function readEnvelope(body: unknown): JobEnvelope | null {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return null;
  const { kind, payload, dedupe_key } = body as Record<string, unknown>;
  if (typeof kind !== "string" || kind === "") return null;
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) return null;
  if (typeof dedupe_key !== "string" || dedupe_key === "") return null;
  return body as JobEnvelope;
}

const log = (line: Record<string, unknown>) => console.log(JSON.stringify(line));

/** The consumer of callbridge-webhooks (and of its dead-letter queue, by the queue's name). */
export async function consumeJobs(
  batch: MessageBatch,
  env: Env,
  work: WorkManifest,
  handlers: JobRegistry,
  random: () => number = Math.random,
): Promise<void> {
  const deadLetter = batch.queue.endsWith("-dlq");
  // Connections are closed before the batch returns, so none outlives its invocation.
  const closing: Promise<unknown>[] = [];
  const waitUntil = (p: Promise<unknown>) => void closing.push(p);
  try {
    await consumeBatch();
  } finally {
    await Promise.allSettled(closing);
  }

  async function consumeBatch(): Promise<void> {
    for (const message of batch.messages) {
      const envelope = readEnvelope(message.body);
      const base = { queue: batch.queue, id: message.id, attempts: message.attempts };
      if (envelope === null) {
        // Retrying would not make it an envelope.
        log({ event: "queue_message_rejected", ...base, reason: "not a job envelope with kind, payload and dedupe_key" });
        message.ack();
        continue;
      }
      const job = { ...base, kind: envelope.kind, dedupe_key: envelope.dedupe_key };
      if (deadLetter) {
        await withDb(env, waitUntil, (db) => recordDead(db, envelope, `the Queue gave up after ${message.attempts} deliveries`));
        log({ event: "job_dead", ...job });
        message.ack();
        continue;
      }
      const handler = handlers[envelope.kind];
      if (ownerOf(work.jobs, envelope.kind) !== "edge" || handler === undefined) {
        // The container runs it from its own row (the inbox statement enqueued it there too).
        log({ event: "job_not_owned", ...job });
        message.ack();
        continue;
      }
      try {
        const enqueued: JobEnvelope[] = [];
        await withDb(env, waitUntil, (db) => handler({ env, db, envelope, attempt: message.attempts, enqueued }));
        log({ event: "job_done", ...job });
        message.ack();
        const edgeOwned = enqueued.filter((e) => ownerOf(work.jobs, e.kind) === "edge");
        if (edgeOwned.length > 0) {
          // Best effort: a failed send leaves the row pending, and the cron's relay sends it.
          await env.WEBHOOKS.sendBatch(edgeOwned.map((body) => ({ body, contentType: "json" as const }))).catch((err: unknown) =>
            log({ event: "job_follow_up_send_failed", ...job, error: String(err) }),
          );
        }
      } catch (err) {
        const error = err instanceof Error ? err.message : String(err);
        if (err instanceof NotYet) {
          // Not an attempt: the same envelope again, due when its row is (the Queue's limit: 12 h).
          const delaySeconds = Math.min(Math.max(err.seconds, 1), MAX_QUEUE_DELAY_SECONDS);
          await env.WEBHOOKS.send(envelope, { contentType: "json", delaySeconds });
          log({ event: "job_not_due", ...job, delay_seconds: delaySeconds });
          message.ack();
        } else if (err instanceof HandBack) {
          await withDb(env, waitUntil, (db) => handBack(db, envelope));
          log({ event: "job_handed_back", ...job, reason: err.reason });
          message.ack();
        } else if (err instanceof Permanent) {
          await withDb(env, waitUntil, (db) => recordDead(db, envelope, error));
          log({ event: "job_dead", ...job, error });
          message.ack();
        } else if (envelope.max_attempts !== undefined && message.attempts >= envelope.max_attempts) {
          // The kind's own limit (the container's `max_attempts`), before the Queue's.
          await withDb(env, waitUntil, (db) =>
            recordDead(db, envelope, `${error} (attempt ${message.attempts} of ${envelope.max_attempts})`),
          );
          log({ event: "job_dead", ...job, error });
          message.ack();
        } else {
          // Best effort: the row shows the latest failure, as for the container's retries.
          await withDb(env, waitUntil, (db) => recordFailure(db, envelope, message.attempts, error)).catch(() => {});
          const delaySeconds = backoffSeconds(message.attempts, random);
          log({ event: "job_retry", ...job, error, delay_seconds: delaySeconds });
          message.retry({ delaySeconds });
        }
      }
    }
  }
}

/** A failed attempt, on the job's row (while the container has not claimed it). */
async function recordFailure(db: Db, envelope: JobEnvelope, attempts: number, error: string): Promise<void> {
  await db.query(
    `update jobs set attempts = greatest(attempts, $2), last_error = $3, updated_at = now()
     where dedupe_key = $1 and status = 'pending'`,
    [envelope.dedupe_key, attempts, `edge: ${error}`],
  );
}

/**
 * The one dead-jobs list: the job's row becomes `dead` with the edge's error; a job with no
 * row (none was stored) gets one, so operators find it where they look for the container's.
 */
export async function recordDead(db: Db, envelope: JobEnvelope, error: string): Promise<void> {
  await db.query(
    `with marked as (
         update jobs set status = 'dead', finished_at = now(), updated_at = now(), locked_by = 'edge',
                last_error = $4
         where dedupe_key = $1
           and (status in ('pending', 'dead')
                -- an edge run that died holding its lease (the isolate was evicted mid-job)
                or (status = 'running' and locked_by like 'edge:%' and locked_until < now()))
         returning id
     ), existing as (
         select id from jobs where dedupe_key = $1
     )
     insert into jobs (kind, payload, dedupe_key, status, attempts, last_error, finished_at, locked_by)
     select $2, $3, $1, 'dead', 1, $4, now(), 'edge'
     where not exists (select 1 from marked) and not exists (select 1 from existing)
     on conflict (dedupe_key) where dedupe_key is not null do nothing`,
    [envelope.dedupe_key, envelope.kind, JSON.stringify(envelope.payload), `edge: ${error}`],
  );
}

/** Hands the job to the container: its workers claim a handed-back row whatever its kind. */
async function handBack(db: Db, envelope: JobEnvelope): Promise<void> {
  await db.query(
    `with handed as (
         update jobs set handed_back_at = now(), run_at = now(), updated_at = now()
         where dedupe_key = $1 and status = 'pending'
         returning id
     )
     select pg_notify('callbridge_jobs', '') from handed`,
    [envelope.dedupe_key],
  );
}
