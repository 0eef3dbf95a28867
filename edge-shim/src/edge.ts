// Owns the `edge` owner: the edge handler answers, and if it throws the request goes to the
// origin instead (a returned error response is an answer and is not retried). A DeferToOrigin
// throw is the handler's planned hand-over (`edge_deferred`); any other is a failure
// (`edge_fallback`). Handlers of mutating routes must therefore throw before any side effect
// or be idempotent, because the origin will then do the work.

import { isDeferral } from "./defer";
import type { Env } from "./env";
import type { EdgeHandler } from "./handlers";
import type { RouteMatch } from "./manifest";
import { errorMessage, proxyToOrigin } from "./proxy";
import { scrubPath, scrubText } from "./redact";

export async function serveAtEdge(
  request: Request,
  env: Env,
  ctx: ExecutionContext,
  match: RouteMatch,
  handler: EdgeHandler,
): Promise<Response> {
  // The handler may consume the body; the fallback needs it intact.
  const spare = request.clone();
  try {
    const response = await handler.handle(request, {
      env,
      route: match.route,
      params: match.params,
      dryRun: false,
      waitUntil: (p) => ctx.waitUntil(p),
    });
    void spare.body?.cancel(); // not needed: stop buffering the copy
    return response;
  } catch (err) {
    if (isDeferral(err)) {
      // Planned: the handler chose to let the container answer (src/defer.ts).
      console.log(
        JSON.stringify({
          event: "edge_deferred",
          route: match.route.key,
          path: scrubPath(new URL(request.url).pathname),
          reason: err.reason,
        }),
      );
      return proxyToOrigin(spare, env);
    }
    console.error(
      JSON.stringify({
        event: "edge_fallback",
        route: match.route.key,
        path: scrubPath(new URL(request.url).pathname),
        error: scrubText(errorMessage(err)),
      }),
    );
    return proxyToOrigin(spare, env);
  }
}
