// Owns the manifest (routes.json): validating it, compiling its route path templates, matching
// a request's method + path to the entry that decides who answers, and who runs each job kind
// and cron task (the container: `origin`; this Worker: `edge`). It knows nothing about
// proxying, edge handlers or consumers; a request, kind or task no entry names belongs to the
// origin.

import routesJson from "../routes.json";

/** Who answers a route: the container, the container while the edge shadows it, or the edge. */
export type Owner = "origin" | "shadow" | "edge";

/** One entry of routes.json. `path` uses the container's OpenAPI template syntax (`/api/calls/{id}`). */
export interface RouteEntry {
  method: string;
  path: string;
  owner: Owner;
}

/** A manifest entry ready for matching. `key` ("GET /api/calls/{id}") names the route everywhere. */
export interface CompiledRoute extends RouteEntry {
  key: string;
  segments: Segment[];
}

type Segment = { literal: string } | { param: string };

/** The result of matching a request: the route (if any) and its path parameters, decoded. */
export interface RouteMatch {
  route: CompiledRoute;
  params: Record<string, string>;
}

const OWNERS: readonly Owner[] = ["origin", "shadow", "edge"];
const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const PARAM = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/;
// Literal segments: RFC 3986 pchar without percent-escapes, braces or `*` (no wildcards: every
// entry names exactly the paths one OpenAPI template names).
const LITERAL = /^[A-Za-z0-9\-._~!$&'()+,;=:@]+$/;

/** The canonical name of a route: `METHOD /path/{template}`. */
export function routeKey(method: string, path: string): string {
  return `${method} ${path}`;
}

/**
 * Checks a parsed manifest and compiles it. Throws one error listing every problem:
 * unknown owner or method, malformed template, or two entries that match the same requests.
 */
export function compileManifest(manifest: unknown): CompiledRoute[] {
  const problems: string[] = [];
  const routes: CompiledRoute[] = [];
  const entries =
    typeof manifest === "object" && manifest !== null && Array.isArray((manifest as { routes?: unknown }).routes)
      ? (manifest as { routes: unknown[] }).routes
      : null;
  if (entries === null) {
    throw new Error('route manifest: expected {"routes": [...]}');
  }
  const shapes = new Map<string, string>();
  entries.forEach((raw, i) => {
    const at = `routes[${i}]`;
    if (typeof raw !== "object" || raw === null) {
      problems.push(`${at}: not an object`);
      return;
    }
    const { method, path, owner } = raw as Record<string, unknown>;
    if (typeof method !== "string" || !METHODS.includes(method)) {
      problems.push(`${at}: method must be one of ${METHODS.join(", ")}`);
      return;
    }
    if (typeof owner !== "string" || !(OWNERS as readonly string[]).includes(owner)) {
      problems.push(`${at}: owner must be one of ${OWNERS.join(", ")}`);
      return;
    }
    if (typeof path !== "string") {
      problems.push(`${at}: path must be a string`);
      return;
    }
    const segments = parseTemplate(path);
    if (typeof segments === "string") {
      problems.push(`${at} (${path}): ${segments}`);
      return;
    }
    const key = routeKey(method, path);
    // Two templates that differ only in parameter names match the same requests.
    const shape = routeKey(method, segments.map((s) => ("literal" in s ? s.literal : "{}")).join("/"));
    const clash = shapes.get(shape);
    if (clash !== undefined) {
      problems.push(`${at}: ${key} matches the same requests as ${clash}`);
      return;
    }
    shapes.set(shape, key);
    routes.push({ method, path, owner: owner as Owner, key, segments });
  });
  if (problems.length > 0) {
    throw new Error(`route manifest is invalid:\n  ${problems.join("\n  ")}`);
  }
  return routes;
}

function parseTemplate(path: string): Segment[] | string {
  if (!path.startsWith("/")) return "must start with /";
  if (path === "/") return [];
  if (path.endsWith("/")) return "must not end with /";
  const segments: Segment[] = [];
  const names = new Set<string>();
  for (const part of path.slice(1).split("/")) {
    const param = PARAM.exec(part);
    if (param) {
      const name = param[1]!;
      if (names.has(name)) return `parameter {${name}} appears twice`;
      names.add(name);
      segments.push({ param: name });
    } else if (LITERAL.test(part)) {
      segments.push({ literal: part });
    } else {
      return `segment "${part}" is neither a literal nor a {param}`;
    }
  }
  return segments;
}

/**
 * Finds the entry for `method` + `pathname` (the raw, still percent-encoded URL path).
 * A `{param}` matches exactly one non-empty segment. When several templates match, the one
 * with a literal at the first position where they differ wins (`/api/recordings/upload-url`
 * beats `/api/recordings/{id}`). Methods match exactly: HEAD does not borrow a GET entry, so an
 * unlisted HEAD simply goes to the origin. Returns null when nothing matches (→ origin).
 */
export function matchRoute(routes: readonly CompiledRoute[], method: string, pathname: string): RouteMatch | null {
  const parts = pathname === "/" ? [] : pathname.slice(1).split("/");
  let best: RouteMatch | null = null;
  for (const route of routes) {
    if (route.method !== method || route.segments.length !== parts.length) continue;
    const params = matchSegments(route.segments, parts);
    if (params === null) continue;
    if (best === null || moreSpecific(route, best.route)) best = { route, params };
  }
  return best;
}

function matchSegments(segments: readonly Segment[], parts: readonly string[]): Record<string, string> | null {
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    const part = parts[i]!;
    if ("literal" in segment) {
      if (segment.literal !== part) return null;
    } else {
      if (part === "") return null;
      try {
        params[segment.param] = decodeURIComponent(part);
      } catch {
        return null; // malformed escape: let the origin answer it
      }
    }
  }
  return params;
}

function moreSpecific(a: CompiledRoute, b: CompiledRoute): boolean {
  for (let i = 0; i < a.segments.length; i++) {
    const aLiteral = "literal" in a.segments[i]!;
    const bLiteral = "literal" in b.segments[i]!;
    if (aLiteral !== bLiteral) return aLiteral;
  }
  return false;
}

/** Who runs a job kind or cron task: the container's queue / cron, or this Worker. */
export type WorkOwner = "origin" | "edge";

/** The `jobs` and `cron` sections of routes.json: kind (or task) → owner. */
export interface WorkManifest {
  jobs: ReadonlyMap<string, WorkOwner>;
  cron: ReadonlyMap<string, WorkOwner>;
}

/**
 * Checks and reads the `jobs` ([{kind, owner}]) and `cron` ([{task, owner}]) sections; both
 * optional. Throws one error listing every problem: an owner other than origin/edge, a name
 * listed twice, a malformed entry.
 */
export function compileWork(manifest: unknown): WorkManifest {
  const problems: string[] = [];
  const read = (section: "jobs" | "cron", field: "kind" | "task"): Map<string, WorkOwner> => {
    const out = new Map<string, WorkOwner>();
    const raw = (manifest as Record<string, unknown> | null)?.[section];
    if (raw === undefined) return out;
    if (!Array.isArray(raw)) {
      problems.push(`${section}: expected an array`);
      return out;
    }
    raw.forEach((entry, i) => {
      const name = (entry as Record<string, unknown> | null)?.[field];
      const owner = (entry as Record<string, unknown> | null)?.owner;
      if (typeof name !== "string" || name === "") problems.push(`${section}[${i}]: ${field} must be a non-empty string`);
      else if (owner !== "origin" && owner !== "edge") problems.push(`${section}[${i}] (${name}): owner must be origin or edge`);
      else if (out.has(name)) problems.push(`${section}[${i}]: ${name} is listed twice`);
      else out.set(name, owner);
    });
    return out;
  };
  const work = { jobs: read("jobs", "kind"), cron: read("cron", "task") };
  if (problems.length > 0) throw new Error(`manifest is invalid:\n  ${problems.join("\n  ")}`);
  return work;
}

/** Who runs `name` (a job kind or cron task); unlisted work is the container's. */
export function ownerOf(section: ReadonlyMap<string, WorkOwner>, name: string): WorkOwner {
  return section.get(name) ?? "origin";
}

/** routes.json, validated and compiled once per isolate. An invalid manifest fails the deploy. */
export const ROUTES: readonly CompiledRoute[] = compileManifest(routesJson);

/** routes.json's job kinds and cron tasks, validated once per isolate. */
export const WORK: WorkManifest = compileWork(routesJson);

/**
 * Job kinds and cron tasks that cannot move to the edge, and why: the Worker refuses to start
 * when routes.json gives it one (src/strangler.rs STAYS_WITH_THE_CONTAINER says
 * the same; docs/adr/0027-what-stays-with-the-container.md).
 */
export const STAYS_WITH_THE_CONTAINER: Readonly<Record<string, string>> = {
  // Empty since uploads.sweep runs at the edge through the S3 API (ADR 0043); kept, so work
  // that cannot move is refused by both sides with its reason.
};
