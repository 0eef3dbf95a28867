// Entry point of the edge shim: wires the route manifest (routes.json) and the edge handler
// registry into the fetch handler, plus the queue consumer and the cron handler. Logic lives
// in the modules it imports; this file only connects them.

import { runScheduled } from "./cron";
import type { Env } from "./env";
import { HANDLERS } from "./handlers";
import { ROUTES } from "./manifest";
import { consumeQueue } from "./queue";
import { createShim } from "./router";

export type { Env } from "./env";

const shim = createShim(ROUTES, HANDLERS);

export default {
  fetch: (request, env, ctx) => shim.fetch(request, env, ctx),
  queue: consumeQueue,
  scheduled: runScheduled,
} satisfies ExportedHandler<Env>;
