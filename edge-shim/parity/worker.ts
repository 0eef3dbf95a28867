// The Worker the parity suite runs (`wrangler dev -c parity/wrangler.parity.jsonc`): the
// production shim — same router, proxy and edge handlers (src/) — with every route that has
// an edge handler owned by PARITY_OWNER (default `edge`) instead of what routes.json says.
// It also marks each answer an edge handler produced with `x-parity-answered-by: edge`, so
// the suite can tell an edge answer from a deferral or fallback to the container (the header
// is not part of the comparison). Its queue consumer and Cron Trigger are the production ones
// with job owners the suite sets (`POST /__parity/work?telnyx.event=edge|origin`, held by
// the isolate; parity/jobs-run.mjs). Never deployed: production owners come from routes.json.

import { CRON_TASKS, runCron } from "../src/cron";
import type { Env } from "../src/env";
import { type HandlerRegistry, HANDLERS } from "../src/handlers";
import { consumeJobs } from "../src/jobs";
import { compileManifest, compileWork, type Owner, type WorkManifest } from "../src/manifest";
import { JOB_HANDLERS } from "../src/queue";
import { createShim, type Shim } from "../src/router";
import routesJson from "../routes.json";

const ANSWERED_BY = "x-parity-answered-by";

interface ParityEnv extends Env {
  /** Owner for every route with an edge handler: `edge` (default), `shadow` or `origin`. */
  PARITY_OWNER?: string;
}

/** The last Cron Trigger's report (GET /__parity/cron): the cron phase compares what jobs.dead_report found. */
let lastCron: unknown = null;

/** Job and cron owners for this isolate; the suite sets them between its job passes. */
let work: WorkManifest = compileWork({ jobs: [{ kind: "telnyx.event", owner: "origin" }] });

const marked: HandlerRegistry = Object.fromEntries(
  Object.entries(HANDLERS).map(([key, handler]) => [
    key,
    {
      ...handler,
      async handle(request, ctx) {
        const response = await handler.handle(request, { ...ctx, work });
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

/**
 * `?telnyx.event=edge|origin` (also the owner of every cron task the edge can run), and
 * optionally the owner of each other kind with an edge handler (`&recording.import=edge`, …;
 * unnamed: origin).
 */
function setWork(url: URL): Response {
  const owner = url.searchParams.get("telnyx.event");
  if (owner !== "edge" && owner !== "origin") return new Response("telnyx.event=edge|origin", { status: 400 });
  const jobs = Object.keys(JOB_HANDLERS).map((kind) => {
    const o = kind === "telnyx.event" ? owner : (url.searchParams.get(kind) ?? "origin");
    return { kind, owner: o };
  });
  try {
    work = compileWork({
      jobs,
      cron: CRON_TASKS.map((task) => ({ task, owner })),
    });
  } catch (err) {
    return new Response(String(err), { status: 400 });
  }
  return new Response(null, { status: 204 });
}

const hex = (buffer: ArrayBuffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");

/** GET: the R2 objects under `prefix` with their size and SHA-256; DELETE: removes them. */
async function r2(url: URL, request: Request, env: ParityEnv): Promise<Response> {
  const prefix = url.searchParams.get("prefix") ?? "";
  const listed = await env.RECORDINGS.list({ prefix });
  if (request.method === "DELETE") {
    if (listed.objects.length > 0) await env.RECORDINGS.delete(listed.objects.map((o) => o.key));
    return new Response(null, { status: 204 });
  }
  const objects = [];
  for (const o of listed.objects) {
    const body = await env.RECORDINGS.get(o.key);
    objects.push({
      key: o.key,
      size: o.size,
      sha256: hex(await crypto.subtle.digest("SHA-256", await body!.arrayBuffer())),
      contentType: body!.httpMetadata?.contentType ?? null,
    });
  }
  return Response.json(objects);
}

export default {
  fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/__parity/work" && request.method === "POST") return setWork(url);
    if (url.pathname === "/__parity/r2") return r2(url, request, env);
    if (url.pathname === "/__parity/cron") return Response.json(lastCron);
    return shimFor(env.PARITY_OWNER || "edge").fetch(request, env, ctx);
  },
  queue: (batch, env) => consumeJobs(batch, env, work, JOB_HANDLERS),
  async scheduled(_controller, env, ctx) {
    const report = await runCron(env, work, (p) => ctx.waitUntil(p));
    lastCron = report;
    console.log(JSON.stringify({ event: "cron_tick", ...report }));
  },
} satisfies ExportedHandler<ParityEnv>;
