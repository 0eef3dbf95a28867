//! PostgreSQL access: the deadpool pool every request and job uses, migrations, and the
//! development-only bootstrap of the Auth.js tables.
//!
//! Query functions elsewhere take a `&impl GenericClient` ([`GenericClient`], this module's
//! own) so a handler and a job can share them and an insert plus its enqueue can commit in
//! one transaction; callers pass `&client` or `&transaction` as they hold it.

pub mod authjs;
mod generic;
mod listener;

pub use generic::GenericClient;
pub(crate) use generic::text_enum;
pub use listener::{Listener, Notice};

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Statement;

use crate::config::DatabaseConfig;

/// Embedded migrations; the same `_sqlx_migrations` table `sqlx-cli` uses.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub type Client = deadpool_postgres::Object;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database configuration: {0}")]
    Config(String),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database connection for migrations: {0}")]
    Sqlx(#[from] sqlx::Error),
}

impl DbError {
    /// The database could not serve this request now, through no fault of the request: every
    /// pooled connection busy past `DATABASE_POOL_TIMEOUT_MS` (load), or the server unreachable,
    /// restarting or out of connections. Retrying later may succeed, so HTTP answers 503 with
    /// `Retry-After`, never 500 (docs/API_ERRORS.md, `database-unavailable`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(error) => pool_unavailable(error),
            DbError::Postgres(error) => postgres_unavailable(error),
            DbError::Config(_) | DbError::Migrate(_) | DbError::Sqlx(_) => false,
        }
    }
}

fn pool_unavailable(error: &deadpool_postgres::PoolError) -> bool {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Timeout(_) => true,
        PoolError::Backend(error)
        | PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(error)) => {
            postgres_unavailable(error)
        }
        _ => false,
    }
}

fn postgres_unavailable(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code),
        // No SQL state: the connection itself failed (refused, reset, timed out).
        None => {
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
        }
    }
}

/// Whether any error in `error`'s chain is the database being unavailable
/// ([`DbError::is_unavailable`]), however it was wrapped on the way up.
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(error) = cause.downcast_ref::<DbError>() {
            error.is_unavailable()
        } else if let Some(error) = cause.downcast_ref::<deadpool_postgres::PoolError>() {
            pool_unavailable(error)
        } else if let Some(error) = cause.downcast_ref::<tokio_postgres::Error>() {
            postgres_unavailable(error)
        } else {
            false
        }
    })
}

/// The pooled database handle shared by the whole process.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// Connections on which a prepared statement always runs its generic plan
    /// ([`Db::generic_plan_client`]); `None` behind a transaction-mode pooler.
    generic_plans: Option<Pool>,
    statement_cache: bool,
}

/// Connections a replica keeps for [`Db::generic_plan_client`], on top of
/// `DATABASE_POOL_MAX_SIZE`: its one user, the turn writer, runs one statement at a time.
const GENERIC_PLAN_CONNECTIONS: usize = 1;

/// A pool of connections to `config`'s database, each running `settings` once when it opens.
fn open_pool(
    config: &DatabaseConfig,
    max_size: usize,
    settings: Vec<String>,
) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        pg_config(config.url.expose())?,
        crate::tls::postgres_connector(),
        ManagerConfig {
            // `Fast` only checks the socket is open; a dead server shows up as a
            // closed connection after a restart, which is what lets /readyz recover.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager);
    if !settings.is_empty() {
        // One round trip for all of them.
        let settings = settings.join("; ");
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let settings = settings.clone();
            Box::pin(async move {
                client
                    .simple_query(&settings)
                    .await
                    .map(drop)
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    builder
        .max_size(max_size)
        .wait_timeout(Some(config.pool_timeout))
        .create_timeout(Some(config.pool_timeout))
        .recycle_timeout(Some(config.pool_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

impl Db {
    /// Builds the pool; connections are opened lazily, so a database that is down at start
    /// is reported by `/readyz` instead of crashing the process.
    pub fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        // The working set of this service's queries is in memory, so a random page costs
        // about what a sequential one does; with PostgreSQL's default (4, for disks) the
        // planner scans and hashes small tables (sessions, users, memberships) where a key
        // probe costs a fraction of the CPU (docs/adr/0048-cheaper-one-round-trip-page.md).
        // Session connections only: behind a transaction-mode pooler a session `set` would
        // leak to whichever client gets the server connection next.
        let mut settings = Vec::new();
        if let Some(cost) = config.random_page_cost.filter(|_| config.statement_cache) {
            settings.push(format!("set random_page_cost = {cost}"));
        }
        let pool = open_pool(config, config.pool_max_size, settings.clone())?;
        // Without the statement cache nothing keeps a plan, so there is nothing to pin.
        let generic_plans = if config.statement_cache {
            settings.push("set plan_cache_mode = force_generic_plan".to_owned());
            Some(open_pool(config, GENERIC_PLAN_CONNECTIONS, settings)?)
        } else {
            None
        };
        Ok(Self {
            pool,
            generic_plans,
            statement_cache: config.statement_cache,
        })
    }

    /// Opens up to `connections` pooled connections in the background. A replica that has
    /// just started is the one that takes a burst at once (in a rolling restart every
    /// re-attached stream upgrades within a second), and a connection opened during that
    /// burst, on a busy machine, can take longer than `DATABASE_POOL_TIMEOUT_MS`: the
    /// upgrade is then refused with 503. Best effort: a database that is down now is
    /// reported by `/readyz`, and the pool opens connections on demand as before. The
    /// turn writer's connection ([`Db::generic_plan_client`]) is opened as well.
    pub fn warm(&self, connections: usize) {
        let pool = self.pool.clone();
        let generic_plans = self.generic_plans.clone();
        tokio::spawn(async move {
            let opened = futures_util::future::join_all((0..connections).map(|_| pool.get()));
            let writer = async {
                match &generic_plans {
                    Some(pool) => pool.get().await.is_err(),
                    None => false,
                }
            };
            let (opened, writer_failed) = tokio::join!(opened, writer);
            let failed = opened.iter().filter(|c| c.is_err()).count() + usize::from(writer_failed);
            if failed > 0 {
                tracing::debug!(failed, "warming the database pool: some connections failed");
            }
        });
    }

    pub async fn client(&self) -> Result<Client, DbError> {
        Ok(self.pool.get().await?)
    }

    /// A connection on which every prepared statement runs its generic plan
    /// (`plan_cache_mode = force_generic_plan`), planned once per connection instead of on
    /// every execution. Only for a statement whose generic plan is key lookups whatever its
    /// arrays hold, and whose planning costs more than its execution: PostgreSQL itself
    /// never chooses the generic plan of a statement over arrays, whose custom plans it
    /// costs by the arrays' actual lengths (ADR 0062). Behind a transaction-mode pooler
    /// (`DATABASE_STATEMENT_CACHE=false`) no plan is kept: a pooled connection.
    pub async fn generic_plan_client(&self) -> Result<Client, DbError> {
        match &self.generic_plans {
            Some(pool) => Ok(pool.get().await?),
            None => self.client().await,
        }
    }

    /// Prepares through the per-connection cache unless a transaction-mode pooler forbids
    /// named statements that outlive a transaction (`DATABASE_STATEMENT_CACHE=false`).
    pub async fn prepare(&self, client: &Client, sql: &str) -> Result<Statement, DbError> {
        Ok(if self.statement_cache {
            client.prepare_cached(sql).await?
        } else {
            client.prepare(sql).await?
        })
    }

    /// Runs `sql` through the statement cache: one round trip instead of Parse + Execute.
    /// For hot paths; the SQL must be a fixed string (it is the cache key).
    pub async fn query(
        &self,
        client: &Client,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let statement = self.prepare(client, sql).await?;
        Ok(client.query(&statement, params).await?)
    }

    /// One round trip through the pool: what `/readyz` reports as `database`.
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client.simple_query("select 1").await?;
        Ok(())
    }

    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

/// Parses a connection URL. TLS is negotiated only for `sslmode=require`, and then the
/// certificate is verified (Neon has a public one). libpq's default `prefer` would accept any
/// certificate; we treat it as plaintext instead, and production validation refuses a
/// non-loopback URL without `sslmode=require` (docs/adr/0003-database-tls.md).
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut pg =
        tokio_postgres::Config::from_str(url).map_err(|e| DbError::Config(e.to_string()))?;
    if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    // An `application_name` in the URL tells replicas apart in `pg_stat_activity` (the media
    // bench meters two services' backends apart by it); otherwise every connection says
    // what it is.
    if pg.get_application_name().is_none() {
        pg.application_name("callbridge");
    }
    Ok(pg)
}

/// One unpooled connection (LISTEN/NOTIFY, bootstrap); the driver task is spawned.
pub async fn connect_direct(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = pg_config(url)?
        .connect(crate::tls::postgres_connector())
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "direct database connection closed");
        }
    });
    Ok(client)
}

/// One embedded migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// Every embedded migration, applied or pending, read without writing anything (the
/// history table may not exist yet: then every migration is pending).
pub async fn migration_status(direct_url: &str) -> Result<Vec<MigrationStatus>, DbError> {
    let client = connect_direct(direct_url).await?;
    let exists: bool = client
        .query_one(
            "select to_regclass('_sqlx_migrations') is not null as history_exists",
            &[],
        )
        .await?
        .get("history_exists");
    let applied: Vec<i64> = if exists {
        client
            .query("select version from _sqlx_migrations where success", &[])
            .await?
            .iter()
            .map(|row| row.get("version"))
            .collect()
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// Applies pending migrations over the unpooled URL (advisory-locked by sqlx, so replicas
/// starting together do not race).
pub async fn migrate(direct_url: &str) -> Result<(), DbError> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(direct_url).await?;
    MIGRATOR.run(&mut connection).await?;
    connection.close().await?;
    Ok(())
}
