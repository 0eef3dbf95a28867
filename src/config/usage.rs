//! `USAGE_*`: the price table and the default quotas (docs/USAGE.md).
//!
//! The price table is JSON: an array of `{vendor, unit, currency, price, per, from}`, inline in
//! `USAGE_PRICES` or in a file named by `@/path/to/prices.json`. A row prices `per` units at
//! `price` from the UTC day `from` on, until a later row for the same vendor, unit and currency
//! takes over; so history stays priced at the rate of its day when a price changes.

use chrono::NaiveDate;
use serde::Deserialize;

/// The documented default table (docs/USAGE.md): list prices, as estimates.
pub const DEFAULT_PRICES: &str = r#"[
  {"vendor": "telnyx", "unit": "call_seconds", "currency": "USD", "price": 0.007, "per": 60, "from": "2026-01-01"},
  {"vendor": "assemblyai", "unit": "streaming_seconds", "currency": "USD", "price": 0.15, "per": 3600, "from": "2026-01-01"},
  {"vendor": "assemblyai", "unit": "async_audio_seconds", "currency": "USD", "price": 0.15, "per": 3600, "from": "2026-01-01"},
  {"vendor": "deepl", "unit": "characters", "currency": "USD", "price": 25, "per": 1000000, "from": "2026-01-01"},
  {"vendor": "openai", "unit": "prompt_tokens", "currency": "USD", "price": 0.15, "per": 1000000, "from": "2026-01-01"},
  {"vendor": "openai", "unit": "completion_tokens", "currency": "USD", "price": 0.6, "per": 1000000, "from": "2026-01-01"},
  {"vendor": "elevenlabs", "unit": "characters", "currency": "USD", "price": 0.05, "per": 1000, "from": "2026-01-01"},
  {"vendor": "cache", "unit": "characters", "currency": "USD", "price": 0, "per": 1, "from": "2026-01-01"},
  {"vendor": "r2", "unit": "byte_days", "currency": "USD", "price": 0.015, "per": 30000000000, "from": "2026-01-01"},
  {"vendor": "r2", "unit": "downloads", "currency": "USD", "price": 0.36, "per": 1000000, "from": "2026-01-01"}
]"#;

/// One row of the price table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub vendor: String,
    pub unit: String,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// What `per` units cost.
    pub price: f64,
    #[serde(default = "one")]
    pub per: f64,
    /// The first UTC day this price applies to.
    pub from: NaiveDate,
}

fn one() -> f64 {
    1.0
}

/// Prices by vendor, unit and currency over time.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable(Vec<Price>);

impl PriceTable {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rows: Vec<Price> =
            serde_json::from_str(text).map_err(|e| format!("not a price table: {e}"))?;
        for row in &rows {
            if row.vendor.is_empty() || row.unit.is_empty() {
                return Err("every row needs a vendor and a unit".into());
            }
            if row.currency.len() != 3 || !row.currency.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "{}/{}: currency must be an ISO 4217 code like USD, not {:?}",
                    row.vendor, row.unit, row.currency
                ));
            }
            if !(row.price.is_finite() && row.price >= 0.0) {
                return Err(format!(
                    "{}/{}: price must be 0 or more",
                    row.vendor, row.unit
                ));
            }
            if !(row.per.is_finite() && row.per > 0.0) {
                return Err(format!(
                    "{}/{}: per must be more than 0",
                    row.vendor, row.unit
                ));
            }
        }
        // Newest first within a vendor and unit, so a lookup takes the first row in effect.
        rows.sort_by(|a, b| {
            (&a.vendor, &a.unit, &a.currency)
                .cmp(&(&b.vendor, &b.unit, &b.currency))
                .then(b.from.cmp(&a.from))
        });
        Ok(Self(rows))
    }

    pub fn defaults() -> Self {
        Self::parse(DEFAULT_PRICES).expect("the default price table parses")
    }

    /// What `quantity` of `vendor`/`unit` spent on `day` cost, per currency priced (a unit
    /// with no price in effect that day costs nothing and is reported unpriced by callers).
    pub fn cost(
        &self,
        vendor: &str,
        unit: &str,
        day: NaiveDate,
        quantity: f64,
    ) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for row in &self.0 {
            if row.vendor == vendor
                && row.unit == unit
                && row.from <= day
                && !out.iter().any(|(currency, _)| *currency == row.currency)
            {
                out.push((row.currency.clone(), quantity * row.price / row.per));
            }
        }
        out
    }

    pub fn rows(&self) -> &[Price] {
        &self.0
    }
}

/// Usage settings.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// `USAGE_LEDGER`: record usage (default true). Off only to measure what the ledger
    /// costs (`make bench`); nothing is billed or capped on a deployment with it off.
    pub ledger: bool,
    /// `USAGE_PRICES`: the price table (inline JSON, or `@file`); default [`DEFAULT_PRICES`].
    pub prices: PriceTable,
    /// `USAGE_CURRENCY`: the currency spend caps are in (default `USD`).
    pub currency: String,
    /// `USAGE_DEFAULT_MONTHLY_MINUTES`: call minutes per organisation per calendar month
    /// (UTC) when it has no quota of its own; 0: none.
    pub monthly_minutes: i64,
    /// `USAGE_DEFAULT_CONCURRENT_CALLS`: live calls per organisation; 0: none (the dial
    /// guard's `DIAL_MAX_CONCURRENT_PER_ORG` still applies).
    pub concurrent_calls: i64,
    /// `USAGE_DEFAULT_MONTHLY_SPEND`: estimated spend per organisation per calendar month,
    /// in `USAGE_CURRENCY`; 0: none.
    pub monthly_spend: f64,
    /// `USAGE_DEFAULT_AT_LIMIT`: `continue` (the default, ADR 0037) or `end`.
    pub end_at_limit: bool,
    /// `USAGE_RECONCILE_DRIFT_SECS`: an AssemblyAI session whose reported and measured
    /// seconds differ by more than this is reported as drift (default 5).
    pub reconcile_drift_secs: f64,
}

impl super::Reader {
    pub(super) fn usage(&mut self) -> UsageConfig {
        let prices = match self.string("USAGE_PRICES") {
            None => PriceTable::defaults(),
            Some(value) => {
                let text = match value.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path.trim())
                        .map_err(|e| format!("cannot read {path}: {e}")),
                    None => Ok(value),
                };
                match text.and_then(|text| PriceTable::parse(&text)) {
                    Ok(table) => table,
                    Err(why) => {
                        self.problem("USAGE_PRICES", why);
                        PriceTable::defaults()
                    }
                }
            }
        };
        let currency = self
            .string("USAGE_CURRENCY")
            .unwrap_or_else(|| "USD".into());
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            self.problem("USAGE_CURRENCY", "must be an ISO 4217 code like USD");
        }
        let monthly_spend = self.parsed("USAGE_DEFAULT_MONTHLY_SPEND", 0.0f64);
        if !(monthly_spend.is_finite() && monthly_spend >= 0.0) {
            self.problem("USAGE_DEFAULT_MONTHLY_SPEND", "must be 0 or more");
        }
        let end_at_limit = match self.string("USAGE_DEFAULT_AT_LIMIT").as_deref() {
            None | Some("continue") => false,
            Some("end") => true,
            Some(other) => {
                self.problem(
                    "USAGE_DEFAULT_AT_LIMIT",
                    format!("must be continue or end, not {other:?}"),
                );
                false
            }
        };
        let reconcile_drift_secs = self.parsed("USAGE_RECONCILE_DRIFT_SECS", 5.0f64);
        if !(reconcile_drift_secs.is_finite() && reconcile_drift_secs >= 0.0) {
            self.problem("USAGE_RECONCILE_DRIFT_SECS", "must be 0 or more");
        }
        UsageConfig {
            ledger: self.boolean("USAGE_LEDGER", true),
            prices,
            currency,
            monthly_minutes: self.bounded("USAGE_DEFAULT_MONTHLY_MINUTES", 0, 0, 100_000_000)
                as i64,
            concurrent_calls: self.bounded("USAGE_DEFAULT_CONCURRENT_CALLS", 0, 0, 1_000_000)
                as i64,
            monthly_spend,
            end_at_limit,
            reconcile_drift_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn history_is_priced_at_the_rate_of_its_day() {
        let table = PriceTable::parse(
            r#"[{"vendor":"deepl","unit":"characters","currency":"USD","price":20,"per":1000000,"from":"2026-01-01"},
                {"vendor":"deepl","unit":"characters","currency":"USD","price":25,"per":1000000,"from":"2026-06-01"}]"#,
        )
        .unwrap();
        let cost = |d| table.cost("deepl", "characters", day(d), 1_000_000.0);
        assert_eq!(cost("2026-05-31"), vec![("USD".to_owned(), 20.0)]);
        assert_eq!(cost("2026-06-01"), vec![("USD".to_owned(), 25.0)]);
        assert!(cost("2025-12-31").is_empty());
        assert!(
            table
                .cost("deepl", "tokens", day("2026-07-01"), 1.0)
                .is_empty()
        );
    }

    #[test]
    fn bad_tables_are_refused_with_a_reason() {
        assert!(PriceTable::parse("nope").is_err());
        assert!(
            PriceTable::parse(
                r#"[{"vendor":"x","unit":"u","currency":"usd","price":1,"from":"2026-01-01"}]"#
            )
            .unwrap_err()
            .contains("ISO 4217")
        );
        assert!(
            PriceTable::parse(
                r#"[{"vendor":"x","unit":"u","currency":"USD","price":-1,"from":"2026-01-01"}]"#
            )
            .is_err()
        );
        assert!(PriceTable::parse(r#"[{"vendor":"x","unit":"u","currency":"USD","price":1,"per":0,"from":"2026-01-01"}]"#).is_err());
        assert_eq!(PriceTable::defaults().rows().len(), 10);
    }
}
