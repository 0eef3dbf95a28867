//! AssemblyAI async transcripts (docs/PROVIDERS.md §2.3): `POST /v2/transcript` (bare-key
//! `Authorization`, `audio_url` required) answers `queued`; the simulator then downloads
//! `audio_url` itself — so a presigned URL that does not work, or is not audio, ends as
//! `status: error` exactly as with AssemblyAI — "transcribes" it from a script (words and
//! utterances with `channel`/`speaker`, times in ms, one channel per party when
//! `multichannel`), and calls `webhook_url` with `{"transcript_id","status"}` plus the
//! configured auth header, re-delivering on 5xx up to 10 attempts (a 4xx stops). `GET
//! /v2/transcript/{id}` returns the transcript object.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// One webhook delivery attempt as the simulator made it.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub transcript_id: String,
    pub url: String,
    pub status: Option<u16>,
    pub auth_header: Option<(String, String)>,
}

struct Inner {
    transcripts: HashMap<String, Value>,
    submissions: Vec<Value>,
    deliveries: Vec<WebhookDelivery>,
    /// Utterances spoken, alternating channel 1 and 2 (or speakers A/B).
    script: Vec<String>,
}

#[derive(Clone)]
pub struct AssemblyAiAsyncSim {
    pub address: SocketAddr,
    api_key: String,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    processing_delay: Duration,
}

impl AssemblyAiAsyncSim {
    pub async fn start(api_key: &str, port: u16) -> std::io::Result<Self> {
        crate::tls::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let sim = Self {
            address: listener.local_addr()?,
            api_key: api_key.to_owned(),
            inner: Arc::new(Mutex::new(Inner {
                transcripts: HashMap::new(),
                submissions: Vec::new(),
                deliveries: Vec::new(),
                script: vec![
                    "hello, this is a test call".into(),
                    "can you hear me clearly".into(),
                    "yes I can hear you".into(),
                    "thank you, goodbye".into(),
                ],
            })),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            processing_delay: Duration::from_millis(100),
        };
        let router = Router::new()
            .route("/v2/transcript", post(submit))
            .route("/v2/transcript/{id}", get(fetch))
            .with_state(sim.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(sim)
    }

    /// `ASSEMBLYAI_API_BASE` for the service under test.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.address)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_script(&self, utterances: &[&str]) {
        self.lock().script = utterances.iter().map(|s| s.to_string()).collect();
    }

    /// Every `POST /v2/transcript` body received.
    pub fn submissions(&self) -> Vec<Value> {
        self.lock().submissions.clone()
    }

    pub fn deliveries(&self) -> Vec<WebhookDelivery> {
        self.lock().deliveries.clone()
    }

    pub fn transcript(&self, id: &str) -> Option<Value> {
        self.lock().transcripts.get(id).cloned()
    }

    /// Waits until `count` webhooks were answered 2xx (or `timeout`).
    pub async fn wait_for_webhooks(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ok = self
                .deliveries()
                .iter()
                .filter(|d| d.status.is_some_and(|s| (200..300).contains(&s)))
                .count();
            if ok >= count {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == self.api_key)
    }

    fn set_status(&self, id: &str, update: Value) {
        if let Some(Value::Object(transcript)) = self.lock().transcripts.get_mut(id)
            && let Value::Object(update) = update
        {
            transcript.extend(update);
        }
    }

    /// Builds the transcript of `duration_ms` of audio from the script.
    fn transcribe(&self, multichannel: bool, speaker_labels: bool, duration_ms: u64) -> Value {
        let script = self.lock().script.clone();
        let mut words = Vec::new();
        let mut utterances = Vec::new();
        let per_word = 300u64;
        let mut at = 0u64;
        for (i, utterance) in script.iter().enumerate() {
            let channel = (i % 2 + 1).to_string();
            let speaker = if multichannel {
                channel.clone()
            } else {
                ["A", "B"][i % 2].to_string()
            };
            let mut utterance_words = Vec::new();
            let start = at;
            for text in utterance.split_whitespace() {
                let mut word = json!({
                    "text": text, "start": at, "end": at + per_word - 20, "confidence": 0.97,
                });
                if multichannel {
                    word["channel"] = json!(channel);
                    word["speaker"] = json!(speaker);
                } else if speaker_labels {
                    word["speaker"] = json!(speaker);
                }
                utterance_words.push(word);
                at += per_word;
            }
            let mut entry = json!({
                "text": utterance, "start": start, "end": at.saturating_sub(20),
                "confidence": 0.97, "speaker": speaker, "words": utterance_words,
            });
            if multichannel {
                entry["channel"] = json!(channel);
            }
            words.extend(utterance_words);
            utterances.push(entry);
            at += 400;
        }
        let text = script.join(" ");
        let mut transcript = json!({
            "status": "completed",
            "text": text,
            "words": words,
            "language_code": "en",
            "language_confidence": 0.98,
            "audio_duration": duration_ms as f64 / 1000.0,
            "confidence": 0.97,
        });
        if multichannel || speaker_labels {
            transcript["utterances"] = json!(utterances);
        } else {
            transcript["utterances"] = Value::Null;
        }
        if multichannel {
            transcript["audio_channels"] = json!(2);
        }
        transcript
    }

    async fn process(self, id: String, request: Value) {
        tokio::time::sleep(self.processing_delay).await;
        self.set_status(&id, json!({"status": "processing"}));
        let audio_url = request["audio_url"].as_str().unwrap_or_default().to_owned();
        let outcome = match self.http.get(&audio_url).send().await {
            Ok(response) if response.status().is_success() => match response.bytes().await {
                Ok(bytes) => match crate::recordings::format::AudioFormat::sniff(&bytes) {
                    None => Err("File does not appear to contain audio.".to_string()),
                    Some(_) => {
                        let duration = super::recordings::wav_duration_ms(&bytes).unwrap_or(5_000);
                        if duration < 160 {
                            Err("Audio duration is too short.".to_string())
                        } else {
                            Ok(duration)
                        }
                    }
                },
                Err(error) => Err(format!("Download error: {error}")),
            },
            Ok(response) => Err(format!(
                "Download error, unable to download {audio_url} ({})",
                response.status()
            )),
            Err(error) => Err(format!(
                "Download error, unable to download {audio_url}: {error}"
            )),
        };
        let status = match outcome {
            Ok(duration_ms) => {
                let multichannel = request["multichannel"].as_bool().unwrap_or(false);
                let labels = request["speaker_labels"].as_bool().unwrap_or(false);
                self.set_status(&id, self.transcribe(multichannel, labels, duration_ms));
                "completed"
            }
            Err(error) => {
                self.set_status(&id, json!({"status": "error", "error": error}));
                "error"
            }
        };
        let Some(url) = request["webhook_url"].as_str() else {
            return;
        };
        let auth = match (
            request["webhook_auth_header_name"].as_str(),
            request["webhook_auth_header_value"].as_str(),
        ) {
            (Some(name), Some(value)) => Some((name.to_owned(), value.to_owned())),
            _ => None,
        };
        for _attempt in 1..=10 {
            let mut call = self
                .http
                .post(url)
                .json(&json!({"transcript_id": id, "status": status}));
            if let Some((name, value)) = &auth {
                call = call.header(name.as_str(), value.as_str());
            }
            let answered = call.send().await.ok().map(|r| r.status().as_u16());
            self.lock().deliveries.push(WebhookDelivery {
                transcript_id: id.clone(),
                url: url.to_owned(),
                status: answered,
                auth_header: auth.clone(),
            });
            match answered {
                Some(code) if (200..500).contains(&code) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn submit(
    State(sim): State<AssemblyAiAsyncSim>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !sim.authorised(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Authentication error, API token missing/invalid",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let Some(audio_url) = request["audio_url"].as_str().filter(|u| !u.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "audio_url is required");
    };
    if request["webhook_auth_header_name"].is_string()
        != request["webhook_auth_header_value"].is_string()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "webhook_auth_header_name and webhook_auth_header_value go together",
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let transcript = json!({
        "id": id,
        "status": "queued",
        "audio_url": audio_url,
        "webhook_url": request["webhook_url"],
        "webhook_auth": request["webhook_auth_header_name"].is_string(),
        "multichannel": request["multichannel"],
        "speaker_labels": request["speaker_labels"],
        "language_detection": request["language_detection"],
        "text": null, "words": null, "utterances": null,
    });
    {
        let mut inner = sim.lock();
        inner.submissions.push(request.clone());
        inner.transcripts.insert(id.clone(), transcript.clone());
    }
    tokio::spawn(sim.clone().process(id, request));
    Json(transcript).into_response()
}

async fn fetch(
    State(sim): State<AssemblyAiAsyncSim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !sim.authorised(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Authentication error, API token missing/invalid",
        );
    }
    match sim.transcript(&id) {
        Some(transcript) => Json(transcript).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "Transcript lookup error, transcript id not found",
        ),
    }
}
