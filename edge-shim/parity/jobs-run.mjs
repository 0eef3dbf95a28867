// The parity suite's job phase (docs/STRANGLER.md, "Jobs"): one script of Telnyx events for
// known calls (lifecycle, streaming, a recording, an unknown call, a duplicate delivery, a
// hang-up before its answer) delivered and processed four ways, and the database each way
// leaves compared with the container's own:
//
//   container   events to the container, its worker runs telnyx.event (the reference)
//   edge        events through the shim, the edge owns telnyx.event, no container worker
//   edge→origin events through the shim, the container owns telnyx.event (its worker runs it,
//               the edge consumer acknowledges without running)
//   both        events through the shim, the edge owns telnyx.event AND a container worker
//               runs too (cross-side duplicates: both may take each job; one effect)
//
// Compared: calls (status, times, Telnyx ids, stream state, hang-up), call_events as a set
// (order may differ) with gap-free seqs, the recording.import jobs each side enqueued, the
// inbox rows processed, every telnyx.event job done, and the Telnyx requests each side made
// (a recording server on loopback: none for these events on either side).

import { spawn } from "node:child_process";
import http from "node:http";
import { ORG, seed, telnyxSignature } from "./fixtures.mjs";
import { runCronParity } from "./cron-run.mjs";
import { runMaxDurationParity } from "./max-duration-run.mjs";
import { runRecordingParity } from "./recordings-run.mjs";

const CALL_A = "0190c0de-0000-7000-8000-0000000c0a01";
const CALL_B = "0190c0de-0000-7000-8000-0000000c0a02";
const CALL_C = "0190c0de-0000-7000-8000-0000000c0a03";
const clientState = (id) => Buffer.from(JSON.stringify({ call_id: id })).toString("base64");

/**
 * The script: [event id, type, occurred_at, payload]. Event ids carry the way's `prefix`, so a
 * Queue message of an earlier way that arrives late names no event of this one (the snapshot
 * strips the prefix before comparing).
 */
function script(prefix) {
  const at = (s) => `2026-11-26T05:00:${String(s).padStart(2, "0")}.${String(100000 + s * 37).slice(1)}Z`;
  const events = [
    [
      "job-a-1",
      "call.initiated",
      at(1),
      {
        call_control_id: "v3:job-a",
        client_state: clientState(CALL_A),
        call_leg_id: "leg-a",
        call_session_id: "sess-a",
        direction: "outgoing",
      },
    ],
    ["job-a-2", "call.answered", at(3), { call_control_id: "v3:job-a" }],
    ["job-a-3", "streaming.started", at(4), { call_control_id: "v3:job-a", stream_id: "stream-a" }],
    [
      "job-a-4",
      "call_recording_saved",
      at(9),
      {
        call_control_id: "v3:job-a",
        recording_id: "rec-a",
        channels: "dual",
        recording_urls: { mp3: "https://s3.example.telnyx.com/rec-a.mp3" },
      },
    ],
    ["job-a-5", "streaming.stopped", at(8), { call_control_id: "v3:job-a", stream_id: "stream-a" }],
    [
      "job-a-6",
      "call.hangup",
      at(10),
      { call_control_id: "v3:job-a", hangup_cause: "normal_clearing", hangup_source: "callee", sip_hangup_cause: "200" },
    ],
    ["job-b-1", "call.hangup", at(20), { client_state: clientState(CALL_B), hangup_cause: "user_busy", sip_hangup_cause: "486" }],
    ["job-b-2", "call.answered", at(15), { client_state: clientState(CALL_B) }],
    ["job-c-1", "call.initiated", at(25), { call_control_id: "v3:job-c" }],
    ["job-c-1", "call.initiated", at(25), { call_control_id: "v3:job-c" }], // a duplicate delivery
    ["job-x-1", "call.answered", at(30), { call_control_id: "v3:nobody-knows" }],
  ];
  return events.map(([id, ...rest]) => [`${prefix}${id}`, ...rest]);
}

async function fixtures(db, storage) {
  await seed(db, storage);
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at, telnyx_call_control_id) values
      ($1, $4, 'outbound', '+14155550100', '+4930111', 'dialing', '2026-11-26T04:59:00Z', 'v3:job-a'),
      ($2, $4, 'outbound', '+14155550100', '+4930222', 'initiated', '2026-11-26T04:59:10Z', 'v3:job-b'),
      ($3, $4, 'outbound', '+14155550100', '+4930333', 'dialing', '2026-11-26T04:59:20Z', 'v3:job-c')`,
    [CALL_A, CALL_B, CALL_C, ORG.adaPersonal],
  );
}

function deliver(send, base, [id, type, occurredAt, payload]) {
  const body = Buffer.from(
    JSON.stringify({ data: { record_type: "event", event_type: type, id, occurred_at: occurredAt, payload }, meta: { attempt: 1 } }),
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
}

/**
 * Waits until the job of `eventId` is done. Each event is processed before the next is sent,
 * on every way, so the order of effects (and the status each call event records) is the
 * script's, not a race between concurrent workers.
 */
async function processed(db, eventId, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const { rows } = await db.query("select status from jobs where dedupe_key = $1", [`webhook:telnyx:${eventId}`]);
    if (rows[0]?.status === "done") return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function jobSnapshot(db, prefix) {
  await db.query("set timezone = 'UTC'");
  const ids = [CALL_A, CALL_B, CALL_C];
  const calls = await db.query(
    `select id::text, status, initiated_at::text, answered_at::text, ended_at::text, hangup_cause, hangup_source,
            sip_hangup_cause, stream_state, stream_state_at::text, telnyx_call_control_id, telnyx_call_leg_id,
            telnyx_call_session_id, failure_reason, event_seq
     from calls where id = any($1::uuid[]) order by id`,
    [ids],
  );
  const events = await db.query(
    `select call_id::text, kind, data::text as data, occurred_at::text from call_events
     where call_id = any($1::uuid[]) order by call_id, kind, data::text`,
    [ids],
  );
  const seqs = await db.query(
    `select call_id::text, array_agg(seq order by seq)::text as seqs from call_events
     where call_id = any($1::uuid[]) group by call_id order by call_id`,
    [ids],
  );
  const followUps = await db.query(
    "select kind, payload::text, dedupe_key, max_attempts from jobs where kind <> 'telnyx.event' order by dedupe_key",
  );
  const inbox = await db.query(
    `select event_id, event_type, occurred_at::text, processed_at is not null as processed from webhook_inbox
     where event_id like $1 || '%' order by event_id`,
    [prefix],
  );
  const jobs = await db.query(
    "select dedupe_key, status from jobs where kind = 'telnyx.event' and dedupe_key like 'webhook:telnyx:' || $1 || '%' order by dedupe_key",
    [prefix],
  );
  const snap = { calls: calls.rows, events: events.rows, seqs: seqs.rows, followUps: followUps.rows, inbox: inbox.rows, jobs: jobs.rows };
  return JSON.parse(JSON.stringify(snap).replaceAll(prefix, ""));
}

/** A loopback server standing in for Telnyx's API: records every request either side makes. */
function telnyxRecorder() {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      requests.push(`${req.method} ${req.url} ${body}`);
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"data":{"result":"ok"}}');
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, requests, port: server.address().port })));
}

function startWorker(bin, workerEnv, telnyxPort) {
  const env = { ...process.env, ...workerEnv, TELNYX_API_BASE: `http://127.0.0.1:${telnyxPort}/v2`, LOG_LEVEL: "warn" };
  const child = spawn(bin, ["worker"], { env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (c) => {
    stderr = (stderr + c).slice(-4000);
  });
  return {
    async stop() {
      if (child.exitCode !== null) return stderr;
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
      return stderr;
    },
  };
}

/** Sets the parity Worker's job owners (parity/worker.ts `/__parity/work`). */
async function setEdgeWork(shim, owner) {
  const res = await fetch(new URL(`/__parity/work?telnyx.event=${owner}`, shim), { method: "POST" });
  if (res.status !== 204) throw new Error(`the parity Worker did not take job owner ${owner}: ${res.status}`);
}

/**
 * One way of processing the script; returns its snapshot and the Telnyx requests made.
 * `base`: where events go; `worker`: run the container's worker; `edgeOwns`: the parity
 * Worker's owner of telnyx.event.
 */
let runs = 0;

async function run(ctx, { base, worker, edgeOwns }) {
  const { db, send, shim, bin, workerEnv, storage } = ctx;
  const prefix = `w${++runs}-`;
  await fixtures(db, storage);
  await setEdgeWork(shim, edgeOwns ? "edge" : "origin");
  const recorder = await telnyxRecorder();
  const container = worker ? startWorker(bin, workerEnv, recorder.port) : null;
  try {
    let done = true;
    for (const event of script(prefix)) {
      const res = await deliver(send, base, event);
      if (res.status !== 200) throw new Error(`${event[0]}: ${res.status} ${res.body}`);
      done = (await processed(db, event[0])) && done;
    }
    const snap = await jobSnapshot(db, prefix);
    return { done, snap, requests: recorder.requests };
  } finally {
    const log = container ? await container.stop() : "";
    recorder.server.close();
    if (log.includes("panicked")) console.log(`     container worker log: ${log.slice(-400)}`);
  }
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function firstDiff(a, b) {
  for (const key of Object.keys(a)) {
    if (!same(a[key], b[key])) {
      const rows = Math.max(a[key].length, b[key].length);
      for (let i = 0; i < rows; i++) {
        if (!same(a[key][i], b[key][i])) return `${key} row ${i}: ${JSON.stringify(a[key][i])} vs ${JSON.stringify(b[key][i])}`;
      }
    }
  }
  return "";
}

/** The job phase: four ways, each compared with the container's. */
export async function runJobParity(ctx, record) {
  if (!ctx.bin || !ctx.workerEnv) {
    record("jobs: telnyx.event parity", false, "run.mjs needs --bin and --worker-env for the job phase");
    return;
  }
  const reference = await run(ctx, { base: ctx.direct, worker: true, edgeOwns: false });
  const snapshotProblems = [];
  if (!reference.done) snapshotProblems.push("the container's worker did not finish every telnyx.event job");
  if (reference.snap.events.length < 8) snapshotProblems.push(`only ${reference.snap.events.length} call events: the script proves little`);
  if (reference.snap.followUps.length !== 1) snapshotProblems.push("no recording.import job was enqueued");
  const gapFree = reference.snap.seqs.every((r) => {
    const seqs = JSON.parse(r.seqs.replace("{", "[").replace("}", "]"));
    return seqs.every((s, i) => s === i + 1);
  });
  if (!gapFree) snapshotProblems.push("call event seqs have gaps");
  record(
    `jobs: the container's worker applies the script (${reference.snap.events.length} call events, ${reference.snap.jobs.length} jobs done)`,
    snapshotProblems.length === 0,
    snapshotProblems.join("; "),
  );
  const ways = [
    ["edge owns telnyx.event, no container worker", { base: ctx.shim, worker: false, edgeOwns: true }],
    ["edge receives, the container owns telnyx.event", { base: ctx.shim, worker: true, edgeOwns: false }],
    [
      "edge owns telnyx.event and a container worker runs too (cross-side duplicates: one effect)",
      { base: ctx.shim, worker: true, edgeOwns: true },
    ],
  ];
  for (const [name, way] of ways) {
    try {
      const got = await run(ctx, way);
      const problems = [];
      if (!got.done) problems.push("not every telnyx.event job reached done");
      const diff = firstDiff(reference.snap, got.snap);
      if (diff) problems.push(diff);
      if (!same(reference.requests, got.requests))
        problems.push(`Telnyx requests ${JSON.stringify(reference.requests)} vs ${JSON.stringify(got.requests)}`);
      record(`jobs: ${name} — same rows, events and requests as the container`, problems.length === 0, problems.join("; "));
    } catch (err) {
      record(`jobs: ${name}`, false, err.message);
    }
  }
  await runRecordingParity(ctx, record);
  await runCronParity(ctx, record);
  await runMaxDurationParity(ctx, record);
  await rehearse(ctx, record);
  // The HTTP passes compare pending jobs: the edge consumer must leave them alone.
  await setEdgeWork(ctx.shim, "origin").catch(() => {});
}

/** What still needs the container once every webhook route, job kind and cron task the edge can take is edge-owned. */
const STILL_NEEDS_THE_CONTAINER = [
  "telnyx.event hand-backs: inbound calls (answer with a signed media-stream URL) and interpreted calls (leg commands)",
  "the media bridge (/media/telnyx/{token}), streamed and presigned uploads, every API route not in routes.json",
];

/**
 * The retirement rehearsal: the webhook → job flow and the cron tasks with the edge owning the
 * webhook route, telnyx.event and every cron task it can run, and no container worker at all.
 * Passes when every job was run by the edge (`locked_by = 'edge'`) with the container's
 * effects, and the edge's cron failed a stale call; then prints what still needs the container.
 */
async function rehearse(ctx, record) {
  const { db, send, shim, storage } = ctx;
  try {
    await fixtures(db, storage);
    await setEdgeWork(shim, "edge");
    const stale = "0190c0de-0000-7000-8000-0000000c0a09";
    await db.query(
      `insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at, updated_at)
       values ($1, $2, 'outbound', '+14155550100', '+4930999', 'initiated', now() - interval '6 hours', now() - interval '6 hours')`,
      [stale, ORG.adaPersonal],
    );
    const problems = [];
    const prefix = "rehearsal-";
    for (const event of script(prefix)) {
      const res = await deliver(send, shim, event);
      if (res.status !== 200) throw new Error(`${event[0]}: ${res.status} ${res.body}`);
      if (!(await processed(db, event[0]))) problems.push(`${event[0]} was not processed`);
    }
    const byEdge = await db.query(
      `select count(*) filter (where locked_by is distinct from 'edge')::int as other from jobs
       where kind = 'telnyx.event' and dedupe_key like 'webhook:telnyx:rehearsal-%'`,
    );
    if (byEdge.rows[0].other !== 0) problems.push(`${byEdge.rows[0].other} telnyx.event jobs were not run by the edge`);
    const cron = await fetch(new URL("/__scheduled?cron=*%2F5+*+*+*+*", shim));
    if (!cron.ok) problems.push(`the Cron Trigger answered ${cron.status}`);
    const failed = await db.query("select status, failure_reason from calls where id = $1", [stale]);
    if (failed.rows[0]?.status !== "failed") problems.push(`the edge cron left the stale call ${failed.rows[0]?.status}`);
    record(
      "rehearsal: webhooks, telnyx.event and the cron tasks at the edge with no container worker",
      problems.length === 0,
      problems.join("; "),
    );
  } catch (err) {
    record("rehearsal: webhooks, telnyx.event and the cron tasks at the edge with no container worker", false, err.message);
  }
  console.log("rehearsal: still needs the container:");
  for (const line of STILL_NEEDS_THE_CONTAINER) console.log(`  - ${line}`);
}
