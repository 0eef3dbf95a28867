// Owns the edge handler registry: the code that answers a route at the edge, keyed by the
// route's manifest key ("GET /api/calls/{id}"). A route may be `shadow` or `edge` in
// routes.json only if it has a handler here; checkRegistry enforces that at start-up.

import { listCalls, me } from "./api";
import { assemblyaiWebhook } from "./assemblyai-webhook";
import type { Env } from "./env";
import type { CompiledRoute, WorkManifest } from "./manifest";
import { realtimeTranscribe } from "./realtime";
import { telnyxWebhook } from "./webhooks";

/** What an edge handler gets besides the request. */
export interface EdgeContext {
  env: Env;
  /** The matched manifest route. */
  route: CompiledRoute;
  /** Path parameters from the template, percent-decoded (`{id}` → params.id). */
  params: Record<string, string>;
  /**
   * True when the edge is only shadowing the origin: compute the answer the edge would give
   * but change nothing (no inbox row, no queue message, no object written). The origin has
   * already done the real work; a shadow call is never replayed for real.
   */
  dryRun: boolean;
  /** ctx.waitUntil, for work that may finish after the response. */
  waitUntil(promise: Promise<unknown>): void;
  /** Job and cron owners (routes.json's by default; tests and the parity Worker set their own). */
  work?: WorkManifest;
}

/** Per-route rules for comparing the edge's answer with the origin's in shadow mode. */
export interface ShadowRules {
  // JSON fields left out of the comparison because they differ legitimately (ids, clocks).
  // A bare name (`created_at`) is dropped at any depth; a path starting with `/` is a JSON
  // pointer in which a `*` segment matches any key or index (`/items/*/updated_at`).
  // `request_id` is always ignored.
  ignoreFields?: string[];
  /** Response headers that must match; default `["content-type"]`. */
  headers?: string[];
}

/**
 * The edge's implementation of one route. To have the container answer a request the edge
 * recognises but does not handle itself, throw DeferToOrigin (src/defer.ts) before any side
 * effect; any other throw is a failure and falls back to the container too.
 */
export interface EdgeHandler {
  handle(request: Request, ctx: EdgeContext): Promise<Response>;
  shadow?: ShadowRules;
}

export type HandlerRegistry = Readonly<Record<string, EdgeHandler>>;

/**
 * The production registry. A handler may exist while its route is still `origin` (it is then
 * never called); flipping the route to `shadow` or `edge` in routes.json puts it to work
 * (docs/STRANGLER.md). The parity suite (parity/) runs every handler here as `edge`.
 */
export const HANDLERS: HandlerRegistry = {
  "POST /webhooks/telnyx": telnyxWebhook,
  "POST /webhooks/assemblyai": assemblyaiWebhook,
  "GET /api/me": me,
  "GET /api/calls": listCalls,
  "GET /api/realtime/transcribe": realtimeTranscribe,
};

/** Throws when a `shadow`/`edge` route has no handler, or a handler names no manifest route. */
export function checkRegistry(routes: readonly CompiledRoute[], handlers: HandlerRegistry): void {
  const problems: string[] = [];
  const keys = new Set(routes.map((r) => r.key));
  for (const route of routes) {
    if (route.owner !== "origin" && handlers[route.key] === undefined) {
      problems.push(`${route.key} is "${route.owner}" but has no edge handler`);
    }
  }
  for (const key of Object.keys(handlers)) {
    if (!keys.has(key)) problems.push(`edge handler "${key}" matches no route in routes.json`);
  }
  if (problems.length > 0) throw new Error(`edge handler registry is invalid:\n  ${problems.join("\n  ")}`);
}
