// Owns resolving an Auth.js session token to the caller at the edge, as the container's
// src/auth/sessions.rs and src/orgs.rs do: the token looked up in the form AUTH_TOKEN_STORAGE
// says it is stored (raw, hashed = lowercase hex SHA-256, or dual = either), expired sessions
// refused, the newest-expiring match winning, then the caller's memberships (their own
// personal organisation first, then other personal ones, then by age) — and, for GET /api/calls, the active organisation's
// newest calls. One statement, one round trip. Timestamps come back as text with all their
// microseconds, so they can be written exactly as chrono writes them.
//
// The container also caches resolved sessions for AUTH_SESSION_CACHE_TTL_SECS (a revocation
// delay); the edge does not cache, so it refuses a deleted session at once.

import type { Db } from "./db";
import type { Env } from "./env";

export type TokenStorage = "raw" | "hashed" | "dual";

/** AUTH_TOKEN_STORAGE as the container reads it (unset = raw). Throws on anything else. */
export function tokenStorage(env: Env): TokenStorage {
  const value = (env.AUTH_TOKEN_STORAGE ?? "").trim();
  if (value === "" || value === "raw") return "raw";
  if (value === "hashed" || value === "dual") return value;
  throw new Error(`AUTH_TOKEN_STORAGE must be raw, hashed or dual, not ${JSON.stringify(value)}`);
}

/** AUTH_SCHEMA (default `authjs`), checked like `is_sql_identifier` before it goes into SQL. */
export function authSchema(env: Env): string {
  const schema = (env.AUTH_SCHEMA ?? "").trim() || "authjs";
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new Error("AUTH_SCHEMA is not a plain SQL identifier");
  return schema;
}

/** Hex SHA-256 of a token: the `hashed` storage form (unkeyed, docs/adr/0005). */
export async function hashToken(token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Whether `value` looks like the hashed storage form (64 hex characters, any case). */
export function isHashShaped(value: string): boolean {
  return /^[0-9a-fA-F]{64}$/.test(value);
}

/**
 * The stored forms to look for. The raw form is compared only against rows that are not
 * hash-shaped (a presented token equals a row exactly when both are), so a stored SHA-256
 * read from the table never logs anyone in — as src/auth/sessions.rs `candidates`.
 */
export async function candidates(token: string, storage: TokenStorage): Promise<string[]> {
  const raw = isHashShaped(token) ? [] : [token];
  switch (storage) {
    case "raw":
      return raw;
    case "hashed":
      return [await hashToken(token)];
    case "dual":
      return [...raw, await hashToken(token)];
  }
}

export interface User {
  id: string;
  name: string | null;
  email: string | null;
  image: string | null;
}

export type Role = "owner" | "admin" | "member";

export interface Membership {
  id: string;
  name: string;
  role: Role;
  personal: boolean;
}

export interface Principal {
  user: User;
  /** `YYYY-MM-DDTHH:MM:SS.ffffff` in UTC (always six fraction digits). */
  sessionExpires: string;
  /** Personal organisation first, then by creation, then id. */
  memberships: Membership[];
  /** The stored active organisation (`user_settings`), when still a membership. */
  activeOrganisationId: string | null;
}

/** One row of `calls` as the API writes it; timestamps as in Principal.sessionExpires. */
export type CallRow = [
  id: string,
  organisation_id: string,
  direction: string,
  from: string,
  to: string,
  source_language: string | null,
  target_language: string | null,
  voice_id: string | null,
  record: boolean,
  status: string,
  stream_state: string | null,
  hangup_cause: string | null,
  hangup_source: string | null,
  sip_hangup_cause: string | null,
  failure_reason: string | null,
  created_at: string,
  initiated_at: string | null,
  answered_at: string | null,
  ended_at: string | null,
  interpreted: boolean,
  original_audio: string,
  line_number_id: string | null,
  line_outcome: string | null,
];

export interface Resolved {
  principal: Principal;
  /** Whether the user has their own personal organisation yet (else the container makes it). */
  ownsPersonal: boolean;
  /** The active organisation's newest `callLimit` calls (empty when none were asked for). */
  calls: CallRow[];
}

const UTC_TEXT = `'YYYY-MM-DD"T"HH24:MI:SS.US'`;
const ts = (column: string) => `to_char(${column} at time zone 'UTC', ${UTC_TEXT})`;

function lookupSql(schema: string): string {
  // $1 text[]: stored forms; $2 uuid: the organisation whose calls to list (null: the stored
  // active organisation, else the first membership — Principal::default_organisation);
  // $3 int: how many calls (0: none). Membership order = orgs::memberships_of.
  return `with session as (
      select u.id::text as user_id, u.name, u.email, u.image, s.expires
      from ${schema}.sessions s join ${schema}.users u on u.id = s."userId"
      where s."sessionToken" = any($1) and s.expires > now()
      order by s.expires desc limit 1
    ), orgs as (
      select o.id, o.name, m.role, o.personal_owner_id is not null as personal,
             row_number() over (order by o.personal_owner_id is distinct from session.user_id,
                                         o.personal_owner_id is null, o.created_at, o.id) as position
      from session
      join memberships m on m.user_id = session.user_id
      join organisations o on o.id = m.organisation_id
      where m.role in ('owner', 'admin', 'member')
    ), stored as (
      -- PUT /api/me/active-organisation's choice, only while it is a membership.
      select orgs.id from session
      join user_settings us on us.user_id = session.user_id
      join orgs on orgs.id = us.active_organisation_id
    ), active as (
      select id from orgs where case when $2::uuid is null
        then id = coalesce((select id from stored), (select id from orgs where position = 1))
        else id = $2::uuid end
    ), page as (
      select c.* from calls c
      where $3::int > 0 and c.organisation_id = (select id from active)
      order by c.created_at desc, c.id desc
      limit $3::int
    )
    select session.user_id, session.name, session.email, session.image,
           ${ts("session.expires")} as expires,
           (select id::text from stored) as active_organisation_id,
           exists (select 1 from organisations where personal_owner_id = session.user_id) as owns_personal,
           coalesce((select json_agg(json_build_array(orgs.id::text, orgs.name, orgs.role, orgs.personal)
                                     order by orgs.position) from orgs), '[]'::json) as organisations,
           coalesce((select json_agg(json_build_array(
                       p.id::text, p.organisation_id::text, p.direction, p.from_number, p.to_number,
                       p.source_language, p.target_language, p.voice_id, p.record, p.status,
                       p.stream_state, p.hangup_cause, p.hangup_source, p.sip_hangup_cause,
                       p.failure_reason, ${ts("p.created_at")}, ${ts("p.initiated_at")},
                       ${ts("p.answered_at")}, ${ts("p.ended_at")}, p.interpreted, p.original_audio,
                       p.line_number_id::text, p.line_outcome)
                     order by p.created_at desc, p.id desc) from page p), '[]'::json) as calls
    from session`;
}

interface LookupRow {
  user_id: string;
  name: string | null;
  email: string | null;
  image: string | null;
  expires: string;
  owns_personal: boolean;
  organisations: [string, string, Role, boolean][];
  active_organisation_id: string | null;
  calls: CallRow[];
}

/**
 * The caller behind `token`, or null when the session is unknown, expired or signed out.
 * With `callLimit` > 0, also that many of the newest calls of organisation `orgId` (null: the
 * caller's first membership); calls of an organisation the caller is not in are never read.
 */
export async function resolveSession(
  db: Db,
  env: Env,
  token: string,
  options: { orgId?: string | null; callLimit?: number } = {},
): Promise<Resolved | null> {
  const forms = await candidates(token, tokenStorage(env));
  const result = await db.query<LookupRow>(lookupSql(authSchema(env)), [forms, options.orgId ?? null, options.callLimit ?? 0]);
  const row = result.rows[0];
  if (row === undefined) return null;
  return {
    principal: {
      user: { id: row.user_id, name: row.name, email: row.email, image: row.image },
      sessionExpires: row.expires,
      memberships: row.organisations.map(([id, name, role, personal]) => ({ id, name, role, personal })),
      activeOrganisationId: row.active_organisation_id,
    },
    ownsPersonal: row.owns_personal,
    calls: row.calls,
  };
}

/**
 * A `to_char(... 'YYYY-MM-DD"T"HH24:MI:SS.US')` value as chrono's serde writes a
 * `DateTime<Utc>` (SecondsFormat::AutoSi, `Z`): no fraction, 3 digits or 6 digits, whichever
 * is exact. `offset` "+00:00" gives `to_rfc3339()` instead (the cursor).
 */
export function chronoText(utc: string, offset: "Z" | "+00:00" = "Z"): string {
  const [whole, micros = "000000"] = utc.split(".") as [string, string?];
  let fraction = "";
  if (micros !== "000000") fraction = micros.endsWith("000") ? `.${micros.slice(0, 3)}` : `.${micros}`;
  return `${whole}${fraction}${offset}`;
}
