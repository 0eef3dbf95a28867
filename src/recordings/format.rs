//! Which audio formats we store, recognised by their bytes, not by what the client says.
//!
//! WAV (`RIFF....WAVE`), MP3 (`ID3` tag or an MPEG audio frame sync), Ogg (`OggS`), FLAC
//! (`fLaC`) and WebM/Matroska (the EBML magic `1A 45 DF A3`). [`SNIFF_LEN`] bytes are enough.

use serde::Serialize;
use utoipa::ToSchema;

/// Bytes needed to recognise every format here.
pub const SNIFF_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    Wav,
    Mp3,
    Ogg,
    Flac,
    Webm,
}

impl AudioFormat {
    /// The content type we store and serve.
    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Ogg => "audio/ogg",
            AudioFormat::Flac => "audio/flac",
            AudioFormat::Webm => "audio/webm",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Flac => "flac",
            AudioFormat::Webm => "webm",
        }
    }

    /// The format a declared `Content-Type` names (parameters ignored), if it is audio we take.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        Some(match essence.as_str() {
            "audio/wav" | "audio/wave" | "audio/x-wav" | "audio/vnd.wave" => AudioFormat::Wav,
            "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg-3" => AudioFormat::Mp3,
            "audio/ogg" | "audio/opus" | "audio/vorbis" => AudioFormat::Ogg,
            "audio/flac" | "audio/x-flac" => AudioFormat::Flac,
            "audio/webm" | "audio/x-matroska" | "audio/matroska" => AudioFormat::Webm,
            _ => return None,
        })
    }

    /// The format of these leading bytes, if they are one of ours.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
            return Some(AudioFormat::Wav);
        }
        if bytes.starts_with(b"OggS") {
            return Some(AudioFormat::Ogg);
        }
        if bytes.starts_with(b"fLaC") {
            return Some(AudioFormat::Flac);
        }
        if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
            return Some(AudioFormat::Webm);
        }
        if bytes.len() >= 10 && bytes.starts_with(b"ID3") && bytes[3] < 0xFF && bytes[4] < 0xFF {
            return Some(AudioFormat::Mp3);
        }
        if bytes.len() >= 4 && is_mpeg_audio_frame(&bytes[0..4]) {
            return Some(AudioFormat::Mp3);
        }
        None
    }
}

/// An MPEG-1/2/2.5 audio frame header: 11 sync bits, a valid version and layer, a bitrate
/// index that is neither "free" nor "bad", a valid sample-rate index.
fn is_mpeg_audio_frame(header: &[u8]) -> bool {
    let sync = header[0] == 0xFF && header[1] & 0xE0 == 0xE0;
    let version = (header[1] >> 3) & 0b11;
    let layer = (header[1] >> 1) & 0b11;
    let bitrate = header[2] >> 4;
    let sample_rate = (header[2] >> 2) & 0b11;
    sync && version != 0b01
        && layer != 0b00
        && bitrate != 0
        && bitrate != 0xF
        && sample_rate != 0b11
}

/// Whether the declared and sniffed formats agree (Ogg/WebM containers are loose about it).
pub fn declared_matches(declared: AudioFormat, sniffed: AudioFormat) -> bool {
    declared == sniffed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_format_by_its_bytes() {
        let cases: &[(&[u8], Option<AudioFormat>)] = &[
            (b"RIFF\x24\x00\x00\x00WAVEfmt ", Some(AudioFormat::Wav)),
            (b"RIFF\x24\x00\x00\x00AVI LIST", None),
            (b"ID3\x04\x00\x00\x00\x00\x00\x00", Some(AudioFormat::Mp3)),
            (
                &[0xFF, 0xFB, 0x90, 0x64, 0, 0, 0, 0],
                Some(AudioFormat::Mp3),
            ),
            (&[0xFF, 0xFB, 0xF0, 0x64, 0, 0, 0, 0], None), // bad bitrate index
            (&[0xFF, 0xF9, 0x90, 0x64, 0, 0, 0, 0], None), // layer 0 (reserved)
            (
                b"OggS\x00\x02\x00\x00\x00\x00\x00\x00",
                Some(AudioFormat::Ogg),
            ),
            (
                b"fLaC\x00\x00\x00\x22\x10\x00\x10\x00",
                Some(AudioFormat::Flac),
            ),
            (
                &[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81],
                Some(AudioFormat::Webm),
            ),
            (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", None),
            (b"hello world, not audio", None),
            (b"RIFF", None),
            (b"", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(AudioFormat::sniff(bytes), *expected, "{bytes:?}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            AudioFormat::from_content_type("audio/x-wav; codecs=1"),
            Some(AudioFormat::Wav)
        );
        assert_eq!(
            AudioFormat::from_content_type("AUDIO/MPEG"),
            Some(AudioFormat::Mp3)
        );
        assert_eq!(AudioFormat::from_content_type("text/plain"), None);
        assert_eq!(
            AudioFormat::from_content_type("application/octet-stream"),
            None
        );
    }
}
