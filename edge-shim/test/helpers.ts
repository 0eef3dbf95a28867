// Shared test helpers: what the fake origin echoes, and reading its request counter.

/** The fake origin's default answer: the request exactly as the container would receive it. */
export interface Echo {
  method: string;
  url: string;
  headers: Record<string, string>;
  /** The body as UTF-8 text. */
  body: string;
  /** The body's exact bytes. */
  bodyBase64: string;
}

/** How many requests tagged `x-test-id: id` reached the fake origin. */
export async function originHits(id: string): Promise<number> {
  // The test Worker's own fetches also go to the fake origin (outboundService).
  const res = await fetch(`http://origin.test:8080/__fake/seen?id=${encodeURIComponent(id)}`);
  return ((await res.json()) as { count: number }).count;
}

/** Parsed JSON lines logged through `spy` (a vi.spyOn(console, ...)) whose event is `event`. */
export function logged(spy: { mock: { calls: unknown[][] } }, event: string): Record<string, unknown>[] {
  return spy.mock.calls
    .map((args) => {
      try {
        return JSON.parse(String(args[0])) as Record<string, unknown>;
      } catch {
        return null;
      }
    })
    .filter((line): line is Record<string, unknown> => line !== null && line.event === event);
}
