// Following a call's live events (`GET /api/calls/{id}/events`, Server-Sent Events) over
// fetch, so the session can go as a bearer token and the organisation as `X-Org-Id` (which a
// browser `EventSource` cannot send). The stream resumes after a dropped connection with
// `Last-Event-ID` — the service replays from its durable log, on any replica, without loss or
// duplicates — and each event is typed by its kind.
//
//   for await (const event of followCallEvents(options, callId, { signal })) {
//     if (event.partial) showPartial(event.data);
//     else if (event.kind === "transcript.final") addTurn(event.data); // event.id: its sequence
//   }

import { ApiProblem, type ApiClientOptions, type Schema, identityHeaders, PROBLEM_JSON } from "./client.js";

/** A durable event: in the call's log, with its sequence number as the SSE id. */
export type CallEvent = Schema<"CallEvent">;

/** The kinds the service writes to a call's log (Telnyx's call events pass through as named). */
export const DURABLE_KINDS = [
  "call.created",
  "call.dialing",
  "call.initiated",
  "call.answered",
  "call.hangup",
  "call.failed",
  "call.hangup_requested",
  "call.recording.saved",
  "media.reattached",
  "transcript.final",
  "transcript.gap",
  "transcript.post_call",
  "utterance.spoken",
  "utterance.played",
  "utterance.cut",
] as const;
export type DurableKind = (typeof DURABLE_KINDS)[number];

/** A durable event: of a known kind, or of one this client does not know yet. */
export interface DurableEvent {
  partial: false;
  kind: DurableKind | (string & Record<never, never>);
  /** The sequence number: pass it as `lastEventId` to resume after this event. */
  id: number;
  data: CallEvent;
}
/** A partial transcript: live only, never in the log, so it has no id and is not replayed. */
export interface PartialEvent {
  partial: true;
  kind: "transcript.partial";
  id: null;
  data: Record<string, unknown>;
}
/** Narrow on `partial` (then on `kind`). */
export type CallStreamEvent = DurableEvent | PartialEvent;

export interface FollowOptions {
  /** Resume after this sequence number (a previous event's `id`). */
  lastEventId?: number;
  signal?: AbortSignal;
  /** Wait before reconnecting when the server sends no `retry:`; default 1000 ms. */
  retryMs?: number;
  /** Called before each reconnection, with the id it resumes after. */
  onReconnect?: (lastEventId: number) => void;
}

interface Frame {
  id: string | undefined;
  event: string;
  data: string;
  retry: number | undefined;
}

/** The SSE wire format (WHATWG HTML §9.2.6): lines, `field: value`, a blank line ends a frame. */
async function* frames(body: ReadableStream<Uint8Array>): AsyncGenerator<Frame> {
  const decoder = new TextDecoder();
  let buffer = "";
  let frame: Frame = { id: undefined, event: "message", data: "", retry: undefined };
  let hasData = false;
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      for (let newline = buffer.search(/\r\n|\r|\n/); newline >= 0; newline = buffer.search(/\r\n|\r|\n/)) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (hasData) yield frame;
          frame = { id: undefined, event: "message", data: "", retry: undefined };
          hasData = false;
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "data") {
          frame.data = hasData ? `${frame.data}\n${fieldValue}` : fieldValue;
          hasData = true;
        } else if (field === "event") frame.event = fieldValue;
        else if (field === "id") frame.id = fieldValue;
        else if (field === "retry" && /^\d+$/.test(fieldValue)) frame.retry = Number(fieldValue);
      }
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => undefined);
  }
}

function toEvent(frame: Frame): CallStreamEvent {
  const data: unknown = JSON.parse(frame.data);
  if (frame.event === "transcript.partial" || frame.id === undefined) {
    return { partial: true, kind: "transcript.partial", id: null, data: data as Record<string, unknown> };
  }
  return { partial: false, kind: frame.event, id: Number(frame.id), data: data as CallEvent };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Follows a call's events until `signal` aborts (or the loop breaks). A dropped connection is
 * resumed after the last event seen; an error answer (no session, no such call) ends the
 * stream with an `ApiProblem`.
 */
export async function* followCallEvents(
  client: ApiClientOptions,
  callId: string,
  options: FollowOptions = {},
): AsyncGenerator<CallStreamEvent> {
  let lastEventId = options.lastEventId;
  let retryMs = options.retryMs ?? 1000;
  const fetcher = client.fetch ?? globalThis.fetch;
  const url = `${client.baseUrl.replace(/\/+$/, "")}/api/calls/${encodeURIComponent(callId)}/events`;
  let attempt = 0;
  while (!options.signal?.aborted) {
    if (attempt > 0) {
      await sleep(retryMs, options.signal);
      if (options.signal?.aborted) return;
      options.onReconnect?.(lastEventId ?? 0);
    }
    attempt += 1;
    const headers = identityHeaders(client);
    headers.set("accept", "text/event-stream");
    if (lastEventId !== undefined) headers.set("last-event-id", String(lastEventId));
    let response: Response;
    try {
      response = await fetcher(url, {
        headers,
        credentials: client.credentials ?? "include",
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch {
      if (options.signal?.aborted) return;
      continue; // the network: try again
    }
    if (!response.ok || !response.body) {
      if (response.status >= 500 && response.status !== 501) {
        await response.body?.cancel();
        continue; // the service is restarting or overloaded: try again
      }
      const isProblem = response.headers.get("content-type")?.startsWith(PROBLEM_JSON);
      throw await ApiProblem.fromResponse(response, isProblem ? await response.json() : undefined);
    }
    try {
      for await (const frame of frames(response.body)) {
        if (frame.retry !== undefined) retryMs = frame.retry;
        if (frame.data === "") continue;
        const event = toEvent(frame);
        if (event.id !== null) lastEventId = event.id;
        yield event;
      }
    } catch {
      if (options.signal?.aborted) return;
      // A dropped connection: resume after the last event.
    }
  }
}
