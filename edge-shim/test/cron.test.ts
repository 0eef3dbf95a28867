// The edge's Cron Trigger inside workerd, against the test database and miniflare's R2 and
// Queue: each task routes.json can give the edge (retention purge of objects and rows, the
// stale-call sweep, the dead-job report), the single-runner lock shared with the container,
// the per-task switch, and the relay of pending jobs of edge-owned kinds.
import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { Client } from "pg";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { belongsTo, CRON_TASKS, checkCron, LOCK_KEY, runCron } from "../src/cron";
import worker from "../src/index";
import { compileWork, WORK, type WorkManifest } from "../src/manifest";
import { logged, query } from "./helpers";

const EDGE_TASKS: WorkManifest = compileWork({
  jobs: [{ kind: "telnyx.event", owner: "edge" }],
  cron: [
    { task: "retention.purge", owner: "edge" },
    { task: "calls.stale_sweep", owner: "edge" },
    { task: "jobs.dead_report", owner: "edge" },
    { task: "usage.metering", owner: "edge" },
  ],
});

let log: MockInstance<typeof console.log>;
beforeEach(() => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

async function organisation(retentionDays: number | null): Promise<string> {
  const [org] = await query<{ id: string }>(
    "insert into organisations (id, name, recording_retention_days) values (gen_random_uuid(), 'Cron', $1) returning id::text as id",
    [retentionDays],
  );
  return org!.id;
}

/** A recording created `ageDays` ago with one stored version at `key`, its object in R2. */
async function recording(orgId: string, ageDays: number, key: (id: string) => string): Promise<{ id: string; key: string }> {
  const [rec] = await query<{ id: string }>(
    `insert into recordings (id, organisation_id, source, created_at)
     values (gen_random_uuid(), $1, 'upload', now() - make_interval(days => $2)) returning id::text as id`,
    [orgId, ageDays],
  );
  const objectKey = key(rec!.id);
  await query(
    `insert into recording_versions (recording_id, version, object_key, status, content_type, size_bytes)
     values ($1, 1, $2, 'stored', 'audio/mpeg', 3)`,
    [rec!.id, objectKey],
  );
  await env.RECORDINGS.put(objectKey, "mp3");
  return { id: rec!.id, key: objectKey };
}

const tick = () => {
  const ctx = createExecutionContext();
  return runCron(env, EDGE_TASKS, (p) => ctx.waitUntil(p)).finally(() => waitOnExecutionContext(ctx));
};

describe("the edge's cron tasks", () => {
  it("purges expired recordings: R2 objects first, then rows; a key outside the organisation keeps its rows", async () => {
    const org = await organisation(1);
    const expired = await recording(org, 2, (id) => `orgs/${org}/calls/none/recordings/${id}/v1.mp3`);
    const fresh = await recording(org, 0, (id) => `orgs/${org}/calls/none/recordings/${id}/v1.mp3`);
    const stray = await recording(org, 2, (id) => `orgs/00000000-0000-0000-0000-000000000000/recordings/${id}/v1.mp3`);
    const report = await tick();
    expect(report.ran).toBe(true);
    expect(report.tasks).toEqual(["retention.purge", "calls.stale_sweep", "jobs.dead_report", "usage.metering"]);
    expect(await env.RECORDINGS.head(expired.key)).toBeNull();
    expect(await query("select 1 from recordings where id = $1", [expired.id])).toEqual([]);
    expect(await env.RECORDINGS.head(fresh.key)).not.toBeNull();
    expect(await query("select 1 from recordings where id = $1", [fresh.id])).toHaveLength(1);
    expect(await env.RECORDINGS.head(stray.key)).not.toBeNull();
    expect(await query("select 1 from recordings where id = $1", [stray.id])).toHaveLength(1);
    expect(logged(log, "cron_refused_key")).toMatchObject([{ key: stray.key }]);
    expect(belongsTo(`orgs/${org}/a/../b`, org)).toBe(false);
    expect(belongsTo(`incoming/${org}/x.mp3`, org)).toBe(true);
  });

  it("fails a stale call with a call.failed event, and leaves one whose media bridge is alive", async () => {
    const org = await organisation(null);
    const [stale, bridged] = await query<{ id: string }>(
      `insert into calls (id, organisation_id, direction, from_number, to_number, status, updated_at)
       select gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'answered', now() - interval '5 hours'
       from generate_series(1, 2) returning id::text as id`,
      [org],
    );
    await query("insert into media_streams (call_id, replica) values ($1, 'r1')", [bridged!.id]);
    const report = await tick();
    expect(report.stale_calls_failed).toBeGreaterThanOrEqual(1);
    const rows = await query<{ id: string; status: string; failure_reason: string | null }>(
      "select id::text as id, status, failure_reason from calls where id = any($1::uuid[]) order by status",
      [[stale!.id, bridged!.id]],
    );
    expect(rows).toEqual([
      { id: bridged!.id, status: "answered", failure_reason: null },
      { id: stale!.id, status: "failed", failure_reason: "stale: no terminal event within 240 minutes" },
    ]);
    const events = await query<{ kind: string; data: unknown }>("select kind, data from call_events where call_id = $1", [stale!.id]);
    expect(events).toEqual([
      { kind: "call.failed", data: { status: "failed", failure_reason: "stale: no terminal event within 240 minutes" } },
    ]);
  });

  it("reports dead jobs per kind", async () => {
    await query("insert into jobs (kind, status, last_error) values ('cron.test.kind', 'dead', 'x'), ('cron.test.kind', 'dead', 'y')");
    const report = await tick();
    expect(report.dead_jobs["cron.test.kind"]).toBe(2);
    expect(logged(log, "cron_dead_jobs")).toHaveLength(1);
  });

  it("skips the tick while the container's cron holds its advisory lock (one runner)", async () => {
    const org = await organisation(1);
    const expired = await recording(org, 2, (id) => `orgs/${org}/calls/none/recordings/${id}/v1.mp3`);
    const container = new Client({ connectionString: env.HYPERDRIVE.connectionString });
    container.on("error", () => {});
    await container.connect();
    try {
      await container.query("select pg_advisory_lock($1::bigint)", [LOCK_KEY]);
      const report = await tick();
      expect(report.ran).toBe(false);
      expect(await env.RECORDINGS.head(expired.key)).not.toBeNull();
      expect(await query("select 1 from recordings where id = $1", [expired.id])).toHaveLength(1);
    } finally {
      await container.end();
    }
    expect((await tick()).ran).toBe(true);
    expect(await query("select 1 from recordings where id = $1", [expired.id])).toEqual([]);
  });

  it("runs exactly the tasks routes.json gives the edge (ADR 0042), none it leaves to the container", async () => {
    expect([...WORK.cron].filter(([, owner]) => owner === "edge").map(([task]) => task)).toEqual([
      "retention.purge",
      "uploads.sweep",
      "calls.stale_sweep",
      "usage.metering",
    ]);
    const org = await organisation(1);
    const expired = await recording(org, 2, (id) => `orgs/${org}/calls/none/recordings/${id}/v1.mp3`);
    await query("insert into jobs (kind, status, last_error) values ('cron.routes-json', 'dead', 'gone')");
    const controller = createScheduledController({ cron: "*/5 * * * *", scheduledTime: Date.UTC(2026, 10, 26, 5, 5) });
    const ctx = createExecutionContext();
    await worker.scheduled(controller, env, ctx);
    await waitOnExecutionContext(ctx);
    const [line] = logged(log, "cron_tick");
    expect(line).toMatchObject({
      cron: "*/5 * * * *",
      ran: true,
      tasks: ["retention.purge", "uploads.sweep", "calls.stale_sweep", "usage.metering"],
    });
    // jobs.dead_report and usage.quotas stay with the container: no report, no quota pass.
    expect(line?.dead_jobs).toEqual({});
    expect(line?.quotas).toEqual({ warned: 0, reached: 0, announced: 0, ended: 0 });
    expect(await query("select 1 from recordings where id = $1", [expired.id])).toEqual([]);
    // The test Worker has no R2 S3 variables: the sweep says so and waits.
    expect(logged(log, "uploads_sweep_unconfigured")).toHaveLength(1);
    await query("delete from jobs where kind = 'cron.routes-json'");
  });

  it("relays a pending job of an edge-owned kind whose Queue message was never sent", async () => {
    const key = `webhook:telnyx:relay-${Date.now()}`;
    await query(
      `insert into jobs (kind, payload, dedupe_key, run_at, updated_at)
       values ('telnyx.event', '{"provider": "telnyx", "event_id": "relay"}', $1, now() - interval '10 minutes', now() - interval '10 minutes')`,
      [key],
    );
    const send = vi.spyOn(env.WEBHOOKS, "sendBatch");
    const report = await tick();
    expect(report.jobs_relayed).toBeGreaterThanOrEqual(1);
    const sent = send.mock.calls.flatMap(([messages]) => [...messages].map((m) => m.body as { dedupe_key: string }));
    expect(sent.map((b) => b.dedupe_key)).toContain(key);
    // Sent again only five minutes later.
    const again = await tick();
    expect(again.jobs_relayed).toBe(0);
  });

  it("refuses to give the edge a task it does not know, and takes every task the container has", () => {
    expect(() => checkCron(compileWork({ cron: [{ task: "uploads.purge", owner: "edge" }] }))).toThrow(
      /gives the edge cron tasks it cannot run: uploads.purge/,
    );
    // Ported with ADR 0041 (src/quotas.ts) and ADR 0043 (src/uploads-sweep.ts).
    expect(() => checkCron(compileWork({ cron: CRON_TASKS.map((task) => ({ task, owner: "edge" })) }))).not.toThrow();
    expect(() => checkCron(EDGE_TASKS)).not.toThrow();
  });

  it("meters storage days once per version and day, and records AssemblyAI drift once per session", async () => {
    const org = await organisation(null);
    const [rec] = await query<{ id: string }>(
      "insert into recordings (id, organisation_id, source) values (gen_random_uuid(), $1, 'upload') returning id::text as id",
      [org],
    );
    await query(
      `insert into recording_versions (recording_id, version, object_key, status, content_type, size_bytes, stored_at)
       values ($1, 1, 'k', 'stored', 'audio/wav', 1000, now() - interval '3 days')`,
      [rec!.id],
    );
    const session = `sess-${Date.now()}`;
    await query(
      `insert into usage_ledger (organisation_id, vendor, unit, quantity, source_key, occurred_at, metadata)
       values ($1, 'assemblyai', 'streaming_seconds', 60, $2, now(), $3)`,
      [org, `assemblyai:stream:${session}`, JSON.stringify({ session_id: session, measured_seconds: 60.0, reported_seconds: 52.5 })],
    );
    const first = await tick();
    expect(first.storage_days_recorded).toBeGreaterThanOrEqual(3);
    const days = await query<{ day: string; quantity: string }>(
      `select to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD') as day, quantity::text from usage_ledger
       where source_key like 'r2:byte_days:' || $1 || ':1:%' order by 1`,
      [rec!.id],
    );
    // The day it was stored through yesterday: three UTC days, 1000 bytes each.
    expect(days.map((d) => d.quantity)).toEqual(["1000", "1000", "1000"]);
    const drift = await query("select vendor, ledger_seconds::text, reported_seconds::text from usage_drift where session_id = $1", [
      session,
    ]);
    expect(drift).toEqual([{ vendor: "assemblyai", ledger_seconds: "60", reported_seconds: "52.5" }]);
    expect(logged(log, "usage_drift")).toMatchObject([{ session_id: session, threshold_secs: 5 }]);
    const again = await tick();
    expect(await query("select 1 from usage_ledger where source_key like 'r2:byte_days:' || $1 || ':%'", [rec!.id])).toHaveLength(3);
    expect(again.usage_drift_found).toBe(0);
  });
});

describe("uploads.sweep at the edge (the container's sweep_uploads through the S3 API)", () => {
  const SWEEP = compileWork({ cron: [{ task: "uploads.sweep", owner: "edge" }] });
  const s3Env = {
    ...env,
    R2_ENDPOINT: "https://s3.test",
    R2_BUCKET: "recordings",
    R2_ACCESS_KEY_ID: "test-s3-key",
    R2_SECRET_ACCESS_KEY: "test-s3-secret",
  };
  const sweep = (e: typeof env = s3Env) => {
    const ctx = createExecutionContext();
    return runCron(e, SWEEP, (p) => ctx.waitUntil(p)).finally(() => waitOnExecutionContext(ctx));
  };
  const s3State = async () =>
    (await (await fetch("http://origin.test:8080/__fake/s3/state")).json()) as { objects: string[]; uploads: string[]; requests: string[] };

  it("aborts day-old uploads, drops day-old pending versions with their objects, deletes day-old staging objects", async () => {
    const org = await organisation(null);
    const other = await organisation(null);
    const tag = crypto.randomUUID();
    const key = (name: string) => `orgs/${org}/calls/none/recordings/${name}/v1.wav`;
    const staging = (name: string) => `incoming/${org}/${name}`;
    // Uploads: one to abort, one S3 no longer knows (forgotten), one whose abort fails (kept), one fresh (kept).
    await query(
      `insert into multipart_uploads (upload_id, object_key, started_at) values
         ($1, $5, now() - interval '2 days'), ($2, $6, now() - interval '2 days'),
         ($3, $7, now() - interval '2 days'), ($4, $8, now() - interval '1 hour')`,
      [`old-${tag}`, `gone-${tag}`, `fail-${tag}`, `fresh-${tag}`, key("u1"), key("u2"), key("u3"), key("u4")],
    );
    // Pending versions: a day-old one with its object and staging object, a day-old one whose key is
    // another organisation's (left alone, the version still released), a fresh one.
    const recs = await query<{ id: string }>(
      `insert into recordings (id, organisation_id, source) select gen_random_uuid(), $1, 'upload' from generate_series(1, 3) returning id::text as id`,
      [org],
    );
    const [oldRec, foreignRec, freshRec] = recs.map((r) => r.id);
    await query(
      `insert into recording_versions (recording_id, version, object_key, staging_key, status, content_type, created_at) values
         ($1, 1, $4, $5, 'pending', 'audio/wav', now() - interval '2 days'),
         ($2, 1, $6, null, 'pending', 'audio/wav', now() - interval '2 days'),
         ($3, 1, $7, null, 'pending', 'audio/wav', now())`,
      [
        oldRec,
        foreignRec,
        freshRec,
        key(oldRec!),
        staging(`v-${tag}`),
        `orgs/${other}/calls/none/recordings/${foreignRec}/v1.wav`,
        key(freshRec!),
      ],
    );
    await fetch("http://origin.test:8080/__fake/s3/state", {
      method: "POST",
      body: JSON.stringify({
        objects: [
          { key: key(oldRec!), ageDays: 2 },
          { key: staging(`v-${tag}`), ageDays: 0 },
          { key: `orgs/${other}/calls/none/recordings/${foreignRec}/v1.wav`, ageDays: 2 },
          { key: key(freshRec!), ageDays: 0 },
          { key: staging("a-old"), ageDays: 2 },
          { key: staging("b-old"), ageDays: 1.5 },
          { key: staging("c-old"), ageDays: 3 },
          { key: staging("d-new"), ageDays: 0.5 },
          { key: key("kept"), ageDays: 9 },
        ],
        uploads: [
          { id: `old-${tag}`, key: key("u1") },
          { id: `fresh-${tag}`, key: key("u4") },
        ],
      }),
    });

    const report = await sweep();
    expect(report.tasks).toEqual(["uploads.sweep"]);
    expect(report.uploads_aborted).toBeGreaterThanOrEqual(3);
    expect(report.pending_versions_dropped).toBeGreaterThanOrEqual(2);
    expect(report.staging_objects_deleted).toBe(3);
    const uploads = await query<{ upload_id: string }>(
      "select upload_id from multipart_uploads where upload_id like '%' || $1 order by 1",
      [tag],
    );
    expect(uploads.map((u) => u.upload_id)).toEqual([`fail-${tag}`, `fresh-${tag}`]);
    const versions = await query<{ id: string }>(
      "select recording_id::text as id from recording_versions where recording_id = any($1::uuid[])",
      [recs.map((r) => r.id)],
    );
    expect(versions.map((v) => v.id)).toEqual([freshRec]);
    const left = await query<{ id: string }>("select id::text from recordings where id = any($1::uuid[])", [recs.map((r) => r.id)]);
    expect(left.map((r) => r.id)).toEqual([freshRec]);
    const state = await s3State();
    expect(state.uploads).toEqual([`fresh-${tag}`]);
    expect(state.objects).toEqual(
      [`orgs/${other}/calls/none/recordings/${foreignRec}/v1.wav`, key(freshRec!), key("kept"), staging("d-new")].sort(),
    );
    // Four staging keys were left to list (the pending version's went with it): two pages of two, under incoming/ only.
    expect(state.requests.filter((r) => r.startsWith("GET /recordings?"))).toHaveLength(2);
    expect(state.requests.every((r) => !r.startsWith("GET") || r.includes("prefix=incoming%2F"))).toBe(true);
    expect(logged(log, "uploads_sweep_abort_failed").map((l) => l.status)).toEqual([500]);

    // A second tick finds only the upload whose abort keeps failing.
    const again = await sweep();
    expect(again.staging_objects_deleted).toBe(0);
    expect((await s3State()).requests.filter((r) => r.startsWith("DELETE") && r.includes(tag))).toEqual([
      `DELETE /recordings/${encodeURIComponent(key("u3")).replace(/%2F/g, "/")}?uploadId=fail-${tag}`,
    ]);
  });

  it("is skipped, with an error line, without the bucket's S3 variables; the rows wait", async () => {
    const tag = crypto.randomUUID();
    await query("insert into multipart_uploads (upload_id, object_key, started_at) values ($1, 'orgs/x/y', now() - interval '2 days')", [
      tag,
    ]);
    const report = await sweep({ ...s3Env, R2_SECRET_ACCESS_KEY: "" });
    expect(report.ran).toBe(true);
    expect(report.uploads_aborted).toBe(0);
    expect(logged(log, "uploads_sweep_unconfigured")[0]?.missing).toEqual(["R2_SECRET_ACCESS_KEY"]);
    expect(await query("select 1 from multipart_uploads where upload_id = $1", [tag])).toHaveLength(1);
    await query("delete from multipart_uploads where upload_id = $1", [tag]);
  });
});
