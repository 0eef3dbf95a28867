// The parity suite's recordings phase (docs/STRANGLER.md, "Jobs"): one recorded call taken
// from `call.recording.saved` to a stored post-call transcript — telnyx.event →
// recording.import (the download answers 500 once: a retry on either side) →
// recording.transcribe → AssemblyAI's webhook → assemblyai.event — four ways, and what each
// way leaves compared with the container's own:
//
//   container   webhooks to the container, its worker runs every kind (the reference)
//   edge        webhooks through the shim, the edge owns the four kinds, no container worker
//   edge→origin webhooks through the shim, the container owns the four kinds (its worker runs
//               them, the edge consumer acknowledges without running)
//   both        webhooks through the shim, the edge owns the four kinds AND a container worker
//               runs too (cross-side duplicates: whichever side takes a job, one effect)
//
// Compared: the recording and version rows (the recording id normalised), the stored objects
// — the container's in s3s-fs, the edge's in R2, their union for `both` — by key, size and
// SHA-256, the post-call transcript row, the call's events, the usage entry, the jobs and
// inbox rows, and every request made to the recording server and to AssemblyAI (a presigned
// URL compared by endpoint, bucket, key, lifetime and credential scope: its date and signature
// are the clock's).
//
// Needs (from .ci/parity.sh): PARITY_S3_ENDPOINT and PARITY_S3_DIR (an s3s-fs the container
// writes to, keys cbtest / cbtest-secret-key), PARITY_S3_BUCKET, PARITY_AAI_ASYNC_PORT (where
// both sides reach AssemblyAI's async API: this phase serves it), PARITY_WEBHOOK_BASE.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import http from "node:http";
import { join, relative } from "node:path";
import { AAI_WEBHOOK_SECRET, ORG, seed, telnyxSignature } from "./fixtures.mjs";

const CALL = "0190c0de-0000-7000-8000-0000000c0b01";
const KINDS = ["telnyx.event", "recording.import", "recording.transcribe", "assemblyai.event"];
const clientState = (id) => Buffer.from(JSON.stringify({ call_id: id })).toString("base64");

/** A deterministic PCM WAV of `length` bytes (44-byte header, then a pattern). */
function wav(length) {
  const out = Buffer.alloc(length);
  out.write("RIFF", 0);
  out.writeUInt32LE(length - 8, 4);
  out.write("WAVEfmt ", 8);
  out.writeUInt32LE(16, 16);
  out.writeUInt16LE(1, 20);
  out.writeUInt16LE(2, 22);
  out.writeUInt32LE(8000, 24);
  out.writeUInt32LE(32000, 28);
  out.writeUInt16LE(4, 32);
  out.writeUInt16LE(16, 34);
  out.write("data", 36);
  out.writeUInt32LE(length - 44, 40);
  for (let i = 44; i < length; i++) out[i] = (i * 31 + 7) & 0xff;
  return out;
}
const RECORDING = wav(300_017);

/** Telnyx's recording download (the container's sim rules): answers 500 once per way, then the file. */
function recordingServer() {
  const requests = [];
  let failNext = true;
  const server = http.createServer((req, res) => {
    if (failNext) {
      failNext = false;
      requests.push(`${req.method} ${req.url} 500`);
      res.writeHead(500, { "content-type": "application/xml" });
      res.end('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code><Message>Simulated failure</Message></Error>');
      return;
    }
    requests.push(`${req.method} ${req.url} 200`);
    res.writeHead(200, { "content-type": "audio/wav", "content-length": String(RECORDING.length) });
    res.end(RECORDING);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, requests, port: server.address().port })));
}

/** AssemblyAI's async API (src/sim/assemblyai_async.rs's answers): submissions and lookups, recorded. */
function assemblyAi(port, key) {
  const requests = [];
  let next = 0;
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      const answer = (status, value) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(value));
      };
      requests.push({
        method: req.method,
        path: req.url,
        authorization: req.headers.authorization ?? null,
        body: body ? JSON.parse(body) : null,
      });
      if (req.headers.authorization !== key) return answer(401, { error: "Authentication error, API token missing/invalid" });
      if (req.method === "POST" && req.url === "/v2/transcript") return answer(200, { id: `tr-${++next}`, status: "queued" });
      const m = /^\/v2\/transcript\/(.+)$/.exec(req.url ?? "");
      if (req.method === "GET" && m) {
        const words = [
          { text: "Hello", start: 0, end: 400, confidence: 0.98, speaker: "A", channel: "1" },
          { text: "parity.", start: 450, end: 900, confidence: 0.91, speaker: "B", channel: "2" },
        ];
        return answer(200, {
          id: decodeURIComponent(m[1]),
          status: "completed",
          text: "Hello parity.",
          words,
          utterances: [{ text: "Hello parity.", start: 0, end: 900, confidence: 0.95, speaker: "A", channel: "1", words }],
          language_code: "en",
          audio_duration: 9.3755,
        });
      }
      return answer(404, { error: "Not found" });
    });
  });
  return new Promise((resolve) =>
    server.listen(port, "127.0.0.1", () =>
      resolve({
        server,
        requests,
        reset() {
          requests.length = 0;
          next = 0;
        },
      }),
    ),
  );
}

function telnyxWebhook(send, base, id, payload) {
  const body = Buffer.from(
    JSON.stringify({
      data: { record_type: "event", event_type: "call.recording.saved", id, occurred_at: "2026-11-26T06:00:00.123456Z", payload },
      meta: { attempt: 1 },
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
}

async function until(db, sql, params, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const { rows } = await db.query(sql, params);
    if (rows[0]?.ok) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 150));
  }
}
// Generous: on a loaded machine the container's worker may take a while to start.
// Only this phase's telnyx.event: a late message of the job phase may still make a row.
const jobDone = (db, kind) =>
  until(
    db,
    "select bool_and(status = 'done') and count(*) > 0 as ok from jobs where kind = $1 and (kind <> 'telnyx.event' or dedupe_key like 'webhook:telnyx:rec-evt-%')",
    [kind],
    120,
  );

/** The container's objects: s3s-fs keeps each one as a file under DIR/bucket/key. */
function containerObjects(dir, bucket, prefix) {
  const root = join(dir, bucket);
  const out = [];
  const walk = (d) => {
    if (!existsSync(d)) return;
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) walk(path);
      else {
        const key = relative(root, path);
        // s3s-fs keeps its own metadata beside the objects.
        if (!key.startsWith(prefix)) continue;
        const bytes = readFileSync(path);
        out.push({ key, size: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") });
      }
    }
  };
  walk(join(root, prefix.split("/").slice(0, -1).join("/")));
  return out;
}

async function edgeObjects(shim, prefix, method = "GET") {
  const res = await fetch(new URL(`/__parity/r2?prefix=${encodeURIComponent(prefix)}`, shim), { method });
  if (method === "DELETE") return [];
  return (await res.json()).map(({ key, size, sha256 }) => ({ key, size, sha256 }));
}

/** Only what is not the clock's: endpoint, path, lifetime, credential without its date. */
function presigned(url) {
  const u = new URL(url);
  const credential = (u.searchParams.get("X-Amz-Credential") ?? "").split("/");
  return `${u.origin}${u.pathname} expires=${u.searchParams.get("X-Amz-Expires")} credential=${credential[0]}/${credential.slice(2).join("/")}`;
}

async function snapshot(db, way, recordingPort, extra) {
  await db.query("set timezone = 'UTC'");
  const recordings = await db.query(
    `select id::text, organisation_id::text, call_id::text, source, telnyx_recording_id, channels, leg from recordings order by telnyx_recording_id`,
  );
  const versions = await db.query(
    `select recording_id::text, version, object_key, status, content_type, size_bytes, sha256, staging_key, stored_at is not null as stored
     from recording_versions order by recording_id, version`,
  );
  const transcripts = await db.query(
    `select recording_id::text, version, call_id::text, organisation_id::text, assemblyai_transcript_id, status, multichannel, text,
            words::text, utterances::text, language_code, audio_duration_ms, error, completed_at is not null as completed
     from post_call_transcripts order by recording_id`,
  );
  const events = await db.query("select kind, data::text from call_events where call_id = $1 order by kind, data::text", [CALL]);
  const usage = await db.query(
    "select organisation_id::text, call_id::text, vendor, unit, quantity::text, source_key, metadata::text from usage_ledger where vendor = 'assemblyai' order by source_key",
  );
  const jobs = await db.query(
    `select kind, payload::text, dedupe_key, status, max_attempts from jobs
     where kind <> 'telnyx.event' or dedupe_key like 'webhook:telnyx:rec-evt-%' order by kind, dedupe_key`,
  );
  const inbox = await db.query(
    "select provider, event_id, event_type, processed_at is not null as processed from webhook_inbox order by provider, event_id",
  );
  const snap = {
    recordings: recordings.rows,
    versions: versions.rows,
    transcripts: transcripts.rows,
    events: events.rows,
    usage: usage.rows,
    jobs: jobs.rows,
    inbox: inbox.rows,
    ...extra,
  };
  // Each way's event id carries its number, so a late Queue message of an earlier way names no
  // event of this one; each way's recording server has its own port.
  let text = JSON.stringify(snap)
    .replaceAll(`rec-evt-${way}`, "rec-evt")
    .replaceAll(`127.0.0.1:${recordingPort}/`, "127.0.0.1:<recording server>/");
  // Recording ids are UUIDv7s each side mints.
  recordings.rows.forEach((r, i) => {
    text = text.replaceAll(r.id, `<recording ${i + 1}>`);
  });
  return JSON.parse(text);
}

function startWorker(bin, workerEnv) {
  const child = spawn(bin, ["worker"], { env: { ...process.env, ...workerEnv, LOG_LEVEL: "warn" }, stdio: ["ignore", "ignore", "pipe"] });
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

async function setOwners(shim, owner) {
  const query = KINDS.map((k) => `${k}=${owner}`).join("&");
  const res = await fetch(new URL(`/__parity/work?${query}`, shim), { method: "POST" });
  if (res.status !== 204) throw new Error(`the parity Worker did not take job owner ${owner}: ${res.status} ${await res.text()}`);
}

let runs = 0;

async function run(ctx, env, aai, { base, worker, edgeOwns }) {
  const { db, send, shim, bin, storage } = ctx;
  const way = ++runs;
  await seed(db, storage);
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at, telnyx_call_control_id)
     values ($1, $2, 'outbound', '+14155550100', '+4930444', 'answered', '2026-11-26T05:59:00Z', 'v3:rec-call')`,
    [CALL, ORG.adaPersonal],
  );
  const prefix = `orgs/${ORG.adaPersonal}/calls/${CALL}/`;
  rmSync(join(env.dir, env.bucket, prefix), { recursive: true, force: true });
  await edgeObjects(shim, prefix, "DELETE");
  aai.reset();
  await setOwners(shim, edgeOwns ? "edge" : "origin");
  const recorder = await recordingServer();
  const workerEnv = {
    ...ctx.workerEnv,
    R2_ENDPOINT: env.endpoint,
    R2_BUCKET: env.bucket,
    R2_ACCESS_KEY_ID: "cbtest",
    R2_SECRET_ACCESS_KEY: "cbtest-secret-key",
    R2_CREATE_BUCKET: "true",
    R2_FORCE_PATH_STYLE: "true",
    ASSEMBLYAI_API_BASE: `http://127.0.0.1:${env.aaiPort}`,
    WEBHOOK_BASE_URL: env.webhookBase,
    TELNYX_API_BASE: "http://127.0.0.1:9/v2",
  };
  const container = worker ? startWorker(bin, workerEnv) : null;
  const problems = [];
  try {
    const url = `http://127.0.0.1:${recorder.port}/rec-parity.wav?X-Amz-Expires=600`;
    const res = await telnyxWebhook(send, base, `rec-evt-${way}`, {
      call_control_id: "v3:rec-call",
      client_state: clientState(CALL),
      recording_id: "rec-parity",
      channels: "dual",
      recording_urls: { wav: url },
    });
    if (res.status !== 200) throw new Error(`call.recording.saved: ${res.status} ${res.body}`);
    for (const kind of ["telnyx.event", "recording.import", "recording.transcribe"]) {
      if (!(await jobDone(db, kind))) problems.push(`${kind} did not reach done`);
    }
    const submitted = await db.query("select assemblyai_transcript_id as id from post_call_transcripts");
    const transcriptId = submitted.rows[0]?.id;
    if (transcriptId) {
      const hook = await send(base, {
        method: "POST",
        path: "/webhooks/assemblyai",
        headers: [
          ["content-type", "application/json"],
          ["x-callbridge-webhook-secret", AAI_WEBHOOK_SECRET],
        ],
        body: Buffer.from(JSON.stringify({ transcript_id: transcriptId, status: "completed" })),
      });
      if (hook.status !== 200) problems.push(`AssemblyAI webhook: ${hook.status} ${hook.body}`);
      if (!(await jobDone(db, "assemblyai.event"))) problems.push("assemblyai.event did not reach done");
    } else problems.push("nothing was submitted to AssemblyAI");
    // Let a duplicate run of the other side (way `both`) finish before looking.
    if (worker && edgeOwns) await new Promise((r) => setTimeout(r, 3000));
    const inContainer = containerObjects(env.dir, env.bucket, prefix);
    const inR2 = await edgeObjects(shim, prefix);
    const objects = [...inContainer, ...inR2].sort((a, b) => a.key.localeCompare(b.key));
    // Who ran each kind: the edge's runs hold `edge…` in locked_by.
    const runners = await db.query(
      `select kind, bool_and(coalesce(locked_by, '') like 'edge%') as edge from jobs
       where kind <> 'telnyx.event' or dedupe_key like 'webhook:telnyx:rec-evt-%' group by kind`,
    );
    if (!worker && (inContainer.length !== 0 || inR2.length !== 1 || runners.rows.some((r) => !r.edge))) {
      problems.push(
        `the edge alone did not do it all: ${inContainer.length} object(s) in s3s-fs, ${inR2.length} in R2, runners ${JSON.stringify(runners.rows)}`,
      );
    }
    if (worker && !edgeOwns && (inContainer.length !== 1 || inR2.length !== 0 || runners.rows.some((r) => r.edge))) {
      problems.push(
        `the container did not do it all: ${inContainer.length} object(s) in s3s-fs, ${inR2.length} in R2, runners ${JSON.stringify(runners.rows)}`,
      );
    }
    const aaiRequests = aai.requests.map((r) => ({
      ...r,
      body: r.body && { ...r.body, audio_url: r.body.audio_url && presigned(r.body.audio_url) },
    }));
    const snap = await snapshot(db, way, recorder.port, { objects, downloads: recorder.requests, assemblyai: aaiRequests });
    return { problems, snap };
  } finally {
    const log = container ? await container.stop() : "";
    recorder.server.close();
    if (log.includes("panicked")) problems.push(`container worker: ${log.slice(-400)}`);
  }
}

/** Every part of the snapshot that differs, each shown from its first differing character. */
function differences(a, b) {
  const out = [];
  for (const key of Object.keys(a)) {
    const x = JSON.stringify(a[key]);
    const y = JSON.stringify(b[key]);
    if (x === y) continue;
    let at = 0;
    while (x[at] === y[at]) at++;
    const from = Math.max(0, at - 80);
    out.push(`${key}: …${x.slice(from, at + 220)} vs …${y.slice(from, at + 220)}`);
  }
  return out.join(" | ");
}

/** The recordings phase: four ways, each compared with the container's. */
export async function runRecordingParity(ctx, record) {
  const env = {
    endpoint: process.env.PARITY_S3_ENDPOINT,
    dir: process.env.PARITY_S3_DIR,
    bucket: process.env.PARITY_S3_BUCKET ?? "parity-recordings",
    aaiPort: Number(process.env.PARITY_AAI_ASYNC_PORT),
    webhookBase: process.env.PARITY_WEBHOOK_BASE ?? "http://parity.test",
  };
  if (!env.endpoint || !env.dir || !env.aaiPort || !ctx.bin || !ctx.workerEnv) {
    record(
      "recordings: parity",
      false,
      "needs PARITY_S3_ENDPOINT, PARITY_S3_DIR, PARITY_AAI_ASYNC_PORT, --bin and --worker-env (.ci/parity.sh sets them)",
    );
    return;
  }
  const aai = await assemblyAi(env.aaiPort, ctx.workerEnv.ASSEMBLYAI_API_KEY);
  try {
    const reference = await run(ctx, env, aai, { base: ctx.direct, worker: true, edgeOwns: false });
    const refProblems = [...reference.problems];
    if (reference.snap.versions.length !== 1 || reference.snap.versions[0].status !== "stored") refProblems.push("no stored version");
    if (reference.snap.objects.length !== 1) refProblems.push(`${reference.snap.objects.length} stored objects`);
    if (reference.snap.transcripts[0]?.status !== "completed") refProblems.push("no completed post-call transcript");
    if (
      JSON.stringify(reference.snap.downloads) !==
      JSON.stringify(["GET /rec-parity.wav?X-Amz-Expires=600 500", "GET /rec-parity.wav?X-Amz-Expires=600 200"])
    )
      refProblems.push(`downloads ${JSON.stringify(reference.snap.downloads)}`);
    record(
      `recordings: the container's worker imports (after a 500), stores, submits and fetches the transcript (${reference.snap.objects[0]?.size ?? 0} bytes)`,
      refProblems.length === 0,
      refProblems.join("; "),
    );
    const ways = [
      ["edge owns the four kinds, no container worker", { base: ctx.shim, worker: false, edgeOwns: true }],
      ["edge receives, the container owns the four kinds", { base: ctx.shim, worker: true, edgeOwns: false }],
      [
        "edge owns the four kinds and a container worker runs too (cross-side duplicates: one effect)",
        { base: ctx.shim, worker: true, edgeOwns: true },
      ],
    ];
    for (const [name, way] of ways) {
      try {
        const got = await run(ctx, env, aai, way);
        const problems = [...got.problems];
        const diff = differences(reference.snap, got.snap);
        if (diff) problems.push(diff);
        record(
          `recordings: ${name} — same rows, objects and provider requests as the container`,
          problems.length === 0,
          problems.join("; "),
        );
      } catch (err) {
        record(`recordings: ${name}`, false, err.message);
      }
    }
  } finally {
    aai.server.close();
    await fetch(new URL("/__parity/work?telnyx.event=origin", ctx.shim), { method: "POST" }).catch(() => {});
  }
}
