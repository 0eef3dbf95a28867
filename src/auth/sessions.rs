//! Resolving an Auth.js session token to a user and their organisations.
//!
//! The lookup is one query against `{AUTH_SCHEMA}.sessions` joined to `users`, using the
//! adapter's exact quoted camelCase columns, in the form `AUTH_TOKEN_STORAGE` says tokens are
//! stored: `raw` (the adapter's default), `hashed` (hex SHA-256) or `dual` (either, for the
//! zero-downtime move). Results are cached briefly (see `cache`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use utoipa::ToSchema;

use super::cache::{TokenDigest, TtlCache};
use crate::config::{AuthConfig, TokenStorage};
use crate::db::{Db, DbError};
use crate::ids::OrgId;
use crate::orgs::{self, Membership};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    /// The Auth.js user id, as text (integers with @auth/pg-adapter).
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub image: Option<String>,
}

/// Who a session belongs to, with everything authorisation needs, so an authenticated
/// request needs no further database round trip to know its tenants and roles.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub session_expires: DateTime<Utc>,
    /// Personal organisation first, then by age.
    pub memberships: Vec<Membership>,
    /// The stored active organisation (`PUT /api/me/active-organisation`), when it is still
    /// one of `memberships`.
    pub active_organisation_id: Option<OrgId>,
    /// Which stored form matched: what the debug endpoint and the migration metrics report.
    pub stored_form: StoredForm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoredForm {
    Raw,
    Hashed,
}

/// A query that runs in the statement of a session lookup on a cache miss
/// ([`SessionResolver::resolve_riding`]).
pub trait Rider {
    type Output;
    /// How many columns [`Self::sql`] returns (the principal's row fills them with nulls).
    const COLUMNS: usize;
    /// A subquery, fixed text (its address names its prepared statement), that reads the
    /// organisation the request acts in as `p.organisation_id` (null unless the caller is a
    /// member) and takes its own parameters from `$4` on. Its rows reach [`Self::read`] in
    /// no promised order: the statement has no outer sort (it cost PostgreSQL more than the
    /// rest of the page), so `read` puts them in order itself.
    fn sql(&self) -> &'static str;
    /// `$4`, `$5`, … of [`Self::sql`].
    fn params(&self) -> Vec<&(dyn ToSql + Sync)>;
    /// The answer from `rows` (empty when the subquery returned none), whose own columns
    /// start at `first`.
    fn read(&self, rows: &[Row], first: usize) -> Self::Output;
}

/// What a [`Rider`] answered, and for which organisation.
pub struct Ridden<T> {
    pub organisation_id: OrgId,
    pub output: T,
}

/// Where the principal's row of a ridden statement keeps the organisation it chose.
const RIDER_ORGANISATION_COLUMN: usize = 12;
/// Where a rider's own columns start (after the principal's and the organisation).
const RIDER_FIRST_COLUMN: usize = 13;

pub struct Resolved {
    pub principal: Arc<Principal>,
    pub cache_hit: bool,
}

/// Hex SHA-256 of a token: the `hashed` storage form. Unkeyed on purpose
/// (docs/adr/0005-session-token-hashing.md).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `value` looks like the `hashed` storage form (64 hex characters; case-insensitive,
/// so an upper-cased copy of a stored hash is refused too).
pub fn is_hash_shaped(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

pub struct SessionResolver {
    db: Db,
    storage: TokenStorage,
    cache: TtlCache<Principal>,
    /// Tokens that resolved to nothing, briefly: a flood of made-up bearers costs one query
    /// each per `AUTH_NEGATIVE_CACHE_SECS`, not one per request.
    unknown: TtlCache<()>,
    lookup_sql: String,
    /// The lookup with a rider: `{rider}` stands for the rider's subquery, `{rider_nulls}`
    /// for a null per rider column.
    ride_template: String,
    /// Each rider's whole statement, built once (by the address of its fixed SQL).
    ride_sql: Mutex<HashMap<usize, Arc<str>>>,
}

impl Principal {
    /// Where a request that names no organisation acts: the stored active organisation,
    /// else the first membership (the personal one).
    pub fn default_organisation(&self) -> Option<OrgId> {
        self.active_organisation_id
            .or_else(|| self.memberships.first().map(|m| m.id))
    }
}

impl SessionResolver {
    pub fn new(db: Db, config: &AuthConfig) -> Self {
        let schema = &config.schema;
        // `= any($1)` lets one statement serve all three modes; the index on
        // "sessionToken" serves it. `expires > now()` refuses expired sessions. The user's
        // memberships (in `orgs::MEMBERSHIPS_ORDER`), whether they own their personal
        // organisation and their active one come in the same statement: a cache miss is one
        // round trip to PostgreSQL, not four (docs/BENCHMARKS.md).
        let order = orgs::MEMBERSHIPS_ORDER.replace("$1", "x.user_id");
        // The session's row first, then its user by primary key: with the session as a
        // one-row subquery the planner probes `users` by key instead of hashing the table.
        let session = format!(
            r#"with x as (
                 select u.id::text as user_id, u.name, u.email, u.image, s.expires, s.raw_match
                 from (select s."userId", s.expires, s."sessionToken" = $2 as raw_match
                       from {schema}.sessions s
                       where s."sessionToken" = any($1) and s.expires > now()
                       order by s.expires desc limit 1) s
                 join {schema}.users u on u.id = s."userId"
               )"#
        );
        // The memberships sorted once and aggregated (an `order by` per `array_agg` sorted
        // them four times); the stored active organisation counts only while it is one of
        // them, checked against the aggregate rather than by reading memberships again.
        let tables = format!(
            r#"from x
               cross join lateral (
                 select coalesce(array_agg(t.id), '{{}}') as ids, coalesce(array_agg(t.name), '{{}}') as names,
                        coalesce(array_agg(t.role), '{{}}') as roles, coalesce(array_agg(t.personal), '{{}}') as personal
                 from (select o.id, o.name, m.role, o.personal_owner_id is not null as personal
                       from memberships m join organisations o on o.id = m.organisation_id
                       where m.user_id = x.user_id
                       order by {order}) t
               ) ms
               left join user_settings st on st.user_id = x.user_id
               cross join lateral (
                 select case when st.active_organisation_id = any(ms.ids) then st.active_organisation_id end
                          as active_organisation_id
               ) a"#
        );
        let principal_columns = "x.user_id, x.name, x.email, x.image, x.expires, x.raw_match,
                      exists (select 1 from organisations where personal_owner_id = x.user_id) as owns_personal,
                      a.active_organisation_id, ms.ids, ms.names, ms.roles, ms.personal";
        let lookup_sql = format!("{session} select {principal_columns} {tables}");
        // The rider's statement: the principal and the organisation the request acts in
        // (`$3` when named, else the active one, else the first membership; null unless the
        // user is a member) in one row, then the rider's rows, each padded with nulls where
        // the other has columns. The principal is sent once, not with every row, and nothing
        // is numbered or sorted: a row number and the sort on it, or the principal's columns
        // repeated as `case` on every row, each cost PostgreSQL more than the two statements
        // this one replaced (docs/adr/0048-cheaper-one-round-trip-page.md). The principal is
        // materialised because both branches read it.
        let ride_template = format!(
            r#"{session}, p as materialized (
                 select {principal_columns},
                        case when o.id = any(ms.ids) then o.id end as organisation_id
                 {tables}
                 cross join lateral (select coalesce($3::uuid, a.active_organisation_id, ms.ids[1]) as id) o
               )
               select p.*, {{rider_nulls}} from p
               union all
               select {principal_nulls}, q.* from p cross join lateral ({{rider}}) q"#,
            principal_nulls = ["null"; RIDER_FIRST_COLUMN].join(", ")
        );
        Self {
            db,
            storage: config.token_storage,
            cache: TtlCache::new(config.session_cache_ttl, config.session_cache_capacity),
            unknown: TtlCache::new(config.negative_cache_ttl, config.session_cache_capacity),
            lookup_sql,
            ride_template,
            ride_sql: Mutex::new(HashMap::new()),
        }
    }

    pub fn storage(&self) -> TokenStorage {
        self.storage
    }

    pub fn cache_ttl(&self) -> Duration {
        self.cache.ttl()
    }

    fn candidates(&self, token: &str) -> Vec<String> {
        // The raw form is compared only against rows that are not hash-shaped: a presented
        // token equal to a stored row is hash-shaped exactly when that row is, so dropping a
        // hash-shaped raw candidate means a stored SHA-256 (read from a leaked table or a
        // backup) never logs anyone in. Auth.js tokens are UUIDs, never hash-shaped (ADR 0005).
        let raw = (!is_hash_shaped(token)).then(|| token.to_owned());
        match self.storage {
            TokenStorage::Raw => raw.into_iter().collect(),
            TokenStorage::Hashed => vec![hash_token(token)],
            TokenStorage::Dual => raw.into_iter().chain([hash_token(token)]).collect(),
        }
    }

    /// The principal for `token`, or `None` when it is unknown, expired or deleted.
    pub async fn resolve(&self, token: &str) -> Result<Option<Resolved>, DbError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.cache.get(&digest) {
            return Ok(Some(Resolved {
                principal,
                cache_hit: true,
            }));
        }
        if self.unknown.get(&digest).is_some() {
            metrics::counter!("auth_unknown_token_cached_total").increment(1);
            return Ok(None);
        }
        let Some(principal) = self.lookup(token).await? else {
            self.unknown.insert(digest, Arc::new(()), None);
            return Ok(None);
        };
        Ok(Some(Resolved {
            principal: self.remember(digest, principal),
            cache_hit: false,
        }))
    }

    async fn lookup(&self, token: &str) -> Result<Option<Principal>, DbError> {
        let mut client = self.db.client().await?;
        let statement = self.db.prepare(&client, &self.lookup_sql).await?;
        let Some(row) = client
            .query_opt(&statement, &[&self.candidates(token), &token])
            .await?
        else {
            return Ok(None);
        };
        let (principal, _) = self.principal_from(&mut client, &row).await?;
        Ok(Some(principal))
    }

    /// The principal in the first 12 columns of `row`, and whether it is as the row says
    /// (`false` when the user's personal organisation had to be made first, so the
    /// memberships were read again).
    ///
    /// Read by position on purpose: it runs on every session cache miss, a name lookup
    /// scans the row's columns on each read, and in the rider's statement the rider's own
    /// columns (`r.*`) follow ours and may share their names.
    async fn principal_from(
        &self,
        client: &mut crate::db::Client,
        row: &Row,
    ) -> Result<(Principal, bool), DbError> {
        let user = User {
            id: row.get(0),
            name: row.get(1),
            email: row.get(2),
            image: row.get(3),
        };
        let stored_form = if row.get::<_, bool>(5) {
            StoredForm::Raw
        } else {
            StoredForm::Hashed
        };
        let owns_personal: bool = row.get(6);
        let mut active_organisation_id: Option<OrgId> = row.get(7);
        let (ids, names, roles, personal): (Vec<OrgId>, Vec<String>, Vec<String>, Vec<bool>) =
            (row.get(8), row.get(9), row.get(10), row.get(11));
        let mut memberships: Vec<Membership> = ids
            .into_iter()
            .zip(names)
            .zip(roles)
            .zip(personal)
            .filter_map(|(((id, name), role), personal)| {
                Some(Membership {
                    id,
                    name,
                    role: orgs::Role::parse(&role)?,
                    personal,
                })
            })
            .collect();
        // Until the user has their own personal organisation — also when someone added them
        // to theirs first — make it, so their default organisation is one they own. (Once
        // per user: the common path above is the single statement.)
        let as_read = !memberships.is_empty() && owns_personal;
        if !as_read {
            let display = user
                .name
                .clone()
                .or_else(|| user.email.clone())
                .unwrap_or_else(|| "Personal".into());
            orgs::ensure_personal_organisation(client, &user.id, &display).await?;
            memberships = orgs::memberships_of(&self.db, client, &user.id).await?;
            active_organisation_id =
                orgs::active_organisation_of(&self.db, client, &user.id).await?;
        }
        let principal = Principal {
            user,
            session_expires: row.get(4),
            memberships,
            active_organisation_id,
            stored_form,
        };
        Ok((principal, as_read))
    }

    /// Caches `principal` for `digest` (never past the session's expiry).
    fn remember(&self, digest: TokenDigest, principal: Principal) -> Arc<Principal> {
        let until_expiry = (principal.session_expires - Utc::now())
            .to_std()
            .unwrap_or_default();
        let principal = Arc::new(principal);
        self.cache.insert(
            digest,
            principal.clone(),
            Some(Instant::now() + until_expiry),
        );
        principal
    }

    /// [`Self::resolve`], and on a cache miss `rider` in the same statement: an
    /// authenticated request whose session is not cached still costs one round trip to
    /// PostgreSQL (docs/adr/0038-one-round-trip-per-request.md). `named` is the
    /// organisation the request names, if any. The rider's answer is `None` on a cache hit,
    /// and when the caller is not a member of the organisation the statement chose or the
    /// lookup had to change the user's memberships first: the caller then runs its query
    /// alone, after deciding the organisation as always.
    pub async fn resolve_riding<R: Rider>(
        &self,
        token: &str,
        named: Option<OrgId>,
        rider: &R,
    ) -> Result<Option<(Resolved, Option<Ridden<R::Output>>)>, DbError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.cache.get(&digest) {
            let resolved = Resolved {
                principal,
                cache_hit: true,
            };
            return Ok(Some((resolved, None)));
        }
        if self.unknown.get(&digest).is_some() {
            metrics::counter!("auth_unknown_token_cached_total").increment(1);
            return Ok(None);
        }
        let sql = self.ride_sql(rider.sql(), R::COLUMNS);
        let candidates = self.candidates(token);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&candidates, &token, &named];
        params.extend(rider.params());
        let mut client = self.db.client().await?;
        let statement = self.db.prepare(&client, &sql).await?;
        let mut rows = client.query(&statement, &params).await?;
        // The principal's row is the one with a user (a rider's rows have none there);
        // PostgreSQL sends it first, but nothing in the statement promises that.
        let Some(at) = rows
            .iter()
            .position(|row| row.get::<_, Option<&str>>(0).is_some())
        else {
            self.unknown.insert(digest, Arc::new(()), None);
            return Ok(None);
        };
        let first = rows.swap_remove(at);
        let (principal, as_read) = self.principal_from(&mut client, &first).await?;
        let organisation_id: Option<OrgId> = first.get(RIDER_ORGANISATION_COLUMN);
        let ridden = match organisation_id {
            Some(organisation_id) if as_read => Some(Ridden {
                organisation_id,
                output: rider.read(&rows, RIDER_FIRST_COLUMN),
            }),
            _ => None,
        };
        let resolved = Resolved {
            principal: self.remember(digest, principal),
            cache_hit: false,
        };
        Ok(Some((resolved, ridden)))
    }

    fn ride_sql(&self, rider: &'static str, columns: usize) -> Arc<str> {
        let mut built = self.ride_sql.lock().unwrap_or_else(|p| p.into_inner());
        built
            .entry(rider.as_ptr() as usize)
            .or_insert_with(|| {
                self.ride_template
                    .replace("{rider_nulls}", &vec!["null"; columns].join(", "))
                    .replace("{rider}", rider)
                    .into()
            })
            .clone()
    }

    /// The principal for `token` straight from the database (the cache is refreshed, or
    /// forgets the token when the session is gone): what long-lived streams re-check with.
    pub async fn revalidate(&self, token: &str) -> Result<Option<Arc<Principal>>, DbError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        let Some(principal) = self.lookup(token).await? else {
            self.cache.remove(&digest);
            return Ok(None);
        };
        Ok(Some(self.remember(digest, principal)))
    }

    /// Sessions currently cached on this replica.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Drops cached sessions of `user_id` on this replica (after a membership change).
    /// Other replicas see the change within the cache TTL.
    pub fn forget_user(&self, user_id: &str) {
        self.cache
            .remove_where(|principal| principal.user.id == user_id);
    }
}
