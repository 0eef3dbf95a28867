// Owns the `recording.import` job at the edge, as the container's src/jobs/recording_import.rs:
// the Telnyx recording behind `call.recording.saved` (`recording_urls.wav`, else `.mp3`) is
// downloaded — https from RECORDINGS_IMPORT_HOSTS only, redirects followed (at most 3) only to
// such a source — sniffed, given the next version of its recording (the same immutable key),
// streamed into R2 through the binding (src/recordings.ts `streamToR2`: counted, hashed, never
// held whole), and then marked stored with its `recording.transcribe` follow-up and the job's
// `done` in one transaction fenced by the edge's lease on the job row (src/jobs.ts
// `withLease`). A recording already stored under its Telnyx id is not downloaded again.
//
// Faults: a 403/404 from the link is permanent (Telnyx links expire after 10 minutes); any
// other non-2xx answer, a connection error, a body that stalls for the idle limit or ends
// short of its Content-Length release the reserved version (and delete the object if one
// was written) and throw, so the Queue retries with the container's backoff. The container
// also retries 3 times inside one run; the edge leaves every retry to the Queue.

import type { Env } from "./env";
import { type JobContext, type JobEnvelope, type JobHandler, Permanent, withLease } from "./jobs";
import { byTelnyxId, markStored, release, reserve, type StoreLimits, StoreError, sniffStream, streamToR2, type Target } from "./recordings";

/** recording_import.rs `RecordingImportJob`. */
interface ImportPayload {
  call_id: string | null;
  organisation_id: string;
  telnyx_recording_id: string;
  urls: unknown;
  channels: string | null;
  leg: string | null;
}

const str = (v: unknown): v is string => typeof v === "string";
const optStr = (v: unknown): string | null => (typeof v === "string" ? v : null);

function readPayload(payload: Record<string, unknown>): ImportPayload {
  const { call_id, organisation_id, telnyx_recording_id, urls, channels, leg } = payload;
  if (!str(organisation_id) || !str(telnyx_recording_id) || (call_id != null && !str(call_id))) {
    throw new Permanent("payload is not a recording.import job");
  }
  return {
    call_id: optStr(call_id),
    organisation_id,
    telnyx_recording_id,
    urls: urls ?? null,
    channels: optStr(channels),
    leg: optStr(leg),
  };
}

/** Bounded integer variable as the container reads it (unset or invalid: the default). */
function bounded(raw: string | undefined, fallback: number, min: number, max: number): number {
  const n = Number((raw ?? "").trim());
  return raw !== undefined && raw.trim() !== "" && Number.isInteger(n) ? Math.min(Math.max(n, min), max) : fallback;
}

const MIB = 1024 * 1024;

/** The container's limits for an import (recording_import.rs `limits`). */
export function importLimits(env: Env, idleMs = 60_000): StoreLimits {
  return {
    maxBytes: bounded(env.RECORDINGS_MAX_BYTES, 2048 * MIB, 1, 5120 * MIB),
    partSize: bounded(env.RECORDINGS_PART_SIZE_BYTES, 8 * MIB, 5 * MIB, 512 * MIB),
    idleMs,
  };
}

/**
 * recording_import.rs `Sources`: https on RECORDINGS_IMPORT_HOSTS (a host or a subdomain of
 * one), plus http(s) on loopback in development (the simulators). Returns why a URL is refused.
 */
export function refuseSource(url: URL, env: Env): string | null {
  const hosts = (env.RECORDINGS_IMPORT_HOSTS ?? "telnyx.com,s3.amazonaws.com")
    .split(",")
    .map((h) => h.trim().replace(/^\.+/, "").toLowerCase())
    .filter((h) => h !== "");
  const host = url.hostname.toLowerCase();
  const loopback = host === "localhost" || /^127\.\d+\.\d+\.\d+$/.test(host) || host === "[::1]";
  const strict = env.APP_ENV === "staging" || env.APP_ENV === "production";
  if (!strict && loopback && (url.protocol === "http:" || url.protocol === "https:")) return null;
  if (url.protocol !== "https:") return `recordings are imported over https only, not ${url.protocol.replace(/:$/, "")}`;
  // An IP literal is never a listed host.
  const name = host.replace(/\.$/, "");
  const isIp = /^\d+\.\d+\.\d+\.\d+$/.test(name) || name.startsWith("[");
  if (!isIp && hosts.some((h) => name === h || name.endsWith(`.${h}`))) return null;
  return `the recording host ${url.hostname || "(none)"} is not in RECORDINGS_IMPORT_HOSTS`;
}

/** GET with redirects followed by hand, at most 3, each only to an allowed source. */
async function download(url: URL, env: Env): Promise<Response> {
  let current = url;
  for (let hops = 0; ; hops++) {
    let response: Response;
    try {
      response = await fetch(current.href, { redirect: "manual", headers: { "user-agent": "callbridge-edge" } });
    } catch (err) {
      throw new Error(`downloading the recording: ${err instanceof Error ? err.message : String(err)}`);
    }
    const location = response.headers.get("location");
    if (response.status < 300 || response.status >= 400 || location === null) return response;
    await response.body?.cancel();
    if (hops >= 3) throw new Permanent("the recording URL redirected: too many redirects");
    let next: URL;
    try {
      next = new URL(location, current);
    } catch {
      throw new Permanent("the recording URL redirected to something that is not a URL");
    }
    const refused = refuseSource(next, env);
    if (refused !== null) throw new Permanent(`the recording URL redirected: ${refused}`);
    current = next;
  }
}

/** The handler, with the idle limit the tests shorten. */
export function makeRecordingImport(idleMs = 60_000): JobHandler {
  return async (ctx: JobContext) => {
    const job = readPayload(ctx.envelope.payload);
    const urls = job.urls;
    const link =
      typeof urls === "object" && urls !== null && !Array.isArray(urls)
        ? [(urls as Record<string, unknown>).wav, (urls as Record<string, unknown>).mp3].find(str)
        : undefined;
    if (link === undefined) throw new Permanent("call.recording.saved has no recording_urls");
    await withLease(ctx.db, ctx.envelope, async (lease) => {
      const already = await byTelnyxId(ctx.db, job.telnyx_recording_id);
      if (already?.stored != null) {
        console.log(JSON.stringify({ event: "recording_already_imported", telnyx_recording_id: job.telnyx_recording_id }));
        await lease.complete(ctx.db);
        return;
      }
      let source: URL;
      try {
        source = new URL(link);
      } catch {
        throw new Permanent("the recording URL is not a URL");
      }
      const refused = refuseSource(source, ctx.env);
      if (refused !== null) throw new Permanent(refused);
      const limits = importLimits(ctx.env, idleMs);

      const response = await download(source, ctx.env);
      if (response.status === 403 || response.status === 404) {
        await response.body?.cancel();
        throw new Permanent(`the recording URL answered ${response.status} (expired? Telnyx links last 10 minutes)`);
      }
      if (!response.ok || response.body === null) {
        await response.body?.cancel();
        throw new Error(`the recording URL answered ${response.status}`);
      }
      const declared = response.headers.get("content-length");
      const length = declared !== null && /^\d+$/.test(declared) ? Number(declared) : null;
      const reader = response.body.getReader();
      let sniffed: Awaited<ReturnType<typeof sniffStream>>;
      try {
        sniffed = await sniffStream(reader, limits);
      } catch (err) {
        await reader.cancel().catch(() => {});
        if (err instanceof StoreError && !err.retry) throw new Permanent("the recording URL did not return audio");
        throw err;
      }

      // Looked up again: a failed attempt may have released what the last one made.
      const existing = await byTelnyxId(ctx.db, job.telnyx_recording_id);
      if (existing?.stored != null) {
        await reader.cancel().catch(() => {});
        await lease.complete(ctx.db);
        return;
      }
      const target: Target =
        existing !== null
          ? { kind: "existing", organisationId: job.organisation_id, recordingId: existing.id }
          : {
              kind: "new",
              organisationId: job.organisation_id,
              callId: job.call_id,
              source: "telnyx",
              telnyxRecordingId: job.telnyx_recording_id,
              channels: job.channels,
              leg: job.leg,
            };
      const reserved = await reserve(ctx.db, target, sniffed.format);
      if (reserved === null) throw new Permanent("recording vanished");

      let stored: Awaited<ReturnType<typeof streamToR2>>;
      try {
        stored = await streamToR2(ctx.env.RECORDINGS, reserved.objectKey, sniffed.format, sniffed.prefix, reader, length, limits);
      } catch (err) {
        await release(ctx.db, reserved.recordingId, reserved.version);
        if (err instanceof StoreError && !err.retry) throw new Permanent(err.message);
        throw err;
      }

      const transcribe: JobEnvelope = {
        kind: "recording.transcribe",
        payload: { recording_id: reserved.recordingId, version: reserved.version },
        dedupe_key: `recording.transcribe:${reserved.recordingId}:${reserved.version}`,
      };
      await ctx.db.query("begin");
      try {
        await markStored(ctx.db, reserved.recordingId, reserved.version, stored.size, stored.sha256);
        const inserted = await ctx.db.query(
          `insert into jobs (kind, payload, dedupe_key, run_at, max_attempts)
           values ($1, $2, $3, now(), 10)
           on conflict (dedupe_key) where dedupe_key is not null do nothing
           returning id`,
          [transcribe.kind, JSON.stringify(transcribe.payload), transcribe.dedupe_key],
        );
        await lease.complete(ctx.db);
        await ctx.db.query("commit");
        if (inserted.rowCount === 1) ctx.enqueued.push(transcribe);
      } catch (err) {
        await ctx.db.query("rollback").catch(() => {});
        // Nothing of this run committed: its version and object go, so no stored version is
        // left without its row (a lost lease means another runner is importing it).
        await release(ctx.db, reserved.recordingId, reserved.version).catch(() => {});
        await ctx.env.RECORDINGS.delete(reserved.objectKey).catch(() => {});
        throw err;
      }
      console.log(
        JSON.stringify({
          event: "recording_imported",
          recording_id: reserved.recordingId,
          version: reserved.version,
          bytes: stored.size,
          parts: stored.parts,
          peak_held_bytes: stored.peakHeldBytes,
        }),
      );
    });
  };
}

export const recordingImport: JobHandler = makeRecordingImport();
