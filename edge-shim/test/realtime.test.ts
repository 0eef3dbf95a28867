// GET /api/realtime/transcribe at the edge (src/realtime.ts, src/batcher.ts): the batching and
// flush rules byte for byte, the handshake rules that need no database (query, deferrals,
// Origin/Referer, settings), and whole sessions against the fake AssemblyAI in
// test/fake-origin.js (host aai.test). The session lookup and the handshake outcomes against
// the real container are proved by the parity suite (parity/ws-cases.mjs).
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { ByteBatcher, bytesPerMs, silenceByte } from "../src/batcher";
import { HANDLERS } from "../src/handlers";
import { compileManifest } from "../src/manifest";
import {
  allowedControl,
  assemblyAiDisabled,
  assemblyAiSettings,
  beginMessage,
  crossSiteRefusal,
  errorMessage,
  isWebSocketHandshake,
  type Recheck,
  readQuery,
  recordSession,
  type SessionBill,
  recheckSeconds,
  rustDebugAscii,
  sessionUrl,
  streamFormat,
  TranscribeSession,
} from "../src/realtime";
import { createShim } from "../src/router";
import { Client } from "pg";
import { type Echo, logged, query } from "./helpers";

const bytes = (n: number, fill = 1) => new Uint8Array(n).fill(fill);

describe("ByteBatcher (the container's ByteBatcher, src/media/audio.rs)", () => {
  it("cuts 20 ms frames into exact 100 ms chunks, in order, holding the rest", () => {
    const b = ByteBatcher.for("pcm_s16le", 16000, 100); // 3200 bytes per chunk
    const out: Uint8Array[] = [];
    for (let i = 0; i < 12; i++) out.push(...b.push(bytes(640, i)));
    expect(out.map((c) => c.length)).toEqual([3200, 3200]);
    expect(Array.from(out[1]!.subarray(0, 640))).toEqual(Array.from(bytes(640, 5)));
    expect(b.pending).toBe(2 * 640);
  });

  it("µ-law 8 kHz: 800-byte chunks; one big message gives several chunks at once", () => {
    const b = ByteBatcher.for("pcm_mulaw", 8000, 100);
    expect(b.push(bytes(2500)).map((c) => c.length)).toEqual([800, 800, 800]);
    expect(b.pending).toBe(100);
  });

  it("flush pads the remainder with silence to 50 ms: 0x00 for s16le, 0xFF for µ-law", () => {
    const s16 = ByteBatcher.for("pcm_s16le", 16000, 100);
    s16.push(bytes(640, 7));
    const tail = s16.flush()!;
    expect(tail.length).toBe(1600);
    expect(Array.from(tail.subarray(0, 640))).toEqual(Array.from(bytes(640, 7)));
    expect(tail.subarray(640).every((b) => b === 0x00)).toBe(true);

    const mulaw = ByteBatcher.for("pcm_mulaw", 8000, 100);
    mulaw.push(bytes(160, 3));
    const t2 = mulaw.flush()!;
    expect(t2.length).toBe(400);
    expect(t2.subarray(160).every((b) => b === 0xff)).toBe(true);
    expect(silenceByte("pcm_mulaw")).toBe(0xff);
  });

  it("flush cuts to a whole sample first, and does not pad a remainder over 50 ms", () => {
    const b = ByteBatcher.for("pcm_s16le", 16000, 100);
    b.push(bytes(2001, 9)); // 62.5 ms and a half sample
    const tail = b.flush()!;
    expect(tail.length).toBe(2000);
    expect(tail.every((x) => x === 9)).toBe(true);

    const odd = ByteBatcher.for("pcm_s16le", 16000, 100);
    odd.push(bytes(1, 9)); // half a sample: cut to nothing, then all silence
    expect(Array.from(odd.flush()!)).toEqual(Array.from(new Uint8Array(1600)));
  });

  it("flush with nothing held is null, and empties the batcher", () => {
    const b = ByteBatcher.for("pcm_s16le", 16000, 100);
    expect(b.flush()).toBeNull();
    b.push(bytes(3200));
    expect(b.flush()).toBeNull();
    b.push(bytes(10));
    expect(b.flush()).not.toBeNull();
    expect(b.flush()).toBeNull();
  });

  it("MEDIA_BATCH_MS is clamped to 50–1000 and sizes follow the rate", () => {
    expect(ByteBatcher.for("pcm_s16le", 16000, 10).batchBytes).toBe(1600);
    expect(ByteBatcher.for("pcm_s16le", 16000, 5000).batchBytes).toBe(32000);
    expect(ByteBatcher.for("pcm_mulaw", 48000, 250).batchBytes).toBe(12000);
    expect(bytesPerMs("pcm_s16le", 44000)).toBe(88);
  });
});

describe("the handshake rules", () => {
  it("reads the query as serde_urlencoded does, deferring what needs decoding", () => {
    expect(readQuery("")).toEqual({});
    expect(readQuery("?encoding=pcm_mulaw&sample_rate=8000&x=%zz&x=1")).toEqual({ encoding: "pcm_mulaw", sampleRate: 8000 });
    expect(readQuery("?sample_rate=016000&&encoding")).toEqual({ sampleRate: 16000, encoding: "" });
    expect(readQuery("?call_id=abc")).toEqual({ callId: "abc" });
    // Naming the organisation billed is the container's (its 400/404 words).
    expect(readQuery("?org_id=6f1c1b1e-0000-4000-8000-000000000000")).toHaveProperty("defer");
    expect(readQuery("?encoding=pcm%5Fmulaw")).toHaveProperty("defer");
    expect(readQuery("?encoding=a+b")).toHaveProperty("defer");
    expect(readQuery("?enc%6Fding=x")).toHaveProperty("defer");
    expect(readQuery("?encoding=a&encoding=b")).toHaveProperty("defer");
    expect(readQuery("?sample_rate=")).toHaveProperty("defer");
    expect(readQuery("?sample_rate=-1")).toHaveProperty("defer");
    expect(readQuery("?sample_rate=4294967296")).toHaveProperty("defer");
    expect(readQuery("?sample_rate=4294967295")).toEqual({ sampleRate: 4294967295 });
  });

  it("validates the format with the container's 422 details", () => {
    expect(streamFormat({})).toEqual({ encoding: "pcm_s16le", sampleRate: 16000 });
    expect(streamFormat({ encoding: "pcm_mulaw", sampleRate: 8000 })).toEqual({ encoding: "pcm_mulaw", sampleRate: 8000 });
    expect(streamFormat({ encoding: "opus" })).toEqual({ unprocessable: 'unsupported encoding "opus"' });
    expect(streamFormat({ encoding: 'a"b\\' })).toEqual({ unprocessable: 'unsupported encoding "a\\"b\\\\"' });
    for (const sampleRate of [7000, 49000, 44100, 0]) {
      expect(streamFormat({ sampleRate })).toEqual({ unprocessable: "sample_rate must be a whole kHz between 8000 and 48000" });
    }
    expect(rustDebugAscii("é")).toBeNull();
  });

  it("checks Origin, else the Referer's origin, like src/auth/csrf.rs", () => {
    const allowed = ["http://localhost:3000"];
    const h = (init: Record<string, string>) => new Headers(init);
    expect(crossSiteRefusal(h({ origin: "http://localhost:3000" }), allowed)).toBeNull();
    expect(crossSiteRefusal(h({ referer: "http://localhost:3000/calls?x=1" }), allowed)).toBeNull();
    expect(crossSiteRefusal(h({ referer: "http://LOCALHOST:3000/x" }), allowed)).toBeNull();
    expect(crossSiteRefusal(h({}), allowed)).toBe("a cookie-authenticated request must send Origin or Referer");
    expect(crossSiteRefusal(h({ referer: "/relative" }), allowed)).toBe("a cookie-authenticated request must send Origin or Referer");
    expect(crossSiteRefusal(h({ origin: "https://evil.example", referer: "http://localhost:3000/" }), allowed)).toBe(
      "the request's origin is not allowed",
    );
  });

  it("recognises a WebSocket handshake as axum's WebSocketUpgrade does", () => {
    const ok = { upgrade: "WebSocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" };
    expect(isWebSocketHandshake(new Headers(ok))).toBe(true);
    expect(isWebSocketHandshake(new Headers({ ...ok, "sec-websocket-version": "8" }))).toBe(false);
    expect(isWebSocketHandshake(new Headers({ upgrade: "websocket" }))).toBe(false);
  });

  it("passes only Terminate and ForceEndpoint, read as serde_json reads them", () => {
    expect(allowedControl('{"type":"Terminate"}')).toBe(true);
    expect(allowedControl(' {"type" : "ForceEndpoint", "x": [1, 2.5e3]} ')).toBe(true);
    expect(allowedControl('{"type":"KeepAlive"}')).toBe(false);
    expect(allowedControl('{"type":"Terminate","x":"\\ud800"}')).toBe(false); // serde rejects a lone surrogate
    expect(allowedControl("Terminate")).toBe(false);
  });

  it("answers the container's 503 when ASSEMBLYAI_API_KEY is not set (bytes taken from the container)", async () => {
    const res = assemblyAiDisabled({ requestId: "r1", allowedOrigin: null });
    expect(res.status).toBe(503);
    expect(res.headers.get("content-type")).toBe("application/problem+json");
    expect(await res.text()).toBe(
      '{"type":"urn:callbridge:problem:provider-disabled","title":"Provider not configured","status":503,' +
        '"detail":"AssemblyAI is not configured: set ASSEMBLYAI_API_KEY","request_id":"r1","provider":"AssemblyAI",' +
        '"variables":["ASSEMBLYAI_API_KEY"]}',
    );
  });

  it("reads the AssemblyAI settings with the container's defaults and limits", () => {
    const base = { ...env, ASSEMBLYAI_STREAMING_URL: "", ASSEMBLYAI_SPEECH_MODEL: "", MEDIA_BATCH_MS: "" };
    const s = assemblyAiSettings(base);
    expect([s.streamingUrl.href, s.speechModel, s.batchMs]).toEqual([
      "wss://streaming.assemblyai.com/v3/ws",
      "universal-streaming-english",
      100,
    ]);
    expect(() => assemblyAiSettings({ ...base, MEDIA_BATCH_MS: "40" })).toThrow(/MEDIA_BATCH_MS/);
    expect(() => assemblyAiSettings({ ...base, MEDIA_BATCH_MS: "1e2" })).toThrow(/MEDIA_BATCH_MS/);
    expect(sessionUrl(s, "pcm_mulaw", 8000).href).toBe(
      "wss://streaming.assemblyai.com/v3/ws?speech_model=universal-streaming-english&encoding=pcm_mulaw&sample_rate=8000&format_turns=true",
    );
    expect(beginMessage("x")).toBe('{"id":"x","type":"Begin"}');
    expect(errorMessage("m")).toBe('{"error":"m","error_code":1011,"type":"Error"}');
  });
});

describe("the route through the shim (edge-owned)", () => {
  const EDGE = "https://api.callbridge.example";
  const shim = createShim(compileManifest({ routes: [{ method: "GET", path: "/api/realtime/transcribe", owner: "edge" }] }), {
    "GET /api/realtime/transcribe": HANDLERS["GET /api/realtime/transcribe"]!,
  });
  const handshake = { upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" };
  let log: MockInstance<typeof console.log>;
  let error: MockInstance<typeof console.error>;
  beforeEach(() => {
    log = vi.spyOn(console, "log").mockImplementation(() => {});
    error = vi.spyOn(console, "error").mockImplementation(() => {});
  });
  afterEach(() => vi.restoreAllMocks());

  async function send(path: string, headers: Record<string, string>, e = env) {
    const ctx = createExecutionContext();
    const res = await shim.fetch(new Request(`${EDGE}${path}`, { headers }), e, ctx);
    await waitOnExecutionContext(ctx);
    return res;
  }

  it.each([
    ["call_id: the container stores the turns", `?call_id=0190c0de-0000-7000-8000-000000000001`, handshake],
    ["a query the edge does not read exactly", "?sample_rate=abc", handshake],
    ["not a WebSocket handshake", "", {}],
  ])("defers %s to the container", async (_name, query, headers) => {
    const res = await send(`/api/realtime/transcribe${query}`, { ...headers, authorization: "Bearer t" });
    if (res.status === 101) res.webSocket?.accept();
    expect(logged(log, "edge_deferred")).toHaveLength(1);
    if (res.status !== 101) expect(((await res.json()) as Echo).url).toBe(`http://origin.test:8080/api/realtime/transcribe${query}`);
  });

  it("a misconfigured MEDIA_BATCH_MS falls back to the container", async () => {
    const res = await send("/api/realtime/transcribe", { ...handshake, authorization: "Bearer t" }, { ...env, MEDIA_BATCH_MS: "10" });
    expect(res.status).toBe(101);
    res.webSocket?.accept();
    expect(logged(error, "edge_fallback")).toHaveLength(1);
  });
});

/** Runs one session against the fake AssemblyAI: the test plays the browser. */
async function play(
  steps: (browser: WebSocket) => void,
  options: {
    host?: string;
    encoding?: "pcm_s16le" | "pcm_mulaw";
    sampleRate?: number;
    apiKey?: string;
    recheck?: Recheck;
  } = {},
) {
  const bills: SessionBill[] = [];
  const pair = new WebSocketPair();
  const browser = pair[0];
  const edgeSide = pair[1];
  edgeSide.accept();
  browser.accept();
  const received: string[] = [];
  const closed = new Promise<number>((resolve) => browser.addEventListener("close", (e) => resolve(e.code)));
  browser.addEventListener("message", (e) => received.push(String(e.data)));
  const session = new TranscribeSession(
    edgeSide,
    {
      apiKey: options.apiKey ?? "test-aai-key",
      streamingUrl: new URL(`wss://${options.host ?? "aai.test"}/v3/ws`),
      speechModel: "universal-streaming-english",
      batchMs: 100,
    },
    { encoding: options.encoding ?? "pcm_s16le", sampleRate: options.sampleRate ?? 16000 },
    options.recheck ?? null,
    async (bill) => bills.push(bill),
  );
  const before = (await (await fetch("http://origin.test:8080/__fake/aai-sessions")).json()) as unknown[];
  const running = session.run();
  steps(browser);
  await running;
  const code = await closed;
  const sessions = (await (await fetch("http://origin.test:8080/__fake/aai-sessions")).json()) as {
    id: string;
    url: string;
    authorization: string;
    chunks: number[];
    texts: string[];
    chunkBytes: number[][];
    billedSeconds: number | null;
  }[];
  return { received, code, aai: sessions.slice(before.length), bills };
}

describe("a session (browser ↔ edge ↔ fake AssemblyAI)", () => {
  it("Begin, exact chunks, verbatim relay, Terminate after the padded flush", async () => {
    const { received, aai } = await play((b) => {
      for (let i = 0; i < 7; i++) b.send(bytes(640, 0x11)); // 140 ms: one chunk and 40 ms held
      b.send('{"type":"KeepAlive"}');
      b.send('{"type":"ForceEndpoint"}');
      b.send('{"type": "Terminate"}');
      b.send(bytes(640)); // after Terminate: not read
    });
    expect(aai).toHaveLength(1);
    const s = aai[0]!;
    expect(s.authorization).toBe("test-aai-key");
    expect(s.url).toBe(
      "https://aai.test/v3/ws?speech_model=universal-streaming-english&encoding=pcm_s16le&sample_rate=16000&format_turns=true",
    );
    expect(s.chunks).toEqual([3200, 1600]);
    expect(s.chunkBytes[1]).toEqual([0, 0, 0, 0]); // silence padding
    expect(s.texts).toEqual(['{"type":"ForceEndpoint"}', '{"type": "Terminate"}']);
    expect(received).toEqual([
      '{"id":"sess-' + s.id.slice(5) + '","type":"Begin"}',
      '{"type":"Got","bytes":3200}',
      '{"type":"Got","bytes":1600}',
      `{"type":"Termination","audio_duration_seconds":0,"session_duration_seconds":${s.billedSeconds}}`,
    ]);
  });

  it("bills each session once, at the seconds AssemblyAI's Termination reported", async () => {
    const { aai, bills } = await play((b) => {
      b.send(bytes(640, 0x11));
      b.send('{"type":"Terminate"}');
    });
    expect(bills).toHaveLength(1);
    expect(bills[0]!.sessionId).toBe(aai[0]!.id);
    expect(bills[0]!.reportedSeconds).toBe(aai[0]!.billedSeconds);
    expect(bills[0]!.audioSeconds).toBe(0);
    expect(bills[0]!.measuredSeconds).toBeGreaterThanOrEqual(0);
    // A session that ended without Termination (signed out) is billed at the edge's measure.
    let checks = 0;
    const revoked = await play((b) => b.send(bytes(640, 0x11)), {
      recheck: { intervalMs: 20, stillSignedIn: async () => ++checks < 2 },
    });
    expect(revoked.bills).toHaveLength(1);
    expect(revoked.bills[0]!.reportedSeconds).toBeNull();
    expect(revoked.bills[0]!.measuredSeconds).toBeGreaterThan(0);
    // A refused session never began: nothing is billed.
    const refused = await play(() => {}, { host: "aai-refuse.test" });
    expect(refused.bills).toEqual([]);
  });

  it("writes the container's ledger row, once per session", async () => {
    const [org] = await query<{ id: string }>(
      "insert into organisations (id, name) values (gen_random_uuid(), 'Browser') returning id::text as id",
    );
    const bill: SessionBill = { sessionId: `sess-${crypto.randomUUID()}`, reportedSeconds: 7, audioSeconds: 6.5, measuredSeconds: 7.2 };
    const client = new Client({ connectionString: env.HYPERDRIVE.connectionString });
    client.on("error", () => {});
    await client.connect();
    try {
      await recordSession(client, org!.id, "user-1", "universal-streaming-english", bill);
      await recordSession(client, org!.id, "user-1", "universal-streaming-english", { ...bill, reportedSeconds: 9 });
    } finally {
      await client.end();
    }
    const rows = await query<{
      unit: string;
      quantity: number;
      call_id: string | null;
      user_id: string;
      metadata: Record<string, unknown>;
    }>("select unit, quantity::float8 as quantity, call_id, user_id, metadata from usage_ledger where source_key = $1", [
      `assemblyai:session:${bill.sessionId}`,
    ]);
    expect(rows).toEqual([
      {
        unit: "streaming_seconds",
        quantity: 7,
        call_id: null,
        user_id: "user-1",
        metadata: {
          audio_seconds: 6.5,
          measured_seconds: 7.2,
          model: "universal-streaming-english",
          reported_seconds: 7,
          session_id: bill.sessionId,
          track: "browser",
        },
      },
    ]);
  });

  it("a signed-out session closes the socket with 4401 and terminates AssemblyAI (issue 14 item 6)", async () => {
    let checks = 0;
    const { code, aai } = await play(
      (b) => {
        b.send(bytes(640, 0x11)); // the browser keeps streaming and never closes
      },
      {
        recheck: {
          intervalMs: 20,
          stillSignedIn: async () => {
            checks += 1;
            return checks < 3; // signed out before the third check
          },
        },
      },
    );
    expect(checks).toBe(3);
    expect(code).toBe(4401);
    expect(aai[0]!.texts).toContain('{"type":"Terminate"}');
    expect(recheckSeconds(undefined)).toBe(30);
    expect(recheckSeconds("5")).toBe(5);
    expect(recheckSeconds("0")).toBe(30);
  });

  it("the browser leaving flushes and sends Terminate", async () => {
    const { aai } = await play(
      (b) => {
        b.send(bytes(500, 0x22));
        b.close(1000, "bye");
      },
      { encoding: "pcm_mulaw", sampleRate: 8000 },
    );
    expect(aai[0]!.chunks).toEqual([500]);
    expect(aai[0]!.texts).toEqual(['{"type":"Terminate"}']);
  });

  it("an AssemblyAI that refuses: Error 1011 with the container's words, then close", async () => {
    const refused = await play(() => {}, { host: "aai-refuse.test" });
    expect(refused.received).toEqual([errorMessage("connecting to AssemblyAI streaming failed: HTTP error: 503 Service Unavailable")]);
    const badKey = await play(() => {}, { apiKey: "wrong" });
    expect(badKey.received).toEqual([errorMessage("connecting to AssemblyAI streaming failed: HTTP error: 401 Unauthorized")]);
    const early = await play(() => {}, { host: "aai-early-error.test" });
    expect(early.received).toEqual([errorMessage("AssemblyAI closed the session before Begin: 3006: speech_model is required")]);
  });
});
