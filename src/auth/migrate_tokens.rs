//! `callbridge auth migrate-tokens`: rewrites raw Auth.js session tokens as their SHA-256, in
//! batches, while traffic flows (docs/NEON_DATA_MIGRATION_RUNBOOK.md).
//!
//! Safe to interrupt and re-run: a hashed token (64 lower-case hex characters) is never
//! touched again, and batches walk the primary key upwards. The hash is computed by
//! PostgreSQL (`sha256(convert_to(token, 'UTF8'))`), byte-identical to `hash_token`. Readers
//! must accept both forms (`AUTH_TOKEN_STORAGE=dual`) before this runs.

use crate::db::GenericClient;

use crate::config::is_sql_identifier;
use crate::db::DbError;

/// A default-format token (a UUID) is 36 characters with dashes, so it never matches.
pub const HASHED_PATTERN: &str = "^[0-9a-f]{64}$";

pub async fn remaining(client: &impl GenericClient, schema: &str) -> Result<i64, DbError> {
    check_schema(schema)?;
    let sql = format!(
        r#"select count(*) as remaining from {schema}.sessions where "sessionToken" !~ '{HASHED_PATTERN}'"#
    );
    Ok(client.query_one(&sql, &[]).await?.get("remaining"))
}

fn check_schema(schema: &str) -> Result<(), DbError> {
    if is_sql_identifier(schema) {
        Ok(())
    } else {
        Err(DbError::Config(format!(
            "AUTH_SCHEMA {schema:?} is not a plain identifier"
        )))
    }
}

/// Hashes every raw token; calls `progress(done, total)` after each batch. Returns how many
/// rows it rewrote. Each batch is its own short transaction (row locks only on the batch).
pub async fn run(
    client: &impl GenericClient,
    schema: &str,
    batch_size: i64,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, DbError> {
    let total = remaining(client, schema).await?.max(0) as u64;
    let sql = format!(
        r#"with batch as (
               select id from {schema}.sessions
               where id > $1::bigint and "sessionToken" !~ '{HASHED_PATTERN}'
               order by id limit $2::bigint for update
           )
           update {schema}.sessions s
           set "sessionToken" = encode(sha256(convert_to(s."sessionToken", 'UTF8')), 'hex')
           from batch where s.id = batch.id
           returning s.id::bigint as id"#
    );
    let mut last_id: i64 = 0;
    let mut done: u64 = 0;
    progress(0, total);
    loop {
        let rows = client.query(&sql, &[&last_id, &batch_size.max(1)]).await?;
        if rows.is_empty() {
            break;
        }
        last_id = rows
            .iter()
            .map(|row| row.get::<_, i64>("id"))
            .max()
            .unwrap_or(last_id);
        done += rows.len() as u64;
        progress(done, total.max(done));
    }
    Ok(done)
}

/// A one-line progress bar for a terminal (`\r`-redrawn on stderr).
pub fn render_progress(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!(
        "\r[{}{}] {done}/{total} sessions ({percent}%)",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}
