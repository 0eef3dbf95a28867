// POST /webhooks/assemblyai at the edge (src/assemblyai-webhook.ts), on every path that needs no
// database: the container's exact 401 and 400 answers (bytes as src/http/assemblyai_webhook.rs
// writes them), its order (the header before the body), the deferrals, the constant-time
// comparison and a dry run. The inbox write is proved against the container by the parity suite.
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { assemblyaiWebhook, sameSecret, WEBHOOK_AUTH_HEADER } from "../src/assemblyai-webhook";
import { HANDLERS } from "../src/handlers";
import { compileManifest } from "../src/manifest";
import { createShim } from "../src/router";
import { type Echo, logged, query } from "./helpers";

const EDGE = "https://api.callbridge.example";
const SECRET = "test-assemblyai-secret"; // vitest.config.ts binds it
const routes = (owner: "edge" | "shadow") => compileManifest({ routes: [{ method: "POST", path: "/webhooks/assemblyai", owner }] });
const atEdge = createShim(routes("edge"), { "POST /webhooks/assemblyai": assemblyaiWebhook });
const configured = { ...env, ASSEMBLYAI_API_KEY: "test-key", ASSEMBLYAI_WEBHOOK_SECRET: SECRET };
const encode = (s: string) => new TextEncoder().encode(s);

let log: MockInstance<typeof console.log>;
let error: MockInstance<typeof console.error>;
beforeEach(() => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
  error = vi.spyOn(console, "error").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

async function send(init: RequestInit, e: typeof env = configured): Promise<Response> {
  const ctx = createExecutionContext();
  const res = await atEdge.fetch(new Request(`${EDGE}/webhooks/assemblyai`, init), e, ctx);
  const body = await res.arrayBuffer();
  await waitOnExecutionContext(ctx);
  return new Response(body, res);
}

function delivery(body: string, secret: string | null = SECRET, extra: Record<string, string> = {}): RequestInit {
  const headers: Record<string, string> = { "content-type": "application/json", "x-request-id": "req-1", ...extra };
  if (secret !== null) headers[WEBHOOK_AUTH_HEADER] = secret;
  return { method: "POST", body, headers };
}

const UNAUTHORIZED =
  '{"type":"urn:callbridge:problem:unauthenticated","title":"Authentication required","status":401,' +
  '"detail":"Webhook auth header missing or wrong.","request_id":"req-1"}';
const badRequest = (detail: string) =>
  `{"type":"about:blank","title":"Bad Request","status":400,"detail":"${detail}","request_id":"req-1"}`;

describe("sameSecret (constant time, over SHA-256 digests)", () => {
  it("compares by value, whatever the lengths", async () => {
    expect(await sameSecret(encode("s3cret"), encode("s3cret"))).toBe(true);
    expect(await sameSecret(encode("s3cret"), encode("s3cret!"))).toBe(false);
    expect(await sameSecret(encode(""), encode("s3cret"))).toBe(false);
    expect(await sameSecret(encode("S3cret"), encode("s3cret"))).toBe(false);
    expect(await sameSecret(encode("x".repeat(10_000)), encode("x".repeat(10_000)))).toBe(true);
  });
});

describe("the inbox statement's reading of a transcript webhook (the container's checks and 400 details)", () => {
  const answer = async (text: string) => {
    const res = await send(delivery(text));
    return (await res.json()) as { event_id?: string; detail?: string };
  };
  it("builds the event id, the last of duplicate keys winning", async () => {
    expect(await answer('{"transcript_id":"t1","status":"completed"}')).toMatchObject({ event_id: "t1:completed" });
    expect(await answer('{"transcript_id":"a","transcript_id":"b","status":"error"}')).toMatchObject({ event_id: "b:error" });
    const stored = await query<{ event_type: string }>("select event_type from webhook_inbox where event_id = 'b:error'");
    expect(stored).toEqual([{ event_type: "transcript.error" }]);
  });
  it("limits transcript_id to 1–200 and status to 1–40 UTF-8 bytes", async () => {
    expect(await answer(`{"transcript_id":"${"é".repeat(100)}","status":"${"s".repeat(40)}"}`)).toHaveProperty("event_id");
    expect(await answer(`{"transcript_id":"${"é".repeat(100)}x","status":"completed"}`)).toMatchObject({ detail: "missing transcript_id" });
    expect(await answer(`{"transcript_id":"t","status":"${"s".repeat(41)}"}`)).toMatchObject({ detail: "missing status" });
  });
  it("checks transcript_id before status, and wants strings in an object", async () => {
    expect(await answer("{}")).toMatchObject({ detail: "missing transcript_id" });
    expect(await answer('{"transcript_id":""}')).toMatchObject({ detail: "missing transcript_id" });
    expect(await answer('{"transcript_id":7,"status":"completed"}')).toMatchObject({ detail: "missing transcript_id" });
    expect(await answer('{"transcript_id":"t"}')).toMatchObject({ detail: "missing status" });
    expect(await answer('{"transcript_id":"t","status":null}')).toMatchObject({ detail: "missing status" });
    expect(await answer('[{"transcript_id":"t","status":"completed"}]')).toMatchObject({ detail: "missing transcript_id" });
    expect(await answer("null")).toMatchObject({ detail: "missing transcript_id" });
  });
  it("stores each \u0000 escape as U+FFFD, and an escaped backslash before u0000 as text", async () => {
    const body = String.raw`{"transcript_id":"nul\u0000","status":"completed","n":"\\u0000","k\u0000":1}`;
    expect(await answer(body)).toMatchObject({ event_id: "nul\uFFFD:completed" });
    const [row] = await query<{ payload: unknown }>("select payload from webhook_inbox where event_id = $1", ["nul\uFFFD:completed"]);
    expect(row!.payload).toEqual({ transcript_id: "nul\uFFFD", status: "completed", n: "\\u0000", "k\uFFFD": 1 });
  });
});

describe("POST /webhooks/assemblyai at the edge", () => {
  it("answers a missing, empty or wrong header with the container's 401, before reading the body", async () => {
    for (const secret of [null, "", "wrong", `${SECRET}x`, SECRET.toUpperCase()]) {
      const res = await send(delivery("{not json", secret, { origin: "http://localhost:3000" }));
      expect(res.status).toBe(401);
      expect(Object.fromEntries(res.headers)).toEqual({
        "access-control-allow-credentials": "true",
        "access-control-allow-origin": "http://localhost:3000",
        "access-control-expose-headers": "x-request-id",
        "content-type": "application/problem+json",
        vary: "origin, access-control-request-method, access-control-request-headers, accept-encoding",
        "www-authenticate": "Bearer",
        "x-request-id": "req-1",
      });
      expect(await res.text()).toBe(UNAUTHORIZED);
    }
    expect(logged(log, "edge_deferred")).toEqual([]);
  });

  it("answers the container's 400s for a body that is JSON but not a transcript webhook", async () => {
    const cases: [string, string][] = [
      ['{"status":"completed"}', "missing transcript_id"],
      ['{"transcript_id":"t1"}', "missing status"],
      ['{"transcript_id":"t1","status":""}', "missing status"],
      ["[]", "missing transcript_id"],
    ];
    for (const [body, detail] of cases) {
      const res = await send(delivery(body));
      expect(res.status).toBe(400);
      expect(res.headers.get("content-type")).toBe("application/problem+json");
      expect(res.headers.get("www-authenticate")).toBeNull();
      expect(await res.text()).toBe(badRequest(detail));
    }
  });

  it("accepts the header with surrounding spaces, as the container's HTTP parser trims them", async () => {
    const res = await send(delivery('{"transcript_id":"t1"}', `  ${SECRET}\t`));
    expect(await res.text()).toBe(badRequest("missing status"));
  });

  it("answers a body that is not JSON with PostgreSQL's reading, as the container does", async () => {
    const res = await send(delivery('{"transcript_id":"t1",'));
    expect(res.status).toBe(400);
    expect(((await res.json()) as { detail: string }).detail).toBe(
      "the body is not JSON: invalid input syntax for type json (The input string ended unexpectedly.)",
    );
    expect(logged(log, "edge_deferred")).toEqual([]);
    expect(logged(error, "edge_fallback")).toEqual([]);
  });

  it("defers a repeated header (the container reads the first one)", async () => {
    const headers = new Headers({ "content-type": "application/json" });
    headers.append(WEBHOOK_AUTH_HEADER, SECRET);
    headers.append(WEBHOOK_AUTH_HEADER, "other");
    const res = await send({ method: "POST", body: '{"transcript_id":"t","status":"completed"}', headers });
    expect(((await res.json()) as Echo).url).toBe("http://origin.test:8080/webhooks/assemblyai");
    expect(logged(log, "edge_deferred")).toMatchObject([{ reason: `${WEBHOOK_AUTH_HEADER} repeated or containing a comma` }]);
  });

  it("defers everything when ASSEMBLYAI_WEBHOOK_SECRET or ASSEMBLYAI_API_KEY is missing (the container's 503)", async () => {
    await send(delivery("{}"), { ...configured, ASSEMBLYAI_WEBHOOK_SECRET: "" });
    await send(delivery("{}"), { ...configured, ASSEMBLYAI_API_KEY: "" });
    expect(logged(log, "edge_deferred")).toMatchObject([
      { reason: "ASSEMBLYAI_WEBHOOK_SECRET is not set at the edge" },
      { reason: "ASSEMBLYAI_API_KEY is not set at the edge" },
    ]);
  });

  it("defers a body over HTTP_BODY_LIMIT_BYTES (the container answers 413), even with a wrong header", async () => {
    const res = await send(delivery("x".repeat(65), "wrong", { "content-length": "65" }), { ...configured, HTTP_BODY_LIMIT_BYTES: "64" });
    expect(((await res.json()) as Echo).body).toHaveLength(65);
    expect(logged(log, "edge_deferred")).toMatchObject([{ reason: "body over HTTP_BODY_LIMIT_BYTES" }]);
  });

  it("in a dry run (shadow) checks and reads the body in a rolled-back transaction: nothing is kept", async () => {
    const handler = HANDLERS["POST /webhooks/assemblyai"]!;
    expect(handler).toBe(assemblyaiWebhook);
    const request = new Request(`${EDGE}/webhooks/assemblyai`, delivery('{"transcript_id":"t\\"1","status":"completed"}'));
    const ctx = createExecutionContext();
    const res = await handler.handle(request, {
      env: configured,
      route: routes("shadow")[0]!,
      params: {},
      dryRun: true,
      waitUntil: (p) => ctx.waitUntil(p),
    });
    await waitOnExecutionContext(ctx);
    expect(await query("select 1 from webhook_inbox where event_id = $1", ['t"1:completed'])).toEqual([]);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"event_id":"t\\"1:completed","duplicate":false}');
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("x-request-id")).toBe("req-1");
  });
});
