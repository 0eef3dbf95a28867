// Owns POST /webhooks/telnyx at the edge, step for step as the container's
// src/http/webhooks.rs: verify the signature on the untouched body (telnyx.ts), then hand the
// raw body to the container's one inbox statement (inbox.ts) through Hyperdrive with
// received_via = 'edge': PostgreSQL reads it (JSON, data.id / data.event_type /
// data.occurred_at) exactly as for the container, stores the row and enqueues the job, and
// the edge answers `{"event_id", "duplicate"}` or the container's 400. When routes.json gives
// the `telnyx.event` kind to the edge, a new event's job envelope also goes to the
// callbridge-webhooks Queue, whose consumer (src/jobs.ts) runs it; otherwise the container's
// workers run the job the statement enqueued.
//
// Deferred to the container (before anything is written): TELNYX_PUBLIC_KEY missing or
// unusable (the container answers its own 503 or verifies with its key) and a body over
// HTTP_BODY_LIMIT_BYTES (its 413). A database failure throws, so the container runs the same
// idempotent statement again: a duplicate there is a no-op.

import { bodyLimit } from "./body";
import { withDb } from "./db";
import { DeferToOrigin } from "./defer";
import type { EdgeHandler } from "./handlers";
import { sendToQueue, storeInInbox } from "./inbox";
import { WORK } from "./manifest";
import { answering, headerValue, type JsonBody, jsonAnswer, problemAnswer, unauthorized } from "./respond";
import { importTelnyxKey, SIGNATURE_ERRORS, SIGNATURE_HEADER, TIMESTAMP_HEADER, verifyTelnyx } from "./telnyx";

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

    const receipt = await withDb(env, ctx.waitUntil, (db) => storeInInbox(db, "telnyx", body, ctx.dryRun));
    if ("rejected" in receipt) {
      const detail = receipt.notJson ? receipt.rejected : `not a Telnyx webhook: ${receipt.rejected}`;
      return problemAnswer(a, { status: 400, detail });
    }
    const { eventId, duplicate } = receipt;
    if (!ctx.dryRun && !duplicate) await sendToQueue(env, "telnyx", eventId, ctx.work ?? WORK);
    return jsonAnswer<JsonBody<"/webhooks/telnyx", "post", 200>>(a, { event_id: eventId, duplicate });
  },
  // In a shadow (dry-run) call the statement is rolled back after the container has stored
  // the event, so the edge sees a duplicate; everything else is compared.
  shadow: { ignoreFields: ["/duplicate"], headers: ["content-type", "www-authenticate"] },
};
