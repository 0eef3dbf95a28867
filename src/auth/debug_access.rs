//! Who may call `/internal/debug/*` outside production (in production the routes do not
//! exist): a Cloudflare Access JWT (`Cf-Access-Jwt-Assertion`, RS256 against the team's JWKS,
//! audience `CF_ACCESS_AUD`), or a short-lived token signed with `AUTH_SECRET` and minted by
//! `callbridge debug-token`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

/// A debug token may not be valid for longer than this.
pub const MAX_DEBUG_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const JWKS_REFRESH: Duration = Duration::from_secs(600);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("no Cf-Access-Jwt-Assertion or X-Debug-Token")]
    Missing,
    #[error("the debug token is malformed")]
    MalformedToken,
    #[error("the debug token has expired")]
    Expired,
    #[error("the debug token's lifetime exceeds 15 minutes")]
    TooLongLived,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the Access JWT is malformed")]
    MalformedJwt,
    #[error("the Access JWT is not for this application")]
    WrongAudience,
    #[error("the Access JWT has the wrong issuer")]
    WrongIssuer,
    #[error("Cloudflare Access is not configured (CF_ACCESS_TEAM_DOMAIN, CF_ACCESS_AUD)")]
    AccessNotConfigured,
    #[error("the team's signing keys could not be fetched")]
    KeysUnavailable,
}

fn debug_mac(secret: &[u8], expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(format!("callbridge-debug:v1:{expires}").as_bytes());
    mac
}

/// `v1.<expires unix>.<hex hmac>`.
pub fn mint_debug_token(secret: &[u8], ttl: Duration, now_unix: u64) -> String {
    let expires = now_unix + ttl.min(MAX_DEBUG_TOKEN_TTL).as_secs();
    let signature = hex::encode(debug_mac(secret, expires).finalize().into_bytes());
    format!("v1.{expires}.{signature}")
}

pub fn verify_debug_token(secret: &[u8], token: &str, now_unix: u64) -> Result<(), Denied> {
    let mut parts = token.split('.');
    let (Some("v1"), Some(expires), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Denied::MalformedToken);
    };
    let expires: u64 = expires.parse().map_err(|_| Denied::MalformedToken)?;
    let signature = hex::decode(signature).map_err(|_| Denied::MalformedToken)?;
    let expected = debug_mac(secret, expires).finalize().into_bytes();
    if !bool::from(expected.as_slice().ct_eq(&signature)) {
        return Err(Denied::BadSignature);
    }
    if expires <= now_unix {
        return Err(Denied::Expired);
    }
    if expires > now_unix + MAX_DEBUG_TOKEN_TTL.as_secs() {
        return Err(Denied::TooLongLived);
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Audience,
    iss: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    email: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(list) => list.iter().any(|aud| aud == wanted),
            Audience::None => false,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    n: String,
    e: String,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

type Key = RsaPublicKeyComponents<Vec<u8>>;

struct KeySet {
    keys: HashMap<String, Key>,
    fetched: Option<Instant>,
}

/// Verifies Cloudflare Access JWTs against the team's published keys (cached, refreshed when
/// an unknown `kid` appears, at most every 30 s).
pub struct AccessVerifier {
    /// `https://<team>.cloudflareaccess.com` (or a full URL, for tests).
    issuer: String,
    audience: String,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
}

impl AccessVerifier {
    pub fn new(team_domain: &str, audience: &str) -> Arc<Self> {
        let issuer = if team_domain.starts_with("http://") || team_domain.starts_with("https://") {
            team_domain.trim_end_matches('/').to_owned()
        } else {
            format!("https://{}", team_domain.trim_end_matches('/'))
        };
        Arc::new(Self {
            issuer,
            audience: audience.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(KeySet {
                keys: HashMap::new(),
                fetched: None,
            }),
        })
    }

    async fn refresh(&self, force: bool) -> Result<(), Denied> {
        let mut keys = self.keys.write().await;
        let age = keys.fetched.map(|at| at.elapsed());
        let due = match age {
            None => true,
            Some(age) if force => age >= JWKS_MIN_REFETCH,
            Some(age) => age >= JWKS_REFRESH,
        };
        if !due {
            return Ok(());
        }
        let url = format!("{}/cdn-cgi/access/certs", self.issuer);
        let jwks: Jwks = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|error: reqwest::Error| {
            tracing::warn!(%error, "fetching Cloudflare Access keys failed");
            Denied::KeysUnavailable
        })?;
        keys.keys = jwks
            .keys
            .into_iter()
            .filter(|jwk| jwk.kty == "RSA")
            .filter_map(|jwk| {
                let n = URL_SAFE_NO_PAD.decode(jwk.n.trim_end_matches('=')).ok()?;
                let e = URL_SAFE_NO_PAD.decode(jwk.e.trim_end_matches('=')).ok()?;
                Some((jwk.kid, RsaPublicKeyComponents { n, e }))
            })
            .collect();
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<Key, Denied> {
        self.refresh(false).await?;
        if let Some(key) = self.keys.read().await.keys.get(kid) {
            return Ok(key.clone());
        }
        self.refresh(true).await?;
        self.keys
            .read()
            .await
            .keys
            .get(kid)
            .cloned()
            .ok_or(Denied::BadSignature)
    }

    /// The verified identity (email, else "access") of a valid assertion.
    pub async fn verify(&self, jwt: &str, now_unix: u64) -> Result<String, Denied> {
        let mut parts = jwt.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Denied::MalformedJwt);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| Denied::MalformedJwt)
        };
        let header: JwtHeader =
            serde_json::from_slice(&decode(header)?).map_err(|_| Denied::MalformedJwt)?;
        // Only RS256: never let the token choose a weaker algorithm ("none", HS256).
        if header.alg != "RS256" {
            return Err(Denied::MalformedJwt);
        }
        let kid = header.kid.ok_or(Denied::MalformedJwt)?;
        let key = self.key(&kid).await?;
        let signed = &jwt[..jwt.len() - signature.len() - 1];
        key.verify(
            &RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &decode(signature)?,
        )
        .map_err(|_| Denied::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| Denied::MalformedJwt)?;
        if !claims.aud.contains(&self.audience) {
            return Err(Denied::WrongAudience);
        }
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(Denied::WrongIssuer);
        }
        match claims.exp {
            Some(exp) if exp > now_unix => {}
            _ => return Err(Denied::Expired),
        }
        if claims.nbf.is_some_and(|nbf| nbf > now_unix + 60) {
            return Err(Denied::Expired);
        }
        Ok(claims.email.unwrap_or_else(|| "access".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_tokens_verify_expire_and_are_short_lived() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let token = mint_debug_token(secret, Duration::from_secs(300), 1_000);
        assert_eq!(verify_debug_token(secret, &token, 1_000), Ok(()));
        assert_eq!(
            verify_debug_token(secret, &token, 1_300),
            Err(Denied::Expired)
        );
        assert_eq!(
            verify_debug_token(b"another-secret", &token, 1_000),
            Err(Denied::BadSignature)
        );
        let tampered = token.replace("v1.1300.", "v1.1900.");
        assert_eq!(
            verify_debug_token(secret, &tampered, 1_000),
            Err(Denied::BadSignature)
        );
        // A validly signed token that lives too long (minted elsewhere) is refused.
        let long = format!(
            "v1.{}.{}",
            100_000,
            hex::encode(debug_mac(secret, 100_000).finalize().into_bytes())
        );
        assert_eq!(
            verify_debug_token(secret, &long, 1_000),
            Err(Denied::TooLongLived)
        );
        assert_eq!(
            verify_debug_token(secret, "garbage", 1_000),
            Err(Denied::MalformedToken)
        );
    }
}
