// Owns the errors the edge itself produces: RFC 9457 `application/problem+json`, the same
// contract as the container's (docs/API_ERRORS.md), so a client cannot tell which side failed
// by the shape of the body. Causes are logged by the caller, never put in the body.

import { chooseRequestId, type ProblemBody } from "./respond";

/**
 * Builds a problem response carrying the request id, chosen as the container chooses it
 * (an acceptable x-request-id, else cf-ray, else a new UUIDv7).
 */
export function problem(request: Request, status: number, title: string, detail?: string): Response {
  const requestId = chooseRequestId(request.headers);
  const body: ProblemBody = { type: "about:blank", title, status, ...(detail === undefined ? {} : { detail }), request_id: requestId };
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/problem+json", "x-request-id": requestId },
  });
}
