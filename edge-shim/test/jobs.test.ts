// The edge's job consumer and its telnyx.event handler inside workerd, against the test
// database (test/global-setup.ts) and miniflare's Queue: ack, retry with backoff, dead letter,
// the manifest's refusals (a kind the edge does not own is never run; a kind given to the edge
// without a handler stops the Worker), hand-backs, and the call state machine's effects, once.
import { createExecutionContext, createMessageBatch, getQueueResult } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { storeInInbox } from "../src/inbox";
import { backoffSeconds, checkJobRegistry, consumeJobs, type JobEnvelope, type JobRegistry, Permanent } from "../src/jobs";
import { compileWork, type WorkManifest } from "../src/manifest";
import { JOB_HANDLERS } from "../src/queue";
import { decodeClientState } from "../src/telnyx-event";
import { logged, query } from "./helpers";

const EDGE_OWNS: WorkManifest = compileWork({ jobs: [{ kind: "telnyx.event", owner: "edge" }] });
const ORIGIN_OWNS: WorkManifest = compileWork({ jobs: [{ kind: "telnyx.event", owner: "origin" }] });

let log: MockInstance<typeof console.log>;
beforeEach(() => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

let seq = 0;
const unique = (prefix: string) => `${prefix}-${Date.now()}-${++seq}`;

/** An organisation and an outbound call Telnyx knows by `ccid`. */
async function outboundCall(ccid: string, status = "initiated"): Promise<{ callId: string; orgId: string }> {
  const [org] = await query<{ id: string }>(
    "insert into organisations (id, name) values (gen_random_uuid(), 'Edge jobs') returning id::text as id",
  );
  const [call] = await query<{ id: string }>(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, telnyx_call_control_id)
     values (gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', $2, $3) returning id::text as id`,
    [org!.id, status, ccid],
  );
  return { callId: call!.id, orgId: org!.id };
}

/** Stores a Telnyx event through the inbox statement, as the edge receiver does; its envelope. */
async function stored(
  eventType: string,
  payload: Record<string, unknown>,
  occurredAt = "2026-11-26T03:30:00.123456Z",
): Promise<JobEnvelope> {
  const eventId = unique("evt");
  const body = JSON.stringify({ data: { id: eventId, event_type: eventType, occurred_at: occurredAt, payload } });
  const { Client } = await import("pg");
  const db = new Client({ connectionString: env.HYPERDRIVE.connectionString });
  db.on("error", () => {});
  await db.connect();
  try {
    const receipt = await storeInInbox(db, "telnyx", new TextEncoder().encode(body), false);
    expect(receipt).toMatchObject({ eventId, duplicate: false });
  } finally {
    await db.end();
  }
  return { kind: "telnyx.event", payload: { provider: "telnyx", event_id: eventId }, dedupe_key: `webhook:telnyx:${eventId}` };
}

async function deliver(
  envelopes: { body: unknown; attempts?: number }[],
  work: WorkManifest = EDGE_OWNS,
  handlers: JobRegistry = JOB_HANDLERS,
  queue = "callbridge-webhooks",
) {
  const batch = createMessageBatch(
    queue,
    envelopes.map((e, i) => ({ id: `m${i + 1}`, timestamp: new Date(), attempts: e.attempts ?? 1, body: e.body })),
  );
  const ctx = createExecutionContext();
  await consumeJobs(batch, env, work, handlers, () => 1);
  return getQueueResult(batch, ctx);
}

const job = (dedupeKey: string) =>
  query<{ status: string; attempts: number; last_error: string | null; locked_by: string | null; handed_back_at: string | null }>(
    "select status, attempts, last_error, locked_by, handed_back_at::text from jobs where dedupe_key = $1",
    [dedupeKey],
  ).then((rows) => rows[0]);

describe("the job consumer", () => {
  it("runs an edge-owned telnyx.event once: the call moves, one event is logged, the job is done", async () => {
    const ccid = unique("ccid");
    const { callId } = await outboundCall(ccid);
    const envelope = await stored("call.answered", { call_control_id: ccid, hangup_cause: "ignored-here" });
    const result = await deliver([{ body: envelope }, { body: envelope }]);
    expect(result.explicitAcks.sort()).toEqual(["m1", "m2"]);
    expect(result.retryMessages).toEqual([]);
    const [call] = await query<{ status: string; answered_at: string }>(
      "select status, to_char(answered_at at time zone 'UTC', 'HH24:MI:SS.US') as answered_at from calls where id = $1",
      [callId],
    );
    expect(call).toEqual({ status: "answered", answered_at: "03:30:00.123456" });
    const events = await query<{ kind: string; data: Record<string, unknown> }>(
      "select kind, data from call_events where call_id = $1 order by seq",
      [callId],
    );
    expect(events).toEqual([
      {
        kind: "call.answered",
        data: {
          telnyx_event_id: envelope.payload.event_id,
          status: "answered",
          occurred_at: "2026-11-26T03:30:00.123456Z",
          hangup_cause: "ignored-here",
        },
      },
    ]);
    expect(await job(envelope.dedupe_key!)).toMatchObject({ status: "done", locked_by: "edge" });
    const [inbox] = await query<{ processed: boolean }>(
      "select processed_at is not null as processed from webhook_inbox where event_id = $1",
      [envelope.payload.event_id],
    );
    expect(inbox).toEqual({ processed: true });
    expect(logged(log, "job_done")).toHaveLength(2);
  });

  it("never runs a kind routes.json leaves to the container: acknowledged, the row stays pending for it", async () => {
    const ccid = unique("ccid");
    const { callId } = await outboundCall(ccid);
    const envelope = await stored("call.answered", { call_control_id: ccid });
    const result = await deliver([{ body: envelope }], ORIGIN_OWNS);
    expect(result.explicitAcks).toEqual(["m1"]);
    expect(await job(envelope.dedupe_key!)).toMatchObject({ status: "pending" });
    expect(await query("select 1 from call_events where call_id = $1", [callId])).toEqual([]);
    expect(logged(log, "job_not_owned")).toMatchObject([{ kind: "telnyx.event" }]);
  });

  it("retries a failing job with the container's backoff, recording the failure on its row", async () => {
    const envelope = await stored("call.answered", { call_control_id: unique("ccid") });
    const failing: JobRegistry = {
      "telnyx.event": async () => {
        throw new Error("database went away");
      },
    };
    const result = await deliver([{ body: envelope, attempts: 3 }], EDGE_OWNS, failing);
    expect(result.explicitAcks).toEqual([]);
    expect(result.retryMessages).toEqual([{ msgId: "m1" }]);
    expect(logged(log, "job_retry")).toMatchObject([{ delay_seconds: 8, error: "database went away" }]);
    expect(await job(envelope.dedupe_key!)).toMatchObject({ status: "pending", attempts: 3, last_error: "edge: database went away" });
    expect(backoffSeconds(1, () => 0)).toBe(1);
    expect(backoffSeconds(20, () => 1)).toBe(3600);
  });

  it("marks a permanent failure dead at once, where the container's dead jobs are", async () => {
    const envelope = await stored("call.answered", { call_control_id: unique("ccid") });
    const permanent: JobRegistry = {
      "telnyx.event": async () => {
        throw new Permanent("unparseable");
      },
    };
    const result = await deliver([{ body: envelope }], EDGE_OWNS, permanent);
    expect(result.explicitAcks).toEqual(["m1"]);
    expect(await job(envelope.dedupe_key!)).toMatchObject({ status: "dead", last_error: "edge: unparseable" });
  });

  it("the dead-letter consumer records an exhausted message in the one dead-jobs list", async () => {
    const envelope = await stored("call.answered", { call_control_id: unique("ccid") });
    const orphan: JobEnvelope = { kind: "telnyx.event", payload: { event_id: "gone" }, dedupe_key: unique("webhook:telnyx") };
    const result = await deliver(
      [
        { body: envelope, attempts: 10 },
        { body: orphan, attempts: 10 },
      ],
      EDGE_OWNS,
      JOB_HANDLERS,
      "callbridge-webhooks-dlq",
    );
    expect(result.explicitAcks.sort()).toEqual(["m1", "m2"]);
    expect(await job(envelope.dedupe_key!)).toMatchObject({ status: "dead", last_error: "edge: the Queue gave up after 10 deliveries" });
    expect(await job(orphan.dedupe_key!)).toMatchObject({ status: "dead", locked_by: "edge" });
  });

  it("hands an inbound call back to the container before any effect", async () => {
    const envelope = await stored("call.initiated", { call_control_id: unique("ccid"), direction: "incoming", to: "+14155550999" });
    const result = await deliver([{ body: envelope }]);
    expect(result.explicitAcks).toEqual(["m1"]);
    const row = await job(envelope.dedupe_key!);
    expect(row).toMatchObject({ status: "pending" });
    expect(row!.handed_back_at).not.toBeNull();
    const [inbox] = await query<{ processed: boolean }>(
      "select processed_at is not null as processed from webhook_inbox where event_id = $1",
      [envelope.payload.event_id],
    );
    expect(inbox).toEqual({ processed: false });
    expect(logged(log, "job_handed_back")).toMatchObject([{ reason: "an inbound call to route and answer" }]);
  });

  it("acknowledges what is not a job envelope (retrying would not help)", async () => {
    const result = await deliver([{ body: "text" }, { body: { kind: "telnyx.event", payload: {} } }]);
    expect(result.explicitAcks.sort()).toEqual(["m1", "m2"]);
    expect(logged(log, "queue_message_rejected")).toHaveLength(2);
  });

  it("a call.recording.saved enqueues the recording import as the container does", async () => {
    const ccid = unique("ccid");
    const { callId, orgId } = await outboundCall(ccid, "answered");
    const envelope = await stored("call.recording.saved", {
      call_control_id: ccid,
      recording_id: unique("rec"),
      recording_urls: { mp3: "https://example.telnyx.com/r.mp3" },
      channels: "dual",
    });
    await deliver([{ body: envelope }]);
    const [imp] = await query<{ payload: Record<string, unknown>; max_attempts: number }>(
      "select payload, max_attempts from jobs where kind = 'recording.import' and payload->>'call_id' = $1",
      [callId],
    );
    expect(imp).toMatchObject({ max_attempts: 6, payload: { call_id: callId, organisation_id: orgId, channels: "dual" } });
  });
});

describe("the manifest's job kinds", () => {
  it("refuses an edge-owned kind without an edge handler, an unknown owner and a kind listed twice", () => {
    expect(() => checkJobRegistry(compileWork({ jobs: [{ kind: "calls.redial", owner: "edge" }] }), JOB_HANDLERS)).toThrow(
      /no handler for: calls.redial$/,
    );
    // Ported with ADR 0041: the edge has a handler for it.
    expect(() => checkJobRegistry(compileWork({ jobs: [{ kind: "call.max_duration", owner: "edge" }] }), JOB_HANDLERS)).not.toThrow();
    expect(() => checkJobRegistry(EDGE_OWNS, JOB_HANDLERS)).not.toThrow();
    expect(() => compileWork({ jobs: [{ kind: "x", owner: "shadow" }] })).toThrow(/owner must be origin or edge/);
    expect(() =>
      compileWork({
        jobs: [
          { kind: "x", owner: "edge" },
          { kind: "x", owner: "origin" },
        ],
      }),
    ).toThrow(/listed twice/);
  });

  it("decodes client_state as the container does", () => {
    const id = "0196b8a1-7f4e-7b7a-9c1d-2f3e4a5b6c7d";
    expect(decodeClientState(btoa(JSON.stringify({ call_id: id })))).toBe(id);
    expect(decodeClientState(btoa(JSON.stringify({ call_id: id.replaceAll("-", "").toUpperCase() })))).toBe(id);
    expect(decodeClientState(btoa(JSON.stringify({ call_id: `{${id}}` })))).toBe(id);
    expect(decodeClientState(btoa(JSON.stringify({ call_id: "0196b8a1-7f4e7b7a-9c1d-2f3e4a5b6c7d" })))).toBeNull();
    expect(decodeClientState(btoa(JSON.stringify({ call_id: id })).replace(/=+$/, ""))).toBeNull();
  });
});
