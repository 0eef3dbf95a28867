//! Quotas per organisation: monthly call minutes, concurrent calls and a monthly spend cap
//! (docs/USAGE.md, docs/adr/0037-over-quota-calls-continue-flagged.md).
//!
//! At dial time [`check_dial`] (called by the toll-fraud guard, under its organisation lock)
//! refuses a call that would go past a quota. During calls the cron runs [`enforce`]: each live
//! call of an organisation at 80 % of a monthly quota gets a `usage.quota_warning` event; at
//! 100 % a `usage.quota_reached` event, and then, if the organisation chose `end`, an
//! announcement and, a few seconds later, the hang-up; if it chose `continue` (the default),
//! the call goes on and is flagged (`usage.over_quota` on the call).

use chrono::{NaiveDate, Utc};
use serde_json::json;

use super::unit;
use crate::config::usage::UsageConfig;
use crate::db::{DbError, GenericClient};
use crate::events;
use crate::ids::{CallId, OrgId};

/// What the parties hear when a call is ended at a quota (Telnyx text-to-speech).
pub const ANNOUNCEMENT: &str =
    "Your organisation has reached its calling limit for this month. This call will now end.";
/// Between the announcement and the hang-up: long enough to hear it.
pub const ANNOUNCEMENT_SECS: u64 = 8;

/// A quota's stable name (the problem's `rule` is `quota-<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    MonthlyMinutes,
    ConcurrentCalls,
    MonthlySpend,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::MonthlyMinutes => "monthly_minutes",
            Quota::ConcurrentCalls => "concurrent_calls",
            Quota::MonthlySpend => "monthly_spend",
        }
    }

    pub fn rule(self) -> &'static str {
        match self {
            Quota::MonthlyMinutes => "quota-monthly-minutes",
            Quota::ConcurrentCalls => "quota-concurrent-calls",
            Quota::MonthlySpend => "quota-monthly-spend",
        }
    }
}

/// An organisation's quotas in effect: its own, else the deployment's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Quotas {
    pub monthly_minutes: Option<i64>,
    pub concurrent_calls: Option<i64>,
    /// In `USAGE_CURRENCY`.
    pub monthly_spend: Option<f64>,
    /// At 100 %: end live calls (true) or let them continue, flagged.
    pub end_at_limit: bool,
}

impl Quotas {
    fn any_monthly(&self) -> bool {
        self.monthly_minutes.is_some() || self.monthly_spend.is_some()
    }
}

pub async fn quotas(
    client: &impl GenericClient,
    config: &UsageConfig,
    organisation_id: OrgId,
) -> Result<Quotas, DbError> {
    let row = client
        .query_opt(
            "select monthly_minutes, concurrent_calls, monthly_spend_cap::float8 as monthly_spend,
                    at_limit
             from usage_quotas where organisation_id = $1",
            &[&organisation_id],
        )
        .await?;
    let positive_i = |v: i64| (v > 0).then_some(v);
    let positive_f = |v: f64| (v > 0.0).then_some(v);
    let (minutes, concurrent, spend, at_limit): (
        Option<i64>,
        Option<i64>,
        Option<f64>,
        Option<String>,
    ) = match &row {
        Some(row) => (
            row.get("monthly_minutes"),
            row.get("concurrent_calls"),
            row.get("monthly_spend"),
            row.get("at_limit"),
        ),
        None => (None, None, None, None),
    };
    // A column set to 0 on the organisation means "no quota", like the defaults' 0.
    Ok(Quotas {
        monthly_minutes: match minutes {
            Some(v) => positive_i(v),
            None => positive_i(config.monthly_minutes),
        },
        concurrent_calls: match concurrent {
            Some(v) => positive_i(v),
            None => positive_i(config.concurrent_calls),
        },
        monthly_spend: match spend {
            Some(v) => positive_f(v),
            None => positive_f(config.monthly_spend),
        },
        end_at_limit: match at_limit.as_deref() {
            Some("end") => true,
            Some(_) => false,
            None => config.end_at_limit,
        },
    })
}

/// This calendar month (UTC) so far, live calls included up to now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MonthToDate {
    pub minutes: f64,
    /// Estimated, in `USAGE_CURRENCY`.
    pub spend: f64,
}

pub async fn month_to_date(
    client: &impl GenericClient,
    config: &UsageConfig,
    organisation_id: OrgId,
) -> Result<MonthToDate, DbError> {
    let rows = client
        .query(
            "select vendor, unit, (occurred_at at time zone 'UTC')::date as day,
                    sum(quantity)::float8 as quantity
             from usage_ledger
             where organisation_id = $1
               and occurred_at >= date_trunc('month', now() at time zone 'UTC') at time zone 'UTC'
             group by 1, 2, 3",
            &[&organisation_id],
        )
        .await?;
    let mut total = MonthToDate::default();
    let price = |vendor: &str, unit: &str, day: NaiveDate, quantity: f64| {
        config
            .prices
            .cost(vendor, unit, day, quantity)
            .into_iter()
            .filter(|(currency, _)| *currency == config.currency)
            .map(|(_, amount)| amount)
            .sum::<f64>()
    };
    for row in rows {
        let (vendor, unit_name, day, quantity): (String, String, NaiveDate, f64) = (
            row.get("vendor"),
            row.get("unit"),
            row.get("day"),
            row.get("quantity"),
        );
        if vendor == unit::TELNYX && unit_name == unit::CALL_SECONDS {
            total.minutes += quantity / 60.0;
        }
        total.spend += price(&vendor, &unit_name, day, quantity);
    }
    // Legs answered and not ended yet: their seconds so far (the ledger has them at hang-up).
    let live: f64 = client
        .query_one(
            "select coalesce(sum(extract(epoch from now() - l.answered_at)), 0)::float8 as seconds
             from call_legs l join calls c on c.id = l.call_id
             where c.organisation_id = $1 and l.answered_at is not null and l.ended_at is null
               and l.status not in ('ended', 'failed')",
            &[&organisation_id],
        )
        .await?
        .get("seconds");
    total.minutes += live / 60.0;
    total.spend += price(
        unit::TELNYX,
        unit::CALL_SECONDS,
        Utc::now().date_naive(),
        live,
    );
    Ok(total)
}

/// A quota a new call would go past.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub quota: Quota,
    pub limit: f64,
    pub used: f64,
    pub currency: Option<String>,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.quota {
            Quota::MonthlyMinutes => write!(
                f,
                "the organisation has used {:.1} of its {} call minutes this month",
                self.used, self.limit
            ),
            Quota::ConcurrentCalls => write!(
                f,
                "the organisation already has {} calls in progress, its quota",
                self.used
            ),
            Quota::MonthlySpend => write!(
                f,
                "the organisation has spent an estimated {:.2} of its {:.2} {} this month",
                self.used,
                self.limit,
                self.currency.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// Whether `organisation_id` may place another call.
pub async fn check_dial(
    client: &impl GenericClient,
    config: &UsageConfig,
    organisation_id: OrgId,
) -> Result<Result<(), Exceeded>, DbError> {
    let quotas = quotas(client, config, organisation_id).await?;
    if let Some(limit) = quotas.concurrent_calls {
        let live: i64 = client
            .query_one(
                "select count(*) from calls
                 where organisation_id = $1 and status not in ('ended', 'failed')",
                &[&organisation_id],
            )
            .await?
            .get("count");
        if live >= limit {
            return Ok(Err(Exceeded {
                quota: Quota::ConcurrentCalls,
                limit: limit as f64,
                used: live as f64,
                currency: None,
            }));
        }
    }
    if !quotas.any_monthly() {
        return Ok(Ok(()));
    }
    let used = month_to_date(client, config, organisation_id).await?;
    if let Some(limit) = quotas.monthly_minutes
        && used.minutes >= limit as f64
    {
        return Ok(Err(Exceeded {
            quota: Quota::MonthlyMinutes,
            limit: limit as f64,
            used: used.minutes,
            currency: None,
        }));
    }
    if let Some(limit) = quotas.monthly_spend
        && used.spend >= limit
    {
        return Ok(Err(Exceeded {
            quota: Quota::MonthlySpend,
            limit,
            used: used.spend,
            currency: Some(config.currency.clone()),
        }));
    }
    Ok(Ok(()))
}

/// What one [`enforce`] pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    pub warned: usize,
    pub reached: usize,
    /// Calls whose parties must now hear [`ANNOUNCEMENT`] (`at_limit = end`, just reached).
    pub announce: Vec<(CallId, Quota)>,
    /// Calls whose announcement had its [`ANNOUNCEMENT_SECS`]: hang them up, then
    /// [`hung_up`].
    pub hang_up: Vec<(CallId, Quota)>,
}

/// Checks the monthly quotas of every organisation with answered calls: writes the 80 % and
/// 100 % marks and their call events (once per call), and says which calls to announce to
/// and hang up. The caller (the cron) sends those Telnyx commands.
pub async fn enforce(
    client: &impl GenericClient,
    config: &UsageConfig,
) -> Result<Enforced, DbError> {
    let mut done = Enforced::default();
    let organisations: Vec<OrgId> = client
        .query(
            "select distinct organisation_id from calls where status = 'answered'",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get("organisation_id"))
        .collect();
    for organisation_id in organisations {
        let quotas = quotas(client, config, organisation_id).await?;
        if !quotas.any_monthly() {
            continue;
        }
        let used = month_to_date(client, config, organisation_id).await?;
        let levels: Vec<(Quota, f64, f64)> = [
            (
                Quota::MonthlyMinutes,
                used.minutes,
                quotas.monthly_minutes.map(|m| m as f64),
            ),
            (Quota::MonthlySpend, used.spend, quotas.monthly_spend),
        ]
        .into_iter()
        .filter_map(|(quota, used, limit)| limit.map(|limit| (quota, used, limit)))
        .filter(|(_, used, limit)| *used >= 0.8 * limit)
        .collect();
        if levels.is_empty() {
            continue;
        }
        let calls: Vec<CallId> = client
            .query(
                "select id from calls where organisation_id = $1 and status = 'answered'",
                &[&organisation_id],
            )
            .await?
            .iter()
            .map(|row| row.get("id"))
            .collect();
        for call_id in calls {
            for &(quota, used, limit) in &levels {
                let level = if used >= limit { 100 } else { 80 };
                let marks: &[i32] = if level == 100 { &[80, 100] } else { &[80] };
                for &mark_level in marks {
                    let first = client
                        .execute(
                            "insert into usage_quota_marks (organisation_id, call_id, quota, level)
                             values ($1, $2, $3, $4) on conflict do nothing",
                            &[&organisation_id, &call_id, &quota.as_str(), &mark_level],
                        )
                        .await?
                        == 1;
                    if !first {
                        continue;
                    }
                    let action = match (mark_level, quotas.end_at_limit) {
                        (80, _) => "none",
                        (_, true) => "end",
                        (_, false) => "continue",
                    };
                    let data = json!({
                        "quota": quota.as_str(), "used": used, "limit": limit,
                        "percent": mark_level, "action": action,
                    });
                    let kind = if mark_level < 100 {
                        done.warned += 1;
                        "usage.quota_warning"
                    } else {
                        done.reached += 1;
                        "usage.quota_reached"
                    };
                    events::append(client, call_id, kind, data, Utc::now()).await?;
                    if mark_level == 100 && quotas.end_at_limit {
                        done.announce.push((call_id, quota));
                    }
                }
                if level == 100
                    && quotas.end_at_limit
                    && hang_up_due(client, call_id, quota).await?
                {
                    done.hang_up.push((call_id, quota));
                }
            }
        }
    }
    Ok(done)
}

/// Whether `call_id`'s announcement at `quota` had [`ANNOUNCEMENT_SECS`] to play and the call
/// was not hung up for it yet.
async fn hang_up_due(
    client: &impl GenericClient,
    call_id: CallId,
    quota: Quota,
) -> Result<bool, DbError> {
    Ok(client
        .query_opt(
            "select 1 from usage_quota_marks
             where call_id = $1 and quota = $2 and level = 100 and hangup_at is null
               and at <= now() - make_interval(secs => $3)",
            &[&call_id, &quota.as_str(), &(ANNOUNCEMENT_SECS as f64)],
        )
        .await?
        .is_some())
}

/// Records that `call_id` was hung up at `quota` (after the Telnyx commands succeeded, so a
/// failed hang-up is retried by the next pass); the `usage.quota_ended` event once.
pub async fn hung_up(
    client: &impl GenericClient,
    call_id: CallId,
    quota: Quota,
) -> Result<bool, DbError> {
    let first = client
        .execute(
            "update usage_quota_marks set hangup_at = now()
             where call_id = $1 and quota = $2 and level = 100 and hangup_at is null",
            &[&call_id, &quota.as_str()],
        )
        .await?
        == 1;
    if first {
        events::append(
            client,
            call_id,
            "usage.quota_ended",
            json!({"quota": quota.as_str()}),
            Utc::now(),
        )
        .await?;
        tracing::info!(%call_id, quota = quota.as_str(), "call ended at its organisation's quota");
    }
    Ok(first)
}

/// One column of an organisation's own quotas as an operator sets it (`callbridge quotas set`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    /// Leave the column as it is.
    Keep,
    /// Back to the deployment's default (`USAGE_DEFAULT_*`): the column becomes null.
    Default,
    /// This value (`0`: no quota).
    To(T),
}

impl<T: std::str::FromStr> std::str::FromStr for Setting<T> {
    type Err = String;

    /// `default`, or a value.
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "default" {
            return Ok(Setting::Default);
        }
        text.parse()
            .map(Setting::To)
            .map_err(|_| format!("{text:?} is neither a value nor `default`"))
    }
}

impl<T: Copy> Setting<T> {
    fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Setting::Keep => current,
            Setting::Default => None,
            Setting::To(value) => Some(value),
        }
    }
}

/// An operator's change to one organisation's quotas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaChange {
    pub monthly_minutes: Setting<i64>,
    pub concurrent_calls: Setting<i64>,
    /// In `USAGE_CURRENCY`.
    pub monthly_spend_cap: Setting<f64>,
    /// `true`: end live calls at 100 %; `false`: let them continue, flagged.
    pub end_at_limit: Setting<bool>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no organisation {0}")]
    NoSuchOrganisation(OrgId),
    #[error("{0} must be 0 (no quota) or more")]
    Negative(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Applies `change` to `organisation_id`'s own quotas in one statement (the columns it keeps
/// are read and written under the row's lock), then answers the quotas now in effect. Checks
/// at dial time and in the cron read the row afresh, so the change holds from the next call
/// placed and the next cron tick.
pub async fn set(
    client: &impl GenericClient,
    config: &UsageConfig,
    organisation_id: OrgId,
    change: QuotaChange,
) -> Result<Quotas, ChangeError> {
    let negative_i = |s: Setting<i64>| matches!(s, Setting::To(v) if v < 0);
    if negative_i(change.monthly_minutes) {
        return Err(ChangeError::Negative("monthly minutes"));
    }
    if negative_i(change.concurrent_calls) {
        return Err(ChangeError::Negative("concurrent calls"));
    }
    if matches!(change.monthly_spend_cap, Setting::To(v) if !(v.is_finite() && v >= 0.0)) {
        return Err(ChangeError::Negative("the monthly spend cap"));
    }
    let known = client
        .query_opt(
            "select 1 from organisations where id = $1",
            &[&organisation_id],
        )
        .await
        .map_err(DbError::from)?;
    if known.is_none() {
        return Err(ChangeError::NoSuchOrganisation(organisation_id));
    }
    // "Keep" is a flag per column, so one upsert serves every combination.
    let at_limit = match change.end_at_limit.apply(None) {
        Some(true) => Some("end"),
        Some(false) => Some("continue"),
        None => None,
    };
    client
        .execute(
            "insert into usage_quotas (organisation_id, monthly_minutes, concurrent_calls,
                                       monthly_spend_cap, at_limit)
             values ($1, $2, $3, $4::float8::numeric, $5)
             on conflict (organisation_id) do update set
               monthly_minutes = case when $6 then usage_quotas.monthly_minutes else excluded.monthly_minutes end,
               concurrent_calls = case when $7 then usage_quotas.concurrent_calls else excluded.concurrent_calls end,
               monthly_spend_cap = case when $8 then usage_quotas.monthly_spend_cap else excluded.monthly_spend_cap end,
               at_limit = case when $9 then usage_quotas.at_limit else excluded.at_limit end,
               updated_at = now()",
            &[
                &organisation_id,
                &change.monthly_minutes.apply(None),
                &change.concurrent_calls.apply(None),
                &change.monthly_spend_cap.apply(None),
                &at_limit,
                &(change.monthly_minutes == Setting::Keep),
                &(change.concurrent_calls == Setting::Keep),
                &(change.monthly_spend_cap == Setting::Keep),
                &(change.end_at_limit == Setting::Keep),
            ],
        )
        .await
        .map_err(DbError::from)?;
    Ok(quotas(client, config, organisation_id).await?)
}
