// Owns POST /webhooks/assemblyai at the edge, step for step as the container's
// src/http/assemblyai_webhook.rs: the `x-callbridge-webhook-secret` header compared in constant
// time with ASSEMBLYAI_WEBHOOK_SECRET (SHA-256 of both sides, so not even the length leaks),
// then the raw body handed to the container's one inbox + job statement (inbox.ts) through
// Hyperdrive with provider `assemblyai` and received_via = 'edge': PostgreSQL reads
// `transcript_id` (1–200 bytes) and `status` (1–40 bytes) and stores event id
// `{transcript_id}:{status}`, event type `transcript.{status}`; answers
// `{"event_id", "duplicate"}` or the container's 400. When routes.json gives `assemblyai.event`
// to the edge, a new event's job envelope also goes to the callbridge-webhooks Queue.
//
// Deferred to the container (before anything is written): ASSEMBLYAI_API_KEY or
// ASSEMBLYAI_WEBHOOK_SECRET missing at the edge (the container answers its own 503 or verifies
// with its secret), a body over HTTP_BODY_LIMIT_BYTES (its 413), a header value the edge may not
// see as the container does (a comma: several headers are joined by the Workers runtime, the
// container reads the first; bytes outside printable ASCII). A database failure throws, so
// the container runs the same idempotent statement again.

import { withDb } from "./db";
import { DeferToOrigin } from "./defer";
import { bodyLimit } from "./body";
import type { EdgeHandler } from "./handlers";
import { answering, headerValue, type JsonBody, jsonAnswer, problemAnswer, unauthorized } from "./respond";
import { sendToQueue, storeInInbox } from "./inbox";
import { WORK } from "./manifest";

/** src/providers/assemblyai_async.rs WEBHOOK_AUTH_HEADER. */
export const WEBHOOK_AUTH_HEADER = "x-callbridge-webhook-secret";

const encoder = new TextEncoder();

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

    const receipt = await withDb(env, ctx.waitUntil, (db) => storeInInbox(db, "assemblyai", body, ctx.dryRun));
    if ("rejected" in receipt) return problemAnswer(a, { status: 400, detail: receipt.rejected });
    const { eventId, duplicate } = receipt;
    if (!ctx.dryRun && !duplicate) await sendToQueue(env, "assemblyai", eventId, ctx.work ?? WORK);
    return jsonAnswer<JsonBody<"/webhooks/assemblyai", "post", 200>>(a, { event_id: eventId, duplicate });
  },
  // In a shadow (dry-run) call the statement is rolled back after the container has stored
  // the event, so the edge sees a duplicate; everything else is compared.
  shadow: { ignoreFields: ["/duplicate"], headers: ["content-type", "www-authenticate"] },
};
