// The parity suite's cron phase (docs/STRANGLER.md, "Jobs and cron tasks"): the same fixtures
// — an expired recording, a stale call, a stored version days old, an AssemblyAI session whose
// reported seconds drift, a dead job — ticked by each side, and what each leaves compared:
//
//   container   the container's cron (a `callbridge worker` ticks once as it starts) owns
//               every task (the reference)
//   edge        the Worker's Cron Trigger owns retention.purge, calls.stale_sweep,
//               jobs.dead_report and usage.metering; no container worker
//   both        both tick together, each owning what it is given (the edge those four, the
//               container all: one runner at a time under the shared lock, one effect)
//
//   (the edge's tasks include usage.quotas since ADR 0041: two answered calls of organisations
//   over their monthly minutes, one `continue` (flagged) and one `end` (announced into))
//
// Compared: the recordings left, the calls' status and failure reason, their call events, the
// storage-days and drift rows, the quota marks, and the Telnyx commands each side sent (to a
// recorder on PARITY_TELNYX_PORT, which both sides' TELNYX_API_BASE name). (uploads.sweep stays
// with the container: ADR 0027.)

import { spawn } from "node:child_process";
import http from "node:http";
import { ORG, seed } from "./fixtures.mjs";

const STALE = "0190c0de-0000-7000-8000-0000000c0c01";
const LIVE = "0190c0de-0000-7000-8000-0000000c0c02";
const EXPIRED = "0190c0de-0000-7000-8000-0000000c0c11";
const KEPT = "0190c0de-0000-7000-8000-0000000c0c12";
const QUOTA_CONTINUE = "0190c0de-0000-7000-8000-0000000c0c21";
const QUOTA_END = "0190c0de-0000-7000-8000-0000000c0c22";
const CALLS = [STALE, LIVE, QUOTA_CONTINUE, QUOTA_END];

async function fixtures(db, storage) {
  await seed(db, storage);
  await db.query("truncate usage_drift, usage_ledger");
  await db.query("update organisations set recording_retention_days = 1 where id = $1", [ORG.adaPersonal]);
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at, updated_at) values
      ($1, $3, 'outbound', '+14155550100', '+4930555', 'initiated', now() - interval '6 hours', now() - interval '6 hours'),
      ($2, $3, 'outbound', '+14155550100', '+4930666', 'answered', now() - interval '6 hours', now() - interval '1 minute')`,
    [STALE, LIVE, ORG.adaPersonal],
  );
  await db.query(
    `insert into recordings (id, organisation_id, source, created_at) values
      ($1, $3, 'upload', now() - interval '3 days'), ($2, $3, 'upload', now())`,
    [EXPIRED, KEPT, ORG.adaPersonal],
  );
  const key = (id) => `orgs/${ORG.adaPersonal}/calls/none/recordings/${id}/v1.wav`;
  await db.query(
    `insert into recording_versions (recording_id, version, object_key, status, content_type, size_bytes, sha256, stored_at) values
      ($1, 1, $3, 'stored', 'audio/wav', 1234, repeat('a', 64), now() - interval '3 days'),
      ($2, 1, $4, 'stored', 'audio/wav', 4321, repeat('b', 64), now() - interval '3 days')`,
    [EXPIRED, KEPT, key(EXPIRED), key(KEPT)],
  );
  await db.query(
    `insert into usage_ledger (organisation_id, vendor, unit, quantity, source_key, occurred_at, metadata) values
      ($1, 'assemblyai', 'streaming_seconds', 60, 'assemblyai:stream:parity-drift', now(), '{"session_id": "parity-drift", "measured_seconds": 60.0, "reported_seconds": 41.5}'),
      ($1, 'assemblyai', 'streaming_seconds', 30, 'assemblyai:stream:parity-fine', now(), '{"session_id": "parity-fine", "measured_seconds": 30.0, "reported_seconds": 29.0}')`,
    [ORG.adaPersonal],
  );
  await db.query("insert into jobs (kind, status, last_error) values ('parity.kind', 'dead', 'gone')");
  // Two organisations at 105 % of 10 monthly minutes (630 s of Telnyx call time this month);
  // the team's seeded answered call (no control id) is marked too, and sent nothing.
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, telnyx_call_control_id, created_at, updated_at) values
      ($1, $3, 'outbound', '+14155550100', '+4930771', 'answered', 'v3:quota-continue', now() - interval '20 minutes', now() - interval '1 minute'),
      ($2, $4, 'outbound', '+14155550100', '+4930772', 'answered', 'v3:quota-end', now() - interval '20 minutes', now() - interval '1 minute')`,
    [QUOTA_CONTINUE, QUOTA_END, ORG.team, ORG.gracePersonal],
  );
  await db.query(`insert into usage_quotas (organisation_id, monthly_minutes, at_limit) values ($1, 10, 'continue'), ($2, 10, 'end')`, [
    ORG.team,
    ORG.gracePersonal,
  ]);
  await db.query(
    `insert into usage_ledger (organisation_id, vendor, unit, quantity, source_key, occurred_at) values
      ($1, 'telnyx', 'call_seconds', 630, 'telnyx:parity-quota-continue', now()),
      ($2, 'telnyx', 'call_seconds', 630, 'telnyx:parity-quota-end', now())`,
    [ORG.team, ORG.gracePersonal],
  );
}

async function snapshot(db) {
  await db.query("set timezone = 'UTC'");
  const recordings = await db.query("select id::text from recordings order by id");
  const calls = await db.query(
    "select id::text, status, failure_reason, ended_at is not null as ended from calls where id = any($1::uuid[]) order by id",
    [CALLS],
  );
  const events = await db.query(
    "select call_id::text, seq, kind, data::text from call_events where call_id = any($1::uuid[]) order by call_id, seq",
    [CALLS],
  );
  const marks = await db.query(
    "select call_id::text, quota, level, hangup_at is not null as hung_up from usage_quota_marks order by call_id, quota, level",
  );
  const ledger = await db.query(
    `select organisation_id::text, call_id::text, vendor, unit, quantity::text, source_key, occurred_at::text, metadata::text
     from usage_ledger where unit = 'byte_days' order by source_key`,
  );
  const drift = await db.query(
    "select organisation_id::text, vendor, session_id, ledger_seconds::text, reported_seconds::text from usage_drift order by session_id",
  );
  return { recordings: recordings.rows, calls: calls.rows, events: events.rows, ledger: ledger.rows, drift: drift.rows, marks: marks.rows };
}

async function until(check, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

const ticked = (db) => async () => {
  const { rows } = await db.query(
    `select (select status from calls where id = $1) = 'failed'
        and exists (select 1 from usage_drift where session_id = 'parity-drift')
        and not exists (select 1 from recordings where id = $2)
        and (select count(*) from usage_quota_marks where call_id = any($3::uuid[])) = 4 as ok`,
    [STALE, EXPIRED, [QUOTA_CONTINUE, QUOTA_END]],
  );
  return rows[0].ok;
};

function startWorker(bin, workerEnv) {
  const child = spawn(bin, ["worker"], { env: { ...process.env, ...workerEnv, LOG_LEVEL: "warn" }, stdio: ["ignore", "ignore", "pipe"] });
  return {
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

/** The Telnyx API stand-in: records every request (keys sorted: serde_json sorts them) and answers 200. */
function telnyxRecorder(port) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      const parsed = JSON.parse(body || "{}");
      requests.push(`${req.method} ${req.url} ${req.headers.authorization ?? ""} ${JSON.stringify(parsed, Object.keys(parsed).sort())}`);
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"data":{"result":"ok"}}');
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve({ server, requests }));
  });
}

async function setOwner(shim, owner) {
  const res = await fetch(new URL(`/__parity/work?telnyx.event=${owner}`, shim), { method: "POST" });
  if (res.status !== 204) throw new Error(`the parity Worker did not take owner ${owner}: ${res.status}`);
}

async function run(ctx, { container, edge }) {
  const { db, shim, bin, storage } = ctx;
  await fixtures(db, storage);
  await setOwner(shim, edge ? "edge" : "origin");
  const workerEnv = {
    ...ctx.workerEnv,
    R2_ENDPOINT: process.env.PARITY_S3_ENDPOINT ?? "http://127.0.0.1:9",
    R2_BUCKET: process.env.PARITY_S3_BUCKET ?? "parity-recordings",
    R2_ACCESS_KEY_ID: "cbtest",
    R2_SECRET_ACCESS_KEY: "cbtest-secret-key",
    R2_CREATE_BUCKET: "true",
    R2_FORCE_PATH_STYLE: "true",
    TELNYX_API_BASE: `http://127.0.0.1:${process.env.PARITY_TELNYX_PORT}/v2`,
  };
  const recorder = await telnyxRecorder(Number(process.env.PARITY_TELNYX_PORT));
  const worker = container ? startWorker(bin, workerEnv) : null;
  try {
    if (edge) {
      const res = await fetch(new URL("/__scheduled?cron=*%2F5+*+*+*+*", shim));
      if (!res.ok) throw new Error(`the Cron Trigger answered ${res.status}`);
    }
    const done = await until(ticked(db));
    // A second tick (the other side's, a later one) would show up as extra commands.
    await new Promise((r) => setTimeout(r, 1500));
    return { done, snap: { ...(await snapshot(db)), telnyx: [...recorder.requests].sort() } };
  } finally {
    await new Promise((r) => recorder.server.close(r));
    await worker?.stop();
    await setOwner(shim, "origin").catch(() => {});
  }
}

function differences(a, b) {
  return Object.keys(a)
    .filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]))
    .map((k) => `${k}: ${JSON.stringify(a[k]).slice(0, 400)} vs ${JSON.stringify(b[k]).slice(0, 400)}`)
    .join(" | ");
}

export async function runCronParity(ctx, record) {
  if (!ctx.bin || !ctx.workerEnv || !process.env.PARITY_TELNYX_PORT) {
    record("cron: parity", false, "needs --bin, --worker-env and PARITY_TELNYX_PORT (.ci/parity.sh)");
    return;
  }
  try {
    const reference = await run(ctx, { container: true, edge: false });
    const problems = [];
    if (!reference.done) problems.push("the container's tick did not purge, sweep and meter");
    if (reference.snap.ledger.length < 3) problems.push(`only ${reference.snap.ledger.length} storage-day rows`);
    if (reference.snap.telnyx.length !== 1) problems.push(`${reference.snap.telnyx.length} Telnyx commands, not the one announcement`);
    record(
      `cron: the container's tick purges, sweeps, enforces quotas and meters (${reference.snap.ledger.length} storage days, ${reference.snap.drift.length} drift, ${reference.snap.marks.length} quota marks)`,
      problems.length === 0,
      problems.join("; "),
    );
    for (const [name, way] of [
      ["the edge's Cron Trigger owns the five tasks, no container worker", { container: false, edge: true }],
      ["both tick at once (one runner under the shared lock, one effect)", { container: true, edge: true }],
    ]) {
      try {
        const got = await run(ctx, way);
        const diff = differences(reference.snap, got.snap);
        record(
          `cron: ${name} — same rows as the container`,
          got.done && diff === "",
          [got.done ? "" : "the tick did not happen", diff].filter(Boolean).join("; "),
        );
      } catch (err) {
        record(`cron: ${name}`, false, err.message);
      }
    }
  } catch (err) {
    record("cron: parity", false, err.message);
  }
}
