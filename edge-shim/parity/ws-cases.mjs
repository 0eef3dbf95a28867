// The parity suite's WebSocket cases: GET /api/realtime/transcribe, sent to the container
// directly and through the shim (edge-owned), against the same AssemblyAI simulator
// (parity/aai-sim.mjs). Each case says the handshake status the container must give and
// whether the edge answers or defers; for a session, the browser's side is scripted (audio,
// text, Terminate or leaving) and the suite compares every message the browser receives, the
// close code, and what AssemblyAI received (chunk sizes, Terminate, the session query).
//
// Audio is generated: `speech(ms)` a 440 Hz tone loud enough for the simulator's voice
// detector, `silence(ms)` zeros (µ-law 0xFF), cut into `frame`-byte messages as a browser's
// MediaRecorder/AudioWorklet would send them.

import { ORG, TOKEN } from "./fixtures.mjs";

const ALLOWED_ORIGIN = "http://localhost:3000";
const PATH = "/api/realtime/transcribe";
const ADA_CALL = "0190c0de-0000-7000-8000-000000000001"; // Ada's workspace
const TEAM_CALL = "0190c0de-0000-7000-8000-00000000b001"; // the team (Ada admin, Grace member)

/** G.711 µ-law from 16-bit linear (linear_to_mulaw in src/sim/assemblyai.rs). */
function linearToMulaw(sample) {
  const BIAS = 0x84;
  const CLIP = 32635;
  let value = sample;
  let sign = 0;
  if (value < 0) {
    value = -value;
    sign = 0x80;
  }
  value = Math.min(value, CLIP) + BIAS;
  const exponent = 7 - (Math.clz32(value >> 7) - 24);
  const mantissa = (value >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

/** `ms` of audio: a tone (`loud`) or silence, in the encoding at the rate. */
function audio(ms, { encoding, rate, loud }) {
  const samples = (rate / 1000) * ms;
  const mulaw = encoding === "pcm_mulaw";
  const out = Buffer.alloc(samples * (mulaw ? 1 : 2));
  for (let i = 0; i < samples; i++) {
    const v = loud ? Math.round(9000 * Math.sin((2 * Math.PI * 440 * i) / rate)) : 0;
    if (mulaw) out[i] = linearToMulaw(v);
    else out.writeInt16LE(v, i * 2);
  }
  return out;
}

/** Speech and silence in order (`[["speech", 1200], ["silence", 600], …]`), cut into frames. */
function frames(parts, { encoding = "pcm_s16le", rate = 16000, frame }) {
  const whole = Buffer.concat(parts.map(([kind, ms]) => audio(ms, { encoding, rate, loud: kind === "speech" })));
  const out = [];
  for (let at = 0; at < whole.length; at += frame) out.push({ binary: whole.subarray(at, at + frame) });
  return out;
}

const TALK = [
  ["speech", 1300],
  ["silence", 600],
  ["speech", 900],
  ["silence", 500],
  ["speech", 700],
];

const cookie = (token = TOKEN.ada) => ["cookie", `authjs.session-token=${token}`];
const bearer = (token = TOKEN.ada) => ["authorization", `Bearer ${token}`];
const origin = (value = ALLOWED_ORIGIN) => ["origin", value];

/**
 * A case: `query` (without `?`), `headers`, what the container answers (`status`) and what the
 * edge does (`edge`); for a 101, the browser's `script` and how it ends: `terminate` (send
 * Terminate, then wait for the server to close), `leave` (close after the script; only the
 * handshake and what AssemblyAI received are compared, since messages racing the close
 * handshake are not deterministic), `wait` (wait for the server to close). `fault` is queued
 * in the simulator first. `http: true` sends a plain GET instead of a handshake.
 */
function ws(name, { query = "", headers = [], status, edge = "answers", script = [], end = "terminate", fault, http = false }) {
  return {
    name: `realtime: ${name}`,
    path: query === "" ? PATH : `${PATH}?${query}`,
    headers,
    expect: { status, edge },
    script,
    end,
    fault,
    http,
  };
}

export const WS_CASES = [
  // ---- handshake outcomes --------------------------------------------------------------
  ws("no credential", { headers: [origin()], status: 401 }),
  ws("unknown session", { headers: [cookie("nobody-knows-this-token"), origin()], status: 401 }),
  ws("expired session", { headers: [bearer(TOKEN.expired)], status: 401 }),
  ws("malformed cookie (quoted)", { headers: [["cookie", `authjs.session-token="${TOKEN.ada}"`], origin()], status: 401 }),
  ws("cookie without Origin or Referer", { headers: [cookie()], status: 403 }),
  ws("cookie from a disallowed Origin", { headers: [cookie(), origin("https://evil.example")], status: 403 }),
  ws("cookie, Origin with a path is not an origin", { headers: [cookie(), origin(`${ALLOWED_ORIGIN}/`)], status: 403 }),
  ws("cookie, Origin: null", { headers: [cookie(), origin("null")], status: 403 }),
  ws("cookie, disallowed Origin wins over an allowed Referer", {
    headers: [cookie(), origin("https://evil.example"), ["referer", `${ALLOWED_ORIGIN}/calls`]],
    status: 403,
  }),
  ws("cookie, Referer from a disallowed site", { headers: [cookie(), ["referer", "https://evil.example/x"]], status: 403 }),
  ws("cookie, Referer that is not a URL", { headers: [cookie(), ["referer", "/calls?x=1"]], status: 403 }),
  ws("encoding not supported", { query: "encoding=opus", headers: [bearer()], status: 422 }),
  ws("encoding empty", { query: "encoding=", headers: [bearer()], status: 422 }),
  ws("encoding with a backslash (Rust's {:?} escapes it)", { query: "encoding=pcm\\mulaw", headers: [bearer()], status: 422 }),
  ws("sample_rate 44100 (not whole kHz)", { query: "sample_rate=44100", headers: [bearer()], status: 422 }),
  ws("sample_rate 7000 (too low)", { query: "sample_rate=7000", headers: [bearer()], status: 422 }),
  ws("sample_rate 49000 (too high)", { query: "sample_rate=49000", headers: [bearer()], status: 422 }),
  ws("422 after the origin check: cookie, bad Origin, bad encoding", {
    query: "encoding=opus",
    headers: [cookie(), origin("https://evil.example")],
    status: 403,
  }),
  ws("401 before 422: no credential, bad sample_rate", { query: "sample_rate=1", status: 401 }),
  ws("sample_rate not a number (serde's 400)", { query: "sample_rate=abc", headers: [bearer()], status: 400, edge: "defers" }),
  ws("encoding given twice (serde's 400)", {
    query: "encoding=pcm_mulaw&encoding=pcm_s16le",
    headers: [bearer()],
    status: 400,
    edge: "defers",
  }),
  ws("call_id of another organisation (404)", {
    query: `call_id=${ADA_CALL}`,
    headers: [bearer(TOKEN.grace)],
    status: 404,
    edge: "defers",
  }),
  ws("call_id not a UUID (400)", { query: "call_id=42", headers: [bearer()], status: 400, edge: "defers" }),
  ws("not a WebSocket handshake (plain GET)", { headers: [bearer()], status: 400, edge: "defers", http: true }),
  ws("not a WebSocket handshake, no credential (401 first)", { status: 401, edge: "defers", http: true }),

  // ---- sessions --------------------------------------------------------------------------
  ws("cookie + allowed Origin, s16le 16 kHz, 20 ms frames, Terminate", {
    headers: [cookie(), origin()],
    status: 101,
    script: frames(TALK, { frame: 640 }),
  }),
  ws("cookie + allowed Referer (no Origin), defaults", {
    headers: [cookie(TOKEN.grace), ["referer", `${ALLOWED_ORIGIN}/calls/1?tab=live`]],
    status: 101,
    script: frames(
      [
        ["speech", 800],
        ["silence", 500],
      ],
      { frame: 640 },
    ),
  }),
  ws("bearer ignores Origin: µ-law 8 kHz, 20 ms frames", {
    query: "encoding=pcm_mulaw&sample_rate=8000",
    headers: [bearer(), origin("https://evil.example")],
    status: 101,
    script: frames(TALK, { encoding: "pcm_mulaw", rate: 8000, frame: 160 }),
  }),
  ws("odd frame sizes: the remainder is cut to a whole sample and padded to 50 ms", {
    query: "sample_rate=16000&encoding=pcm_s16le",
    headers: [bearer()],
    status: 101,
    script: frames(
      [
        ["speech", 1000],
        ["silence", 123],
      ],
      { frame: 333 },
    ),
  }),
  ws("µ-law 48 kHz, one big message (several chunks at once)", {
    query: "encoding=pcm_mulaw&sample_rate=48000",
    headers: [bearer()],
    status: 101,
    script: frames(
      [
        ["speech", 1500],
        ["silence", 450],
      ],
      { encoding: "pcm_mulaw", rate: 48000, frame: 48 * 1950 },
    ),
  }),
  ws("ForceEndpoint ends the turn; other text is ignored; Terminate with extra members relayed as sent", {
    headers: [bearer()],
    status: 101,
    script: [
      ...frames([["speech", 700]], { frame: 640 }),
      { text: '{"type":"ForceEndpoint"}' },
      { text: '{"type":"UpdateConfiguration","max_turn_silence":900}' },
      { text: "not json" },
      { text: '{"type":"KeepAlive"}' },
      ...frames(
        [
          ["silence", 100],
          ["speech", 400],
        ],
        { frame: 640 },
      ),
      { text: '{"type": "Terminate", "reason": "done"}' },
    ],
    end: "wait",
  }),
  ws("Terminate with no audio held back (nothing to flush)", {
    headers: [bearer()],
    status: 101,
    script: frames(
      [
        ["speech", 500],
        ["silence", 500],
      ],
      { frame: 3200 },
    ),
  }),
  ws("Terminate before any audio", { headers: [bearer()], status: 101, script: [] }),
  ws("the browser leaves: remainder flushed, then Terminate", {
    headers: [bearer()],
    status: 101,
    script: frames(
      [
        ["speech", 900],
        ["silence", 130],
      ],
      { frame: 640 },
    ),
    end: "leave",
  }),
  ws("AssemblyAI errors after 3 chunks: Error relayed, then closed", {
    headers: [bearer()],
    status: 101,
    script: frames([["speech", 300]], { frame: 640 }),
    fault: { kind: "error_after", chunks: 3, code: 3005 },
    end: "wait",
  }),
  ws("AssemblyAI drops the connection after 2 chunks", {
    headers: [bearer()],
    status: 101,
    script: frames([["speech", 200]], { frame: 640 }),
    fault: { kind: "drop_after", chunks: 2 },
    end: "wait",
  }),
  ws("AssemblyAI refuses the handshake: Error 1011, then closed", {
    headers: [bearer()],
    status: 101,
    fault: { kind: "refuse" },
    end: "wait",
  }),
  ws("call_id of the caller's organisation: the container stores the turns", {
    query: `call_id=${TEAM_CALL}&encoding=pcm_s16le`,
    headers: [bearer(TOKEN.grace)],
    status: 101,
    edge: "defers",
    script: frames(TALK, { frame: 640 }),
  }),
];

export { ORG };
