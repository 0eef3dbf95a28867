// Runs in Node before the workerd tests: creates the fresh PostgreSQL database the tests'
// Hyperdrive binding points at (vitest.config.ts names it) and applies the container's
// migrations to it (../migrations, in order, as sqlx does); drops it afterwards if nothing
// holds it (Miniflare's Hyperdrive proxy may still: forcing would reset its sockets), and
// drops earlier runs' databases that nobody holds any more. The database
// paths of the edge (inbox writes, the queue consumer, cron) are tested against it, as the
// container's suites test against PostgreSQL: a real database, no mock. It also hands the
// tests the inbox statement's file as read from disk (test/inbox-sql.test.ts).
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { adminUrl, testDatabase } from "./database";

declare module "vitest" {
  export interface ProvidedContext {
    /** The bytes of src/webhook_inbox_insert.sql as Node reads them (test/inbox-sql.test.ts). */
    inboxSqlFile: string;
  }
}

export async function setup(project: TestProject): Promise<() => Promise<void>> {
  project.provide("inboxSqlFile", readFileSync(join(import.meta.dirname, "..", "src", "webhook_inbox_insert.sql"), "utf8"));
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  const stale = await admin.query<{ datname: string }>(
    `select datname from pg_database d where datname like 'edge_vitest_%'
     and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)`,
  );
  for (const { datname } of stale.rows) await admin.query(`drop database if exists "${datname}"`).catch(() => {});
  await admin.query(`drop database if exists "${testDatabase}" with (force)`);
  await admin.query(`create database "${testDatabase}"`);
  await admin.end();
  const db = new pg.Client({ connectionString: adminUrl(testDatabase) });
  await db.connect();
  const dir = join(import.meta.dirname, "..", "..", "migrations");
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort()) {
    await db.query(readFileSync(join(dir, file), "utf8"));
  }
  await db.end();
  return async () => {
    const down = new pg.Client({ connectionString: adminUrl() });
    await down.connect();
    await down.query(`drop database if exists "${testDatabase}"`).catch(() => {});
    await down.end();
  };
}
