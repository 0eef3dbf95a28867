// Owns the Cron Trigger handler: the container's cron tasks (src/cron.rs) that routes.json
// gives the edge, task by task, under the container's own single-runner lock, plus the relay
// that hands pending jobs of edge-owned kinds to the Queue.
//
// Single runner (docs/adr/0029-one-cron-runner-across-edge-and-container.md): a tick runs in
// one transaction that first takes `pg_try_advisory_xact_lock` on the container's cron key
// (src/cron.rs LOCK_KEY). Session and transaction advisory locks on one key exclude each
// other, so at most one of the container's replicas and the Worker's overlapping invocations
// runs a tick; the others skip it. A transaction-level lock is the one a transaction-mode
// pool (Hyperdrive) keeps on one server connection for as long as it is held.
//
// Tasks (the container's, statement for statement):
// - `retention.purge`: recordings past their organisation's retention (else
//   RECORDINGS_RETENTION_DAYS): their R2 objects deleted through the binding, then their rows;
//   a key outside the organisation's prefixes or a failed delete keeps the rows for the next
//   tick. Then call-derived text past the same retention.
// - `calls.stale_sweep`: calls in a non-terminal status untouched for CRON_STALE_CALL_MINUTES
//   and without a live media bridge are failed, with a `call.failed` event.
// - `jobs.dead_report`: dead jobs per kind, logged.
// - `usage.quotas`: the monthly quotas of answered calls, src/quotas.ts (ADR 0041).
// - `usage.metering`: each stored version's bytes per UTC day kept (`byte_days`, src/usage/mod.rs
//   `record_storage_days`), and the AssemblyAI streaming-seconds drift (src/usage/reconcile.rs).
// - `uploads.sweep`: multipart uploads, pending versions and staging objects a dead process
//   left, through the bucket's S3 API (src/uploads-sweep.ts, ADR 0043); without the R2 S3
//   variables the task is skipped with an `uploads_sweep_unconfigured` error line.

import { type Db, withDb } from "./db";
import type { Env } from "./env";
import { type JobEnvelope, MAX_QUEUE_DELAY_SECONDS } from "./jobs";
import { ownerOf, STAYS_WITH_THE_CONTAINER, WORK, type WorkManifest } from "./manifest";
import { enforceQuotas, type QuotasEnforced } from "./quotas";
import { s3Credentials, sweepUploads } from "./uploads-sweep";

/** src/cron.rs LOCK_KEY ("cbcron"). */
export const LOCK_KEY = "109274226388846"; // 0x6362_6372_6f6e
/** The container's cron tasks (src/strangler.rs CRON_TASKS), in the order a tick runs them. */
export const CRON_TASKS = [
  "retention.purge",
  "uploads.sweep",
  "calls.stale_sweep",
  "jobs.dead_report",
  "usage.quotas",
  "usage.metering",
] as const;
export type CronTask = (typeof CRON_TASKS)[number];
/** Tasks the edge can run (every one since ADR 0043); routes.json may give it only these. */
const EDGE_TASKS: readonly CronTask[] = CRON_TASKS;

export interface CronReport {
  ran: boolean;
  tasks: string[];
  recordings_purged: number;
  objects_deleted: number;
  text_rows_purged: number;
  uploads_aborted: number;
  pending_versions_dropped: number;
  staging_objects_deleted: number;
  stale_calls_failed: number;
  dead_jobs: Record<string, number>;
  storage_days_recorded: number;
  usage_drift_found: number;
  quotas: QuotasEnforced;
  jobs_relayed: number;
}

/** routes.json may give the edge only the tasks it implements; checked when the Worker starts. */
export function checkCron(work: WorkManifest): void {
  const wrong = [...work.cron]
    .filter(([task, owner]) => owner === "edge" && !(EDGE_TASKS as readonly string[]).includes(task))
    .map(([t]) => (STAYS_WITH_THE_CONTAINER[t] ? `${t} (${STAYS_WITH_THE_CONTAINER[t]})` : t));
  if (wrong.length > 0) throw new Error(`routes.json gives the edge cron tasks it cannot run: ${wrong.join(", ")}`);
}

checkCron(WORK);

const log = (line: Record<string, unknown>) => console.log(JSON.stringify(line));

export async function runScheduled(controller: ScheduledController, env: Env, ctx: ExecutionContext): Promise<void> {
  const report = await runCron(env, WORK, (p) => ctx.waitUntil(p));
  log({ event: "cron_tick", cron: controller.cron, scheduled_time: new Date(controller.scheduledTime).toISOString(), ...report });
}

/** Bounded integer variable as the container reads it (unset or invalid: the default). */
function bounded(raw: string | undefined, fallback: number, min: number, max: number): number {
  const n = Number((raw ?? "").trim());
  return raw !== undefined && raw.trim() !== "" && Number.isInteger(n) ? Math.min(Math.max(n, min), max) : fallback;
}

/** One tick: the relay, then the edge's tasks under the lock (none when another runner holds it). */
export async function runCron(env: Env, work: WorkManifest, waitUntil: (p: Promise<unknown>) => void): Promise<CronReport> {
  const report: CronReport = {
    ran: false,
    tasks: [],
    recordings_purged: 0,
    objects_deleted: 0,
    text_rows_purged: 0,
    uploads_aborted: 0,
    pending_versions_dropped: 0,
    staging_objects_deleted: 0,
    stale_calls_failed: 0,
    dead_jobs: {},
    storage_days_recorded: 0,
    usage_drift_found: 0,
    quotas: { warned: 0, reached: 0, announced: 0, ended: 0 },
    jobs_relayed: 0,
  };
  report.jobs_relayed = await withDb(env, waitUntil, (db) => relayPending(db, env, work));
  const tasks = CRON_TASKS.filter((t) => ownerOf(work.cron, t) === "edge");
  if (tasks.length === 0) return report;
  await withDb(env, waitUntil, async (db) => {
    await db.query("begin");
    try {
      const locked = await db.query<{ locked: boolean }>("select pg_try_advisory_xact_lock($1::bigint) as locked", [LOCK_KEY]);
      if (!locked.rows[0]?.locked) {
        await db.query("rollback");
        return;
      }
      report.ran = true;
      for (const task of tasks) {
        report.tasks.push(task);
        if (task === "retention.purge") await purgeExpired(db, env, report);
        else if (task === "uploads.sweep") await uploadsSweep(db, env, report);
        else if (task === "calls.stale_sweep") report.stale_calls_failed = await sweepStaleCalls(db, env);
        else if (task === "jobs.dead_report") report.dead_jobs = await deadJobs(db);
        else if (task === "usage.quotas") report.quotas = await enforceQuotas(db, env);
        else if (task === "usage.metering") await metering(db, env, report);
      }
      await db.query("commit");
    } catch (err) {
      await db.query("rollback").catch(() => {});
      throw err;
    }
  });
  return report;
}

/** `keys::belongs_to`: inside the organisation's prefix or its staging prefix, no path tricks. */
export function belongsTo(key: string, organisationId: string): boolean {
  const prefixes = [`orgs/${organisationId}/`, `incoming/${organisationId}/`];
  const prefix = prefixes.find((p) => key.startsWith(p));
  if (prefix === undefined) return false;
  const rest = key.slice(prefix.length);
  return rest !== "" && rest.split("/").every((part) => part !== "" && part !== "." && part !== ".." && /^[A-Za-z0-9\-_.]+$/.test(part));
}

async function purgeExpired(db: Db, env: Env, report: CronReport): Promise<void> {
  const days = bounded(env.RECORDINGS_RETENTION_DAYS, 90, 1, 3650);
  for (;;) {
    const expired = await db.query<{ id: string; organisation_id: string; objects: string[]; staging: string[] }>(
      `select r.id::text as id, r.organisation_id::text as organisation_id,
              coalesce(array_agg(v.object_key) filter (where v.object_key is not null), '{}') as objects,
              coalesce(array_agg(v.staging_key) filter (where v.staging_key is not null), '{}') as staging
       from recordings r
       join organisations o on o.id = r.organisation_id
       left join recording_versions v on v.recording_id = r.id
       where r.created_at < now() - make_interval(days => coalesce(o.recording_retention_days, $1))
       group by r.id, r.organisation_id
       order by r.created_at
       limit 200`,
      [days],
    );
    if (expired.rows.length === 0) break;
    const purged: string[] = [];
    for (const row of expired.rows) {
      let allDeleted = true;
      for (const key of [...row.objects, ...row.staging]) {
        if (!belongsTo(key, row.organisation_id)) {
          log({ event: "cron_refused_key", key, organisation_id: row.organisation_id });
          allDeleted = false;
          continue;
        }
        try {
          await env.RECORDINGS.delete(key);
          report.objects_deleted += 1;
        } catch (err) {
          log({ event: "cron_delete_failed", key, error: String(err) });
          allDeleted = false;
        }
      }
      if (allDeleted) purged.push(row.id);
    }
    if (purged.length === 0) break;
    const deleted = await db.query("delete from recordings where id = any($1::uuid[])", [purged]);
    report.recordings_purged += deleted.rowCount ?? 0;
    if (expired.rows.length < 200) break;
  }
  const expiredText = "created_at < now() - make_interval(days => coalesce(o.recording_retention_days, $1))";
  for (const table of ["transcript_turns", "transcript_gaps", "utterances"]) {
    const r = await db.query(
      `delete from ${table} t using calls c join organisations o on o.id = c.organisation_id
       where c.id = t.call_id and t.${expiredText}`,
      [days],
    );
    report.text_rows_purged += r.rowCount ?? 0;
  }
  const r = await db.query(
    `delete from translation_cache t using organisations o
     where o.id = t.organisation_id and t.${expiredText}`,
    [days],
  );
  report.text_rows_purged += r.rowCount ?? 0;
}

async function uploadsSweep(db: Db, env: Env, report: CronReport): Promise<void> {
  const creds = s3Credentials(env);
  if (Array.isArray(creds)) {
    log({ event: "uploads_sweep_unconfigured", level: "error", missing: creds });
    return;
  }
  Object.assign(report, await sweepUploads(db, creds));
}

async function sweepStaleCalls(db: Db, env: Env): Promise<number> {
  const minutes = bounded(env.CRON_STALE_CALL_MINUTES, 240, 1, 10_080);
  const reason = `stale: no terminal event within ${minutes} minutes`;
  const failed = await db.query<{ id: string; at: string }>(
    `update calls set status = 'failed', failure_reason = $2,
            ended_at = coalesce(ended_at, now()), updated_at = now()
     where status not in ('ended', 'failed')
       and updated_at < now() - make_interval(secs => $1)
       and not exists (select 1 from media_streams m
                       where m.call_id = calls.id and m.ended_at is null
                         and m.heartbeat_at > now() - interval '5 minutes')
     returning id::text as id, clock_timestamp()::text as at`,
    [minutes * 60, reason],
  );
  for (const row of failed.rows) {
    await db.query(
      `with next as (
           update calls set event_seq = event_seq + 1 where id = $1 returning event_seq
       ), inserted as (
           insert into call_events (call_id, seq, kind, data, occurred_at)
           select $1, event_seq, $2, $3, $4 from next returning seq
       )
       select seq, pg_notify($5, $1::text || ':' || seq) from inserted`,
      [row.id, "call.failed", JSON.stringify({ status: "failed", failure_reason: reason }), row.at, "callbridge_call_events"],
    );
    log({ event: "cron_stale_call_failed", call_id: row.id });
  }
  return failed.rows.length;
}

/** src/usage/mod.rs `record_storage_days` then src/usage/reconcile.rs `run`, statement for statement. */
async function metering(db: Db, env: Env, report: CronReport): Promise<void> {
  const days = await db.query(
    `insert into usage_ledger (organisation_id, call_id, vendor, unit, quantity, source_key, occurred_at, metadata)
     select r.organisation_id, r.call_id, 'r2', 'byte_days', v.size_bytes,
            'r2:byte_days:' || v.recording_id || ':' || v.version || ':' || to_char(d.day, 'YYYY-MM-DD'),
            d.day at time zone 'UTC',
            jsonb_build_object('recording_id', v.recording_id, 'version', v.version)
     from recording_versions v
     join recordings r on r.id = v.recording_id
     cross join lateral generate_series(
         greatest((coalesce(v.stored_at, v.created_at) at time zone 'UTC')::date,
                  (now() at time zone 'UTC')::date - $1::int)::timestamp,
         ((now() at time zone 'UTC')::date - 1)::timestamp, interval '1 day') as d (day)
     where v.status = 'stored' and v.size_bytes is not null
     on conflict (source_key) do nothing`,
    [7],
  );
  report.storage_days_recorded = days.rowCount ?? 0;
  const raw = Number((env.USAGE_RECONCILE_DRIFT_SECS ?? "").trim());
  const threshold = env.USAGE_RECONCILE_DRIFT_SECS?.trim() && Number.isFinite(raw) && raw >= 0 ? raw : 5;
  const drift = await db.query<{ session_id: string; call_id: string | null; measured: number; reported: number | null }>(
    `insert into usage_drift (organisation_id, call_id, vendor, session_id, ledger_seconds, reported_seconds)
     select l.organisation_id, l.call_id, 'assemblyai', l.metadata->>'session_id',
            (l.metadata->>'measured_seconds')::numeric,
            (l.metadata->>'reported_seconds')::numeric
     from usage_ledger l
     where l.vendor = 'assemblyai' and l.unit = 'streaming_seconds'
       and l.recorded_at > now() - make_interval(hours => $2)
       and l.metadata ? 'session_id' and jsonb_typeof(l.metadata->'measured_seconds') = 'number'
       and (jsonb_typeof(l.metadata->'reported_seconds') is distinct from 'number'
            or abs((l.metadata->>'reported_seconds')::float8
                   - (l.metadata->>'measured_seconds')::float8) > $1)
     on conflict (vendor, session_id) do nothing
     returning session_id, call_id::text as call_id, ledger_seconds::float8 as measured, reported_seconds::float8 as reported`,
    [threshold, 48],
  );
  for (const row of drift.rows) log({ event: "usage_drift", level: "warn", ...row, threshold_secs: threshold });
  report.usage_drift_found = drift.rows.length;
}

async function deadJobs(db: Db): Promise<Record<string, number>> {
  const rows = await db.query<{ kind: string; n: string }>("select kind, count(*) as n from jobs where status = 'dead' group by kind");
  const dead = Object.fromEntries(rows.rows.map((r) => [r.kind, Number(r.n)]));
  if (rows.rows.length > 0) log({ event: "cron_dead_jobs", dead });
  return dead;
}

/**
 * Sends pending jobs of edge-owned kinds to the Queue (ADR 0043):
 * - **scheduled ahead**: a row due later, within the Queue's 12-hour delay limit, that no one has
 *   touched since it was enqueued (`updated_at <= created_at`: the container's dial guard
 *   schedules `call.max_duration` steps this way) is sent once, with `delaySeconds` until its
 *   `run_at`, so it runs on time rather than at the next tick after it is due; sending marks it
 *   (`updated_at`). A row further ahead waits for a tick within 12 hours of it.
 * - **overdue**: a row still pending a minute after it was due — its message was lost or
 *   never sent (a failed send, a kind that moved to the edge while its rows waited) — is sent
 *   again at once, at most once per five minutes (`updated_at`).
 * Relaying twice is harmless: the consumer runs a row only while it is pending and due
 * (`withLease`), and one that arrives early is sent back with the delay left.
 */
async function relayPending(db: Db, env: Env, work: WorkManifest): Promise<number> {
  const kinds = [...work.jobs].filter(([, owner]) => owner === "edge").map(([kind]) => kind);
  if (kinds.length === 0) return 0;
  const due = await db.query<{ kind: string; payload: Record<string, unknown>; dedupe_key: string; max_attempts: number; delay: number }>(
    `with picked as (
         select id, greatest(0, least($2::int, ceil(extract(epoch from run_at - now()))::int)) as delay
         from jobs
         where status = 'pending' and kind = any($1) and handed_back_at is null and dedupe_key is not null
           and ((run_at < now() - interval '1 minute' and updated_at < now() - interval '5 minutes')
                or (run_at > now() and run_at <= now() + make_interval(secs => $2)
                    and updated_at <= created_at))
         order by run_at limit 100 for update skip locked
     )
     update jobs set updated_at = greatest(now(), jobs.created_at + interval '1 microsecond')
     from picked where jobs.id = picked.id
     returning jobs.kind, jobs.payload, jobs.dedupe_key, jobs.max_attempts, picked.delay`,
    [kinds, MAX_QUEUE_DELAY_SECONDS],
  );
  if (due.rows.length === 0) return 0;
  await env.WEBHOOKS.sendBatch(
    due.rows.map((row) => ({
      body: { kind: row.kind, payload: row.payload, dedupe_key: row.dedupe_key, max_attempts: row.max_attempts } satisfies JobEnvelope,
      contentType: "json" as const,
      ...(row.delay > 0 ? { delaySeconds: row.delay } : {}),
    })),
  );
  return due.rows.length;
}
