// Entry point of the edge shim: wires the route manifest (routes.json) and the edge handler
// registry into the fetch handler, plus the queue consumer and the cron handler. Logic lives
// in the modules it imports; this file only connects them.

import { withSentry } from "@sentry/cloudflare";
import { runScheduled } from "./cron";
import type { Env } from "./env";
import { HANDLERS } from "./handlers";
import { ROUTES } from "./manifest";
import { consumeQueue } from "./queue";
import { createShim } from "./router";
import { sentryOptions } from "./sentry";

export type { Env } from "./env";

const shim = createShim(ROUTES, HANDLERS);

// Uncaught errors of every handler go to Sentry (scrubbed; src/sentry.ts) when SENTRY_DSN is set.
export default withSentry(sentryOptions, {
  fetch: (request, env, ctx) => shim.fetch(request, env, ctx),
  queue: consumeQueue,
  scheduled: runScheduled,
} satisfies ExportedHandler<Env>);
