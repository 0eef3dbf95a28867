//! Auth.js credentials: the `Authorization: Bearer` header and the session cookies, as every
//! request's authentication reads them. Input: `authorization \n cookie \n cookie …`.
#![no_main]

use callbridge::auth::credential::{self, Credential, MAX_TOKEN_LEN};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn printable(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let mut headers = HeaderMap::new();
    if let Some(value) = lines.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        if !value.is_empty() {
            headers.insert(AUTHORIZATION, value);
        }
    }
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    let names = [
        "__Secure-authjs.session-token".to_owned(),
        "authjs.session-token".to_owned(),
    ];
    match credential::from_headers(&headers, &names) {
        Ok(Some(Credential::Bearer(token))) => assert!(printable(&token), "{token:?}"),
        Ok(Some(Credential::Cookie { name, token })) => {
            assert!(names.contains(&name));
            assert!(printable(&token), "{token:?}");
        }
        Ok(None) | Err(_) => {}
    }
    // Decoding is exactly once: a decoded value never still holds an escape.
    if let Ok(token) = credential::decode_cookie_value(data) {
        assert!(printable(&token), "{token:?}");
        let bytes = token.as_bytes();
        assert!(!bytes.windows(3).any(|w| w[0] == b'%'
            && w[1].is_ascii_hexdigit()
            && w[2].is_ascii_hexdigit()));
    }
});
