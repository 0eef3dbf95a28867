//! How the service writes a timestamp into JSON: RFC 3339 in UTC, `Z`, the fraction only as
//! long as it needs (0, 3, 6 or 9 digits). The text is exactly chrono's own serializer's;
//! only the way there differs.
//!
//! Why not chrono's: it formats through `core::fmt` and serde's `collect_str`, about 2,700
//! instructions per timestamp, and a page of 50 calls carries up to 200 of them: measured
//! with callgrind on `GET /api/calls`, timestamp formatting was 16 % of the service's
//! instructions per request, JSON as a whole 64 % (docs/adr/0052-timestamps-without-fmt.md).
//! Here the digits go into a stack buffer. Years outside 0000..=9999 (which PostgreSQL
//! allows and no call has) take chrono's path, so the text is the same for every value.
//!
//! Every `DateTime<Utc>` field the service serializes names [`serialize`] (or
//! [`option::serialize`]): one way to write a timestamp.

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde::Serializer;

/// Longest text written here: `9999-12-31T23:59:60.999999999Z`.
const LONGEST: usize = 30;

/// The RFC 3339 text of `at` in `buffer`, or `None` when its year has other than 4 digits.
pub fn format<'b>(at: &DateTime<Utc>, buffer: &'b mut [u8; LONGEST]) -> Option<&'b str> {
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let (mut second, mut nano) = (at.second(), at.nanosecond());
    // A leap second (chrono keeps it as nanoseconds past 1e9) is written as second 60.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let two = |buffer: &mut [u8; LONGEST], at: usize, value: u32| {
        buffer[at] = b'0' + (value / 10) as u8;
        buffer[at + 1] = b'0' + (value % 10) as u8;
    };
    two(buffer, 0, year as u32 / 100);
    two(buffer, 2, year as u32 % 100);
    buffer[4] = b'-';
    two(buffer, 5, at.month());
    buffer[7] = b'-';
    two(buffer, 8, at.day());
    buffer[10] = b'T';
    two(buffer, 11, at.hour());
    buffer[13] = b':';
    two(buffer, 14, at.minute());
    buffer[16] = b':';
    two(buffer, 17, second);
    let mut end = 19;
    let (digits, mut fraction) = match nano {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    if digits > 0 {
        buffer[end] = b'.';
        for at in (end + 1..=end + digits).rev() {
            buffer[at] = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        end += digits + 1;
    }
    buffer[end] = b'Z';
    // Only ASCII digits and punctuation were written.
    std::str::from_utf8(&buffer[..=end]).ok()
}

/// `#[serde(serialize_with = "crate::timestamps::serialize")]`
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; LONGEST];
    match format(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => serde::Serialize::serialize(at, serializer),
    }
}

/// For `Option<DateTime<Utc>>` fields: `null` or the timestamp.
pub mod option {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    /// `#[serde(serialize_with = "crate::timestamps::option::serialize")]`
    pub fn serialize<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn ours(at: &DateTime<Utc>) -> String {
        #[derive(serde::Serialize)]
        struct Wrapped(#[serde(serialize_with = "serialize")] DateTime<Utc>);
        serde_json::to_string(&Wrapped(*at)).unwrap()
    }

    fn chronos(at: &DateTime<Utc>) -> String {
        serde_json::to_string(at).unwrap()
    }

    #[test]
    fn the_text_is_chronos_for_every_precision_and_range() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0;
        // Every fraction length, over the 4-digit years and beyond them both ways.
        for _ in 0..20_000 {
            let seconds = (next() % 400_000_000_000) as i64 - 62_200_000_000;
            let nanos = match next() % 4 {
                0 => 0,
                1 => (next() % 1_000) as u32 * 1_000_000,
                2 => (next() % 1_000_000) as u32 * 1_000,
                _ => (next() % 1_000_000_000) as u32,
            };
            let Some(at) = Utc.timestamp_opt(seconds, nanos).single() else {
                continue;
            };
            assert_eq!(ours(&at), chronos(&at), "{seconds} s {nanos} ns");
            checked += 1;
        }
        assert!(checked > 19_000);
    }

    #[test]
    fn edges_match_chrono() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        let leap_start = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_000_000_000)
            .unwrap()
            .and_utc();
        for at in [
            leap,
            leap_start,
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc.timestamp_opt(1_765_000_000, 1).unwrap(),
            Utc.timestamp_opt(1_765_000_000, 999_999_999).unwrap(),
        ] {
            assert_eq!(ours(&at), chronos(&at));
        }
        assert_eq!(
            ours(&Utc.timestamp_opt(1_765_000_000, 120_000_000).unwrap()),
            "\"2025-12-06T05:46:40.120Z\""
        );
    }

    #[test]
    fn none_is_null() {
        #[derive(serde::Serialize)]
        struct Wrapped(#[serde(serialize_with = "option::serialize")] Option<DateTime<Utc>>);
        assert_eq!(serde_json::to_string(&Wrapped(None)).unwrap(), "null");
        let at = Utc.timestamp_opt(1_765_000_000, 0).unwrap();
        assert_eq!(
            serde_json::to_string(&Wrapped(Some(at))).unwrap(),
            chronos(&at)
        );
    }
}
