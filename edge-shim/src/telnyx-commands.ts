// Owns the edge's Telnyx Call Control command client, request for request as the container's
// `providers::telnyx::TelnyxClient` (docs/PROVIDERS.md §1.5): `POST {TELNYX_API_BASE}/calls/
// {form-urlencoded call_control_id}/actions/{action}` with `Authorization: Bearer
// TELNYX_API_KEY` and a JSON body carrying a stable `command_id` (Telnyx makes a repeated
// command a no-op). Up to 3 attempts: 5xx, 429 and network failures are retried with the
// container's provider backoff (200 ms × 2^(retry−1), at most 5 s, equal jitter); a 4xx is
// final and read from Telnyx's `errors` array. A command to a call that already ended (422,
// code 90018) counts as done, as the container's `ended_is_done`.

/** Where and as whom the commands go. */
export interface TelnyxCommands {
  /** The container's `TELNYX_API_BASE` (`https://api.telnyx.com/v2`). */
  base: string;
  apiKey: string;
  /** Waits between attempts; tests pass a zero wait. */
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
}

/** A command Telnyx refused (4xx) or could not take after every attempt. */
export class TelnyxCommandError extends Error {
  constructor(
    message: string,
    readonly status: number | null,
    readonly code: string | null,
  ) {
    super(message);
    this.name = "TelnyxCommandError";
  }
}

const ATTEMPTS = 3;
const BASE_MS = 200;
const MAX_MS = 5_000;

/** `url::form_urlencoded::byte_serialize`: A–Z a–z 0–9 `*-._` kept, space as `+`, the rest %XX. */
export function formUrlencode(text: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9*\-._]/.test(c)) out += c;
    else if (byte === 0x20) out += "+";
    else out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** The container's `speak`: text-to-speech into the call, `en-US`, female voice. */
export function speak(client: TelnyxCommands, callControlId: string, commandId: string, text: string): Promise<void> {
  return action(client, callControlId, "speak", { payload: text, voice: "female", language: "en-US", command_id: commandId });
}

/** The container's `hangup`. */
export function hangup(client: TelnyxCommands, callControlId: string, commandId: string): Promise<void> {
  return action(client, callControlId, "hangup", { command_id: commandId });
}

async function action(client: TelnyxCommands, callControlId: string, name: string, body: Record<string, unknown>): Promise<void> {
  const url = `${client.base.replace(/\/+$/, "")}/calls/${formUrlencode(callControlId)}/actions/${name}`;
  const sleep = client.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const random = client.random ?? Math.random;
  let last: TelnyxCommandError | null = null;
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    if (attempt > 1) {
      const ceiling = Math.min(BASE_MS * 2 ** (attempt - 2), MAX_MS);
      await sleep(ceiling * (0.5 + random() / 2));
    }
    let response: Response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { authorization: `Bearer ${client.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (err) {
      last = new TelnyxCommandError(`Telnyx unavailable: ${err instanceof Error ? err.message : String(err)}`, null, null);
      continue;
    }
    const text = await response.text().catch(() => "");
    if (response.ok) return;
    if (response.status >= 500 || response.status === 429) {
      last = new TelnyxCommandError(`Telnyx unavailable: ${response.status}: ${text.slice(0, 200)}`, response.status, null);
      continue;
    }
    const { code, detail } = firstError(text);
    // The call already ended: there is nothing left to say or hang up.
    if (response.status === 422 && code === "90018") return;
    throw new TelnyxCommandError(`Telnyx refused ${name} (${response.status}): ${detail}`, response.status, code);
  }
  throw last ?? new TelnyxCommandError("Telnyx unavailable", null, null);
}

/** The first entry of Telnyx's `errors` array: its code (a number is kept as its text) and detail. */
function firstError(text: string): { code: string | null; detail: string } {
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {}
  const errors = typeof parsed === "object" && parsed !== null ? (parsed as { errors?: unknown }).errors : undefined;
  const first =
    Array.isArray(errors) && typeof errors[0] === "object" && errors[0] !== null ? (errors[0] as Record<string, unknown>) : null;
  const rawCode = first?.code;
  const code = rawCode === undefined || rawCode === null ? null : typeof rawCode === "string" ? rawCode : JSON.stringify(rawCode);
  const detail = typeof first?.detail === "string" ? first.detail : typeof first?.title === "string" ? first.title : text.slice(0, 200);
  return { code, detail };
}
