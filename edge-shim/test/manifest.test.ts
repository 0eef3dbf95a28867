// The route manifest: routes.json itself, template matching, and what an invalid manifest is.
import { describe, expect, it } from "vitest";
import { checkRegistry, HANDLERS } from "../src/handlers";
import { compileManifest, matchRoute, ROUTES } from "../src/manifest";
import { isInternal } from "../src/router";

const routes = compileManifest({
  routes: [
    { method: "GET", path: "/api/calls", owner: "origin" },
    { method: "GET", path: "/api/calls/{id}", owner: "shadow" },
    { method: "POST", path: "/api/calls/{id}/hangup", owner: "edge" },
    { method: "GET", path: "/api/recordings/{id}", owner: "origin" },
    { method: "GET", path: "/api/recordings/latest", owner: "edge" },
    { method: "GET", path: "/", owner: "origin" },
  ],
});

describe("routes.json", () => {
  it("is valid, lists the seeded routes, and has a handler for every non-origin route", () => {
    expect(ROUTES.map((r) => `${r.key} ${r.owner}`)).toEqual([
      "GET /healthz origin",
      "GET /readyz origin",
      "GET /api/me origin",
      "GET /api/calls origin",
      "PUT /api/phone-numbers/{id}/line origin",
      "GET /api/phone-numbers/{id}/line origin",
      "DELETE /api/phone-numbers/{id}/line origin",
      "POST /webhooks/telnyx origin",
      "POST /webhooks/assemblyai origin",
      "GET /api/realtime/transcribe origin",
      "GET /api/usage origin",
      "GET /api/usage/quotas origin",
    ]);
    expect(() => checkRegistry(ROUTES, HANDLERS)).not.toThrow();
  });
});

describe("matchRoute", () => {
  it("matches literal paths exactly", () => {
    expect(matchRoute(routes, "GET", "/api/calls")?.route.key).toBe("GET /api/calls");
    expect(matchRoute(routes, "GET", "/api/calls/")).toBeNull();
    expect(matchRoute(routes, "GET", "/API/calls")).toBeNull();
    expect(matchRoute(routes, "GET", "/")?.route.key).toBe("GET /");
  });

  it("binds {params} to one decoded, non-empty segment", () => {
    const m = matchRoute(routes, "GET", "/api/calls/c%20%F0%9F%93%9E");
    expect(m?.route.key).toBe("GET /api/calls/{id}");
    expect(m?.route.owner).toBe("shadow");
    expect(m?.params).toEqual({ id: "c 📞" });
    expect(matchRoute(routes, "POST", "/api/calls/42/hangup")?.params).toEqual({ id: "42" });
    expect(matchRoute(routes, "GET", "/api/calls//hangup")).toBeNull();
    expect(matchRoute(routes, "GET", "/api/calls/1/2")).toBeNull();
    expect(matchRoute(routes, "GET", "/api/calls/%E0%A4%A")).toBeNull();
  });

  it("matches the method exactly (HEAD does not borrow GET)", () => {
    expect(matchRoute(routes, "POST", "/api/calls")).toBeNull();
    expect(matchRoute(routes, "HEAD", "/api/calls")).toBeNull();
    expect(matchRoute(routes, "GET", "/api/calls/42/hangup")).toBeNull();
  });

  it("prefers a literal segment over a {param}, whatever the order", () => {
    expect(matchRoute(routes, "GET", "/api/recordings/latest")?.route.key).toBe("GET /api/recordings/latest");
    expect(matchRoute(routes, "GET", "/api/recordings/r1")?.route.key).toBe("GET /api/recordings/{id}");
  });

  it("returns null for unknown paths (the router sends them to the origin)", () => {
    expect(matchRoute(ROUTES, "GET", "/api/not-in-the-manifest")).toBeNull();
  });
});

describe("compileManifest", () => {
  const invalid = (entry: unknown) => () => compileManifest({ routes: [entry] });

  it("rejects bad owners, methods and templates", () => {
    expect(invalid({ method: "GET", path: "/a", owner: "cdn" })).toThrow(/owner must be one of/);
    expect(invalid({ method: "get", path: "/a", owner: "origin" })).toThrow(/method must be one of/);
    expect(invalid({ method: "GET", path: "a", owner: "origin" })).toThrow(/must start with/);
    expect(invalid({ method: "GET", path: "/a/", owner: "origin" })).toThrow(/must not end with/);
    expect(invalid({ method: "GET", path: "/a/{id", owner: "origin" })).toThrow(/neither a literal/);
    expect(invalid({ method: "GET", path: "/a/*", owner: "origin" })).toThrow(/neither a literal/);
    expect(invalid({ method: "GET", path: "/a/{id}/{id}", owner: "origin" })).toThrow(/appears twice/);
    expect(() => compileManifest({ paths: [] })).toThrow(/expected/);
  });

  it("rejects two templates that match the same requests", () => {
    expect(() =>
      compileManifest({
        routes: [
          { method: "GET", path: "/api/calls/{id}", owner: "origin" },
          { method: "GET", path: "/api/calls/{call_id}", owner: "edge" },
        ],
      }),
    ).toThrow(/matches the same requests as GET \/api\/calls\/\{id\}/);
  });

  it("lists every problem at once", () => {
    expect(() =>
      compileManifest({
        routes: [
          { method: "X", path: "/a", owner: "origin" },
          { method: "GET", path: "b", owner: "origin" },
        ],
      }),
    ).toThrow(/routes\[0\][\s\S]*routes\[1\]/);
  });
});

describe("checkRegistry", () => {
  const handler = { handle: async () => new Response("edge") };

  it("demands a handler for every shadow and edge route", () => {
    expect(() => checkRegistry(routes, {})).toThrow(/GET \/api\/calls\/\{id\} is "shadow" but has no edge handler/);
  });

  it("rejects handlers for routes the manifest does not list", () => {
    const all = {
      "GET /api/calls/{id}": handler,
      "POST /api/calls/{id}/hangup": handler,
      "GET /api/recordings/latest": handler,
    };
    expect(() => checkRegistry(routes, all)).not.toThrow();
    expect(() => checkRegistry(routes, { ...all, "GET /nowhere": handler })).toThrow(/matches no route/);
  });
});

describe("isInternal", () => {
  it("catches /internal however it is spelled", () => {
    for (const p of ["/internal", "/internal/debug", "/Internal/x", "//internal/x", "/%69nternal/x", "/%2Finternal"]) {
      expect(isInternal(p), p).toBe(true);
    }
    for (const p of ["/internals", "/api/internal", "/", "/healthz"]) expect(isInternal(p), p).toBe(false);
  });
});
