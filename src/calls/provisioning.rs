//! Where an organisation's phone numbers come from: the platform's Telnyx account
//! (docs/adr/0015-phone-numbers-from-the-telnyx-account.md). A number is either one the
//! account already holds on the platform's connection and no organisation has (`account`),
//! or one Telnyx offers for sale, ordered onto that connection (`order`). Anything else is
//! refused with one answer, whether another organisation holds it or nobody can have it.

use serde::Serialize;
use utoipa::ToSchema;

use super::destinations;
use super::{NumberOrigin, PhoneNumber};
use crate::config::TelephonyConfig;
use crate::db::{Db, DbError};
use crate::ids::OrgId;
use crate::providers::telnyx::{AccountNumber, NumberSearch, TelnyxClient, TelnyxError};

/// What a search may ask for.
#[derive(Debug, Clone, Default)]
pub struct AvailableQuery {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    /// NANP area code (3 digits).
    pub area_code: Option<String>,
    /// Digits the national number must contain.
    pub contains: Option<String>,
    pub limit: usize,
}

/// A number the organisation could have now.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OfferedNumber {
    /// E.164; pass it to `POST /api/phone-numbers`.
    #[schema(example = "+14155550100")]
    pub phone_number: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    pub locality: Option<String>,
    /// `account`: already the platform's, assigned at no extra cost; `order`: bought from
    /// Telnyx on claim.
    #[schema(example = "order")]
    pub source: String,
    /// Decimal strings as Telnyx quotes them; absent for `account` numbers.
    pub upfront_cost: Option<String>,
    pub monthly_cost: Option<String>,
    pub currency: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Neither held unassigned by the account nor for sale (or another organisation's):
    /// deliberately one case.
    #[error(
        "that number is not available; search GET /api/phone-numbers/available for one that is"
    )]
    Unavailable,
    #[error("this organisation already holds that number")]
    AlreadyYours,
    #[error("this organisation holds {limit} phone numbers, its limit")]
    LimitReached { limit: i64 },
    #[error(transparent)]
    Telnyx(#[from] TelnyxError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ClaimError {
    fn from(error: tokio_postgres::Error) -> Self {
        ClaimError::Db(error.into())
    }
}

/// Held by the account, active, and on the platform's connection (numbers on another
/// connection belong to something else on the account, e.g. another environment).
fn is_pool_number(number: &AccountNumber, telnyx: &TelnyxClient) -> bool {
    number.status == "active" && number.connection_id.as_deref() == Some(telnyx.connection_id())
}

fn matches_query(e164: &str, query: &AvailableQuery) -> bool {
    let Some((country, area, rest)) = destinations::search_parts(e164) else {
        return false;
    };
    country == query.country
        && query
            .area_code
            .as_deref()
            .is_none_or(|code| area == Some(code))
        && query
            .contains
            .as_deref()
            .is_none_or(|digits| rest.contains(digits) || area.is_some_and(|a| a.contains(digits)))
}

/// Numbers an organisation could claim: the account's unassigned pool numbers first, then
/// Telnyx's offers. Numbers other organisations hold never appear.
pub async fn search(
    db: &Db,
    telnyx: &TelnyxClient,
    query: &AvailableQuery,
) -> Result<Vec<OfferedNumber>, ClaimError> {
    let pool = telnyx
        .account_numbers(None, Some(telnyx.connection_id()))
        .await?;
    let candidates: Vec<String> = pool
        .iter()
        .filter(|n| is_pool_number(n, telnyx) && matches_query(&n.phone_number, query))
        .map(|n| n.phone_number.clone())
        .collect();
    let client = db.client().await?;
    let taken: Vec<String> = client
        .query(
            "select e164 from phone_numbers where e164 = any($1)",
            &[&candidates],
        )
        .await?
        .iter()
        .map(|row| row.get("e164"))
        .collect();
    drop(client);
    let mut offers: Vec<OfferedNumber> = candidates
        .into_iter()
        .filter(|n| !taken.contains(n))
        .map(|phone_number| OfferedNumber {
            locality: None,
            country: query.country.clone(),
            source: "account".into(),
            upfront_cost: None,
            monthly_cost: None,
            currency: None,
            phone_number,
        })
        .take(query.limit)
        .collect();
    if offers.len() < query.limit {
        let market = telnyx
            .search_available(&NumberSearch {
                country: &query.country,
                national_destination_code: query.area_code.as_deref(),
                contains: query.contains.as_deref(),
                limit: (query.limit - offers.len()) as u32,
                ..NumberSearch::default()
            })
            .await?;
        offers.extend(
            market
                .into_iter()
                // Telnyx widens a search it cannot satisfy (`best_effort`); we do not.
                .filter(|n| !n.best_effort && matches_query(&n.phone_number, query))
                .map(|n| OfferedNumber {
                    country: n.country.unwrap_or_else(|| query.country.clone()),
                    locality: n.locality,
                    source: "order".into(),
                    upfront_cost: n.upfront_cost,
                    monthly_cost: n.monthly_cost,
                    currency: n.currency,
                    phone_number: n.phone_number,
                })
                .take(query.limit - offers.len()),
        );
    }
    Ok(offers)
}

/// Is exactly `e164` for sale now? Also what makes it orderable: Telnyx only sells numbers
/// a recent search returned.
async fn for_sale(telnyx: &TelnyxClient, e164: &str) -> Result<bool, TelnyxError> {
    let Some((country, area, rest)) = destinations::search_parts(e164) else {
        return Ok(false);
    };
    let offers = telnyx
        .search_available(&NumberSearch {
            country,
            national_destination_code: area,
            starts_with: Some(rest),
            limit: 10,
            ..NumberSearch::default()
        })
        .await?;
    Ok(offers.iter().any(|n| n.phone_number == e164))
}

async fn count_numbers(client: &impl crate::db::GenericClient, org: OrgId) -> Result<i64, DbError> {
    Ok(client
        .query_one(
            "select count(*) as numbers from phone_numbers where organisation_id = $1",
            &[&org],
        )
        .await?
        .get("numbers"))
}

/// Assigns `e164` to `organisation_id`: from the account's pool when it is there and free,
/// else by ordering it. The Telnyx look-ups run before anything about other organisations is
/// consulted, and both refusals (held elsewhere, not for sale) make the same calls, so
/// neither the answer nor its timing tells them apart.
pub async fn claim(
    db: &Db,
    telnyx: &TelnyxClient,
    limits: &TelephonyConfig,
    organisation_id: OrgId,
    e164: &str,
    label: Option<&str>,
) -> Result<PhoneNumber, ClaimError> {
    {
        let client = db.client().await?;
        if count_numbers(&client, organisation_id).await? >= limits.max_numbers_per_org {
            return Err(ClaimError::LimitReached {
                limit: limits.max_numbers_per_org,
            });
        }
    }
    let held = telnyx
        .account_number(e164)
        .await?
        .filter(|n| is_pool_number(n, telnyx));
    // Asked even for a held number, so every refusal costs the same two look-ups.
    let orderable = for_sale(telnyx, e164).await? && held.is_none();

    let mut client = db.client().await?;
    let transaction = client.transaction().await?;
    // One claim per organisation at a time, so the cap holds across replicas.
    transaction
        .execute(
            "select pg_advisory_xact_lock(hashtextextended('callbridge:numbers:org:' || $1::uuid::text, 0))",
            &[&organisation_id],
        )
        .await?;
    if count_numbers(&transaction, organisation_id).await? >= limits.max_numbers_per_org {
        return Err(ClaimError::LimitReached {
            limit: limits.max_numbers_per_org,
        });
    }
    let owner: Option<OrgId> = transaction
        .query_opt(
            "select organisation_id from phone_numbers where e164 = $1",
            &[&e164],
        )
        .await?
        .map(|row| row.get("organisation_id"));
    match owner {
        Some(owner) if owner == organisation_id => return Err(ClaimError::AlreadyYours),
        Some(_) => return Err(ClaimError::Unavailable),
        None => {}
    }
    let order;
    let origin = if let Some(held) = &held {
        NumberOrigin {
            source: "account",
            telnyx_phone_number_id: Some(&held.id),
            telnyx_order_id: None,
        }
    } else if orderable {
        order = match telnyx
            .order_number(e164, &organisation_id.to_string())
            .await
        {
            Ok(order) if order.status == "failure" || order.number_status == "failure" => {
                return Err(TelnyxError::Rejected {
                    status: 200,
                    code: None,
                    detail: format!("number order {} failed", order.id),
                }
                .into());
            }
            Ok(order) => Some(order.id),
            // An ambiguous failure may still have bought it: believe the account.
            Err(TelnyxError::Unavailable(reason)) => match telnyx.account_number(e164).await {
                Ok(Some(bought))
                    if bought.connection_id.as_deref() == Some(telnyx.connection_id()) =>
                {
                    None
                }
                _ => return Err(TelnyxError::Unavailable(reason).into()),
            },
            Err(error) => return Err(error.into()),
        };
        NumberOrigin {
            source: "order",
            telnyx_phone_number_id: None,
            telnyx_order_id: order.as_deref(),
        }
    } else {
        return Err(ClaimError::Unavailable);
    };
    let number = super::add_number(&transaction, organisation_id, e164, label, origin)
        .await?
        .ok_or(ClaimError::Unavailable)?;
    transaction.commit().await?;
    if origin.source == "order" {
        tracing::info!(%organisation_id, order_id = ?origin.telnyx_order_id, "phone number ordered");
    }
    Ok(number)
}
