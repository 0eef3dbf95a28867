// Owns POST /webhooks/telnyx at the edge, step for step as the container's
// src/http/webhooks.rs: verify the signature on the untouched body (telnyx.ts), read the body
// as serde_json reads it (serde-json.ts), pick out data.id / data.event_type / data.occurred_at
// (`WebhookEvent::parse`), then run the container's one inbox + job statement through
// Hyperdrive with received_via = 'edge', and answer `{"event_id", "duplicate"}`.
//
// Deferred to the container (before anything is written): TELNYX_PUBLIC_KEY missing or
// unusable (the container answers its own 503 or verifies with its key), a body over
// HTTP_BODY_LIMIT_BYTES (its 413), a body serde_json would reject or that this port is not
// sure about (its 400 quotes serde's message), and an occurred_at the edge does not convert
// exactly (a leap second). A database failure throws, so the container runs the same
// idempotent statement again: a duplicate there is a no-op.

import { bodyLimit } from "./body";
import { withDb } from "./db";
import { DeferToOrigin } from "./defer";
import type { EdgeHandler } from "./handlers";
import { answering, headerValue, type JsonBody, jsonAnswer, problemAnswer, unauthorized } from "./respond";
import { DEFER, occurredAtForPostgres } from "./rfc3339";
import { type Json, member, type Parsed, parseSerdeJson, replaceNul, serialise } from "./serde-json";
import { importTelnyxKey, SIGNATURE_ERRORS, SIGNATURE_HEADER, TIMESTAMP_HEADER, verifyTelnyx } from "./telnyx";

/** src/inbox.rs INBOX_INSERT_SQL, byte for byte. */
export const INBOX_INSERT_SQL = `with inserted as (
        insert into webhook_inbox (provider, event_id, event_type, occurred_at, payload, received_via)
        values ($1, $2, $3, $4, $5, $6)
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
    select count(*) from inserted`;

/**
 * The container's `webhooks::storable`: after the signature check (on the raw bytes), every
 * NUL becomes U+FFFD, since PostgreSQL refuses it, and the event must be stored, not answered
 * 500 and retried until the sender gives up. Done before the envelope's fields are read, as
 * there.
 */
export function storable(parsed: Parsed | null): Parsed | null {
  if (parsed === null) return null;
  const value = replaceNul(parsed.value);
  return value === parsed.value ? parsed : { value, canonical: serialise(value) };
}

export interface TelnyxEvent {
  id: string;
  /** `_` replaced by `.`. */
  eventType: string;
  /** Postgres text of the stored timestamptz, or null. */
  occurredAt: string | null;
}

const encoder = new TextEncoder();
const utf8Length = (s: string) => encoder.encode(s).length;

/** `WebhookEvent::parse`: the event, or the container's reason it is not a Telnyx webhook. */
export function parseEvent(envelope: Json): TelnyxEvent | { error: string } {
  const data = member(envelope, "data");
  if (data === undefined) return { error: "missing data" };
  const id = member(data, "id");
  if (typeof id !== "string" || id === "" || utf8Length(id) > 200) return { error: "missing data.id" };
  const type = member(data, "event_type");
  if (typeof type !== "string" || type === "" || utf8Length(type) > 100) return { error: "missing data.event_type" };
  const at = member(data, "occurred_at");
  let occurredAt: string | null = null;
  if (typeof at === "string") {
    const converted = occurredAtForPostgres(at);
    if (converted === DEFER) throw new DeferToOrigin("data.occurred_at is a leap second or out of range");
    occurredAt = converted;
  }
  return { id, eventType: type.replaceAll("_", "."), occurredAt };
}

export const telnyxWebhook: EdgeHandler = {
  async handle(request, ctx) {
    const { env } = ctx;
    if (!env.TELNYX_PUBLIC_KEY) throw new DeferToOrigin("TELNYX_PUBLIC_KEY is not set at the edge");
    const key = await importTelnyxKey(env.TELNYX_PUBLIC_KEY).catch((err: unknown) => {
      throw new DeferToOrigin(err instanceof Error ? err.message : String(err));
    });
    const a = answering(request, env);

    const limit = bodyLimit(env.HTTP_BODY_LIMIT_BYTES);
    const declared = Number(request.headers.get("content-length") ?? "0");
    if (declared > limit) throw new DeferToOrigin("body over HTTP_BODY_LIMIT_BYTES");
    const body = new Uint8Array(await request.arrayBuffer());
    if (body.length > limit) throw new DeferToOrigin("body over HTTP_BODY_LIMIT_BYTES");

    const rejected = await verifyTelnyx(
      key,
      headerValue(request.headers, TIMESTAMP_HEADER),
      headerValue(request.headers, SIGNATURE_HEADER),
      body,
      Math.floor(Date.now() / 1000),
    );
    if (rejected !== null) return unauthorized(a, `Webhook signature rejected: ${SIGNATURE_ERRORS[rejected]}.`);

    const parsed = storable(parseSerdeJson(body));
    if (parsed === null) throw new DeferToOrigin("the body is not JSON as serde_json reads it");
    const event = parseEvent(parsed.value);
    if ("error" in event) return problemAnswer(a, { status: 400, detail: `not a Telnyx webhook: ${event.error}` });

    let duplicate = false;
    if (!ctx.dryRun) {
      const inserted = await withDb(env, ctx.waitUntil, async (db) => {
        const result = await db.query<{ count: string }>(INBOX_INSERT_SQL, [
          "telnyx",
          event.id,
          event.eventType,
          event.occurredAt,
          parsed.canonical,
          "edge",
        ]);
        return result.rows[0]?.count;
      });
      if (inserted === undefined) throw new Error("the inbox statement returned no row");
      duplicate = inserted === "0";
    }
    return jsonAnswer<JsonBody<"/webhooks/telnyx", "post", 200>>(a, { event_id: event.id, duplicate });
  },
  // In a shadow (dry-run) call nothing is written, so whether the event is a duplicate is
  // not known; everything else is compared.
  shadow: { ignoreFields: ["/duplicate"], headers: ["content-type", "www-authenticate"] },
};
