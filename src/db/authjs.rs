//! The Auth.js (`@auth/pg-adapter`) tables, created for development and tests only.
//!
//! In staging and production the frontend's Auth.js owns these tables; we only read them.
//! The DDL is the adapter's documented schema, verbatim, in schema `AUTH_SCHEMA`. It is not
//! a sqlx migration because the schema name is configurable and production must not get it.

use crate::config::is_sql_identifier;

use super::DbError;

/// The adapter's documented schema (authjs.dev, "PostgreSQL adapter"), placed in `schema`.
pub fn ddl(schema: &str) -> String {
    format!(
        r#"
create schema if not exists {schema};

create table if not exists {schema}.verification_token
(
  identifier text not null,
  expires timestamptz not null,
  token text not null,
  primary key (identifier, token)
);

create table if not exists {schema}.accounts
(
  id serial,
  "userId" integer not null,
  type varchar(255) not null,
  provider varchar(255) not null,
  "providerAccountId" varchar(255) not null,
  refresh_token text,
  access_token text,
  expires_at bigint,
  id_token text,
  scope text,
  session_state text,
  token_type text,
  primary key (id)
);

create table if not exists {schema}.sessions
(
  id serial,
  "userId" integer not null,
  expires timestamptz not null,
  "sessionToken" varchar(255) not null,
  primary key (id)
);

create table if not exists {schema}.users
(
  id serial,
  name varchar(255),
  email varchar(255),
  "emailVerified" timestamptz,
  image text,
  primary key (id)
);

-- Not in the adapter's DDL, but every lookup is by token: the runbook asks production for
-- the same index (created concurrently).
create index if not exists sessions_session_token_idx on {schema}.sessions ("sessionToken");
"#
    )
}

/// Creates the Auth.js tables if they are missing. Idempotent; serialised by an advisory
/// lock so parallel test processes and replicas do not race on `create schema`. The lock is
/// the transaction's: a multi-statement simple query is one implicit transaction, so a
/// session lock released by its last statement would let the next replica in before this
/// one's schema was committed, and its `create schema if not exists` would then fail on the
/// catalog's unique index (seen with three services started at once).
pub async fn ensure_dev_tables(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), DbError> {
    if !is_sql_identifier(schema) {
        return Err(DbError::Config(format!(
            "AUTH_SCHEMA {schema:?} is not a plain identifier"
        )));
    }
    let sql = format!("select pg_advisory_xact_lock(7423001);\n{}", ddl(schema));
    client.batch_execute(&sql).await?;
    Ok(())
}
