// Shared test helpers: what the fake origin echoes, reading its request counter, and the
// test database (the Hyperdrive binding's, test/global-setup.ts).
import { env } from "cloudflare:workers";
import { Client } from "pg";

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

/** Runs one statement on the test database (the Hyperdrive binding's) and returns its rows. */
export async function query<T extends Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new Client({ connectionString: env.HYPERDRIVE.connectionString });
  // Closing the socket ends its read with "Stream was cancelled", reported as an error.
  client.on("error", () => {});
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}
