// Owns the `call.max_duration` job at the edge, step for step as the container's
// src/jobs/call_max_duration.rs (ADR 0016): step `warn` speaks a notice into every live party
// of the call (`max-duration-warning:<key>`), step `hangup` hangs each up
// (`max-duration:<key>`), where `<key>` is `<call>:<role>` per live leg of an interpreted call
// or `<call>` for a one-leg call (src/calls/legs.rs `live_control_ids`). A call already ended
// is left alone, and so is a warning whose hang-up is due or done.
//
// Exactly once across both sides: the edge holds the job row's lease (src/jobs.ts
// `withLease`), so a row the container is running or has done is not run again here; the
// Telnyx commands go first with stable command ids (a repeat is a no-op at Telnyx); then the
// step's mark on the call (`max_duration_warned_at` / `_hangup_at`, set once), its call event
// (once, with the mark) and the row's `done` commit in one transaction fenced by the lease.
// Without TELNYX_API_KEY the job is handed back to the container before any effect.

import type { Db } from "./db";
import { HandBack, type JobContext, Permanent, withLease } from "./jobs";
import { hangup, speak, type TelnyxCommands } from "./telnyx-commands";

/** The container's `call_max_duration::WARNING_TEXT`. */
export const WARNING_TEXT = "This call has almost reached its maximum length and will end in one minute.";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** src/jobs/call_max_duration.rs `HANG_UP_DUE_SQL`. */
const HANG_UP_DUE_SQL = `select exists (select 1 from calls where id = $1::text::uuid and max_duration_hangup_at is not null)
        or exists (select 1 from jobs where kind = 'call.max_duration' and payload->>'call_id' = $1::text
                   and coalesce(payload->>'step', 'hangup') = 'hangup' and run_at <= now()) as due`;

const STEPS = {
  warn: { column: "max_duration_warned_at", kind: "call.max_duration_warning", prefix: "max-duration-warning" },
  hangup: { column: "max_duration_hangup_at", kind: "call.max_duration_reached", prefix: "max-duration" },
} as const;

/** The edge's Telnyx command client from the Worker's settings; null without an API key. */
export function telnyxCommands(env: { TELNYX_API_KEY?: string; TELNYX_API_BASE?: string }): TelnyxCommands | null {
  if (!env.TELNYX_API_KEY) return null;
  return { base: env.TELNYX_API_BASE || "https://api.telnyx.com/v2", apiKey: env.TELNYX_API_KEY };
}

/**
 * src/calls/legs.rs `live_control_ids`: the control ids reaching every live party of a call,
 * each with its command-id key; none for a call that is gone or ended.
 */
export async function liveControlIds(db: Db, callId: string): Promise<[string, string][]> {
  const call = (
    await db.query<{ status: string; interpreted: boolean; ccid: string | null }>(
      "select status, interpreted, telnyx_call_control_id as ccid from calls where id = $1",
      [callId],
    )
  ).rows[0];
  if (call === undefined || call.status === "ended" || call.status === "failed") return [];
  if (!call.interpreted) return call.ccid === null ? [] : [[call.ccid, callId]];
  const legs = await db.query<{ role: string; ccid: string | null; status: string }>(
    `select role, telnyx_call_control_id as ccid, status from call_legs where call_id = $1
     order by case role when 'agent' then 0 else 1 end`,
    [callId],
  );
  return legs.rows
    .filter((leg) => leg.status !== "ended" && leg.status !== "failed" && leg.ccid !== null)
    .map((leg) => [leg.ccid!, `${callId}:${leg.role}`]);
}

export async function callMaxDuration({ env, db, envelope }: JobContext): Promise<void> {
  const { call_id: callId, step: rawStep, limit_secs: limitSecs } = envelope.payload;
  // The container's MaxDurationJob: `step` defaults to `hangup`, `limit_secs` to none.
  const step = rawStep === undefined ? "hangup" : rawStep;
  if (typeof callId !== "string" || !UUID.test(callId) || (step !== "warn" && step !== "hangup")) {
    throw new Permanent("payload is not a call.max_duration job");
  }
  if (limitSecs !== undefined && limitSecs !== null && !(Number.isInteger(limitSecs) && (limitSecs as number) >= 0)) {
    throw new Permanent("payload is not a call.max_duration job: limit_secs");
  }
  const telnyx = telnyxCommands(env);
  if (telnyx === null) throw new HandBack("TELNYX_API_KEY is not set at the edge");
  const { column, kind, prefix } = STEPS[step];
  await withLease(db, envelope, async (lease) => {
    // Late enough that the hang-up is due or done (a backlog after an outage): no warning a
    // minute before an end that is already here, as the container (HANG_UP_DUE_SQL).
    const hungUp = step === "warn" && (await db.query<{ due: boolean }>(HANG_UP_DUE_SQL, [callId])).rows[0]?.due === true;
    const targets = hungUp ? [] : await liveControlIds(db, callId);
    for (const [ccid, key] of targets) {
      if (step === "warn") await speak(telnyx, ccid, `${prefix}:${key}`, WARNING_TEXT);
      else await hangup(telnyx, ccid, `${prefix}:${key}`);
    }
    await db.query("begin");
    try {
      // A call never dialled, gone or ended: nothing was sent and nothing is recorded, the
      // row is done (the container returns before its transaction; its row is then `done` too).
      if (targets.length > 0) {
        const marked = await db.query(`update calls set ${column} = now() where id = $1 and ${column} is null`, [callId]);
        if (marked.rowCount === 1) {
          await db.query(
            `with next as (
                 update calls set event_seq = event_seq + 1 where id = $1 returning event_seq
             ), inserted as (
                 insert into call_events (call_id, seq, kind, data, occurred_at)
                 select $1, event_seq, $2, $3, now() from next returning seq
             )
             select seq, pg_notify($4, $1::text || ':' || seq) from inserted`,
            [callId, kind, JSON.stringify({ limit_secs: limitSecs ?? null }), "callbridge_call_events"],
          );
          console.log(JSON.stringify({ event: "max_duration_enforced", call_id: callId, step }));
        }
      }
      await lease.complete(db);
      await db.query("commit");
    } catch (err) {
      await db.query("rollback").catch(() => {});
      throw err;
    }
  });
}
