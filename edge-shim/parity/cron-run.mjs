// The parity suite's cron phase (docs/STRANGLER.md, "Jobs and cron tasks"): the same fixtures
// — an expired recording, a stale call, a stored version days old, an AssemblyAI session whose
// reported seconds drift, a dead job — ticked by each side, and what each leaves compared:
//
//   container   the container's cron (a `callbridge worker` ticks once as it starts) owns
//               every task (the reference)
//   edge        the Worker's Cron Trigger owns every task; no container worker
//   both        both tick together, each owning what it is given (the edge every task, the
//               container all: one runner at a time under the shared lock, one effect)
//   origin      the container owns every task and ticks; the edge's Cron Trigger fires too
//               and must run none of them (its tick report lists no task)
//
//   (the edge's tasks include usage.quotas since ADR 0041: two answered calls of organisations
//   over their monthly minutes, one `continue` (flagged) and one `end` (announced into); and
//   uploads.sweep since ADR 0043: in the s3s-fs both sides reach through the S3 API, a
//   multipart upload started two days ago and one started now, a row naming an upload S3 does
//   not know, a pending version two days old with its object and staging object and a fresh
//   one, staging objects modified two days ago and one modified now)
//
// Compared: the recordings left, the calls' status and failure reason, their call events, the
// storage-days and drift rows, the quota marks, the Telnyx commands each side sent (to a
// recorder on PARITY_TELNYX_PORT, which both sides' TELNYX_API_BASE name), and for the sweep
// the multipart_uploads and pending version rows, the parts left in each upload and the keys
// left in the bucket, and the dead jobs per kind jobs.dead_report reported (the container's
// `dead jobs` log lines, the edge's tick report). The edge owns every cron task in its ways.

import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { ORG, seed } from "./fixtures.mjs";
import { s3Client } from "./s3.mjs";

const STALE = "0190c0de-0000-7000-8000-0000000c0c01";
const LIVE = "0190c0de-0000-7000-8000-0000000c0c02";
const EXPIRED = "0190c0de-0000-7000-8000-0000000c0c11";
const KEPT = "0190c0de-0000-7000-8000-0000000c0c12";
const QUOTA_CONTINUE = "0190c0de-0000-7000-8000-0000000c0c21";
const QUOTA_END = "0190c0de-0000-7000-8000-0000000c0c22";
const CALLS = [STALE, LIVE, QUOTA_CONTINUE, QUOTA_END];
const PENDING_OLD = "0190c0de-0000-7000-8000-0000000c0c31";
const PENDING_NEW = "0190c0de-0000-7000-8000-0000000c0c32";
const SWEEP_KEY = (name) => `orgs/${ORG.adaPersonal}/calls/none/recordings/${name}/v1.wav`;
const STAGING = (name) => `incoming/${ORG.adaPersonal}/${name}`;
/** uploads.sweep's objects outside incoming/ (compared by key). */
const SWEEP_OBJECTS = [SWEEP_KEY(PENDING_OLD), SWEEP_KEY(PENDING_NEW), SWEEP_KEY("upload-old"), SWEEP_KEY("upload-new")];

const s3 = () => s3Client({ endpoint: process.env.PARITY_S3_ENDPOINT, bucket: process.env.PARITY_S3_BUCKET ?? "parity-recordings" });

/** Sets a stored object's modification time `days` back: s3s-fs answers LastModified from the file. */
function age(key, days) {
  const at = new Date(Date.now() - days * 86_400_000);
  fs.utimesSync(path.join(process.env.PARITY_S3_DIR, process.env.PARITY_S3_BUCKET ?? "parity-recordings", key), at, at);
}

/**
 * uploads.sweep's fixtures, the same for every way: S3 first cleared of what a previous way
 * left, then two uploads with a part each (their rows two days and one hour old), a row for an
 * upload S3 does not know, two pending versions with their objects, three staging objects.
 * Returns the upload ids by fixture name, to count their parts afterwards.
 */
async function sweepFixtures(db) {
  const bucket = s3();
  await bucket.createBucket(); // already there after the recordings phase: its answer does not matter
  for (const key of [...(await bucket.keys("incoming/")), ...SWEEP_OBJECTS]) await bucket.remove(key);
  const uploads = { old: await bucket.startUpload(SWEEP_KEY("upload-old")), new: await bucket.startUpload(SWEEP_KEY("upload-new")) };
  await db.query("delete from multipart_uploads");
  await db.query(
    `insert into multipart_uploads (upload_id, object_key, started_at) values
       ($1, $3, now() - interval '2 days'), ($2, $4, now() - interval '1 hour'), ($5, $6, now() - interval '2 days')`,
    [uploads.old, uploads.new, SWEEP_KEY("upload-old"), SWEEP_KEY("upload-new"), crypto.randomUUID(), SWEEP_KEY("upload-unknown")],
  );
  await db.query(`insert into recordings (id, organisation_id, source) values ($1, $3, 'upload'), ($2, $3, 'upload')`, [
    PENDING_OLD,
    PENDING_NEW,
    ORG.adaPersonal,
  ]);
  await db.query(
    `insert into recording_versions (recording_id, version, object_key, staging_key, status, content_type, created_at) values
       ($1, 1, $3, $4, 'pending', 'audio/wav', now() - interval '2 days'), ($2, 1, $5, null, 'pending', 'audio/wav', now())`,
    [PENDING_OLD, PENDING_NEW, SWEEP_KEY(PENDING_OLD), STAGING(`staged-${PENDING_OLD}`), SWEEP_KEY(PENDING_NEW)],
  );
  for (const key of [
    SWEEP_KEY(PENDING_OLD),
    STAGING(`staged-${PENDING_OLD}`),
    SWEEP_KEY(PENDING_NEW),
    STAGING("old-1"),
    STAGING("old-2"),
    STAGING("new-1"),
  ]) {
    await bucket.put(key, `parity ${key}`);
  }
  for (const key of [SWEEP_KEY(PENDING_OLD), STAGING("old-1"), STAGING("old-2")]) age(key, 2);
  return uploads;
}

/** What the sweep left: rows, parts per upload, and the keys in the bucket. */
async function sweepSnapshot(db, uploads) {
  const bucket = s3();
  const rows = await db.query("select object_key from multipart_uploads order by object_key");
  const versions = await db.query(
    "select recording_id::text, version, status from recording_versions where recording_id = any($1::uuid[]) order by 1",
    [[PENDING_OLD, PENDING_NEW]],
  );
  const present = new Set(await bucket.keys("orgs/"));
  return {
    uploadRows: rows.rows.map((r) => r.object_key),
    pendingVersions: versions.rows,
    parts: { old: await bucket.parts(SWEEP_KEY("upload-old"), uploads.old), new: await bucket.parts(SWEEP_KEY("upload-new"), uploads.new) },
    staging: await bucket.keys("incoming/"),
    objects: SWEEP_OBJECTS.filter((k) => present.has(k)),
  };
}

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
        and (select count(*) from usage_quota_marks where call_id = any($3::uuid[])) = 4
        and not exists (select 1 from recording_versions where recording_id = $4) as ok`,
    [STALE, EXPIRED, [QUOTA_CONTINUE, QUOTA_END], PENDING_OLD],
  );
  return rows[0].ok;
};

function startWorker(bin, workerEnv) {
  const child = spawn(bin, ["worker"], { env: { ...process.env, ...workerEnv, LOG_LEVEL: "warn" }, stdio: ["ignore", "pipe", "ignore"] });
  // The container logs to stdout.
  let stdout = "";
  child.stdout.on("data", (c) => {
    stdout += c;
  });
  return {
    /** Stops the worker; returns what its jobs.dead_report logged (`dead jobs` at WARN: kind → count). */
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((r) => child.once("exit", r));
      }
      const dead = {};
      for (const line of stdout.split("\n")) {
        try {
          // LOG_FORMAT=json flattens the event's fields into the line.
          const event = JSON.parse(line);
          const fields = event.fields ?? event;
          if (fields.message === "dead jobs") dead[fields.kind] = Number(fields.dead);
        } catch {}
      }
      return dead;
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

async function run(ctx, { container, edge, trigger = edge }) {
  const { db, shim, bin, storage } = ctx;
  await fixtures(db, storage);
  const uploads = await sweepFixtures(db);
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
    if (trigger) {
      const res = await fetch(new URL("/__scheduled?cron=*%2F5+*+*+*+*", shim));
      if (!res.ok) throw new Error(`the Cron Trigger answered ${res.status}`);
    }
    const done = await until(ticked(db));
    // A second tick (the other side's, a later one) would show up as extra commands.
    await new Promise((r) => setTimeout(r, 1500));
    const snap = { ...(await snapshot(db)), telnyx: [...recorder.requests].sort(), sweep: await sweepSnapshot(db, uploads) };
    // jobs.dead_report: what each side that ticked reported (the container's log, the edge's tick report).
    const reported = {};
    if (worker) Object.assign(reported, await worker.stop());
    const edgeReport = trigger ? await (await fetch(new URL("/__parity/cron", shim))).json() : null;
    if (edge) Object.assign(reported, edgeReport?.dead_jobs ?? {});
    return { done, edgeTasks: edgeReport?.tasks ?? [], snap: { ...snap, deadReported: reported } };
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
    // The container's sweep: the old upload aborted and forgotten, the one S3 does not know kept
    // (s3s-fs answers AccessDenied where R2 says NoSuchUpload), the fresh one kept; the old
    // pending version and its objects gone; only the fresh staging object left.
    const expectSweep = {
      uploadRows: [SWEEP_KEY("upload-new"), SWEEP_KEY("upload-unknown")],
      pendingVersions: [{ recording_id: PENDING_NEW, version: 1, status: "pending" }],
      parts: { old: 0, new: 1 },
      staging: [STAGING("new-1")],
      objects: [SWEEP_KEY(PENDING_NEW)],
    };
    if (JSON.stringify(reference.snap.deadReported) !== JSON.stringify({ "parity.kind": 1 })) {
      problems.push(`jobs.dead_report reported ${JSON.stringify(reference.snap.deadReported)}, not the one dead parity.kind job`);
    }
    if (JSON.stringify(reference.snap.sweep) !== JSON.stringify(expectSweep)) {
      problems.push(`uploads.sweep left ${JSON.stringify(reference.snap.sweep)}, expected ${JSON.stringify(expectSweep)}`);
    }
    record(
      `cron: the container's tick purges, sweeps uploads and stale calls, enforces quotas and meters (${reference.snap.ledger.length} storage days, ${reference.snap.drift.length} drift, ${reference.snap.marks.length} quota marks)`,
      problems.length === 0,
      problems.join("; "),
    );
    for (const [name, way] of [
      ["the edge's Cron Trigger owns all six tasks, no container worker", { container: false, edge: true }],
      ["both tick at once (one runner under the shared lock, one effect)", { container: true, edge: true }],
      ["the container owns every task, the edge's Cron Trigger fires and runs none", { container: true, edge: false, trigger: true }],
    ]) {
      try {
        const got = await run(ctx, way);
        const diff = differences(reference.snap, got.snap);
        const strayTasks = way.edge ? [] : got.edgeTasks;
        record(
          `cron: ${name} — same rows as the container`,
          got.done && diff === "" && strayTasks.length === 0,
          [got.done ? "" : "the tick did not happen", diff, strayTasks.length ? `the edge ran ${strayTasks.join(", ")}` : ""]
            .filter(Boolean)
            .join("; "),
        );
      } catch (err) {
        record(`cron: ${name}`, false, err.message);
      }
    }
  } catch (err) {
    record("cron: parity", false, err.message);
  }
}
