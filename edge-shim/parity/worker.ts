// The Worker the parity suite runs (`wrangler dev -c parity/wrangler.parity.jsonc`): the
// production shim — same router, proxy and edge handlers (src/) — with every route that has
// an edge handler owned by PARITY_OWNER (default `edge`) instead of what routes.json says.
// It also marks each answer an edge handler produced with `x-parity-answered-by: edge`, so
// the suite can tell an edge answer from a deferral or fallback to the container (the header
// is not part of the comparison). Never deployed: production owners come from routes.json.

import type { Env } from "../src/env";
import { type HandlerRegistry, HANDLERS } from "../src/handlers";
import { compileManifest, type Owner } from "../src/manifest";
import { createShim, type Shim } from "../src/router";
import routesJson from "../routes.json";

const ANSWERED_BY = "x-parity-answered-by";

interface ParityEnv extends Env {
  /** Owner for every route with an edge handler: `edge` (default), `shadow` or `origin`. */
  PARITY_OWNER?: string;
}

const marked: HandlerRegistry = Object.fromEntries(
  Object.entries(HANDLERS).map(([key, handler]) => [
    key,
    {
      ...handler,
      async handle(request, ctx) {
        const response = await handler.handle(request, ctx);
        const headers = new Headers(response.headers);
        headers.set(ANSWERED_BY, "edge");
        // A 101 keeps its WebSocket (the edge's /api/realtime/transcribe).
        if (response.webSocket) return new Response(null, { status: 101, headers, webSocket: response.webSocket });
        return new Response(response.body, { status: response.status, headers });
      },
    },
  ]),
);

const shims = new Map<string, Shim>();

function shimFor(owner: string): Shim {
  let shim = shims.get(owner);
  if (shim === undefined) {
    if (!["edge", "shadow", "origin"].includes(owner)) throw new Error(`PARITY_OWNER ${owner} is not edge, shadow or origin`);
    const routes = compileManifest({
      routes: routesJson.routes.map((r) => (HANDLERS[`${r.method} ${r.path}`] !== undefined ? { ...r, owner: owner as Owner } : r)),
    });
    shim = createShim(routes, marked);
    shims.set(owner, shim);
  }
  return shim;
}

export default {
  fetch: (request, env, ctx) => shimFor(env.PARITY_OWNER || "edge").fetch(request, env, ctx),
} satisfies ExportedHandler<ParityEnv>;
