//! The token in a media stream URL (`/media/telnyx/{stream_token}`): bound to one call,
//! expiring, signed with `AUTH_SECRET`. Checked before the WebSocket upgrade.
//!
//! Format: `base64url(call_id[16] ‖ expires_be[8]) "." base64url(hmac_sha256[..16])`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Long enough for Telnyx to connect after a ring timeout and for a re-attach window.
pub const STREAM_TOKEN_TTL_SECS: u64 = 3600;

fn tag(secret: &[u8], body: &[u8]) -> [u8; 16] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(b"callbridge-stream:v1:");
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

/// A token for `call_id`, or a leg's id (a `CallId` or `LegId`: the token binds either).
pub fn mint(secret: &[u8], call_id: impl Into<Uuid>, expires_unix: u64) -> String {
    let call_id: Uuid = call_id.into();
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(call_id.as_bytes());
    body.extend_from_slice(&expires_unix.to_be_bytes());
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(tag(secret, &body))
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed stream token")]
    Malformed,
    #[error("stream token signature is invalid")]
    BadSignature,
    #[error("stream token has expired")]
    Expired,
}

/// The call the token is bound to.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Uuid, TokenError> {
    let (body, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    if body.len() != 24 || signature.len() != 16 {
        return Err(TokenError::Malformed);
    }
    if !bool::from(tag(secret, &body).ct_eq(&signature)) {
        return Err(TokenError::BadSignature);
    }
    let call_id = Uuid::from_slice(&body[..16]).map_err(|_| TokenError::Malformed)?;
    let expires = u64::from_be_bytes(body[16..].try_into().map_err(|_| TokenError::Malformed)?);
    if expires <= now_unix {
        return Err(TokenError::Expired);
    }
    Ok(call_id)
}

/// The media stream URL for `call_id` (or a leg's id), with a fresh token
/// (`crate::paths::media_stream_url`).
pub fn stream_url(
    media_base: &url::Url,
    secret: &[u8],
    call_id: impl Into<Uuid>,
    now_unix: u64,
) -> String {
    let token = mint(secret, call_id, now_unix + STREAM_TOKEN_TTL_SECS);
    crate::paths::media_stream_url(media_base, &token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_signed_and_expiring() {
        let id = Uuid::new_v4();
        let token = mint(b"secret", id, 2_000);
        assert_eq!(verify(b"secret", &token, 1_000), Ok(id));
        assert_eq!(verify(b"secret", &token, 2_000), Err(TokenError::Expired));
        assert_eq!(
            verify(b"other", &token, 1_000),
            Err(TokenError::BadSignature)
        );
        let mut forged = token.clone();
        forged.replace_range(0..2, "AA");
        assert!(verify(b"secret", &forged, 1_000).is_err());
        assert_eq!(verify(b"secret", "nope", 1_000), Err(TokenError::Malformed));
    }
}
