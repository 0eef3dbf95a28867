// What the tests share: the container started by scripts/test-against-container.sh (read from
// the environment), its OpenAPI document, and a `fetch` that checks every answer against it:
// the operation it belongs to, a documented status and content type, and a body valid against
// the documented schema (Ajv, JSON Schema 2020-12 as OpenAPI 3.1 uses).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

import { type ApiClientOptions, createApiClient } from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/test-against-container.sh`);
  return value;
}

export const config = {
  baseUrl: env("CALLBRIDGE_URL"),
  sessionToken: env("SESSION_TOKEN"),
  origin: env("ALLOWED_ORIGIN"),
  memberUserIds: env("MEMBER_USER_IDS").split(","),
  /** Bearer tokens and addresses of the same two users. */
  memberSessions: env("MEMBER_SESSIONS").split(","),
  memberEmails: env("MEMBER_EMAILS").split(","),
  /** An address invited and then revoked. */
  addableEmail: env("ADDABLE_EMAIL"),
  debugToken: env("DEBUG_TOKEN"),
  telnyxSimUrl: env("TELNYX_SIM_URL"),
  assemblyAiWebhookSecret: env("AAI_WEBHOOK_SECRET"),
  snapshot: env("SNAPSHOT"),
};

type Json = Record<string, unknown>;
const METHODS = ["get", "put", "post", "patch", "delete", "head", "options"] as const;

export interface DocumentedOperation {
  operationId: string;
  method: string;
  path: string;
  pattern: RegExp;
  responses: Record<string, { content?: Record<string, { schema?: unknown }> }>;
}

export const document = (await (await fetch(`${config.baseUrl}/api/openapi.json`)).json()) as Json;

export const operations: DocumentedOperation[] = Object.entries(document.paths as Record<string, Json>).flatMap(([path, item]) =>
  METHODS.filter((m) => item[m] !== undefined).map((method) => {
    const op = item[method] as Json;
    const pattern = new RegExp(`^${path.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+")}$`);
    return {
      operationId: op.operationId as string,
      method: method.toUpperCase(),
      path,
      pattern,
      responses: op.responses as DocumentedOperation["responses"],
    };
  }),
);

// Ajv reads the document itself as a schema resource, so `$ref`s into components resolve.
const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
const addFormats = addFormatsModule as unknown as (a: Ajv2020) => void;
addFormats(ajv);
ajv.addFormat("int32", { type: "number", validate: (n: number) => Number.isInteger(n) && Math.abs(n) <= 2 ** 31 });
ajv.addFormat("int64", { type: "number", validate: (n: number) => Number.isInteger(n) });
ajv.addFormat("uint32", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= 0 });
ajv.addFormat("uint64", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= 0 });
ajv.addFormat("float", { type: "number", validate: () => true });
ajv.addFormat("double", { type: "number", validate: () => true });
ajv.addFormat("binary", () => true);
const DOC_ID = "https://callbridge.invalid/openapi.json";
ajv.addSchema({ ...document, $id: DOC_ID });

const pointer = (...parts: string[]) => parts.map((p) => p.replace(/~/g, "~0").replace(/\//g, "~1")).join("/");

/** Operations answered, by operationId, and everything found wrong with an answer. */
export const covered = new Map<string, Set<number>>();
export const violations: string[] = [];

export function operationOf(method: string, url: string): DocumentedOperation | undefined {
  const path = new URL(url).pathname;
  return operations.find((op) => op.method === method && op.pattern.test(path));
}

/** Checks one answer against the document and records the operation as covered. */
export function checkAnswer(method: string, url: string, status: number, contentType: string | null, body: string | null) {
  const op = operationOf(method, url);
  const where = `${method} ${new URL(url).pathname}`;
  if (!op) {
    violations.push(`${where}: no operation of the document matches`);
    return;
  }
  const answered = covered.get(op.operationId) ?? new Set<number>();
  answered.add(status);
  covered.set(op.operationId, answered);
  const response = op.responses[String(status)];
  if (!response) {
    violations.push(`${op.operationId} (${where}) answered ${status}, which the document does not list`);
    return;
  }
  const documented = Object.keys(response.content ?? {});
  const essence = contentType?.split(";")[0]?.trim() ?? null;
  if (documented.length === 0 || essence === null) return;
  const match = documented.find((d) => d.split(";")[0]?.trim() === essence);
  if (!match) {
    violations.push(`${op.operationId} answered ${status} as ${essence}; documented: ${documented.join(", ")}`);
    return;
  }
  // A media type without a schema (the document itself, raw audio) admits any body.
  if (!essence.endsWith("json") || body === null || response.content?.[match]?.schema === undefined) return;
  const schemaRef = `${DOC_ID}#/${pointer("paths", op.path, op.method.toLowerCase(), "responses", String(status), "content", match, "schema")}`;
  const validate = ajv.getSchema(schemaRef);
  if (!validate) {
    violations.push(`${op.operationId} ${status}: no schema at ${schemaRef}`);
    return;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    violations.push(`${op.operationId} ${status}: the body is not JSON`);
    return;
  }
  if (!validate(parsed)) {
    violations.push(`${op.operationId} ${status}: ${ajv.errorsText(validate.errors)} in ${body.slice(0, 300)}`);
  }
}

/** A `fetch` that checks every answer (streams and audio by status and type only). */
export const checkingFetch: typeof fetch = async (input, init) => {
  const request = new Request(input, init);
  const response = await fetch(request);
  const contentType = response.headers.get("content-type");
  const streamed = contentType !== null && (contentType.startsWith("text/event-stream") || contentType.startsWith("audio/"));
  const body = streamed || response.status === 204 ? null : await response.clone().text();
  checkAnswer(request.method, request.url, response.status, contentType, body);
  return response;
};

/** The client options of the signed-in test user (a cookie session, as a browser has). */
export const cookieSession: ApiClientOptions = {
  baseUrl: config.baseUrl,
  cookie: `authjs.session-token=${config.sessionToken}`,
  origin: config.origin,
  fetch: checkingFetch,
};

/** The same user with the bearer token instead. */
export const bearerSession: ApiClientOptions = {
  baseUrl: config.baseUrl,
  bearer: config.sessionToken,
  fetch: checkingFetch,
};

export const api = createApiClient(cookieSession);
export const anonymous = createApiClient({ baseUrl: config.baseUrl, fetch: checkingFetch });

/** The served document is the committed one (less `servers`, which is this deployment's). */
export function assertServedIsSnapshot() {
  const snapshot = JSON.parse(readFileSync(config.snapshot, "utf8")) as Json;
  const { servers: _a, ...served } = document;
  const { servers: _b, ...saved } = snapshot;
  assert.deepEqual(served, saved, "the container serves the document the types were generated from");
}
