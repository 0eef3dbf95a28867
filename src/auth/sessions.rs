//! Resolving an Auth.js session token to a user and their organisations.
//!
//! The lookup is one query against `{AUTH_SCHEMA}.sessions` joined to `users`, using the
//! adapter's exact quoted camelCase columns, in the form `AUTH_TOKEN_STORAGE` says tokens are
//! stored: `raw` (the adapter's default), `hashed` (hex SHA-256) or `dual` (either, for the
//! zero-downtime move). Results are cached briefly (see `cache`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::cache::{TokenDigest, TtlCache};
use crate::config::{AuthConfig, TokenStorage};
use crate::db::{Db, DbError};
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
    pub active_organisation_id: Option<uuid::Uuid>,
    /// Which stored form matched: what the debug endpoint and the migration metrics report.
    pub stored_form: StoredForm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoredForm {
    Raw,
    Hashed,
}

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
}

impl Principal {
    /// Where a request that names no organisation acts: the stored active organisation,
    /// else the first membership (the personal one).
    pub fn default_organisation(&self) -> Option<uuid::Uuid> {
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
        let lookup_sql = format!(
            r#"with x as (
                 select u.id::text as user_id, u.name, u.email, u.image, s.expires,
                        s."sessionToken" = $2 as raw_match
                 from {schema}.sessions s join {schema}.users u on u.id = s."userId"
                 where s."sessionToken" = any($1) and s.expires > now()
                 order by s.expires desc limit 1
               )
               select x.user_id, x.name, x.email, x.image, x.expires, x.raw_match,
                      exists (select 1 from organisations where personal_owner_id = x.user_id) as owns_personal,
                      (select st.active_organisation_id from user_settings st
                       join memberships am on am.organisation_id = st.active_organisation_id and am.user_id = st.user_id
                       where st.user_id = x.user_id) as active_organisation_id,
                      coalesce(ms.ids, '{{}}'), coalesce(ms.names, '{{}}'), coalesce(ms.roles, '{{}}'), coalesce(ms.personal, '{{}}')
               from x left join lateral (
                 select array_agg(o.id order by {order}) as ids,
                        array_agg(o.name order by {order}) as names,
                        array_agg(m.role order by {order}) as roles,
                        array_agg(o.personal_owner_id is not null order by {order}) as personal
                 from memberships m join organisations o on o.id = m.organisation_id
                 where m.user_id = x.user_id
               ) ms on true"#
        );
        Self {
            db,
            storage: config.token_storage,
            cache: TtlCache::new(config.session_cache_ttl, config.session_cache_capacity),
            unknown: TtlCache::new(config.negative_cache_ttl, config.session_cache_capacity),
            lookup_sql,
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
        let until_expiry = (principal.session_expires - Utc::now())
            .to_std()
            .unwrap_or_default();
        let principal = Arc::new(principal);
        self.cache.insert(
            digest,
            principal.clone(),
            Some(Instant::now() + until_expiry),
        );
        Ok(Some(Resolved {
            principal,
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
        let mut active_organisation_id: Option<uuid::Uuid> = row.get(7);
        let (ids, names, roles, personal): (Vec<uuid::Uuid>, Vec<String>, Vec<String>, Vec<bool>) =
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
        if memberships.is_empty() || !owns_personal {
            let display = user
                .name
                .clone()
                .or_else(|| user.email.clone())
                .unwrap_or_else(|| "Personal".into());
            orgs::ensure_personal_organisation(&mut **client, &user.id, &display).await?;
            memberships = orgs::memberships_of(&self.db, &client, &user.id).await?;
            active_organisation_id =
                orgs::active_organisation_of(&self.db, &client, &user.id).await?;
        }
        Ok(Some(Principal {
            user,
            session_expires: row.get(4),
            memberships,
            active_organisation_id,
            stored_form,
        }))
    }

    /// The principal for `token` straight from the database (the cache is refreshed, or
    /// forgets the token when the session is gone): what long-lived streams re-check with.
    pub async fn revalidate(&self, token: &str) -> Result<Option<Arc<Principal>>, DbError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        let Some(principal) = self.lookup(token).await? else {
            self.cache.remove(&digest);
            return Ok(None);
        };
        let until_expiry = (principal.session_expires - Utc::now())
            .to_std()
            .unwrap_or_default();
        let principal = Arc::new(principal);
        self.cache.insert(
            digest,
            principal.clone(),
            Some(Instant::now() + until_expiry),
        );
        Ok(Some(principal))
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
