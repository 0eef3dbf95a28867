// Errors to Sentry (@sentry/cloudflare), scrubbed by the container's rules (src/telemetry.rs
// `scrub_event`): no cookies, no query strings, no request bodies, and none of the headers
// that carry credentials or signatures. Without SENTRY_DSN nothing is sent.

import type { CloudflareOptions, ErrorEvent } from "@sentry/cloudflare";
import type { Env } from "./env";
import { scrubPath } from "./redact";

/** The container's SENSITIVE_HEADERS, lower case. */
export const SENSITIVE_HEADERS: ReadonlySet<string> = new Set([
  "authorization",
  "cookie",
  "set-cookie",
  "proxy-authorization",
  "x-api-key",
  "xi-api-key",
  "telnyx-signature-ed25519",
  "cf-access-jwt-assertion",
  "x-edge-signature",
  "x-telnyx-streaming-auth-token",
  // Sent by the edge itself to the container and by AssemblyAI webhooks.
  "x-callbridge-webhook-secret",
  "x-debug-token",
]);

/** Removes credentials from an event's request data before it leaves the Worker. */
export function scrubEvent<E extends ErrorEvent>(event: E): E {
  const request = event.request;
  if (request !== undefined) {
    delete request.cookies;
    delete request.query_string;
    delete request.data;
    if (request.headers !== undefined) {
      for (const name of Object.keys(request.headers)) {
        if (SENSITIVE_HEADERS.has(name.toLowerCase())) delete request.headers[name];
      }
    }
    if (request.url !== undefined) {
      const query = request.url.indexOf("?");
      if (query !== -1) request.url = request.url.slice(0, query);
      // A media stream token in the path (src/redact.ts).
      request.url = scrubPath(request.url);
    }
  }
  // Breadcrumbs of outbound fetches carry full URLs, whose query strings may hold tokens.
  for (const crumb of event.breadcrumbs ?? []) {
    const url = crumb.data?.url;
    if (typeof url === "string" && url.includes("?")) crumb.data = { ...crumb.data, url: url.slice(0, url.indexOf("?")) };
  }
  return event;
}

/**
 * `withSentry`'s options for this Worker's environment. Personal data stays off (the SDK's
 * default: no IP addresses, no cookies); `beforeSend` removes what requests carry anyway.
 */
export function sentryOptions(env: Env): CloudflareOptions {
  const rate = Number.parseFloat(env.SENTRY_TRACES_SAMPLE_RATE);
  return {
    dsn: env.SENTRY_DSN || undefined,
    environment: env.APP_ENV,
    tracesSampleRate: Number.isFinite(rate) ? rate : 0,
    beforeSend: scrubEvent,
  };
}
