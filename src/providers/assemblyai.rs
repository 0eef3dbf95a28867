//! AssemblyAI: the Universal Streaming v3 client and temporary tokens (docs/PROVIDERS.md §2.1).
//!
//! The handshake carries the bare API key in `Authorization` (no "Bearer"); `speech_model`
//! is required; audio goes as binary frames of 50–1000 ms; `{"type":"Terminate"}` ends a
//! session and makes the server flush its last turn before `Termination`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use url::Url;

use crate::config::{AssemblyAiConfig, Secret};
use crate::ws_client;
/// A session's socket (its reading and writing halves) and what goes over it.
pub use crate::ws_client::{Incoming, Outgoing, Socket, Writer};

#[derive(Debug, thiserror::Error)]
pub enum AssemblyAiError {
    #[error("connecting to AssemblyAI streaming failed: {0}")]
    Connect(String),
    #[error("AssemblyAI closed the session before Begin: {0}")]
    NoBegin(String),
    #[error("AssemblyAI token request failed: {0}")]
    Token(String),
}

/// The audio encodings AssemblyAI streaming takes (its `encoding` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioEncoding {
    /// G.711 µ-law, one byte a sample: telephony (Telnyx PCMU) straight through.
    PcmMulaw,
    /// Little-endian 16-bit linear PCM: browsers.
    PcmS16le,
}

impl AudioEncoding {
    /// The wire name AssemblyAI and our API use.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioEncoding::PcmMulaw => "pcm_mulaw",
            AudioEncoding::PcmS16le => "pcm_s16le",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pcm_mulaw" => Some(AudioEncoding::PcmMulaw),
            "pcm_s16le" => Some(AudioEncoding::PcmS16le),
            _ => None,
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            AudioEncoding::PcmMulaw => 1,
            AudioEncoding::PcmS16le => 2,
        }
    }
}

/// Compares with a wire name: `media/browser.rs` still does (`params.encoding == "pcm_mulaw"`);
/// remove once it asks [`AudioEncoding::bytes_per_sample`] instead (docs/adr/0039-one-way-structure.md).
impl PartialEq<&str> for AudioEncoding {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Streaming session parameters (query string).
#[derive(Debug, Clone)]
pub struct StreamParams {
    pub speech_model: String,
    /// µ-law for telephony, 16-bit PCM for browsers.
    pub encoding: AudioEncoding,
    pub sample_rate: u32,
    pub format_turns: bool,
    /// `language_detection=true`: each final turn carries `language_code` (multilingual model).
    pub language_detection: bool,
}

impl StreamParams {
    /// Telnyx PCMU straight through: no transcoding (docs/MEDIA_BRIDGE.md).
    pub fn telephony(speech_model: &str) -> Self {
        Self {
            speech_model: speech_model.to_owned(),
            encoding: AudioEncoding::PcmMulaw,
            sample_rate: 8000,
            format_turns: true,
            language_detection: false,
        }
    }

    /// A telephony session with the model chosen for a party's language.
    pub fn telephony_for(speech_model: &str, language_detection: bool) -> Self {
        Self {
            language_detection,
            ..Self::telephony(speech_model)
        }
    }

    /// Bytes of audio per millisecond for these parameters.
    pub fn bytes_per_ms(&self) -> usize {
        self.sample_rate as usize / 1000 * self.encoding.bytes_per_sample()
    }
}

/// What each streaming model supports lives with the setting that picks models.
pub use crate::config::speech::{SPEECH_MODELS, detects_language, model_languages};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Word {
    pub text: String,
    /// Milliseconds from the start of the session's audio.
    pub start: u64,
    pub end: u64,
    #[serde(default)]
    pub confidence: f64,
    /// AssemblyAI will not change this word again (its text and times are fixed), although
    /// the turn it belongs to is still open: what the bridge keeps instead of its audio.
    #[serde(default)]
    pub word_is_final: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Turn {
    pub turn_order: u64,
    #[serde(default)]
    pub turn_is_formatted: bool,
    #[serde(default)]
    pub end_of_turn: bool,
    #[serde(default)]
    pub transcript: String,
    #[serde(default)]
    pub end_of_turn_confidence: f64,
    #[serde(default)]
    pub words: Vec<Word>,
    /// With `language_detection=true`: the language of this turn (`es`, `en`, …).
    #[serde(default)]
    pub language_code: Option<String>,
    #[serde(default)]
    pub language_confidence: Option<f64>,
}

/// Server → client messages we act on; the rest are `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Begin {
        id: String,
    },
    Turn(Turn),
    /// The session's end, with what AssemblyAI bills: `session_duration_seconds` (wall
    /// clock, docs/PROVIDERS.md) and the audio it received.
    Termination {
        audio_seconds: Option<f64>,
        session_seconds: Option<f64>,
    },
    Error {
        code: i64,
        message: String,
    },
    Other,
}

/// Reads a server message in one pass, without building a JSON tree: a partial `Turn`
/// carries every word of the turn so far, each an object the tree would allocate a map and
/// its keys for, and the bridge reads several a second per track (a third of the tree's
/// time went to that). A message this strict reading refuses (a field we read with an
/// unexpected type or twice, an escaped `type`) is read by [`parse_server_message_loosely`],
/// so both give the same answer whenever the tree can be built (the `assemblyai_message`
/// fuzz target checks it). A field we do not read is skipped, not built, so three texts the
/// tree refuses still read here, each harmlessly: a number out of `f64`'s range, a lone
/// surrogate escape in a string, or nesting deeper than 128, in such a field.
pub fn parse_server_message(text: &str) -> ServerMessage {
    // A JSON array would fill the struct's fields by position, which the tree never does.
    if !text.trim_start().starts_with('{') {
        return ServerMessage::Other;
    }
    let Ok(wire) = serde_json::from_str::<WireMessage>(text) else {
        return parse_server_message_loosely(text);
    };
    match wire.kind {
        Some("Begin") => ServerMessage::Begin {
            id: wire.id.unwrap_or_default(),
        },
        // A turn needs its order; the tree's `Turn` refuses a message without one.
        Some("Turn") => match wire.turn_order {
            Some(turn_order) => ServerMessage::Turn(Turn {
                turn_order,
                turn_is_formatted: wire.turn_is_formatted,
                end_of_turn: wire.end_of_turn,
                transcript: wire.transcript,
                end_of_turn_confidence: wire.end_of_turn_confidence,
                words: wire.words,
                language_code: wire.language_code,
                language_confidence: wire.language_confidence,
            }),
            None => ServerMessage::Other,
        },
        Some("Termination") => ServerMessage::Termination {
            audio_seconds: wire.audio_duration_seconds,
            session_seconds: wire.session_duration_seconds,
        },
        Some("Error") => ServerMessage::Error {
            code: wire.error_code.unwrap_or_default(),
            message: wire.error.unwrap_or_default(),
        },
        _ => ServerMessage::Other,
    }
}

/// Every field of every message we act on, typed as [`Turn`] types them: a field of another
/// type fails the whole reading (then the loose one decides). Fields with a default in
/// `Turn` have one here, not `Option`, so that `null` fails here exactly as it fails there.
#[derive(Deserialize)]
struct WireMessage<'a> {
    /// Borrowed: an escaped `type` fails here and the loose reading decides.
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    turn_order: Option<u64>,
    #[serde(default)]
    turn_is_formatted: bool,
    #[serde(default)]
    end_of_turn: bool,
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    end_of_turn_confidence: f64,
    #[serde(default)]
    words: Vec<Word>,
    #[serde(default)]
    language_code: Option<String>,
    #[serde(default)]
    language_confidence: Option<f64>,
    #[serde(default)]
    audio_duration_seconds: Option<f64>,
    #[serde(default)]
    session_duration_seconds: Option<f64>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    error: Option<String>,
}

/// The tolerant reading: a JSON tree, each field taken only where it has the type we
/// expect. The answer for any message the one-pass reading refuses; public for the fuzz
/// target that checks the two agree.
#[doc(hidden)]
pub fn parse_server_message_loosely(text: &str) -> ServerMessage {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ServerMessage::Other;
    };
    match value.get("type").and_then(|t| t.as_str()) {
        Some("Begin") => ServerMessage::Begin {
            id: value
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        },
        Some("Turn") => serde_json::from_value(value)
            .map(ServerMessage::Turn)
            .unwrap_or(ServerMessage::Other),
        Some("Termination") => ServerMessage::Termination {
            audio_seconds: value.get("audio_duration_seconds").and_then(|v| v.as_f64()),
            session_seconds: value
                .get("session_duration_seconds")
                .and_then(|v| v.as_f64()),
        },
        Some("Error") => ServerMessage::Error {
            code: value
                .get("error_code")
                .and_then(|v| v.as_i64())
                .unwrap_or_default(),
            message: value
                .get("error")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        },
        _ => ServerMessage::Other,
    }
}

/// Ends a session: the server flushes its last turn, then sends `Termination`.
pub const TERMINATE: Outgoing<'static> = Outgoing::Text(r#"{"type":"Terminate"}"#);

#[derive(Clone)]
pub struct AssemblyAiClient {
    streaming_url: Url,
    api_key: Secret<String>,
    http: reqwest::Client,
    /// Shared by every session's socket (ADR 0060).
    tls: Arc<rustls::ClientConfig>,
}

/// The buffers of a session's socket. A call holds two of these sockets, a replica
/// thousands (ADR 0045). Reads: what comes back is 8-byte pongs, ten a second, and JSON
/// (`Begin`, partial and final `Turn`s of a few hundred bytes to a few KiB, more with a long
/// turn's words), a few a second. The read buffer is sized for the pongs and the short
/// messages; a larger message takes a buffer of exactly its size while it is read, one
/// allocation a message, and the socket keeps 512 bytes between messages (ADR 0061). Writes:
/// a batch (800 bytes at 100 ms) and the ping after it go out in one write; a replay of a
/// longer batch takes more only for that write. Public for the benchmark's floor relay,
/// which must not pay for buffers the bridge does not have.
pub fn socket_options() -> ws_client::Options {
    ws_client::Options {
        read_buffer: 512,
        // Above the largest default batch plus its ping (800 + 14 + 14 bytes of frame headers).
        write_buffer: 1024,
        // A Turn carries its words (about 100 bytes each): an hour of speech in one turn.
        max_message: 4 << 20,
        handshake_timeout: Duration::from_secs(10),
    }
}

impl AssemblyAiClient {
    pub fn new(config: &AssemblyAiConfig) -> Self {
        Self {
            streaming_url: config.streaming_url.clone(),
            api_key: config.api_key.clone(),
            http: super::http_client(Duration::from_secs(10)),
            tls: crate::tls::websocket_client_config(),
        }
    }

    pub fn session_url(&self, params: &StreamParams, token: Option<&str>) -> Url {
        let mut url = self.streaming_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("speech_model", &params.speech_model)
                .append_pair("encoding", params.encoding.as_str())
                .append_pair("sample_rate", &params.sample_rate.to_string())
                .append_pair(
                    "format_turns",
                    if params.format_turns { "true" } else { "false" },
                );
            if params.language_detection {
                query.append_pair("language_detection", "true");
            }
            if let Some(token) = token {
                query.append_pair("token", token);
            }
        }
        url
    }

    /// Opens a session and waits for `Begin`; returns the socket and the session id.
    pub async fn connect(
        &self,
        params: &StreamParams,
    ) -> Result<(Socket, String), AssemblyAiError> {
        let mut request = self
            .session_url(params, None)
            .as_str()
            .into_client_request()
            .map_err(|e| AssemblyAiError::Connect(e.to_string()))?;
        let key = HeaderValue::from_str(self.api_key.expose())
            .map_err(|e| AssemblyAiError::Connect(e.to_string()))?;
        request.headers_mut().insert("authorization", key);
        let mut socket = ws_client::connect(request, &self.tls, socket_options())
            .await
            .map_err(|e| AssemblyAiError::Connect(e.to_string()))?;
        let begin = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match socket.reader.next().await {
                    Ok(Incoming::Text(text)) => match parse_server_message(text) {
                        ServerMessage::Begin { id } => return Ok(id),
                        ServerMessage::Error { code, message } => {
                            return Err(format!("{code}: {message}"));
                        }
                        _ => {}
                    },
                    Ok(Incoming::Close(frame)) => return Err(describe_close(frame)),
                    Ok(_) => {}
                    Err(error) => return Err(error.to_string()),
                }
            }
        })
        .await
        .map_err(|_| AssemblyAiError::NoBegin("no Begin within 10 s".into()))?
        .map_err(AssemblyAiError::NoBegin)?;
        Ok((socket, begin))
    }

    /// A short-lived, single-use token a browser can stream with directly
    /// (`GET /v3/token?expires_in_seconds=`, on the streaming host).
    pub async fn temporary_token(
        &self,
        expires_in_seconds: u32,
    ) -> Result<(String, u32), AssemblyAiError> {
        let mut url = self.streaming_url.clone();
        let scheme = if url.scheme() == "wss" {
            "https"
        } else {
            "http"
        };
        url.set_scheme(scheme)
            .map_err(|_| AssemblyAiError::Token("bad streaming URL".into()))?;
        url.set_path("/v3/token");
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("expires_in_seconds", &expires_in_seconds.to_string());
        let response = self
            .http
            .get(url)
            .header("authorization", self.api_key.expose())
            .send()
            .await
            .map_err(|e| AssemblyAiError::Token(e.to_string()))?;
        if !response.status().is_success() {
            return Err(AssemblyAiError::Token(format!(
                "status {}",
                response.status()
            )));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| AssemblyAiError::Token(e.to_string()))?;
        let token = body
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| AssemblyAiError::Token("no token".into()))?;
        let expires = body
            .get("expires_in_seconds")
            .and_then(|t| t.as_u64())
            .unwrap_or(u64::from(expires_in_seconds));
        Ok((token.to_owned(), expires as u32))
    }

    /// The streaming URL a browser opens with a temporary token.
    pub fn browser_url(&self, params: &StreamParams, token: &str) -> Url {
        self.session_url(params, Some(token))
    }
}

/// A close frame's code and reason, as the session's end reason.
pub fn describe_close(frame: Option<(u16, &str)>) -> String {
    match frame {
        Some((code, reason)) => format!("closed {code}: {reason}"),
        None => "closed without a reason".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod tls {
        use super::*;

        fn config(streaming_url: &str) -> AssemblyAiConfig {
            AssemblyAiConfig {
                api_key: Secret::new("sim-aai-key".to_owned()),
                api_base: "https://api.assemblyai.com".parse().unwrap(),
                streaming_url: streaming_url.parse().unwrap(),
                webhook_secret: None,
            }
        }

        /// Two sessions, one after the other, to the simulator over `wss://`: the second
        /// resumes the first's TLS session, which a config per connection (tokio-tungstenite's
        /// default) never can, its session cache being new and empty.
        #[cfg(feature = "sim")]
        #[tokio::test]
        async fn every_session_shares_one_tls_config_so_a_reconnect_resumes() {
            use rustls::HandshakeKind;
            let sim = crate::sim::assemblyai::AssemblyAiSim::start_tls("sim-aai-key", 0)
                .await
                .unwrap();
            let client = AssemblyAiClient::new(&config(&sim.streaming_url()));
            let params = StreamParams::telephony("universal-streaming-english");
            for (session, expected) in [HandshakeKind::Full, HandshakeKind::Resumed]
                .into_iter()
                .enumerate()
            {
                let (mut socket, _) = client.connect(&params).await.unwrap();
                assert_eq!(socket.tls_handshake, Some(expected), "session {session}");
                socket.writer.close(1000, "").await.unwrap();
            }
        }

        #[test]
        fn every_client_shares_the_process_tls_config() {
            let config = config("wss://streaming.assemblyai.com/v3/ws");
            let (one, other) = (
                AssemblyAiClient::new(&config),
                AssemblyAiClient::new(&config),
            );
            assert!(Arc::ptr_eq(&one.tls, &other.tls));
        }
    }

    fn partial_with_words(n: usize) -> String {
        let words: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"text":"w{i}","start":{},"end":{},"confidence":0.93,"word_is_final":true}}"#,
                    i * 300,
                    i * 300 + 300
                )
            })
            .collect();
        format!(
            r#"{{"type":"Turn","turn_order":7,"turn_is_formatted":false,"end_of_turn":false,"transcript":"x","end_of_turn_confidence":0.12,"words":[{}]}}"#,
            words.join(",")
        )
    }

    #[test]
    fn the_one_pass_reading_reads_each_message_as_the_tree_does() {
        let texts = [
            r#"{"type":"Begin","id":"s-1","expires_at":1700000000}"#.to_owned(),
            r#"{"type":"Begin"}"#.to_owned(),
            r#"{"type":"Begin","id":7}"#.to_owned(),
            r#"{"type":"Begin","id":"s","turn_is_formatted":null}"#.to_owned(),
            partial_with_words(0),
            partial_with_words(12),
            r#"{"type":"Turn","turn_order":3,"end_of_turn":true,"turn_is_formatted":true,"transcript":"Hola.","language_code":"es","language_confidence":0.8}"#.to_owned(),
            r#"{"type":"Turn","turn_order":null}"#.to_owned(),
            r#"{"type":"Turn"}"#.to_owned(),
            r#"{"type":"Turn","turn_order":3,"turn_is_formatted":null}"#.to_owned(),
            r#"{"type":"Turn","turn_order":3,"words":[{"start":0,"end":1}]}"#.to_owned(),
            r#"{"type":"Turn","turn_order":3,"words":[["a",0,10]]}"#.to_owned(),
            r#"{"type":"Turn","turn_order":3,"id":5,"transcript":"a"}"#.to_owned(),
            r#"{"type":"Turn","turn_order":3,"transcript":"a","transcript":"b"}"#.to_owned(),
            r#"{"type":"Turn","turn_order":-1}"#.to_owned(),
            r#"{"type":"Turn","turn_order":2.0}"#.to_owned(),
            r#"{"type":"Termination","audio_duration_seconds":12,"session_duration_seconds":13.5}"#.to_owned(),
            r#"{"type":"Termination","audio_duration_seconds":"12"}"#.to_owned(),
            r#"{"type":"Error","error_code":3005,"error":"too fast"}"#.to_owned(),
            r#"{"type":"Error","error_code":18446744073709551615}"#.to_owned(),
            r#"{"type":"Error","error_code":1.5,"error":null}"#.to_owned(),
            r#"{"type":7}"#.to_owned(),
            r#"{"type":"Typo"}"#.to_owned(),
            r#"["Turn",3]"#.to_owned(),
            r#"  {"type":"Begin","id":"s"}  "#.to_owned(),
            r#"{"type":"Begin","id":"s"} trailing"#.to_owned(),
            r#"{"type":"Beg\u0069n","id":"s"}"#.to_owned(),
            "not json".to_owned(),
            String::new(),
        ];
        for text in &texts {
            assert_eq!(
                parse_server_message(text),
                parse_server_message_loosely(text),
                "{text}"
            );
        }
        let ServerMessage::Turn(turn) = parse_server_message(&partial_with_words(12)) else {
            panic!("a partial turn");
        };
        assert_eq!((turn.turn_order, turn.words.len()), (7, 12));
        assert_eq!(turn.words[11].end, 3600);
        assert_eq!(
            parse_server_message(r#"{"type":"Begin","id":7}"#),
            ServerMessage::Begin { id: String::new() }
        );
        assert_eq!(parse_server_message(r#"["Turn",3]"#), ServerMessage::Other);
        // Texts the tree refuses, in fields that are not ours: read all the same.
        let deep = format!(
            r#"{{"type":"Begin","id":"s","x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for unread in [
            r#"{"type":"Begin","id":"s","expires_at":1e400}"#,
            r#"{"type":"Begin","id":"s","x":"\ud800"}"#,
            deep.as_str(),
        ] {
            assert_eq!(
                parse_server_message(unread),
                ServerMessage::Begin { id: "s".into() },
                "{unread}"
            );
            assert_eq!(parse_server_message_loosely(unread), ServerMessage::Other);
        }
    }
}
