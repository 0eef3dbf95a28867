// The parity suite's `call.max_duration` phase (docs/STRANGLER.md, "Jobs and cron tasks"; ADR
// 0041): the steps the dial guard schedules — the warning of a one-leg call (its hang-up a
// minute later, not yet due), the hang-up of an interpreted call (one command per live leg), the hang-up of a call that
// already ended — run by each side, and what each leaves compared:
//
//   container   the container's worker runs them (the reference)
//   edge        the edge owns call.max_duration: its cron's relay sends the due rows to the
//               Queue and its consumer runs them; no container worker
//   edge→origin the container owns the kind (its worker runs them); the edge's relay and
//               consumer leave them alone
//   both        the edge owns the kind AND a container worker runs too (cross-side
//               duplicates: whichever takes a row's lease runs it; one effect)
//
// One more call's hang-up is due SOON_SECS after the fixtures are written (ADR 0043): the edge's
// one cron tick sends it ahead with a Queue delay, so it must run on time — within LATE_SECS of
// its run_at on every way — with no second tick (before, it waited for the tick after it was due).
//
// Compared: the calls' marks (`max_duration_warned_at` / `_hangup_at`) and event counters,
// their call events, the job rows' status, and the Telnyx Call Control requests each side made
// (method, path, bearer token and body, as a sorted list: the two sides may take the calls in
// another order, never send one more or one less) to a recorder on PARITY_TELNYX_PORT, which
// both the container's worker and the parity Worker (`TELNYX_API_BASE`) are pointed at.

import { spawn } from "node:child_process";
import http from "node:http";
import { ORG, seed } from "./fixtures.mjs";

const ONE_LEG = "0190c0de-0000-7000-8000-0000000c0d01";
const INTERPRETED = "0190c0de-0000-7000-8000-0000000c0d02";
const ENDED = "0190c0de-0000-7000-8000-0000000c0d03";
const SOON = "0190c0de-0000-7000-8000-0000000c0d04";
const CALLS = [ONE_LEG, INTERPRETED, ENDED, SOON];
const STEPS = [
  [ONE_LEG, "warn"],
  [ONE_LEG, "hangup"],
  [INTERPRETED, "hangup"],
  [ENDED, "hangup"],
  [SOON, "hangup"],
];
const SOON_SECS = 12;
const LATE_SECS = 8;

async function fixtures(db, storage) {
  await seed(db, storage);
  await db.query("delete from jobs where kind = 'call.max_duration'");
  await db.query(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, interpreted, telnyx_call_control_id, answered_at) values
      ($1, $4, 'outbound', '+14155550100', '+4930777', 'answered', false, 'v3:md-one', now() - interval '10 minutes'),
      ($2, $4, 'outbound', '+14155550100', '+4930888', 'answered', true, null, now() - interval '10 minutes'),
      ($3, $4, 'outbound', '+14155550100', '+4930999', 'ended', false, 'v3:md-ended', now() - interval '10 minutes'),
      ($5, $4, 'outbound', '+14155550100', '+4930666', 'answered', false, 'v3:md-soon', now() - interval '10 minutes')`,
    [ONE_LEG, INTERPRETED, ENDED, ORG.adaPersonal, SOON],
  );
  await db.query(
    `insert into call_legs (id, call_id, role, number, status, telnyx_call_control_id) values
      (gen_random_uuid(), $1, 'agent', '+4930111', 'answered', 'v3:md-agent'),
      (gen_random_uuid(), $1, 'remote', '+4930888', 'answered', 'v3:md-remote')`,
    [INTERPRETED],
  );
  // Due two minutes ago and untouched for ten, so the edge's relay sends them at once (it
  // leaves a row alone for a minute after it is due, and five after its last send).
  // The one-leg call's hang-up is a minute after its warning, as the dial guard schedules
  // them: not due yet, so the warning is spoken (a warning whose hang-up is due is skipped).
  // The SOON call's hang-up is scheduled as the dial guard does (run_at ahead, the row untouched since).
  for (const [call, step] of STEPS) {
    await db.query(
      `insert into jobs (kind, payload, dedupe_key, run_at, updated_at)
       values ('call.max_duration', $1, $2, now() + $3::interval, now() + $4::interval)`,
      [
        JSON.stringify({ call_id: call, step, limit_secs: 600 }),
        `call.max_duration:${step}:${call}`,
        call === SOON ? `${SOON_SECS} seconds` : call === ONE_LEG && step === "hangup" ? "1 hour" : "-2 minutes",
        call === SOON ? "0 seconds" : "-10 minutes",
      ],
    );
  }
}

async function snapshot(db) {
  const calls = await db.query(
    `select id::text, status, max_duration_warned_at is not null as warned, max_duration_hangup_at is not null as hung_up, event_seq
     from calls where id = any($1::uuid[]) order by id`,
    [CALLS],
  );
  const events = await db.query(
    "select call_id::text, seq, kind, data::text from call_events where call_id = any($1::uuid[]) order by call_id, seq",
    [CALLS],
  );
  const jobs = await db.query("select dedupe_key, status from jobs where kind = 'call.max_duration' order by dedupe_key");
  return { calls: calls.rows, events: events.rows, jobs: jobs.rows };
}

/** The Telnyx API stand-in: records every request (sorted when read) and answers 200. */
function telnyxRecorder(port) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      // Keys sorted: the container's serde_json writes them sorted, the Worker in its order.
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

function startWorker(bin, workerEnv, port) {
  const env = { ...process.env, ...workerEnv, TELNYX_API_BASE: `http://127.0.0.1:${port}/v2`, LOG_LEVEL: "warn" };
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

async function setOwner(shim, owner) {
  const res = await fetch(new URL(`/__parity/work?telnyx.event=origin&call.max_duration=${owner}`, shim), { method: "POST" });
  if (res.status !== 204) throw new Error(`the parity Worker did not take call.max_duration=${owner}: ${res.status}`);
}

/** The first truthy answer of `check`, polled every 200 ms; null after `seconds`. */
async function until(check, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function allDone(db, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const { rows } = await db.query(
      "select count(*)::int as n from jobs where kind = 'call.max_duration' and status <> 'done' and run_at <= now()",
    );
    if (rows[0].n === 0) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function run(ctx, port, { container, edgeOwns }) {
  const { db, shim, bin, workerEnv, storage } = ctx;
  await fixtures(db, storage);
  await setOwner(shim, edgeOwns ? "edge" : "origin");
  const recorder = await telnyxRecorder(port);
  const worker = container ? startWorker(bin, workerEnv, port) : null;
  try {
    // The Cron Trigger's relay sends the due rows of edge-owned kinds (none when the
    // container owns the kind: then the rows must still be the container's to run).
    const res = await fetch(new URL("/__scheduled?cron=*%2F5+*+*+*+*", shim));
    if (!res.ok) throw new Error(`the Cron Trigger answered ${res.status}`);
    // The SOON step: done, and how late after its run_at (the edge runs it only on its Queue delay).
    const soon = await until(async () => {
      const { rows } = await db.query(
        `select extract(epoch from finished_at - run_at)::float8 as late from jobs
         where dedupe_key = $1 and status = 'done'`,
        [`call.max_duration:hangup:${SOON}`],
      );
      return rows[0] ?? null;
    }, SOON_SECS + 30);
    const done = (await allDone(db)) && soon !== null;
    // Late duplicates (a redelivery, the other side's poll) would show up as extra requests.
    await new Promise((r) => setTimeout(r, 1500));
    return { done, late: soon?.late ?? null, snap: await snapshot(db), requests: [...recorder.requests].sort() };
  } finally {
    const log = worker ? await worker.stop() : "";
    await new Promise((r) => recorder.server.close(r));
    await setOwner(shim, "origin").catch(() => {});
    if (log.includes("panicked")) console.log(`     container worker log: ${log.slice(-400)}`);
  }
}

function differences(a, b) {
  return Object.keys(a)
    .filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]))
    .map((k) => `${k}: ${JSON.stringify(a[k]).slice(0, 600)} vs ${JSON.stringify(b[k]).slice(0, 600)}`)
    .join(" | ");
}

export async function runMaxDurationParity(ctx, record) {
  const port = Number(process.env.PARITY_TELNYX_PORT);
  if (!ctx.bin || !ctx.workerEnv || !port) {
    record("call.max_duration: parity", false, "needs --bin, --worker-env and PARITY_TELNYX_PORT (.ci/parity.sh)");
    return;
  }
  try {
    const reference = await run(ctx, port, { container: true, edgeOwns: false });
    const problems = [];
    if (!reference.done) problems.push("the container's worker did not finish every call.max_duration job");
    // The one-leg call's warning, a hang-up per leg of the interpreted one, none for the ended
    // call, the SOON call's hang-up.
    if (reference.requests.length !== 4) problems.push(`${reference.requests.length} Telnyx requests, not 4`);
    if (reference.snap.events.length !== 3) problems.push(`${reference.snap.events.length} call events, not 3`);
    if (reference.late === null || reference.late > LATE_SECS) problems.push(`the step due later ran ${reference.late} s late`);
    record(
      `call.max_duration: the container's worker warns and hangs up (${reference.requests.length} commands, ${reference.snap.events.length} events, the later step ${reference.late?.toFixed(1)} s after due)`,
      problems.length === 0,
      problems.join("; "),
    );
    for (const [name, way] of [
      ["the edge owns call.max_duration, no container worker", { container: false, edgeOwns: true }],
      ["the container owns call.max_duration, the edge leaves it alone", { container: true, edgeOwns: false }],
      ["the edge owns it and a container worker runs too (cross-side duplicates: one effect)", { container: true, edgeOwns: true }],
    ]) {
      try {
        const got = await run(ctx, port, way);
        const diff = [
          differences(reference.snap, got.snap),
          JSON.stringify(reference.requests) === JSON.stringify(got.requests)
            ? ""
            : `Telnyx requests ${JSON.stringify(reference.requests)} vs ${JSON.stringify(got.requests)}`,
        ].filter(Boolean);
        const onTime = got.late !== null && got.late <= LATE_SECS;
        record(
          `call.max_duration: ${name} — same rows, events and Telnyx commands as the container, the later step on time (${got.late?.toFixed(1)} s after due)`,
          got.done && onTime && diff.length === 0,
          [got.done ? "" : "not every job reached done", onTime ? "" : `the step due later ran ${got.late} s late`, ...diff]
            .filter(Boolean)
            .join("; "),
        );
      } catch (err) {
        record(`call.max_duration: ${name}`, false, err.message);
      }
    }
  } catch (err) {
    record("call.max_duration: parity", false, err.message);
  }
}
