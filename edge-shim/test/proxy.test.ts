// The worker end to end (exports.default.fetch inside workerd) against the fake origin:
// everything routes.json does not give to the edge reaches the container intact and signed.
import { env, exports } from "cloudflare:workers";
import { createExecutionContext } from "cloudflare:test";
import { afterEach, describe, expect, it, vi } from "vitest";
import { HANDLERS } from "../src/handlers";
import { ROUTES } from "../src/manifest";
import { createShim } from "../src/router";
import { contentSha256, sign } from "../src/signing";
import { type Echo, originHits } from "./helpers";
import vector from "./vectors/edge-signature.json";

const EDGE = "https://api.callbridge.example";
const worker = exports.default;

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("proxy to the origin", () => {
  it("sends unknown paths to the origin with method, path and query", async () => {
    const res = await worker.fetch(`${EDGE}/api/not-in-the-manifest/x?b=2&a=%20`);
    expect(res.status).toBe(200);
    expect(res.headers.get("x-fake-origin")).toBe("1");
    const echo = (await res.json()) as Echo;
    expect(echo.method).toBe("GET");
    expect(echo.url).toBe("http://origin.test:8080/api/not-in-the-manifest/x?b=2&a=%20");
  });

  it("sends manifest routes owned by the origin to the origin", async () => {
    const res = await worker.fetch(`${EDGE}/healthz`);
    expect(((await res.json()) as Echo).url).toBe("http://origin.test:8080/healthz");
  });

  it("keeps method, headers and body byte for byte", async () => {
    const body = new Uint8Array([0, 1, 2, 255, 254, 10, 13]);
    const res = await worker.fetch(`${EDGE}/api/anything`, {
      method: "PUT",
      headers: {
        "content-type": "application/octet-stream",
        "x-custom": "kept",
        authorization: "Bearer t",
        cookie: "a=b",
      },
      body,
    });
    const echo = (await res.json()) as Echo;
    expect(echo.method).toBe("PUT");
    expect(echo.headers["x-custom"]).toBe("kept");
    expect(echo.headers.authorization).toBe("Bearer t");
    expect(echo.headers.cookie).toBe("a=b");
    expect(echo.headers["content-type"]).toBe("application/octet-stream");
    expect(echo.bodyBase64).toBe(btoa(String.fromCharCode(...body)));
    const text = await (await worker.fetch(`${EDGE}/webhooks/telnyx`, { method: "POST", body: '{"data": {"id": "ev-1"}}  ' })).json();
    expect((text as Echo).body).toBe('{"data": {"id": "ev-1"}}  ');
  });

  it("passes a redirect from the origin to the client unchanged", async () => {
    const res = await worker.fetch(`${EDGE}/api/recordings/r1/download`, { redirect: "manual" });
    expect(res.status).toBe(302);
    expect(res.headers.get("location")).toBe("https://recordings.example/r1?X-Amz-Signature=abc");
    expect(res.headers.get("set-cookie")).toBe("seen=1; Path=/");
  });

  it("rewrites the host to the origin's", async () => {
    const echo = (await (await worker.fetch(`${EDGE}/api/me`)).json()) as Echo;
    expect(new URL(echo.url).host).toBe("origin.test:8080");
    if (echo.headers.host !== undefined) expect(echo.headers.host).toBe("origin.test:8080");
  });

  it("sets X-Forwarded-* itself and drops client-supplied x-forwarded-*, x-edge-* and Forwarded", async () => {
    const res = await worker.fetch(`${EDGE}/api/me`, {
      headers: {
        "cf-connecting-ip": "198.51.100.4",
        "x-forwarded-for": "6.6.6.6",
        "x-forwarded-host": "evil.example",
        "x-forwarded-proto": "http",
        "x-forwarded-port": "1",
        "x-edge-signature": "v2=forged",
        "x-edge-content-sha256": "UNSIGNED-PAYLOAD",
        "x-edge-timestamp": "1",
        "x-edge-trusted": "yes",
        forwarded: "for=6.6.6.6",
      },
    });
    const h = ((await res.json()) as Echo).headers;
    expect(h["x-forwarded-for"]).toBe("198.51.100.4");
    expect(h["x-forwarded-proto"]).toBe("https");
    expect(h["x-forwarded-host"]).toBe("api.callbridge.example");
    expect(h["x-forwarded-port"]).toBeUndefined();
    expect(h["x-edge-trusted"]).toBeUndefined();
    expect(h.forwarded).toBeUndefined();
    expect(h["x-edge-signature"]).toMatch(/^v2=[0-9a-f]{64}$/);
    expect(h["x-edge-timestamp"]).not.toBe("1");
  });

  it("omits X-Forwarded-For without CF-Connecting-IP", async () => {
    const h = ((await (await worker.fetch("http://localhost:8787/api/me")).json()) as Echo).headers;
    expect(h["x-forwarded-for"]).toBeUndefined();
    expect(h["x-forwarded-proto"]).toBe("http");
    expect(h["x-forwarded-host"]).toBe("localhost:8787");
  });

  it("signs the forwarded request exactly as the shared vector says", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(Number(vector.timestamp) * 1000 + 999);
    const res = await worker.fetch(`https://${vector.forwardedHost}${vector.pathAndQuery}`, {
      method: vector.method,
      headers: { "cf-connecting-ip": vector.forwardedFor },
      body: vector.body,
    });
    const h = ((await res.json()) as Echo).headers;
    expect(h["x-edge-timestamp"]).toBe(vector.timestamp);
    expect(h["x-edge-content-sha256"]).toBe(vector.contentSha256);
    expect(h["x-edge-signature"]).toBe(vector.signature);
  });

  it("signs with the current time and what the origin actually receives", async () => {
    const before = Math.floor(Date.now() / 1000);
    const echo = (await (
      await worker.fetch(`${EDGE}/api/calls?limit=5`, { headers: { "cf-connecting-ip": "2001:db8::1" } })
    ).json()) as Echo;
    const h = echo.headers;
    const ts = Number(h["x-edge-timestamp"]);
    expect(Math.abs(ts - before)).toBeLessThanOrEqual(5);
    const url = new URL(echo.url);
    const expected = await sign(env.EDGE_SHARED_SECRET, {
      timestamp: h["x-edge-timestamp"]!,
      method: echo.method,
      pathAndQuery: url.pathname + url.search,
      forwardedFor: h["x-forwarded-for"] ?? "",
      forwardedProto: h["x-forwarded-proto"] ?? "",
      forwardedHost: h["x-forwarded-host"] ?? "",
      contentSha256: await contentSha256(new Uint8Array(0)),
    });
    expect(h["x-edge-content-sha256"]).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(h["x-edge-signature"]).toBe(expected);
  });

  it("hashes a body without Content-Length and refuses one over HTTP_BODY_LIMIT_BYTES (413)", async () => {
    const chunked = (bytes: number) =>
      new ReadableStream<Uint8Array>({
        start(controller) {
          for (let sent = 0; sent < bytes; sent += 64 * 1024)
            controller.enqueue(new Uint8Array(Math.min(64 * 1024, bytes - sent)).fill(97));
          controller.close();
        },
      });
    const small = await worker.fetch(`${EDGE}/api/translate`, { method: "POST", body: chunked(1000) });
    const echo = (await small.json()) as Echo;
    expect(echo.body).toBe("a".repeat(1000));
    expect(echo.headers["x-edge-content-sha256"]).toBe(await contentSha256(new TextEncoder().encode("a".repeat(1000))));
    const big = await worker.fetch(`${EDGE}/api/translate`, { method: "POST", body: chunked(1024 * 1024 + 1) });
    expect(big.status).toBe(413);
    expect(big.headers.get("content-type")).toBe("application/problem+json");
  });

  it("streams a body larger than the limit with a Content-Length as UNSIGNED-PAYLOAD", async () => {
    const body = new Uint8Array(1024 * 1024 + 10).fill(98);
    const echo = (await (await worker.fetch(`${EDGE}/api/recordings`, { method: "POST", body })).json()) as Echo;
    expect(echo.headers["x-edge-content-sha256"]).toBe("UNSIGNED-PAYLOAD");
    expect(echo.body.length).toBe(body.length);
  });

  it("passes a WebSocket upgrade through (the origin's 101)", async () => {
    const res = await worker.fetch(`${EDGE}/api/realtime/transcribe`, { headers: { upgrade: "websocket" } });
    expect(res.status).toBe(101);
    const socket = res.webSocket!;
    socket.accept();
    const reply = new Promise<string>((resolve) => socket.addEventListener("message", (e) => resolve(String(e.data))));
    socket.send("hello");
    expect(await reply).toBe("echo:hello");
    socket.close(1000, "done");
  });

  it("never forwards /internal/* (404 problem, origin not called)", async () => {
    for (const path of ["/internal/jobs", "/%69nternal/jobs", "//internal/jobs"]) {
      const res = await worker.fetch(`${EDGE}${path}`, { headers: { "x-test-id": "internal" } });
      expect(res.status, path).toBe(404);
      expect(res.headers.get("content-type")).toBe("application/problem+json");
    }
    expect(await originHits("internal")).toBe(0);
  });

  it("keeps //host-looking paths on the origin", async () => {
    const echo = (await (await worker.fetch(`${EDGE}//evil.example/x`)).json()) as Echo;
    expect(new URL(echo.url).host).toBe("origin.test:8080");
  });

  it("answers 502 problem+json when the origin cannot be reached", async () => {
    vi.spyOn(console, "error").mockImplementation(() => {});
    const shim = createShim(ROUTES, HANDLERS);
    const res = await shim.fetch(
      new Request(`${EDGE}/api/me`, { headers: { "cf-ray": "ray-1" } }),
      { ...env, ORIGIN_URL: "http://unreachable.test" },
      createExecutionContext(),
    );
    expect(res.status).toBe(502);
    expect(res.headers.get("content-type")).toBe("application/problem+json");
    expect(await res.json()).toMatchObject({ status: 502, title: "Bad Gateway", request_id: "ray-1" });
  });

  it("refuses to forward unsigned when EDGE_SHARED_SECRET is missing (503)", async () => {
    vi.spyOn(console, "error").mockImplementation(() => {});
    const shim = createShim(ROUTES, HANDLERS);
    const res = await shim.fetch(
      new Request(`${EDGE}/api/me`, { headers: { "x-test-id": "no-secret" } }),
      { ...env, EDGE_SHARED_SECRET: "" },
      createExecutionContext(),
    );
    expect(res.status).toBe(503);
    expect(await originHits("no-secret")).toBe(0);
  });
});
