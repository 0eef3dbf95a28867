// Owns the decision of who answers a request: the manifest entry's owner (origin, shadow,
// edge), with the origin as the answer for anything the manifest does not list, so no path the
// container serves 404s at the edge. The one exception is /internal/*, which is never public.

import { serveAtEdge } from "./edge";
import type { Env } from "./env";
import { checkRegistry, type HandlerRegistry } from "./handlers";
import { type CompiledRoute, matchRoute } from "./manifest";
import { problem } from "./problem";
import { proxyToOrigin } from "./proxy";
import { serveShadowed } from "./shadow";

export interface Shim {
  fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response>;
}

/** Builds the request handler for a manifest and a handler registry (checked together here). */
export function createShim(routes: readonly CompiledRoute[], handlers: HandlerRegistry): Shim {
  checkRegistry(routes, handlers);
  return {
    async fetch(request, env, ctx) {
      const url = new URL(request.url);
      // Every forwarded request is signed, so proxying /internal/* would let anyone on the
      // internet call the container's shim-only endpoints with the edge's authority.
      if (isInternal(url.pathname)) return problem(request, 404, "Not Found");

      const match = matchRoute(routes, request.method, url.pathname);
      if (match === null || match.route.owner === "origin") return proxyToOrigin(request, env);
      // checkRegistry guarantees a handler for every shadow/edge route.
      const handler = handlers[match.route.key]!;
      return match.route.owner === "shadow"
        ? serveShadowed(request, env, ctx, match, handler)
        : serveAtEdge(request, env, ctx, match, handler);
    },
  };
}

/** True for /internal and below, however the path is spelled (case, escapes, doubled slashes). */
export function isInternal(pathname: string): boolean {
  let decoded = pathname;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    // keep the raw form
  }
  const normalised = decoded.toLowerCase().replace(/\/{2,}/g, "/");
  return normalised === "/internal" || normalised.startsWith("/internal/");
}
