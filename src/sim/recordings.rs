//! Telnyx recording downloads (docs/PROVIDERS.md §1.3): `recording_urls` are S3 presigned links
//! valid for 10 minutes (`X-Amz-Expires=600`). This server hands out links signed with its own
//! key that stop working at their expiry (403 `AccessDenied`, "Request has expired", like
//! S3) or when tampered with (403 `SignatureDoesNotMatch`), serves real WAV files generated
//! here, and injects download faults (5xx, a body cut short) for the import's retries.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{NaiveDateTime, Utc};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

#[derive(Debug, Clone)]
pub enum DownloadFault {
    /// Answer with this status.
    Status(u16),
    /// Announce the full length, send this many bytes, then drop the connection.
    Truncate(usize),
    /// Answer 302 with this `Location` (a presigned link that bounces somewhere else).
    Redirect(String),
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, Bytes>,
    faults: VecDeque<DownloadFault>,
    /// (file, status) of every request.
    requests: Vec<(String, u16)>,
}

#[derive(Clone)]
pub struct RecordingServerSim {
    pub address: SocketAddr,
    key: [u8; 32],
    inner: Arc<Mutex<Inner>>,
}

const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl RecordingServerSim {
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let sim = Self {
            address: listener.local_addr()?,
            key: rand::random(),
            inner: Arc::default(),
        };
        let router = Router::new()
            .route("/recordings/{name}", get(download))
            .with_state(sim.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(sim)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `bytes` as `name` (e.g. `rec-1.wav`).
    pub fn add(&self, name: &str, bytes: impl Into<Bytes>) {
        self.lock().files.insert(name.to_owned(), bytes.into());
    }

    pub fn inject(&self, fault: DownloadFault) {
        self.lock().faults.push_back(fault);
    }

    /// Every request so far: (file, status).
    pub fn requests(&self) -> Vec<(String, u16)> {
        self.lock().requests.clone()
    }

    fn signature(&self, name: &str, date: &str, expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{name}\n{date}\n{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A link to `name` valid for `ttl` from now (Telnyx: 600 s).
    pub fn link(&self, name: &str, ttl: Duration) -> String {
        self.link_signed_at(name, Utc::now().naive_utc(), ttl)
    }

    /// A link signed at `signed_at` (in the past to make an already-expired one).
    pub fn link_signed_at(&self, name: &str, signed_at: NaiveDateTime, ttl: Duration) -> String {
        let date = signed_at.format(DATE_FORMAT).to_string();
        let expires = ttl.as_secs();
        format!(
            "http://{}/recordings/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-Signature={}",
            self.address,
            self.signature(name, &date, expires)
        )
    }
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn download(
    State(sim): State<RecordingServerSim>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let response = serve(&sim, &name, &query);
    sim.lock().requests.push((name, response.status().as_u16()));
    response
}

fn serve(sim: &RecordingServerSim, name: &str, query: &HashMap<String, String>) -> Response {
    let (Some(date), Some(expires), Some(signature)) = (
        query.get("X-Amz-Date"),
        query
            .get("X-Amz-Expires")
            .and_then(|e| e.parse::<u64>().ok()),
        query.get("X-Amz-Signature"),
    ) else {
        return s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Query-string authentication requires the X-Amz parameters",
        );
    };
    let valid: bool = sim
        .signature(name, date, expires)
        .as_bytes()
        .ct_eq(signature.as_bytes())
        .into();
    if !valid {
        return s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    let Ok(signed_at) = NaiveDateTime::parse_from_str(date, DATE_FORMAT) else {
        return s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "X-Amz-Date is not a date",
        );
    };
    if Utc::now().naive_utc() > signed_at + chrono::Duration::seconds(expires as i64) {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let (bytes, fault) = {
        let mut inner = sim.lock();
        let Some(bytes) = inner.files.get(name).cloned() else {
            return s3_error(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            );
        };
        (bytes, inner.faults.pop_front())
    };
    let content_type = if name.ends_with(".mp3") {
        "audio/mpeg"
    } else {
        "audio/wav"
    };
    let length = bytes.len();
    let body = match fault {
        Some(DownloadFault::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return s3_error(status, "InternalError", "Simulated failure");
        }
        Some(DownloadFault::Redirect(location)) => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return response;
        }
        Some(DownloadFault::Truncate(after)) => {
            let head = bytes.slice(..after.min(length));
            Body::from_stream(futures_util::stream::iter([
                Ok(head),
                Err(std::io::Error::other("simulated connection drop")),
            ]))
        }
        None => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..length)
                .step_by(64 * 1024)
                .map(|start| Ok(bytes.slice(start..(start + 64 * 1024).min(length))))
                .collect();
            Body::from_stream(futures_util::stream::iter(chunks))
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// A real PCM WAV: 16-bit little-endian, `channels` channels (a different tone on each),
/// `sample_rate` Hz, `millis` long. Telnyx dual-channel recordings have one party per channel.
pub fn wav(millis: u32, channels: u16, sample_rate: u32) -> Vec<u8> {
    let frames = (sample_rate as u64 * millis as u64 / 1000) as usize;
    let block_align = channels as usize * 2;
    let data_len = frames * block_align;
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * block_align as u32).to_le_bytes());
    out.extend_from_slice(&(block_align as u16).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for frame in 0..frames {
        let t = frame as f64 / sample_rate as f64;
        for channel in 0..channels {
            let hz = 440.0 * (channel as f64 + 1.0);
            let sample =
                (0.3 * (2.0 * std::f64::consts::PI * hz * t).sin() * i16::MAX as f64) as i16;
            out.extend_from_slice(&sample.to_le_bytes());
        }
    }
    out
}

/// Duration of a PCM WAV in milliseconds, from its header (`None` if it is not one).
pub fn wav_duration_ms(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 44 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let byte_rate = u32::from_le_bytes(bytes[28..32].try_into().ok()?) as u64;
    let data_len = u32::from_le_bytes(bytes[40..44].try_into().ok()?) as u64;
    (byte_rate > 0).then(|| data_len * 1000 / byte_rate)
}

/// The payload of `call.recording.saved` (docs/PROVIDERS.md §1.3) for these links.
pub fn recording_saved_payload(
    base: &Value,
    recording_id: &str,
    wav_url: &str,
    mp3_url: Option<&str>,
    channels: &str,
) -> Value {
    let mut payload = base.clone();
    if let Some(object) = payload.as_object_mut() {
        object.insert("recording_id".into(), json!(recording_id));
        object.insert(
            "recording_urls".into(),
            json!({"wav": wav_url, "mp3": mp3_url}),
        );
        object.insert(
            "public_recording_urls".into(),
            json!({"wav": null, "mp3": null}),
        );
        object.insert("channels".into(), json!(channels));
        object.insert(
            "recording_started_at".into(),
            json!(Utc::now().to_rfc3339()),
        );
        object.insert("recording_ended_at".into(), json!(Utc::now().to_rfc3339()));
        object.insert("format".into(), json!("wav"));
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_wav_is_a_wav_of_the_right_length() {
        let bytes = wav(1500, 2, 8000);
        assert_eq!(bytes.len(), 44 + 8000 * 3 / 2 * 4);
        assert_eq!(wav_duration_ms(&bytes), Some(1500));
        assert_eq!(
            crate::recordings::format::AudioFormat::sniff(&bytes),
            Some(crate::recordings::format::AudioFormat::Wav)
        );
    }
}
