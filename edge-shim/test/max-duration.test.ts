// The edge's `call.max_duration` inside workerd, against the test database and the fake
// Telnyx Call Control API of test/fake-origin.js: the container's commands per live party
// with their command ids, the step's mark and call event once, the job row done; a row the
// container holds or finished is not run again; Telnyx faults are retried without a second
// effect; an ended call is left alone; without TELNYX_API_KEY the job goes back.
import { createExecutionContext, createMessageBatch, getQueueResult } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import type { Env } from "../src/env";
import { runCron } from "../src/cron";
import { consumeJobs, type JobEnvelope, MAX_QUEUE_DELAY_SECONDS } from "../src/jobs";
import { compileWork, type WorkManifest } from "../src/manifest";
import { WARNING_TEXT } from "../src/max-duration";
import { JOB_HANDLERS } from "../src/queue";
import { formUrlencode } from "../src/telnyx-commands";
import { logged, query } from "./helpers";

const EDGE_OWNS: WorkManifest = compileWork({ jobs: [{ kind: "call.max_duration", owner: "edge" }] });
const EDGE_ENV: Env = { ...env, TELNYX_API_KEY: "test-telnyx-key", TELNYX_API_BASE: "https://api.telnyx.test/v2/" };

let log: MockInstance<typeof console.log>;
beforeEach(async () => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
  await telnyxRequests();
});
afterEach(() => vi.restoreAllMocks());

const fake = (path: string, body?: unknown) =>
  fetch(`http://origin.test:8080${path}`, body === undefined ? {} : { method: "POST", body: JSON.stringify(body) }).then((r) => r.json());
const telnyxRequests = () =>
  fake("/__fake/telnyx/requests") as Promise<
    { method: string; path: string; authorization: string; body: Record<string, unknown> | null }[]
  >;

async function deliver(body: JobEnvelope, environment: Env = EDGE_ENV, attempts = 1) {
  const batch = createMessageBatch("callbridge-webhooks", [{ id: "m1", timestamp: new Date(), attempts, body }]);
  const ctx = createExecutionContext();
  await consumeJobs(batch, environment, EDGE_OWNS, JOB_HANDLERS, () => 1);
  return getQueueResult(batch, ctx);
}

/** An answered call (one-leg, or interpreted with two live legs) and its step's job row, as the dial guard leaves them. */
async function liveCall(step: "warn" | "hangup", shape: "one-leg" | "interpreted" = "one-leg", status = "answered") {
  const [org] = await query<{ id: string }>(
    "insert into organisations (id, name) values (gen_random_uuid(), 'Max') returning id::text as id",
  );
  const ccid = `v3:${crypto.randomUUID()}`;
  const [call] = await query<{ id: string }>(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, interpreted, telnyx_call_control_id)
     values (gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', $2, $3, $4) returning id::text as id`,
    [org!.id, status, shape === "interpreted", shape === "interpreted" ? null : ccid],
  );
  const legs: Record<string, string> = {};
  if (shape === "interpreted") {
    for (const role of ["remote", "agent"]) {
      legs[role] = `v3:${role}-${crypto.randomUUID()}`;
      await query(
        `insert into call_legs (id, call_id, role, number, status, telnyx_call_control_id)
         values (gen_random_uuid(), $1, $2, '+14155550199', 'answered', $3)`,
        [call!.id, role, legs[role]],
      );
    }
  }
  const envelope: JobEnvelope = {
    kind: "call.max_duration",
    payload: { call_id: call!.id, step, limit_secs: 600 },
    dedupe_key: `call.max_duration:${step}:${call!.id}`,
  };
  await query("insert into jobs (kind, payload, dedupe_key) values ($1, $2, $3)", [
    envelope.kind,
    JSON.stringify(envelope.payload),
    envelope.dedupe_key,
  ]);
  return { callId: call!.id, ccid, legs, envelope };
}

const jobRow = (key: string) =>
  query<{ status: string; attempts: number; last_error: string | null; handed_back: boolean }>(
    "select status, attempts, last_error, handed_back_at is not null as handed_back from jobs where dedupe_key = $1",
    [key],
  ).then((rows) => rows[0]);
const events = (callId: string) =>
  query<{ seq: string; kind: string; data: unknown }>("select seq::text, kind, data from call_events where call_id = $1 order by seq", [
    callId,
  ]);
const marks = (callId: string) =>
  query<{ warned: boolean; hung_up: boolean }>(
    "select max_duration_warned_at is not null as warned, max_duration_hangup_at is not null as hung_up from calls where id = $1",
    [callId],
  ).then((rows) => rows[0]);

describe("call.max_duration at the edge", { timeout: 30_000 }, () => {
  it("hangs a one-leg call up with the container's command, marks it and logs the event once, however often delivered", async () => {
    const c = await liveCall("hangup");
    expect((await deliver(c.envelope)).explicitAcks).toEqual(["m1"]);
    expect((await deliver(c.envelope)).explicitAcks).toEqual(["m1"]);
    expect(await telnyxRequests()).toEqual([
      {
        method: "POST",
        path: `/v2/calls/${formUrlencode(c.ccid)}/actions/hangup`,
        authorization: "Bearer test-telnyx-key",
        body: { command_id: `max-duration:${c.callId}` },
      },
    ]);
    expect(await marks(c.callId)).toEqual({ warned: false, hung_up: true });
    expect(await events(c.callId)).toEqual([{ seq: "1", kind: "call.max_duration_reached", data: { limit_secs: 600 } }]);
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "done", attempts: 1 });
    expect(logged(log, "max_duration_enforced")).toHaveLength(1);
  });

  it("warns every live leg of an interpreted call, agent first, with a command id per leg", async () => {
    const c = await liveCall("warn", "interpreted");
    await deliver(c.envelope);
    const requests = await telnyxRequests();
    expect(requests.map((r) => [r.path, r.body])).toEqual(
      ["agent", "remote"].map((role) => [
        `/v2/calls/${formUrlencode(c.legs[role]!)}/actions/speak`,
        { payload: WARNING_TEXT, voice: "female", language: "en-US", command_id: `max-duration-warning:${c.callId}:${role}` },
      ]),
    );
    expect(await marks(c.callId)).toEqual({ warned: true, hung_up: false });
    expect(await events(c.callId)).toEqual([{ seq: "1", kind: "call.max_duration_warning", data: { limit_secs: 600 } }]);
  });

  it("skips a leg that ended and a call that ended: nothing sent, nothing recorded, the row done", async () => {
    const c = await liveCall("hangup", "interpreted");
    await query("update call_legs set status = 'ended' where call_id = $1 and role = 'remote'", [c.callId]);
    await deliver(c.envelope);
    expect((await telnyxRequests()).map((r) => r.body)).toEqual([{ command_id: `max-duration:${c.callId}:agent` }]);

    const ended = await liveCall("hangup", "one-leg", "ended");
    expect((await deliver(ended.envelope)).explicitAcks).toEqual(["m1"]);
    expect(await telnyxRequests()).toEqual([]);
    expect(await events(ended.callId)).toEqual([]);
    expect(await marks(ended.callId)).toEqual({ warned: false, hung_up: false });
    expect(await jobRow(ended.envelope.dedupe_key!)).toMatchObject({ status: "done" });
  });

  it("leaves a row the container is running or has done: no command, no second event", async () => {
    const running = await liveCall("hangup");
    await query(
      "update jobs set status = 'running', locked_by = 'worker-1', locked_until = now() + interval '60 seconds' where dedupe_key = $1",
      [running.envelope.dedupe_key],
    );
    expect((await deliver(running.envelope)).retryMessages).toEqual([{ msgId: "m1" }]);
    const done = await liveCall("warn");
    await query("update jobs set status = 'done', finished_at = now() where dedupe_key = $1", [done.envelope.dedupe_key]);
    expect((await deliver(done.envelope)).explicitAcks).toEqual(["m1"]);
    expect(await telnyxRequests()).toEqual([]);
    expect(await events(running.callId)).toEqual([]);
    expect(await events(done.callId)).toEqual([]);
  });

  it("retries Telnyx 5xx inside the command, then the job; the same command id, one effect", async () => {
    const c = await liveCall("hangup");
    await fake("/__fake/telnyx/faults", [{ status: 500 }, { status: 503 }, { status: 500 }]);
    expect((await deliver(c.envelope)).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(await events(c.callId)).toEqual([]);
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "pending" });
    expect((await jobRow(c.envelope.dedupe_key!))!.last_error).toMatch(/^edge: Telnyx unavailable: 500/);
    expect((await deliver(c.envelope, EDGE_ENV, 2)).explicitAcks).toEqual(["m1"]);
    const requests = await telnyxRequests();
    expect(requests).toHaveLength(4);
    expect(new Set(requests.map((r) => JSON.stringify(r.body)))).toEqual(
      new Set([JSON.stringify({ command_id: `max-duration:${c.callId}` })]),
    );
    expect(await events(c.callId)).toHaveLength(1);
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "done", attempts: 2 });
  });

  it("a call Telnyx says has ended (422, 90018) counts as hung up; another 4xx fails the attempt, as in the container", async () => {
    const c = await liveCall("hangup");
    await fake("/__fake/telnyx/ended", [c.ccid]);
    await deliver(c.envelope);
    expect(await marks(c.callId)).toEqual({ warned: false, hung_up: true });
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "done" });

    const refused = await liveCall("hangup");
    await deliver(refused.envelope, { ...EDGE_ENV, TELNYX_API_KEY: "wrong-key" });
    expect(await jobRow(refused.envelope.dedupe_key!)).toMatchObject({ status: "pending" });
    expect(await events(refused.callId)).toEqual([]);
  });

  it("hands the job back without TELNYX_API_KEY, before any request; refuses a payload it cannot read", async () => {
    const c = await liveCall("hangup");
    expect((await deliver(c.envelope, { ...EDGE_ENV, TELNYX_API_KEY: "" })).explicitAcks).toEqual(["m1"]);
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "pending", handed_back: true });
    expect(await telnyxRequests()).toEqual([]);
    expect(logged(log, "job_handed_back")).toMatchObject([{ reason: "TELNYX_API_KEY is not set at the edge" }]);

    const bad = await liveCall("hangup");
    await deliver({ ...bad.envelope, payload: { call_id: "not-a-uuid", step: "hangup" } });
    expect(await jobRow(bad.envelope.dedupe_key!)).toMatchObject({ status: "dead" });
  });
});

describe("call.max_duration on time: the relay sends scheduled steps ahead with a Queue delay (ADR 0043)", { timeout: 30_000 }, () => {
  const relay = () => {
    const ctx = createExecutionContext();
    return runCron(EDGE_ENV, EDGE_OWNS, (p) => ctx.waitUntil(p));
  };
  type Sent = { body: JobEnvelope; delaySeconds?: number };
  const sentFor = (spy: MockInstance, key: string): Sent[] =>
    spy.mock.calls.flatMap(([messages]) => [...(messages as Iterable<Sent>)]).filter((m) => m.body.dedupe_key === key);

  it("sends a step due later once, delayed to its run_at, and leaves one beyond the Queue's 12 hours for later", async () => {
    const soon = await liveCall("hangup");
    const far = await liveCall("warn");
    await query("update jobs set run_at = now() + interval '90 seconds', updated_at = created_at where dedupe_key = $1", [
      soon.envelope.dedupe_key,
    ]);
    await query("update jobs set run_at = now() + interval '13 hours', updated_at = created_at where dedupe_key = $1", [
      far.envelope.dedupe_key,
    ]);
    const send = vi.spyOn(EDGE_ENV.WEBHOOKS, "sendBatch");
    await relay();
    const [sent, ...more] = sentFor(send, soon.envelope.dedupe_key!);
    expect(more).toEqual([]);
    expect(sent!.body).toMatchObject({ kind: "call.max_duration", payload: soon.envelope.payload });
    expect(sent!.delaySeconds).toBeGreaterThanOrEqual(88);
    expect(sent!.delaySeconds).toBeLessThanOrEqual(MAX_QUEUE_DELAY_SECONDS);
    expect(sent!.delaySeconds).toBeLessThanOrEqual(90);
    expect(sentFor(send, far.envelope.dedupe_key!)).toEqual([]);
    // The next tick sends neither again: the first is marked, the second still too far.
    send.mockClear();
    await relay();
    expect(sentFor(send, soon.envelope.dedupe_key!)).toEqual([]);
    expect(sentFor(send, far.envelope.dedupe_key!)).toEqual([]);
    // Within 12 hours of it, the far one goes with the longest delay the Queue allows.
    await query("update jobs set run_at = now() + interval '12 hours' where dedupe_key = $1", [far.envelope.dedupe_key]);
    await relay();
    expect(sentFor(send, far.envelope.dedupe_key!).map((m) => m.delaySeconds)).toEqual([MAX_QUEUE_DELAY_SECONDS]);
    // Still pending and never run: the delay, not an early run, makes it on time.
    expect(await jobRow(soon.envelope.dedupe_key!)).toMatchObject({ status: "pending", attempts: 0 });
    expect(await telnyxRequests()).toEqual([]);
  });

  it("sends back, with the delay left, a message that arrives before its row is due; runs it once due", async () => {
    const c = await liveCall("hangup");
    await query("update jobs set run_at = now() + interval '60 seconds' where dedupe_key = $1", [c.envelope.dedupe_key]);
    const send = vi.spyOn(EDGE_ENV.WEBHOOKS, "send");
    expect((await deliver(c.envelope)).explicitAcks).toEqual(["m1"]);
    expect(send).toHaveBeenCalledTimes(1);
    const [body, options] = send.mock.calls[0]!;
    expect(body).toEqual(c.envelope);
    expect(options?.delaySeconds).toBeGreaterThanOrEqual(58);
    expect(options?.delaySeconds).toBeLessThanOrEqual(60);
    expect(logged(log, "job_not_due")).toHaveLength(1);
    expect(await telnyxRequests()).toEqual([]);
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "pending", attempts: 0, last_error: null });
    // Due now (the delayed copy arrives): it runs, once.
    await query("update jobs set run_at = now() where dedupe_key = $1", [c.envelope.dedupe_key]);
    expect((await deliver(c.envelope)).explicitAcks).toEqual(["m1"]);
    expect((await deliver(c.envelope)).explicitAcks).toEqual(["m1"]);
    expect((await telnyxRequests()).map((r) => r.path)).toEqual([`/v2/calls/${formUrlencode(c.ccid)}/actions/hangup`]);
    expect(await jobRow(c.envelope.dedupe_key!)).toMatchObject({ status: "done" });
  });
});
