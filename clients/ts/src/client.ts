// The frontend's typed client for the callbridge API: openapi-fetch over the types generated
// from the service's OpenAPI document (src/generated/openapi.d.ts), with the session sent the
// way the service accepts it and every problem+json answer turned into a typed `ApiProblem`.
//
//   const api = createApiClient({ baseUrl: "https://api.example.com" }); // browser: the cookie
//   const calls = await ok(api.GET("/api/calls", { params: { query: { limit: 20 } } }));
//
// In the browser the Auth.js session cookie goes along (`credentials: "include"`); on a server
// (Next.js route handlers, tests) pass `bearer` (the session token) or `cookie`.

import createClient, { type Client, type Middleware } from "openapi-fetch";

import type { components, operations, paths } from "./generated/openapi.js";

export type { components, operations, paths };
/** A schema of the API (`components.schemas`), e.g. `Schema<"Call">`. */
export type Schema<Name extends keyof components["schemas"]> = components["schemas"][Name];
/** The RFC 9457 problem every error answer carries (docs/API_ERRORS.md). */
export type Problem = Schema<"Problem">;
export type ApiClient = Client<paths, `${string}/${string}`>;

export const PROBLEM_JSON = "application/problem+json";

/** An error answer of the API: its status, problem type and the `request_id` to quote. */
export class ApiProblem extends Error {
  readonly status: number;
  /** `about:blank`, or a `urn:callbridge:problem:*` type (docs/API_ERRORS.md). */
  readonly type: string;
  readonly title: string;
  readonly detail: string | undefined;
  /** Quote it when reporting a problem: it is in the service's logs and in Sentry. */
  readonly requestId: string;
  /** The whole problem, extension members included (`variables`, `checks`, …). */
  readonly problem: Problem;

  constructor(problem: Problem) {
    super(`${problem.status} ${problem.title}${problem.detail ? `: ${problem.detail}` : ""} (request ${problem.request_id})`);
    this.name = "ApiProblem";
    this.status = problem.status;
    this.type = problem.type;
    this.title = problem.title;
    this.detail = problem.detail ?? undefined;
    this.requestId = problem.request_id;
    this.problem = problem;
  }

  /** The service has no credentials for the provider this needs; `variables` names them. */
  get isProviderDisabled(): boolean {
    return this.type === "urn:callbridge:problem:provider-disabled";
  }

  /** No session, or an expired one: sign in again. */
  get isUnauthenticated(): boolean {
    return this.status === 401;
  }

  /**
   * The problem an answer carries. A non-problem error answer (a proxy's HTML page, say)
   * still becomes one, with the status and what little is known.
   */
  static async fromResponse(response: Response, parsed?: unknown): Promise<ApiProblem> {
    let body = parsed;
    if (body === undefined) {
      const text = await response.text().catch(() => "");
      try {
        body = JSON.parse(text);
      } catch {
        body = { detail: text.slice(0, 200) || undefined };
      }
    }
    const fields = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
    return new ApiProblem({
      ...fields,
      type: typeof fields.type === "string" ? fields.type : "about:blank",
      title: typeof fields.title === "string" ? fields.title : response.statusText || "Error",
      status: typeof fields.status === "number" ? fields.status : response.status,
      detail: typeof fields.detail === "string" ? fields.detail : null,
      request_id: typeof fields.request_id === "string" ? fields.request_id : (response.headers.get("x-request-id") ?? ""),
    });
  }
}

export interface ApiClientOptions {
  /** The API's origin, e.g. `https://api.example.com` (the document's `servers`). */
  baseUrl: string;
  /** The Auth.js session token, sent as `Authorization: Bearer` (wins over any cookie). */
  bearer?: string | (() => string | undefined);
  /**
   * A `Cookie` header to send (server-side only: browsers send their own cookies, see
   * `credentials`), e.g. `authjs.session-token=<token>`.
   */
  cookie?: string;
  /**
   * The `Origin` to present (server-side only). Cookie sessions on unsafe methods must come
   * from an origin in the service's ALLOWED_ORIGINS; browsers set it themselves.
   */
  origin?: string;
  /** The organisation to act in (`X-Org-Id`); the caller's default when absent. */
  organisationId?: string | (() => string | undefined);
  /** Browser default `include`, so the session cookie goes cross-origin to the API. */
  credentials?: RequestCredentials;
  fetch?: typeof globalThis.fetch;
}

const value = <T>(option: T | (() => T)): T => (typeof option === "function" ? (option as () => T)() : option);

/** The headers that carry the caller's identity and organisation, for any request. */
export function identityHeaders(options: ApiClientOptions): Headers {
  const headers = new Headers();
  const bearer = options.bearer === undefined ? undefined : value(options.bearer);
  if (bearer) headers.set("authorization", `Bearer ${bearer}`);
  if (options.cookie) headers.set("cookie", options.cookie);
  if (options.origin) headers.set("origin", options.origin);
  const organisation = options.organisationId === undefined ? undefined : value(options.organisationId);
  if (organisation) headers.set("x-org-id", organisation);
  return headers;
}

/** A typed client for every operation of the API (`api.GET("/api/calls", …)`). */
export function createApiClient(options: ApiClientOptions): ApiClient {
  const client = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    credentials: options.credentials ?? "include",
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const identity: Middleware = {
    onRequest({ request }) {
      identityHeaders(options).forEach((v, name) => {
        // A header the call sets itself (an explicit `X-Org-Id` parameter) wins.
        if (!request.headers.has(name)) request.headers.set(name, v);
      });
      return request;
    },
  };
  client.use(identity);
  return client;
}

type Result<Data> = { data?: Data; error?: unknown; response: Response };

/**
 * The data of a successful answer, or an `ApiProblem` thrown for an error answer:
 * `const call = await ok(api.GET("/api/calls/{id}", { params: { path: { id } } }))`.
 */
export async function ok<Data>(pending: Promise<Result<Data>>): Promise<Data> {
  const { data, error, response } = await pending;
  if (!response.ok) {
    throw await ApiProblem.fromResponse(response, error);
  }
  return data as Data;
}
