//! What an E.164 number is: its country calling code, its country (ISO 3166-1 alpha-2; the
//! North American Numbering Plan is split by area code, so +1 876 is Jamaica, not the US),
//! and whether it falls in a premium-rate or satellite range the platform never dials.
//!
//! A small table instead of a numbering library: the guard needs the country and a refusal
//! list, not formatting or validation of national plans. The tables are documented in
//! docs/SECURITY.md ("Phone numbers and dialing").

/// Non-geographic codes (satellite, international networks, UIFN, …) have no country: `001`,
/// as in libphonenumber. No organisation can put it on its allow-list.
pub const NON_GEOGRAPHIC: &str = "001";

/// Country calling code → country, for every code but `+1` (split by area code below).
/// Shared codes map to their main country (+7 → RU, except 76/77 → KZ; +44 → GB).
#[rustfmt::skip]
const CALLING_CODES: &[(&str, &str)] = &[
    ("7", "RU"), ("20", "EG"), ("27", "ZA"), ("30", "GR"), ("31", "NL"), ("32", "BE"),
    ("33", "FR"), ("34", "ES"), ("36", "HU"), ("39", "IT"), ("40", "RO"), ("41", "CH"),
    ("43", "AT"), ("44", "GB"), ("45", "DK"), ("46", "SE"), ("47", "NO"), ("48", "PL"),
    ("49", "DE"), ("51", "PE"), ("52", "MX"), ("53", "CU"), ("54", "AR"), ("55", "BR"),
    ("56", "CL"), ("57", "CO"), ("58", "VE"), ("60", "MY"), ("61", "AU"), ("62", "ID"),
    ("63", "PH"), ("64", "NZ"), ("65", "SG"), ("66", "TH"), ("81", "JP"), ("82", "KR"),
    ("84", "VN"), ("86", "CN"), ("90", "TR"), ("91", "IN"), ("92", "PK"), ("93", "AF"),
    ("94", "LK"), ("95", "MM"), ("98", "IR"),
    ("211", "SS"), ("212", "MA"), ("213", "DZ"), ("216", "TN"), ("218", "LY"), ("220", "GM"),
    ("221", "SN"), ("222", "MR"), ("223", "ML"), ("224", "GN"), ("225", "CI"), ("226", "BF"),
    ("227", "NE"), ("228", "TG"), ("229", "BJ"), ("230", "MU"), ("231", "LR"), ("232", "SL"),
    ("233", "GH"), ("234", "NG"), ("235", "TD"), ("236", "CF"), ("237", "CM"), ("238", "CV"),
    ("239", "ST"), ("240", "GQ"), ("241", "GA"), ("242", "CG"), ("243", "CD"), ("244", "AO"),
    ("245", "GW"), ("246", "IO"), ("247", "AC"), ("248", "SC"), ("249", "SD"), ("250", "RW"),
    ("251", "ET"), ("252", "SO"), ("253", "DJ"), ("254", "KE"), ("255", "TZ"), ("256", "UG"),
    ("257", "BI"), ("258", "MZ"), ("260", "ZM"), ("261", "MG"), ("262", "RE"), ("263", "ZW"),
    ("264", "NA"), ("265", "MW"), ("266", "LS"), ("267", "BW"), ("268", "SZ"), ("269", "KM"),
    ("290", "SH"), ("291", "ER"), ("297", "AW"), ("298", "FO"), ("299", "GL"),
    ("350", "GI"), ("351", "PT"), ("352", "LU"), ("353", "IE"), ("354", "IS"), ("355", "AL"),
    ("356", "MT"), ("357", "CY"), ("358", "FI"), ("359", "BG"), ("370", "LT"), ("371", "LV"),
    ("372", "EE"), ("373", "MD"), ("374", "AM"), ("375", "BY"), ("376", "AD"), ("377", "MC"),
    ("378", "SM"), ("379", "VA"), ("380", "UA"), ("381", "RS"), ("382", "ME"), ("383", "XK"),
    ("385", "HR"), ("386", "SI"), ("387", "BA"), ("389", "MK"),
    ("420", "CZ"), ("421", "SK"), ("423", "LI"),
    ("500", "FK"), ("501", "BZ"), ("502", "GT"), ("503", "SV"), ("504", "HN"), ("505", "NI"),
    ("506", "CR"), ("507", "PA"), ("508", "PM"), ("509", "HT"), ("590", "GP"), ("591", "BO"),
    ("592", "GY"), ("593", "EC"), ("594", "GF"), ("595", "PY"), ("596", "MQ"), ("597", "SR"),
    ("598", "UY"), ("599", "CW"),
    ("670", "TL"), ("672", "NF"), ("673", "BN"), ("674", "NR"), ("675", "PG"), ("676", "TO"),
    ("677", "SB"), ("678", "VU"), ("679", "FJ"), ("680", "PW"), ("681", "WF"), ("682", "CK"),
    ("683", "NU"), ("685", "WS"), ("686", "KI"), ("687", "NC"), ("688", "TV"), ("689", "PF"),
    ("690", "TK"), ("691", "FM"), ("692", "MH"),
    ("800", NON_GEOGRAPHIC), ("808", NON_GEOGRAPHIC), ("850", "KP"), ("852", "HK"),
    ("853", "MO"), ("855", "KH"), ("856", "LA"), ("870", NON_GEOGRAPHIC),
    ("871", NON_GEOGRAPHIC), ("872", NON_GEOGRAPHIC), ("873", NON_GEOGRAPHIC),
    ("874", NON_GEOGRAPHIC), ("878", NON_GEOGRAPHIC), ("880", "BD"), ("881", NON_GEOGRAPHIC),
    ("882", NON_GEOGRAPHIC), ("883", NON_GEOGRAPHIC), ("886", "TW"), ("888", NON_GEOGRAPHIC),
    ("960", "MV"), ("961", "LB"), ("962", "JO"), ("963", "SY"), ("964", "IQ"), ("965", "KW"),
    ("966", "SA"), ("967", "YE"), ("968", "OM"), ("970", "PS"), ("971", "AE"), ("972", "IL"),
    ("973", "BH"), ("974", "QA"), ("975", "BT"), ("976", "MN"), ("977", "NP"),
    ("979", NON_GEOGRAPHIC), ("991", NON_GEOGRAPHIC), ("992", "TJ"), ("993", "TM"),
    ("994", "AZ"), ("995", "GE"), ("996", "KG"), ("998", "UZ"),
];

/// NANP area codes outside the United States. Every other +1 area code is `US`.
#[rustfmt::skip]
const NANP_AREA_CODES: &[(&str, &str)] = &[
    ("242", "BS"), ("246", "BB"), ("264", "AI"), ("268", "AG"), ("284", "VG"), ("340", "VI"),
    ("345", "KY"), ("441", "BM"), ("473", "GD"), ("649", "TC"), ("658", "JM"), ("664", "MS"),
    ("670", "MP"), ("671", "GU"), ("684", "AS"), ("721", "SX"), ("758", "LC"), ("767", "DM"),
    ("784", "VC"), ("787", "PR"), ("809", "DO"), ("829", "DO"), ("849", "DO"), ("868", "TT"),
    ("869", "KN"), ("876", "JM"), ("939", "PR"),
    // Canada.
    ("204", "CA"), ("226", "CA"), ("236", "CA"), ("249", "CA"), ("250", "CA"), ("257", "CA"),
    ("263", "CA"), ("289", "CA"), ("306", "CA"), ("343", "CA"), ("354", "CA"), ("365", "CA"),
    ("367", "CA"), ("368", "CA"), ("382", "CA"), ("387", "CA"), ("403", "CA"), ("416", "CA"),
    ("418", "CA"), ("428", "CA"), ("431", "CA"), ("437", "CA"), ("438", "CA"), ("450", "CA"),
    ("460", "CA"), ("468", "CA"), ("474", "CA"), ("506", "CA"), ("514", "CA"), ("519", "CA"),
    ("548", "CA"), ("579", "CA"), ("581", "CA"), ("584", "CA"), ("587", "CA"), ("600", "CA"),
    ("604", "CA"), ("613", "CA"), ("639", "CA"), ("647", "CA"), ("672", "CA"), ("683", "CA"),
    ("705", "CA"), ("709", "CA"), ("742", "CA"), ("753", "CA"), ("778", "CA"), ("780", "CA"),
    ("782", "CA"), ("807", "CA"), ("819", "CA"), ("825", "CA"), ("867", "CA"), ("873", "CA"),
    ("879", "CA"), ("902", "CA"), ("905", "CA"), ("942", "CA"),
];

/// Why a prefix is never dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedKind {
    /// Revenue-sharing numbers: the classic toll-fraud payout.
    PremiumRate,
    /// Satellite and international networks: several dollars a minute.
    Satellite,
}

/// A refused range: E.164 digits after the `+`, what it is, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedPrefix {
    pub prefix: &'static str,
    pub kind: BlockedKind,
    pub description: &'static str,
}

const fn premium(prefix: &'static str, description: &'static str) -> BlockedPrefix {
    BlockedPrefix {
        prefix,
        kind: BlockedKind::PremiumRate,
        description,
    }
}

const fn satellite(prefix: &'static str, description: &'static str) -> BlockedPrefix {
    BlockedPrefix {
        prefix,
        kind: BlockedKind::Satellite,
        description,
    }
}

/// Refused whatever the allow-list says (docs/SECURITY.md reproduces this table). NANP
/// `976` exchanges are matched separately (`+1 NPA 976 xxxx`).
pub const BLOCKED_PREFIXES: &[BlockedPrefix] = &[
    satellite("870", "Inmarsat"),
    satellite("871", "Inmarsat (former Atlantic East)"),
    satellite("872", "Inmarsat (former Pacific)"),
    satellite("873", "Inmarsat (former Indian Ocean)"),
    satellite("874", "Inmarsat (former Atlantic West)"),
    satellite(
        "881",
        "Global Mobile Satellite System (Iridium, Globalstar, …)",
    ),
    satellite("882", "International Networks (Thuraya, maritime, …)"),
    satellite("883", "International Networks"),
    premium("979", "International Premium Rate Service"),
    premium("1900", "NANP premium rate (900)"),
    premium("3290", "Belgium premium rate (090x)"),
    premium("3389", "France premium rate (089)"),
    premium("31900", "Netherlands premium rate (0900)"),
    premium("31906", "Netherlands premium rate (0906)"),
    premium("31909", "Netherlands premium rate (0909)"),
    premium("34803", "Spain premium rate (803)"),
    premium("34806", "Spain premium rate (806)"),
    premium("34807", "Spain premium rate (807)"),
    premium("34905", "Spain mass calling (905)"),
    premium("35315", "Ireland premium rate (15xx)"),
    premium("39892", "Italy premium rate (892)"),
    premium("39899", "Italy premium rate (899)"),
    premium("41900", "Switzerland premium rate (0900)"),
    premium("41901", "Switzerland premium rate (0901)"),
    premium("41906", "Switzerland premium rate (0906)"),
    premium("43900", "Austria premium rate (0900)"),
    premium("43901", "Austria premium rate (0901)"),
    premium("43930", "Austria premium rate (0930)"),
    premium("43939", "Austria premium rate (0939)"),
    premium("4470", "United Kingdom personal numbering (070)"),
    premium("4487", "United Kingdom revenue-sharing (087)"),
    premium("449", "United Kingdom premium rate (09)"),
    premium("4590", "Denmark premium rate (90)"),
    premium("46900", "Sweden premium rate (0900)"),
    premium("46939", "Sweden premium rate (0939)"),
    premium("46944", "Sweden premium rate (0944)"),
    premium("47820", "Norway premium rate (820)"),
    premium("47829", "Norway premium rate (829)"),
    premium("4870", "Poland premium rate (70x)"),
    premium("49118", "Germany directory services (118)"),
    premium("49137", "Germany mass calling (0137)"),
    premium("49900", "Germany premium rate (0900)"),
    premium("61190", "Australia premium rate (190x)"),
    premium("64900", "New Zealand premium rate (0900)"),
];

/// The NANP premium exchange (`+1 NPA 976 xxxx`), as a pseudo-prefix for messages.
pub const NANP_976: BlockedPrefix = premium("1NPA976", "NANP premium exchange (976)");

/// One number, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    /// Digits of the country calling code, e.g. `1`, `44`, `881`.
    pub calling_code: &'static str,
    /// ISO 3166-1 alpha-2, or [`NON_GEOGRAPHIC`].
    pub country: &'static str,
}

/// The calling code and country of an E.164 number; `None` for a code that is not assigned.
pub fn classify(e164: &str) -> Option<Destination> {
    let digits = e164.strip_prefix('+')?;
    if let Some(national) = digits.strip_prefix('1') {
        let area = national.get(..3)?;
        let country = NANP_AREA_CODES
            .iter()
            .find(|(code, _)| *code == area)
            .map_or("US", |(_, country)| *country);
        return Some(Destination {
            calling_code: "1",
            country,
        });
    }
    // Calling codes are prefix-free: at most one of the 1-, 2- and 3-digit prefixes matches.
    (1..=3).find_map(|len| {
        let code = digits.get(..len)?;
        let (calling_code, country) = CALLING_CODES.iter().find(|(c, _)| *c == code)?;
        let country = if *calling_code == "7" && matches!(digits.get(1..2), Some("6" | "7")) {
            "KZ"
        } else {
            country
        };
        Some(Destination {
            calling_code,
            country,
        })
    })
}

/// The premium-rate or satellite range `e164` falls in, if any.
pub fn blocked(e164: &str) -> Option<BlockedPrefix> {
    let digits = e164.strip_prefix('+')?;
    if let Some(found) = BLOCKED_PREFIXES
        .iter()
        .find(|b| digits.starts_with(b.prefix))
    {
        return Some(*found);
    }
    (digits.starts_with('1') && digits.get(4..7) == Some("976")).then_some(NANP_976)
}

/// Whether `code` is a country some geographic number maps to (what an allow-list may hold).
pub fn is_known_country(code: &str) -> bool {
    code != NON_GEOGRAPHIC
        && (code == "US"
            || CALLING_CODES.iter().any(|(_, c)| *c == code)
            || NANP_AREA_CODES.iter().any(|(_, c)| *c == code)
            || code == "KZ")
}

/// How Telnyx's number search wants an E.164 number: the country, and for NANP the area
/// code (`national_destination_code`) apart from the rest of the national number.
pub fn search_parts(e164: &str) -> Option<(&'static str, Option<&str>, &str)> {
    let destination = classify(e164)?;
    let national = e164
        .strip_prefix('+')?
        .get(destination.calling_code.len()..)?;
    if destination.calling_code == "1" {
        Some((destination.country, national.get(..3), national.get(3..)?))
    } else {
        Some((destination.country, None, national))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_come_from_the_calling_code_and_the_nanp_area_code() {
        let country = |n: &str| classify(n).map(|d| d.country);
        assert_eq!(country("+14155550100"), Some("US"));
        assert_eq!(country("+16135550100"), Some("CA"));
        assert_eq!(country("+18765550100"), Some("JM"), "Jamaica is not the US");
        assert_eq!(country("+12845550100"), Some("VG"));
        assert_eq!(country("+442079460000"), Some("GB"));
        assert_eq!(country("+4930123456"), Some("DE"));
        assert_eq!(country("+35312345678"), Some("IE"));
        assert_eq!(country("+77011234567"), Some("KZ"));
        assert_eq!(country("+74951234567"), Some("RU"));
        assert_eq!(country("+881612345678"), Some(NON_GEOGRAPHIC));
        assert_eq!(country("+2851234567"), None, "+28x is unassigned");
        assert_eq!(classify("+4930123456").unwrap().calling_code, "49");
    }

    #[test]
    fn every_calling_code_is_unique_and_prefix_free() {
        for (i, (a, _)) in CALLING_CODES.iter().enumerate() {
            for (b, _) in &CALLING_CODES[i + 1..] {
                assert!(
                    !a.starts_with(b) && !b.starts_with(a),
                    "{a} and {b} overlap"
                );
            }
        }
    }

    #[test]
    fn premium_and_satellite_ranges_are_blocked() {
        let kind = |n: &str| blocked(n).map(|b| b.kind);
        assert_eq!(kind("+19005550100"), Some(BlockedKind::PremiumRate));
        assert_eq!(
            kind("+14159765555"),
            Some(BlockedKind::PremiumRate),
            "NANP 976"
        );
        assert_eq!(kind("+448001234567"), None, "UK freephone is fine");
        assert_eq!(kind("+449012345678"), Some(BlockedKind::PremiumRate));
        assert_eq!(kind("+4990012345678"), Some(BlockedKind::PremiumRate));
        assert_eq!(kind("+881612345678"), Some(BlockedKind::Satellite));
        assert_eq!(kind("+870773112345"), Some(BlockedKind::Satellite));
        assert_eq!(kind("+882161234567"), Some(BlockedKind::Satellite));
        assert_eq!(kind("+14155550100"), None);
        assert_eq!(kind("+4930123456"), None);
    }

    #[test]
    fn search_parts_split_nanp_numbers_by_area_code() {
        assert_eq!(
            search_parts("+14155550100"),
            Some(("US", Some("415"), "5550100"))
        );
        assert_eq!(
            search_parts("+442079460000"),
            Some(("GB", None, "2079460000"))
        );
        assert!(is_known_country("JM") && is_known_country("US") && !is_known_country("001"));
        assert!(!is_known_country("XX"));
    }
}
