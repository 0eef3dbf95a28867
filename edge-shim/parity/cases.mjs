// The ONE list of HTTP cases the parity suite sends twice: to the container directly and
// through the shim (with the edge owning the routes that have edge handlers). Each case says
// what the container must answer (`status`, so two identical failures cannot pass for parity)
// and whether, through the shim, the edge answers it itself or hands it to the container
// (`edge: "answers" | "defers"`). Requests are built at send time (webhook timestamps are
// "now"). Header values are strings of ASCII, or Buffers sent byte for byte.

import { AAI_WEBHOOK_SECRET, ORG, TOKEN, otherSignature, telnyxSignature } from "./fixtures.mjs";

const now = () => Math.floor(Date.now() / 1000);

// ---- POST /webhooks/telnyx --------------------------------------------------------------

/** A webhook v2 envelope as text (spacing kept: the signature covers these exact bytes). */
function envelope(id, { type = "call.initiated", occurredAt = "2026-11-26T03:30:00.076316Z", payload = {} } = {}) {
  return JSON.stringify(
    {
      data: { record_type: "event", event_type: type, id, occurred_at: occurredAt, payload },
      meta: { attempt: 1, delivered_to: "https://api.callbridge.example/webhooks/telnyx" },
    },
    null,
    1,
  );
}

/**
 * A delivery: `body` text or Buffer; `ts` seconds offset from now (or a literal header
 * string); `sign` "valid" | "other-key" | a literal header | null (no header);
 * `tamper` changes the body after signing.
 */
function webhook(name, { body, ts = 0, sign = "valid", tamper, requestId = true, headers = [], status, edge = "answers" }) {
  return {
    name: `telnyx: ${name}`,
    route: "POST /webhooks/telnyx",
    expect: { status, edge },
    build() {
      const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body, "utf8");
      const timestamp = typeof ts === "number" ? String(now() + ts) : ts;
      const h = [["content-type", "application/json"], ...headers];
      if (requestId) h.push(["x-request-id", `parity-${slug(name)}`]);
      if (timestamp !== null) h.push(["telnyx-timestamp", timestamp]);
      if (sign === "valid") h.push(["telnyx-signature-ed25519", telnyxSignature(timestamp, bytes)]);
      else if (sign === "other-key") h.push(["telnyx-signature-ed25519", otherSignature(timestamp, bytes)]);
      else if (sign !== null) h.push(["telnyx-signature-ed25519", sign]);
      return { method: "POST", path: "/webhooks/telnyx", headers: h, body: tamper ? tamper(bytes) : bytes };
    },
  };
}

const slug = (s) =>
  s
    .replace(/[^A-Za-z0-9]+/g, "-")
    .replace(/^-|-$/g, "")
    .slice(0, 100);

const webhookCases = [
  webhook("valid", { body: envelope("evt-valid-1"), status: 200 }),
  webhook("duplicate of valid (same event id, new delivery)", {
    body: envelope("evt-valid-1", { payload: { redelivered: true } }),
    status: 200,
  }),
  webhook("valid, no x-request-id (generated UUIDv7)", { body: envelope("evt-no-request-id"), requestId: false, status: 200 }),
  webhook("valid, request id from cf-ray", {
    body: envelope("evt-cf-ray"),
    requestId: false,
    headers: [["cf-ray", "8c1a2b3c4d5e6f70-AMS"]],
    status: 200,
  }),
  webhook("valid, unacceptable x-request-id falls back to generated", {
    body: envelope("evt-bad-request-id"),
    requestId: false,
    headers: [["x-request-id", "has spaces and / slashes"]],
    status: 200,
  }),
  webhook("valid, allowed Origin echoed by CORS", {
    body: envelope("evt-origin"),
    headers: [["origin", "http://localhost:3000"]],
    status: 200,
  }),
  webhook("valid, event_type with underscores (API v1 spelling)", {
    body: envelope("evt-underscores", { type: "call_recording_saved" }),
    status: 200,
  }),
  webhook("NUL in the id, a payload string and a key (stored as U+FFFD, never a 500)", {
    body: envelope("evt-nul-\u0000", { type: "call.hangup", payload: { hangup_cause: "normal\u0000", "x\u0000": ["\u0000"] } }),
    status: 200,
  }),
  webhook("valid, timestamp 290 s old", { body: envelope("evt-old-ok"), ts: -290, status: 200 }),
  webhook("valid, timestamp 290 s ahead", { body: envelope("evt-future-ok"), ts: 290, status: 200 }),
  webhook("tampered body", {
    body: envelope("evt-tampered"),
    tamper: (b) => Buffer.from(b.toString().replace("call.initiated", "call.hangup")),
    status: 401,
  }),
  webhook("one trailing byte added after signing", {
    body: envelope("evt-trailing"),
    tamper: (b) => Buffer.concat([b, Buffer.from("\n")]),
    status: 401,
  }),
  webhook("stale timestamp (310 s old)", { body: envelope("evt-stale"), ts: -310, status: 401 }),
  webhook("future timestamp (310 s ahead)", { body: envelope("evt-future"), ts: 310, status: 401 }),
  webhook("missing both headers", { body: envelope("evt-missing"), ts: null, sign: null, status: 401 }),
  webhook("missing signature header", { body: envelope("evt-missing-sig"), sign: null, status: 401 }),
  webhook("missing timestamp header", {
    body: envelope("evt-missing-ts"),
    ts: null,
    sign: telnyxSignature(String(now()), Buffer.from(envelope("evt-missing-ts"))),
    status: 401,
  }),
  webhook("empty timestamp", { body: envelope("evt-empty-ts"), ts: "", status: 401 }),
  webhook("timestamp not digits", { body: envelope("evt-ts-letters"), ts: "17O0000000", status: 401 }),
  webhook("timestamp in milliseconds (13 digits)", { body: envelope("evt-ts-ms"), ts: String(Date.now()), status: 401 }),
  webhook("negative timestamp", { body: envelope("evt-ts-neg"), ts: "-1", status: 401 }),
  webhook("signature not base64", { body: envelope("evt-sig-garbage"), sign: "not base64!", status: 401 }),
  webhook("signature base64 of 63 bytes", { body: envelope("evt-sig-63"), sign: Buffer.alloc(63, 7).toString("base64"), status: 401 }),
  webhook("signature without padding", {
    body: envelope("evt-sig-nopad"),
    sign: Buffer.alloc(64, 9).toString("base64").replace(/=+$/, ""),
    status: 401,
  }),
  webhook("signature base64url alphabet", {
    body: envelope("evt-sig-url"),
    sign: Buffer.alloc(64, 0xfb).toString("base64url") + "==",
    status: 401,
  }),
  webhook("signature by another key", { body: envelope("evt-other-key"), sign: "other-key", status: 401 }),
  webhook("signature of 64 zero bytes", { body: envelope("evt-zero-sig"), sign: Buffer.alloc(64).toString("base64"), status: 401 }),
  webhook("occurred_at with nanoseconds (PostgreSQL rounds to microseconds)", {
    body: envelope("evt-nanos", { occurredAt: "2026-11-26T03:30:00.0763169999Z" }),
    status: 200,
  }),
  webhook("occurred_at before 2000 with nanoseconds", {
    body: envelope("evt-nanos-1999", { occurredAt: "1999-12-31T23:59:59.9999995Z" }),
    status: 200,
  }),
  webhook("occurred_at with an offset, lowercase t and z-less", {
    body: envelope("evt-offset", { occurredAt: "2026-11-26t05:30:00.5+02:00" }),
    status: 200,
  }),
  webhook("occurred_at with U+2212 minus (not RFC 3339: NULL)", {
    body: envelope("evt-space", { occurredAt: "2026-11-26 01:30:00\u221202:00" }),
    status: 200,
  }),
  webhook("occurred_at with a space separator", {
    body: envelope("evt-space-ok", { occurredAt: "2026-11-26 01:30:00-02:00" }),
    status: 200,
  }),
  webhook("occurred_at not RFC 3339 (stored as NULL)", {
    body: envelope("evt-bad-time", { occurredAt: "26/11/2026 03:30" }),
    status: 200,
  }),
  webhook("occurred_at without seconds (NULL)", { body: envelope("evt-no-secs", { occurredAt: "2026-11-26T03:30Z" }), status: 200 }),
  webhook("occurred_at Feb 30 (NULL)", { body: envelope("evt-feb30", { occurredAt: "2026-02-30T00:00:00Z" }), status: 200 }),
  webhook("occurred_at a number (NULL)", { body: envelope("evt-time-number", { occurredAt: 1764127800 }), status: 200 }),
  webhook("occurred_at a leap second (NULL)", {
    body: envelope("evt-leap", { occurredAt: "2016-12-31T23:59:60.5Z" }),
    status: 200,
  }),
  webhook("occurred_at year 0000 (NULL)", { body: envelope("evt-year0", { occurredAt: "0000-01-01T00:00:00Z" }), status: 200 }),
  webhook("occurred_at with ten fraction digits (NULL)", {
    body: envelope("evt-ten-digits", { occurredAt: "2026-11-26T03:30:00.0763169999Z" }),
    status: 200,
  }),
  webhook("occurred_at offset +16:00 (NULL)", { body: envelope("evt-offset16", { occurredAt: "2026-11-26T03:30:00+16:00" }), status: 200 }),
  webhook("numbers as PostgreSQL keeps them (exact numeric)", {
    body:
      '{"data":{"id":"evt-numbers","event_type":"call.answered","occurred_at":"2026-11-26T03:30:00Z",' +
      '"payload":{"a":1.0,"b":-0,"c":1e2,"d":1.50,"e":18446744073709551615,"f":18446744073709551616,' +
      '"g":-9223372036854775808,"h":-9223372036854775809,"i":0.1,"j":1e-7,"k":123456789012345678901234567890,' +
      '"l":5e-324,"m":1.7976931348623157e308,"n":2.5E+20,"o":0.30000000000000004,"p":1234567.0e-3,' +
      '"q":100000000000000000.0,"r":-1.5e-5}}}',
    status: 200,
  }),
  webhook("duplicate keys (the last wins), unicode, escapes", {
    body:
      '{"data":{"id":"evt-dup-keys","event_type":"x","event_type":"call.hangup","payload":' +
      '{"caller_id_name":"Zo\\u00eb \\ud83d\\udcde \\"q\\" \\/ \\b\\f\\n\\r\\t","emoji":"📞","nested":[[],{},[{"a":[true,false,null]}]]},' +
      '"occurred_at":"2026-11-26T03:30:00Z"}, "meta": {"attempt": 2}}  \n',
    status: 200,
  }),
  webhook("body not JSON (PostgreSQL's message)", { body: "{not json", status: 400 }),
  webhook("empty body", { body: "", status: 400 }),
  webhook("body with a BOM", {
    body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(envelope("evt-bom"))]),
    status: 400,
  }),
  webhook("body not UTF-8", { body: Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x7d]), status: 400 }),
  webhook("a raw NUL byte", { body: Buffer.from('{"data":{"id":"evt-raw-nul","event_type":"x","s":"a\u0000"}}'), status: 400 }),
  webhook("nesting deeper than PostgreSQL's stack", {
    body: `{"data":{"id":"evt-deep","event_type":"x","n":${"[".repeat(400000)}${"]".repeat(400000)}}}`,
    status: 400,
  }),
  webhook("number beyond numeric (1e1000000)", { body: '{"data":{"id":"evt-huge","event_type":"x","n":1e1000000}}', status: 400 }),
  webhook("1e400 (exact numeric, stored)", { body: '{"data":{"id":"evt-big","event_type":"x","n":1e400}}', status: 200 }),
  webhook("lone surrogate escape", { body: '{"data":{"id":"evt-lone","event_type":"x","s":"\\ud800"}}', status: 400 }),
  webhook("trailing comma", { body: '{"data":{"id":"evt-comma","event_type":"x",}}', status: 400 }),
  webhook("JSON but no data", { body: '{"event_type":"call.initiated","id":"evt-flat"}', status: 400 }),
  webhook("JSON array", { body: "[1,2,3]", status: 400 }),
  webhook("data is null", { body: '{"data":null}', status: 400 }),
  webhook("data.id missing", { body: '{"data":{"event_type":"call.initiated"}}', status: 400 }),
  webhook("data.id empty", { body: '{"data":{"id":"","event_type":"call.initiated"}}', status: 400 }),
  webhook("data.id a number", { body: '{"data":{"id":42,"event_type":"call.initiated"}}', status: 400 }),
  webhook("data.id 200 bytes (accepted)", { body: `{"data":{"id":"${"é".repeat(100)}","event_type":"call.initiated"}}`, status: 200 }),
  webhook("data.id 201 bytes", { body: `{"data":{"id":"${"é".repeat(100)}x","event_type":"call.initiated"}}`, status: 400 }),
  webhook("data.event_type missing", { body: '{"data":{"id":"evt-no-type"}}', status: 400 }),
  webhook("data.event_type 101 bytes", { body: `{"data":{"id":"evt-long-type","event_type":"${"t".repeat(101)}"}}`, status: 400 }),
];

// ---- POST /webhooks/assemblyai ----------------------------------------------------------

/**
 * An AssemblyAI transcript webhook: `body` text or Buffer; `secret` the
 * x-callbridge-webhook-secret value (string or Buffer; null: no header), `secrets` for
 * several such headers; `headers` extra [name, value] pairs.
 */
function aai(name, { body, secret = AAI_WEBHOOK_SECRET, secrets, requestId = true, headers = [], status, edge = "answers" }) {
  return {
    name: `assemblyai: ${name}`,
    route: "POST /webhooks/assemblyai",
    expect: { status, edge },
    build() {
      const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body, "utf8");
      const h = [["content-type", "application/json"], ...headers];
      if (requestId) h.push(["x-request-id", `parity-aai-${slug(name)}`]);
      for (const s of secrets ?? (secret === null ? [] : [secret])) h.push(["x-callbridge-webhook-secret", s]);
      return { method: "POST", path: "/webhooks/assemblyai", headers: h, body: bytes };
    },
  };
}

const transcript = (id, status = "completed", extra = {}) => JSON.stringify({ transcript_id: id, status, ...extra });

const assemblyaiCases = [
  aai("valid (completed)", { body: transcript("aai-valid-1"), status: 200 }),
  aai("duplicate of valid (same transcript_id and status, new delivery)", {
    body: transcript("aai-valid-1", "completed", { redelivered: true }),
    status: 200,
  }),
  aai("same transcript_id, another status (a new event)", { body: transcript("aai-valid-1", "error"), status: 200 }),
  aai("valid, no x-request-id (generated UUIDv7)", { body: transcript("aai-no-request-id"), requestId: false, status: 200 }),
  aai("valid, allowed Origin echoed by CORS", {
    body: transcript("aai-origin"),
    headers: [["origin", "http://localhost:3000"]],
    status: 200,
  }),
  aai("valid, text/plain content type (the body is read regardless)", {
    body: transcript("aai-text-plain"),
    headers: [["content-type", "text/plain"]],
    status: 200,
  }),
  aai("valid, spaces around the header value (trimmed by the HTTP parser)", {
    body: transcript("aai-spaces"),
    secret: `  ${AAI_WEBHOOK_SECRET}\t`,
    status: 200,
  }),
  aai("valid, pretty-printed with numbers, unicode and escapes (stored as PostgreSQL keeps them)", {
    body: '{\n "transcript_id": "aai-\\u00e9\\"q\\"/\\n",\n "status": "completed",\n "n": [1.0, -0, 1e2, 12345678901234567890, 0.1],\n "nested": {"b": 1, "a": null}\n}',
    status: 200,
  }),
  aai("NUL in strings and a key (stored as U+FFFD, never a 500)", {
    body: '{"transcript_id":"aai-nul\\u0000","status":"completed","note\\u0000":"a\\u0000b"}',
    status: 200,
  }),
  aai("duplicate keys (the last wins)", {
    body: '{"transcript_id":"aai-first","transcript_id":"aai-dupkeys","status":"queued","status":"completed"}',
    status: 200,
  }),
  aai("transcript_id 200 bytes (accepted)", { body: transcript("é".repeat(100)), status: 200 }),
  aai("status 40 bytes (accepted)", { body: transcript("aai-status-40", "s".repeat(40)), status: 200 }),
  aai("missing header", { body: transcript("aai-no-header"), secret: null, status: 401 }),
  aai("empty header", { body: transcript("aai-empty-header"), secret: "", status: 401 }),
  aai("wrong secret", { body: transcript("aai-wrong"), secret: "not-the-secret", status: 401 }),
  aai("secret with one byte more", { body: transcript("aai-longer"), secret: `${AAI_WEBHOOK_SECRET}x`, status: 401 }),
  aai("secret one byte short", { body: transcript("aai-shorter"), secret: AAI_WEBHOOK_SECRET.slice(0, -1), status: 401 }),
  aai("secret in capitals", { body: transcript("aai-caps"), secret: AAI_WEBHOOK_SECRET.toUpperCase(), status: 401 }),
  aai("secret sent as a bearer token instead", {
    body: transcript("aai-bearer"),
    secret: null,
    headers: [["authorization", `Bearer ${AAI_WEBHOOK_SECRET}`]],
    status: 401,
  }),
  aai("wrong secret and a malformed body (401 first)", { body: "{not json", secret: "nope", status: 401 }),
  aai("no header and an empty body (401 first)", { body: "", secret: null, status: 401 }),
  aai("header repeated, the first right (the container reads the first: deferred)", {
    body: transcript("aai-repeated"),
    secrets: [AAI_WEBHOOK_SECRET, "other"],
    status: 200,
    edge: "defers",
  }),
  aai("header repeated, the first wrong (deferred)", {
    body: transcript("aai-repeated-wrong"),
    secrets: ["other", AAI_WEBHOOK_SECRET],
    status: 401,
    edge: "defers",
  }),
  aai("header with a non-ASCII byte (deferred)", {
    body: transcript("aai-latin1"),
    secret: Buffer.concat([Buffer.from(AAI_WEBHOOK_SECRET), Buffer.from([0xe9])]),
    status: 401,
    edge: "defers",
  }),
  aai("malformed JSON (PostgreSQL's message)", { body: '{"transcript_id": "aai-bad", ', status: 400 }),
  aai("empty body", { body: "", status: 400 }),
  aai("trailing comma", { body: '{"transcript_id":"aai-comma","status":"completed",}', status: 400 }),
  aai("missing transcript_id", { body: '{"status":"completed"}', status: 400 }),
  aai("transcript_id empty", { body: transcript(""), status: 400 }),
  aai("transcript_id a number", { body: '{"transcript_id":42,"status":"completed"}', status: 400 }),
  aai("transcript_id null", { body: '{"transcript_id":null,"status":"completed"}', status: 400 }),
  aai("transcript_id 201 bytes", { body: transcript(`${"é".repeat(100)}x`), status: 400 }),
  aai("missing status", { body: '{"transcript_id":"aai-no-status"}', status: 400 }),
  aai("status empty", { body: transcript("aai-status-empty", ""), status: 400 }),
  aai("status 41 bytes", { body: transcript("aai-status-41", "s".repeat(41)), status: 400 }),
  aai("status an object", { body: '{"transcript_id":"aai-status-obj","status":{"v":"completed"}}', status: 400 }),
  aai("JSON array", { body: '[{"transcript_id":"aai-array","status":"completed"}]', status: 400 }),
  aai("JSON null", { body: "null", status: 400 }),
  aai("JSON string", { body: '"aai-string"', status: 400 }),
];

// ---- GET /api/me and GET /api/calls --------------------------------------------------------

const COOKIE_NAMES = [
  "__Secure-authjs.session-token",
  "authjs.session-token",
  "__Secure-next-auth.session-token",
  "next-auth.session-token",
];

/** Auth cases, each sent to both routes. `headers` as [name, string | Buffer][]. */
const authScenarios = [
  ...COOKIE_NAMES.map((name) => ({ name: `cookie ${name}`, headers: [["cookie", `theme=dark; ${name}=${TOKEN.ada}`]], status: 200 })),
  { name: "bearer", headers: [["authorization", `Bearer ${TOKEN.ada}`]], status: 200 },
  { name: "bearer, scheme in capitals", headers: [["authorization", `BEARER ${TOKEN.grace}`]], status: 200 },
  { name: "bearer, extra spaces before the token", headers: [["authorization", `bearer    ${TOKEN.grace}`]], status: 200 },
  {
    name: "bearer wins over a cookie",
    headers: [
      ["cookie", `authjs.session-token=${TOKEN.grace}`],
      ["authorization", `Bearer ${TOKEN.ada}`],
    ],
    status: 200,
  },
  { name: "bearer is not URL-decoded", headers: [["authorization", "Bearer tok%2Bwith%2Fslash%3D"]], status: 401 },
  {
    name: "Basic scheme falls through to the cookie",
    headers: [
      ["authorization", "Basic dXNlcjpwYXNz"],
      ["cookie", `next-auth.session-token=${TOKEN.grace}`],
    ],
    status: 200,
  },
  { name: "bearer with an empty token", headers: [["authorization", "Bearer  "]], status: 401 },
  { name: "bearer with a space inside", headers: [["authorization", "Bearer abc def"]], status: 401 },
  { name: "bearer of 256 characters", headers: [["authorization", `Bearer ${"b".repeat(256)}`]], status: 401 },
  { name: "bearer not UTF-8", headers: [["authorization", Buffer.from([...Buffer.from("Bearer abc"), 0xff])]], status: 401 },
  {
    name: "bearer with a no-break space after it (UTF-8, trimmed)",
    headers: [["authorization", Buffer.concat([Buffer.from(`Bearer ${TOKEN.ada}`), Buffer.from([0xc2, 0xa0])])]],
    status: 200,
  },
  {
    name: "cookie priority: __Secure-authjs beats authjs",
    headers: [["cookie", `authjs.session-token=${TOKEN.grace}; __Secure-authjs.session-token=${TOKEN.ada}`]],
    status: 200,
  },
  {
    name: "cookie priority: next-auth is last",
    headers: [["cookie", `next-auth.session-token=${TOKEN.ada}; __Secure-next-auth.session-token=${TOKEN.grace}`]],
    status: 200,
  },
  {
    name: "first occurrence of a name wins",
    headers: [["cookie", `authjs.session-token=${TOKEN.grace}; authjs.session-token=${TOKEN.ada}`]],
    status: 200,
  },
  {
    name: "first occurrence wins even when it is malformed",
    headers: [["cookie", `authjs.session-token="${TOKEN.ada}"; authjs.session-token=${TOKEN.ada}`]],
    status: 401,
  },
  {
    name: "a higher-priority malformed cookie is an error",
    headers: [["cookie", `__Secure-authjs.session-token=; authjs.session-token=${TOKEN.ada}`]],
    status: 401,
  },
  { name: "cookie decoded once", headers: [["cookie", `authjs.session-token=${encodeURIComponent(TOKEN.plusEquals)}`]], status: 200 },
  { name: "cookie raw + / = (no decoding needed)", headers: [["cookie", `authjs.session-token=${TOKEN.plusEquals}`]], status: 200 },
  {
    name: "cookie double-encoded",
    headers: [["cookie", `authjs.session-token=${encodeURIComponent(encodeURIComponent(TOKEN.plusEquals))}`]],
    status: 401,
  },
  { name: "cookie quoted", headers: [["cookie", `authjs.session-token="${TOKEN.ada}"`]], status: 401 },
  { name: "cookie only opening quote", headers: [["cookie", `authjs.session-token="${TOKEN.ada}`]], status: 401 },
  { name: "cookie empty", headers: [["cookie", "authjs.session-token=; theme=dark"]], status: 401 },
  { name: "cookie 255 characters (the longest token)", headers: [["cookie", `authjs.session-token=${TOKEN.longest}`]], status: 200 },
  { name: "cookie decodes to 256 characters", headers: [["cookie", `authjs.session-token=${"c".repeat(256)}`]], status: 401 },
  { name: "cookie over 765 raw bytes", headers: [["cookie", `authjs.session-token=${"%41".repeat(256)}`]], status: 401 },
  {
    name: "cookie 765 raw bytes decoding to 255 (unknown session)",
    headers: [["cookie", `authjs.session-token=${"%41".repeat(255)}`]],
    status: 401,
  },
  { name: "cookie decodes to a space", headers: [["cookie", "authjs.session-token=a%20b"]], status: 401 },
  { name: "cookie decodes to bytes that are not UTF-8", headers: [["cookie", "authjs.session-token=%FF%FE"]], status: 401 },
  { name: "cookie decodes to UTF-8 that is not ASCII", headers: [["cookie", "authjs.session-token=caf%C3%A9"]], status: 401 },
  {
    name: "cookie raw bytes not UTF-8",
    headers: [["cookie", Buffer.from([...Buffer.from("authjs.session-token=abc"), 0xff, 0xfe])]],
    status: 401,
  },
  { name: "cookie raw UTF-8 that is not ASCII", headers: [["cookie", Buffer.from("authjs.session-token=café", "utf8")]], status: 401 },
  { name: "cookie with a lone % (kept literally, invalid)", headers: [["cookie", "authjs.session-token=100%"]], status: 401 },
  { name: "cookie name differs in case (not ours)", headers: [["cookie", `Authjs.Session-Token=${TOKEN.ada}`]], status: 401 },
  { name: "cookie without = and unrelated cookies only", headers: [["cookie", "authjs.session-token; csrf=1"]], status: 401 },
  { name: "no credential", headers: [], status: 401 },
  { name: "unknown token", headers: [["cookie", "authjs.session-token=no-such-session"]], status: 401 },
  { name: "expired session", headers: [["authorization", `Bearer ${TOKEN.expired}`]], status: 401 },
  { name: "second session of the same user", headers: [["authorization", `Bearer ${TOKEN.ada2}`]], status: 200 },
  { name: "user with quotes in the name, member of two orgs", headers: [["authorization", `Bearer ${TOKEN.grace}`]], status: 200 },
  { name: "user with unicode, backslash and tab in the name", headers: [["authorization", `Bearer ${TOKEN.plusEquals}`]], status: 200 },
  {
    name: "X-Org-Id of a membership",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["x-org-id", ORG.team],
    ],
    status: 200,
  },
  {
    name: "X-Org-Id in capitals, braced",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["x-org-id", `{${ORG.team.toUpperCase()}}`],
    ],
    status: 200,
  },
  {
    name: "X-Org-Id as urn:uuid, simple form",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["x-org-id", `urn:uuid:${ORG.team}`],
    ],
    status: 200,
  },
  {
    name: "X-Org-Id simple (no hyphens)",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["x-org-id", ORG.team.replaceAll("-", "")],
    ],
    status: 200,
  },
  {
    name: "X-Org-Id not a UUID",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["x-org-id", "team"],
    ],
    status: 400,
  },
  {
    name: "X-Org-Id of another organisation",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["x-org-id", ORG.outsiders],
    ],
    status: 404,
  },
  { name: "X-Org-Id bad but no session (401 first)", headers: [["x-org-id", "team"]], status: 401 },
  {
    name: "allowed Origin",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["origin", "http://localhost:3000"],
    ],
    status: 200,
  },
  {
    name: "other Origin (not echoed)",
    headers: [
      ["authorization", `Bearer ${TOKEN.ada}`],
      ["origin", "https://evil.example"],
    ],
    status: 200,
  },
  { name: "no x-request-id (generated UUIDv7)", headers: [["authorization", `Bearer ${TOKEN.ada}`]], requestId: false, status: 200 },
  { name: "401 with no x-request-id", headers: [], requestId: false, status: 401 },
];

function authCase(route, path, s) {
  return {
    name: `${route}: ${s.name}`,
    route,
    expect: { status: s.status, edge: s.edge ?? "answers" },
    build() {
      const headers = [...s.headers];
      if (s.requestId !== false) headers.push(["x-request-id", `parity-${slug(`${path} ${s.name}`)}`]);
      return { method: "GET", path, headers, body: null };
    },
  };
}

/** A user with no membership yet, then the same user once the container gave them one. */
function firstSight(route, path, token) {
  const mk = (name, edge) => ({
    name: `${route}: ${name}`,
    route,
    expect: { status: 200, edge },
    build: () => ({
      method: "GET",
      path,
      headers: [
        ["authorization", `Bearer ${token}`],
        ["x-request-id", `parity-${slug(`${path} ${name}`)}`],
      ],
      body: null,
    }),
  });
  return [
    mk("first sight of a user (deferred: the container creates the personal organisation)", "defers"),
    mk("the same user again (answered at the edge, with the organisation just made)", "answers"),
  ];
}

const routeOnly = [
  ...firstSight("GET /api/me", "/api/me", TOKEN.newcomer),
  ...firstSight("GET /api/calls", "/api/calls", TOKEN.newcomer2),
  {
    name: "GET /api/calls: a query string (deferred: filters are the container's)",
    route: "GET /api/calls",
    expect: { status: 200, edge: "defers" },
    build: () => ({
      method: "GET",
      path: "/api/calls?limit=2&status=answered",
      headers: [
        ["authorization", `Bearer ${TOKEN.ada}`],
        ["x-request-id", "parity-calls-query"],
      ],
      body: null,
    }),
  },
  {
    name: "GET /api/calls: a bare ? (the default page)",
    route: "GET /api/calls",
    expect: { status: 200, edge: "answers" },
    build: () => ({
      method: "GET",
      path: "/api/calls?",
      headers: [
        ["authorization", `Bearer ${TOKEN.ada}`],
        ["x-request-id", "parity-calls-bare-q"],
      ],
      body: null,
    }),
  },
];

export const CASES = [
  ...webhookCases,
  ...assemblyaiCases,
  ...authScenarios.map((s) => authCase("GET /api/me", "/api/me", s)),
  ...authScenarios.map((s) => authCase("GET /api/calls", "/api/calls", s)),
  ...routeOnly,
];
