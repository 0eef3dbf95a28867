// @ts-check
// The fake container the tests proxy to. It runs as its own Worker inside the test's workerd
// (vitest.config.ts makes it the test Worker's outboundService), so every fetch() the shim
// makes lands here and nothing leaves the machine. By default it echoes what it received, so
// tests can see exactly what the container would see. Plain JS: workerd loads it as is.

/** Requests seen per `x-test-id`, so a test can prove the origin was (not) called. */
const seen = new Map();

/**
 * A minimal AssemblyAI streaming endpoint on host `aai.test` (`aai-early-error.test`: an
 * Error before Begin): checks the bare key, answers Begin with a numbered session id, says
 * `{"type":"Got","bytes":N}` for each audio chunk, and answers Terminate with Termination and
 * close 1000. Sessions are listed at origin.test/__fake/aai-sessions.
 * @type {{id: string, url: string, authorization: string | null, chunks: number[], texts: string[], chunkBytes: number[][]}[]}
 */
const aaiSessions = [];

/** @param {Request} request @param {URL} url */
function fakeAssemblyAi(request, url) {
  if (request.headers.get("authorization") !== "test-aai-key") return new Response("Invalid or missing credentials", { status: 401 });
  const pair = new WebSocketPair();
  const client = pair[0];
  const server = pair[1];
  server.accept();
  server.binaryType = "arraybuffer";
  const record = {
    id: `sess-${aaiSessions.length + 1}`,
    url: url.href,
    authorization: request.headers.get("authorization"),
    chunks: /** @type {number[]} */ ([]),
    texts: /** @type {string[]} */ ([]),
    chunkBytes: /** @type {number[][]} */ ([]),
    opened: Date.now(),
    /** @type {number | null} */
    billedSeconds: null,
  };
  aaiSessions.push(record);
  if (url.hostname === "aai-early-error.test") {
    server.send(JSON.stringify({ error: "speech_model is required", error_code: 3006, type: "Error" }));
    server.close(3006, "speech_model is required");
  } else {
    server.send(JSON.stringify({ expires_at: 1, id: record.id, type: "Begin" }));
  }
  server.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      record.texts.push(event.data);
      if (JSON.parse(event.data).type === "Terminate") {
        // What AssemblyAI bills: whole seconds since the session opened (at least 1 here, so a
        // test can tell the reported figure from the edge's own measure).
        const seconds = Math.max(1, Math.round((Date.now() - record.opened) / 1000));
        record.billedSeconds = seconds;
        server.send(JSON.stringify({ type: "Termination", audio_duration_seconds: 0, session_duration_seconds: seconds }));
        server.close(1000, "");
      }
    } else {
      const bytes = new Uint8Array(/** @type {ArrayBuffer} */ (event.data));
      record.chunks.push(bytes.length);
      record.chunkBytes.push(Array.from(bytes.slice(-4)));
      server.send(JSON.stringify({ type: "Got", bytes: bytes.length }));
    }
  });
  return new Response(null, { status: 101, webSocket: client });
}

/**
 * Telnyx recording downloads on host `recordings.telnyx.com` (and `*.s3.amazonaws.com`), as
 * the container's src/sim/recordings.rs serves them: S3-style presigned links (`X-Amz-Date`,
 * `X-Amz-Expires`, `X-Amz-Signature` = hex HMAC-SHA256 of `name\ndate\nexpires`) that answer 403
 * `AccessDenied` "Request has expired" after their expiry and 403 `SignatureDoesNotMatch` when
 * tampered with, 404 `NoSuchKey` for an unknown file, else the file with `Content-Type` and
 * `Content-Length`, in 64 KiB chunks generated as they are sent (a large file is never held).
 * Files are registered with POST /__fake/recordings (`{name, bytes}`: a PCM WAV of that
 * length); faults, consumed one per download: `{status}` (S3's XML error), `{truncate}`
 * (the connection drops after that many bytes), `{stall}` (that many bytes, then nothing for
 * 30 s), `{delayMs}` (a pause before every chunk), `{chunked: true}` (no Content-Length),
 * `{redirect}` (302 to that location). Downloads are listed at /__fake/recordings/requests.
 * @type {Map<string, number>}
 */
const recordingFiles = new Map();
/** @type {Record<string, unknown>[]} */
const recordingFaults = [];
/** @type {{name: string, status: number}[]} */
const recordingRequests = [];
const RECORDING_KEY = "fake-telnyx-recordings";

/** @param {string} name @param {string} date @param {string} expires */
async function recordingSignature(name, date, expires) {
  const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(RECORDING_KEY), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${name}\n${date}\n${expires}`));
  return [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Byte `i` of the fake WAV of `length` bytes: a 44-byte PCM header, then a deterministic
 * pattern (the tests regenerate it to check what was stored).
 * @param {number} length
 */
function wavHeader(length) {
  const h = new DataView(new ArrayBuffer(44));
  const text = (/** @type {number} */ at, /** @type {string} */ s) => {
    for (let i = 0; i < s.length; i++) h.setUint8(at + i, s.charCodeAt(i));
  };
  text(0, "RIFF");
  h.setUint32(4, length - 8, true);
  text(8, "WAVE");
  text(12, "fmt ");
  h.setUint32(16, 16, true);
  h.setUint16(20, 1, true);
  h.setUint16(22, 2, true);
  h.setUint32(24, 8000, true);
  h.setUint32(28, 32000, true);
  h.setUint16(32, 4, true);
  h.setUint16(34, 16, true);
  text(36, "data");
  h.setUint32(40, length - 44, true);
  return new Uint8Array(h.buffer);
}

/** Bytes [start, end) of the fake WAV of `length` bytes. @param {number} length @param {number} start @param {number} end */
export function wavSlice(length, start, end) {
  const out = new Uint8Array(end - start);
  const header = wavHeader(length);
  for (let i = start; i < end; i++) out[i - start] = i < 44 ? /** @type {number} */ (header[i]) : (i * 31 + 7) & 0xff;
  return out;
}

/** @param {number} status @param {string} code @param {string} message */
function s3Error(status, code, message) {
  return new Response(`<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`, {
    status,
    headers: { "content-type": "application/xml" },
  });
}

/** @param {URL} url */
async function fakeRecording(url) {
  const name = url.pathname.slice(1);
  const date = url.searchParams.get("X-Amz-Date");
  const expires = url.searchParams.get("X-Amz-Expires");
  const signature = url.searchParams.get("X-Amz-Signature");
  const answer = (/** @type {Response} */ response) => {
    recordingRequests.push({ name, status: response.status });
    return response;
  };
  if (date === null || expires === null || signature === null) {
    return answer(s3Error(403, "AccessDenied", "Query-string authentication requires the X-Amz parameters"));
  }
  if (signature !== (await recordingSignature(name, date, expires))) {
    return answer(s3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."));
  }
  if (Date.now() > Date.parse(date) + Number(expires) * 1000) return answer(s3Error(403, "AccessDenied", "Request has expired"));
  const length = recordingFiles.get(name);
  if (length === undefined) return answer(s3Error(404, "NoSuchKey", "The specified key does not exist."));
  const fault =
    /** @type {{status?: number, truncate?: number, stall?: number, delayMs?: number, chunked?: boolean, redirect?: string}} */ (
      recordingFaults.shift() ?? {}
    );
  if (fault.status !== undefined) return answer(s3Error(fault.status, "InternalError", "Simulated failure"));
  if (fault.redirect !== undefined) return answer(new Response(null, { status: 302, headers: { location: fault.redirect } }));
  const CHUNK = 64 * 1024;
  let sent = 0;
  const body = new ReadableStream(
    {
      async pull(controller) {
        if (fault.truncate !== undefined && sent >= fault.truncate) {
          controller.error(new Error("simulated connection drop"));
          return;
        }
        if (fault.stall !== undefined && sent >= fault.stall) {
          await new Promise((resolve) => setTimeout(resolve, 30_000));
        }
        if (fault.delayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
        if (sent >= length) {
          controller.close();
          return;
        }
        let end = Math.min(sent + CHUNK, length);
        if (fault.truncate !== undefined) end = Math.min(end, Math.max(fault.truncate, sent + 1));
        if (fault.stall !== undefined && sent < fault.stall) end = Math.min(end, fault.stall);
        controller.enqueue(wavSlice(length, sent, end));
        sent = end;
      },
    },
    { highWaterMark: 0 },
  );
  /** @type {Record<string, string>} */
  const headers = { "content-type": name.endsWith(".mp3") ? "audio/mpeg" : "audio/wav" };
  if (!fault.chunked) headers["content-length"] = String(length);
  return answer(new Response(body, { status: 200, headers }));
}

/**
 * AssemblyAI's async API on host `api.assemblyai.test`, the rules of the container's
 * src/sim/assemblyai_async.rs that the edge can meet: the bare key in `Authorization` (401
 * otherwise), `POST /v2/transcript` needs `audio_url` (400 otherwise) and answers `queued`
 * with a new id, `GET /v2/transcript/{id}` answers the transcript (400 "transcript id not
 * found" for an unknown one). Tests finish a transcript with POST /__fake/aai/finish
 * (`{id, ...fields}`), queue answers with POST /__fake/aai/faults (`[{status}]`), and read
 * every request made at /__fake/aai/requests.
 * @type {Map<string, Record<string, unknown>>}
 */
const aaiTranscripts = new Map();
/** @type {{method: string, path: string, authorization: string | null, body: unknown}[]} */
const aaiRequests = [];
/** @type {{status: number}[]} */
const aaiFaults = [];

/** @param {Request} request @param {URL} url */
async function fakeAssemblyAiAsync(request, url) {
  const body = request.method === "POST" ? await request.text() : "";
  aaiRequests.push({
    method: request.method,
    path: url.pathname,
    authorization: request.headers.get("authorization"),
    body: body === "" ? null : JSON.parse(body),
  });
  if (request.headers.get("authorization") !== "test-aai-key") {
    return Response.json({ error: "Authentication error, API token missing/invalid" }, { status: 401 });
  }
  const fault = aaiFaults.shift();
  if (fault !== undefined) return Response.json({ error: "simulated failure" }, { status: fault.status });
  if (request.method === "POST" && url.pathname === "/v2/transcript") {
    const input = /** @type {Record<string, unknown>} */ (JSON.parse(body));
    if (typeof input.audio_url !== "string") return Response.json({ error: "audio_url is required" }, { status: 400 });
    const id = `aai-${crypto.randomUUID()}`;
    const transcript = {
      id,
      status: "queued",
      audio_url: input.audio_url,
      text: null,
      words: null,
      utterances: null,
      language_code: null,
      audio_duration: null,
      error: null,
    };
    aaiTranscripts.set(id, transcript);
    return Response.json(transcript);
  }
  const m = /^\/v2\/transcript\/([^/]+)$/.exec(url.pathname);
  if (request.method === "GET" && m) {
    const transcript = aaiTranscripts.get(decodeURIComponent(/** @type {string} */ (m[1])));
    if (transcript === undefined) return Response.json({ error: "Transcript lookup error: transcript id not found" }, { status: 400 });
    return Response.json(transcript);
  }
  return Response.json({ error: "Not found" }, { status: 404 });
}

/**
 * Telnyx Call Control commands on host `api.telnyx.test` (base `https://api.telnyx.test/v2`),
 * the rules of the container's src/sim/telnyx.rs the edge can meet: `Bearer test-telnyx-key`
 * (401 otherwise), `POST /v2/calls/{id}/actions/{action}` answers 200 with the command's
 * result, 422 with code 90018 for a call listed as ended (POST /__fake/telnyx/ended
 * `[ccid]`). Tests queue answers with POST /__fake/telnyx/faults (`[{status}]`) and read every
 * request made at /__fake/telnyx/requests.
 * @type {{method: string, path: string, authorization: string | null, body: unknown}[]}
 */
const telnyxRequests = [];
/** @type {{status: number}[]} */
const telnyxFaults = [];
/** @type {Set<string>} */
const telnyxEnded = new Set();

/** @param {Request} request @param {URL} url */
async function fakeTelnyx(request, url) {
  const body = await request.text();
  telnyxRequests.push({
    method: request.method,
    path: url.pathname,
    authorization: request.headers.get("authorization"),
    body: body === "" ? null : JSON.parse(body),
  });
  if (request.headers.get("authorization") !== "Bearer test-telnyx-key") {
    return Response.json({ errors: [{ code: "10009", title: "Authentication failed" }] }, { status: 401 });
  }
  const fault = telnyxFaults.shift();
  if (fault !== undefined) return Response.json({ errors: [{ code: "10007", title: "simulated failure" }] }, { status: fault.status });
  const m = /^\/v2\/calls\/([^/]+)\/actions\/([a-z_]+)$/.exec(url.pathname);
  if (request.method !== "POST" || !m) return Response.json({ errors: [{ code: "10005", title: "Resource not found" }] }, { status: 404 });
  if (telnyxEnded.has(decodeURIComponent(/** @type {string} */ (m[1])))) {
    return Response.json({ errors: [{ code: "90018", title: "Call has already ended" }] }, { status: 422 });
  }
  return Response.json({ data: { result: "ok" } });
}

/**
 * The recordings bucket's S3 API on host `s3.test` (path style, bucket `recordings`), what
 * uploads.sweep uses: ListObjectsV2 (two keys a page, so listings paginate), DeleteObject and
 * AbortMultipartUpload (NoSuchUpload for an unknown upload; an upload id starting with `fail-`
 * answers 500). Requests must carry a SigV4 `Authorization` for key `test-s3-key`.
 * POST /__fake/s3/state `{objects: [{key, ageDays}], uploads: [{id, key}]}` resets it; GET
 * /__fake/s3/state reads the objects, the uploads and every request made since.
 */
const s3 = {
  /** @type {Map<string, number>} key → last modified (ms) */
  objects: new Map(),
  /** @type {Map<string, string>} upload id → key */
  uploads: new Map(),
  /** @type {string[]} */
  requests: [],
};

/** @param {string} text */
const xml = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** @param {Request} request @param {URL} url */
function fakeS3(request, url) {
  s3.requests.push(`${request.method} ${url.pathname}${url.search}`);
  const auth = request.headers.get("authorization") ?? "";
  if (!auth.startsWith("AWS4-HMAC-SHA256 Credential=test-s3-key/") || !request.headers.get("x-amz-date")) {
    return new Response("<Error><Code>AccessDenied</Code></Error>", { status: 403 });
  }
  const [, bucket, ...rest] = url.pathname.split("/");
  if (bucket !== "recordings") return new Response("<Error><Code>NoSuchBucket</Code></Error>", { status: 404 });
  const key = decodeURIComponent(rest.join("/"));
  if (request.method === "GET" && key === "" && url.searchParams.get("list-type") === "2") {
    const prefix = url.searchParams.get("prefix") ?? "";
    const after = url.searchParams.has("continuation-token") ? atob(url.searchParams.get("continuation-token") ?? "") : "";
    const keys = [...s3.objects.keys()].filter((k) => k.startsWith(prefix) && k > after).sort();
    const page = keys.slice(0, 2);
    const truncated = keys.length > page.length;
    const contents = page
      .map((k) => `<Contents><Key>${xml(k)}</Key><LastModified>${new Date(s3.objects.get(k) ?? 0).toISOString()}</LastModified></Contents>`)
      .join("");
    const next = truncated ? `<NextContinuationToken>${btoa(page[page.length - 1] ?? "")}</NextContinuationToken>` : "";
    return new Response(
      `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>recordings</Name><Prefix>${xml(prefix)}</Prefix><KeyCount>${page.length}</KeyCount><IsTruncated>${truncated}</IsTruncated>${contents}${next}</ListBucketResult>`,
      { headers: { "content-type": "application/xml" } },
    );
  }
  if (request.method === "DELETE" && key !== "" && url.searchParams.has("uploadId")) {
    const id = url.searchParams.get("uploadId") ?? "";
    if (id.startsWith("fail-")) return new Response("<Error><Code>InternalError</Code></Error>", { status: 500 });
    if (s3.uploads.get(id) !== key) return new Response("<Error><Code>NoSuchUpload</Code></Error>", { status: 404 });
    s3.uploads.delete(id);
    return new Response(null, { status: 204 });
  }
  if (request.method === "DELETE" && key !== "") {
    s3.objects.delete(key);
    return new Response(null, { status: 204 });
  }
  return new Response("<Error><Code>NotImplemented</Code></Error>", { status: 501 });
}

export default {
  /** @param {Request} request */
  async fetch(request) {
    const url = new URL(request.url);
    const testId = request.headers.get("x-test-id");
    if (url.pathname === "/__fake/seen") {
      return Response.json({ count: seen.get(url.searchParams.get("id")) ?? 0 });
    }
    if (testId) seen.set(testId, (seen.get(testId) ?? 0) + 1);

    if (url.hostname === "unreachable.test") throw new Error("connection refused (simulated)");
    if (url.pathname === "/__fake/recordings" && request.method === "POST") {
      const { name, bytes, faults, ttl } = /** @type {{name: string, bytes: number, faults?: Record<string, unknown>[], ttl?: number}} */ (
        await request.json()
      );
      recordingFiles.set(name, bytes);
      recordingFaults.splice(0, recordingFaults.length, ...(faults ?? []));
      const date = new Date().toISOString();
      const expires = String(ttl ?? 600);
      const signature = await recordingSignature(name, date, expires);
      const query = new URLSearchParams({
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Date": date,
        "X-Amz-Expires": expires,
        "X-Amz-Signature": signature,
      });
      return Response.json({ url: `https://recordings.telnyx.com/${name}?${query}` });
    }
    if (url.pathname === "/__fake/aai/finish" && request.method === "POST") {
      const fields = /** @type {Record<string, unknown> & {id: string}} */ (await request.json());
      aaiTranscripts.set(fields.id, { ...(aaiTranscripts.get(fields.id) ?? {}), ...fields });
      return Response.json({ ok: true });
    }
    if (url.pathname === "/__fake/aai/faults" && request.method === "POST") {
      aaiFaults.splice(0, aaiFaults.length, .../** @type {{status: number}[]} */ (await request.json()));
      return Response.json({ ok: true });
    }
    if (url.pathname === "/__fake/aai/requests") return Response.json(aaiRequests.splice(0));
    if (url.hostname === "api.assemblyai.test") return fakeAssemblyAiAsync(request, url);
    if (url.pathname === "/__fake/telnyx/faults" && request.method === "POST") {
      telnyxFaults.splice(0, telnyxFaults.length, .../** @type {{status: number}[]} */ (await request.json()));
      return Response.json({ ok: true });
    }
    if (url.pathname === "/__fake/telnyx/ended" && request.method === "POST") {
      for (const ccid of /** @type {string[]} */ (await request.json())) telnyxEnded.add(ccid);
      return Response.json({ ok: true });
    }
    if (url.pathname === "/__fake/telnyx/requests") return Response.json(telnyxRequests.splice(0));
    if (url.hostname === "api.telnyx.test") return fakeTelnyx(request, url);
    if (url.pathname === "/__fake/s3/state" && request.method === "POST") {
      const state = /** @type {{objects: {key: string, ageDays: number}[], uploads: {id: string, key: string}[]}} */ (await request.json());
      s3.objects = new Map(state.objects.map((o) => [o.key, Date.now() - o.ageDays * 86_400_000]));
      s3.uploads = new Map(state.uploads.map((u) => [u.id, u.key]));
      s3.requests = [];
      return Response.json({ ok: true });
    }
    if (url.pathname === "/__fake/s3/state") {
      return Response.json({
        objects: [...s3.objects.keys()].sort(),
        uploads: [...s3.uploads.keys()].sort(),
        requests: s3.requests.splice(0),
      });
    }
    if (url.hostname === "s3.test") return fakeS3(request, url);

    if (url.pathname === "/__fake/recordings/requests") return Response.json(recordingRequests.splice(0));
    if (url.hostname === "recordings.telnyx.com" || url.hostname.endsWith(".s3.amazonaws.com")) return fakeRecording(url);
    if (url.pathname === "/__fake/aai-sessions") return Response.json(aaiSessions);
    if (url.hostname === "aai-refuse.test") return new Response("simulated outage", { status: 503 });
    if (url.hostname === "aai.test" || url.hostname === "aai-early-error.test") return fakeAssemblyAi(request, url);

    if (request.headers.get("upgrade")?.toLowerCase() === "websocket") {
      const pair = new WebSocketPair();
      const client = pair[0];
      const server = pair[1];
      server.accept();
      server.addEventListener("message", (event) => server.send(`echo:${event.data}`));
      server.addEventListener("close", () => server.close(1000, "bye"));
      return new Response(null, { status: 101, webSocket: client });
    }

    let m;
    if ((m = /^\/api\/recordings\/([^/]+)\/download$/.exec(url.pathname))) {
      return new Response(null, {
        status: 302,
        headers: { location: `https://recordings.example/${m[1]}?X-Amz-Signature=abc`, "set-cookie": "seen=1; Path=/" },
      });
    }
    if (request.method === "GET" && (m = /^\/api\/calls\/([^/]+)$/.exec(url.pathname))) {
      return Response.json(
        { id: m[1], status: "ended", created_at: new Date().toISOString(), request_id: crypto.randomUUID() },
        { headers: { "content-type": "application/json; charset=utf-8" } },
      );
    }
    if (request.method === "POST" && (m = /^\/api\/calls\/([^/]+)\/hangup$/.exec(url.pathname))) {
      const body = await request.text();
      return Response.json({ id: m[1], hung_up: true, received: body, request_id: crypto.randomUUID() }, { status: 202 });
    }

    const bytes = new Uint8Array(await request.arrayBuffer());
    return Response.json(
      {
        method: request.method,
        url: request.url,
        headers: Object.fromEntries(request.headers),
        body: new TextDecoder().decode(bytes),
        bodyBase64: base64(bytes),
      },
      { headers: { "x-fake-origin": "1" } },
    );
  },
};

/** btoa of any length (a spread of a 1 MiB array overflows the stack). @param {Uint8Array} bytes */
function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
