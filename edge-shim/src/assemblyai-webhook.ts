// Owns POST /webhooks/assemblyai at the edge, step for step as the container's
// src/http/assemblyai_webhook.rs: the `x-callbridge-webhook-secret` header compared in constant
// time with ASSEMBLYAI_WEBHOOK_SECRET (SHA-256 of both sides, so not even the length leaks), the
// body read as serde_json reads it (serde-json.ts), `transcript_id` (1–200 bytes) and `status`
// (1–40 bytes), then the container's one inbox + job statement (webhooks.ts INBOX_INSERT_SQL)
// through Hyperdrive with provider `assemblyai`, event id `{transcript_id}:{status}`, event type
// `transcript.{status}`, no occurred_at and received_via = 'edge'; answers
// `{"event_id", "duplicate"}`.
//
// Deferred to the container (before anything is written): ASSEMBLYAI_API_KEY or
// ASSEMBLYAI_WEBHOOK_SECRET missing at the edge (the container answers its own 503 or verifies
// with its secret), a body over HTTP_BODY_LIMIT_BYTES (its 413), a header value the edge may not
// see as the container does (a comma: several headers are joined by the Workers runtime, the
// container reads the first; bytes outside printable ASCII), and a body serde_json would reject
// or that this port is not sure about (its 400 quotes serde's message). A database failure
// throws, so the container runs the same idempotent statement again.

import { withDb } from "./db";
import { DeferToOrigin } from "./defer";
import { bodyLimit } from "./body";
import type { EdgeHandler } from "./handlers";
import { answering, headerValue, type JsonBody, jsonAnswer, problemAnswer, unauthorized } from "./respond";
import { type Json, member, parseSerdeJson } from "./serde-json";
import { INBOX_INSERT_SQL, storable } from "./webhooks";

/** src/providers/assemblyai_async.rs WEBHOOK_AUTH_HEADER. */
export const WEBHOOK_AUTH_HEADER = "x-callbridge-webhook-secret";

const encoder = new TextEncoder();
const utf8Length = (s: string) => encoder.encode(s).length;

/**
 * `same_secret`: SHA-256 of both sides compared without an early exit, so neither the
 * position of the first difference nor the lengths leak.
 */
export async function sameSecret(sent: Uint8Array, expected: Uint8Array): Promise<boolean> {
  const [a, b] = await Promise.all([crypto.subtle.digest("SHA-256", sent), crypto.subtle.digest("SHA-256", expected)]);
  const subtle = crypto.subtle as SubtleCrypto & { timingSafeEqual?: (a: ArrayBuffer, b: ArrayBuffer) => boolean };
  if (typeof subtle.timingSafeEqual === "function") return subtle.timingSafeEqual(a, b);
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ y[i]!;
  return diff === 0;
}

export interface AssemblyAIEvent {
  /** `{transcript_id}:{status}`. */
  eventId: string;
  /** `transcript.{status}`. */
  eventType: string;
}

/** The container's checks of the parsed body, in its order, with its 400 details. */
export function parseTranscriptEvent(payload: Json): AssemblyAIEvent | { error: string } {
  const id = member(payload, "transcript_id");
  if (typeof id !== "string" || id === "" || utf8Length(id) > 200) return { error: "missing transcript_id" };
  const status = member(payload, "status");
  if (typeof status !== "string" || status === "" || utf8Length(status) > 40) return { error: "missing status" };
  return { eventId: `${id}:${status}`, eventType: `transcript.${status}` };
}

/** The header as the container reads it, or DeferToOrigin when the edge cannot be sure. */
function sentSecret(headers: Headers): string {
  const value = headerValue(headers, WEBHOOK_AUTH_HEADER) ?? "";
  if (value.includes(",")) throw new DeferToOrigin(`${WEBHOOK_AUTH_HEADER} repeated or containing a comma`);
  if (!/^[\x20-\x7e\t]*$/.test(value)) throw new DeferToOrigin(`${WEBHOOK_AUTH_HEADER} not printable ASCII`);
  return value;
}

export const assemblyaiWebhook: EdgeHandler = {
  async handle(request, ctx) {
    const { env } = ctx;
    if (!env.ASSEMBLYAI_API_KEY) throw new DeferToOrigin("ASSEMBLYAI_API_KEY is not set at the edge");
    if (!env.ASSEMBLYAI_WEBHOOK_SECRET) throw new DeferToOrigin("ASSEMBLYAI_WEBHOOK_SECRET is not set at the edge");
    const a = answering(request, env);

    // The container's Bytes extractor applies the body limit before the handler runs.
    const limit = bodyLimit(env.HTTP_BODY_LIMIT_BYTES);
    const declared = Number(request.headers.get("content-length") ?? "0");
    if (declared > limit) throw new DeferToOrigin("body over HTTP_BODY_LIMIT_BYTES");
    const sent = sentSecret(request.headers);
    const body = new Uint8Array(await request.arrayBuffer());
    if (body.length > limit) throw new DeferToOrigin("body over HTTP_BODY_LIMIT_BYTES");

    if (sent === "" || !(await sameSecret(encoder.encode(sent), encoder.encode(env.ASSEMBLYAI_WEBHOOK_SECRET)))) {
      return unauthorized(a, "Webhook auth header missing or wrong.");
    }

    const parsed = storable(parseSerdeJson(body));
    if (parsed === null) throw new DeferToOrigin("the body is not JSON as serde_json reads it");
    const event = parseTranscriptEvent(parsed.value);
    if ("error" in event) return problemAnswer(a, { status: 400, detail: event.error });

    let duplicate = false;
    if (!ctx.dryRun) {
      const inserted = await withDb(env, ctx.waitUntil, async (db) => {
        const result = await db.query<{ count: string }>(INBOX_INSERT_SQL, [
          "assemblyai",
          event.eventId,
          event.eventType,
          null,
          parsed.canonical,
          "edge",
        ]);
        return result.rows[0]?.count;
      });
      if (inserted === undefined) throw new Error("the inbox statement returned no row");
      duplicate = inserted === "0";
    }
    return jsonAnswer<JsonBody<"/webhooks/assemblyai", "post", 200>>(a, { event_id: event.eventId, duplicate });
  },
  // In a shadow (dry-run) call nothing is written, so whether the event is a duplicate is
  // not known; everything else is compared.
  shadow: { ignoreFields: ["/duplicate"], headers: ["content-type", "www-authenticate"] },
};
