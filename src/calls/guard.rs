//! The toll-fraud guard on dialing: who may place a call, to which numbers, how many at once
//! and how fast, and how long a call may last (docs/adr/0016-toll-fraud-guard-on-dialing.md).
//!
//! [`admit`] checks, in order: the caller's role (read from the database, not the session
//! cache), premium-rate and satellite prefixes, the organisation's country allow-list, then
//! the concurrency and per-minute caps per organisation and per user, then the
//! organisation's usage quotas (`usage::quota`, docs/USAGE.md). The caps are counted
//! from `calls` under per-organisation and per-user advisory locks held by the returned
//! [`Permit`]'s transaction, so they hold across replicas: the caller inserts its call in that
//! transaction and [`Permit::commit`]s, which also schedules the call's maximum duration.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::db::GenericClient;
use crate::ids::{CallId, OrgId};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use super::destinations::{self, BlockedKind};
use crate::config::TelephonyConfig;
use crate::config::usage::UsageConfig;
use crate::db::DbError;
use crate::orgs::Role;
use crate::queue::{self, JobKind};
use crate::usage::quota::{self, Exceeded, Quota};

/// Job `call.max_duration`: warns and then hangs up a call at its maximum duration
/// (`jobs::call_max_duration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxDurationJob {
    pub call_id: CallId,
    #[serde(default)]
    pub step: MaxDurationStep,
    /// The limit, for the call event.
    #[serde(default)]
    pub limit_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxDurationStep {
    /// A minute before the end: a spoken notice.
    Warn,
    #[default]
    Hangup,
}

impl MaxDurationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MaxDurationStep::Warn => "warn",
            MaxDurationStep::Hangup => "hangup",
        }
    }
}

impl JobKind for MaxDurationJob {
    const KIND: &'static str = "call.max_duration";

    /// Each step once per call.
    fn dedupe_key(&self) -> Option<String> {
        Some(format!(
            "{}:{}:{}",
            Self::KIND,
            self.step.as_str(),
            self.call_id
        ))
    }
}
/// How long before the limit the parties hear that the call is about to end.
pub const MAX_DURATION_WARNING: Duration = Duration::from_secs(60);
/// What a concurrency refusal suggests waiting: calls end at no predictable time.
pub const CONCURRENCY_RETRY_AFTER_SECS: u64 = 30;

/// Whose cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Organisation,
    User,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Organisation => "organisation",
            Scope::User => "user",
        }
    }
}

/// Why a dial was refused. Each names its rule (`rule()`), which the API returns.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("placing calls in this organisation needs the {} role", required.as_str())]
    Role { required: Role },
    #[error("{number} is a premium-rate number ({description}); the platform never dials it")]
    PremiumRate {
        number: String,
        description: &'static str,
    },
    #[error(
        "{number} is a satellite or international-network number ({description}); the platform never dials it"
    )]
    Satellite {
        number: String,
        description: &'static str,
    },
    #[error("{number} is in {country}, which this organisation may not call (allowed: {})", if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") })]
    DestinationCountry {
        number: String,
        country: String,
        allowed: Vec<String>,
    },
    #[error("the {} already has {limit} calls in progress, its limit", scope.as_str())]
    Concurrent { scope: Scope, limit: i64 },
    #[error("the {} placed {limit} calls in the last minute, its limit", scope.as_str())]
    PerMinute {
        scope: Scope,
        limit: i64,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Quota(Exceeded),
}

impl Refusal {
    /// The rule's stable name (documented in docs/SECURITY.md).
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::Role { .. } => "dial-role",
            Refusal::PremiumRate { .. } => "premium-rate",
            Refusal::Satellite { .. } => "satellite",
            Refusal::DestinationCountry { .. } => "destination-country",
            Refusal::Concurrent {
                scope: Scope::Organisation,
                ..
            } => "org-concurrent-calls",
            Refusal::Concurrent {
                scope: Scope::User, ..
            } => "user-concurrent-calls",
            Refusal::PerMinute {
                scope: Scope::Organisation,
                ..
            } => "org-calls-per-minute",
            Refusal::PerMinute {
                scope: Scope::User, ..
            } => "user-calls-per-minute",
            Refusal::Quota(exceeded) => exceeded.quota.rule(),
        }
    }

    /// A monthly quota is spent until the month turns (402); the other refusals are a
    /// rule (403) or a cap that frees itself (429).
    pub fn payment_required(&self) -> bool {
        matches!(self, Refusal::Quota(e) if e.quota != Quota::ConcurrentCalls)
    }

    /// Caps are temporary (429 with this `Retry-After`); the other rules are not (403).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::Concurrent { .. } => Some(CONCURRENCY_RETRY_AFTER_SECS),
            Refusal::Quota(e) if e.quota == Quota::ConcurrentCalls => {
                Some(CONCURRENCY_RETRY_AFTER_SECS)
            }
            Refusal::PerMinute {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    pub fn limit(&self) -> Option<i64> {
        match self {
            Refusal::Concurrent { limit, .. } | Refusal::PerMinute { limit, .. } => Some(*limit),
            // A spend cap is an amount, not a count: the detail says it with its currency.
            Refusal::Quota(e) if e.quota != Quota::MonthlySpend => Some(e.limit as i64),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for GuardError {
    fn from(error: tokio_postgres::Error) -> Self {
        GuardError::Db(error.into())
    }
}

/// Refuses a number the platform never dials, whoever asks.
pub fn check_prefix(number: &str) -> Result<(), Refusal> {
    match destinations::blocked(number) {
        Some(blocked) if blocked.kind == BlockedKind::PremiumRate => Err(Refusal::PremiumRate {
            number: number.to_owned(),
            description: blocked.description,
        }),
        Some(blocked) => Err(Refusal::Satellite {
            number: number.to_owned(),
            description: blocked.description,
        }),
        None => Ok(()),
    }
}

/// The countries `organisation_id` may call: its own list, or the countries of its numbers;
/// narrowed to `DIAL_PLATFORM_COUNTRIES` when set.
pub async fn allowed_countries(
    client: &impl GenericClient,
    limits: &TelephonyConfig,
    organisation_id: OrgId,
) -> Result<Vec<String>, DbError> {
    let own: Option<Vec<String>> = client
        .query_opt(
            "select dial_countries from organisations where id = $1",
            &[&organisation_id],
        )
        .await?
        .and_then(|row| row.get("dial_countries"));
    let mut countries: BTreeSet<String> = match own {
        Some(list) => list.into_iter().collect(),
        None => client
            .query(
                "select e164 from phone_numbers where organisation_id = $1",
                &[&organisation_id],
            )
            .await?
            .iter()
            .filter_map(|row| destinations::classify(row.get("e164")))
            .map(|d| d.country.to_owned())
            .collect(),
    };
    if let Some(platform) = &limits.platform_countries {
        countries.retain(|c| platform.contains(c));
    }
    Ok(countries.into_iter().collect())
}

/// An organisation's dialing policy as stored: its own allow-list (`None` = the countries of
/// its numbers) and the least role that may dial.
pub async fn policy(
    client: &impl GenericClient,
    organisation_id: OrgId,
) -> Result<Option<(Option<Vec<String>>, Role)>, DbError> {
    Ok(client
        .query_opt(
            "select dial_countries, dial_min_role from organisations where id = $1",
            &[&organisation_id],
        )
        .await?
        .map(|row| {
            (
                row.get("dial_countries"),
                row.try_get("dial_min_role").unwrap_or(Role::Member),
            )
        }))
}

pub async fn set_policy(
    client: &impl GenericClient,
    organisation_id: OrgId,
    countries: Option<&[String]>,
    min_role: Role,
) -> Result<(), DbError> {
    client
        .execute(
            "update organisations set dial_countries = $2, dial_min_role = $3 where id = $1",
            &[&organisation_id, &countries, &min_role],
        )
        .await?;
    Ok(())
}

/// The checks passed: the call may be inserted in [`Permit::transaction`], which holds the
/// organisation's and the user's dial locks until [`Permit::commit`].
pub struct Permit<'a> {
    transaction: Transaction<'a>,
    max_duration: Duration,
}

impl<'a> Permit<'a> {
    pub fn transaction(&self) -> &Transaction<'a> {
        &self.transaction
    }

    /// Schedules the admitted call's warning and hang-up at the maximum duration, then
    /// commits (the call row and its schedule become visible together).
    pub async fn commit(self, call_id: CallId) -> Result<(), DbError> {
        schedule_max_duration(&self.transaction, call_id, self.max_duration).await?;
        self.transaction.commit().await?;
        Ok(())
    }
}

/// Enqueues the warning (a minute before, when the limit is over two minutes) and the
/// hang-up of `call_id`, each once (dedupe keys).
pub async fn schedule_max_duration(
    client: &impl GenericClient,
    call_id: CallId,
    max_duration: Duration,
) -> Result<(), DbError> {
    let now = Utc::now();
    let at = |d: Duration| now + chrono::Duration::from_std(d).unwrap_or_default();
    let step = |step| MaxDurationJob {
        call_id,
        step,
        limit_secs: Some(max_duration.as_secs()),
    };
    if max_duration > 2 * MAX_DURATION_WARNING {
        let warn = step(MaxDurationStep::Warn)
            .envelope()
            .at(at(max_duration - MAX_DURATION_WARNING));
        queue::enqueue(client, &warn).await?;
    }
    let hangup = step(MaxDurationStep::Hangup)
        .envelope()
        .at(at(max_duration));
    queue::enqueue(client, &hangup).await?;
    Ok(())
}

/// Checks a dial by `user_id` in `organisation_id` to every number in `destinations` (one
/// per leg the call will dial). On success the returned permit's transaction holds the
/// locks; insert the call in it and commit.
pub async fn admit<'a>(
    client: &'a mut tokio_postgres::Client,
    limits: &TelephonyConfig,
    quotas: &UsageConfig,
    organisation_id: OrgId,
    user_id: &str,
    destinations: &[&str],
) -> Result<Permit<'a>, GuardError> {
    let transaction = client.transaction().await?;
    // Serialise dials of this organisation and of this user (in that order everywhere, so
    // two dials cannot wait on each other): the counts below then include every call a
    // concurrent dial commits, on any replica.
    transaction
        .execute(
            "select pg_advisory_xact_lock(hashtextextended('callbridge:dial:org:' || $1::uuid::text, 0)),
                    pg_advisory_xact_lock(hashtextextended('callbridge:dial:user:' || $2, 0))",
            &[&organisation_id, &user_id],
        )
        .await?;

    let policy = transaction
        .query_opt(
            "select o.dial_min_role, m.role from organisations o
             left join memberships m on m.organisation_id = o.id and m.user_id = $2
             where o.id = $1",
            &[&organisation_id, &user_id],
        )
        .await?;
    let (min_role, role) = match &policy {
        Some(row) => (
            row.try_get("dial_min_role").unwrap_or(Role::Member),
            row.try_get::<_, Option<Role>>("role").ok().flatten(),
        ),
        None => (Role::Owner, None),
    };
    if role.is_none_or(|role| role < min_role) {
        return Err(Refusal::Role { required: min_role }.into());
    }

    for number in destinations {
        check_prefix(number)?;
    }
    let allowed = allowed_countries(&transaction, limits, organisation_id).await?;
    for number in destinations {
        let country = destinations::classify(number).map_or("unknown", |d| d.country);
        if !allowed.iter().any(|c| c == country) {
            return Err(Refusal::DestinationCountry {
                number: (*number).to_owned(),
                country: country.to_owned(),
                allowed,
            }
            .into());
        }
    }

    let counts = transaction
        .query_one(
            "select
                count(*) filter (where organisation_id = $1 and status not in ('ended', 'failed')) as org_live,
                count(*) filter (where created_by = $2 and status not in ('ended', 'failed')) as user_live,
                count(*) filter (where organisation_id = $1 and created_at > now() - interval '60 seconds') as org_minute,
                count(*) filter (where created_by = $2 and created_at > now() - interval '60 seconds') as user_minute,
                min(created_at) filter (where organisation_id = $1 and created_at > now() - interval '60 seconds') as org_oldest,
                min(created_at) filter (where created_by = $2 and created_at > now() - interval '60 seconds') as user_oldest,
                now() as now
             from calls
             where direction = 'outbound' and (organisation_id = $1 or created_by = $2)
               and (status not in ('ended', 'failed') or created_at > now() - interval '60 seconds')",
            &[&organisation_id, &user_id],
        )
        .await?;
    let (org_live, user_live, org_minute, user_minute): (i64, i64, i64, i64) = (
        counts.get("org_live"),
        counts.get("user_live"),
        counts.get("org_minute"),
        counts.get("user_minute"),
    );
    let now: chrono::DateTime<Utc> = counts.get("now");
    // The window frees a place when its oldest call turns 60 s old.
    let retry_after = |oldest: Option<chrono::DateTime<Utc>>| {
        oldest.map_or(1, |oldest| {
            let age = (now - oldest).num_milliseconds().max(0) as u64;
            60_000u64.saturating_sub(age).div_ceil(1000).max(1)
        })
    };
    if org_live >= limits.max_concurrent_per_org {
        return Err(Refusal::Concurrent {
            scope: Scope::Organisation,
            limit: limits.max_concurrent_per_org,
        }
        .into());
    }
    if user_live >= limits.max_concurrent_per_user {
        return Err(Refusal::Concurrent {
            scope: Scope::User,
            limit: limits.max_concurrent_per_user,
        }
        .into());
    }
    if org_minute >= limits.max_per_minute_per_org {
        return Err(Refusal::PerMinute {
            scope: Scope::Organisation,
            limit: limits.max_per_minute_per_org,
            retry_after_secs: retry_after(counts.get("org_oldest")),
        }
        .into());
    }
    if user_minute >= limits.max_per_minute_per_user {
        return Err(Refusal::PerMinute {
            scope: Scope::User,
            limit: limits.max_per_minute_per_user,
            retry_after_secs: retry_after(counts.get("user_oldest")),
        }
        .into());
    }
    if let Err(exceeded) = quota::check_dial(&transaction, quotas, organisation_id).await? {
        return Err(Refusal::Quota(exceeded).into());
    }
    Ok(Permit {
        transaction,
        max_duration: limits.max_call_duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_have_stable_names_and_caps_say_when_to_retry() {
        let premium = check_prefix("+19005550100").unwrap_err();
        assert_eq!(premium.rule(), "premium-rate");
        assert_eq!(premium.retry_after_secs(), None);
        assert_eq!(
            check_prefix("+881612345678").unwrap_err().rule(),
            "satellite"
        );
        assert!(check_prefix("+14155550123").is_ok());
        let cap = Refusal::PerMinute {
            scope: Scope::User,
            limit: 6,
            retry_after_secs: 12,
        };
        assert_eq!(
            (cap.rule(), cap.retry_after_secs(), cap.limit()),
            ("user-calls-per-minute", Some(12), Some(6))
        );
    }
}
