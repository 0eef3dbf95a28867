// Owns the shape of answers the edge gives *in the container's name*: the request id, the
// JSON and problem+json bodies, and the headers every container response carries (the CORS
// and Vary headers of its tower-http layers, `x-request-id`). An edge-owned route must be
// indistinguishable from the container, so each rule here cites the Rust it mirrors.

import type { Env } from "./env";
import type { components, paths } from "./generated/openapi";

// ---- the container's contract (src/generated/openapi.d.ts, from its /api/openapi.json) ----

/** A schema of the container's OpenAPI (`components.schemas`). */
export type Schema<Name extends keyof components["schemas"]> = components["schemas"][Name];
type Method = "get" | "post" | "put" | "patch" | "delete";
type Responses<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]> extends { responses: infer R } ? R : never;
/**
 * The `application/json` body the container documents for `status` of `METHOD path`. An edge
 * handler's JSON answer is typed with it, so a contract change in the container (a field
 * renamed, added as required, retyped) is a type error here after `npm run gen:types`.
 */
export type JsonBody<P extends keyof paths, M extends Method, S extends keyof Responses<P, M>> = Responses<P, M>[S] extends {
  content: { "application/json": infer Body };
}
  ? Body
  : never;
/** The container's RFC 9457 problem (`Problem` in src/http/error.rs): its members plus extensions. */
export type ProblemBody = Schema<"Problem">;

/** src/http/request_id.rs `acceptable`: 1–128 of [A-Za-z0-9-_.:]. */
const ACCEPTABLE_REQUEST_ID = /^[A-Za-z0-9\-_.:]{1,128}$/;

/**
 * The request id, chosen like the container's `request_id::choose`: an acceptable
 * `x-request-id`, else an acceptable `cf-ray`, else a new UUIDv7.
 */
export function chooseRequestId(headers: Headers): string {
  for (const name of ["x-request-id", "cf-ray"]) {
    const value = headerValue(headers, name);
    if (value !== null && ACCEPTABLE_REQUEST_ID.test(value)) return value;
  }
  return uuidv7();
}

/**
 * A request header as the container's HTTP parser (hyper/httparse) hands it over: without
 * leading or trailing spaces and tabs. The Workers runtime keeps trailing whitespace (a
 * client's `Authorization: Bearer  ` arrives as is), so every edge handler reads headers
 * through this.
 */
export function headerValue(headers: Headers, name: string): string | null {
  const value = headers.get(name);
  return value === null ? null : value.replace(/^[\t ]+|[\t ]+$/g, "");
}

/** A UUIDv7 (RFC 9562 §5.7): 48-bit unix milliseconds, version 7, variant 10, random rest. */
export function uuidv7(nowMs: number = Date.now()): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  let ms = Math.floor(nowMs);
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** `split_list` in src/config/mod.rs: comma-separated, trimmed, empties dropped. */
export function splitList(raw: string | undefined): string[] {
  return (raw ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/**
 * `AllowedOrigins::allows` in src/config/origins.rs: an entry is an exact origin, or
 * `https://*.<domain>`, which admits exactly one DNS label (a-z, 0-9, `-`) in place of `*`
 * over https on the default port (Cloudflare Pages previews). The container refuses unsafe
 * entries at start-up (a bare `*`, `https://*.pages.dev`); the edge uses the same list.
 */
export function originAllowed(origin: string, allowed: readonly string[]): boolean {
  return allowed.some((entry) => {
    if (!entry.startsWith("https://*.")) return entry === origin;
    const domain = entry.slice("https://*.".length).toLowerCase();
    if (!origin.startsWith("https://") || !origin.endsWith(`.${domain}`)) return false;
    const label = origin.slice("https://".length, origin.length - domain.length - 1);
    return /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(label);
  });
}

/** Everything an answer needs from the request, computed once per request. */
export interface Answering {
  requestId: string;
  /** The `Origin` request header when it is one of ALLOWED_ORIGINS (echoed by CORS). */
  allowedOrigin: string | null;
}

export function answering(request: Request, env: Env): Answering {
  const origin = headerValue(request.headers, "origin");
  const allowed = origin !== null && originAllowed(origin, splitList(env.ALLOWED_ORIGINS));
  return { requestId: chooseRequestId(request.headers), allowedOrigin: allowed ? origin : null };
}

/** tower-http's compression `SizeAbove` default: smaller bodies are never compressed. */
const COMPRESSION_MIN_SIZE = 32;
const encoder = new TextEncoder();

/**
 * Headers on every container response, whatever the route: tower-http's CorsLayer (credentials
 * allowed, `x-request-id` exposed, the Origin echoed only when allowed, its Vary), the
 * CompressionLayer's `vary: accept-encoding` (only on a body it would compress: 32 bytes or
 * more), and the request id.
 */
function containerHeaders(a: Answering, contentType: string, body: string): Headers {
  const headers = new Headers({ "content-type": contentType });
  headers.append("vary", "origin, access-control-request-method, access-control-request-headers");
  if (encoder.encode(body).length >= COMPRESSION_MIN_SIZE) headers.append("vary", "accept-encoding");
  headers.set("access-control-allow-credentials", "true");
  if (a.allowedOrigin !== null) headers.set("access-control-allow-origin", a.allowedOrigin);
  headers.set("access-control-expose-headers", "x-request-id");
  headers.set("x-request-id", a.requestId);
  return headers;
}

/**
 * A 2xx JSON answer, like axum's `Json` (`content-type: application/json`). Callers name the
 * contract: `jsonAnswer<JsonBody<"/api/me", "get", 200>>(a, {...})`.
 */
export function jsonAnswer<Body>(a: Answering, body: NoInfer<Body>, status = 200): Response {
  const text = JSON.stringify(body);
  return new Response(text, { status, headers: containerHeaders(a, "application/json", text) });
}

/** RFC 9457 problem of the container's `Problem` type (src/http/error.rs), with `request_id`. */
export interface ProblemShape {
  status: number;
  /** `about:blank`, or `urn:callbridge:problem:<slug>` for a typed problem. */
  type?: string;
  /** Defaults to the status's canonical reason, as `Problem::new` does. */
  title?: string;
  detail: string;
  /** Extension members, written after `request_id` (serde's `flatten`, keys sorted). */
  extensions?: Record<string, unknown>;
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  413: "Payload Too Large",
  422: "Unprocessable Entity",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

export function problemAnswer(a: Answering, p: ProblemShape): Response {
  // Field order as serde writes the Rust struct: type, title, status, detail, request_id.
  const body: ProblemBody = {
    type: p.type ?? "about:blank",
    title: p.title ?? REASONS[p.status] ?? "Error",
    status: p.status,
    detail: p.detail,
    request_id: a.requestId,
  };
  for (const key of Object.keys(p.extensions ?? {}).sort()) body[key] = p.extensions![key];
  const text = JSON.stringify(body);
  return new Response(text, { status: p.status, headers: containerHeaders(a, "application/problem+json", text) });
}

/** `ApiError::Unauthorized(detail)`: the typed 401 with `www-authenticate: Bearer`. */
export function unauthorized(a: Answering, detail: string): Response {
  const response = problemAnswer(a, {
    status: 401,
    type: "urn:callbridge:problem:unauthenticated",
    title: "Authentication required",
    detail,
  });
  response.headers.set("www-authenticate", "Bearer");
  return response;
}
