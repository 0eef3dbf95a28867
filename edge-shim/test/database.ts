// The PostgreSQL server the workerd tests use: TEST_DATABASE_URL (as the container's suites;
// default the local trust-authenticated cluster), and one database per test run.

const base = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** One database per `vitest` process, so parallel runs on one machine never share rows. */
export const testDatabase = `edge_vitest_${process.pid}`;

/** The server's URL with `database` (default: the one in TEST_DATABASE_URL). */
export function adminUrl(database?: string): string {
  const url = new URL(base);
  if (database !== undefined) url.pathname = `/${database}`;
  return url.toString();
}

/** For the Hyperdrive binding: Miniflare refuses a connection string without a password. */
export function hyperdriveUrl(): string {
  const url = new URL(adminUrl(testDatabase));
  if (url.password === "") url.password = "vitest";
  return url.toString();
}
