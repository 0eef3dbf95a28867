// The edge's recording.import inside workerd, against the test database, miniflare's R2 and
// Queue, and the fake Telnyx recording server of test/fake-origin.js (S3-style presigned
// links, the container's sim faults): the whole chain from call.recording.saved to a stored
// version and its transcription job; the same immutable key, rows and checksum as the
// container; the faults (Telnyx answering 500, a truncated body, a stalled body, a slow one)
// retried without duplicates; refusals (expired link, a host or a redirect off the allow-list,
// not audio); the lease that fences the edge's commit against another runner.
import { createExecutionContext, createMessageBatch, getQueueResult } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { Client } from "pg";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import type { Env } from "../src/env";
import { storeInInbox } from "../src/inbox";
import { consumeJobs, type JobEnvelope, type JobRegistry } from "../src/jobs";
import { compileWork, type WorkManifest } from "../src/manifest";
import { JOB_HANDLERS } from "../src/queue";
import { makeRecordingImport, refuseSource } from "../src/recording-import";
import { GATHER_BYTES, sniffFormat, uuidv7, versionKey } from "../src/recordings";
import { wavSlice } from "./fake-origin.js";
import { logged, query } from "./helpers";

const EDGE_OWNS: WorkManifest = compileWork({
  jobs: [
    { kind: "telnyx.event", owner: "edge" },
    { kind: "recording.import", owner: "edge" },
  ],
});
const MIB = 1024 * 1024;
/** The handler with a 300 ms idle limit, so a stalled body fails fast. */
const FAST: JobRegistry = { ...JOB_HANDLERS, "recording.import": makeRecordingImport(300) };

let log: MockInstance<typeof console.log>;
beforeEach(async () => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
  await downloads(); // forget earlier tests' downloads
});
afterEach(() => vi.restoreAllMocks());

let seq = 0;
const unique = (prefix: string) => `${prefix}-${Date.now()}-${++seq}`;

/** Registers a fake Telnyx recording of `bytes` bytes and its faults; its presigned link. */
async function telnyxRecording(bytes: number, faults: Record<string, unknown>[] = [], ttl = 600): Promise<{ name: string; url: string }> {
  const name = `${unique("rec")}.wav`;
  const res = await fetch("http://origin.test:8080/__fake/recordings", {
    method: "POST",
    body: JSON.stringify({ name, bytes, faults, ttl }),
  });
  return { name, url: ((await res.json()) as { url: string }).url };
}

async function downloads(): Promise<{ name: string; status: number }[]> {
  return (await fetch("http://origin.test:8080/__fake/recordings/requests")).json();
}

async function answeredCall(): Promise<{ callId: string; orgId: string; ccid: string }> {
  const ccid = unique("ccid");
  const [org] = await query<{ id: string }>(
    "insert into organisations (id, name) values (gen_random_uuid(), 'Imports') returning id::text as id",
  );
  const [call] = await query<{ id: string }>(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, telnyx_call_control_id)
     values (gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'answered', $2) returning id::text as id`,
    [org!.id, ccid],
  );
  return { callId: call!.id, orgId: org!.id, ccid };
}

/** The import job row the container's telnyx.event would enqueue; its envelope. */
async function importJob(url: string, call: { callId: string; orgId: string }): Promise<JobEnvelope> {
  const telnyxId = unique("telnyx-rec");
  const payload = {
    call_id: call.callId,
    organisation_id: call.orgId,
    telnyx_recording_id: telnyxId,
    urls: { wav: url },
    channels: "dual",
    leg: null,
  };
  const envelope: JobEnvelope = { kind: "recording.import", payload, dedupe_key: `recording.import:${telnyxId}`, max_attempts: 6 };
  await query("insert into jobs (kind, payload, dedupe_key, run_at, max_attempts) values ($1, $2, $3, now(), 6)", [
    envelope.kind,
    JSON.stringify(payload),
    envelope.dedupe_key,
  ]);
  return envelope;
}

async function deliver(body: unknown, attempts = 1, handlers: JobRegistry = FAST, environment: Env = env) {
  const batch = createMessageBatch("callbridge-webhooks", [{ id: "m1", timestamp: new Date(), attempts, body }]);
  const ctx = createExecutionContext();
  await consumeJobs(batch, environment, EDGE_OWNS, handlers, () => 1);
  return getQueueResult(batch, ctx);
}

const jobRow = (key: string) =>
  query<{ status: string; attempts: number; last_error: string | null; locked_by: string | null }>(
    "select status, attempts, last_error, locked_by from jobs where dedupe_key = $1",
    [key],
  ).then((rows) => rows[0]);

/** Every recording (and version) made for a Telnyx recording id. */
const versions = (telnyxId: string) =>
  query<{ recording_id: string; version: number; status: string; object_key: string; size_bytes: string | null; sha256: string | null }>(
    `select r.id::text as recording_id, v.version, v.status, v.object_key, v.size_bytes::text, v.sha256
     from recordings r join recording_versions v on v.recording_id = r.id
     where r.telnyx_recording_id = $1 order by v.version`,
    [telnyxId],
  );

const hex = (buffer: ArrayBuffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
const expectedSha = async (length: number) => hex(await crypto.subtle.digest("SHA-256", wavSlice(length, 0, length)));

// Downloads and R2 writes take seconds on a loaded machine.
describe("recording.import at the edge", { timeout: 30_000 }, () => {
  it("imports end to end from call.recording.saved: the container's key, rows and checksum, the transcription job, once", async () => {
    const call = await answeredCall();
    const size = 300 * 1024 + 17;
    const { url } = await telnyxRecording(size);
    const telnyxId = unique("telnyx-rec");
    const eventId = unique("evt");
    const body = JSON.stringify({
      data: {
        id: eventId,
        event_type: "call.recording.saved",
        occurred_at: "2026-12-06T09:00:00Z",
        payload: { call_control_id: call.ccid, recording_id: telnyxId, recording_urls: { wav: url }, channels: "dual" },
      },
    });
    const db = new Client({ connectionString: env.HYPERDRIVE.connectionString });
    db.on("error", () => {});
    await db.connect();
    await storeInInbox(db, "telnyx", new TextEncoder().encode(body), false).finally(() => db.end());
    const event = { kind: "telnyx.event", payload: { provider: "telnyx", event_id: eventId }, dedupe_key: `webhook:telnyx:${eventId}` };
    expect((await deliver(event)).explicitAcks).toEqual(["m1"]);
    // The telnyx.event run sent the follow-up to the Queue itself (recording.import is edge-owned).
    const [imp] = await query<{ payload: JobEnvelope["payload"] }>("select payload from jobs where dedupe_key = $1", [
      `recording.import:${telnyxId}`,
    ]);
    const envelope: JobEnvelope = { kind: "recording.import", payload: imp!.payload, dedupe_key: `recording.import:${telnyxId}` };

    expect((await deliver(envelope)).explicitAcks).toEqual(["m1"]);
    expect((await deliver(envelope)).explicitAcks).toEqual(["m1"]);

    const rows = await versions(telnyxId);
    expect(rows).toHaveLength(1);
    const [v] = rows;
    expect(v).toMatchObject({ version: 1, status: "stored", size_bytes: String(size), sha256: await expectedSha(size) });
    expect(v!.object_key).toBe(versionKey(call.orgId, call.callId, v!.recording_id, 1, "wav"));
    const [rec] = await query(
      "select source, channels, leg, call_id::text as call_id, organisation_id::text as org from recordings where id = $1",
      [v!.recording_id],
    );
    expect(rec).toEqual({ source: "telnyx", channels: "dual", leg: null, call_id: call.callId, org: call.orgId });
    const object = await env.RECORDINGS.get(v!.object_key);
    expect(object?.httpMetadata?.contentType).toBe("audio/wav");
    expect(new Uint8Array(await object!.arrayBuffer())).toEqual(wavSlice(size, 0, size));
    expect(await jobRow(envelope.dedupe_key!)).toMatchObject({ status: "done", attempts: 1 });
    const [transcribe] = await query<{ payload: unknown; status: string; max_attempts: number }>(
      "select payload, status, max_attempts from jobs where dedupe_key = $1",
      [`recording.transcribe:${v!.recording_id}:1`],
    );
    expect(transcribe).toEqual({ payload: { recording_id: v!.recording_id, version: 1 }, status: "pending", max_attempts: 10 });
    // The second delivery found the job done: one download in all.
    expect(await downloads()).toHaveLength(1);
    expect(logged(log, "recording_imported")).toMatchObject([{ bytes: size, parts: 0 }]);
  });

  it("Telnyx answering 500 is retried with backoff and leaves nothing; the retry imports version 1", async () => {
    const call = await answeredCall();
    const { url } = await telnyxRecording(70_000, [{ status: 500 }]);
    const envelope = await importJob(url, call);
    const first = await deliver(envelope);
    expect(first.retryMessages).toEqual([{ msgId: "m1" }]);
    expect(await versions(envelope.payload.telnyx_recording_id as string)).toEqual([]);
    expect(await jobRow(envelope.dedupe_key!)).toMatchObject({
      status: "pending",
      attempts: 1,
      last_error: "edge: the recording URL answered 500",
    });
    expect((await deliver(envelope, 2)).explicitAcks).toEqual(["m1"]);
    const rows = await versions(envelope.payload.telnyx_recording_id as string);
    expect(rows).toMatchObject([{ version: 1, status: "stored", sha256: await expectedSha(70_000) }]);
    expect(await jobRow(envelope.dedupe_key!)).toMatchObject({ status: "done", attempts: 2 });
    expect((await downloads()).map((d) => d.status)).toEqual([500, 200]);
  });

  it("gives up after the kind's max_attempts (6), where the container would, into the one dead-jobs list", async () => {
    const call = await answeredCall();
    const { url } = await telnyxRecording(70_000, [{ status: 503 }]);
    const envelope = await importJob(url, call);
    const result = await deliver(envelope, 6);
    expect(result.explicitAcks).toEqual(["m1"]);
    expect(await jobRow(envelope.dedupe_key!)).toMatchObject({
      status: "dead",
      last_error: "edge: the recording URL answered 503 (attempt 6 of 6)",
    });
  });

  it("a truncated body releases the version and its object; the retry stores the whole file under the same key", async () => {
    const call = await answeredCall();
    const size = 400_000;
    const { url } = await telnyxRecording(size, [{ truncate: 150_000 }]);
    const envelope = await importJob(url, call);
    expect((await deliver(envelope)).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(await versions(envelope.payload.telnyx_recording_id as string)).toEqual([]);
    expect(await query("select 1 from recordings where telnyx_recording_id = $1", [envelope.payload.telnyx_recording_id])).toEqual([]);
    const listed = await env.RECORDINGS.list({ prefix: `orgs/${call.orgId}/` });
    expect(listed.objects).toEqual([]);
    expect((await deliver(envelope, 2)).explicitAcks).toEqual(["m1"]);
    const [v] = await versions(envelope.payload.telnyx_recording_id as string);
    expect(v).toMatchObject({ version: 1, size_bytes: String(size), sha256: await expectedSha(size) });
    expect((await env.RECORDINGS.list({ prefix: `orgs/${call.orgId}/` })).objects.map((o) => o.key)).toEqual([v!.object_key]);
  });

  it("a body that stalls past the idle limit is given up and retried; a slow but steady one is imported", async () => {
    const call = await answeredCall();
    const size = 300_000;
    const { url } = await telnyxRecording(size, [{ stall: 100_000 }, { delayMs: 40 }]);
    const envelope = await importJob(url, call);
    const first = await deliver(envelope);
    expect(first.retryMessages).toEqual([{ msgId: "m1" }]);
    expect(logged(log, "job_retry")).toMatchObject([{ error: "no bytes arrived for 300 ms" }]);
    expect(await versions(envelope.payload.telnyx_recording_id as string)).toEqual([]);
    expect((await env.RECORDINGS.list({ prefix: `orgs/${call.orgId}/` })).objects).toEqual([]);
    expect((await deliver(envelope, 2)).explicitAcks).toEqual(["m1"]);
    expect(await versions(envelope.payload.telnyx_recording_id as string)).toMatchObject([{ version: 1, sha256: await expectedSha(size) }]);
  });

  it("a download without Content-Length goes up as a multipart upload of equal parts, one part buffer held", async () => {
    const call = await answeredCall();
    const size = 11 * MIB + 5;
    const { url } = await telnyxRecording(size, [{ chunked: true }]);
    const envelope = await importJob(url, call);
    const small: Env = { ...env, RECORDINGS_PART_SIZE_BYTES: String(5 * MIB) };
    expect((await deliver(envelope, 1, FAST, small)).explicitAcks).toEqual(["m1"]);
    const [v] = await versions(envelope.payload.telnyx_recording_id as string);
    expect(v).toMatchObject({ size_bytes: String(size), sha256: await expectedSha(size) });
    expect(logged(log, "recording_imported")).toMatchObject([{ bytes: size, parts: 3, peak_held_bytes: 5 * MIB }]);
    const object = await env.RECORDINGS.head(v!.object_key);
    expect(object?.size).toBe(size);
  }, 60_000);

  it("a large download with Content-Length streams through: the most held at once is one gathered chunk", async () => {
    const call = await answeredCall();
    const size = 32 * MIB;
    const { url } = await telnyxRecording(size);
    const envelope = await importJob(url, call);
    expect((await deliver(envelope)).explicitAcks).toEqual(["m1"]);
    const [v] = await versions(envelope.payload.telnyx_recording_id as string);
    expect(v).toMatchObject({ size_bytes: String(size), status: "stored" });
    const [imported] = logged(log, "recording_imported");
    expect(imported).toMatchObject({ bytes: size, parts: 0 });
    // Reads (at most what the server sent, 64 KiB) are joined up to GATHER_BYTES: more than one
    // read at a time, never more than the gather size and one read — not the 32 MiB file.
    expect(imported!.peak_held_bytes as number).toBeGreaterThan(64 * 1024);
    expect(imported!.peak_held_bytes as number).toBeLessThanOrEqual(GATHER_BYTES + 64 * 1024);
  }, 60_000);

  it("refuses, before any download and for good: a host off the allow-list, plain http, a link that expired, a redirect elsewhere, not audio", async () => {
    const call = await answeredCall();
    const offList = await importJob("https://metadata.internal.example/latest/meta-data", call);
    expect((await deliver(offList)).explicitAcks).toEqual(["m1"]);
    expect(await jobRow(offList.dedupe_key!)).toMatchObject({
      status: "dead",
      last_error: "edge: the recording host metadata.internal.example is not in RECORDINGS_IMPORT_HOSTS",
    });
    const plain = await importJob("http://recordings.telnyx.com/a.wav", call);
    await deliver(plain);
    expect(await jobRow(plain.dedupe_key!)).toMatchObject({
      status: "dead",
      last_error: "edge: recordings are imported over https only, not http",
    });
    expect(await downloads()).toEqual([]);

    const expired = await telnyxRecording(1000, [], -1);
    const expiredJob = await importJob(expired.url, call);
    await deliver(expiredJob);
    expect((await jobRow(expiredJob.dedupe_key!))?.last_error).toMatch(/answered 403 \(expired\?/);

    const redirected = await telnyxRecording(1000, [{ redirect: "https://169.254.169.254/latest/meta-data/" }]);
    const redirectJob = await importJob(redirected.url, call);
    await deliver(redirectJob);
    expect((await jobRow(redirectJob.dedupe_key!))?.last_error).toMatch(/redirected: the recording host 169.254.169.254 is not in/);
    expect(await query("select 1 from recordings where organisation_id = $1", [call.orgId])).toEqual([]);

    expect(sniffFormat(new TextEncoder().encode("<?xml version"))).toBeNull();
    expect(refuseSource(new URL("https://telephony-recorder-prod.s3.amazonaws.com/a.wav"), env)).toBeNull();
    expect(refuseSource(new URL("https://s3.amazonaws.com.evil.example/a.wav"), env)).not.toBeNull();
    expect(refuseSource(new URL("https://evilamazonaws.com/a.wav"), env)).not.toBeNull();
    expect(refuseSource(new URL("http://127.0.0.1:9000/a.wav"), env)).toBeNull();
    expect(refuseSource(new URL("http://127.0.0.1:9000/a.wav"), { ...env, APP_ENV: "production" })).not.toBeNull();
    expect(refuseSource(new URL("http://10.0.0.1/a.wav"), env)).not.toBeNull();
  });

  it("does not run a job another runner holds a live lease on, and a run whose lease was taken over commits nothing", async () => {
    const call = await answeredCall();
    const held = await importJob((await telnyxRecording(10_000)).url, call);
    await query(
      "update jobs set status = 'running', locked_by = 'worker-1', locked_until = now() + interval '60 seconds' where dedupe_key = $1",
      [held.dedupe_key],
    );
    expect((await deliver(held)).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(await downloads()).toEqual([]);
    expect(await jobRow(held.dedupe_key!)).toMatchObject({ status: "running", locked_by: "worker-1" });

    // Another runner takes the row over while the edge streams (its lease expired, say).
    const size = 200_000;
    const taken = await importJob((await telnyxRecording(size, [{ delayMs: 30 }])).url, call);
    const run = deliver(taken);
    for (let i = 0; i < 100; i++) {
      const row = await jobRow(taken.dedupe_key!);
      if (row?.status === "running") break;
      await new Promise((r) => setTimeout(r, 10));
    }
    await query("update jobs set locked_by = 'worker-2', locked_until = now() + interval '60 seconds' where dedupe_key = $1", [
      taken.dedupe_key,
    ]);
    expect((await run).retryMessages).toEqual([{ msgId: "m1" }]);
    expect(logged(log, "job_retry")[1]).toMatchObject({ error: `lost the lease on job ${taken.dedupe_key}` });
    expect(await versions(taken.payload.telnyx_recording_id as string)).toEqual([]);
    expect((await env.RECORDINGS.list({ prefix: `orgs/${call.orgId}/` })).objects).toEqual([]);
  });

  it("makes keys as the container's keys.rs does, and UUIDv7 recording ids", () => {
    const id = uuidv7(0x0192_3456_789a);
    expect(id).toMatch(/^01923456-789a-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(versionKey("o", null, "r", 2, "mp3")).toBe("orgs/o/calls/none/recordings/r/v2.mp3");
    expect(() => versionKey("o/..", null, "r", 1, "wav")).toThrow(/key segment/);
    expect(() => versionKey("o", null, "r", 0, "wav")).toThrow(/version must be 1 or more/);
  });
});
