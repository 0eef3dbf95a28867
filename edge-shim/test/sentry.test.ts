// The Worker's Sentry events are scrubbed by the container's rules (src/telemetry.rs).
import type { ErrorEvent } from "@sentry/cloudflare";
import { describe, expect, it } from "vitest";
import { scrubEvent, sentryOptions } from "../src/sentry";
import type { Env } from "../src/env";

describe("scrubEvent", () => {
  it("drops cookies, query strings, bodies and credential headers, keeps the rest", () => {
    const event = {
      type: undefined,
      request: {
        url: "https://api.example.com/media/telnyx/tok?token=secret",
        query_string: "token=secret",
        cookies: { "authjs.session-token": "s3cr3t" },
        data: '{"password":"x"}',
        headers: {
          Authorization: "Bearer abc",
          cookie: "authjs.session-token=s3cr3t",
          "telnyx-signature-ed25519": "sig",
          "x-edge-signature": "sig",
          "x-callbridge-webhook-secret": "hook",
          "user-agent": "Telnyx",
          "x-request-id": "r1",
        },
      },
      breadcrumbs: [{ category: "fetch", data: { url: "https://origin.example.com/api/calls?token=t", method: "GET" } }],
    } as unknown as ErrorEvent;
    const scrubbed = scrubEvent(event);
    // The media stream token in the path is a credential too (issue 14 item 9).
    expect(scrubbed.request?.url).toBe("https://api.example.com/media/telnyx/[redacted]");
    expect(scrubbed.request?.query_string).toBeUndefined();
    expect(scrubbed.request?.cookies).toBeUndefined();
    expect(scrubbed.request?.data).toBeUndefined();
    expect(scrubbed.request?.headers).toEqual({ "user-agent": "Telnyx", "x-request-id": "r1" });
    expect(scrubbed.breadcrumbs?.[0]?.data).toEqual({ url: "https://origin.example.com/api/calls", method: "GET" });
    expect(JSON.stringify(scrubbed)).not.toMatch(/s3cr3t|secret|Bearer|sig|hook/);
  });

  it("sends nothing without a DSN and tags the environment", () => {
    const env = { APP_ENV: "staging", SENTRY_TRACES_SAMPLE_RATE: "0.1", SENTRY_DSN: "" } as Env;
    const options = sentryOptions(env);
    expect(options.dsn).toBeUndefined();
    expect(options.environment).toBe("staging");
    expect(options.tracesSampleRate).toBe(0.1);
    expect(options.beforeSend).toBeDefined();
    expect(sentryOptions({ ...env, SENTRY_TRACES_SAMPLE_RATE: "x" }).tracesSampleRate).toBe(0);
  });
});
