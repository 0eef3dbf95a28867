//! Telnyx webhooks: the Ed25519 signature check over `timestamp|body` and then the body as
//! `POST /webhooks/telnyx` reads it (JSON, NUL replaced for storage, the v2 envelope, the
//! `client_state` we put in commands). Input: `timestamp \n signature \n body`.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callbridge::providers::telnyx::{self, WebhookEvent, WebhookVerifier};
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const NOW: i64 = 1_780_000_000;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static VERIFIER: LazyLock<WebhookVerifier> = LazyLock::new(|| {
    WebhookVerifier::from_base64(&STANDARD.encode(KEY.verifying_key().as_bytes()))
        .expect("a valid key")
});

fn split(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let timestamp = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    (timestamp, signature, parts.next().unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let (timestamp, signature, body) = split(data);
    // Whatever the bytes, nobody without the private key gets a body accepted.
    assert!(
        VERIFIER
            .verify(Some(timestamp), Some(signature), body, NOW)
            .is_err(),
        "a signature the fuzzer made up verified"
    );
    // A genuine signature over any body verifies, and not over another timestamp.
    let now = NOW.to_string();
    let mut message = now.as_bytes().to_vec();
    message.push(b'|');
    message.extend_from_slice(body);
    let genuine = STANDARD.encode(KEY.sign(&message).to_bytes());
    assert_eq!(
        VERIFIER.verify(Some(now.as_bytes()), Some(genuine.as_bytes()), body, NOW),
        Ok(())
    );
    let other = (NOW + 1).to_string();
    assert!(
        VERIFIER
            .verify(Some(other.as_bytes()), Some(genuine.as_bytes()), body, NOW)
            .is_err()
    );

    // The handler's reading of a verified body.
    let Ok(mut envelope) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    callbridge::db::replace_nul(&mut envelope);
    assert!(
        !envelope.to_string().contains("\\u0000"),
        "a NUL survived replace_nul"
    );
    if let Ok(event) = WebhookEvent::parse(&envelope) {
        assert!(!event.id.is_empty() && event.id.len() <= 200);
        assert!(!event.event_type.contains('_'));
        if let Some(state) = event.field("client_state") {
            let _ = telnyx::decode_client_state(state);
            let _ = telnyx::decode_client_state_leg(state);
        }
    }
});
