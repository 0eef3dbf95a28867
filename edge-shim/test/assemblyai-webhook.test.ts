// POST /webhooks/assemblyai at the edge (src/assemblyai-webhook.ts), on every path that needs no
// database: the container's exact 401 and 400 answers (bytes as src/http/assemblyai_webhook.rs
// writes them), its order (the header before the body), the deferrals, the constant-time
// comparison and a dry run. The inbox write is proved against the container by the parity suite.
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { assemblyaiWebhook, parseTranscriptEvent, sameSecret, WEBHOOK_AUTH_HEADER } from "../src/assemblyai-webhook";
import { HANDLERS } from "../src/handlers";
import { compileManifest } from "../src/manifest";
import { createShim } from "../src/router";
import { parseSerdeJson } from "../src/serde-json";
import { type Echo, logged } from "./helpers";

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

describe("parseTranscriptEvent (the container's checks and 400 details)", () => {
  const parse = (text: string) => parseTranscriptEvent(parseSerdeJson(encode(text))!.value);
  it("builds the event id and type", () => {
    expect(parse('{"transcript_id":"t1","status":"completed"}')).toEqual({ eventId: "t1:completed", eventType: "transcript.completed" });
    expect(parse('{"transcript_id":"a","transcript_id":"b","status":"error"}')).toEqual({
      eventId: "b:error",
      eventType: "transcript.error",
    });
  });
  it("limits transcript_id to 1–200 and status to 1–40 UTF-8 bytes", () => {
    expect(parse(`{"transcript_id":"${"é".repeat(100)}","status":"${"s".repeat(40)}"}`)).not.toHaveProperty("error");
    expect(parse(`{"transcript_id":"${"é".repeat(100)}x","status":"completed"}`)).toEqual({ error: "missing transcript_id" });
    expect(parse(`{"transcript_id":"t","status":"${"s".repeat(41)}"}`)).toEqual({ error: "missing status" });
  });
  it("checks transcript_id before status, and wants strings in an object", () => {
    expect(parse("{}")).toEqual({ error: "missing transcript_id" });
    expect(parse('{"transcript_id":""}')).toEqual({ error: "missing transcript_id" });
    expect(parse('{"transcript_id":7,"status":"completed"}')).toEqual({ error: "missing transcript_id" });
    expect(parse('{"transcript_id":"t"}')).toEqual({ error: "missing status" });
    expect(parse('{"transcript_id":"t","status":null}')).toEqual({ error: "missing status" });
    expect(parse('[{"transcript_id":"t","status":"completed"}]')).toEqual({ error: "missing transcript_id" });
    expect(parse("null")).toEqual({ error: "missing transcript_id" });
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

  it("defers a body serde_json would reject (the container's 400 quotes serde), untouched", async () => {
    const res = await send(delivery('{"transcript_id":"t1",'));
    const echo = (await res.json()) as Echo;
    expect(echo.url).toBe("http://origin.test:8080/webhooks/assemblyai");
    expect(echo.body).toBe('{"transcript_id":"t1",');
    expect(echo.headers[WEBHOOK_AUTH_HEADER]).toBe(SECRET);
    expect(logged(log, "edge_deferred")).toMatchObject([
      { route: "POST /webhooks/assemblyai", reason: "the body is not JSON as serde_json reads it" },
    ]);
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

  it("in a dry run (shadow) checks and parses but writes nothing", async () => {
    const handler = HANDLERS["POST /webhooks/assemblyai"]!;
    expect(handler).toBe(assemblyaiWebhook);
    const request = new Request(`${EDGE}/webhooks/assemblyai`, delivery('{"transcript_id":"t\\"1","status":"completed"}'));
    const res = await handler.handle(request, {
      env: { ...configured, HYPERDRIVE: undefined as unknown as Hyperdrive }, // would throw if touched
      route: routes("shadow")[0]!,
      params: {},
      dryRun: true,
      waitUntil: () => {},
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"event_id":"t\\"1:completed","duplicate":false}');
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("x-request-id")).toBe("req-1");
  });
});
