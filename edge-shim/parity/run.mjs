#!/usr/bin/env node
// The parity suite's runner (Node 20, no test framework): sends every case of cases.mjs to the
// container directly, resets the database, sends them all again through the shim, and demands
// identical results — status, body (request ids aside when generated), the headers that
// matter, and the database effects. Then it crosses the paths: an event delivered through one
// path and re-delivered through the other is a no-op. Prints one line per check and
// `parity: N passed, M failed`; exits 1 on any failure.
//
//   node parity/run.mjs --direct http://127.0.0.1:8080 --shim http://127.0.0.1:8787 \
//        --db postgres://postgres@127.0.0.1:5432/parity --aai http://127.0.0.1:9100 \
//        [--storage raw|dual|hashed]
//
// The WebSocket cases (ws-cases.mjs, GET /api/realtime/transcribe) run in the same passes,
// both sides streaming to the AssemblyAI simulator at --aai (aai-sim.mjs), reset per pass.
//
// .ci/parity.sh starts the container and `wrangler dev` and calls this.

import { execFile } from "node:child_process";
import crypto from "node:crypto";
import http from "node:http";
import { parseArgs, promisify } from "node:util";
import zlib from "node:zlib";
import PostgresAdapter from "@auth/pg-adapter";
import pg from "pg";
import { CASES } from "./cases.mjs";
import { AAI_WEBHOOK_SECRET, edgeHeaders, hashToken, seed, snapshot, telnyxSignature } from "./fixtures.mjs";
import { WS_CASES } from "./ws-cases.mjs";
import { readFileSync } from "node:fs";
import { runJobParity } from "./jobs-run.mjs";
import { resetSimulator, runWsCases } from "./ws-run.mjs";

const { values: args } = parseArgs({
  options: {
    direct: { type: "string" },
    shim: { type: "string" },
    db: { type: "string" },
    // The AssemblyAI simulator both sides stream to (parity/aai-sim.mjs).
    aai: { type: "string" },
    // The container binary: `auth migrate-tokens` backfills in the dual round.
    bin: { type: "string" },
    "worker-env": { type: "string" },
    rehearse: { type: "boolean", default: false },
    // The container's EDGE_SHARED_SECRET: requests sent to --direct are signed with it.
    "edge-secret": { type: "string" },
    // AUTH_TOKEN_STORAGE of both sides: how the fixtures store session tokens.
    storage: { type: "string", default: "raw" },
    verbose: { type: "boolean", default: false },
  },
});
if (!args.direct || !args.shim || !args.db || !args.aai) {
  console.error("usage: run.mjs --direct URL --shim URL --db POSTGRES_URL --aai SIMULATOR_URL [--storage raw|dual|hashed] [--verbose]");
  process.exit(2);
}

/** Response headers whose values must match (after request-id normalisation). */
const COMPARED_HEADERS = [
  "content-type",
  "www-authenticate",
  "x-request-id",
  "access-control-allow-origin",
  "access-control-allow-credentials",
  "access-control-expose-headers",
  "vary",
];
const ANSWERED_BY = "x-parity-answered-by";
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ANY_UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

// ---- HTTP ----------------------------------------------------------------------------------

/** Signature headers for a request to the container directly (none through the shim). */
function signFor(base) {
  return (method, pathAndQuery, body) =>
    base === args.direct && args["edge-secret"] ? edgeHeaders(args["edge-secret"], method, pathAndQuery, body) : {};
}

/** Sends a request with exact header bytes (Buffers go out as latin1, i.e. byte for byte). */
function send(base, req) {
  const url = new URL(req.path, base);
  const signature = signFor(base)(req.method, url.pathname + url.search, req.body ?? Buffer.alloc(0));
  const headers = [...req.headers.map(([k, v]) => [k, Buffer.isBuffer(v) ? v.toString("latin1") : v]), ...Object.entries(signature)];
  return new Promise((resolve, reject) => {
    const r = http.request(
      {
        host: url.hostname,
        port: url.port,
        method: req.method,
        path: url.pathname + url.search,
        // Array form: repeated names stay separate and nothing is added (so Host is ours).
        headers: ["host", url.host, ...headers.flat(), ...(req.body ? ["content-length", String(req.body.length)] : [])],
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          let body = Buffer.concat(chunks);
          const encoding = res.headers["content-encoding"];
          if (encoding === "gzip") body = zlib.gunzipSync(body);
          else if (encoding === "br") body = zlib.brotliDecompressSync(body);
          else if (encoding === "deflate") body = zlib.inflateSync(body);
          resolve({ status: res.statusCode, headers: res.headers, body: body.toString("utf8") });
        });
        res.on("error", reject);
      },
    );
    r.on("error", reject);
    r.setTimeout(15_000, () => r.destroy(new Error("timed out")));
    if (req.body) r.write(req.body);
    r.end();
  });
}

// ---- normalisation -------------------------------------------------------------------------

/**
 * The parts of a response that must match. A request id the server generated (no acceptable
 * x-request-id or cf-ray was sent) differs per request by design: it must be a UUIDv7 equal in
 * header and body, and is then replaced by a placeholder. UUIDs that are not fixtures (the
 * personal organisation created on first sight) are numbered in order of appearance.
 */
function normalise(res, req, fixedUuids) {
  const problems = [];
  const sent = req.headers.find(([k]) => k.toLowerCase() === "x-request-id")?.[1];
  const ray = req.headers.find(([k]) => k.toLowerCase() === "cf-ray")?.[1];
  const acceptable = (v) => typeof v === "string" && /^[A-Za-z0-9\-_.:]{1,128}$/.test(v);
  const expectedId = acceptable(sent) ? sent : acceptable(ray) ? ray : null;
  const headerId = res.headers["x-request-id"];
  let body = res.body;
  let requestId = headerId;
  if (expectedId !== null) {
    if (headerId !== expectedId) problems.push(`x-request-id ${headerId} is not the one sent (${expectedId})`);
  } else {
    if (!UUID_V7.test(headerId ?? "")) problems.push(`generated x-request-id ${headerId} is not a UUIDv7`);
    requestId = "<generated-uuidv7>";
    body = body.split(headerId ?? "\u0000").join(requestId);
  }
  try {
    const json = JSON.parse(res.body);
    if (json && typeof json === "object" && "request_id" in json && json.request_id !== headerId) {
      problems.push(`body request_id ${json.request_id} differs from x-request-id ${headerId}`);
    }
  } catch {
    // not JSON: compared as text
  }
  const numbered = new Map();
  body = body.replace(ANY_UUID, (u) => {
    if (fixedUuids.has(u) || u === requestId) return u;
    if (!numbered.has(u)) numbered.set(u, `<new-uuid-${numbered.size + 1}>`);
    return numbered.get(u);
  });
  const headers = {};
  for (const name of COMPARED_HEADERS) {
    const v = name === "x-request-id" ? requestId : res.headers[name];
    headers[name] = v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
  }
  return { status: res.status, headers, body, problems };
}

function firstDifference(a, b) {
  if (a.status !== b.status) return `status ${a.status} vs ${b.status}`;
  for (const name of COMPARED_HEADERS) {
    if (a.headers[name] !== b.headers[name])
      return `header ${name}: ${JSON.stringify(a.headers[name])} vs ${JSON.stringify(b.headers[name])}`;
  }
  if (a.body !== b.body) {
    let i = 0;
    while (i < a.body.length && a.body[i] === b.body[i]) i++;
    const around = (s) => JSON.stringify(s.slice(Math.max(0, i - 40), i + 60));
    return `body differs at char ${i}: direct ${around(a.body)} vs shim ${around(b.body)}`;
  }
  return null;
}

// ---- the run -------------------------------------------------------------------------------

const results = [];
function record(name, ok, detail = "") {
  results.push({ name, ok });
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? ` — ${detail}` : ""}`);
}

async function pass(base, db, label) {
  await seed(db, args.storage);
  const fixed = new Set();
  const seeded = await db.query("select id::text as id from organisations union all select id::text from calls");
  for (const row of seeded.rows) fixed.add(row.id);
  const out = [];
  for (const c of CASES) {
    const req = c.build();
    try {
      const res = await send(base, req);
      out.push({ c, req, res, norm: normalise(res, req, fixed) });
    } catch (err) {
      out.push({ c, req, error: `${label}: ${err.message}` });
    }
  }
  await resetSimulator(args.aai);
  const ws = (await runWsCases(WS_CASES, base, args.aai, signFor(base))).map((r) =>
    r.error || r.res.error ? { ...r, error: `${label}: ${r.error ?? r.res.error}` } : { ...r, norm: normalise(r.res, r.c, fixed) },
  );
  const turns = await db.query(
    `select call_id::text, track, turn_index, session_id, text, words::text as words, confidence, start_ms, end_ms
     from transcript_turns order by call_id, track, turn_index`,
  );
  return { out, ws, turns: turns.rows, snap: await snapshot(db) };
}

/** A WebSocket case: the handshake as an HTTP answer, then the session on both sides. */
function compareWs(c, d, s) {
  const upgraded = d.res.status === 101 && s.res.status === 101;
  // A refusal carries a request id like any answer; a 101 is not an HTTP answer to compare.
  const problems = upgraded ? [] : [...d.norm.problems.map((p) => `direct: ${p}`), ...s.norm.problems.map((p) => `shim: ${p}`)];
  if (d.res.status !== c.expect.status) problems.push(`container answered ${d.res.status}, the case expects ${c.expect.status}`);
  const answeredBy = s.res.headers[ANSWERED_BY] === "edge" ? "answers" : "defers";
  if (answeredBy !== c.expect.edge) problems.push(`through the shim the edge ${answeredBy}, expected ${c.expect.edge}`);
  if (upgraded) {
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    if (c.end !== "leave") {
      if (!same(d.res.messages, s.res.messages)) {
        const i = d.res.messages.findIndex((m, k) => m !== s.res.messages[k]);
        const at = i < 0 ? Math.min(d.res.messages.length, s.res.messages.length) : i;
        problems.push(
          `message ${at} of ${d.res.messages.length} vs ${s.res.messages.length}: ${JSON.stringify(d.res.messages[at] ?? null)?.slice(0, 160)} vs ${JSON.stringify(s.res.messages[at] ?? null)?.slice(0, 160)}`,
        );
      } else if (c.script.length > 0 && !d.res.messages.some((m) => m.includes('"Turn"')) && !c.fault) {
        problems.push("no Turn message: the case proves nothing");
      }
    }
    if (!same(d.res.close, s.res.close)) problems.push(`close ${JSON.stringify(d.res.close)} vs ${JSON.stringify(s.res.close)}`);
    if (!same(d.sessions, s.sessions))
      problems.push(`AssemblyAI received ${JSON.stringify(d.sessions).slice(0, 300)} vs ${JSON.stringify(s.sessions).slice(0, 300)}`);
  } else {
    const diff = firstDifference(d.norm, s.norm);
    if (diff) problems.push(diff);
    if (d.sessions.length + s.sessions.length > 0) problems.push("a refused handshake opened an AssemblyAI session");
  }
  return problems;
}

function compareSnapshots(direct, shim) {
  const strip = (rows) => rows.map(({ received_via, ...rest }) => rest);
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  record(
    `database: webhook_inbox rows identical apart from received_via (${direct.inbox.length} rows)`,
    direct.inbox.length > 0 && same(strip(direct.inbox), strip(shim.inbox)),
    same(strip(direct.inbox), strip(shim.inbox)) ? "" : diffRows(strip(direct.inbox), strip(shim.inbox)),
  );
  const viaDirect = new Set(direct.inbox.map((r) => r.received_via));
  record(
    "database: every row the container wrote says received_via = origin",
    viaDirect.size === 1 && viaDirect.has("origin"),
    [...viaDirect].join(","),
  );
  const deferredIds = new Set(["aai-repeated:completed"]); // the edge hands these to the container
  const wrong = shim.inbox.filter((r) => r.received_via !== (deferredIds.has(r.event_id) ? "origin" : "edge"));
  record(
    "database: through the shim, rows say received_via = edge (origin for deferred events)",
    wrong.length === 0,
    wrong.map((r) => `${r.event_id}:${r.received_via}`).join(" "),
  );
  record(
    `database: jobs identical (${direct.jobs.length} rows, one per new event)`,
    direct.jobs.length === direct.inbox.length && same(direct.jobs, shim.jobs),
    same(direct.jobs, shim.jobs) ? "" : diffRows(direct.jobs, shim.jobs),
  );
  record(
    "database: organisations and memberships identical (incl. personal org made on first sight)",
    same(direct.organisations, shim.organisations) && direct.organisations.some((r) => !r.seeded),
    same(direct.organisations, shim.organisations) ? "" : diffRows(direct.organisations, shim.organisations),
  );
}

function diffRows(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (JSON.stringify(a[i]) !== JSON.stringify(b[i])) return `row ${i}: ${JSON.stringify(a[i])} vs ${JSON.stringify(b[i])}`;
  }
  return "";
}

/**
 * An event through one path, then re-delivered through the other: the second is a no-op.
 * Once per provider (Telnyx, AssemblyAI).
 */
async function crossPaths(db) {
  const providers = [
    {
      name: "telnyx",
      prefix: "evt",
      deliver(base, id, attempt) {
        const body = Buffer.from(
          JSON.stringify({
            data: { record_type: "event", event_type: "call.answered", id, occurred_at: "2026-11-26T04:00:00.5Z", payload: { attempt } },
            meta: { attempt },
          }),
        );
        const ts = String(Math.floor(Date.now() / 1000));
        return send(base, {
          method: "POST",
          path: "/webhooks/telnyx",
          headers: [
            ["content-type", "application/json"],
            ["telnyx-timestamp", ts],
            ["telnyx-signature-ed25519", telnyxSignature(ts, body)],
          ],
          body,
        });
      },
      eventId: (id) => id,
      attempt: "payload->'meta'->>'attempt'",
    },
    {
      name: "assemblyai",
      prefix: "aai",
      deliver(base, id, attempt) {
        const body = Buffer.from(JSON.stringify({ transcript_id: id, status: "completed", attempt }));
        return send(base, {
          method: "POST",
          path: "/webhooks/assemblyai",
          headers: [
            ["content-type", "application/json"],
            ["x-callbridge-webhook-secret", AAI_WEBHOOK_SECRET],
          ],
          body,
        });
      },
      eventId: (id) => `${id}:completed`,
      attempt: "payload->>'attempt'",
    },
  ];
  for (const p of providers) {
    const state = async (id) => {
      const eventId = p.eventId(id);
      const inbox = await db.query(
        `select received_via, ${p.attempt} as attempt from webhook_inbox where provider = $1 and event_id = $2`,
        [p.name, eventId],
      );
      const jobs = await db.query("select count(*)::int as n from jobs where dedupe_key = $1", [`webhook:${p.name}:${eventId}`]);
      return { rows: inbox.rows, jobs: jobs.rows[0].n };
    };
    for (const [first, second, id, via] of [
      [args.shim, args.direct, `${p.prefix}-cross-shim-first`, "edge"],
      [args.direct, args.shim, `${p.prefix}-cross-direct-first`, "origin"],
    ]) {
      const a = await p.deliver(first, id, 1);
      const b = await p.deliver(second, id, 2);
      const s = await state(id);
      const label = `${p.name}: ${first === args.shim ? "shim, then container" : "container, then shim"}`;
      record(
        `cross-path: ${label}: first stored, second answers duplicate:true`,
        a.status === 200 && JSON.parse(a.body).duplicate === false && b.status === 200 && JSON.parse(b.body).duplicate === true,
        `${a.status} ${a.body} / ${b.status} ${b.body}`,
      );
      record(
        `cross-path: ${label}: one inbox row (the first delivery's, received_via=${via}) and one job`,
        s.rows.length === 1 && s.rows[0].received_via === via && s.rows[0].attempt === "1" && s.jobs === 1,
        JSON.stringify(s),
      );
    }
    // Same event twice through the shim: the second is a no-op too.
    const id = `${p.prefix}-cross-shim-twice`;
    const a = await p.deliver(args.shim, id, 1);
    const b = await p.deliver(args.shim, id, 2);
    const s = await state(id);
    record(
      `cross-path: ${p.name}: shim twice: duplicate:false then duplicate:true, one row, one job`,
      a.status === 200 &&
        JSON.parse(a.body).duplicate === false &&
        JSON.parse(b.body).duplicate === true &&
        s.rows.length === 1 &&
        s.jobs === 1,
      JSON.stringify(s),
    );
  }
}

// ---- dual storage: a stored hash is not a login ---------------------------------------------

/**
 * Issue 14 item 4. A session made by the real @auth/pg-adapter (createUser, createSession with
 * a random UUID, as Auth.js does), then hashed in place by the real backfill
 * (`callbridge auth migrate-tokens`). Through both paths: the raw token logs in before and
 * after; the stored SHA-256 — what anyone who can read the sessions table sees — never does,
 * nor its upper-cased copy.
 */
async function storedHashIsNoLogin(db) {
  const pool = new pg.Pool({ connectionString: args.db, options: "-c search_path=authjs", max: 1 });
  try {
    const adapter = PostgresAdapter(pool);
    const user = await adapter.createUser({ name: "Hash Probe", email: "hash-probe@example.com", emailVerified: null });
    const token = crypto.randomUUID();
    await adapter.createSession({ sessionToken: token, userId: user.id, expires: new Date("2099-01-01T00:00:00Z") });
    const me = (base, bearer) => send(base, { method: "GET", path: "/api/me", headers: [["authorization", `Bearer ${bearer}`]] });
    for (const [label, base] of [
      ["container", args.direct],
      ["shim", args.shim],
    ]) {
      const res = await me(base, token);
      record(`dual: adapter session, raw token before the backfill logs in (${label})`, res.status === 200, `${res.status}`);
    }
    if (!args.bin) {
      record("dual: backfill", false, "run.mjs needs --bin (the container binary) for the backfill");
      return;
    }
    await promisify(execFile)(args.bin, ["auth", "migrate-tokens"], {
      env: { PATH: process.env.PATH, APP_ENV: "development", DATABASE_URL: args.db, AUTH_TOKEN_STORAGE: "dual" },
    });
    const stored = (await db.query(`select "sessionToken" as t from authjs.sessions where "userId" = $1`, [Number(user.id)])).rows[0].t;
    record("dual: the backfill stored the session's SHA-256", stored === hashToken(token) && stored !== token, stored);
    for (const [label, base] of [
      ["container", args.direct],
      ["shim", args.shim],
    ]) {
      const raw = await me(base, token);
      const hash = await me(base, stored);
      const upper = await me(base, stored.toUpperCase());
      record(
        `dual: after the backfill the raw token logs in, the stored hash does not (${label})`,
        raw.status === 200 && hash.status === 401 && upper.status === 401,
        `raw ${raw.status}, stored hash ${hash.status}, upper-cased ${upper.status}`,
      );
    }
  } finally {
    await pool.end();
  }
}

/** The container's settings for the `worker` the job phase starts (.ci/parity.sh writes them). */
function readWorkerEnv() {
  if (!args["worker-env"]) return null;
  const lines = readFileSync(args["worker-env"], "utf8")
    .split("\n")
    .filter((l) => l.includes("="));
  return Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

async function main() {
  const db = new pg.Client({ connectionString: args.db });
  await db.connect();
  try {
    console.log(
      `parity: ${CASES.length} HTTP cases, ${WS_CASES.length} WebSocket cases, AUTH_TOKEN_STORAGE=${args.storage}, direct ${args.direct}, through the shim ${args.shim}`,
    );
    if (args.rehearse) {
      // `make rehearse`: the job phase and the retirement rehearsal only.
      const workerEnv = readWorkerEnv();
      await runJobParity({ db, send, direct: args.direct, shim: args.shim, bin: args.bin, workerEnv, storage: args.storage }, record);
      await db.end();
      return summary();
    }
    const direct = await pass(args.direct, db, "direct");
    const shim = await pass(args.shim, db, "shim");
    for (let i = 0; i < CASES.length; i++) {
      const d = direct.out[i];
      const s = shim.out[i];
      const c = CASES[i];
      if (d.error || s.error) {
        record(c.name, false, d.error ?? s.error);
        continue;
      }
      const problems = [...d.norm.problems.map((p) => `direct: ${p}`), ...s.norm.problems.map((p) => `shim: ${p}`)];
      if (d.norm.status !== c.expect.status) problems.push(`container answered ${d.norm.status}, the case expects ${c.expect.status}`);
      if (d.res.headers[ANSWERED_BY] !== undefined) problems.push(`the container's answer carries ${ANSWERED_BY}`);
      const answeredBy = s.res.headers[ANSWERED_BY] === "edge" ? "answers" : "defers";
      if (answeredBy !== c.expect.edge) problems.push(`through the shim the edge ${answeredBy}, expected ${c.expect.edge}`);
      const diff = firstDifference(d.norm, s.norm);
      if (diff) problems.push(diff);
      record(`${c.name} [${d.norm.status}${c.expect.edge === "defers" ? ", deferred" : ""}]`, problems.length === 0, problems.join("; "));
      if (args.verbose) console.log(`     ${d.norm.body.slice(0, 300)}`);
    }
    for (let i = 0; i < WS_CASES.length; i++) {
      const d = direct.ws[i];
      const s = shim.ws[i];
      const c = d.c;
      if (d.error || s.error) {
        record(c.name, false, d.error ?? s.error);
        continue;
      }
      const problems = compareWs(c, d, s);
      const label = `${d.res.status}${c.expect.edge === "defers" ? ", deferred" : ""}${d.res.messages?.length ? `, ${d.res.messages.length} messages` : ""}`;
      record(`${c.name} [${label}]`, problems.length === 0, problems.join("; "));
      if (args.verbose)
        console.log(`     ${JSON.stringify(d.res.messages ?? d.norm.body).slice(0, 400)} close ${JSON.stringify(d.res.close)}`);
    }
    const sameTurns = JSON.stringify(direct.turns) === JSON.stringify(shim.turns);
    record(
      `database: transcript_turns identical (${direct.turns.length} rows, stored by the container for call_id sessions)`,
      direct.turns.length > 0 && sameTurns,
      sameTurns ? "" : diffRows(direct.turns, shim.turns),
    );
    compareSnapshots(direct.snap, shim.snap);
    await crossPaths(db);
    if (args.storage === "dual") await storedHashIsNoLogin(db);
    // The job phase once (it does not depend on token storage): parity/jobs-run.mjs.
    if (args.storage === "raw") {
      const workerEnv = readWorkerEnv();
      await runJobParity({ db, send, direct: args.direct, shim: args.shim, bin: args.bin, workerEnv, storage: args.storage }, record);
    }
  } finally {
    await db.end().catch(() => {});
  }
  summary();
}

function summary() {
  const failed = results.filter((r) => !r.ok).length;
  console.log(`parity: ${results.length - failed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((err) => {
  console.error(err);
  console.log("parity: 0 passed, 1 failed");
  process.exit(1);
});
