// Owns the `telnyx.event` job at the edge: one verified Telnyx webhook (from `webhook_inbox`)
// applied to the call state machine, statement for statement as the container's
// src/jobs/telnyx_event.rs with src/calls/mod.rs `apply_lifecycle`, src/events.rs `append` and
// src/jobs/recording_import.rs `enqueue`. Exactly once: every write — the call row, its event
// log entry, the follow-up `recording.import` job, the inbox row's `processed_at` and the job
// row's `done` — commits in one transaction that starts by locking the inbox row, and a run
// that finds the row processed does nothing (so a delivery to both sides has one effect).
//
// Handed back to the container (before any write): an inbound call to answer (the answer
// command carries a media-stream URL signed with the container's secret) and an event of an
// interpreted call (its legs issue dial and hang-up commands). The edge sends no Telnyx
// command itself; the parity suite compares the commands each side leads to.

import type { Db } from "./db";
import { completeIn, HandBack, type JobContext, type JobEnvelope, Permanent } from "./jobs";
import { chronoText } from "./sessions";
import { decodeBase64Strict } from "./telnyx";

interface InboxRow {
  payload: { data?: { id?: unknown; event_type?: unknown; payload?: unknown } } | null;
  /** coalesce(occurred_at, received_at) as PostgreSQL text: sent back as-is, no precision lost. */
  at: string;
  /** The same instant as chrono's serde writes it (to_char, then chronoText). */
  at_utc: string;
  processed: boolean;
}

interface CallRow {
  id: string;
  organisation_id: string;
  direction: string;
  status: string;
  interpreted: boolean;
  answer_requested: boolean;
}

const CALL = "id::text, organisation_id::text, direction, status, interpreted, answer_requested_at is not null as answer_requested";

/** `uuid::Uuid::parse_str`'s four spellings: hyphenated, simple, braced, URN. */
const UUID = /^(?:urn:uuid:)?([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{12})$/;
const BRACED = /^\{([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}$/;

function parseUuid(text: string): string | null {
  const braced = BRACED.exec(text);
  const source = braced ? braced[1]! : text;
  const m = UUID.exec(source);
  if (!m) return null;
  // Hyphens all or none, as the uuid crate requires.
  const hyphens = (source.replace(/^urn:uuid:/, "").match(/-/g) ?? []).length;
  if (hyphens !== 0 && hyphens !== 4) return null;
  if (source.startsWith("urn:uuid:") && hyphens !== 4) return null;
  return m.slice(1, 6).join("-").toLowerCase();
}

/** `telnyx::decode_client_state`: strict base64 of JSON `{"call_id": uuid}`. */
export function decodeClientState(state: string): string | null {
  const bytes = decodeBase64Strict(state);
  if (bytes === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const id = (value as Record<string, unknown>).call_id;
  return typeof id === "string" ? parseUuid(id) : null;
}

/** The fields of `data.payload` the container copies into the call's event, in its order. */
const EVENT_FIELDS = ["hangup_cause", "hangup_source", "sip_hangup_cause", "stream_id", "failure_reason", "channels"];

export async function telnyxEvent({ db, envelope, enqueued }: JobContext): Promise<void> {
  const eventId = envelope.payload.event_id;
  if (typeof eventId !== "string") throw new Permanent("payload has no event_id");
  await db.query("begin");
  try {
    await apply(db, eventId);
    await db.query("commit");
  } catch (err) {
    await db.query("rollback").catch(() => {});
    throw err;
  }

  async function apply(db: Db, eventId: string): Promise<void> {
    const found = await db.query<InboxRow>(
      `select payload, coalesce(occurred_at, received_at)::text as at,
              to_char(coalesce(occurred_at, received_at) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') as at_utc,
              processed_at is not null as processed
       from webhook_inbox where provider = 'telnyx' and event_id = $1
       for update`,
      [eventId],
    );
    const row = found.rows[0];
    if (row === undefined) throw new Permanent(`inbox has no event ${eventId}`);
    if (row.processed) return finish();

    // `WebhookEvent::parse` of the stored envelope (already checked when it was stored).
    const data = row.payload?.data;
    const id = data?.id;
    const rawType = data?.event_type;
    if (typeof id !== "string" || typeof rawType !== "string") throw new Permanent("unparseable event: missing data.id");
    const type = rawType.replaceAll("_", ".");
    const payload = data?.payload;
    const field = (name: string): string | undefined => {
      if (typeof payload !== "object" || payload === null || Array.isArray(payload)) return undefined;
      const value = (payload as Record<string, unknown>)[name];
      return typeof value === "string" ? value : undefined;
    };

    const stateCallId = field("client_state") === undefined ? null : decodeClientState(field("client_state")!);
    // By client_state first; then, when that names no call, by call_control_id (the call's,
    // else one of its legs').
    let call: CallRow | undefined;
    if (stateCallId !== null) {
      call = (await db.query<CallRow>(`select ${CALL} from calls where id = $1`, [stateCallId])).rows[0];
    }
    if (call === undefined && field("call_control_id") !== undefined) {
      const ccid = field("call_control_id")!;
      call = (await db.query<CallRow>(`select ${CALL} from calls where telnyx_call_control_id = $1`, [ccid])).rows[0];
      if (call === undefined) {
        call = (
          await db.query<CallRow>(
            `select ${CALL} from calls where id = (select call_id from call_legs where telnyx_call_control_id = $1)`,
            [ccid],
          )
        ).rows[0];
      }
    }

    const direction = field("direction");
    const inboundStart = type === "call.initiated" && (direction === "incoming" || direction === "inbound");
    if (call === undefined) {
      if (inboundStart) throw new HandBack("an inbound call to route and answer");
      console.log(JSON.stringify({ event: "telnyx_event_ignored", reason: "a call we do not know", event_type: type, event_id: eventId }));
      return finish();
    }
    if (call.interpreted) throw new HandBack("an event of an interpreted call (its legs issue commands)");
    if (inboundStart && call.direction === "inbound" && !call.answer_requested) throw new HandBack("an inbound call to answer");

    await applyLifecycle(db, call.id, type, row.at, field);
    const updated = (await db.query<CallRow>(`select ${CALL} from calls where id = $1`, [call.id])).rows[0];
    if (updated === undefined) throw new Error("call vanished");
    const event: Record<string, unknown> = { telnyx_event_id: id, status: updated.status, occurred_at: chronoText(row.at_utc) };
    for (const name of EVENT_FIELDS) {
      const value = field(name);
      if (value !== undefined) event[name] = value;
    }
    await db.query(
      `with next as (
           update calls set event_seq = event_seq + 1 where id = $1 returning event_seq
       ), inserted as (
           insert into call_events (call_id, seq, kind, data, occurred_at)
           select $1, event_seq, $2, $3, $4 from next returning seq
       )
       select seq, pg_notify($5, $1::text || ':' || seq) from inserted`,
      [call.id, type, JSON.stringify(event), row.at, "callbridge_call_events"],
    );
    if (type === "call.recording.saved") {
      const followUp = await enqueueRecordingImport(db, updated, id, payload, field);
      if (followUp !== null) enqueued.push(followUp);
    }
    return finish();
  }

  async function finish(): Promise<void> {
    await db.query(
      `update webhook_inbox set processed_at = coalesce(processed_at, now())
       where provider = 'telnyx' and event_id = $1`,
      [eventId],
    );
    await completeIn(db, envelope);
  }
}

/** src/calls/mod.rs `apply_lifecycle` for the `calls` table, statement for statement. */
async function applyLifecycle(db: Db, id: string, type: string, at: string, field: (name: string) => string | undefined): Promise<void> {
  const f = (name: string) => field(name) ?? null;
  if (type === "call.initiated") {
    await db.query(
      `update calls set
          status = case when call_status_rank('initiated') > call_status_rank(status) then 'initiated' else status end,
          initiated_at = least(coalesce(initiated_at, $2), $2),
          telnyx_call_control_id = coalesce(telnyx_call_control_id, $3),
          telnyx_call_leg_id = coalesce(telnyx_call_leg_id, $4),
          telnyx_call_session_id = coalesce(telnyx_call_session_id, $5),
          updated_at = now()
       where id = $1`,
      [id, at, f("call_control_id"), f("call_leg_id"), f("call_session_id")],
    );
  } else if (type === "call.answered") {
    await db.query(
      `update calls set
          status = case when call_status_rank('answered') > call_status_rank(status) then 'answered' else status end,
          answered_at = least(coalesce(answered_at, $2), $2),
          updated_at = now()
       where id = $1`,
      [id, at],
    );
  } else if (type === "call.hangup") {
    await db.query(
      `update calls set
          status = case when status = 'failed' then status else 'ended' end,
          ended_at = coalesce(ended_at, $2),
          hangup_cause = coalesce(hangup_cause, $3),
          hangup_source = coalesce(hangup_source, $4),
          sip_hangup_cause = coalesce(sip_hangup_cause, $5),
          updated_at = now()
       where id = $1`,
      [id, at, f("hangup_cause"), f("hangup_source"), f("sip_hangup_cause")],
    );
  } else if (type.startsWith("streaming.")) {
    await db.query(
      `update calls set stream_state = $2, stream_state_at = $3, updated_at = now()
       where id = $1 and (stream_state_at is null or stream_state_at <= $3)`,
      [id, type.slice("streaming.".length), at],
    );
  }
}

/** src/jobs/recording_import.rs `enqueue` (and `telnyx_recording_id`). */
async function enqueueRecordingImport(
  db: Db,
  call: CallRow,
  eventId: string,
  payload: unknown,
  field: (name: string) => string | undefined,
): Promise<JobEnvelope | null> {
  const session = field("call_session_id");
  const started = field("recording_started_at");
  const recordingId =
    field("recording_id") ?? (session !== undefined && started !== undefined ? `${session}@${started}` : `event:${eventId}`);
  const urls =
    typeof payload === "object" && payload !== null && !Array.isArray(payload)
      ? ((payload as Record<string, unknown>).recording_urls ?? null)
      : null;
  const jobPayload = {
    call_id: call.id,
    organisation_id: call.organisation_id,
    telnyx_recording_id: recordingId,
    urls,
    channels: field("channels") ?? null,
    // The leg of an interpreted call; this path only runs one-leg calls (the rest is handed back).
    leg: null,
  };
  const envelope: JobEnvelope = {
    kind: "recording.import",
    payload: jobPayload,
    dedupe_key: `recording.import:${recordingId}`,
    max_attempts: 6,
  };
  const inserted = await db.query(
    `insert into jobs (kind, payload, dedupe_key, run_at, max_attempts)
     values ($1, $2, $3, now(), 6)
     on conflict (dedupe_key) where dedupe_key is not null do nothing
     returning id`,
    [envelope.kind, JSON.stringify(jobPayload), envelope.dedupe_key],
  );
  return inserted.rowCount === 1 ? envelope : null;
}
