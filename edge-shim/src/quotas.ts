// Owns the `usage.quotas` cron task at the edge, statement for statement as the container's
// src/usage/quota.rs `enforce` with src/cron.rs `enforce_quotas` (docs/USAGE.md, ADR 0037,
// ADR 0041): for each organisation with answered calls and a monthly quota, the month so far
// (the ledger priced with the price table by day, plus the seconds of legs answered and not
// ended), and for each of its answered calls at 80 % or 100 % of a quota the mark
// (`usage_quota_marks`, once) and its call event (`usage.quota_warning` /
// `usage.quota_reached`); at 100 % with `at_limit = end`, the announcement into each live party
// (`quota-announcement:<key>`), and once it had ANNOUNCEMENT_SECS, the hang-up
// (`quota-end:<key>`), then `hangup_at` and `usage.quota_ended` once.
//
// It runs inside the cron tick's transaction under the shared lock (ADR 0029): one runner
// across both sides, so a tick on each side has one effect. Telnyx commands carry the
// container's stable command ids; a tick rolled back after a command re-sends the same ids.
//
// The price table is the container's `USAGE_PRICES` (inline JSON only: the Worker has no
// files; default the documented table), with `USAGE_CURRENCY` and the default quotas
// (`USAGE_DEFAULT_MONTHLY_MINUTES`, `USAGE_DEFAULT_MONTHLY_SPEND`, `USAGE_DEFAULT_AT_LIMIT`).

import type { Db } from "./db";
import { liveControlIds, telnyxCommands } from "./max-duration";
import { hangup, speak } from "./telnyx-commands";

/** The container's `quota::ANNOUNCEMENT`. */
export const ANNOUNCEMENT = "Your organisation has reached its calling limit for this month. This call will now end.";
/** The container's `quota::ANNOUNCEMENT_SECS`. */
export const ANNOUNCEMENT_SECS = 8;

/** src/config/usage.rs DEFAULT_PRICES. */
const DEFAULT_PRICES = `[
  {"vendor": "telnyx", "unit": "call_seconds", "currency": "USD", "price": 0.007, "per": 60, "from": "2026-01-01"},
  {"vendor": "assemblyai", "unit": "streaming_seconds", "currency": "USD", "price": 0.15, "per": 3600, "from": "2026-01-01"},
  {"vendor": "assemblyai", "unit": "async_audio_seconds", "currency": "USD", "price": 0.15, "per": 3600, "from": "2026-01-01"},
  {"vendor": "deepl", "unit": "characters", "currency": "USD", "price": 25, "per": 1000000, "from": "2026-01-01"},
  {"vendor": "openai", "unit": "prompt_tokens", "currency": "USD", "price": 0.15, "per": 1000000, "from": "2026-01-01"},
  {"vendor": "openai", "unit": "completion_tokens", "currency": "USD", "price": 0.6, "per": 1000000, "from": "2026-01-01"},
  {"vendor": "elevenlabs", "unit": "characters", "currency": "USD", "price": 0.05, "per": 1000, "from": "2026-01-01"},
  {"vendor": "cache", "unit": "characters", "currency": "USD", "price": 0, "per": 1, "from": "2026-01-01"},
  {"vendor": "r2", "unit": "byte_days", "currency": "USD", "price": 0.015, "per": 30000000000, "from": "2026-01-01"},
  {"vendor": "r2", "unit": "downloads", "currency": "USD", "price": 0.36, "per": 1000000, "from": "2026-01-01"}
]`;

interface Price {
  vendor: string;
  unit: string;
  currency: string;
  price: number;
  per: number;
  /** `YYYY-MM-DD`, compared as text (the same order as the dates). */
  from: string;
}

const FIELDS = new Set(["vendor", "unit", "currency", "price", "per", "from"]);
const ISO_DAY = /^(\d{4})-(\d{2})-(\d{2})$/;

function validDay(text: string): boolean {
  const m = ISO_DAY.exec(text);
  if (!m) return false;
  const d = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  return d.toISOString().slice(0, 10) === text;
}

/** src/config/usage.rs `PriceTable::parse`: the same checks, newest first within vendor, unit and currency. */
export function parsePrices(text: string): Price[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`USAGE_PRICES: not a price table: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!Array.isArray(raw)) throw new Error("USAGE_PRICES: not a price table: not an array");
  const rows = raw.map((row: unknown): Price => {
    if (typeof row !== "object" || row === null || Array.isArray(row))
      throw new Error("USAGE_PRICES: not a price table: a row is not an object");
    const r = row as Record<string, unknown>;
    const unknown = Object.keys(r).find((k) => !FIELDS.has(k));
    if (unknown !== undefined) throw new Error(`USAGE_PRICES: not a price table: unknown field \`${unknown}\``);
    const { vendor, unit, currency, price, from } = r;
    const per = r.per === undefined ? 1 : r.per;
    if (
      typeof vendor !== "string" ||
      typeof unit !== "string" ||
      typeof currency !== "string" ||
      typeof price !== "number" ||
      typeof per !== "number"
    )
      throw new Error("USAGE_PRICES: not a price table: vendor, unit, currency, price and per have the wrong types");
    if (typeof from !== "string" || !validDay(from)) throw new Error("USAGE_PRICES: not a price table: from is not a YYYY-MM-DD day");
    if (vendor === "" || unit === "") throw new Error("USAGE_PRICES: every row needs a vendor and a unit");
    if (!/^[A-Z]{3}$/.test(currency)) throw new Error(`USAGE_PRICES: ${vendor}/${unit}: currency must be an ISO 4217 code like USD`);
    if (!(Number.isFinite(price) && price >= 0)) throw new Error(`USAGE_PRICES: ${vendor}/${unit}: price must be 0 or more`);
    if (!(Number.isFinite(per) && per > 0)) throw new Error(`USAGE_PRICES: ${vendor}/${unit}: per must be more than 0`);
    return { vendor, unit, currency, price, per, from };
  });
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  rows.sort((a, b) => cmp(a.vendor, b.vendor) || cmp(a.unit, b.unit) || cmp(a.currency, b.currency) || cmp(b.from, a.from));
  return rows;
}

/** `PriceTable::cost` summed over `currency`: the newest price in effect on `day`, else 0. */
function cost(prices: Price[], currency: string, vendor: string, unit: string, day: string, quantity: number): number {
  const row = prices.find((p) => p.vendor === vendor && p.unit === unit && p.currency === currency && p.from <= day);
  // `.sum()` over none is 0.0; over one, 0.0 + that cost (the same float).
  return row === undefined ? 0 : 0 + (quantity * row.price) / row.per;
}

export interface UsageSettings {
  prices: Price[];
  currency: string;
  monthlyMinutes: number;
  monthlySpend: number;
  endAtLimit: boolean;
}

/** The container's `UsageConfig` fields `enforce` reads, from the Worker's variables. */
export function usageSettings(env: {
  USAGE_PRICES?: string;
  USAGE_CURRENCY?: string;
  USAGE_DEFAULT_MONTHLY_MINUTES?: string;
  USAGE_DEFAULT_MONTHLY_SPEND?: string;
  USAGE_DEFAULT_AT_LIMIT?: string;
}): UsageSettings {
  const pricesText = env.USAGE_PRICES?.trim() ? env.USAGE_PRICES : DEFAULT_PRICES;
  if (pricesText.trimStart().startsWith("@")) throw new Error("USAGE_PRICES names a file; the Worker needs the table inline");
  const currency = env.USAGE_CURRENCY?.trim() || "USD";
  if (!/^[A-Z]{3}$/.test(currency)) throw new Error("USAGE_CURRENCY must be an ISO 4217 code like USD");
  const minutesText = env.USAGE_DEFAULT_MONTHLY_MINUTES?.trim() ?? "";
  const minutes = minutesText === "" ? 0 : Number(minutesText);
  const spendText = env.USAGE_DEFAULT_MONTHLY_SPEND?.trim() ?? "";
  const spend = spendText === "" ? 0 : Number(spendText);
  if (!(Number.isFinite(spend) && spend >= 0)) throw new Error("USAGE_DEFAULT_MONTHLY_SPEND must be 0 or more");
  const atLimit = env.USAGE_DEFAULT_AT_LIMIT?.trim() || "continue";
  if (atLimit !== "continue" && atLimit !== "end") throw new Error(`USAGE_DEFAULT_AT_LIMIT must be continue or end, not "${atLimit}"`);
  return {
    prices: parsePrices(pricesText),
    currency,
    // The container's `bounded(…, 0, 0, 100_000_000)`: out of range is clamped, invalid is the default.
    monthlyMinutes: Number.isInteger(minutes) ? Math.min(Math.max(minutes, 0), 100_000_000) : 0,
    monthlySpend: spend,
    endAtLimit: atLimit === "end",
  };
}

/** serde_json's text of an f64 (ryu): an integral value keeps its `.0`, as jsonb then stores it. */
export function rustFloat(x: number): string {
  if (!Number.isFinite(x)) return "null";
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  return String(x).replace("e+", "e");
}

interface Quotas {
  monthlyMinutes: number | null;
  monthlySpend: number | null;
  endAtLimit: boolean;
}

/** `quota::quotas`: the organisation's own, else the defaults; a 0 means none. */
async function quotasOf(db: Db, settings: UsageSettings, organisationId: string): Promise<Quotas> {
  const row = (
    await db.query<{ minutes: string | null; spend: number | null; at_limit: string | null }>(
      "select monthly_minutes::text as minutes, monthly_spend_cap::float8 as spend, at_limit from usage_quotas where organisation_id = $1",
      [organisationId],
    )
  ).rows[0];
  const minutes = row?.minutes == null ? settings.monthlyMinutes : Number(row.minutes);
  const spend = row?.spend == null ? settings.monthlySpend : row.spend;
  return {
    monthlyMinutes: minutes > 0 ? minutes : null,
    monthlySpend: spend > 0 ? spend : null,
    endAtLimit: row?.at_limit == null ? settings.endAtLimit : row.at_limit === "end",
  };
}

/** `quota::month_to_date`: call minutes and the estimated spend this UTC month, live legs included. */
async function monthToDate(db: Db, settings: UsageSettings, organisationId: string): Promise<{ minutes: number; spend: number }> {
  const rows = await db.query<{ vendor: string; unit: string; day: string; quantity: number }>(
    `select vendor, unit, (occurred_at at time zone 'UTC')::date::text as day, sum(quantity)::float8 as quantity
     from usage_ledger
     where organisation_id = $1
       and occurred_at >= date_trunc('month', now() at time zone 'UTC') at time zone 'UTC'
     group by 1, 2, 3`,
    [organisationId],
  );
  let minutes = 0;
  let spend = 0;
  const price = (vendor: string, unit: string, day: string, quantity: number) =>
    cost(settings.prices, settings.currency, vendor, unit, day, quantity);
  for (const r of rows.rows) {
    if (r.vendor === "telnyx" && r.unit === "call_seconds") minutes += r.quantity / 60;
    spend += price(r.vendor, r.unit, r.day, r.quantity);
  }
  const live = (
    await db.query<{ live: number; today: string }>(
      `select coalesce(sum(extract(epoch from now() - l.answered_at)), 0)::float8 as live,
              (now() at time zone 'UTC')::date::text as today
       from call_legs l join calls c on c.id = l.call_id
       where c.organisation_id = $1 and l.answered_at is not null and l.ended_at is null
         and l.status not in ('ended', 'failed')`,
      [organisationId],
    )
  ).rows[0]!;
  minutes += live.live / 60;
  spend += price("telnyx", "call_seconds", live.today, live.live);
  return { minutes, spend };
}

export interface QuotasEnforced {
  warned: number;
  reached: number;
  announced: number;
  ended: number;
}

async function appendEvent(db: Db, callId: string, kind: string, dataJson: string): Promise<void> {
  await db.query(
    `with next as (
         update calls set event_seq = event_seq + 1 where id = $1 returning event_seq
     ), inserted as (
         insert into call_events (call_id, seq, kind, data, occurred_at)
         select $1, event_seq, $2, $3, now() from next returning seq
     )
     select seq, pg_notify($4, $1::text || ':' || seq) from inserted`,
    [callId, kind, dataJson, "callbridge_call_events"],
  );
}

/** The task: `enforce`, then the announcements and the hang-ups due (src/cron.rs `enforce_quotas`). */
export async function enforceQuotas(
  db: Db,
  env: Parameters<typeof usageSettings>[0] & { TELNYX_API_KEY?: string; TELNYX_API_BASE?: string },
): Promise<QuotasEnforced> {
  const settings = usageSettings(env);
  const done: QuotasEnforced = { warned: 0, reached: 0, announced: 0, ended: 0 };
  const announce: string[] = [];
  const hangUp: [string, string][] = [];
  const organisations = await db.query<{ id: string }>("select distinct organisation_id::text as id from calls where status = 'answered'");
  for (const { id: organisationId } of organisations.rows) {
    const quotas = await quotasOf(db, settings, organisationId);
    if (quotas.monthlyMinutes === null && quotas.monthlySpend === null) continue;
    const used = await monthToDate(db, settings, organisationId);
    const levels = (
      [
        ["monthly_minutes", used.minutes, quotas.monthlyMinutes],
        ["monthly_spend", used.spend, quotas.monthlySpend],
      ] as [string, number, number | null][]
    ).filter((l): l is [string, number, number] => l[2] !== null && l[1] >= 0.8 * l[2]);
    if (levels.length === 0) continue;
    const calls = await db.query<{ id: string }>("select id::text as id from calls where organisation_id = $1 and status = 'answered'", [
      organisationId,
    ]);
    for (const { id: callId } of calls.rows) {
      for (const [quota, usedOf, limit] of levels) {
        const level = usedOf >= limit ? 100 : 80;
        for (const mark of level === 100 ? [80, 100] : [80]) {
          const inserted = await db.query(
            `insert into usage_quota_marks (organisation_id, call_id, quota, level)
             values ($1, $2, $3, $4) on conflict do nothing`,
            [organisationId, callId, quota, mark],
          );
          if (inserted.rowCount !== 1) continue;
          const action = mark === 80 ? "none" : quotas.endAtLimit ? "end" : "continue";
          const data = `{"quota": ${JSON.stringify(quota)}, "used": ${rustFloat(usedOf)}, "limit": ${rustFloat(limit)}, "percent": ${mark}, "action": "${action}"}`;
          if (mark < 100) done.warned += 1;
          else done.reached += 1;
          await appendEvent(db, callId, mark < 100 ? "usage.quota_warning" : "usage.quota_reached", data);
          if (mark === 100 && quotas.endAtLimit) announce.push(callId);
        }
        if (level === 100 && quotas.endAtLimit) {
          const due = await db.query(
            `select 1 from usage_quota_marks
             where call_id = $1 and quota = $2 and level = 100 and hangup_at is null
               and at <= now() - make_interval(secs => $3)`,
            [callId, quota, ANNOUNCEMENT_SECS],
          );
          if ((due.rowCount ?? 0) > 0) hangUp.push([callId, quota]);
        }
      }
    }
  }
  if (announce.length === 0 && hangUp.length === 0) return done;
  const telnyx = telnyxCommands(env);
  // The container's `state.telnyx()?`: the tick fails (here: rolls back, marks included, so the
  // next tick tries again) rather than record an announcement nobody heard.
  if (telnyx === null) throw new Error("usage.quotas: calls to announce to or hang up, and TELNYX_API_KEY is not set at the edge");
  for (const callId of announce) {
    for (const [ccid, key] of await liveControlIds(db, callId)) await speak(telnyx, ccid, `quota-announcement:${key}`, ANNOUNCEMENT);
    done.announced += 1;
  }
  for (const [callId, quota] of hangUp) {
    for (const [ccid, key] of await liveControlIds(db, callId)) await hangup(telnyx, ccid, `quota-end:${key}`);
    const first = await db.query(
      `update usage_quota_marks set hangup_at = now()
       where call_id = $1 and quota = $2 and level = 100 and hangup_at is null`,
      [callId, quota],
    );
    if (first.rowCount === 1) {
      await appendEvent(db, callId, "usage.quota_ended", JSON.stringify({ quota }));
      console.log(JSON.stringify({ event: "quota_call_ended", call_id: callId, quota }));
      done.ended += 1;
    }
  }
  return done;
}
