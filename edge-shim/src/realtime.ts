// Owns GET /api/realtime/transcribe at the edge: the browser's transcription WebSocket,
// terminated in the Worker and relayed to AssemblyAI Universal Streaming v3, step for step as
// the container's src/http/realtime.rs `transcribe` and src/media/browser.rs `run`.
//
// The handshake, in the container's order: the session (credential.ts / sessions.ts: 401),
// for a cookie session the Origin or Referer (403 `Cross-site request refused: …`),
// ASSEMBLYAI_API_KEY (503 provider-disabled), `encoding` and `sample_rate` (422). Then 101,
// and the session: AssemblyAI opened with the bare key in `Authorization`; the browser gets
// `{"type":"Begin","id":…}` once AssemblyAI's Begin arrives (or `Error` 1011 and a close when
// AssemblyAI cannot be reached); binary audio is cut into MEDIA_BATCH_MS chunks (batcher.ts);
// AssemblyAI's text messages go to the browser verbatim; `Terminate` / `ForceEndpoint` from
// the browser go through (Terminate after the flushed remainder), other text is ignored; a
// browser that leaves gets its remainder flushed and the session terminated, so nothing is
// billed or lost.
//
// Deferred to the container (DeferToOrigin, before anything happens):
// - `call_id`: the container stores the final turns against the call; storing is its job;
// - a query string the edge does not read exactly as serde_urlencoded does (percent escapes,
//   `+`, repeated or unparsable parameters: the container's 400 quotes serde's message);
// - a request that is not a WebSocket handshake (the container's own rejection answers it);
// - a user with no membership yet (the container creates the personal organisation);
// - `X-Org-Id` or `org_id`: naming the organisation billed is the container's (400/404).
//
// Each session's seconds go to the usage ledger when it ends, as the container's
// `media::browser` writes them: the `session_duration_seconds` of AssemblyAI's `Termination`
// (what it bills), else the edge's own measure from `Begin`, under the same source key
// (`assemblyai:session:<id>`), billed to the caller's active organisation (docs/USAGE.md).
//
// While the socket lives, the session is re-checked every AUTH_STREAM_RECHECK_SECS (as the
// container's src/auth/recheck.rs): once it is signed out, deleted or expired the AssemblyAI
// session is terminated and the browser closed with 4401.

import { authenticate } from "./api";
import { withDb } from "./db";
import { ByteBatcher, DEFAULT_BATCH_MS, type Encoding, MAX_CHUNK_MS, MIN_CHUNK_MS } from "./batcher";
import { DeferToOrigin } from "./defer";
import type { Env } from "./env";
import type { EdgeHandler } from "./handlers";
import { answering, headerValue, originAllowed, problemAnswer, splitList, type Answering } from "./respond";
import { resolveSession } from "./sessions";

export const DEFAULT_STREAMING_URL = "wss://streaming.assemblyai.com/v3/ws";
export const DEFAULT_SPEECH_MODEL = "universal-streaming-english";
/** The container's handshake and Begin timeouts (providers/assemblyai.rs `connect`). */
export const CONNECT_TIMEOUT_MS = 10_000;
export const TERMINATE = '{"type":"Terminate"}';

/** The AssemblyAI settings of the edge, read like the container reads its variables. */
export interface AssemblyAiSettings {
  apiKey: string;
  streamingUrl: URL;
  speechModel: string;
  batchMs: number;
}

/**
 * ASSEMBLYAI_STREAMING_URL (default AssemblyAI's), ASSEMBLYAI_SPEECH_MODEL (default
 * `universal-streaming-english`), MEDIA_BATCH_MS (default 100, 50–1000). A value the container
 * would refuse to start with throws: the request then falls back to the container.
 */
export function assemblyAiSettings(env: Env): Omit<AssemblyAiSettings, "apiKey"> {
  const rawUrl = (env.ASSEMBLYAI_STREAMING_URL ?? "").trim() || DEFAULT_STREAMING_URL;
  const streamingUrl = new URL(rawUrl); // throws on a bad URL, as the container's config does
  if (!["ws:", "wss:", "http:", "https:"].includes(streamingUrl.protocol)) {
    throw new Error(`ASSEMBLYAI_STREAMING_URL must be ws(s):// or http(s)://, not ${streamingUrl.protocol}`);
  }
  const speechModel = (env.ASSEMBLYAI_SPEECH_MODEL ?? "").trim() || DEFAULT_SPEECH_MODEL;
  const rawBatch = (env.MEDIA_BATCH_MS ?? "").trim();
  const batchMs = rawBatch === "" ? DEFAULT_BATCH_MS : Number(rawBatch);
  if (!/^\d*$/.test(rawBatch) || !Number.isSafeInteger(batchMs) || batchMs < MIN_CHUNK_MS || batchMs > MAX_CHUNK_MS) {
    throw new Error("MEDIA_BATCH_MS must be between 50 and 1000 (AssemblyAI's chunk limits)");
  }
  return { streamingUrl, speechModel, batchMs };
}

// ---- the query string --------------------------------------------------------------------

/** The container's `AudioFormat` query, as read by the edge. */
export interface AudioQuery {
  encoding?: string;
  sampleRate?: number;
  callId?: string;
}

const U32_MAX = 4294967295;

/**
 * The query as serde_urlencoded reads it into `AudioFormat` (`&`-separated pairs, split at the
 * first `=`, unknown keys ignored), or the reason to defer: anything whose reading needs
 * decoding (`%`, `+`), a known key given twice, or a `sample_rate` that is not a u32.
 */
export function readQuery(search: string): AudioQuery | { defer: string } {
  const query = search.startsWith("?") ? search.slice(1) : search;
  const out: AudioQuery = {};
  const seen = new Set<string>();
  for (const pair of query.split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    const key = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? "" : pair.slice(eq + 1);
    if (/[%+]/.test(key)) return { defer: "a percent-encoded query parameter name" };
    if (key === "org_id") return { defer: "org_id: the container chooses the organisation billed" };
    if (key !== "encoding" && key !== "sample_rate" && key !== "call_id") continue;
    if (seen.has(key)) return { defer: `${key} given twice` };
    seen.add(key);
    if (/[%+]/.test(value)) return { defer: `a percent-encoded ${key}` };
    if (key === "encoding") out.encoding = value;
    else if (key === "call_id") out.callId = value;
    else {
      const digits = value.replace(/^0+(?=\d)/, "");
      if (!/^\d{1,10}$/.test(digits) || Number(digits) > U32_MAX) return { defer: "sample_rate is not a u32" };
      out.sampleRate = Number(digits);
    }
  }
  return out;
}

/** Rust's `{:?}` of a string of printable ASCII; null for anything else (the edge defers). */
export function rustDebugAscii(text: string): string | null {
  if (!/^[\x20-\x7e]*$/.test(text)) return null;
  return `"${text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** `params` in realtime.rs: the stream's encoding and rate, or the container's 422 detail. */
export function streamFormat(query: AudioQuery): { encoding: Encoding; sampleRate: number } | { unprocessable: string } {
  let encoding: Encoding;
  if (query.encoding === undefined || query.encoding === "pcm_s16le") encoding = "pcm_s16le";
  else if (query.encoding === "pcm_mulaw") encoding = "pcm_mulaw";
  else {
    const quoted = rustDebugAscii(query.encoding);
    if (quoted === null) throw new DeferToOrigin("an encoding that is not printable ASCII");
    return { unprocessable: `unsupported encoding ${quoted}` };
  }
  const sampleRate = query.sampleRate ?? 16_000;
  if (sampleRate < 8_000 || sampleRate > 48_000 || sampleRate % 1000 !== 0) {
    return { unprocessable: "sample_rate must be a whole kHz between 8000 and 48000" };
  }
  return { encoding, sampleRate };
}

// ---- the handshake -----------------------------------------------------------------------

/** The parts of a WebSocket handshake axum's `WebSocketUpgrade` checks (besides GET). */
export function isWebSocketHandshake(headers: Headers): boolean {
  const upgrade = headerValue(headers, "upgrade");
  const version = headerValue(headers, "sec-websocket-version");
  return (
    upgrade !== null && upgrade.toLowerCase() === "websocket" && version === "13" && headerValue(headers, "sec-websocket-key") !== null
  );
}

/**
 * src/auth/csrf.rs `check`: the `Origin` (else the `Referer`'s origin) must be allowed.
 * Returns null when it is, or the container's reason.
 */
export function crossSiteRefusal(headers: Headers, allowed: readonly string[]): string | null {
  let origin: string | null = null;
  const rawOrigin = headerValue(headers, "origin");
  if (rawOrigin !== null) {
    origin = /^[\t\x20-\x7e]*$/.test(rawOrigin) ? rawOrigin : null; // HeaderValue::to_str
  } else {
    const referer = headerValue(headers, "referer");
    if (referer !== null && /^[\t\x20-\x7e]*$/.test(referer)) {
      try {
        origin = new URL(referer).origin;
      } catch {
        origin = null;
      }
    }
  }
  if (origin === null) return "a cookie-authenticated request must send Origin or Referer";
  return originAllowed(origin, allowed) ? null : "the request's origin is not allowed";
}

/** `ApiError::ProviderDisabled` for AssemblyAI: 503 with `provider` and `variables`. */
export function assemblyAiDisabled(a: Answering): Response {
  return problemAnswer(a, {
    status: 503,
    type: "urn:callbridge:problem:provider-disabled",
    title: "Provider not configured",
    detail: "AssemblyAI is not configured: set ASSEMBLYAI_API_KEY",
    extensions: { provider: "AssemblyAI", variables: ["ASSEMBLYAI_API_KEY"] },
  });
}

/** GET /api/realtime/transcribe: the browser's transcription WebSocket. */
export const realtimeTranscribe: EdgeHandler = {
  async handle(request, ctx) {
    const { env } = ctx;
    const query = readQuery(new URL(request.url).search);
    if ("defer" in query) throw new DeferToOrigin(`query string: ${query.defer}`);
    if (query.callId !== undefined) throw new DeferToOrigin("call_id: the container stores the call's final turns");
    if (!isWebSocketHandshake(request.headers)) throw new DeferToOrigin("not a WebSocket handshake");
    if (request.headers.has("x-org-id")) throw new DeferToOrigin("X-Org-Id: the container chooses the organisation billed");
    const settings = assemblyAiSettings(env); // a misconfigured edge falls back to the container

    const a = answering(request, env);
    const auth = await authenticate(request, ctx, a);
    if (auth instanceof Response) return auth;
    // `default_organisation` in the container: the stored active one, else the personal one.
    const organisationId = auth.principal.activeOrganisationId ?? auth.principal.memberships[0]?.id ?? null;
    if (organisationId === null) throw new DeferToOrigin("no organisation to bill: the container answers");
    if (auth.source === "cookie") {
      const refused = crossSiteRefusal(request.headers, splitList(env.ALLOWED_ORIGINS));
      if (refused !== null) return problemAnswer(a, { status: 403, detail: `Cross-site request refused: ${refused}.` });
    }
    if (!env.ASSEMBLYAI_API_KEY) return assemblyAiDisabled(a);
    const format = streamFormat(query);
    if ("unprocessable" in format) return problemAnswer(a, { status: 422, detail: format.unprocessable });
    // A socket cannot be answered twice: shadowing never opens one (shadow.ts proxies
    // upgrades anyway; this is for any other dry-run caller).
    if (ctx.dryRun) throw new DeferToOrigin("dry run: a WebSocket session is not shadowed");

    const pair = new WebSocketPair();
    const [client, server] = [pair[0], pair[1]];
    server.accept();
    const recheck: Recheck = {
      intervalMs: recheckSeconds(env.AUTH_STREAM_RECHECK_SECS) * 1000,
      stillSignedIn: async () => (await withDb(env, ctx.waitUntil, (db) => resolveSession(db, env, auth.token))) !== null,
    };
    const meter: Meter = (bill) =>
      withDb(env, ctx.waitUntil, (db) => recordSession(db, organisationId, auth.principal.user.id, settings.speechModel, bill));
    const session = new TranscribeSession(server, { ...settings, apiKey: env.ASSEMBLYAI_API_KEY }, format, recheck, meter);
    ctx.waitUntil(session.run());
    return new Response(null, { status: 101, webSocket: client });
  },
};

// ---- the session -------------------------------------------------------------------------

/** The AssemblyAI session URL: the streaming URL plus the container's query, in its order. */
export function sessionUrl(settings: Omit<AssemblyAiSettings, "apiKey" | "batchMs">, encoding: Encoding, sampleRate: number): URL {
  const url = new URL(settings.streamingUrl.href);
  url.searchParams.append("speech_model", settings.speechModel);
  url.searchParams.append("encoding", encoding);
  url.searchParams.append("sample_rate", String(sampleRate));
  url.searchParams.append("format_turns", "true");
  return url;
}

/** http::StatusCode's Display for the statuses a WebSocket handshake is refused with. */
const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  426: "Upgrade Required",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/** How a live socket re-checks its session (src/auth/recheck.rs in the container). */
export interface Recheck {
  intervalMs: number;
  /** False once the session is signed out, deleted or expired; a throw skips one check. */
  stillSignedIn: () => Promise<boolean>;
}

/** AUTH_STREAM_RECHECK_SECS as the container bounds it (1–300, default 30). */
export function recheckSeconds(raw: string | undefined): number {
  const n = Number((raw ?? "").trim());
  return Number.isInteger(n) && n >= 1 && n <= 300 ? n : 30;
}

/** What one session is billed, when it ends (the container's `SessionMeter`). */
export interface SessionBill {
  sessionId: string;
  /** `Termination`'s `session_duration_seconds`, when AssemblyAI sent one. */
  reportedSeconds: number | null;
  audioSeconds: number | null;
  /** From `Begin` to the end, by the edge's clock. */
  measuredSeconds: number;
}

export type Meter = (bill: SessionBill) => Promise<unknown>;

/**
 * usage::record for a browser session billed to an organisation: one ledger row per session
 * (its source key), the container's columns and metadata keys.
 */
export async function recordSession(
  db: { query: (sql: string, params: unknown[]) => Promise<unknown> },
  organisationId: string,
  userId: string,
  model: string,
  bill: SessionBill,
): Promise<void> {
  await db.query(
    `insert into usage_ledger (organisation_id, call_id, leg_id, user_id, vendor, unit,
                               quantity, source_key, occurred_at, metadata)
     values ($1, null, null, $2, 'assemblyai', 'streaming_seconds', $3::float8::numeric, $4, now(), $5)
     on conflict (source_key) do nothing`,
    [
      organisationId,
      userId,
      bill.reportedSeconds ?? bill.measuredSeconds,
      `assemblyai:session:${bill.sessionId}`,
      JSON.stringify({
        audio_seconds: bill.audioSeconds,
        measured_seconds: bill.measuredSeconds,
        model,
        reported_seconds: bill.reportedSeconds,
        session_id: bill.sessionId,
        track: "browser",
      }),
    ],
  );
}

/** `Termination`'s billed figures, or null for any other message. */
export function terminationFigures(text: string): { session: number | null; audio: number | null } | null {
  if (!text.includes("Termination")) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const message = value as Record<string, unknown>;
  if (message.type !== "Termination") return null;
  const number = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  return { session: number(message.session_duration_seconds), audio: number(message.audio_duration_seconds) };
}

/** WebSocket close of a socket whose session ended (the container's 4401). */
export const SESSION_ENDED = { code: 4401, reason: "The session ended (signed out, deleted or expired)." };

type Event =
  | { from: "auth"; kind: "revoked" }
  | { from: "browser" | "aai"; kind: "text"; text: string }
  | { from: "browser" | "aai"; kind: "binary"; bytes: Uint8Array }
  | { from: "browser" | "aai"; kind: "close"; code?: number; reason?: string };

/** A binary message's bytes (workerd hands over an ArrayBuffer; a view is accepted too). */
function binaryBytes(data: unknown): Uint8Array {
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data as ArrayBuffer);
}

/** Both sockets' events in arrival order, read one at a time (the container's select loop). */
class Events {
  private queue: Event[] = [];
  private waiting: ((e: Event) => void) | null = null;

  /** Keeps each socket's events in order while a Blob is being read. */
  private arrival: Promise<void> = Promise.resolve();

  listen(socket: WebSocket, from: "browser" | "aai"): void {
    const later = (event: () => Event | Promise<Event>) => {
      // A message that cannot be read ends that side, as a read error ends it in the container.
      this.arrival = this.arrival.then(async () => this.push(await event())).catch(() => this.push({ from, kind: "close" }));
    };
    // Recent compatibility dates make binary messages Blobs (the web's default); ask for
    // ArrayBuffers, and still read a Blob should one come (the runtime may not honour it).
    try {
      socket.binaryType = "arraybuffer";
    } catch {
      // older runtimes: ArrayBuffers already
    }
    socket.addEventListener("message", (e) => {
      const data: unknown = e.data;
      if (typeof data === "string") later(() => ({ from, kind: "text", text: data }));
      else if (data instanceof Blob) later(async () => ({ from, kind: "binary", bytes: new Uint8Array(await data.arrayBuffer()) }));
      else later(() => ({ from, kind: "binary", bytes: binaryBytes(data) }));
    });
    socket.addEventListener("close", (e) => later(() => ({ from, kind: "close", code: e.code, reason: e.reason })));
    socket.addEventListener("error", () => later(() => ({ from, kind: "close" })));
  }

  /** The session behind the socket is gone. */
  revoke(): void {
    this.push({ from: "auth", kind: "revoked" });
  }

  private push(event: Event): void {
    const waiting = this.waiting;
    if (waiting !== null) {
      this.waiting = null;
      waiting(event);
    } else {
      this.queue.push(event);
    }
  }

  next(from?: "browser" | "aai"): Promise<Event> {
    const index = from === undefined ? 0 : this.queue.findIndex((e) => e.from === from);
    if (index >= 0 && index < this.queue.length) return Promise.resolve(this.queue.splice(index, 1)[0]!);
    if (from !== undefined) {
      // Only the connect phase asks for one side; the other side's events wait in the queue.
      return new Promise((resolve) => {
        const take = (e: Event) => {
          if (e.from === from) resolve(e);
          else {
            this.queue.push(e);
            this.waiting = take;
          }
        };
        this.waiting = take;
      });
    }
    return new Promise((resolve) => (this.waiting = resolve));
  }
}

/** `AssemblyAiError`'s Display, as the browser's `Error` message carries it. */
class AssemblyAiError extends Error {}
const connectFailed = (detail: string) => new AssemblyAiError(`connecting to AssemblyAI streaming failed: ${detail}`);
const noBegin = (detail: string) => new AssemblyAiError(`AssemblyAI closed the session before Begin: ${detail}`);

function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | null = null;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => {
    if (timer !== null) clearTimeout(timer);
  });
}

function trySend(socket: WebSocket, data: string | Uint8Array): boolean {
  try {
    socket.send(data);
    return true;
  } catch {
    return false;
  }
}

function tryClose(socket: WebSocket): void {
  try {
    socket.close();
  } catch {
    // already closed
  }
}

/**
 * `allowed_control`: a JSON text whose `type` is Terminate or ForceEndpoint, as serde_json reads
 * it. `JSON.parse` accepts three things serde_json refuses, refused here too: a number outside
 * f64 (`1e400`), a lone surrogate escape (`"\ud800"`), and nesting deeper than 127 containers
 * (serde's recursion limit).
 */
export function allowedControl(text: string): boolean {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return false;
  }
  if (!serdeWouldRead(value, 0)) return false;
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const type = (value as Record<string, unknown>).type;
  return type === "Terminate" || type === "ForceEndpoint";
}

function serdeWouldRead(value: unknown, depth: number): boolean {
  if (typeof value === "number") return Number.isFinite(value);
  if (typeof value === "string") return value.isWellFormed();
  if (typeof value !== "object" || value === null) return true;
  if (depth + 1 > 127) return false;
  const entries = Array.isArray(value) ? value.map((v) => ["", v] as const) : Object.entries(value);
  return entries.every(([key, item]) => key.isWellFormed() && serdeWouldRead(item, depth + 1));
}

/** The container's `json!` bodies as serde_json writes them (keys sorted: no preserve_order). */
export const beginMessage = (id: string) => JSON.stringify({ id, type: "Begin" });
export const errorMessage = (message: string) => JSON.stringify({ error: message, error_code: 1011, type: "Error" });

export class TranscribeSession {
  private readonly events = new Events();

  constructor(
    private readonly browser: WebSocket,
    private readonly settings: AssemblyAiSettings,
    private readonly format: { encoding: Encoding; sampleRate: number },
    private readonly recheck: Recheck | null = null,
    private readonly meter: Meter | null = null,
  ) {
    this.events.listen(browser, "browser");
  }

  /** Re-checks the session until `stopped` says so; a failed check is retried next time. */
  private watch(stopped: () => boolean): void {
    const recheck = this.recheck;
    if (recheck === null) return;
    const tick = async () => {
      if (stopped()) return;
      let signedIn = true;
      try {
        signedIn = await recheck.stillSignedIn();
      } catch {
        // a database hiccup: keep the socket, check again next interval
      }
      if (stopped()) return;
      if (!signedIn) this.events.revoke();
      else setTimeout(() => void tick(), recheck.intervalMs);
    };
    setTimeout(() => void tick(), recheck.intervalMs);
  }

  /** Opens AssemblyAI and waits for Begin (providers/assemblyai.rs `connect`). */
  private async connect(): Promise<{ aai: WebSocket; sessionId: string }> {
    const url = sessionUrl(this.settings, this.format.encoding, this.format.sampleRate);
    // fetch() speaks http(s): a ws(s) URL is the same endpoint.
    url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
    const response = await withTimeout(
      fetch(url, { headers: { Upgrade: "websocket", Authorization: this.settings.apiKey } }).catch((err: unknown) => {
        throw connectFailed(err instanceof Error ? err.message : String(err));
      }),
      CONNECT_TIMEOUT_MS,
      () => connectFailed("handshake timed out"),
    );
    const aai = response.webSocket;
    if (response.status !== 101 || aai === null) {
      void response.body?.cancel();
      throw connectFailed(`HTTP error: ${response.status} ${STATUS_TEXT[response.status] ?? response.statusText}`.trimEnd());
    }
    aai.accept();
    this.events.listen(aai, "aai");
    const sessionId = await withTimeout(
      (async () => {
        for (;;) {
          const event = await this.events.next("aai");
          if (event.kind === "close") {
            throw noBegin(
              event.code === undefined
                ? "connection closed"
                : event.code === 1005
                  ? "closed without a reason"
                  : `closed ${event.code}: ${event.reason ?? ""}`,
            );
          }
          if (event.kind !== "text") continue;
          let value: unknown;
          try {
            value = JSON.parse(event.text);
          } catch {
            continue;
          }
          if (typeof value !== "object" || value === null) continue;
          const message = value as Record<string, unknown>;
          if (message.type === "Begin") return typeof message.id === "string" ? message.id : "";
          if (message.type === "Error") {
            const code = typeof message.error_code === "number" && Number.isInteger(message.error_code) ? message.error_code : 0;
            const text = typeof message.error === "string" ? message.error : "";
            throw noBegin(`${code}: ${text}`);
          }
        }
      })(),
      CONNECT_TIMEOUT_MS,
      () => noBegin("no Begin within 10 s"),
    ).catch((err: unknown) => {
      tryClose(aai);
      throw err;
    });
    return { aai, sessionId };
  }

  async run(): Promise<void> {
    const { browser } = this;
    let connected: { aai: WebSocket; sessionId: string };
    try {
      connected = await this.connect();
    } catch (err) {
      const message = err instanceof AssemblyAiError ? err.message : connectFailed(String(err)).message;
      trySend(browser, errorMessage(message));
      tryClose(browser);
      return;
    }
    const { aai, sessionId } = connected;
    const bill: SessionBill = { sessionId, reportedSeconds: null, audioSeconds: null, measuredSeconds: 0 };
    const opened = Date.now();
    try {
      await this.relay(aai, sessionId, bill);
    } finally {
      // Whichever way the session ended, it is billed once.
      bill.measuredSeconds = (Date.now() - opened) / 1000;
      if (this.meter !== null) {
        try {
          await this.meter(bill);
        } catch (err) {
          console.error(JSON.stringify({ message: "usage ledger write failed", session_id: sessionId, error: String(err) }));
        }
      }
    }
  }

  private async relay(aai: WebSocket, sessionId: string, bill: SessionBill): Promise<void> {
    const { browser } = this;
    trySend(browser, beginMessage(sessionId));
    const batcher = ByteBatcher.for(this.format.encoding, this.format.sampleRate, this.settings.batchMs);
    let terminating = false;
    let finished = false;
    this.watch(() => finished);
    for (;;) {
      const event = await this.events.next();
      if (event.from === "auth") {
        // The session ended: stop transcribing (nothing more is billed), relay nothing more.
        finished = true;
        trySend(aai, TERMINATE);
        tryClose(aai);
        try {
          browser.close(SESSION_ENDED.code, SESSION_ENDED.reason);
        } catch {
          // already closed
        }
        return;
      }
      if (event.from === "browser") {
        if (terminating) continue; // the container stops reading the browser here
        if (event.kind === "binary") {
          for (const chunk of batcher.push(event.bytes)) {
            if (!trySend(aai, chunk)) {
              tryClose(browser);
              return;
            }
          }
        } else if (event.kind === "text") {
          if (!allowedControl(event.text)) continue;
          if (event.text.includes("Terminate")) {
            const tail = batcher.flush();
            if (tail !== null) trySend(aai, tail);
            terminating = true;
          }
          trySend(aai, event.text);
        } else {
          // The browser left: finish the session so nothing is billed or lost.
          const tail = batcher.flush();
          if (tail !== null) trySend(aai, tail);
          trySend(aai, TERMINATE);
          terminating = true;
        }
      } else if (event.kind === "text") {
        const figures = terminationFigures(event.text);
        if (figures !== null) {
          bill.reportedSeconds = figures.session;
          bill.audioSeconds = figures.audio;
        }
        if (!trySend(browser, event.text) && !terminating) {
          trySend(aai, TERMINATE);
          terminating = true;
        }
      } else if (event.kind === "close") {
        break;
      }
    }
    finished = true;
    tryClose(aai);
    tryClose(browser);
  }
}
