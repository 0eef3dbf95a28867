// Owns the shape of the Worker's environment: every binding declared in wrangler.jsonc,
// grouped by kind, each with what it is for. Nothing here reads the environment; handlers
// receive `env` as an argument.

/** Everything wrangler.jsonc (and `wrangler secret put`) gives the Worker. */
export interface Env {
  // ---- Plain variables ----

  /**
   * Base URL of the callbridge container that every non-edge route is proxied to
   * (e.g. `http://127.0.0.1:8080` locally). A path prefix, if any, is kept.
   */
  ORIGIN_URL: string;
  /**
   * Origins allowed to call the API from a browser (comma-separated), exactly the container's
   * `ALLOWED_ORIGINS`: edge-answered routes echo an allowed `Origin` as the container's CORS
   * layer does.
   */
  ALLOWED_ORIGINS: string;
  /**
   * How Auth.js session tokens are stored (`raw`, `hashed` = hex SHA-256, or `dual` = either);
   * must equal the container's `AUTH_TOKEN_STORAGE`.
   */
  AUTH_TOKEN_STORAGE: string;
  /** Schema of the Auth.js tables; the container's `AUTH_SCHEMA` (default `authjs`). */
  AUTH_SCHEMA: string;
  /** Largest webhook body the edge reads; the container's `HTTP_BODY_LIMIT_BYTES` (1 MiB). */
  HTTP_BODY_LIMIT_BYTES: string;
  /**
   * AssemblyAI Universal Streaming endpoint (`wss://streaming.assemblyai.com/v3/ws`); the
   * container's `ASSEMBLYAI_STREAMING_URL`. Used by the edge's `/api/realtime/transcribe`.
   */
  ASSEMBLYAI_STREAMING_URL: string;
  /** `speech_model` of every streaming session; the container's `ASSEMBLYAI_SPEECH_MODEL`. */
  ASSEMBLYAI_SPEECH_MODEL: string;
  /** Milliseconds of audio per chunk sent to AssemblyAI (50–1000); the container's `MEDIA_BATCH_MS`. */
  MEDIA_BATCH_MS: string;
  /**
   * Default days a recording (and the text derived from its call) is kept when its
   * organisation sets none; the container's `RECORDINGS_RETENTION_DAYS` (1–3650, default 90).
   * Read by the edge's `retention.purge` cron task.
   */
  RECORDINGS_RETENTION_DAYS: string;
  /**
   * Minutes after which a non-terminal call nobody updated is failed; the container's
   * `CRON_STALE_CALL_MINUTES` (1–10080, default 240). Read by the edge's `calls.stale_sweep`.
   */
  CRON_STALE_CALL_MINUTES: string;
  /**
   * Hosts (and their subdomains) Telnyx recordings are downloaded from, over https only,
   * comma-separated; the container's `RECORDINGS_IMPORT_HOSTS` (default `telnyx.com,s3.amazonaws.com`).
   * Read by the edge's `recording.import`; in `development` http on loopback is accepted too.
   */
  RECORDINGS_IMPORT_HOSTS: string;
  /** Largest recording in bytes; the container's `RECORDINGS_MAX_BYTES` (default 2 GiB, at most 5 GiB). */
  RECORDINGS_MAX_BYTES: string;
  /**
   * Multipart part size in bytes for a download without a Content-Length; the container's
   * `RECORDINGS_PART_SIZE_BYTES` (5 MiB – 512 MiB, default 8 MiB). The one buffer such an import holds.
   */
  RECORDINGS_PART_SIZE_BYTES: string;
  /**
   * Seconds the presigned GET given to AssemblyAI for a post-call transcript lasts; the
   * container's `RECORDINGS_TRANSCRIPTION_URL_SECS` (60 s – 7 days, default 86400).
   */
  RECORDINGS_TRANSCRIPTION_URL_SECS: string;
  /** AssemblyAI's REST base (`https://api.assemblyai.com`); the container's `ASSEMBLYAI_API_BASE`. */
  ASSEMBLYAI_API_BASE: string;
  /**
   * Base URL of the webhooks given to providers; the container's `WEBHOOK_BASE_URL` (default its
   * `PUBLIC_BASE_URL`). `recording.transcribe` at the edge asks AssemblyAI to call
   * `WEBHOOK_BASE_URL/webhooks/assemblyai`.
   */
  WEBHOOK_BASE_URL: string;
  /** The recordings bucket's name (the `RECORDINGS` binding's), the container's `R2_BUCKET`: presigned URLs name it. */
  R2_BUCKET: string;
  /**
   * Seconds of difference between what AssemblyAI reported for a streaming session and what the
   * bridge measured above which the edge's `usage.metering` records drift; the container's
   * `USAGE_RECONCILE_DRIFT_SECS` (default 5).
   */
  USAGE_RECONCILE_DRIFT_SECS: string;
  /**
   * Telnyx's REST base (`https://api.telnyx.com/v2`); the container's `TELNYX_API_BASE`. The
   * edge's Call Control commands (src/telnyx-commands.ts: `call.max_duration`) go here.
   */
  TELNYX_API_BASE: string;
  /**
   * `usage.quotas` at the edge (src/quotas.ts), the container's variables of the same names:
   * the price table (inline JSON; empty: the documented default table), the currency of
   * spend caps, and the default quotas (0: none; `continue` or `end` at 100 %).
   */
  USAGE_PRICES: string;
  USAGE_CURRENCY: string;
  USAGE_DEFAULT_MONTHLY_MINUTES: string;
  USAGE_DEFAULT_MONTHLY_SPEND: string;
  USAGE_DEFAULT_AT_LIMIT: string;
  /** `development`, `staging` or `production`: Sentry's environment tag (the container's `APP_ENV`). */
  APP_ENV: string;
  /** Share of requests Sentry traces (0–1; the container's `SENTRY_TRACES_SAMPLE_RATE`). */
  SENTRY_TRACES_SAMPLE_RATE: string;
  /**
   * Seconds between re-checks of the session behind a transcription WebSocket (1–300, default
   * 30); the container's `AUTH_STREAM_RECHECK_SECS`. A signed-out session closes it with 4401.
   */
  AUTH_STREAM_RECHECK_SECS: string;

  // ---- Secrets (wrangler secret put) ----

  /**
   * HMAC-SHA256 key signing every request forwarded to the container (`x-edge-signature`).
   * Same value as the container's `EDGE_SHARED_SECRET`. Without it the shim refuses to proxy.
   */
  EDGE_SHARED_SECRET: string;
  /**
   * Telnyx Ed25519 public key: base64 of the raw 32-byte key, the container's
   * `TELNYX_PUBLIC_KEY`. Verifies `POST /webhooks/telnyx` when the edge answers it; without it
   * the edge defers that route to the container.
   */
  TELNYX_PUBLIC_KEY: string;
  /**
   * The container's `ASSEMBLYAI_WEBHOOK_SECRET`: compared (constant time) with the
   * `x-callbridge-webhook-secret` header of `POST /webhooks/assemblyai` at the edge; without it
   * (or without `ASSEMBLYAI_API_KEY`) the edge defers that route to the container.
   */
  ASSEMBLYAI_WEBHOOK_SECRET: string;
  /**
   * AssemblyAI API key, the container's `ASSEMBLYAI_API_KEY`: sent bare in `Authorization`
   * when the edge opens a streaming session for `/api/realtime/transcribe`. Without it that
   * route answers the container's 503 (provider not configured).
   */
  ASSEMBLYAI_API_KEY: string;
  /**
   * Telnyx API key, the container's `TELNYX_API_KEY`: the bearer token of the edge's Call
   * Control commands (speak, hang up). Without it `call.max_duration` is handed back to the
   * container.
   */
  TELNYX_API_KEY: string;
  /** Sentry DSN for the Worker's errors (src/sentry.ts); unset: nothing is sent. */
  SENTRY_DSN: string;
  /**
   * The R2 S3 API endpoint (`https://<account>.r2.cloudflarestorage.com`), the container's
   * `R2_ENDPOINT`, and an S3 API token's key pair (the container's `R2_ACCESS_KEY_ID` /
   * `R2_SECRET_ACCESS_KEY`; read access is enough): the binding cannot presign, so the edge's
   * `recording.transcribe` signs AssemblyAI's GET itself (src/presign.ts). Without them that
   * job is handed back to the container.
   */
  R2_ENDPOINT: string;
  R2_ACCESS_KEY_ID: string;
  R2_SECRET_ACCESS_KEY: string;

  // ---- Hyperdrive ----

  /**
   * Pooled Postgres (Neon) for edge-owned routes: the `webhook_inbox` writer and the session
   * lookups. One `pg` client per request (src/db.ts); Hyperdrive pools upstream.
   */
  HYPERDRIVE: Hyperdrive;

  // ---- Queues ----

  /** Producer for `callbridge-webhooks`: carries the container's JSON job envelope. */
  WEBHOOKS: Queue;

  // ---- R2 ----

  /** The recordings bucket (the container's `R2_BUCKET`), for edge routes that read recordings. */
  RECORDINGS: R2Bucket;
}

// `wrangler types` sees secrets only when a .dev.vars file exists, so the generated
// Cloudflare.Env (what `env` from "cloudflare:workers" is typed as) is told about them here.
declare global {
  namespace Cloudflare {
    interface Env {
      EDGE_SHARED_SECRET: string;
      TELNYX_PUBLIC_KEY: string;
      ASSEMBLYAI_WEBHOOK_SECRET: string;
      ASSEMBLYAI_API_KEY: string;
      TELNYX_API_KEY: string;
      SENTRY_DSN: string;
      R2_ENDPOINT: string;
      R2_ACCESS_KEY_ID: string;
      R2_SECRET_ACCESS_KEY: string;
    }
  }
}

// Compile-time guard: this interface and the one `wrangler types` derives from wrangler.jsonc
// (worker-configuration.d.ts) must list the same bindings with the same types. Regenerate with
// `npm run types` after editing wrangler.jsonc; `npm run typecheck` then catches any drift.
type SameShape<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;
const bindingsMatchWranglerConfig: SameShape<Env, Cloudflare.Env> = true;
void bindingsMatchWranglerConfig;
