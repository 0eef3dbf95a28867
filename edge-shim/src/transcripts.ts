// Owns the post-call transcript jobs at the edge, as the container's src/jobs/transcript_fetch.rs
// with src/providers/assemblyai_async.rs:
//
// - `recording.transcribe`: submits a stored version to AssemblyAI (`POST /v2/transcript`,
//   the bare key in `Authorization`) with `audio_url` = a presigned GET of its R2 object valid
//   RECORDINGS_TRANSCRIPTION_URL_SECS (src/presign.ts), the webhook
//   `WEBHOOK_BASE_URL/webhooks/assemblyai` with our auth header, `multichannel` for a
//   dual-channel recording (else `speaker_labels`), `language_detection`; then the
//   `post_call_transcripts` row and the job's `done` in one transaction fenced by the edge's
//   lease on the job row (src/jobs.ts `withLease`), so two runners never both submit. A
//   version already submitted is not submitted again. Handed back to the container when the
//   edge lacks what it needs (the AssemblyAI key or webhook secret, the R2 S3 credentials).
// - `assemblyai.event`: from `webhook_inbox` (the receiver's row): fetches
//   `GET /v2/transcript/{id}` and stores text, words, utterances, language and duration, the
//   async-audio usage entry and a `transcript.post_call` call event, with the inbox row's
//   `processed_at` and the job's `done`, in one transaction that starts by locking the inbox
//   row and does nothing when it is processed (a delivery to both sides has one effect).
//
// Each Queue delivery makes one request; the Queue's backoff replaces the container's three
// in-job attempts of the GET.

import type { Db } from "./db";
import type { Env } from "./env";
import { completeIn, HandBack, type JobContext, Permanent, withLease } from "./jobs";
import { objectUrl, presignGet } from "./presign";

/** src/providers/assemblyai_async.rs WEBHOOK_AUTH_HEADER. */
const WEBHOOK_AUTH_HEADER = "x-callbridge-webhook-secret";

/** AsyncError::is_permanent: a 4xx other than 408 and 429. */
const permanentStatus = (status: number) => status >= 400 && status < 500 && status !== 408 && status !== 429;

/** An AssemblyAI answer as the container's `decode` reads it; throws Permanent or a retryable Error. */
async function decode<T>(response: Response): Promise<T> {
  const body = await response.text();
  if (!response.ok) {
    const message = `AssemblyAI answered ${response.status}: ${body.slice(0, 500)}`;
    throw permanentStatus(response.status) ? new Permanent(message) : new Error(message);
  }
  try {
    return JSON.parse(body) as T;
  } catch (err) {
    throw new Error(`AssemblyAI answered something we cannot read: ${String(err)}`);
  }
}

const apiUrl = (env: Env, path: string) => `${(env.ASSEMBLYAI_API_BASE || "https://api.assemblyai.com").replace(/\/+$/, "")}${path}`;

/** Bounded integer variable as the container reads it (unset or invalid: the default). */
function bounded(raw: string | undefined, fallback: number, min: number, max: number): number {
  const n = Number((raw ?? "").trim());
  return raw !== undefined && raw.trim() !== "" && Number.isInteger(n) ? Math.min(Math.max(n, min), max) : fallback;
}

interface VersionRow {
  organisation_id: string;
  call_id: string | null;
  object_key: string;
  status: string;
  channels: string | null;
}

export async function recordingTranscribe({ env, db, envelope }: JobContext): Promise<void> {
  const { recording_id: recordingId, version } = envelope.payload;
  if (typeof recordingId !== "string" || !Number.isInteger(version)) throw new Permanent("payload is not a recording.transcribe job");
  if (!env.ASSEMBLYAI_API_KEY || !env.ASSEMBLYAI_WEBHOOK_SECRET) {
    throw new HandBack("ASSEMBLYAI_API_KEY or ASSEMBLYAI_WEBHOOK_SECRET is not set at the edge");
  }
  if (!env.R2_ENDPOINT || !env.R2_ACCESS_KEY_ID || !env.R2_SECRET_ACCESS_KEY || !env.R2_BUCKET || !env.WEBHOOK_BASE_URL) {
    throw new HandBack("the edge has no R2 S3 credentials (to presign the recording for AssemblyAI) or no WEBHOOK_BASE_URL");
  }
  await withLease(db, envelope, async (lease) => {
    const already = await db.query("select 1 from post_call_transcripts where recording_id = $1 and version = $2", [recordingId, version]);
    if ((already.rowCount ?? 0) > 0) {
      await lease.complete(db);
      return;
    }
    const row = (
      await db.query<VersionRow>(
        `select r.organisation_id::text as organisation_id, r.call_id::text as call_id, v.object_key, v.status, r.channels
         from recording_versions v join recordings r on r.id = v.recording_id
         where v.recording_id = $1 and v.version = $2`,
        [recordingId, version],
      )
    ).rows[0];
    if (row === undefined) throw new Permanent("recording version is gone (purged?)");
    if (row.status !== "stored") throw new Permanent("recording version is not stored");
    const audioUrl = await presignGet({
      url: objectUrl(env.R2_ENDPOINT, env.R2_BUCKET, row.object_key),
      accessKeyId: env.R2_ACCESS_KEY_ID,
      secretAccessKey: env.R2_SECRET_ACCESS_KEY,
      region: "auto",
      expiresSeconds: bounded(env.RECORDINGS_TRANSCRIPTION_URL_SECS, 86_400, 60, 7 * 86_400),
      now: new Date(),
    });
    const multichannel = row.channels === "dual";
    // SubmitRequest's fields in its order; `speaker_labels` only when true.
    const request: Record<string, unknown> = {
      audio_url: audioUrl,
      webhook_url: `${env.WEBHOOK_BASE_URL.replace(/\/+$/, "")}/webhooks/assemblyai`,
      webhook_auth_header_name: WEBHOOK_AUTH_HEADER,
      webhook_auth_header_value: env.ASSEMBLYAI_WEBHOOK_SECRET,
      multichannel,
      language_detection: true,
    };
    if (!multichannel) request.speaker_labels = true;
    let response: Response;
    try {
      response = await fetch(apiUrl(env, "/v2/transcript"), {
        method: "POST",
        headers: { authorization: env.ASSEMBLYAI_API_KEY, "content-type": "application/json" },
        body: JSON.stringify(request),
      });
    } catch (err) {
      throw new Error(`AssemblyAI request failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    const submitted = await decode<{ id?: unknown; status?: unknown }>(response);
    if (typeof submitted.id !== "string") throw new Error("AssemblyAI answered something we cannot read: no id");
    await db.query("begin");
    try {
      await db.query(
        `insert into post_call_transcripts
             (recording_id, version, call_id, organisation_id, assemblyai_transcript_id, status, multichannel)
         values ($1, $2, $3, $4, $5, 'submitted', $6)
         on conflict do nothing`,
        [recordingId, version, row.call_id, row.organisation_id, submitted.id, multichannel],
      );
      await lease.complete(db);
      await db.query("commit");
    } catch (err) {
      await db.query("rollback").catch(() => {});
      throw err;
    }
    console.log(JSON.stringify({ event: "post_call_transcript_submitted", recording_id: recordingId, transcript_id: submitted.id }));
  });
}

/** percent_encoding's NON_ALPHANUMERIC set: every byte but A–Z a–z 0–9 is escaped. */
function encodeNonAlphanumeric(text: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

interface Transcript {
  id?: unknown;
  status?: unknown;
  text?: unknown;
  words?: unknown;
  utterances?: unknown;
  language_code?: unknown;
  audio_duration?: unknown;
  error?: unknown;
}

export async function assemblyaiEvent({ env, db, envelope }: JobContext): Promise<void> {
  const eventId = envelope.payload.event_id;
  if (typeof eventId !== "string") throw new Permanent("payload has no event_id");
  if (!env.ASSEMBLYAI_API_KEY) throw new HandBack("ASSEMBLYAI_API_KEY is not set at the edge");
  const inbox = (
    await db.query<{ payload: Record<string, unknown> | null; processed: boolean }>(
      "select payload, processed_at is not null as processed from webhook_inbox where provider = 'assemblyai' and event_id = $1",
      [eventId],
    )
  ).rows[0];
  if (inbox === undefined) throw new Permanent(`inbox has no event ${eventId}`);
  if (inbox.processed) return completeIn(db, envelope);
  const transcriptId = inbox.payload?.transcript_id;
  if (typeof transcriptId !== "string") throw new Permanent("webhook has no transcript_id");
  const submitted = (
    await db.query<{ recording_id: string; version: number; call_id: string | null }>(
      "select recording_id::text as recording_id, version, call_id::text as call_id from post_call_transcripts where assemblyai_transcript_id = $1",
      [transcriptId],
    )
  ).rows[0];
  // The webhook can overtake our own insert after submitting: retried with backoff.
  if (submitted === undefined) throw new Error(`no submitted transcript ${transcriptId} yet`);

  let response: Response;
  try {
    response = await fetch(apiUrl(env, `/v2/transcript/${encodeNonAlphanumeric(transcriptId)}`), {
      headers: { authorization: env.ASSEMBLYAI_API_KEY },
    });
  } catch (err) {
    throw new Error(`AssemblyAI request failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  const transcript = await decode<Transcript>(response);
  const status = typeof transcript.status === "string" ? transcript.status : "";
  if (typeof transcript.id !== "string" || status === "") throw new Error("AssemblyAI answered something we cannot read: no id or status");
  if (status !== "completed" && status !== "error") throw new Error(`transcript ${transcriptId} is still ${status}`);

  await db.query("begin");
  try {
    await store(db, eventId, transcriptId, submitted, status, transcript);
    await db.query("commit");
  } catch (err) {
    await db.query("rollback").catch(() => {});
    throw err;
  }

  async function store(
    db: Db,
    eventId: string,
    transcriptId: string,
    submitted: { recording_id: string; version: number; call_id: string | null },
    status: string,
    transcript: Transcript,
  ): Promise<void> {
    // The row lock serialises runs of this event; `processed_at` says one already committed.
    const locked = await db.query<{ processed: boolean }>(
      "select processed_at is not null as processed from webhook_inbox where provider = 'assemblyai' and event_id = $1 for update",
      [eventId],
    );
    if (locked.rows[0]?.processed) return completeIn(db, envelope);
    const seconds =
      typeof transcript.audio_duration === "number" && Number.isFinite(transcript.audio_duration) ? transcript.audio_duration : null;
    const str = (v: unknown) => (typeof v === "string" ? v : null);
    let changed: number;
    if (status === "completed") {
      const result = await db.query(
        `update post_call_transcripts set status = 'completed', text = $2, words = $3,
                utterances = $4, language_code = $5, audio_duration_ms = $6, error = null,
                completed_at = coalesce(completed_at, now())
         where assemblyai_transcript_id = $1 and status = 'submitted'`,
        [
          transcriptId,
          str(transcript.text),
          JSON.stringify(Array.isArray(transcript.words) ? transcript.words : []),
          JSON.stringify(Array.isArray(transcript.utterances) ? transcript.utterances : []),
          str(transcript.language_code),
          // f64::round rounds half away from zero; durations are never negative.
          seconds === null ? null : Math.round(seconds * 1000),
        ],
      );
      changed = result.rowCount ?? 0;
    } else {
      const result = await db.query(
        `update post_call_transcripts set status = 'error', error = $2, completed_at = coalesce(completed_at, now())
         where assemblyai_transcript_id = $1 and status = 'submitted'`,
        [transcriptId, str(transcript.error) ?? "unknown error"],
      );
      changed = result.rowCount ?? 0;
    }
    if (changed === 1 && seconds !== null && seconds >= 0) {
      // usage::record for AssemblyAI's async audio seconds, in this transaction (one entry per
      // transcript: its source key), as the container bills it.
      await db.query(
        `insert into usage_ledger (organisation_id, call_id, leg_id, user_id, vendor, unit,
                                   quantity, source_key, occurred_at, metadata)
         select coalesce(p.organisation_id, c.organisation_id), p.call_id, null, c.created_by, 'assemblyai', 'async_audio_seconds',
                $2::float8::numeric, $3, now(), $4
         from post_call_transcripts p left join calls c on c.id = p.call_id
         where p.assemblyai_transcript_id = $1
         on conflict (source_key) do nothing`,
        [
          transcriptId,
          seconds,
          `assemblyai:transcript:${transcriptId}`,
          JSON.stringify({ recording_id: submitted.recording_id, version: submitted.version, transcript_id: transcriptId }),
        ],
      );
    }
    if (submitted.call_id !== null && changed === 1) {
      await db.query(
        `with next as (
             update calls set event_seq = event_seq + 1 where id = $1 returning event_seq
         ), inserted as (
             insert into call_events (call_id, seq, kind, data, occurred_at)
             select $1, event_seq, $2, $3, now() from next returning seq
         )
         select seq, pg_notify($4, $1::text || ':' || seq) from inserted`,
        [
          submitted.call_id,
          "transcript.post_call",
          JSON.stringify({ recording_id: submitted.recording_id, version: submitted.version, status }),
          "callbridge_call_events",
        ],
      );
    }
    await db.query("update webhook_inbox set processed_at = now() where provider = 'assemblyai' and event_id = $1", [eventId]);
    await completeIn(db, envelope);
  }
}
