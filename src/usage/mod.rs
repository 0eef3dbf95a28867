//! The usage ledger: what each vendor bills us for, one append-only row per source event,
//! priced with the configured table; and the views of it per call and per organisation
//! (docs/USAGE.md).
//!
//! Providers return the figures they were billed for (a `Termination`'s seconds, a
//! response's tokens); the domain code that called them turns those into [`Entry`]s. The
//! media path never writes here per frame: a session's seconds are counted in memory and handed
//! to the replica's [`Recorder`] when it ends, which writes a second's entries in one
//! statement off the task that reads frames.

pub mod quota;
pub mod reconcile;
mod recorder;

pub use recorder::Recorder;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::usage::PriceTable;
use crate::db::{DbError, GenericClient};
use crate::ids::{CallId, LegId, OrgId};

/// Vendors and the units they bill (the ledger's `vendor`/`unit`; docs/USAGE.md).
pub mod unit {
    pub const TELNYX: &str = "telnyx";
    pub const ASSEMBLYAI: &str = "assemblyai";
    pub const DEEPL: &str = "deepl";
    pub const OPENAI: &str = "openai";
    pub const ELEVENLABS: &str = "elevenlabs";
    /// The translation cache: characters served without a vendor, priced at zero.
    pub const CACHE: &str = "cache";
    pub const R2: &str = "r2";

    pub const CALL_SECONDS: &str = "call_seconds";
    pub const STREAMING_SECONDS: &str = "streaming_seconds";
    pub const ASYNC_AUDIO_SECONDS: &str = "async_audio_seconds";
    pub const CHARACTERS: &str = "characters";
    pub const PROMPT_TOKENS: &str = "prompt_tokens";
    pub const COMPLETION_TOKENS: &str = "completion_tokens";
    pub const BYTE_DAYS: &str = "byte_days";
    pub const DOWNLOADS: &str = "downloads";
    /// A browser's single-use token for a session straight to AssemblyAI: its seconds pass
    /// without us, so the token is what we can count.
    pub const DIRECT_SESSIONS: &str = "direct_sessions";
}

/// Whose the units are: a call's (its organisation and placer are looked up), or named.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    Call {
        call_id: CallId,
        leg_id: Option<LegId>,
    },
    Organisation {
        organisation_id: OrgId,
        user_id: Option<String>,
    },
    /// An organisation's object (a recording) that may belong to a call.
    Object {
        organisation_id: OrgId,
        call_id: Option<CallId>,
    },
}

/// One ledger row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub owner: Owner,
    pub vendor: &'static str,
    pub unit: &'static str,
    pub quantity: f64,
    /// The source event's stable name: the row is written once per key.
    pub source_key: String,
    pub occurred_at: DateTime<Utc>,
    pub metadata: Value,
}

impl Entry {
    pub fn for_call(
        call_id: CallId,
        vendor: &'static str,
        unit: &'static str,
        quantity: f64,
        source_key: String,
    ) -> Self {
        Self {
            owner: Owner::Call {
                call_id,
                leg_id: None,
            },
            vendor,
            unit,
            quantity,
            source_key,
            occurred_at: Utc::now(),
            metadata: Value::Object(Default::default()),
        }
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// Writes `entries`, each once (a taken `source_key` writes nothing); returns how many rows
/// are new. Counts new units in `usage_units_total{vendor,unit}` (thousandths:
/// `usage_milliunits_total`, since seconds are fractional).
pub async fn record(client: &impl GenericClient, entries: &[Entry]) -> Result<u64, DbError> {
    record_with(client, RECORD_SQL, entries).await
}

/// All entries in one statement (the replica's writer batches a second of them); a call's
/// entry takes the call's organisation and placer.
pub(crate) const RECORD_SQL: &str =
    "insert into usage_ledger (organisation_id, call_id, leg_id, user_id, vendor, unit,
                                   quantity, source_key, occurred_at, metadata)
     select coalesce(e.organisation_id, c.organisation_id), e.call_id, e.leg_id,
            coalesce(e.user_id, c.created_by), e.vendor, e.unit, e.quantity::numeric,
            e.source_key, e.occurred_at, e.metadata
     from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                 $7::float8[], $8::text[], $9::timestamptz[], $10::jsonb[])
          as e (organisation_id, call_id, leg_id, user_id, vendor, unit, quantity,
                source_key, occurred_at, metadata)
     left join calls c on c.id = e.call_id
     where coalesce(e.organisation_id, c.organisation_id) is not null
     on conflict (source_key) do nothing
     returning vendor, unit, quantity::float8 as quantity";

/// [`record`] through `statement` (the SQL, or the writer's prepared copy of it).
pub(crate) async fn record_with<T: ?Sized + tokio_postgres::ToStatement + Sync + Send>(
    client: &impl GenericClient,
    statement: &T,
    entries: &[Entry],
) -> Result<u64, DbError> {
    let n = entries.len();
    let (mut organisations, mut calls, mut legs, mut users) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut vendors, mut units, mut quantities, mut keys, mut times, mut metadata) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for entry in entries {
        if !(entry.quantity.is_finite() && entry.quantity >= 0.0) {
            tracing::warn!(key = %entry.source_key, quantity = entry.quantity, "usage quantity out of range; not recorded");
            continue;
        }
        let (organisation_id, call_id, leg_id, user_id) = match &entry.owner {
            Owner::Call { call_id, leg_id } => (None, Some(*call_id), *leg_id, None),
            Owner::Organisation {
                organisation_id,
                user_id,
            } => (Some(*organisation_id), None, None, user_id.as_deref()),
            Owner::Object {
                organisation_id,
                call_id,
            } => (Some(*organisation_id), *call_id, None, None),
        };
        organisations.push(organisation_id);
        calls.push(call_id);
        legs.push(leg_id);
        users.push(user_id);
        vendors.push(entry.vendor);
        units.push(entry.unit);
        quantities.push(entry.quantity);
        keys.push(entry.source_key.as_str());
        times.push(entry.occurred_at);
        metadata.push(&entry.metadata);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let inserted = client
        .query(
            statement,
            &[
                &organisations,
                &calls,
                &legs,
                &users,
                &vendors,
                &units,
                &quantities,
                &keys,
                &times,
                &metadata,
            ],
        )
        .await?;
    for row in &inserted {
        let (vendor, unit): (&str, &str) = (row.get("vendor"), row.get("unit"));
        let quantity: f64 = row.get("quantity");
        let labels = [("vendor", vendor.to_owned()), ("unit", unit.to_owned())];
        metrics::counter!("usage_records_total", &labels).increment(1);
        metrics::counter!("usage_milliunits_total", &labels)
            .increment((quantity * 1000.0).round() as u64);
    }
    Ok(inserted.len() as u64)
}

/// An amount in one currency.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Money {
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
    pub amount: f64,
}

/// Units of one kind and what they cost.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UnitUsage {
    /// `call_seconds`, `streaming_seconds`, `characters`, … (docs/USAGE.md).
    pub unit: String,
    pub quantity: f64,
    /// Estimated from the price table at the rate of each day; empty when the unit has no
    /// price.
    pub estimated_cost: Vec<Money>,
}

/// One vendor's units on a call.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VendorUsage {
    /// `telnyx`, `assemblyai`, `deepl`, `openai`, `elevenlabs`, `cache`, `r2`.
    pub vendor: String,
    pub units: Vec<UnitUsage>,
    pub estimated_cost: Vec<Money>,
}

/// What a call used, per vendor, and its estimated cost.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CallUsage {
    pub vendors: Vec<VendorUsage>,
    pub estimated_cost: Vec<Money>,
    /// Monthly quotas this call went past and continued (`monthly_minutes`,
    /// `monthly_spend`); see docs/USAGE.md.
    pub over_quota: Vec<String>,
}

fn add(into: &mut Vec<Money>, costs: &[(String, f64)]) {
    for (currency, amount) in costs {
        match into.iter_mut().find(|m| m.currency == *currency) {
            Some(money) => money.amount += amount,
            None => into.push(Money {
                currency: currency.clone(),
                amount: *amount,
            }),
        }
    }
}

/// Quantity per (key, vendor, unit, day): what pricing needs.
type Buckets = BTreeMap<(String, String, String), Vec<(NaiveDate, f64)>>;

fn priced(
    prices: &PriceTable,
    vendor: &str,
    unit: &str,
    days: &[(NaiveDate, f64)],
) -> (f64, Vec<Money>) {
    let mut cost = Vec::new();
    let mut quantity = 0.0;
    for (day, q) in days {
        quantity += q;
        add(&mut cost, &prices.cost(vendor, unit, *day, *q));
    }
    (quantity, cost)
}

/// A call's usage in `organisation_id` (nothing for another organisation's call).
pub async fn for_call(
    client: &impl GenericClient,
    prices: &PriceTable,
    organisation_id: OrgId,
    call_id: CallId,
) -> Result<CallUsage, DbError> {
    let rows = client
        .query(
            "select vendor, unit, (occurred_at at time zone 'UTC')::date as day,
                    sum(quantity)::float8 as quantity
             from usage_ledger where organisation_id = $1 and call_id = $2
             group by 1, 2, 3 order by 1, 2, 3",
            &[&organisation_id, &call_id],
        )
        .await?;
    let mut buckets: Buckets = BTreeMap::new();
    for row in rows {
        buckets
            .entry((String::new(), row.get("vendor"), row.get("unit")))
            .or_default()
            .push((row.get("day"), row.get("quantity")));
    }
    let mut vendors: Vec<VendorUsage> = Vec::new();
    let mut total = Vec::new();
    for ((_, vendor, unit), days) in buckets {
        let (quantity, cost) = priced(prices, &vendor, &unit, &days);
        let costs: Vec<(String, f64)> = cost
            .iter()
            .map(|m| (m.currency.clone(), m.amount))
            .collect();
        add(&mut total, &costs);
        let line = UnitUsage {
            unit,
            quantity,
            estimated_cost: cost,
        };
        match vendors.iter_mut().find(|v| v.vendor == vendor) {
            Some(existing) => {
                add(&mut existing.estimated_cost, &costs);
                existing.units.push(line);
            }
            None => vendors.push(VendorUsage {
                vendor,
                estimated_cost: line.estimated_cost.clone(),
                units: vec![line],
            }),
        }
    }
    let over_quota = client
        .query(
            "select quota from usage_quota_marks
             where organisation_id = $1 and call_id = $2 and level = 100 order by quota",
            &[&organisation_id, &call_id],
        )
        .await?
        .iter()
        .map(|row| row.get("quota"))
        .collect();
    Ok(CallUsage {
        vendors,
        estimated_cost: total,
        over_quota,
    })
}

/// How `GET /api/usage` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Call,
    User,
}

/// One line of an organisation's usage report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReportLine {
    /// The day (`YYYY-MM-DD`, UTC), the call id or the user id, per `group_by`; empty for
    /// units spent on no call (or by no user).
    pub group: String,
    pub vendor: String,
    pub unit: String,
    pub quantity: f64,
    pub estimated_cost: Vec<Money>,
}

/// An organisation's usage between `from` (inclusive) and `to` (exclusive).
pub async fn report(
    client: &impl GenericClient,
    prices: &PriceTable,
    organisation_id: OrgId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group_by: GroupBy,
) -> Result<Vec<ReportLine>, DbError> {
    let key = match group_by {
        GroupBy::Day => "to_char((occurred_at at time zone 'UTC')::date, 'YYYY-MM-DD')",
        GroupBy::Call => "coalesce(call_id::text, '')",
        GroupBy::User => "coalesce(user_id, '')",
    };
    let rows = client
        .query(
            &format!(
                "select {key} as group_key, vendor, unit,
                        (occurred_at at time zone 'UTC')::date as day, sum(quantity)::float8 as quantity
                 from usage_ledger
                 where organisation_id = $1 and occurred_at >= $2 and occurred_at < $3
                 group by 1, 2, 3, 4 order by 1, 2, 3, 4"
            ),
            &[&organisation_id, &from, &to],
        )
        .await?;
    let mut buckets: Buckets = BTreeMap::new();
    for row in rows {
        buckets
            .entry((row.get("group_key"), row.get("vendor"), row.get("unit")))
            .or_default()
            .push((row.get("day"), row.get("quantity")));
    }
    Ok(buckets
        .into_iter()
        .map(|((group, vendor, unit), days)| {
            let (quantity, estimated_cost) = priced(prices, &vendor, &unit, &days);
            ReportLine {
                group,
                vendor,
                unit,
                quantity,
                estimated_cost,
            }
        })
        .collect())
}

/// The report as CSV: `group,vendor,unit,quantity,currency,estimated_cost`, one line per
/// currency priced (an unpriced unit: one line with both empty).
pub fn to_csv(lines: &[ReportLine]) -> String {
    let mut out = String::from("group,vendor,unit,quantity,currency,estimated_cost\n");
    let field = |text: &str| {
        // Our values never hold commas or quotes, but a user id comes from the frontend.
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_owned()
        }
    };
    for line in lines {
        let prefix = format!(
            "{},{},{},{}",
            field(&line.group),
            field(&line.vendor),
            field(&line.unit),
            line.quantity
        );
        if line.estimated_cost.is_empty() {
            let _ = writeln!(out, "{prefix},,");
        }
        for money in &line.estimated_cost {
            let _ = writeln!(out, "{prefix},{},{:.6}", money.currency, money.amount);
        }
    }
    out
}

/// Telephony seconds of `call_id`'s legs that have been answered and have ended (answer →
/// hang-up, from the webhooks), each written once per leg. Called with every lifecycle
/// event's transaction; a leg still live writes nothing yet.
pub async fn record_telephony(
    client: &impl GenericClient,
    call_id: CallId,
) -> Result<u64, DbError> {
    let rows = client
        .query(
            "select l.id as leg_id, l.role, c.direction,
                    extract(epoch from (coalesce(case when c.interpreted then l.ended_at else c.ended_at end, now())
                                        - case when c.interpreted then l.answered_at else c.answered_at end))::float8
                        as seconds,
                    case when c.interpreted then l.ended_at else c.ended_at end as ended_at
             from calls c join call_legs l on l.call_id = c.id
             where c.id = $1
               and (case when c.interpreted then l.answered_at else c.answered_at end) is not null
               and (case when c.interpreted then l.ended_at else c.ended_at end) is not null",
            &[&call_id],
        )
        .await?;
    let entries: Vec<Entry> = rows
        .iter()
        .map(|row| {
            let leg_id: LegId = row.get("leg_id");
            let role: String = row.get("role");
            let direction: String = row.get("direction");
            Entry {
                owner: Owner::Call {
                    call_id,
                    leg_id: Some(leg_id),
                },
                vendor: unit::TELNYX,
                unit: unit::CALL_SECONDS,
                quantity: row.get::<_, f64>("seconds").max(0.0),
                source_key: format!("telnyx:call_seconds:{leg_id}"),
                occurred_at: row.get("ended_at"),
                metadata: serde_json::json!({"leg": role, "direction": direction}),
            }
        })
        .collect();
    record(client, &entries).await
}

/// The ledger rows of one translation: DeepL characters, OpenAI tokens, and the characters
/// the cache answered (zero-cost). `key` names the source event (an utterance, a request);
/// each row's key is `key` plus its vendor and unit.
pub fn translation_entries(
    owner: Owner,
    key: &str,
    usage: &crate::translate::TranslationUsage,
    metadata: Value,
) -> Vec<Entry> {
    [
        (unit::DEEPL, unit::CHARACTERS, usage.deepl_characters),
        (
            unit::OPENAI,
            unit::PROMPT_TOKENS,
            usage.openai_prompt_tokens,
        ),
        (
            unit::OPENAI,
            unit::COMPLETION_TOKENS,
            usage.openai_completion_tokens,
        ),
        (unit::CACHE, unit::CHARACTERS, usage.cached_characters),
    ]
    .into_iter()
    .filter(|(_, _, quantity)| *quantity > 0)
    .map(|(vendor, unit, quantity)| Entry {
        owner: owner.clone(),
        vendor,
        unit,
        quantity: quantity as f64,
        source_key: format!("{vendor}:{unit}:{key}"),
        occurred_at: Utc::now(),
        metadata: metadata.clone(),
    })
    .collect()
}

/// Records what a `POST /api/translate` cost, off the request's path (the answer does not
/// wait for the ledger). Each request is its own source event.
pub fn record_translation_request(
    recorder: &Recorder,
    organisation_id: OrgId,
    user_id: &str,
    usage: &crate::translate::TranslationUsage,
    target_language: &str,
) {
    let owner = Owner::Organisation {
        organisation_id,
        user_id: Some(user_id.to_owned()),
    };
    let key = format!("request:{}", Uuid::now_v7());
    let metadata = serde_json::json!({"target_language": target_language});
    recorder.record(translation_entries(owner, &key, usage, metadata));
}

/// A token issued for a browser's own AssemblyAI session (`POST /api/realtime/token`). The
/// session's seconds are billed to our key but never pass through us, so the ledger counts the
/// token (one per session: tokens are single-use); its price, if any, is the operator's flat
/// estimate per session (docs/USAGE.md).
pub fn direct_session_entry(
    organisation_id: OrgId,
    user_id: &str,
    speech_model: &str,
    expires_in_seconds: u32,
) -> Entry {
    Entry {
        owner: Owner::Organisation {
            organisation_id,
            user_id: Some(user_id.to_owned()),
        },
        vendor: unit::ASSEMBLYAI,
        unit: unit::DIRECT_SESSIONS,
        quantity: 1.0,
        source_key: format!("assemblyai:direct_sessions:{}", Uuid::now_v7()),
        occurred_at: Utc::now(),
        metadata: serde_json::json!({
            "model": speech_model,
            "expires_in_seconds": expires_in_seconds,
        }),
    }
}

/// A presigned GET issued for a recording version (R2 bills the read it allows).
pub fn download_entry(
    organisation_id: OrgId,
    user_id: &str,
    recording_id: Uuid,
    version: i32,
) -> Entry {
    Entry {
        owner: Owner::Organisation {
            organisation_id,
            user_id: Some(user_id.to_owned()),
        },
        vendor: unit::R2,
        unit: unit::DOWNLOADS,
        quantity: 1.0,
        source_key: format!("r2:downloads:{}", Uuid::now_v7()),
        occurred_at: Utc::now(),
        metadata: serde_json::json!({"recording_id": recording_id, "version": version}),
    }
}

/// Storage over time: each stored recording version's bytes for every UTC day it was kept
/// through, up to yesterday, once per version and day (`byte_days`). Run by the cron; a day
/// missed (no tick) is caught up on the next, up to `CATCH_UP_DAYS` back.
pub async fn record_storage_days(client: &impl GenericClient) -> Result<u64, DbError> {
    const CATCH_UP_DAYS: i32 = 7;
    let written = client
        .execute(
            "insert into usage_ledger (organisation_id, call_id, vendor, unit, quantity, source_key, occurred_at, metadata)
             select r.organisation_id, r.call_id, 'r2', 'byte_days', v.size_bytes,
                    'r2:byte_days:' || v.recording_id || ':' || v.version || ':' || to_char(d.day, 'YYYY-MM-DD'),
                    d.day at time zone 'UTC',
                    jsonb_build_object('recording_id', v.recording_id, 'version', v.version)
             from recording_versions v
             join recordings r on r.id = v.recording_id
             cross join lateral generate_series(
                 greatest((coalesce(v.stored_at, v.created_at) at time zone 'UTC')::date,
                          (now() at time zone 'UTC')::date - $1::int)::timestamp,
                 ((now() at time zone 'UTC')::date - 1)::timestamp, interval '1 day') as d (day)
             where v.status = 'stored' and v.size_bytes is not null
             on conflict (source_key) do nothing",
            &[&CATCH_UP_DAYS],
        )
        .await?;
    if written > 0 {
        metrics::counter!("usage_records_total", "vendor" => unit::R2, "unit" => unit::BYTE_DAYS)
            .increment(written);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_line_per_currency_and_quotes_what_needs_it() {
        let lines = vec![
            ReportLine {
                group: "user,1".into(),
                vendor: "deepl".into(),
                unit: "characters".into(),
                quantity: 40.0,
                estimated_cost: vec![Money {
                    currency: "USD".into(),
                    amount: 0.001,
                }],
            },
            ReportLine {
                group: "2026-12-06".into(),
                vendor: "r2".into(),
                unit: "mystery".into(),
                quantity: 1.5,
                estimated_cost: vec![],
            },
        ];
        assert_eq!(
            to_csv(&lines),
            "group,vendor,unit,quantity,currency,estimated_cost\n\
             \"user,1\",deepl,characters,40,USD,0.001000\n\
             2026-12-06,r2,mystery,1.5,,\n"
        );
    }
}
