// Owns the webhook inbox at the edge: the container's one statement (src/inbox.rs
// INBOX_INSERT_SQL, byte for byte; a unit test there compares the two) that reads a
// verified raw body, stores it in `webhook_inbox` and enqueues its job. PostgreSQL is the one
// parser on both sides: it rejects what is not JSON, replaces `\u0000` escapes, reads the event
// id, type and `occurred_at`, so the edge holds no JSON or timestamp rules of its own and both
// sides store identical rows (proved by the parity suite).

import type { Db } from "./db";
import type { Env } from "./env";
import type { JobEnvelope } from "./jobs";
import { ownerOf, type WorkManifest } from "./manifest";

/** src/inbox.rs INBOX_INSERT_SQL, byte for byte. $1 provider, $2 raw body, $3 received_via. */
export const INBOX_INSERT_SQL = String.raw`with parsed as (
        select read.body, read.refusal,
               (select count(*) from regexp_matches($2::text, '(?<!\\)((?:\\\\)*)\\u0000', 'g')) as nul_replaced
        from webhook_body($2::text) read
    ), event as (
        select body, nul_replaced, refusal is not null as not_json, case
            when refusal is not null then 'the body is not JSON: ' || refusal
            else case $1::text
            when 'telnyx' then case
                when (jsonb_typeof(body) = 'object' and body ? 'data') is not true then 'missing data'
                when (jsonb_typeof(body->'data'->'id') = 'string'
                      and octet_length(body->'data'->>'id') between 1 and 200) is not true then 'missing data.id'
                when (jsonb_typeof(body->'data'->'event_type') = 'string'
                      and octet_length(body->'data'->>'event_type') between 1 and 100) is not true then 'missing data.event_type'
                end
            when 'assemblyai' then case
                when (jsonb_typeof(body->'transcript_id') = 'string'
                      and octet_length(body->>'transcript_id') between 1 and 200) is not true then 'missing transcript_id'
                when (jsonb_typeof(body->'status') = 'string'
                      and octet_length(body->>'status') between 1 and 40) is not true then 'missing status'
                end
            else 'unknown provider'
            end end as rejected,
            case $1::text when 'telnyx' then body->'data'->>'id'
                else (body->>'transcript_id') || ':' || (body->>'status') end as event_id,
            case $1::text when 'telnyx' then replace(body->'data'->>'event_type', '_', '.')
                else 'transcript.' || (body->>'status') end as event_type,
            case when $1::text = 'telnyx' then body->'data'->>'occurred_at' end as occurred_text
        from parsed
    ), stamped as (
        select event.*, case
            when jsonb_typeof(body->'data'->'occurred_at') = 'string'
             and occurred_text ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-](0[0-9]|1[0-5]):[0-5][0-9])$'
             and substr(occurred_text, 1, 4) <> '0000'
             and extract(month from make_date(substr(occurred_text, 1, 4)::int, substr(occurred_text, 6, 2)::int, 1)
                                    + (substr(occurred_text, 9, 2)::int - 1)) = substr(occurred_text, 6, 2)::int
            then occurred_text::timestamptz
            end as occurred_at
        from event
    ), inserted as (
        insert into webhook_inbox (provider, event_id, event_type, occurred_at, payload, received_via)
        select $1, event_id, event_type, occurred_at, body, $3 from stamped where rejected is null
        on conflict (provider, event_id) do nothing
        returning provider, event_id
    ), enqueued as (
        insert into jobs (kind, payload, dedupe_key)
        select provider || '.event', jsonb_build_object('provider', provider, 'event_id', event_id),
               'webhook:' || provider || ':' || event_id
        from inserted
        on conflict (dedupe_key) where dedupe_key is not null do nothing
        returning id
    )
    select rejected, not_json, event_id, nul_replaced, (select count(*) from inserted) as inserted from stamped`;

/** The container's 400 for a body that is not UTF-8 (PostgreSQL only takes text). */
export const NOT_UTF8 = "the body is not JSON: it is not valid UTF-8";
/** The container's 400 for a body with a NUL byte (never JSON; PostgreSQL refuses it in text). */
export const NUL_BYTE = "the body is not JSON: it contains a NUL byte";

export type Provider = "telnyx" | "assemblyai";

/** What the statement made of a body: stored (or a duplicate), or why it is refused (a 400). */
export type Receipt = { eventId: string; duplicate: boolean } | { rejected: string; notJson: boolean };

interface PgError {
  code?: string;
  message: string;
  detail?: string;
}

/**
 * `not_json`: PostgreSQL's refusal of the body (SQLSTATE class 22, or 54001 for nesting deeper
 * than its stack) as the container's 400 detail, or null for any other error.
 */
export function notJson(err: unknown): string | null {
  const e = err as PgError;
  if (typeof e?.code !== "string" || !(e.code.startsWith("22") || e.code === "54001")) return null;
  return e.detail ? `the body is not JSON: ${e.message} (${e.detail})` : `the body is not JSON: ${e.message}`;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

interface Row {
  rejected: string | null;
  not_json: boolean;
  event_id: string | null;
  inserted: string;
}

/**
 * Runs the inbox statement for a verified body with `received_via = 'edge'`. In a dry run
 * (shadow) it runs inside a transaction that is rolled back, so the answer is computed by the
 * same statement and nothing is kept. A database failure other than the body's throws.
 */
export async function storeInInbox(db: Db, provider: Provider, body: Uint8Array, dryRun: boolean): Promise<Receipt> {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    return { rejected: NOT_UTF8, notJson: true };
  }
  if (text.includes("\0")) return { rejected: NUL_BYTE, notJson: true };
  if (dryRun) await db.query("begin");
  try {
    const result = await db.query<Row>(INBOX_INSERT_SQL, [provider, text, "edge"]);
    const row = result.rows[0];
    if (row === undefined) throw new Error("the inbox statement returned no row");
    if (row.rejected !== null) return { rejected: row.rejected, notJson: row.not_json };
    return { eventId: row.event_id ?? "", duplicate: row.inserted === "0" };
  } catch (err) {
    const detail = notJson(err);
    if (detail === null) throw err;
    return { rejected: detail, notJson: true };
  } finally {
    if (dryRun) await db.query("rollback");
  }
}

/**
 * The job the inbox statement enqueued (`<provider>.event`, key `webhook:<provider>:<event id>`),
 * as a Queue message for the edge consumer when routes.json gives that kind to the edge. A
 * failed send is logged, not thrown: the event is stored, and the edge cron's relay sends
 * pending jobs of edge-owned kinds again (src/cron.ts).
 */
export async function sendToQueue(env: Env, provider: "telnyx" | "assemblyai", eventId: string, work: WorkManifest): Promise<void> {
  const kind = `${provider}.event`;
  if (ownerOf(work.jobs, kind) !== "edge") return;
  const envelope: JobEnvelope = { kind, payload: { provider, event_id: eventId }, dedupe_key: `webhook:${provider}:${eventId}` };
  try {
    await env.WEBHOOKS.send(envelope, { contentType: "json" });
  } catch (err) {
    console.log(JSON.stringify({ event: "queue_send_failed", kind, error: String(err) }));
  }
}
