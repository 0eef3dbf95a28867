// The parity suite's fixed world: the Telnyx test key, and the database state every pass
// starts from (users, sessions, organisations, calls). Every value is fixed — no now() — so
// the pass against the container and the pass through the shim see byte-identical data.
// Runs in Node (not workerd).

import crypto from "node:crypto";

// ---- Telnyx: the simulator's test key (seed = the ASCII string below) ----------------------

const SEED = Buffer.from("callbridge-telnyx-sim-test-key!!", "ascii");
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
export const TELNYX_PRIVATE_KEY = crypto.createPrivateKey({
  key: Buffer.concat([PKCS8_PREFIX, SEED]),
  format: "der",
  type: "pkcs8",
});
/** base64 of the raw 32-byte public key: TELNYX_PUBLIC_KEY for the container and the edge. */
export const TELNYX_PUBLIC_KEY = crypto
  .createPublicKey(TELNYX_PRIVATE_KEY)
  .export({ format: "der", type: "spki" })
  .subarray(-32)
  .toString("base64");

/** A second key, for "signed by someone else". */
const OTHER_KEY = crypto.generateKeyPairSync("ed25519").privateKey;

/** base64(Ed25519(`${timestamp}|${body}`)). */
export function telnyxSignature(timestamp, body, key = TELNYX_PRIVATE_KEY) {
  return crypto.sign(null, Buffer.concat([Buffer.from(`${timestamp}|`), body]), key).toString("base64");
}
export const otherSignature = (timestamp, body) => telnyxSignature(timestamp, body, OTHER_KEY);

// ---- Database -------------------------------------------------------------------------------

/** POST /webhooks/assemblyai: ASSEMBLYAI_WEBHOOK_SECRET on both sides (.ci/parity.sh reads it here). */
export const AAI_WEBHOOK_SECRET = "parity-assemblyai-webhook-secret";

export const ORG = {
  adaPersonal: "0190c0de-0000-7000-8000-00000000a001",
  team: "0190c0de-0000-7000-8000-00000000a002",
  gracePersonal: "0190c0de-0000-7000-8000-00000000a003",
  outsiders: "0190c0de-0000-7000-8000-00000000a004",
};

/** Session tokens, each a different user or state, so a body shows which one was used. */
export const TOKEN = {
  ada: "ada-5f0c3a52-6d1b-4c9e-9a11-2f7d4c1e8b90",
  ada2: "ada-second-device-7e2b",
  grace: "grace-8d2e41f7-3b6a-4f0d-b5c2-91e0a6d7c3f4",
  expired: "expired-1c9b7e2d-5a4f-4e3b-8d6c-0f1a2b3c4d5e",
  newcomer: "newcomer-4b3a2918-7c6d-4e5f-a1b2-c3d4e5f60718",
  newcomer2: "newcomer2-0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d",
  /** Contains characters a raw token may hold that need percent-encoding in a cookie. */
  plusEquals: "tok+with/slash=",
  /** Exactly 255 characters: the longest token. */
  longest: `L${"x".repeat(254)}`,
};

/**
 * The headers the edge shim adds when it forwards a request (edge-shim/src/signing.ts) with no
 * X-Forwarded-*: the container has EDGE_SHARED_SECRET and refuses unsigned requests, so the
 * direct pass signs as the shim would.
 */
export function edgeHeaders(secret, method, pathAndQuery, body) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const content = crypto.createHash("sha256").update(body).digest("hex");
  const message = ["v2", timestamp, method, pathAndQuery, "", "", "", content].join("\n");
  return {
    "x-edge-timestamp": timestamp,
    "x-edge-content-sha256": content,
    "x-edge-signature": `v2=${crypto.createHmac("sha256", secret).update(message, "utf8").digest("hex")}`,
  };
}

/** Hex SHA-256: how AUTH_TOKEN_STORAGE=hashed stores a session token. */
export const hashToken = (token) => crypto.createHash("sha256").update(token, "utf8").digest("hex");

/**
 * How sessionToken is stored for a given AUTH_TOKEN_STORAGE: raw; every token hashed; or, for
 * dual (the migration window), a mix — Ada's and the newcomers' hashed, the others raw.
 */
function stored(token, storage) {
  if (storage === "hashed") return hashToken(token);
  if (storage === "dual" && [TOKEN.ada, TOKEN.newcomer, TOKEN.newcomer2, TOKEN.expired].includes(token)) return hashToken(token);
  return token;
}

/** Truncates every table the suite touches and writes the fixed world. */
export async function seed(db, storage = "raw") {
  await db.query(`truncate webhook_inbox, jobs, call_events, calls, phone_numbers, memberships, organisations,
                  user_settings, authjs.sessions, authjs.accounts, authjs.users restart identity cascade`);
  await db.query(`insert into authjs.users (id, name, email, image) values
      (1, 'Ada Lovelace', 'ada@example.com', 'https://img.example/ada.png'),
      (2, 'Grace "Amazing" Hopper', null, null),
      (3, null, 'newcomer@example.com', null),
      (5, 'Second Newcomer', null, null),
      (4, 'Ünïcødé ✓ \\ tab	end', 'u@example.com', null)`);
  await db.query(`select setval('authjs.users_id_seq', 100)`);
  await db.query(
    `insert into authjs.sessions ("userId", expires, "sessionToken") values
      (1, '2099-01-01T00:00:00.123456Z', $1),
      (1, '2098-06-30T12:00:00Z', $2),
      (2, '2099-03-04T05:06:07.5Z', $3),
      (1, '2001-01-01T00:00:00Z', $4),
      (3, '2099-12-31T23:59:59.999999Z', $5),
      (4, '2099-02-02T02:02:02.020Z', $6),
      (2, '2097-01-01T00:00:00Z', $7),
      (5, '2099-05-05T05:05:05Z', $8),
      -- same token, an older expiry: the newest-expiring match must win
      (2, '2090-01-01T00:00:00Z', $3)`,
    [TOKEN.ada, TOKEN.ada2, TOKEN.grace, TOKEN.expired, TOKEN.newcomer, TOKEN.plusEquals, TOKEN.longest, TOKEN.newcomer2].map((t) =>
      stored(t, storage),
    ),
  );
  await db.query(
    `insert into organisations (id, name, personal_owner_id, created_at) values
      ($1, 'Ada''s workspace', '1', '2026-01-01T00:00:00Z'),
      ($2, 'Analytical Engines', null, '2026-01-02T00:00:00.5Z'),
      ($3, 'Grace''s workspace', '2', '2026-01-03T00:00:00Z'),
      ($4, 'Outsiders', null, '2026-01-04T00:00:00Z'),
      ('0190c0de-0000-7000-8000-00000000a005', 'U''s workspace', '4', '2026-01-05T00:00:00Z')`,
    [ORG.adaPersonal, ORG.team, ORG.gracePersonal, ORG.outsiders],
  );
  await db.query(
    `insert into memberships (organisation_id, user_id, role, created_at) values
      ($2, '1', 'admin', '2026-01-02T00:00:00Z'),
      ($1, '1', 'owner', '2026-01-01T00:00:00Z'),
      ($2, '2', 'member', '2026-01-06T00:00:00Z'),
      ($3, '2', 'owner', '2026-01-03T00:00:00Z'),
      ('0190c0de-0000-7000-8000-00000000a005', '4', 'owner', '2026-01-05T00:00:00Z')`,
    [ORG.adaPersonal, ORG.team, ORG.gracePersonal],
  );
  // Stored active organisations (PUT /api/me/active-organisation): Grace's is the team, so
  // her /api/me and /api/calls answer for it on both sides; user 4's names an organisation
  // they are not in, which both sides must ignore (personal organisation instead).
  await db.query(
    `insert into user_settings (user_id, active_organisation_id, updated_at) values
      ('2', $1, '2026-01-07T00:00:00Z'),
      ('4', $2, '2026-01-07T00:00:00Z')`,
    [ORG.team, ORG.outsiders],
  );
  // 57 calls in Ada's workspace (more than a page), timestamps with no fraction, millisecond
  // and microsecond fractions, every status, nulls and values; 3 in the team; none for Grace.
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, source_language,
                        target_language, voice_id, record, status, stream_state, hangup_cause,
                        hangup_source, sip_hangup_cause, failure_reason, created_at, initiated_at,
                        answered_at, ended_at, telnyx_call_control_id)
     select ('0190c0de-0000-7000-8000-' || lpad(g::text, 12, '0'))::uuid, $1,
            case when g % 4 = 0 then 'inbound' else 'outbound' end,
            '+14155550100', '+1415555' || lpad(g::text, 4, '0'),
            case when g % 5 = 0 then null else 'en' end, case when g % 5 = 0 then null else 'pt-BR' end,
            case when g % 3 = 0 then 'voice-' || g end, g % 2 = 0,
            (array['created','dialing','initiated','answered','ended','failed'])[1 + g % 6],
            case when g % 7 = 0 then 'started' end,
            case when g % 6 = 4 then 'normal_clearing' end, case when g % 6 = 4 then 'caller' end,
            case when g % 6 = 4 then '16' end, case when g % 6 = 5 then 'Telnyx refused: "busy" \\ 486' end,
            timestamptz '2026-11-01T10:00:00Z' + g * interval '1 minute'
              + case g % 3 when 0 then interval '0' when 1 then interval '0.25 second' else g * interval '0.000123 second' end,
            case when g % 6 >= 2 then timestamptz '2026-11-01T10:00:00.000001Z' + g * interval '1 minute' end,
            case when g % 6 >= 3 then timestamptz '2026-11-01T10:00:10.100Z' + g * interval '1 minute' end,
            case when g % 6 = 4 then timestamptz '2026-11-01T10:01:00Z' + g * interval '1 minute' end,
            'v3:ccid-' || g
     from generate_series(1, 57) g`,
    [ORG.adaPersonal],
  );
  // Two calls with the same created_at: the page order falls back to id.
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at) values
      ('0190c0de-0000-7000-8000-00000000b001', $1, 'outbound', '+14155550100', '+4930123', 'created', '2026-11-02T09:00:00.999Z'),
      ('0190c0de-0000-7000-8000-00000000b002', $1, 'inbound', '+4930123', '+14155550100', 'ended', '2026-11-02T09:00:00.999Z'),
      ('0190c0de-0000-7000-8000-00000000b003', $1, 'outbound', '+14155550100', '+33123', 'answered', '2026-10-30T00:00:00Z')`,
    [ORG.team],
  );
}

/** What a pass left in the database, for comparing the two passes (volatile columns left out). */
export async function snapshot(db) {
  await db.query("set timezone = 'UTC'");
  const inbox = await db.query(
    `select provider, event_id, event_type, occurred_at::text as occurred_at, payload::text as payload,
            received_via, processed_at
     from webhook_inbox order by provider, event_id`,
  );
  const jobs = await db.query(
    `select kind, payload::text as payload, dedupe_key, status, attempts, max_attempts, last_error
     from jobs order by dedupe_key nulls last, kind`,
  );
  const organisations = await db.query(
    `select o.name, o.personal_owner_id, m.user_id, m.role,
            o.id::text in ('${Object.values(ORG).join("','")}', '0190c0de-0000-7000-8000-00000000a005') as seeded
     from organisations o left join memberships m on m.organisation_id = o.id
     order by o.name, m.user_id`,
  );
  return { inbox: inbox.rows, jobs: jobs.rows, organisations: organisations.rows };
}
