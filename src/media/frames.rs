//! Telnyx media-stream frames (docs/PROVIDERS.md §1.6), parsed strictly: numbers arrive as
//! strings, `stream_id` is top-level, the payload is base64 codec bytes. Anything that does
//! not fit is an error the bridge counts and skips — never a panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;

mod scan;

/// A Telnyx media socket's read buffer. Thousands of these live at once (ADR 0045): a frame
/// is ~370 bytes and both tracks' frames arrive together every 20 ms, so 2 KiB reads a
/// burst of five in one call; the whole buffer is resident (each read zero-fills it), so
/// tungstenite's 128 KiB would be 128 KiB per call. A larger message reserves its length.
pub const SOCKET_READ_BUFFER: usize = 2048;
/// The largest message a Telnyx media socket accepts.
pub const SOCKET_MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    /// The far end of the call leg (the callee on an outbound call).
    Inbound,
    /// What Telnyx sends into the leg (the other party, and our spoken translations).
    Outbound,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Inbound => "inbound",
            Track::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub stream_id: String,
    pub call_control_id: Option<String>,
    pub encoding: String,
    pub sample_rate: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    pub track: Track,
    /// Per-track frame counter; what the reorder buffer orders by.
    pub chunk: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Connected,
    Start(Start),
    Media(Media),
    Dtmf { digit: String },
    Mark { name: String },
    Stop,
    Error { code: String, title: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not JSON")]
    NotJson,
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("missing or invalid field {0}")]
    Field(&'static str),
    #[error("payload is not base64")]
    Payload,
}

/// Numbers arrive as strings ("4"); accept genuine numbers too.
fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::String(text) => text.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}

/// A µ-law frame of 20 ms is 160 bytes; anything over 30 s (240 kB) is not a media frame.
const MAX_PAYLOAD_BYTES: usize = 240_000;

/// The shape of a `media` frame, borrowed from the message: 50 of these arrive per second
/// per track, so they are read without building a JSON tree (no allocation but the payload).
#[derive(Deserialize)]
struct MediaFrame<'a> {
    event: &'a str,
    sequence_number: Option<Counter>,
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    track: Option<&'a str>,
    chunk: Option<Counter>,
    payload: Option<&'a str>,
}

/// A counter sent as a string ("4") or, tolerated, as a number; `None` when neither parses.
struct Counter(Option<u64>);

impl<'de> Deserialize<'de> for Counter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Counter;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a counter as a string or number")
            }
            fn visit_str<E>(self, text: &str) -> Result<Counter, E> {
                Ok(Counter(text.parse().ok()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Counter, E> {
                Ok(Counter(Some(n)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Counter, E> {
                Ok(Counter(u64::try_from(n).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Counter, E> {
                Ok(Counter(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Counter, E> {
                Ok(Counter(None))
            }
            fn visit_unit<E>(self) -> Result<Counter, E> {
                Ok(Counter(None))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// The fields of a media frame that matter, wherever they were read from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MediaFields<'a> {
    /// Whether the frame has a `media` object at all.
    pub media: bool,
    pub track: Option<&'a str>,
    pub chunk: Option<u64>,
    pub sequence_number: Option<u64>,
    pub payload: Option<&'a str>,
}

impl<'a> From<MediaFrame<'a>> for MediaFields<'a> {
    fn from(frame: MediaFrame<'a>) -> Self {
        let sequence_number = frame.sequence_number.and_then(|c| c.0);
        match frame.media {
            None => Self {
                sequence_number,
                ..Self::default()
            },
            Some(media) => Self {
                media: true,
                track: media.track,
                chunk: media.chunk.and_then(|c| c.0),
                sequence_number,
                payload: media.payload,
            },
        }
    }
}

fn media_from(frame: MediaFields<'_>, spare: &mut Vec<u8>) -> Result<Frame, FrameError> {
    if !frame.media {
        return Err(FrameError::Field("media"));
    }
    let track = match frame.track {
        Some("inbound") => Track::Inbound,
        Some("outbound") => Track::Outbound,
        _ => return Err(FrameError::Field("media.track")),
    };
    let chunk = frame
        .chunk
        .or(frame.sequence_number)
        .ok_or(FrameError::Field("media.chunk"))?;
    let payload = frame.payload.ok_or(FrameError::Field("media.payload"))?;
    if payload.len() > MAX_PAYLOAD_BYTES * 4 / 3 + 4 {
        return Err(FrameError::Payload);
    }
    // Decoded over the spare's old bytes in place: only a growth is zero-filled, where
    // `decode`/`decode_vec` would zero (or allocate) the whole estimate for every frame.
    let mut decoded = std::mem::take(spare);
    let needed = base64::decoded_len_estimate(payload.len());
    if decoded.len() < needed {
        decoded.resize(needed, 0);
    }
    let written = STANDARD
        .decode_slice(payload, &mut decoded)
        .map_err(|_| FrameError::Payload)?;
    decoded.truncate(written);
    Ok(Frame::Media(Media {
        track,
        chunk,
        payload: decoded,
    }))
}

pub fn parse(raw: &str) -> Result<Frame, FrameError> {
    parse_reusing(raw, &mut Vec::new())
}

/// [`parse`], decoding a media payload into `spare`'s allocation (taken, cleared) instead of
/// a fresh one: the bridge hands back the previous frame's buffer, so a call's frames reuse
/// one allocation instead of allocating and freeing one per frame.
pub fn parse_reusing(raw: &str, spare: &mut Vec<u8>) -> Result<Frame, FrameError> {
    // The hot path: 50 media frames a second per track, read by a byte scanner
    // (`super::scan`) that builds no tree. Whatever it is not sure about (other events,
    // escapes, duplicate keys, odd types, invalid JSON) it leaves to serde, which decides
    // what is valid and which error it is: the scanner only ever answers where serde would
    // answer the same.
    if let Some(fields) = scan::media(raw)
        && let Ok(frame) = media_from(fields, spare)
    {
        return Ok(frame);
    }
    // A frame the scanner read but that is not a valid media frame is serde's to name too
    // (the scanner leaves the payload's bytes to the base64 decoder: `scan::media`).
    parse_with_serde(raw, spare)
}

/// The general path: every event, and media frames the scanner leaves alone.
fn parse_with_serde(raw: &str, spare: &mut Vec<u8>) -> Result<Frame, FrameError> {
    // Media frames it can borrow from (no escapes) first: no JSON tree.
    if let Ok(frame) = serde_json::from_str::<MediaFrame<'_>>(raw)
        && frame.event == "media"
    {
        return media_from(frame.into(), spare);
    }
    let value: Value = serde_json::from_str(raw).map_err(|_| FrameError::NotJson)?;
    let event = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or(FrameError::Field("event"))?;
    Ok(match event {
        "connected" => Frame::Connected,
        "start" => {
            let stream_id = value
                .get("stream_id")
                .and_then(Value::as_str)
                .ok_or(FrameError::Field("stream_id"))?;
            let format = value.get("start").and_then(|s| s.get("media_format"));
            let encoding = format
                .and_then(|f| f.get("encoding"))
                .and_then(Value::as_str)
                .unwrap_or("PCMU");
            Frame::Start(Start {
                stream_id: stream_id.to_owned(),
                call_control_id: text(&value, &["start", "call_control_id"]).map(str::to_owned),
                encoding: encoding.to_owned(),
                sample_rate: number(format.and_then(|f| f.get("sample_rate"))).unwrap_or(8000)
                    as u32,
            })
        }
        "media" => {
            let media = value.get("media").ok_or(FrameError::Field("media"))?;
            let track = match media.get("track").and_then(Value::as_str) {
                Some("inbound") => Track::Inbound,
                Some("outbound") => Track::Outbound,
                _ => return Err(FrameError::Field("media.track")),
            };
            let chunk = number(media.get("chunk"))
                .or_else(|| number(value.get("sequence_number")))
                .ok_or(FrameError::Field("media.chunk"))?;
            let payload = media
                .get("payload")
                .and_then(Value::as_str)
                .ok_or(FrameError::Field("media.payload"))?;
            if payload.len() > MAX_PAYLOAD_BYTES * 4 / 3 + 4 {
                return Err(FrameError::Payload);
            }
            let payload = STANDARD.decode(payload).map_err(|_| FrameError::Payload)?;
            Frame::Media(Media {
                track,
                chunk,
                payload,
            })
        }
        "dtmf" => Frame::Dtmf {
            digit: text(&value, &["dtmf", "digit"])
                .ok_or(FrameError::Field("dtmf.digit"))?
                .to_owned(),
        },
        "mark" => Frame::Mark {
            name: text(&value, &["mark", "name"])
                .ok_or(FrameError::Field("mark.name"))?
                .to_owned(),
        },
        "stop" => Frame::Stop,
        "error" => Frame::Error {
            code: value
                .get("error")
                .and_then(|e| e.get("code"))
                .map(|c| c.to_string())
                .unwrap_or_default(),
            title: text(&value, &["error", "title"])
                .unwrap_or_default()
                .to_owned(),
        },
        other => return Err(FrameError::UnknownEvent(other.chars().take(40).collect())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_payload_is_decoded_into_the_spare_buffer_not_a_fresh_one() {
        let raw = r#"{"event":"media","media":{"track":"inbound","chunk":"2","timestamp":"40","payload":"/////w=="}}"#;
        let mut spare = Vec::with_capacity(160);
        spare.extend_from_slice(b"stale bytes of the previous frame");
        let at = spare.as_ptr();
        let Ok(Frame::Media(media)) = parse_reusing(raw, &mut spare) else {
            panic!("a media frame");
        };
        assert_eq!(media.payload, vec![0xff; 4], "cleared, then decoded");
        assert_eq!(media.payload.as_ptr(), at, "the spare's allocation, reused");
        assert_eq!(Ok(Frame::Media(media)), parse(raw));
    }

    #[test]
    fn real_shaped_frames_parse() {
        let start = r#"{"event":"start","sequence_number":"1","stream_id":"s-1","start":{"user_id":"u","call_control_id":"v3:abc","call_session_id":"x","from":"+1","to":"+2","tags":[],"client_state":null,"custom_parameters":{},"media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}"#;
        assert_eq!(
            parse(start).unwrap(),
            Frame::Start(Start {
                stream_id: "s-1".into(),
                call_control_id: Some("v3:abc".into()),
                encoding: "PCMU".into(),
                sample_rate: 8000,
            })
        );
        let media = r#"{"event":"media","sequence_number":"4","stream_id":"s-1","media":{"track":"outbound","chunk":"2","timestamp":"5","payload":"/////w=="}}"#;
        assert_eq!(
            parse(media).unwrap(),
            Frame::Media(Media {
                track: Track::Outbound,
                chunk: 2,
                payload: vec![0xff; 4]
            })
        );
        assert_eq!(parse(r#"{"event":"stop","sequence_number":"9","stream_id":"s-1","stop":{"user_id":"u","call_control_id":"v3:abc"}}"#).unwrap(), Frame::Stop);
        assert_eq!(
            parse(r#"{"event":"dtmf","stream_id":"s","dtmf":{"digit":"5"}}"#).unwrap(),
            Frame::Dtmf { digit: "5".into() }
        );
        assert_eq!(
            parse(r#"{"event":"mark","stream_id":"s","mark":{"name":"utt-1"}}"#).unwrap(),
            Frame::Mark {
                name: "utt-1".into()
            }
        );
        assert!(matches!(parse(r#"{"event":"error","stream_id":"s","error":{"title":"malformed_frame","code":100003,"detail":"x"}}"#).unwrap(), Frame::Error { .. }));
        assert_eq!(
            parse(r#"{"event":"connected","version":"1.0.0"}"#).unwrap(),
            Frame::Connected
        );
    }

    #[test]
    fn the_fast_and_general_paths_agree() {
        // Escaped slashes in base64 and numbers as numbers cannot be borrowed as is; they
        // must parse to the same frame as the plain spelling.
        let plain = r#"{"event":"media","sequence_number":"7","stream_id":"s","media":{"track":"inbound","chunk":"3","timestamp":"60","payload":"//8A/w=="}}"#;
        let escaped = r#"{"event":"media","sequence_number":7,"stream_id":"s","media":{"track":"inbound","chunk":3,"timestamp":60,"payload":"\/\/8A\/w=="}}"#;
        let expected = Frame::Media(Media {
            track: Track::Inbound,
            chunk: 3,
            payload: vec![0xff, 0xff, 0x00, 0xff],
        });
        assert_eq!(parse(plain).unwrap(), expected);
        assert_eq!(parse(escaped).unwrap(), expected);
        // Without a chunk, the sequence number orders the frame.
        let no_chunk =
            r#"{"event":"media","sequence_number":"9","media":{"track":"outbound","payload":""}}"#;
        assert!(matches!(
            parse(no_chunk).unwrap(),
            Frame::Media(Media { chunk: 9, .. })
        ));
        // A media frame whose fields have the wrong types is still an error, not a panic.
        for raw in [
            r#"{"event":"media","media":{"track":7,"chunk":"1","payload":""}}"#,
            r#"{"event":"media","media":{"track":"inbound","chunk":"1","payload":5}}"#,
            r#"{"event":"media","media":"nope"}"#,
            r#"{"event":"media"}"#,
        ] {
            assert!(parse(raw).is_err(), "{raw}");
        }
    }

    /// xorshift64*: the same inputs on every run, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Both paths from scratch, with the same kind of spare buffer.
    fn both(raw: &str) -> (Result<Frame, FrameError>, Result<Frame, FrameError>) {
        let mut spare = b"old".to_vec();
        let scanned = parse_reusing(raw, &mut spare);
        let mut spare = b"old".to_vec();
        (scanned, parse_with_serde(raw, &mut spare))
    }

    #[test]
    fn the_scanner_reads_telnyx_media_frames_without_serde() {
        let raw = r#"{"event":"media","sequence_number":"4","stream_id":"s-1","media":{"track":"outbound","chunk":"2","timestamp":"5","payload":"/////w=="}}"#;
        assert_eq!(
            scan::media(raw),
            Some(MediaFields {
                media: true,
                track: Some("outbound"),
                chunk: Some(2),
                sequence_number: Some(4),
                payload: Some("/////w=="),
            })
        );
        let spaced = " {\n \"media\" : { \"payload\":\"\", \"chunk\" : 7 , \"x\":[1,-2.5,{\"y\":null},true,false]} ,\"event\":\"media\"}\r\n";
        assert_eq!(
            scan::media(spaced),
            Some(MediaFields {
                media: true,
                track: None,
                chunk: Some(7),
                sequence_number: None,
                payload: Some(""),
            })
        );
        // An escape in the payload is read as is: it is not base64, so the decoder refuses
        // it and serde, which unescapes, reads the frame.
        let escaped =
            r#"{"event":"media","media":{"track":"inbound","chunk":"1","payload":"\/w=="}}"#;
        assert_eq!(scan::media(escaped).and_then(|f| f.payload), Some(r"\/w=="));
        assert!(
            matches!(parse(escaped), Ok(Frame::Media(Media { payload, .. })) if payload == [0xff])
        );
        // Left to serde: other events, escapes, duplicates, exponents, trailing bytes.
        for raw in [
            r#"{"event":"stop"}"#,
            r#"{"event":"media","media":{"track":"in\u0062ound","chunk":"1","payload":""}}"#,
            r#"{"event":"media","event":"media","media":{}}"#,
            r#"{"event":"media","media":{"track":"inbound","track":"inbound"}}"#,
            r#"{"event":"media","x":1e3,"media":{}}"#,
            r#"{"event":"media","media":{}} x"#,
            r#"{"event":"media","media":null}"#,
            r#"{"event":"media","media":{"chunk":-1}}"#,
            r#"{"event":"media","media":{"chunk":01}}"#,
        ] {
            assert_eq!(scan::media(raw), None, "{raw}");
        }
    }

    #[test]
    fn the_scanner_and_serde_agree_on_generated_and_mutated_frames() {
        use std::fmt::Write as _;
        let keys = [
            "event",
            "media",
            "sequence_number",
            "stream_id",
            "track",
            "chunk",
            "payload",
            "timestamp",
            "extra",
        ];
        let values = [
            r#""media""#,
            r#""stop""#,
            r#""inbound""#,
            r#""outbound""#,
            r#""3""#,
            r#""x""#,
            r#""+5""#,
            r#""18446744073709551616""#,
            "7",
            "0",
            "-1",
            "1.5",
            "2e1",
            "007",
            "18446744073709551615",
            "99999999999999999999",
            "null",
            "true",
            "false",
            "[]",
            "[1,[2,{}]]",
            r#"{"a":{"b":[null]}}"#,
            r#""/////w==""#,
            r#""//8A/w==""#,
            r#""***""#,
            r#""""#,
            r#""\/w==""#,
            r#""é""#,
            "{}",
        ];
        let spaces = ["", "", "", " ", "\n", "\t ", "\r\n"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut scanned = 0;
        let mut cases = Vec::new();
        // Frames put together from plausible parts: key order, duplicates and types vary.
        for _ in 0..20_000 {
            let mut media = String::from("{");
            for i in 0..rng.below(5) {
                if i > 0 {
                    media.push(',');
                }
                let key = rng.pick(&keys);
                let value = match key {
                    "track" if rng.below(2) == 0 => rng.pick(&[r#""inbound""#, r#""outbound""#]),
                    "payload" if rng.below(2) == 0 => r#""/////w==""#,
                    _ => rng.pick(&values),
                };
                let gap = rng.pick(&spaces);
                let _ = write!(media, "{gap}\"{key}\"{gap}:{gap}{value}{gap}");
            }
            media.push('}');
            let mut frame = String::from("{");
            for i in 0..1 + rng.below(4) {
                if i > 0 {
                    frame.push(',');
                }
                let key = rng.pick(&keys);
                let value = match key {
                    "event" if rng.below(4) > 0 => r#""media""#,
                    "media" if rng.below(4) > 0 => media.as_str(),
                    _ => rng.pick(&values),
                };
                let gap = rng.pick(&spaces);
                let _ = write!(frame, "{gap}\"{key}\"{gap}:{gap}{value}{gap}");
            }
            frame.push('}');
            cases.push(frame);
        }
        // Real frames with a few bytes changed, deleted or inserted.
        let seeds = [
            r#"{"event":"media","sequence_number":"4","stream_id":"s-1","media":{"track":"outbound","chunk":"2","timestamp":"5","payload":"/////w=="}}"#,
            r#"{"event":"media","media":{"track":"inbound","chunk":12,"payload":"//8A/w==","x":[1,{"y":"é"}]}}"#,
            r#"{"event":"start","sequence_number":"1","stream_id":"s-1","start":{"call_control_id":"v3:abc","media_format":{"encoding":"PCMU","sample_rate":8000}}}"#,
        ];
        let alphabet = b"{}[]\":,\\ \n\t\x01\x1f0123456789-.eE+/=abcdeilmnortu";
        for _ in 0..60_000 {
            let mut bytes = seeds[rng.below(seeds.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bytes.len() + 1);
                let byte = alphabet[rng.below(alphabet.len())];
                match rng.below(3) {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
            if let Ok(text) = String::from_utf8(bytes) {
                cases.push(text);
            }
        }
        for raw in &cases {
            if scan::media(raw).is_some() {
                scanned += 1;
            }
            let (fast, general) = both(raw);
            assert_eq!(fast, general, "{raw}");
        }
        // The comparison means something only if the scanner answered often.
        assert!(scanned > 10_000, "the scanner answered {scanned} times");
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for (raw, expected) in [
            ("not json", FrameError::NotJson),
            (
                r#"{"event":"dance"}"#,
                FrameError::UnknownEvent("dance".into()),
            ),
            (
                r#"{"event":"media","media":{"track":"sideways","chunk":"1","payload":""}}"#,
                FrameError::Field("media.track"),
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"x","payload":""}}"#,
                FrameError::Field("media.chunk"),
            ),
            (
                r#"{"event":"media","media":{"track":"inbound","chunk":"1","payload":"***"}}"#,
                FrameError::Payload,
            ),
            // A raw control byte in the payload is invalid JSON, not a bad payload.
            (
                "{\"event\":\"media\",\"media\":{\"track\":\"inbound\",\"chunk\":\"1\",\"payload\":\"//\u{1}8\"}}",
                FrameError::NotJson,
            ),
            (r#"{"event":"start"}"#, FrameError::Field("stream_id")),
            (r#"{"no":"event"}"#, FrameError::Field("event")),
        ] {
            assert_eq!(parse(raw), Err(expected), "{raw}");
        }
    }
}
