// Owns the `shadow` owner: the origin answers the client; the edge computes its own answer
// in dry-run mode alongside, and after the response (ctx.waitUntil) the two are compared and
// any difference is logged as one structured `shadow_diff` line (`shadow_match` when equal,
// `shadow_deferred` when the edge handler would have handed the request to the origin).
// The comparison itself (compareResponses) is a pure function. Nothing here ever sends the
// edge's answer to a client or replays a request for real.

import { isDeferral } from "./defer";
import type { Env } from "./env";
import type { EdgeHandler, ShadowRules } from "./handlers";
import type { RouteMatch } from "./manifest";
import { errorMessage, proxyToOrigin } from "./proxy";
import { describeValue, scrubPath, scrubText } from "./redact";

/** Bodies larger than this are not compared (status and headers still are). */
export const MAX_SHADOW_BODY_BYTES = 1024 * 1024;
/** A report lists at most this many differences; `truncated` says when there were more. */
export const MAX_DIFFERENCES = 50;
/** JSON fields every route ignores. */
export const ALWAYS_IGNORED = ["request_id"];
const DEFAULT_HEADERS = ["content-type"];

/** The parts of a response the comparison looks at. */
export interface CapturedResponse {
  status: number;
  /** Compared headers only, lower-case names; null when absent. */
  headers: Record<string, string | null>;
  /** The body as text, or null when it was not read (see `skipped`). */
  body: string | null;
  skipped?: "websocket" | "event_stream" | "too_large" | "unreadable";
}

/** One way the edge's answer differs from the origin's. JSON paths are JSON pointers. */
export type Difference =
  | { kind: "status"; origin: number; edge: number }
  | { kind: "header"; name: string; origin: string | null; edge: string | null }
  | {
      kind: "body";
      path: string;
      change: "changed" | "missing_at_edge" | "extra_at_edge";
      origin?: unknown;
      edge?: unknown;
    }
  | { kind: "body"; path: ""; change: "text_differs" | "json_vs_text"; originBytes: number; edgeBytes: number }
  | { kind: "edge_error"; error: string }
  | { kind: "truncated"; more: number };

/**
 * Compares two captured responses under a route's rules: status, the listed headers
 * (content-type compared case- and space-insensitively), and the body — JSON structurally
 * after dropping ignored fields, anything else byte for byte. Returns [] when they agree.
 */
export function compareResponses(origin: CapturedResponse, edge: CapturedResponse, rules: ShadowRules = {}): Difference[] {
  const out: Difference[] = [];
  if (origin.status !== edge.status) out.push({ kind: "status", origin: origin.status, edge: edge.status });

  for (const raw of rules.headers ?? DEFAULT_HEADERS) {
    const name = raw.toLowerCase();
    const a = normaliseHeader(name, origin.headers[name] ?? null);
    const b = normaliseHeader(name, edge.headers[name] ?? null);
    if (a !== b) out.push({ kind: "header", name, origin: shown(origin.headers[name]), edge: shown(edge.headers[name]) });
  }

  // A body that was not read (see CapturedResponse.skipped) is not compared; report() says so.
  if (origin.body !== null && edge.body !== null && origin.body !== edge.body) {
    const a = parseJson(origin.body);
    const b = parseJson(edge.body);
    if (a.ok && b.ok) {
      const ignore = compileIgnore([...ALWAYS_IGNORED, ...(rules.ignoreFields ?? [])]);
      diffJson(strip(a.value, [], ignore), strip(b.value, [], ignore), "", out);
    } else {
      const bytes = new TextEncoder();
      out.push({
        kind: "body",
        path: "",
        change: a.ok !== b.ok ? "json_vs_text" : "text_differs",
        originBytes: bytes.encode(origin.body).length,
        edgeBytes: bytes.encode(edge.body).length,
      });
    }
  }

  if (out.length > MAX_DIFFERENCES) {
    const more = out.length - MAX_DIFFERENCES;
    out.length = MAX_DIFFERENCES;
    out.push({ kind: "truncated", more });
  }
  return out;
}

function normaliseHeader(name: string, value: string | null): string | null {
  if (value === null) return null;
  if (name === "content-type") {
    return value
      .split(";")
      .map((part) => part.trim().toLowerCase())
      .filter((part) => part !== "")
      .join(";");
  }
  return value.trim();
}

function parseJson(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

interface IgnoreRules {
  names: Set<string>;
  pointers: string[][];
}

function compileIgnore(fields: string[]): IgnoreRules {
  const names = new Set<string>();
  const pointers: string[][] = [];
  for (const field of fields) {
    if (field.startsWith("/")) {
      pointers.push(
        field
          .slice(1)
          .split("/")
          .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~")),
      );
    } else {
      names.add(field);
    }
  }
  return { names, pointers };
}

/** A copy of `value` without the ignored object fields. Exported for tests. */
export function normaliseJson(value: unknown, ignoreFields: string[]): unknown {
  return strip(value, [], compileIgnore(ignoreFields));
}

function strip(value: unknown, path: string[], ignore: IgnoreRules): unknown {
  if (Array.isArray(value)) return value.map((v, i) => strip(v, [...path, String(i)], ignore));
  if (isObject(value)) {
    const out: Record<string, unknown> = {};
    for (const [key, v] of Object.entries(value)) {
      const here = [...path, key];
      if (ignore.names.has(key) || ignore.pointers.some((p) => pointerMatches(p, here))) continue;
      out[key] = strip(v, here, ignore);
    }
    return out;
  }
  return value;
}

function pointerMatches(pattern: string[], path: string[]): boolean {
  return pattern.length === path.length && pattern.every((seg, i) => seg === "*" || seg === path[i]);
}

function diffJson(a: unknown, b: unknown, path: string, out: Difference[]): void {
  if (out.length > MAX_DIFFERENCES) return;
  if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      const here = `${path}/${i}`;
      if (i >= b.length) out.push({ kind: "body", path: here, change: "missing_at_edge", origin: summarise(a[i]) });
      else if (i >= a.length) out.push({ kind: "body", path: here, change: "extra_at_edge", edge: summarise(b[i]) });
      else diffJson(a[i], b[i], here, out);
    }
    return;
  }
  if (isObject(a) && isObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const key of keys) {
      const here = `${path}/${key.replace(/~/g, "~0").replace(/\//g, "~1")}`;
      if (!(key in b)) out.push({ kind: "body", path: here, change: "missing_at_edge", origin: summarise(a[key]) });
      else if (!(key in a)) out.push({ kind: "body", path: here, change: "extra_at_edge", edge: summarise(b[key]) });
      else diffJson(a[key], b[key], here, out);
    }
    return;
  }
  if (a !== b) out.push({ kind: "body", path, change: "changed", origin: summarise(a), edge: summarise(b) });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Keeps log lines small and free of personal data (src/redact.ts). */
const summarise = describeValue;

/** A header value for a log line, credentials and personal data replaced. */
function shown(value: string | null | undefined): string | null {
  return value == null ? null : scrubText(value);
}

/** Reads the compared parts of a response without ever holding more than `maxBytes` of body. */
export async function captureResponse(
  response: Response,
  headerNames: string[],
  maxBytes = MAX_SHADOW_BODY_BYTES,
): Promise<CapturedResponse> {
  const headers: Record<string, string | null> = {};
  for (const name of headerNames) headers[name.toLowerCase()] = response.headers.get(name);
  const base = { status: response.status, headers };
  if (response.status === 101 || response.webSocket) return { ...base, body: null, skipped: "websocket" };
  if (response.body === null) return { ...base, body: "" };
  if ((response.headers.get("content-type") ?? "").toLowerCase().startsWith("text/event-stream")) {
    await response.body.cancel();
    return { ...base, body: null, skipped: "event_stream" };
  }
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel();
        return { ...base, body: null, skipped: "too_large" };
      }
      chunks.push(value);
    }
  } catch {
    return { ...base, body: null, skipped: "unreadable" };
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return { ...base, body: new TextDecoder().decode(bytes) };
}

type EdgeOutcome = { ok: true; response: Response } | { ok: false; error: string } | { ok: false; deferred: string };

/**
 * Serves a `shadow` route: returns the origin's response and schedules the comparison.
 * WebSocket upgrades are proxied without shadowing (a socket cannot be answered twice).
 */
export async function serveShadowed(
  request: Request,
  env: Env,
  ctx: ExecutionContext,
  match: RouteMatch,
  handler: EdgeHandler,
): Promise<Response> {
  if ((request.headers.get("upgrade") ?? "").toLowerCase() === "websocket") return proxyToOrigin(request, env);

  const edgeRequest = request.clone();
  // Started now so the edge runs alongside the origin; settled so a throw is data, not an
  // unhandled rejection.
  const edgeAnswer: Promise<EdgeOutcome> = (async () => {
    try {
      const response = await handler.handle(edgeRequest, {
        env,
        route: match.route,
        params: match.params,
        dryRun: true,
        waitUntil: (p) => ctx.waitUntil(p),
      });
      return { ok: true as const, response };
    } catch (err) {
      if (isDeferral(err)) return { ok: false as const, deferred: err.reason };
      return { ok: false as const, error: errorMessage(err) };
    }
  })();

  const originResponse = await proxyToOrigin(request, env);
  if (originResponse.status === 101 || originResponse.webSocket) {
    ctx.waitUntil(edgeAnswer.then((o) => (o.ok ? o.response.body?.cancel() : undefined)));
    return originResponse;
  }
  const originCopy = originResponse.clone();
  const path = scrubPath(new URL(request.url).pathname);
  ctx.waitUntil(report(match, request.method, path, originCopy, edgeAnswer, handler.shadow ?? {}));
  return originResponse;
}

async function report(
  match: RouteMatch,
  method: string,
  path: string,
  originCopy: Response,
  edgeAnswer: Promise<EdgeOutcome>,
  rules: ShadowRules,
): Promise<void> {
  const route = match.route.key;
  try {
    const headerNames = rules.headers ?? DEFAULT_HEADERS;
    const origin = await captureResponse(originCopy, headerNames);
    const outcome = await edgeAnswer;
    if (!outcome.ok && "deferred" in outcome) {
      // The edge would have handed this request to the origin: nothing to compare.
      console.log(JSON.stringify({ event: "shadow_deferred", route, method, path, reason: outcome.deferred }));
      return;
    }
    let differences: Difference[];
    let skipped = origin.skipped;
    if (outcome.ok) {
      const edge = await captureResponse(outcome.response, headerNames);
      differences = compareResponses(origin, edge, rules);
      skipped ??= edge.skipped;
    } else {
      differences = [{ kind: "edge_error", error: scrubText(outcome.error) }];
    }
    const line: Record<string, unknown> = {
      event: differences.length === 0 ? "shadow_match" : "shadow_diff",
      route,
      method,
      path,
      differences,
    };
    if (skipped !== undefined) line.body_not_compared = skipped;
    console.log(JSON.stringify(line));
  } catch (err) {
    console.error(JSON.stringify({ event: "shadow_error", route, path, error: scrubText(errorMessage(err)) }));
  }
}
