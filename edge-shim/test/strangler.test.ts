// The two non-origin owners against the fake origin: `shadow` (origin answers, edge compared in
// the background, differences logged) and `edge` (edge answers, origin on a throw).
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import type { EdgeContext, HandlerRegistry } from "../src/handlers";
import { compileManifest } from "../src/manifest";
import { createShim } from "../src/router";
import { type Echo, logged, originHits } from "./helpers";

const EDGE = "https://api.callbridge.example";

const routes = compileManifest({
  routes: [
    { method: "GET", path: "/api/calls/{id}", owner: "shadow" },
    { method: "POST", path: "/api/calls/{id}/hangup", owner: "shadow" },
    { method: "GET", path: "/api/realtime/transcribe", owner: "shadow" },
    { method: "GET", path: "/api/me", owner: "edge" },
    { method: "POST", path: "/webhooks/assemblyai", owner: "edge" },
  ],
});

/** What the handlers saw, per test. */
let calls: { route: string; dryRun: boolean; body: string; params: Record<string, string> }[] = [];

async function record(request: Request, ctx: EdgeContext): Promise<string> {
  const body = await request.text();
  calls.push({ route: ctx.route.key, dryRun: ctx.dryRun, body, params: ctx.params });
  return body;
}

const handlers: HandlerRegistry = {
  // Agrees with the fake origin for call "same"; says "active" instead of "ended" otherwise;
  // throws for call "boom".
  "GET /api/calls/{id}": {
    async handle(request, ctx) {
      await record(request, ctx);
      if (ctx.params.id === "boom") throw new Error("edge handler exploded");
      const status = ctx.params.id === "same" ? "ended" : "active";
      return Response.json(
        { id: ctx.params.id, status, created_at: "2000-01-01T00:00:00Z", request_id: "edge" },
        { headers: { "content-type": "Application/JSON;charset=UTF-8" } },
      );
    },
    shadow: { ignoreFields: ["created_at"] },
  },
  "POST /api/calls/{id}/hangup": {
    async handle(request, ctx) {
      const body = await record(request, ctx);
      // A real handler would hang up only when !ctx.dryRun.
      return Response.json({ id: ctx.params.id, hung_up: true, received: body, request_id: "edge" }, { status: 202 });
    },
  },
  "GET /api/realtime/transcribe": {
    async handle(request, ctx) {
      await record(request, ctx);
      return new Response("edge socket");
    },
  },
  "GET /api/me": {
    async handle(request, ctx) {
      await record(request, ctx);
      if (request.headers.has("x-fail")) throw new Error("edge /api/me failed");
      return Response.json({ answered_by: "edge" });
    },
  },
  "POST /webhooks/assemblyai": {
    async handle(request, ctx) {
      await record(request, ctx);
      throw new Error("inbox unavailable");
    },
  },
};

const shim = createShim(routes, handlers);
let log: MockInstance<typeof console.log>;
let error: MockInstance<typeof console.error>;

beforeEach(() => {
  calls = [];
  log = vi.spyOn(console, "log").mockImplementation(() => {});
  error = vi.spyOn(console, "error").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

/** Runs one request through the shim and waits for its waitUntil work (the shadow report). */
async function send(path: string, init?: RequestInit): Promise<Response> {
  const ctx = createExecutionContext();
  const res = await shim.fetch(new Request(`${EDGE}${path}`, init), env, ctx);
  const body = await res.arrayBuffer();
  await waitOnExecutionContext(ctx);
  return new Response(res.status === 101 ? null : body, res);
}

describe("shadow", () => {
  it("returns the origin's answer and logs the edge's differences", async () => {
    const res = await send("/api/calls/c42");
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id: "c42", status: "ended" });

    expect(calls).toEqual([{ route: "GET /api/calls/{id}", dryRun: true, body: "", params: { id: "c42" } }]);
    const diffs = logged(log, "shadow_diff");
    expect(diffs).toEqual([
      {
        event: "shadow_diff",
        route: "GET /api/calls/{id}",
        method: "GET",
        path: "/api/calls/c42",
        // request_id and created_at differ too, but are ignored; content-type differs only in case.
        differences: [{ kind: "body", path: "/status", change: "changed", origin: "ended", edge: "active" }],
      },
    ]);
  });

  it("logs a match, not a diff, when the answers agree", async () => {
    const res = await send("/api/calls/same");
    expect(((await res.json()) as { status: string }).status).toBe("ended");
    expect(logged(log, "shadow_diff")).toEqual([]);
    expect(logged(log, "shadow_match")).toMatchObject([{ route: "GET /api/calls/{id}", differences: [] }]);
  });

  it("calls a mutating route's handler in dry-run mode, with the body, once", async () => {
    const res = await send("/api/calls/c7/hangup", {
      method: "POST",
      body: '{"reason":"test"}',
      headers: { "x-test-id": "hangup" },
    });
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ id: "c7", hung_up: true, received: '{"reason":"test"}' });
    expect(calls).toEqual([{ route: "POST /api/calls/{id}/hangup", dryRun: true, body: '{"reason":"test"}', params: { id: "c7" } }]);
    expect(await originHits("hangup")).toBe(1);
    expect(logged(log, "shadow_match")).toHaveLength(1);
  });

  it("reports an edge handler that throws, and still serves the origin's answer", async () => {
    const res = await send("/api/calls/boom");
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id: "boom", status: "ended" });
    expect(logged(log, "shadow_diff")).toMatchObject([
      { route: "GET /api/calls/{id}", differences: [{ kind: "edge_error", error: "edge handler exploded" }] },
    ]);
  });

  it("does not shadow WebSocket upgrades", async () => {
    const res = await send("/api/realtime/transcribe", { headers: { upgrade: "websocket" } });
    expect(res.status).toBe(101);
    res.webSocket?.accept();
    res.webSocket?.close(1000, "done");
    expect(calls).toEqual([]);
    expect(logged(log, "shadow_diff")).toEqual([]);
  });
});

describe("edge", () => {
  it("answers at the edge without calling the origin", async () => {
    const res = await send("/api/me", { headers: { "x-test-id": "edge-ok" } });
    expect(await res.json()).toEqual({ answered_by: "edge" });
    expect(calls).toMatchObject([{ route: "GET /api/me", dryRun: false }]);
    expect(await originHits("edge-ok")).toBe(0);
  });

  it("falls back to the origin when the edge handler throws", async () => {
    const res = await send("/api/me", { headers: { "x-fail": "1", "x-test-id": "edge-fail" } });
    expect(res.headers.get("x-fake-origin")).toBe("1");
    expect(((await res.json()) as Echo).url).toBe("http://origin.test:8080/api/me");
    expect(await originHits("edge-fail")).toBe(1);
    expect(logged(error, "edge_fallback")).toMatchObject([{ route: "GET /api/me", error: "edge /api/me failed" }]);
  });

  it("gives the origin the untouched body after the edge handler read it and threw", async () => {
    const payload = '{"transcript_id":"t1","status":"completed"}';
    const res = await send("/webhooks/assemblyai", {
      method: "POST",
      body: payload,
      headers: { "content-type": "application/json" },
    });
    const echo = (await res.json()) as Echo;
    expect(echo.method).toBe("POST");
    expect(echo.body).toBe(payload);
    expect(echo.headers["x-edge-signature"]).toMatch(/^v2=/);
    expect(calls).toMatchObject([{ route: "POST /webhooks/assemblyai", body: payload, dryRun: false }]);
  });
});
