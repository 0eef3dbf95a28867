// Owns forwarding a request to the container (ORIGIN_URL): same method, headers, body and
// redirect behaviour, host rewritten, X-Forwarded-* set by us and only by us, every request
// signed (signing.ts) with the hash of its body, WebSocket upgrades passed through. A body up
// to HTTP_BODY_LIMIT_BYTES is buffered (bounded) to be hashed; a larger one with a
// Content-Length streams through as UNSIGNED-PAYLOAD; a larger one without is refused (413),
// so no body makes the Worker hold more than the limit. It never decides who answers a route
// (router.ts does).

import { bodyLimit, declaredLength, readBounded } from "./body";
import type { Env } from "./env";
import { problem } from "./problem";
import { scrubPath, scrubText } from "./redact";
import { CONTENT_SHA256_HEADER, contentSha256, SIGNATURE_HEADER, sign, TIMESTAMP_HEADER, UNSIGNED_PAYLOAD, unixSeconds } from "./signing";

/** Client-supplied headers dropped before forwarding, so only the edge can set them. */
const STRIPPED_PREFIXES = ["x-edge-", "x-forwarded-"];
const STRIPPED_HEADERS = ["host", "forwarded"];

/**
 * Sends `request` to the origin and returns the origin's response untouched: a 3xx stays a
 * 3xx with its Location (redirect: "manual"), a 101 keeps its WebSocket. Answers 503 when the
 * edge is misconfigured and 502 when the origin cannot be reached.
 */
export async function proxyToOrigin(request: Request, env: Env): Promise<Response> {
  if (!env.EDGE_SHARED_SECRET) {
    console.error(JSON.stringify({ event: "edge_misconfigured", missing: "EDGE_SHARED_SECRET" }));
    return problem(request, 503, "Service Unavailable", "The edge is not configured to reach the origin.");
  }
  let origin: URL;
  try {
    origin = new URL(env.ORIGIN_URL);
  } catch {
    console.error(JSON.stringify({ event: "edge_misconfigured", invalid: "ORIGIN_URL" }));
    return problem(request, 503, "Service Unavailable", "The edge is not configured to reach the origin.");
  }

  const incoming = new URL(request.url);
  const target = originUrl(origin, incoming);
  const headers = forwardedHeaders(request, incoming);

  const limit = bodyLimit(env.HTTP_BODY_LIMIT_BYTES);
  let body: ReadableStream<Uint8Array> | Uint8Array | null = null;
  let bodyHash = await contentSha256(new Uint8Array(0));
  if (request.body !== null) {
    const declared = declaredLength(request.headers);
    if (declared !== null && declared > limit) {
      body = request.body;
      bodyHash = UNSIGNED_PAYLOAD;
    } else {
      const buffered = await readBounded(request.body, limit);
      if (buffered === null) {
        return problem(request, 413, "Payload Too Large", `A body without Content-Length may hold at most ${limit} bytes.`);
      }
      body = buffered;
      bodyHash = await contentSha256(buffered);
    }
  }

  const timestamp = unixSeconds();
  headers.set(TIMESTAMP_HEADER, timestamp);
  headers.set(CONTENT_SHA256_HEADER, bodyHash);
  headers.set(
    SIGNATURE_HEADER,
    await sign(env.EDGE_SHARED_SECRET, {
      timestamp,
      method: request.method,
      pathAndQuery: target.pathname + target.search,
      forwardedFor: headers.get("x-forwarded-for") ?? "",
      forwardedProto: headers.get("x-forwarded-proto") ?? "",
      forwardedHost: headers.get("x-forwarded-host") ?? "",
      contentSha256: bodyHash,
    }),
  );

  try {
    // A WebSocket upgrade is an ordinary GET carrying `Upgrade: websocket`; fetch() answers it
    // with the origin's 101 and its .webSocket, which returned as-is proxies the socket.
    return await fetch(new Request(target, { method: request.method, headers, body, redirect: "manual" }));
  } catch (err) {
    console.error(JSON.stringify({ event: "origin_unreachable", path: scrubPath(incoming.pathname), error: scrubText(errorMessage(err)) }));
    return problem(request, 502, "Bad Gateway", "The origin could not be reached.");
  }
}

/**
 * The URL the container sees: ORIGIN_URL's scheme, host and path prefix, then the request's
 * own path and query. Fields are set one by one so a path like `//evil.example/x` stays a path
 * and can never become another host.
 */
export function originUrl(origin: URL, incoming: URL): URL {
  const target = new URL(origin.href);
  const prefix = origin.pathname.replace(/\/+$/, "");
  target.pathname = prefix + incoming.pathname;
  target.search = incoming.search;
  target.hash = "";
  return target;
}

/** The request's headers minus anything a client could use to impersonate the edge, plus ours. */
function forwardedHeaders(request: Request, incoming: URL): Headers {
  const headers = new Headers(request.headers);
  const drop: string[] = [];
  for (const name of headers.keys()) {
    if (STRIPPED_HEADERS.includes(name) || STRIPPED_PREFIXES.some((p) => name.startsWith(p))) drop.push(name);
  }
  for (const name of drop) headers.delete(name);

  // Cloudflare sets CF-Connecting-IP itself (a client cannot forge it at the edge). Locally it
  // may be absent: then no X-Forwarded-For, and the signature uses "".
  const clientIp = request.headers.get("cf-connecting-ip");
  if (clientIp) headers.set("x-forwarded-for", clientIp);
  headers.set("x-forwarded-proto", incoming.protocol.replace(/:$/, ""));
  headers.set("x-forwarded-host", incoming.host);
  return headers;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
