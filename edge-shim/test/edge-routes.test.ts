// The production edge handlers (src/handlers.ts) run as `edge` and `shadow` inside workerd:
// the container's exact 401/400 answers (the webhook 400s come from the inbox statement, so
// from the test database), deferrals to the container, dry runs, and the response
// decorations. That the edge's rows equal the container's is proved against the real
// container by the parity suite (parity/).
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { orgIdHeader } from "../src/api";
import { DeferToOrigin } from "../src/defer";
import { HANDLERS } from "../src/handlers";
import { compileManifest } from "../src/manifest";
import { chooseRequestId, jsonAnswer, uuidv7 } from "../src/respond";
import { createShim } from "../src/router";
import { authSchema, candidates, chronoText, hashToken, tokenStorage } from "../src/sessions";
import { type Echo, logged, query } from "./helpers";
import telnyx from "./vectors/telnyx-webhook.json";

const EDGE = "https://api.callbridge.example";
const routes = (owner: "edge" | "shadow") =>
  compileManifest({
    routes: [
      { method: "POST", path: "/webhooks/telnyx", owner },
      { method: "POST", path: "/webhooks/assemblyai", owner },
      { method: "GET", path: "/api/me", owner },
      { method: "GET", path: "/api/calls", owner },
      { method: "GET", path: "/api/realtime/transcribe", owner },
    ],
  });
const atEdge = createShim(routes("edge"), HANDLERS);

let log: MockInstance<typeof console.log>;
let error: MockInstance<typeof console.error>;
beforeEach(() => {
  log = vi.spyOn(console, "log").mockImplementation(() => {});
  error = vi.spyOn(console, "error").mockImplementation(() => {});
});
afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

async function send(path: string, init?: RequestInit, e: typeof env = env, shim = atEdge): Promise<Response> {
  const ctx = createExecutionContext();
  const res = await shim.fetch(new Request(`${EDGE}${path}`, init), e, ctx);
  const body = await res.arrayBuffer();
  await waitOnExecutionContext(ctx);
  return new Response(body, res);
}

/** Signs like Telnyx with the simulator's key (seed "callbridge-telnyx-sim-test-key!!"). */
async function sign(timestamp: string, body: string): Promise<string> {
  return signBytes(new TextEncoder().encode(`${timestamp}|${body}`));
}

async function signBytes(message: Uint8Array): Promise<string> {
  const der = new Uint8Array([
    ...[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20],
    ...new TextEncoder().encode("callbridge-telnyx-sim-test-key!!"),
  ]);
  const key = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
  const sig = await crypto.subtle.sign("Ed25519", key, message);
  return btoa(String.fromCharCode(...new Uint8Array(sig)));
}

function webhook(body: string, headers: Record<string, string>): RequestInit {
  return { method: "POST", body, headers: { "content-type": "application/json", "x-request-id": "req-1", ...headers } };
}

describe("POST /webhooks/telnyx at the edge", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(Number(telnyx.timestamp) * 1000);
  });

  it("answers a bad signature exactly as the container does", async () => {
    const res = await send(
      "/webhooks/telnyx",
      webhook(`${telnyx.body} `, { "telnyx-timestamp": telnyx.timestamp, "telnyx-signature-ed25519": telnyx.signature }),
    );
    expect(res.status).toBe(401);
    expect(Object.fromEntries(res.headers)).toEqual({
      "access-control-allow-credentials": "true",
      "access-control-expose-headers": "x-request-id",
      "content-type": "application/problem+json",
      vary: "origin, access-control-request-method, access-control-request-headers, accept-encoding",
      "www-authenticate": "Bearer",
      "x-request-id": "req-1",
    });
    expect(await res.text()).toBe(
      '{"type":"urn:callbridge:problem:unauthenticated","title":"Authentication required","status":401,' +
        '"detail":"Webhook signature rejected: the signature does not verify.","request_id":"req-1"}',
    );
  });

  it("checks the window before the signature, and the headers before either", async () => {
    const stale = String(Number(telnyx.timestamp) - 301);
    const res = await send("/webhooks/telnyx", webhook(telnyx.body, { "telnyx-timestamp": stale, "telnyx-signature-ed25519": "x" }));
    expect(((await res.json()) as { detail: string }).detail).toBe(
      "Webhook signature rejected: telnyx-timestamp is more than 300 s away from now.",
    );
    const missing = await send("/webhooks/telnyx", webhook(telnyx.body, { "telnyx-timestamp": telnyx.timestamp }));
    expect(((await missing.json()) as { detail: string }).detail).toBe(
      "Webhook signature rejected: missing telnyx-signature-ed25519 or telnyx-timestamp header.",
    );
  });

  it("answers a signed non-envelope with the container's 400", async () => {
    const body = '{"event_type":"call.initiated"}';
    const res = await send(
      "/webhooks/telnyx",
      webhook(body, { "telnyx-timestamp": telnyx.timestamp, "telnyx-signature-ed25519": await sign(telnyx.timestamp, body) }),
    );
    expect(res.status).toBe(400);
    expect(await res.text()).toBe(
      '{"type":"about:blank","title":"Bad Request","status":400,"detail":"not a Telnyx webhook: missing data","request_id":"req-1"}',
    );
  });

  it("answers a signed body that is not JSON with PostgreSQL's reading of it, as the container does", async () => {
    const body = "{not json";
    const res = await send(
      "/webhooks/telnyx",
      webhook(body, { "telnyx-timestamp": telnyx.timestamp, "telnyx-signature-ed25519": await sign(telnyx.timestamp, body) }),
    );
    expect(res.status).toBe(400);
    expect(((await res.json()) as { detail: string }).detail).toBe(
      'the body is not JSON: invalid input syntax for type json (Token "not" is invalid.)',
    );
    expect(logged(log, "edge_deferred")).toEqual([]);
    expect(logged(error, "edge_fallback")).toEqual([]);
  });

  it("answers a signed body that is not UTF-8 with the container's 400", async () => {
    const body = new Uint8Array([0x7b, 0xff, 0x7d]);
    const timestamp = telnyx.timestamp;
    const message = new Uint8Array([...new TextEncoder().encode(`${timestamp}|`), ...body]);
    const res = await send("/webhooks/telnyx", {
      method: "POST",
      body,
      headers: { "telnyx-timestamp": timestamp, "telnyx-signature-ed25519": await signBytes(message) },
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { detail: string }).detail).toBe("the body is not JSON: it is not valid UTF-8");
  });

  it("defers everything to the container when TELNYX_PUBLIC_KEY is missing", async () => {
    const res = await send("/webhooks/telnyx", webhook("{}", {}), { ...env, TELNYX_PUBLIC_KEY: "" });
    expect(((await res.json()) as Echo).url).toBe("http://origin.test:8080/webhooks/telnyx");
    expect(logged(log, "edge_deferred")).toMatchObject([{ reason: "TELNYX_PUBLIC_KEY is not set at the edge" }]);
  });

  it("defers a body over HTTP_BODY_LIMIT_BYTES (the container answers 413)", async () => {
    // A client sends Content-Length: the proxy streams the oversized body on, unbuffered.
    const res = await send("/webhooks/telnyx", webhook("x".repeat(65), { "content-length": "65" }), {
      ...env,
      HTTP_BODY_LIMIT_BYTES: "64",
    });
    expect(((await res.json()) as Echo).body).toHaveLength(65);
    expect(logged(log, "edge_deferred")).toMatchObject([{ reason: "body over HTTP_BODY_LIMIT_BYTES" }]);
  });

  it("in a dry run (shadow) verifies and reads the body in a rolled-back transaction: nothing is kept", async () => {
    const handler = HANDLERS["POST /webhooks/telnyx"]!;
    const request = new Request(
      `${EDGE}/webhooks/telnyx`,
      webhook(telnyx.body, { "telnyx-timestamp": telnyx.timestamp, "telnyx-signature-ed25519": telnyx.signature }),
    );
    const ctx = createExecutionContext();
    const res = await handler.handle(request, {
      env,
      route: routes("shadow")[0]!,
      params: {},
      dryRun: true,
      waitUntil: (p) => ctx.waitUntil(p),
    });
    await waitOnExecutionContext(ctx);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"event_id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0","duplicate":false}');
    expect(res.headers.get("content-type")).toBe("application/json");
    const kept = await query<{ n: string }>(
      "select count(*) as n from webhook_inbox where event_id = '0ccc7b54-4df3-4bca-a65a-3da1ecc777f0'",
    );
    expect(kept[0]!.n).toBe("0");
  });
});

describe("GET /api/me and /api/calls at the edge (no database needed)", () => {
  for (const path of ["/api/me", "/api/calls"]) {
    it(`${path}: no credential is the container's 401`, async () => {
      const res = await send(path, { headers: { "x-request-id": "r-2", origin: "http://localhost:3000" } });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe("Bearer");
      expect(res.headers.get("access-control-allow-origin")).toBe("http://localhost:3000");
      expect(await res.text()).toBe(
        '{"type":"urn:callbridge:problem:unauthenticated","title":"Authentication required","status":401,' +
          '"detail":"Sign in first: no session cookie or bearer token was sent.","request_id":"r-2"}',
      );
    });

    it(`${path}: a malformed credential is a 401 naming the reason`, async () => {
      const res = await send(path, { headers: { cookie: "authjs.session-token=abc%252B", "x-request-id": "r-3" } });
      expect(((await res.json()) as { detail: string }).detail).toBe(
        "Malformed credential: the session cookie is percent-encoded more than once.",
      );
    });
  }

  it("defers GET /api/calls with a query string", async () => {
    const res = await send("/api/calls?limit=5", { headers: { authorization: "Bearer t" } });
    expect(((await res.json()) as Echo).url).toBe("http://origin.test:8080/api/calls?limit=5");
    expect(logged(log, "edge_deferred")).toMatchObject([{ route: "GET /api/calls" }]);
  });
});

describe("shadow mode and deferral", () => {
  it("logs shadow_deferred, not a difference, when the edge would defer", async () => {
    const shadow = createShim(routes("shadow"), HANDLERS);
    const res = await send("/api/calls?status=ended", { headers: { authorization: "Bearer t" } }, env, shadow);
    expect(res.headers.get("x-fake-origin")).toBe("1");
    expect(logged(log, "shadow_deferred")).toMatchObject([{ route: "GET /api/calls", method: "GET", path: "/api/calls" }]);
    expect(logged(log, "shadow_diff")).toEqual([]);
  });

  it("DeferToOrigin carries its reason", () => {
    expect(new DeferToOrigin("because").reason).toBe("because");
  });
});

describe("answers shaped like the container's", () => {
  it("chooses the request id like request_id::choose", () => {
    expect(chooseRequestId(new Headers({ "x-request-id": "abc-1_2.3:4" }))).toBe("abc-1_2.3:4");
    expect(chooseRequestId(new Headers({ "x-request-id": "no spaces", "cf-ray": "8c1a-AMS" }))).toBe("8c1a-AMS");
    expect(chooseRequestId(new Headers({ "x-request-id": "x".repeat(129) }))).toMatch(/^[0-9a-f-]{36}$/);
    expect(chooseRequestId(new Headers())).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("mints UUIDv7 with the millisecond timestamp first", () => {
    expect(uuidv7(0x0190c0de1234).slice(0, 13)).toBe("0190c0de-1234");
  });

  it("adds vary: accept-encoding only to bodies of 32 bytes or more (tower-http's compression)", () => {
    const a = { requestId: "r", allowedOrigin: null };
    const small = jsonAnswer(a, { calls: [], next_cursor: null }); // 31 bytes
    expect(small.headers.get("vary")).toBe("origin, access-control-request-method, access-control-request-headers");
    const big = jsonAnswer(a, { calls: [], next_cursor: "xyz" }); // 32 bytes
    expect(big.headers.get("vary")).toBe("origin, access-control-request-method, access-control-request-headers, accept-encoding");
    expect(small.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("reads X-Org-Id like Uuid::parse_str after HeaderValue::to_str and trim", () => {
    const id = "0190c0de-0000-7000-8000-00000000a002";
    const h = (v: string) => orgIdHeader(new Headers({ "x-org-id": v }));
    expect(orgIdHeader(new Headers())).toBeNull();
    expect(h(id)).toBe(id);
    expect(h(id.toUpperCase())).toBe(id);
    expect(h(`{${id}}`)).toBe(id);
    expect(h(`urn:uuid:${id}`)).toBe(id);
    expect(h(id.replaceAll("-", ""))).toBe(id);
    expect(h(`\t${id} `)).toBe(id);
    for (const bad of ["team", `${id}x`, `URN:UUID:${id}`, `(${id})`, id.replace("-", ""), `${id.slice(0, 35)}g`]) {
      expect(h(bad), bad).toBe("invalid");
    }
  });

  it("writes timestamps like chrono (AutoSi, Z) and cursors like to_rfc3339", () => {
    expect(chronoText("2026-11-01T10:00:00.000000")).toBe("2026-11-01T10:00:00Z");
    expect(chronoText("2026-11-01T10:00:00.250000")).toBe("2026-11-01T10:00:00.250Z");
    expect(chronoText("2026-11-01T10:00:00.000123")).toBe("2026-11-01T10:00:00.000123Z");
    expect(chronoText("2026-11-01T10:00:00.100100", "+00:00")).toBe("2026-11-01T10:00:00.100100+00:00");
  });
});

describe("session token storage (AUTH_TOKEN_STORAGE)", () => {
  it("looks a token up raw, hashed (hex SHA-256) or both", async () => {
    const sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // sha256("test")
    expect(await hashToken("test")).toBe(sha);
    expect(await candidates("test", "raw")).toEqual(["test"]);
    expect(await candidates("test", "hashed")).toEqual([sha]);
    expect(await candidates("test", "dual")).toEqual(["test", sha]);
  });

  it("never compares a hash-shaped bearer in its raw form: a stored hash is not a login", async () => {
    // What a reader of the sessions table sees after the backfill: the SHA-256 of a token.
    const stored = await hashToken("0b1f7c1e-9f7a-4c52-9a0e-5d1c2b3a4f60");
    expect(await candidates(stored, "dual")).toEqual([await hashToken(stored)]);
    expect(await candidates(stored.toUpperCase(), "dual")).toEqual([await hashToken(stored.toUpperCase())]);
    expect(await candidates(stored, "raw")).toEqual([]);
  });

  it("reads the variable like the container (unset = raw) and refuses anything else", () => {
    expect(tokenStorage({ ...env, AUTH_TOKEN_STORAGE: "" })).toBe("raw");
    expect(tokenStorage({ ...env, AUTH_TOKEN_STORAGE: " dual " })).toBe("dual");
    expect(() => tokenStorage({ ...env, AUTH_TOKEN_STORAGE: "plain" })).toThrow(/raw, hashed or dual/);
    expect(authSchema({ ...env, AUTH_SCHEMA: "" })).toBe("authjs");
    expect(() => authSchema({ ...env, AUTH_SCHEMA: "auth; drop table users" })).toThrow(/identifier/);
  });
});
