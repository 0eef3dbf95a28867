// The SSE helper against the container: events typed by kind, an explicit resume with
// `lastEventId`, and an automatic resume (Last-Event-ID) after the connection drops mid-stream,
// without loss or duplicates.

import assert from "node:assert/strict";
import { test } from "node:test";

import { type ApiClientOptions, type CallStreamEvent, followCallEvents, ok } from "../src/index.js";
import { api, checkingFetch, config, cookieSession } from "./support.js";

async function placeCall(number: string): Promise<string> {
  await ok(api.POST("/api/phone-numbers", { body: { number } }));
  const call = await ok(
    api.POST("/api/calls", {
      body: { to: "+14155550123", from: number, source_language: "en", target_language: "de" },
    }),
  );
  return call.id;
}

/** Reads events until `count` durable ones arrived (or 10 s passed). */
async function durable(stream: AsyncGenerator<CallStreamEvent>, count: number, controller: AbortController) {
  const seen: { id: number; kind: string }[] = [];
  const timer = setTimeout(() => controller.abort(), 10_000);
  // `next()`, not `for await`: breaking out of a loop would end the generator.
  while (seen.length < count) {
    const { value: event, done } = await stream.next();
    if (done) break;
    if (event.partial) continue;
    // Durable events carry their log row: the same sequence and kind as the SSE frame.
    assert.equal(event.data.seq, event.id);
    assert.equal(event.data.kind, event.kind);
    seen.push({ id: event.id, kind: event.kind });
  }
  clearTimeout(timer);
  return seen;
}

test("events are typed by kind and an explicit lastEventId resumes after it", async () => {
  const callId = await placeCall("+14155550101");
  const first = new AbortController();
  const stream = followCallEvents(cookieSession, callId, { signal: first.signal });
  const events = await durable(stream, 2, first);
  // Done with it: closing the generator cancels the response body.
  first.abort();
  await stream.return(undefined);
  assert.deepEqual(events, [
    { id: 1, kind: "call.created" },
    { id: 2, kind: "call.dialing" },
  ]);
  const again = new AbortController();
  const resumedStream = followCallEvents({ ...cookieSession, bearer: config.sessionToken }, callId, {
    lastEventId: 1,
    signal: again.signal,
  });
  const resumed = await durable(resumedStream, 1, again);
  again.abort();
  await resumedStream.return(undefined);
  assert.deepEqual(resumed, [{ id: 2, kind: "call.dialing" }]);
});

test("a dropped connection resumes with Last-Event-ID, without loss or duplicates", async () => {
  const callId = await placeCall("+442079460100");
  let connections = 0;
  const sentLastEventIds: (string | null)[] = [];
  // The first connection breaks right after its first event, as a proxy timing out would.
  const flaky: typeof fetch = async (input, init) => {
    connections += 1;
    sentLastEventIds.push(new Headers(init?.headers).get("last-event-id"));
    const response = await checkingFetch(input, init);
    if (connections > 1 || !response.body) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    const cut = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const { value, done } = await reader.read();
        if (done) return controller.close();
        text += decoder.decode(value, { stream: true });
        const end = text.indexOf("\n\n");
        if (end < 0) return;
        controller.enqueue(new TextEncoder().encode(text.slice(0, end + 2)));
        await reader.cancel();
        controller.error(new Error("connection reset"));
      },
    });
    return new Response(cut, { status: response.status, headers: response.headers });
  };
  const options: ApiClientOptions = { ...cookieSession, fetch: flaky };
  const reconnects: number[] = [];
  const controller = new AbortController();
  const stream = followCallEvents(options, callId, {
    signal: controller.signal,
    retryMs: 50,
    onReconnect: (id) => reconnects.push(id),
  });
  const firstTwo = await durable(stream, 2, controller);
  // A live event after the resume arrives too.
  await ok(api.POST("/api/calls/{id}/hangup", { params: { path: { id: callId } } }));
  const third = await durable(stream, 1, controller);
  controller.abort();
  await stream.return(undefined);
  assert.deepEqual(
    [...firstTwo, ...third],
    [
      { id: 1, kind: "call.created" },
      { id: 2, kind: "call.dialing" },
      { id: 3, kind: "call.hangup_requested" },
    ],
  );
  assert.deepEqual(reconnects, [1]);
  assert.deepEqual(sentLastEventIds.slice(0, 2), [null, "1"]);
});
