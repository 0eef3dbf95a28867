//! The paths this service is reached on by others (Telnyx, AssemblyAI, the edge), and the
//! absolute URLs built from them: one place, so the URL a dial sends and the route the
//! router serves cannot drift apart (`http` checks its routes against these in a test).

use url::Url;

/// Telnyx Call Control webhooks.
pub const TELNYX_WEBHOOK: &str = "/webhooks/telnyx";
/// AssemblyAI's "transcript done" callback.
pub const ASSEMBLYAI_WEBHOOK: &str = "/webhooks/assemblyai";
/// Where Telnyx opens a call's media stream: the prefix, followed by the stream token.
pub const MEDIA_STREAM_PREFIX: &str = "/media/telnyx/";

/// `base` (which may carry a path prefix) joined with `path`.
pub fn url(base: &Url, path: &str) -> String {
    format!("{}{path}", base.as_str().trim_end_matches('/'))
}

/// `wss://<base host>[:port][prefix]/media/telnyx/<token>`; `ws://` for an `http` base
/// (development).
pub fn media_stream_url(base: &Url, token: &str) -> String {
    let scheme = if base.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    let host = base.host_str().unwrap_or("localhost");
    let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
    let prefix = base.path().trim_end_matches('/');
    format!("{scheme}://{host}{port}{prefix}{MEDIA_STREAM_PREFIX}{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_prefix_and_scheme() {
        let base: Url = "https://api.example.com/cb/".parse().unwrap();
        assert_eq!(
            url(&base, TELNYX_WEBHOOK),
            "https://api.example.com/cb/webhooks/telnyx"
        );
        assert_eq!(
            media_stream_url(&base, "t.k"),
            "wss://api.example.com/cb/media/telnyx/t.k"
        );
        let dev: Url = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            media_stream_url(&dev, "t.k"),
            "ws://127.0.0.1:8080/media/telnyx/t.k"
        );
    }
}
