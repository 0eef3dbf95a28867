// The pure shadow comparison: what counts as a difference and how it is reported.
import { describe, expect, it } from "vitest";
import { type CapturedResponse, captureResponse, compareResponses, MAX_DIFFERENCES, normaliseJson } from "../src/shadow";

const json = (body: unknown, status = 200, contentType = "application/json"): CapturedResponse => ({
  status,
  headers: { "content-type": contentType },
  body: JSON.stringify(body),
});

describe("compareResponses", () => {
  it("finds nothing when status, content-type and body agree", () => {
    expect(compareResponses(json({ a: 1 }), json({ a: 1 }))).toEqual([]);
  });

  it("compares JSON structurally, not textually", () => {
    const origin: CapturedResponse = { ...json(null), body: '{"a": 1, "b": [1, 2]}' };
    const edge: CapturedResponse = { ...json(null), body: '{"b":[1,2],"a":1.0}' };
    expect(compareResponses(origin, edge)).toEqual([]);
  });

  it("reports a different status", () => {
    expect(compareResponses(json({}, 200), json({}, 201))).toEqual([{ kind: "status", origin: 200, edge: 201 }]);
  });

  it("compares content-type ignoring case and spacing, and only the listed headers", () => {
    const a = json({}, 200, "application/json; charset=utf-8");
    expect(compareResponses(a, json({}, 200, "Application/JSON;charset=UTF-8"))).toEqual([]);
    expect(compareResponses(a, json({}, 200, "text/plain"))).toEqual([
      { kind: "header", name: "content-type", origin: "application/json; charset=utf-8", edge: "text/plain" },
    ]);
    const withEtag = (etag: string | null): CapturedResponse => ({
      ...json({}),
      headers: { ...json({}).headers, etag },
    });
    expect(compareResponses(withEtag('"1"'), withEtag('"2"'))).toEqual([]);
    expect(compareResponses(withEtag('"1"'), withEtag(null), { headers: ["content-type", "ETag"] })).toEqual([
      { kind: "header", name: "etag", origin: '"1"', edge: null },
    ]);
  });

  it("reports changed, missing and extra JSON fields by JSON pointer", () => {
    const origin = json({ id: "c1", status: "ended", tags: ["a", "b"], "a/b": 1, nested: { x: 1 } });
    const edge = json({ id: "c1", status: "active", tags: ["a"], "a/b": 2, extra: true, nested: { x: 1 } });
    expect(compareResponses(origin, edge)).toEqual([
      { kind: "body", path: "/a~1b", change: "changed", origin: 1, edge: 2 },
      { kind: "body", path: "/extra", change: "extra_at_edge", edge: true },
      { kind: "body", path: "/status", change: "changed", origin: "ended", edge: "active" },
      { kind: "body", path: "/tags/1", change: "missing_at_edge", origin: "b" },
    ]);
  });

  it("reports a type change and summarises containers and long strings", () => {
    const long = "x".repeat(500);
    expect(compareResponses(json({ v: { a: 1, b: 2 } }), json({ v: [1, 2, 3] }))).toEqual([
      { kind: "body", path: "/v", change: "changed", origin: "{object with 2 keys}", edge: "[array of 3]" },
    ]);
    const [d] = compareResponses(json({ v: long }), json({ v: "short" }));
    expect(d).toEqual({ kind: "body", path: "/v", change: "changed", origin: "[string of 500 chars]", edge: "short" });
  });

  it("never puts names, emails, phone numbers or tokens of the bodies in a difference", () => {
    const origin = json({
      user: { name: "Ada Lovelace", email: "ada@example.com", token: "5f0c3a52-6d1b-4c9e-9a11-2f7d4c1e8b90" },
      from: "+14155550100",
      count: 4155550100,
    });
    const edge = json({
      user: { name: "Grace Hopper", email: "grace@example.com", token: "8d2e41f7-3b6a-4f0d-b5c2-91e0a6d7c3f4" },
      from: "+442071838750",
      count: 4155550101,
    });
    const logged = JSON.stringify(compareResponses(origin, edge));
    for (const secret of ["Ada", "Grace", "@example.com", "5f0c3a52", "8d2e41f7", "4155550100", "2071838750", "4155550101"]) {
      expect(logged, secret).not.toContain(secret);
    }
    expect(logged).toContain("[string of 12 chars]");
  });

  it("always ignores request_id, plus the route's fields by name or by pointer", () => {
    const origin = json({
      request_id: "r-origin",
      created_at: "2026-11-26T05:00:00Z",
      items: [{ id: 1, updated_at: "t1", meta: { created_at: "deep" } }],
      updated_at: "kept",
    });
    const edge = json({
      request_id: "r-edge",
      items: [{ id: 1, updated_at: "t2", meta: {} }],
      updated_at: "kept",
    });
    expect(compareResponses(origin, edge, { ignoreFields: ["created_at", "/items/*/updated_at"] })).toEqual([]);
    expect(compareResponses(origin, edge, { ignoreFields: ["/items/*/updated_at"] })).toEqual([
      { kind: "body", path: "/created_at", change: "missing_at_edge", origin: "[string of 20 chars]" },
      { kind: "body", path: "/items/0/meta/created_at", change: "missing_at_edge", origin: "deep" },
    ]);
  });

  it("compares non-JSON bodies byte for byte and reports only sizes", () => {
    const text = (body: string): CapturedResponse => ({ status: 200, headers: { "content-type": "text/plain" }, body });
    expect(compareResponses(text("ok"), text("ok"))).toEqual([]);
    expect(compareResponses(text("ok"), text("nope"))).toEqual([
      { kind: "body", path: "", change: "text_differs", originBytes: 2, edgeBytes: 4 },
    ]);
    expect(compareResponses(text("{}"), text("ok"))).toEqual([
      { kind: "body", path: "", change: "json_vs_text", originBytes: 2, edgeBytes: 2 },
    ]);
  });

  it("does not compare a body that was not read", () => {
    const skipped: CapturedResponse = {
      status: 200,
      headers: { "content-type": "text/event-stream" },
      body: null,
      skipped: "event_stream",
    };
    expect(compareResponses(skipped, { ...skipped, body: "data: x\n\n" })).toEqual([]);
  });

  it("caps the report", () => {
    const many = (v: number) => json(Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`k${i}`, v])));
    const diffs = compareResponses(many(1), many(2));
    expect(diffs).toHaveLength(MAX_DIFFERENCES + 1);
    expect(diffs.at(-1)).toMatchObject({ kind: "truncated" });
  });
});

describe("normaliseJson", () => {
  it("drops fields and leaves the input untouched", () => {
    const input = { a: 1, ts: 2, list: [{ ts: 3, b: 4 }] };
    expect(normaliseJson(input, ["ts"])).toEqual({ a: 1, list: [{ b: 4 }] });
    expect(normaliseJson(input, ["/list/0/ts"])).toEqual({ a: 1, ts: 2, list: [{ b: 4 }] });
    expect(input.list[0]).toEqual({ ts: 3, b: 4 });
  });
});

describe("captureResponse", () => {
  it("reads the body and the listed headers", async () => {
    const c = await captureResponse(new Response("hello", { status: 201, headers: { "content-type": "text/plain" } }), [
      "content-type",
      "etag",
    ]);
    expect(c).toEqual({ status: 201, headers: { "content-type": "text/plain", etag: null }, body: "hello" });
  });

  it("refuses bodies over the limit and event streams", async () => {
    expect(await captureResponse(new Response("x".repeat(11)), [], 10)).toMatchObject({
      body: null,
      skipped: "too_large",
    });
    const sse = new Response("data: 1\n\n", { headers: { "content-type": "text/event-stream" } });
    expect(await captureResponse(sse, [])).toMatchObject({ body: null, skipped: "event_stream" });
  });
});
