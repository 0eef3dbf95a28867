// The edge's `usage.quotas` cron task inside workerd, against the test database and the fake
// Telnyx Call Control API of test/fake-origin.js: the 80 % and 100 % marks and events once per
// call (with the container's numbers, `10.0` kept as serde_json writes it), `continue` flags
// without a command, `end` announces into each live party and hangs up once the announcement
// had its seconds, each once however many ticks; a tick that cannot send its commands
// records nothing; the price table's rules. Each tick runs in its own transaction as the
// Cron Trigger's does (the shared lock is tested in cron.test.ts).
import { env } from "cloudflare:workers";
import { Client } from "pg";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ANNOUNCEMENT, enforceQuotas, parsePrices, rustFloat, usageSettings } from "../src/quotas";
import { formUrlencode } from "../src/telnyx-commands";
import { query } from "./helpers";

const EDGE_ENV = { ...env, TELNYX_API_KEY: "test-telnyx-key", TELNYX_API_BASE: "https://api.telnyx.test/v2" };

beforeEach(async () => {
  vi.spyOn(console, "log").mockImplementation(() => {});
  await telnyxRequests();
});
afterEach(() => vi.restoreAllMocks());

const telnyxRequests = () =>
  fetch("http://origin.test:8080/__fake/telnyx/requests").then((r) => r.json()) as Promise<
    { path: string; body: Record<string, unknown> }[]
  >;

async function tick(environment: typeof EDGE_ENV = EDGE_ENV) {
  const client = new Client({ connectionString: env.HYPERDRIVE.connectionString });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query("begin");
    try {
      const done = await enforceQuotas(client, environment);
      await client.query("commit");
      return done;
    } catch (err) {
      await client.query("rollback");
      throw err;
    }
  } finally {
    await client.end();
  }
}

/** An organisation with quotas, `seconds` of Telnyx call time this month, and one answered call (interpreted: two live legs). */
async function organisation(
  quota: { minutes?: number; spend?: number; atLimit: "end" | "continue" },
  seconds: number,
  interpreted = false,
) {
  const [org] = await query<{ id: string }>(
    "insert into organisations (id, name) values (gen_random_uuid(), 'Quota') returning id::text as id",
  );
  await query("insert into usage_quotas (organisation_id, monthly_minutes, monthly_spend_cap, at_limit) values ($1, $2, $3, $4)", [
    org!.id,
    quota.minutes ?? null,
    quota.spend ?? null,
    quota.atLimit,
  ]);
  await ledger(org!.id, seconds);
  const ccid = `v3:${crypto.randomUUID()}`;
  const [call] = await query<{ id: string }>(
    `insert into calls (id, organisation_id, direction, from_number, to_number, status, interpreted, telnyx_call_control_id)
     values (gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'answered', $2, $3) returning id::text as id`,
    [org!.id, interpreted, interpreted ? null : ccid],
  );
  const legs: Record<string, string> = {};
  if (interpreted) {
    for (const role of ["agent", "remote"]) {
      legs[role] = `v3:${role}-${crypto.randomUUID()}`;
      await query(
        `insert into call_legs (id, call_id, role, number, status, telnyx_call_control_id)
         values (gen_random_uuid(), $1, $2, '+14155550199', 'answered', $3)`,
        [call!.id, role, legs[role]],
      );
    }
  }
  return { orgId: org!.id, callId: call!.id, ccid, legs };
}

const ledger = (orgId: string, seconds: number) =>
  query(
    `insert into usage_ledger (organisation_id, vendor, unit, quantity, source_key, occurred_at)
     values ($1, 'telnyx', 'call_seconds', $2, gen_random_uuid()::text, now())`,
    [orgId, seconds],
  );
const events = (callId: string) =>
  query<{ kind: string; data: string }>("select kind, data::text as data from call_events where call_id = $1 order by seq", [callId]);

describe("usage.quotas at the edge", { timeout: 30_000 }, () => {
  it("writes the 80 % mark and event once, then at 100 % flags a `continue` call without a command", async () => {
    const o = await organisation({ minutes: 10, atLimit: "continue" }, 510);
    await tick();
    await tick();
    expect(await events(o.callId)).toEqual([
      {
        kind: "usage.quota_warning",
        data: '{"used": 8.5, "limit": 10.0, "quota": "monthly_minutes", "action": "none", "percent": 80}',
      },
    ]);
    await ledger(o.orgId, 120);
    await tick();
    await tick();
    const after = await events(o.callId);
    expect(after.map((e) => e.kind)).toEqual(["usage.quota_warning", "usage.quota_reached"]);
    expect(JSON.parse(after[1]!.data)).toEqual({ quota: "monthly_minutes", used: 10.5, limit: 10, percent: 100, action: "continue" });
    expect(await telnyxRequests()).toEqual([]);
    expect(await query("select level from usage_quota_marks where call_id = $1 order by level", [o.callId])).toEqual([
      { level: 80 },
      { level: 100 },
    ]);
  });

  it("at 100 % with `end`: announces into each live leg, hangs up after the announcement, each once", async () => {
    // 600 s at 0.007 USD a minute: 0.07 USD, over a 0.05 cap.
    const o = await organisation({ spend: 0.05, atLimit: "end" }, 600, true);
    await tick();
    await tick();
    expect((await telnyxRequests()).map((r) => [r.path, r.body])).toEqual(
      ["agent", "remote"].map((role) => [
        `/v2/calls/${formUrlencode(o.legs[role]!)}/actions/speak`,
        { payload: ANNOUNCEMENT, voice: "female", language: "en-US", command_id: `quota-announcement:${o.callId}:${role}` },
      ]),
    );
    const reached = await events(o.callId);
    expect(reached.map((e) => e.kind)).toEqual(["usage.quota_warning", "usage.quota_reached"]);
    expect(JSON.parse(reached[1]!.data)).toMatchObject({ quota: "monthly_spend", limit: 0.05, percent: 100, action: "end" });
    expect(JSON.parse(reached[1]!.data).used).toBeCloseTo(0.07, 10);

    // The announcement has had its seconds.
    await query("update usage_quota_marks set at = now() - interval '9 seconds' where call_id = $1", [o.callId]);
    expect(await tick()).toMatchObject({ ended: 1 });
    await tick();
    expect((await telnyxRequests()).map((r) => [r.path, r.body])).toEqual(
      ["agent", "remote"].map((role) => [
        `/v2/calls/${formUrlencode(o.legs[role]!)}/actions/hangup`,
        { command_id: `quota-end:${o.callId}:${role}` },
      ]),
    );
    expect((await events(o.callId)).map((e) => e.kind)).toEqual(["usage.quota_warning", "usage.quota_reached", "usage.quota_ended"]);
  });

  it("a tick that cannot send its commands records nothing, and the next one does it all", async () => {
    const o = await organisation({ minutes: 5, atLimit: "end" }, 600);
    await expect(tick({ ...EDGE_ENV, TELNYX_API_KEY: "" })).rejects.toThrow(/TELNYX_API_KEY is not set/);
    expect(await events(o.callId)).toEqual([]);
    await fetch("http://origin.test:8080/__fake/telnyx/faults", {
      method: "POST",
      body: JSON.stringify([{ status: 500 }, { status: 500 }, { status: 500 }]),
    });
    await expect(tick()).rejects.toThrow(/Telnyx unavailable: 500/);
    expect(await events(o.callId)).toEqual([]);
    await tick();
    expect((await events(o.callId)).map((e) => e.kind)).toEqual(["usage.quota_warning", "usage.quota_reached"]);
    const sent = (await telnyxRequests()).map((r) => r.body.command_id);
    // The failed tick's attempts and the good one's: the same command id every time.
    expect(new Set(sent)).toEqual(new Set([`quota-announcement:${o.callId}`]));
  });

  it("reads the container's price table and settings", () => {
    const table = parsePrices(
      '[{"vendor":"telnyx","unit":"call_seconds","currency":"USD","price":1,"from":"2026-01-01"},{"vendor":"telnyx","unit":"call_seconds","currency":"USD","price":2,"per":60,"from":"2026-06-01"}]',
    );
    expect(table.map((p) => [p.from, p.per])).toEqual([
      ["2026-06-01", 60],
      ["2026-01-01", 1],
    ]);
    expect(() => parsePrices('[{"vendor":"telnyx","unit":"x","currency":"usd","price":1,"from":"2026-01-01"}]')).toThrow(/ISO 4217/);
    expect(() => parsePrices('[{"vendor":"telnyx","unit":"x","currency":"USD","price":1,"from":"2026-02-30"}]')).toThrow(/YYYY-MM-DD/);
    expect(() => parsePrices('[{"vendor":"telnyx","unit":"x","currency":"USD","price":1,"per":0,"from":"2026-01-01"}]')).toThrow(
      /per must be more than 0/,
    );
    expect(() => parsePrices('[{"vendor":"telnyx","unit":"x","currency":"USD","price":1,"from":"2026-01-01","tier":2}]')).toThrow(
      /unknown field/,
    );
    expect(() => usageSettings({ USAGE_PRICES: "@/etc/prices.json" })).toThrow(/inline/);
    expect(usageSettings({ USAGE_DEFAULT_AT_LIMIT: "end", USAGE_DEFAULT_MONTHLY_MINUTES: "500" })).toMatchObject({
      currency: "USD",
      monthlyMinutes: 500,
      endAtLimit: true,
    });
    expect([rustFloat(10), rustFloat(8.5), rustFloat(0.07)]).toEqual(["10.0", "8.5", "0.07"]);
  });
});
