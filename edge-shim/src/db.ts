// Owns the edge's Postgres access: one node-postgres client per request over Hyperdrive
// (HYPERDRIVE.connectionString; Hyperdrive pools upstream), closed after the response with
// waitUntil. Any failure throws, which sends an `edge` request to the container instead, so
// a statement here must be atomic (a single statement) or read-only.
//
// Hyperdrive caches read queries that use no volatile/stable function. Every edge read runs
// in one statement with the session check `expires > now()` (stable), so none is cached:
// a signed-out session or a new call is seen at once, as the container sees it.

import { Client } from "pg";
import type { Env } from "./env";

export type Db = Pick<Client, "query">;

export async function withDb<T>(env: Env, waitUntil: (p: Promise<unknown>) => void, work: (db: Db) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: env.HYPERDRIVE.connectionString, connectionTimeoutMillis: 5000 });
  // A connection error after the query has finished must not become an unhandled error.
  client.on("error", () => {});
  await client.connect();
  try {
    return await work(client);
  } finally {
    waitUntil(client.end().catch(() => {}));
  }
}
