#!/usr/bin/env node
// An AssemblyAI Universal Streaming v3 simulator for the parity suite (Node 20 + `ws`), a port
// of the container's src/sim/assemblyai.rs with the same rules: the bare API key in
// `Authorization` (else HTTP 401), `speech_model` required (else Error 3006 and close 3006),
// `encoding` pcm_s16le | pcm_mulaw (else close 3006), binary chunks of 50–1000 ms (else
// Error 3007 "Input Duration Violation" and close 3007), `Begin`, then `Turn` messages whose
// words come from a fixed script (a turn ends after 400 ms of silence following speech, or
// 4 s of speech; with format_turns=true an end of turn is followed by its formatted copy),
// `ForceEndpoint` ending the current turn, and `Terminate` answered with the last turn,
// `Termination` and close 1000. Messages are serialised as serde_json writes the Rust
// simulator's `json!` values (keys sorted).
//
// Unlike the Rust simulator it is deterministic, so the container and the shim can be given
// the same audio and must produce the same messages: session ids count up from
// 00000000-0000-4000-8000-000000000001 (reset by POST /__reset), `expires_at` is fixed and
// `session_duration_seconds` is the audio's whole seconds rather than wall-clock time.
//
// Control endpoints (the parity runner's, never AssemblyAI's):
//   POST /__reset                    forget sessions and faults, restart session ids
//   POST /__fault  {"kind":...}      queue a fault for the next session: {"kind":"refuse"}
//                                    (HTTP 503), {"kind":"error_after","chunks":N,"code":C},
//                                    {"kind":"drop_after","chunks":N} (no close frame)
//   GET  /__sessions                 what each session received: query, chunk sizes, whether
//                                    the client sent Terminate, the close code
//
//   node parity/aai-sim.mjs --port 0 --key KEY     (prints `listening PORT` when ready)

import http from "node:http";
import { parseArgs } from "node:util";
import { WebSocketServer } from "ws";

const { values: args } = parseArgs({
  options: { port: { type: "string", default: "0" }, key: { type: "string" } },
});
if (!args.key) {
  console.error("usage: aai-sim.mjs --key API_KEY [--port PORT]");
  process.exit(2);
}

const SCRIPT = ["hello, this is a test call", "can you hear me clearly", "thank you, goodbye"];
const MAX_TURN_MS = 4000;
const EXPIRES_AT = 4102444800; // fixed: 2100-01-01

let counter = 0;
let faults = [];
let sessions = [];

/** serde_json's writing of a `json!` object: keys sorted (BTreeMap), recursively. */
function serde(value) {
  if (Array.isArray(value)) return `[${value.map(serde).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${serde(value[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

/** G.711 µ-law to 16-bit linear (mulaw_to_linear). */
function mulawToLinear(byte) {
  const b = ~byte & 0xff;
  const sign = b & 0x80;
  const exponent = (b >> 4) & 0x07;
  const mantissa = b & 0x0f;
  const magnitude = ((mantissa << 3) + 0x84) << exponent;
  const value = magnitude - 0x84;
  return sign !== 0 ? -value : value;
}

/** Mean absolute amplitude of a chunk, 0..1. */
function energy(chunk, mulaw) {
  if (mulaw) {
    let sum = 0;
    for (const b of chunk) sum += Math.abs(mulawToLinear(b));
    return sum / Math.max(chunk.length, 1) / 32768;
  }
  let sum = 0;
  let n = 0;
  for (let i = 0; i + 1 < chunk.length; i += 2) {
    sum += Math.abs(chunk.readInt16LE(i));
    n++;
  }
  return sum / Math.max(n, 1) / 32768;
}

function turnMessage(turn, line, shown, endOfTurn, formatted, audioMs) {
  const words = line.split(/\s+/).filter(Boolean).slice(0, shown);
  const span = Math.max(audioMs - turn.startMs, 1);
  const perWord = Math.floor(span / Math.max(words.length, 1));
  const items = words.map((w, i) => {
    const start = turn.startMs + perWord * i;
    return { text: w, start, end: start + perWord, confidence: 0.93, word_is_final: endOfTurn || i + 1 < words.length };
  });
  let transcript = words.join(" ");
  if (formatted && transcript !== "") {
    transcript = transcript[0].toUpperCase() + transcript.slice(1);
    if (!/[.?!]$/.test(transcript)) transcript += ".";
  } else if (formatted) {
    transcript = ".";
  }
  return serde({
    type: "Turn",
    turn_order: turn.order,
    turn_is_formatted: formatted,
    end_of_turn: endOfTurn,
    transcript,
    end_of_turn_confidence: endOfTurn ? 0.91 : 0.12,
    words: items,
  });
}

const newTurn = (order) => ({ order, speechMs: 0, silenceMs: 0, startMs: 0, wordsShown: 0 });

function session(socket, query, record, fault) {
  const param = (name) => query.get(name);
  const closeWith = (code, reason) => {
    record.closed_with = code;
    socket.close(code, reason);
  };
  if (param("speech_model") === null) {
    socket.send(serde({ type: "Error", error_code: 3006, error: "speech_model is required" }));
    closeWith(3006, "speech_model is required");
    return;
  }
  const encoding = param("encoding") ?? "pcm_s16le";
  if (encoding !== "pcm_mulaw" && encoding !== "pcm_s16le") {
    closeWith(3006, "unsupported encoding");
    return;
  }
  const mulaw = encoding === "pcm_mulaw";
  const parsedRate = Number(param("sample_rate"));
  const sampleRate = /^\d+$/.test(param("sample_rate") ?? "") && Number.isSafeInteger(parsedRate) ? parsedRate : 16000;
  const formatTurns = param("format_turns") === "true";
  const bytesPerMs = Math.floor(sampleRate / 1000) * (mulaw ? 1 : 2);
  socket.send(serde({ type: "Begin", id: record.id, expires_at: EXPIRES_AT }));

  let turn = newTurn(0);
  let audioMs = 0;
  let chunks = 0;
  let done = false;
  socket.on("message", (data, isBinary) => {
    if (done) return;
    if (isBinary) {
      const chunk = Buffer.isBuffer(data) ? data : Buffer.concat(data);
      chunks++;
      record.chunk_bytes.push(chunk.length);
      const duration = Math.floor(chunk.length / Math.max(bytesPerMs, 1));
      if (duration < 50 || duration > 1000) {
        socket.send(
          serde({ type: "Error", error_code: 3007, error: `Input Duration Violation: ${duration} ms; chunks must be 50-1000 ms` }),
        );
        closeWith(3007, "Input Duration Violation");
        done = true;
        return;
      }
      if (fault?.kind === "drop_after" && chunks >= fault.chunks) {
        record.closed_with = 1006;
        done = true;
        socket.terminate(); // no close frame
        return;
      }
      if (fault?.kind === "error_after" && chunks >= fault.chunks) {
        socket.send(serde({ type: "Error", error_code: fault.code, error: "simulated server error" }));
        closeWith(fault.code, "simulated server error");
        done = true;
        return;
      }
      const speaking = energy(chunk, mulaw) > 0.02;
      audioMs += duration;
      if (speaking) {
        if (turn.speechMs === 0) turn.startMs = audioMs - duration;
        turn.speechMs += duration;
        turn.silenceMs = 0;
      } else if (turn.speechMs > 0) {
        turn.silenceMs += duration;
      }
      if (turn.speechMs === 0) return;
      const line = SCRIPT[turn.order % SCRIPT.length];
      const totalWords = line.split(/\s+/).filter(Boolean).length;
      const ends = turn.silenceMs >= 400 || turn.speechMs >= MAX_TURN_MS;
      const shown = ends ? totalWords : Math.min(Math.floor(turn.speechMs / 300) + 1, totalWords);
      if (shown > turn.wordsShown || ends) {
        turn.wordsShown = shown;
        for (const formatted of ends && formatTurns ? [false, true] : [false]) {
          socket.send(turnMessage(turn, line, shown, ends, formatted, audioMs));
        }
      }
      if (ends) turn = newTurn(turn.order + 1);
      return;
    }
    let value = null;
    try {
      value = JSON.parse(data.toString("utf8"));
    } catch {
      value = null;
    }
    const type = value !== null && typeof value === "object" && !Array.isArray(value) ? value.type : undefined;
    if (type === "Terminate") {
      record.terminated_by_client = true;
      if (turn.speechMs > 0) {
        const line = SCRIPT[turn.order % SCRIPT.length];
        const words = line.split(/\s+/).filter(Boolean).length;
        for (const formatted of formatTurns ? [false, true] : [false]) {
          socket.send(turnMessage(turn, line, words, true, formatted, audioMs));
        }
      }
      const seconds = Math.floor(audioMs / 1000);
      socket.send(serde({ type: "Termination", audio_duration_seconds: seconds, session_duration_seconds: seconds }));
      closeWith(1000, "");
      done = true;
    } else if (type === "ForceEndpoint" && turn.speechMs > 0) {
      turn.silenceMs = 400;
    }
  });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://sim");
  const reply = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (req.method === "POST" && url.pathname === "/__reset") {
    counter = 0;
    faults = [];
    sessions = [];
    return reply(200, { ok: true });
  }
  if (req.method === "POST" && url.pathname === "/__fault") {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      faults.push(JSON.parse(body));
      reply(200, { queued: faults.length });
    });
    return;
  }
  if (req.method === "GET" && url.pathname === "/__sessions") return reply(200, sessions);
  reply(404, { error: "not found" });
});

const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://sim");
  const refuse = (status, text) => {
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    );
  };
  if (url.pathname !== "/v3/ws") return refuse(404, "not found");
  if (req.headers.authorization !== args.key) return refuse(401, "Invalid or missing credentials");
  if (faults[0]?.kind === "refuse") {
    faults.shift();
    return refuse(503, "simulated outage");
  }
  counter++;
  const record = {
    id: `00000000-0000-4000-8000-${String(counter).padStart(12, "0")}`,
    query: [...url.searchParams.entries()],
    chunk_bytes: [],
    terminated_by_client: false,
    closed_with: null,
  };
  sessions.push(record);
  const fault = faults.shift();
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on("close", (code) => {
      if (record.closed_with === null) record.closed_with = code;
    });
    session(ws, url.searchParams, record, fault);
  });
});

server.listen(Number(args.port), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
