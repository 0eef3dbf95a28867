//! `ALLOWED_ORIGINS`: which browser origins may call the API with credentials (CORS and the
//! CSRF check). Exact origins, plus one pattern form for preview deployments:
//! `https://*.<domain>` matches exactly one DNS label in place of `*` (Cloudflare Pages
//! previews are `https://<branch-or-hash>.<project>.pages.dev`).
//!
//! Refused: a bare `*` (with credentials it would let any site act as the signed-in user),
//! a `*` anywhere but the first label, a non-https pattern, and a pattern whose domain is a
//! shared hosting suffix by itself (`https://*.pages.dev` would admit every Pages project,
//! an attacker's included).

use url::Url;

/// Suffixes under which anyone can get a subdomain: a pattern must name a project below them.
const SHARED_SUFFIXES: &[&str] = &[
    "pages.dev",
    "workers.dev",
    "vercel.app",
    "netlify.app",
    "github.io",
    "herokuapp.com",
    "onrender.com",
    "fly.dev",
    "web.app",
    "firebaseapp.com",
    "azurestaticapps.net",
    "amplifyapp.com",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `scheme://host[:port]`, compared as serialised.
    Exact(String),
    /// `https://*.{domain}`: one label, then `.{domain}`, https, default port.
    Subdomain { domain: String },
}

/// The parsed list; [`AllowedOrigins::allows`] is the one check every caller uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    rules: Vec<Rule>,
}

impl AllowedOrigins {
    /// Parses every entry, returning every problem (one message per bad entry).
    pub fn parse(entries: &[String]) -> Result<Self, Vec<String>> {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for entry in entries {
            match parse_entry(entry) {
                Ok(rule) => rules.push(rule),
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(Self { rules })
        } else {
            Err(problems)
        }
    }

    /// Whether `origin` (an `Origin` header value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.rules.iter().any(|rule| match rule {
            Rule::Exact(exact) => exact == origin,
            Rule::Subdomain { domain } => origin
                .strip_prefix("https://")
                .and_then(|host| host.strip_suffix(domain.as_str()))
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(is_dns_label),
        })
    }

    /// The exact origins (for logs and the summary); patterns as written.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|rule| match rule {
                Rule::Exact(origin) => origin.clone(),
                Rule::Subdomain { domain } => format!("https://*.{domain}"),
            })
            .collect()
    }
}

fn parse_entry(entry: &str) -> Result<Rule, String> {
    if entry == "*" {
        return Err("a bare \"*\" is refused: credentials (cookies) are allowed, so it would let any \
             site act as the signed-in user; list origins, or use https://*.<project>.pages.dev for previews"
            .into());
    }
    if let Some(domain) = entry.strip_prefix("https://*.") {
        let domain = domain.to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || !labels.iter().all(|label| is_dns_label(label)) {
            return Err(format!(
                "{entry:?}: a pattern is https://*.<domain> with a domain of at least two labels, \
                 no port and no path"
            ));
        }
        if SHARED_SUFFIXES.contains(&domain.as_str()) {
            return Err(format!(
                "{entry:?} would admit every site on {domain}: name your project \
                 (https://*.<project>.{domain})"
            ));
        }
        return Ok(Rule::Subdomain { domain });
    }
    if entry.contains('*') {
        return Err(format!(
            "{entry:?}: the only pattern is https://*.<domain> (one wildcard label, first, over https)"
        ));
    }
    match Url::parse(entry) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.origin().ascii_serialization() == entry =>
        {
            Ok(Rule::Exact(entry.to_owned()))
        }
        _ => Err(format!(
            "{entry:?} is not an origin like https://app.example.com"
        )),
    }
}

/// One DNS label: 1–63 of a-z, 0-9 and `-`, not starting or ending with `-`.
fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<AllowedOrigins, Vec<String>> {
        AllowedOrigins::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn exact_origins_match_exactly() {
        let origins = parse(&["https://app.example.com", "http://localhost:3000"]).unwrap();
        assert!(origins.allows("https://app.example.com"));
        assert!(origins.allows("http://localhost:3000"));
        assert!(!origins.allows("https://app.example.com:444"));
        assert!(!origins.allows("http://app.example.com"));
        assert!(!origins.allows("https://evil.app.example.com"));
        assert!(!origins.allows("null"));
    }

    #[test]
    fn a_pages_preview_pattern_matches_one_label_over_https() {
        let origins = parse(&["https://*.callbridge-web.pages.dev"]).unwrap();
        assert!(origins.allows("https://3f2a91c.callbridge-web.pages.dev"));
        assert!(origins.allows("https://feature-x.callbridge-web.pages.dev"));
        // Not the project's production host, not two labels, not http, not a look-alike.
        assert!(!origins.allows("https://callbridge-web.pages.dev"));
        assert!(!origins.allows("https://a.b.callbridge-web.pages.dev"));
        assert!(!origins.allows("http://x.callbridge-web.pages.dev"));
        assert!(!origins.allows("https://x.callbridge-web.pages.dev:8443"));
        assert!(!origins.allows("https://xcallbridge-web.pages.dev"));
        assert!(!origins.allows("https://x.evil-callbridge-web.pages.dev"));
        assert!(!origins.allows("https://x.callbridge-web.pages.dev.evil.com"));
        assert!(!origins.allows("https://X.callbridge-web.pages.dev/"));
    }

    #[test]
    fn unsafe_patterns_are_refused_with_a_reason() {
        for (entry, says) in [
            ("*", "bare"),
            ("https://*.pages.dev", "every site"),
            ("https://*.workers.dev", "every site"),
            ("http://*.example.com", "only pattern"),
            ("https://app.*.example.com", "only pattern"),
            ("https://*.com", "two labels"),
            ("https://*.example.com:8443", "two labels"),
            ("https://app.example.com/", "not an origin"),
        ] {
            let problems = parse(&[entry]).unwrap_err();
            assert_eq!(problems.len(), 1, "{entry}");
            assert!(problems[0].contains(says), "{entry}: {}", problems[0]);
        }
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let problems = parse(&["*", "https://ok.example.com", "ftp://x.example.com"]).unwrap_err();
        assert_eq!(problems.len(), 2);
    }
}
