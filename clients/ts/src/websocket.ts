// The API's two WebSocket operations, typed from the document: their URLs (a browser
// `WebSocket` cannot send headers, so everything goes in the URL; the session cookie goes
// along by itself). Open them with the platform's `WebSocket` (or `ws` on Node 20).

import type { operations } from "./generated/openapi.js";

type Query<Op extends keyof operations> = NonNullable<operations[Op]["parameters"]["query"]>;

function wsUrl(baseUrl: string, path: string, query: Record<string, string | number | null | undefined>): string {
  const url = new URL(path, `${baseUrl.replace(/\/+$/, "")}/`);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  return url.toString();
}

/** `GET /api/realtime/transcribe` (connectRealtimeTranscription): binary audio in, AssemblyAI's JSON out. */
export function realtimeTranscriptionUrl(baseUrl: string, query: Query<"connectRealtimeTranscription"> = {}): string {
  return wsUrl(baseUrl, "api/realtime/transcribe", query);
}

/** `GET /media/telnyx/{stream_token}` (connectTelnyxMediaStream): where Telnyx streams a call's media. */
export function telnyxMediaStreamUrl(baseUrl: string, path: operations["connectTelnyxMediaStream"]["parameters"]["path"]): string {
  return wsUrl(baseUrl, `media/telnyx/${encodeURIComponent(path.stream_token)}`, {});
}
