// The edge's post-call transcript jobs inside workerd, against the test database and the fake
// AssemblyAI async API of test/fake-origin.js: recording.transcribe submits once (the
// container's request body, a SigV4-presigned GET of the R2 object) and records the
// submission fenced by its lease; assemblyai.event fetches the finished transcript and stores
// it, its usage entry and its call event once, from the receiver's inbox row; retries and
// hand-backs; the presigner against AWS's published example.
import { createExecutionContext, createMessageBatch, getQueueResult } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { Client } from "pg";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import type { Env } from "../src/env";
import { storeInInbox } from "../src/inbox";
import { consumeJobs, type JobEnvelope } from "../src/jobs";
import { compileWork, type WorkManifest } from "../src/manifest";
import { objectUrl, presignGet } from "../src/presign";
import { JOB_HANDLERS } from "../src/queue";
import { logged, query } from "./helpers";

const EDGE_OWNS: WorkManifest = compileWork({
  jobs: [
    { kind: "recording.transcribe", owner: "edge" },
    { kind: "assemblyai.event", owner: "edge" },
  ],
});
const EDGE_ENV: Env = {
  ...env,
  ASSEMBLYAI_API_KEY: "test-aai-key",
  ASSEMBLYAI_API_BASE: "https://api.assemblyai.test",
  WEBHOOK_BASE_URL: "https://api.callbridge.test/",
  R2_ENDPOINT: "https://acct.r2.cloudflarestorage.com",
  R2_ACCESS_KEY_ID: "edge-test-key",
  R2_SECRET_ACCESS_KEY: "edge-test-secret",
};

let log: MockInstance<typeof console.log>;
beforeEach(async () => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
  await aaiRequests();
});
afterEach(() => vi.restoreAllMocks());

const fake = (path: string, body?: unknown) =>
  fetch(`http://origin.test:8080${path}`, body === undefined ? {} : { method: "POST", body: JSON.stringify(body) }).then((r) => r.json());
const aaiRequests = () =>
  fake("/__fake/aai/requests") as Promise<{ method: string; path: string; authorization: string; body: Record<string, unknown> | null }[]>;

async function deliver(body: JobEnvelope, environment: Env = EDGE_ENV, attempts = 1) {
  const batch = createMessageBatch("callbridge-webhooks", [{ id: "m1", timestamp: new Date(), attempts, body }]);
  const ctx = createExecutionContext();
  await consumeJobs(batch, environment, EDGE_OWNS, JOB_HANDLERS, () => 1);
  return getQueueResult(batch, ctx);
}

/** A call with a stored Telnyx recording version and its transcription job (as the import leaves them). */
async function storedVersion(channels: "dual" | "single" = "dual") {
  const [org] = await query<{ id: string }>(
    "insert into organisations (id, name) values (gen_random_uuid(), 'Transcripts') returning id::text as id",
  );
  const [call] = await query<{ id: string }>(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status)
     values (gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'ended') returning id::text as id`,
    [org!.id],
  );
  const [rec] = await query<{ id: string }>(
    `insert into recordings (id, organisation_id, call_id, source, telnyx_recording_id, channels)
     values (gen_random_uuid(), $1, $2, 'telnyx', gen_random_uuid()::text, $3) returning id::text as id`,
    [org!.id, call!.id, channels],
  );
  const key = `orgs/${org!.id}/calls/${call!.id}/recordings/${rec!.id}/v1.wav`;
  await query(
    `insert into recording_versions (recording_id, version, object_key, status, content_type, size_bytes, sha256, stored_at)
     values ($1, 1, $2, 'stored', 'audio/wav', 44, repeat('0', 64), now())`,
    [rec!.id, key],
  );
  const envelope: JobEnvelope = {
    kind: "recording.transcribe",
    payload: { recording_id: rec!.id, version: 1 },
    dedupe_key: `recording.transcribe:${rec!.id}:1`,
  };
  await query("insert into jobs (kind, payload, dedupe_key) values ($1, $2, $3)", [
    envelope.kind,
    JSON.stringify(envelope.payload),
    envelope.dedupe_key,
  ]);
  return { orgId: org!.id, callId: call!.id, recordingId: rec!.id, key, envelope };
}

const jobRow = (key: string) =>
  query<{ status: string; attempts: number; last_error: string | null; handed_back: boolean }>(
    "select status, attempts, last_error, handed_back_at is not null as handed_back from jobs where dedupe_key = $1",
    [key],
  ).then((rows) => rows[0]);

describe("recording.transcribe at the edge", { timeout: 30_000 }, () => {
  it("submits once with the container's request, a presigned GET of the R2 object, and records the submission", async () => {
    const v = await storedVersion("dual");
    expect((await deliver(v.envelope)).explicitAcks).toEqual(["m1"]);
    expect((await deliver(v.envelope)).explicitAcks).toEqual(["m1"]);
    const requests = await aaiRequests();
    expect(requests).toHaveLength(1);
    const [submit] = requests;
    expect(submit).toMatchObject({ method: "POST", path: "/v2/transcript", authorization: "test-aai-key" });
    expect(Object.keys(submit!.body!)).toEqual([
      "audio_url",
      "webhook_url",
      "webhook_auth_header_name",
      "webhook_auth_header_value",
      "multichannel",
      "language_detection",
    ]);
    expect(submit!.body).toMatchObject({
      webhook_url: "https://api.callbridge.test/webhooks/assemblyai",
      webhook_auth_header_name: "x-callbridge-webhook-secret",
      webhook_auth_header_value: "test-assemblyai-secret",
      multichannel: true,
      language_detection: true,
    });
    const audio = new URL(submit!.body!.audio_url as string);
    expect(`${audio.origin}${audio.pathname}`).toBe(`https://acct.r2.cloudflarestorage.com/callbridge-recordings/${v.key}`);
    expect(audio.searchParams.get("X-Amz-Expires")).toBe("86400");
    expect(audio.searchParams.get("X-Amz-Credential")).toMatch(/^edge-test-key\/\d{8}\/auto\/s3\/aws4_request$/);
    // The same inputs sign to the same URL (the signature covers host, path and query).
    const date = audio.searchParams.get("X-Amz-Date")!;
    const now = new Date(
      `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6, 8)}T${date.slice(9, 11)}:${date.slice(11, 13)}:${date.slice(13, 15)}Z`,
    );
    expect(
      await presignGet({
        url: objectUrl(EDGE_ENV.R2_ENDPOINT, "callbridge-recordings", v.key),
        accessKeyId: "edge-test-key",
        secretAccessKey: "edge-test-secret",
        region: "auto",
        expiresSeconds: 86400,
        now,
      }),
    ).toBe(audio.href);
    const rows = await query(
      "select status, multichannel, assemblyai_transcript_id like 'aai-%' as id, call_id::text as call_id from post_call_transcripts where recording_id = $1",
      [v.recordingId],
    );
    expect(rows).toEqual([{ status: "submitted", multichannel: true, id: true, call_id: v.callId }]);
    expect(await jobRow(v.envelope.dedupe_key!)).toMatchObject({ status: "done", attempts: 1 });
  });

  it("single-channel audio asks for speaker labels", async () => {
    const v = await storedVersion("single");
    await deliver(v.envelope);
    const [submit] = await aaiRequests();
    expect(submit!.body).toMatchObject({ multichannel: false, speaker_labels: true });
  });

  it("AssemblyAI answering 500 is retried and records nothing; a 400 is permanent", async () => {
    const v = await storedVersion();
    await fake("/__fake/aai/faults", [{ status: 500 }]);
    expect((await deliver(v.envelope)).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(await query("select 1 from post_call_transcripts where recording_id = $1", [v.recordingId])).toEqual([]);
    expect(await jobRow(v.envelope.dedupe_key!)).toMatchObject({
      status: "pending",
      last_error: 'edge: AssemblyAI answered 500: {"error":"simulated failure"}',
    });
    expect((await deliver(v.envelope, EDGE_ENV, 2)).explicitAcks).toEqual(["m1"]);
    expect(await query("select 1 from post_call_transcripts where recording_id = $1", [v.recordingId])).toHaveLength(1);

    const bad = await storedVersion();
    await fake("/__fake/aai/faults", [{ status: 400 }]);
    await deliver(bad.envelope);
    expect(await jobRow(bad.envelope.dedupe_key!)).toMatchObject({ status: "dead" });
  });

  it("hands the job back to the container when the edge cannot presign, before any request", async () => {
    const v = await storedVersion();
    const result = await deliver(v.envelope, { ...EDGE_ENV, R2_SECRET_ACCESS_KEY: "" });
    expect(result.explicitAcks).toEqual(["m1"]);
    expect(await jobRow(v.envelope.dedupe_key!)).toMatchObject({ status: "pending", handed_back: true });
    expect(await aaiRequests()).toEqual([]);
    expect(logged(log, "job_handed_back")).toMatchObject([
      { reason: "the edge has no R2 S3 credentials (to presign the recording for AssemblyAI) or no WEBHOOK_BASE_URL" },
    ]);
  });

  it("presigns as AWS's published SigV4 example does", async () => {
    const url = await presignGet({
      url: new URL("https://examplebucket.s3.amazonaws.com/test.txt"),
      accessKeyId: "AKIAIOSFODNN7EXAMPLE",
      secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
      region: "us-east-1",
      expiresSeconds: 86400,
      now: new Date("2013-05-24T00:00:00Z"),
    });
    expect(url).toBe(
      "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
    );
  });
});

describe("assemblyai.event at the edge", { timeout: 30_000 }, () => {
  /** A submitted transcript, and the AssemblyAI webhook for it stored as the receiver stores it. */
  async function webhook(status: "completed" | "error") {
    const v = await storedVersion();
    await deliver(v.envelope);
    const [submit] = await aaiRequests();
    expect(submit).toBeDefined();
    const [row] = await query<{ id: string }>("select assemblyai_transcript_id as id from post_call_transcripts where recording_id = $1", [
      v.recordingId,
    ]);
    const transcriptId = row!.id;
    const db = new Client({ connectionString: env.HYPERDRIVE.connectionString });
    db.on("error", () => {});
    await db.connect();
    await storeInInbox(db, "assemblyai", new TextEncoder().encode(JSON.stringify({ transcript_id: transcriptId, status })), false).finally(
      () => db.end(),
    );
    const eventId = `${transcriptId}:${status}`;
    const envelope: JobEnvelope = {
      kind: "assemblyai.event",
      payload: { provider: "assemblyai", event_id: eventId },
      dedupe_key: `webhook:assemblyai:${eventId}`,
    };
    return { ...v, transcriptId, envelope };
  }

  it("stores the finished transcript, its usage and its call event once, from the inbox row", async () => {
    const w = await webhook("completed");
    const words = [{ text: "Hello", start: 0, end: 400, confidence: 0.98, speaker: "A", channel: "1" }];
    const utterances = [{ text: "Hello", start: 0, end: 400, confidence: 0.98, speaker: "A", channel: "1", words }];
    await fake("/__fake/aai/finish", {
      id: w.transcriptId,
      status: "completed",
      text: "Hello",
      words,
      utterances,
      language_code: "en",
      audio_duration: 12.3456,
    });
    expect((await deliver(w.envelope)).explicitAcks).toEqual(["m1"]);
    expect((await deliver(w.envelope)).explicitAcks).toEqual(["m1"]);
    const [stored] = await query(
      "select status, text, words, utterances, language_code, audio_duration_ms::int as ms, error, completed_at is not null as completed from post_call_transcripts where assemblyai_transcript_id = $1",
      [w.transcriptId],
    );
    expect(stored).toEqual({
      status: "completed",
      text: "Hello",
      words,
      utterances,
      language_code: "en",
      ms: 12346,
      error: null,
      completed: true,
    });
    const events = await query<{ kind: string; data: unknown }>("select kind, data from call_events where call_id = $1", [w.callId]);
    expect(events).toEqual([{ kind: "transcript.post_call", data: { recording_id: w.recordingId, version: 1, status: "completed" } }]);
    const usage = await query(
      "select organisation_id::text as org, call_id::text as call, vendor, unit, quantity::text, metadata from usage_ledger where source_key = $1",
      [`assemblyai:transcript:${w.transcriptId}`],
    );
    expect(usage).toEqual([
      {
        org: w.orgId,
        call: w.callId,
        vendor: "assemblyai",
        unit: "async_audio_seconds",
        quantity: "12.3456",
        metadata: { recording_id: w.recordingId, version: 1, transcript_id: w.transcriptId },
      },
    ]);
    const requests = await aaiRequests();
    expect(requests.map((r) => `${r.method} ${r.path}`)).toEqual([`GET /v2/transcript/${w.transcriptId.replaceAll("-", "%2D")}`]);
    expect(await jobRow(w.envelope.dedupe_key!)).toMatchObject({ status: "done" });
    const [inbox] = await query(
      "select processed_at is not null as processed from webhook_inbox where provider = 'assemblyai' and event_id = $1",
      [w.envelope.payload.event_id],
    );
    expect(inbox).toEqual({ processed: true });
  });

  it("stores AssemblyAI's error", async () => {
    const w = await webhook("error");
    await fake("/__fake/aai/finish", { id: w.transcriptId, status: "error", error: "Audio file could not be decoded" });
    await deliver(w.envelope);
    const [stored] = await query("select status, error from post_call_transcripts where assemblyai_transcript_id = $1", [w.transcriptId]);
    expect(stored).toEqual({ status: "error", error: "Audio file could not be decoded" });
  });

  it("retries a transcript that is still processing, and a webhook that overtook its submission", async () => {
    const w = await webhook("completed");
    expect((await deliver(w.envelope)).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(logged(log, "job_retry")).toMatchObject([{ error: `transcript ${w.transcriptId} is still queued` }]);
    expect(await query("select 1 from call_events where call_id = $1", [w.callId])).toEqual([]);

    const db = new Client({ connectionString: env.HYPERDRIVE.connectionString });
    db.on("error", () => {});
    await db.connect();
    await storeInInbox(
      db,
      "assemblyai",
      new TextEncoder().encode(JSON.stringify({ transcript_id: "aai-not-yet", status: "completed" })),
      false,
    ).finally(() => db.end());
    const early: JobEnvelope = {
      kind: "assemblyai.event",
      payload: { provider: "assemblyai", event_id: "aai-not-yet:completed" },
      dedupe_key: "webhook:assemblyai:aai-not-yet:completed",
    };
    expect((await deliver(early)).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(await jobRow(early.dedupe_key!)).toMatchObject({
      status: "pending",
      last_error: "edge: no submitted transcript aai-not-yet yet",
    });
  });
});
