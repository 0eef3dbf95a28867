// Owns the read-only API routes the edge can answer: GET /api/me (src/http/me.rs) and the
// default page of GET /api/calls (src/http/calls.rs `list`), with the container's
// authentication (src/auth/mod.rs) in front: the credential rules of credential.ts, then the
// session lookup of sessions.ts, then `X-Org-Id`. Errors come in the container's order and
// words: 401 (malformed / none / unknown), then 400 for a bad X-Org-Id, then 404 when the
// caller is not in that organisation.
//
// Deferred to the container (DeferToOrigin, before anything is written):
// - a user without their own personal organisation yet (first sight, or added to someone
//   else's organisation before it): the container creates it on first
//   sight, and that write stays in one place;
// - GET /api/calls with a query string (filters, cursor, limit): only the default page is
//   implemented here.

import { credentialFrom, MALFORMED } from "./credential";
import { withDb } from "./db";
import { DeferToOrigin } from "./defer";
import type { EdgeContext, EdgeHandler } from "./handlers";
import { answering, headerValue, type JsonBody, jsonAnswer, problemAnswer, type Schema, unauthorized, type Answering } from "./respond";
import { type CallRow, chronoText, type Principal, resolveSession } from "./sessions";

/** The container's page size without `limit`. */
export const DEFAULT_PAGE = 50;
const CALL_STATUSES: ReadonlySet<string> = new Set<Schema<"CallStatus">>([
  "created",
  "dialing",
  "initiated",
  "answered",
  "ended",
  "failed",
]);
const isCallStatus = (s: string): s is Schema<"CallStatus"> => CALL_STATUSES.has(s);

export type Authenticated = {
  ok: true;
  principal: Principal;
  calls: CallRow[];
  source: "cookie" | "bearer";
  /** The presented session token: long-lived sockets re-check it. */
  token: string;
};

/** Authenticates like the `CurrentUser` extractor; a Response is the 401 to send. */
export async function authenticate(
  request: Request,
  ctx: EdgeContext,
  a: Answering,
  options: { orgId?: string | null; callLimit?: number } = {},
): Promise<Authenticated | Response> {
  const credential = credentialFrom(request.headers);
  if (credential.kind === "malformed") return unauthorized(a, `Malformed credential: ${MALFORMED[credential.reason]}.`);
  if (credential.kind === "none") return unauthorized(a, "Sign in first: no session cookie or bearer token was sent.");
  const resolved = await withDb(ctx.env, ctx.waitUntil, (db) => resolveSession(db, ctx.env, credential.token, options));
  if (resolved === null) return unauthorized(a, "The session is unknown, expired or signed out.");
  if (!resolved.ownsPersonal) {
    // First sight, or someone added the user to their organisation before it.
    throw new DeferToOrigin("first sight of this user: the container creates the personal organisation");
  }
  return { ok: true, principal: resolved.principal, calls: resolved.calls, source: credential.kind, token: credential.token };
}

/**
 * `X-Org-Id` as the container reads it: `HeaderValue::to_str` (visible ASCII, space, tab),
 * trimmed, `Uuid::parse_str` (simple, hyphenated, `{braced}` or `urn:uuid:`, any case).
 * Returns the lowercase hyphenated id, null when absent, or "invalid".
 */
export function orgIdHeader(headers: Headers): string | null | "invalid" {
  const value = headerValue(headers, "x-org-id");
  if (value === null) return null;
  if (!/^[\t\x20-\x7e]*$/.test(value)) return "invalid";
  const text = value.replace(/^[\t ]+|[\t ]+$/g, "");
  let hyphenated: string;
  if (text.length === 32) {
    hyphenated = `${text.slice(0, 8)}-${text.slice(8, 12)}-${text.slice(12, 16)}-${text.slice(16, 20)}-${text.slice(20)}`;
    if (text.includes("-")) return "invalid";
  } else if (text.length === 36) {
    hyphenated = text;
  } else if (text.length === 38 && text.startsWith("{") && text.endsWith("}")) {
    hyphenated = text.slice(1, -1);
  } else if (text.length === 45 && text.startsWith("urn:uuid:")) {
    hyphenated = text.slice(9);
  } else {
    return "invalid";
  }
  return /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(hyphenated)
    ? hyphenated.toLowerCase()
    : "invalid";
}

/** GET /api/me: the caller, their organisations with roles, the active one, the session. */
export const me: EdgeHandler = {
  async handle(request, ctx) {
    const a = answering(request, ctx.env);
    const orgId = orgIdHeader(request.headers);
    const auth = await authenticate(request, ctx, a);
    if (auth instanceof Response) return auth;
    const { principal } = auth;
    let active: string | null;
    if (orgId === "invalid") return problemAnswer(a, { status: 400, detail: "X-Org-Id must be a UUID." });
    if (orgId !== null) {
      if (!principal.memberships.some((m) => m.id === orgId)) return notFound(a);
      active = orgId;
    } else {
      active = principal.activeOrganisationId ?? principal.memberships[0]?.id ?? null;
    }
    return jsonAnswer<JsonBody<"/api/me", "get", 200>>(a, {
      user: principal.user,
      organisations: principal.memberships,
      active_organisation_id: active,
      session: { expires: chronoText(principal.sessionExpires), source: auth.source },
    });
  },
};

/** GET /api/calls without a query string: the active organisation's newest 50 calls. */
export const listCalls: EdgeHandler = {
  async handle(request, ctx) {
    if (new URL(request.url).search !== "") {
      throw new DeferToOrigin("GET /api/calls with a query string: filters and cursors are the container's");
    }
    const a = answering(request, ctx.env);
    const orgId = orgIdHeader(request.headers);
    const auth = await authenticate(request, ctx, a, {
      orgId: orgId === "invalid" ? null : orgId,
      callLimit: DEFAULT_PAGE + 1,
    });
    if (auth instanceof Response) return auth;
    if (orgId === "invalid") {
      return problemAnswer(a, { status: 400, detail: "X-Org-Id must be an organisation id (a UUID)." });
    }
    if (orgId !== null && !auth.principal.memberships.some((m) => m.id === orgId)) return notFound(a);
    const page = auth.calls.slice(0, DEFAULT_PAGE);
    const last = page.at(-1);
    const nextCursor = auth.calls.length > DEFAULT_PAGE && last !== undefined ? cursorOf(last) : null;
    return jsonAnswer<JsonBody<"/api/calls", "get", 200>>(a, { calls: page.map(callJson), next_cursor: nextCursor });
  },
};

function notFound(a: Answering): Response {
  return problemAnswer(a, { status: 404, detail: "No such resource." });
}

/** The container's `Call` as serde writes it (field order of the struct). */
function callJson(row: CallRow): Schema<"Call"> {
  const at = (v: string | null) => (v === null ? null : chronoText(v));
  return {
    id: row[0],
    organisation_id: row[1],
    direction: row[2],
    from: row[3],
    to: row[4],
    source_language: row[5],
    target_language: row[6],
    voice_id: row[7],
    record: row[8],
    status: isCallStatus(row[9]) ? row[9] : "failed", // CallStatus::parse(..).unwrap_or(Failed)
    stream_state: row[10],
    hangup_cause: row[11],
    hangup_source: row[12],
    sip_hangup_cause: row[13],
    failure_reason: row[14],
    created_at: chronoText(row[15]),
    initiated_at: at(row[16]),
    answered_at: at(row[17]),
    ended_at: at(row[18]),
    interpreted: row[19],
    original_audio: row[20],
    line_number_id: row[21],
    line_outcome: row[22],
  };
}

/** `encode_cursor`: base64url without padding of `${created_at.to_rfc3339()}|${id}`. */
function cursorOf(row: CallRow): string {
  const text = `${chronoText(row[15], "+00:00")}|${row[0]}`;
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, "-")
    .replace(/\//g, "_")
    .replace(/=+$/, "");
}
