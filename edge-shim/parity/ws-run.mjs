// Runs the WebSocket cases of ws-cases.mjs against one side (the container or the shim) and
// captures, per case: the handshake (status, and for a refusal its body and headers, which
// run.mjs normalises and compares like an HTTP answer), the `x-parity-answered-by` marker,
// every message the browser received (text verbatim, binary by length), the close code and
// reason, and what the AssemblyAI simulator received in the sessions the case opened.

import http from "node:http";
import zlib from "node:zlib";
import WebSocket from "ws";

/** A body as the client reads it: the shim passes the origin's compressed bytes through. */
function decoded(headers, chunks) {
  let body = Buffer.concat(chunks);
  const encoding = headers["content-encoding"];
  if (encoding === "gzip") body = zlib.gunzipSync(body);
  else if (encoding === "br") body = zlib.brotliDecompressSync(body);
  else if (encoding === "deflate") body = zlib.inflateSync(body);
  return body.toString("utf8");
}

const CASE_TIMEOUT_MS = 15_000;

async function simCall(aai, method, path, body) {
  const res = await fetch(new URL(path, aai), {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`simulator ${method} ${path}: ${res.status}`);
  return res.json();
}

export const resetSimulator = (aai) => simCall(aai, "POST", "/__reset");

/** A plain GET (not a handshake), answered like any HTTP request. */
function plainGet(base, c, sign) {
  const url = new URL(c.path, base);
  return new Promise((resolve, reject) => {
    const r = http.request(
      {
        host: url.hostname,
        port: url.port,
        method: "GET",
        path: url.pathname + url.search,
        headers: { ...Object.fromEntries(c.headers), ...sign("GET", url.pathname + url.search, Buffer.alloc(0)) },
      },
      (res) => {
        const chunks = [];
        res.on("data", (d) => chunks.push(d));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: decoded(res.headers, chunks) }));
        res.on("error", reject);
      },
    );
    r.on("error", reject);
    r.setTimeout(CASE_TIMEOUT_MS, () => r.destroy(new Error("timed out")));
    r.end();
  });
}

/** One case against `base`: the handshake and, when it succeeds, the scripted session. */
function session(base, c, sign) {
  const url = new URL(c.path, base.replace(/^http/, "ws"));
  return new Promise((resolve) => {
    const out = { status: null, headers: {}, body: "", messages: [], close: null };
    let settled = false;
    const finish = (extra = {}) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...out, ...extra });
    };
    const timer = setTimeout(() => {
      try {
        socket.terminate();
      } catch {}
      finish({ error: `no close within ${CASE_TIMEOUT_MS} ms` });
    }, CASE_TIMEOUT_MS);
    const socket = new WebSocket(url, {
      headers: { ...Object.fromEntries(c.headers), ...sign("GET", url.pathname + url.search, Buffer.alloc(0)) },
      perMessageDeflate: false,
    });
    socket.on("unexpected-response", (_req, res) => {
      out.status = res.statusCode;
      out.headers = res.headers;
      const chunks = [];
      res.on("data", (d) => chunks.push(d));
      res.on("end", () => finish({ body: decoded(res.headers, chunks) }));
    });
    socket.on("upgrade", (res) => {
      out.status = res.statusCode;
      out.headers = res.headers;
    });
    socket.on("message", (data, isBinary) => {
      out.messages.push(isBinary ? `<binary ${data.length} bytes>` : data.toString("utf8"));
    });
    socket.on("open", () => {
      for (const step of c.script) {
        if (step.binary) socket.send(step.binary, { binary: true });
        else socket.send(step.text, { binary: false });
      }
      if (c.end === "terminate") socket.send('{"type":"Terminate"}', { binary: false });
      else if (c.end === "leave") socket.close(1000, "bye");
    });
    socket.on("close", (code, reason) => {
      out.close = { code, reason: reason.toString("utf8") };
      finish();
    });
    socket.on("error", (err) => {
      if (out.status === null) finish({ error: err.message });
    });
  });
}

/** Runs every case in order against `base`; returns one capture per case. */
/**
 * `sign(method, pathAndQuery, body)` gives the extra headers of each handshake: the edge's
 * signature for the direct pass (the container enforces it), nothing through the shim.
 */
export async function runWsCases(cases, base, aai, sign = () => ({})) {
  const out = [];
  for (const c of cases) {
    try {
      const before = (await simCall(aai, "GET", "/__sessions")).length;
      if (c.fault) await simCall(aai, "POST", "/__fault", c.fault);
      const res = c.http ? await plainGet(base, c, sign) : await session(base, c, sign);
      if (c.end === "leave" && res.status === 101) {
        // The edge/container finishes the AssemblyAI session after the browser left: wait
        // for the simulator to see it closed.
        for (let i = 0; i < 100; i++) {
          const s = (await simCall(aai, "GET", "/__sessions")).slice(before);
          if (s.length > 0 && s.every((x) => x.closed_with !== null)) break;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      const sessions = (await simCall(aai, "GET", "/__sessions")).slice(before);
      out.push({ c, res, sessions });
    } catch (err) {
      out.push({ c, error: err.message });
    }
  }
  return out;
}
