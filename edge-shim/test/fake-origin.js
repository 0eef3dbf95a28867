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
        server.send(JSON.stringify({ type: "Termination" }));
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
