//! Recordings: `POST /api/recordings` (streamed upload), `POST /api/recordings/upload-url`
//! and `POST /api/recordings/{id}/complete` (direct upload), `GET /api/recordings/{id}`,
//! `GET /api/recordings/{id}/download`, `GET /api/calls/{id}/recordings` and
//! `GET /api/calls/{id}/transcript`. All scoped to the active organisation: another
//! organisation's recording or call is 404 (docs/RECORDINGS.md).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{BrowserOrgContext, OrgContext};
use crate::calls;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Json, Path, Query};
use crate::ids::{CallId, OrgId};
use crate::orgs::Role;
use crate::recordings::format::{AudioFormat, SNIFF_LEN};
use crate::recordings::store::{self, Limits, StoreError};
use crate::recordings::{self, Recording, Target};
use crate::state::AppState;
use crate::storage::objects;
use crate::transcripts::{self, CallRecording, CallTranscript};

/// The recordings routes. The streamed upload has no body-size extractor limit: it enforces
/// `RECORDINGS_MAX_BYTES` itself while streaming (and `http::timeouts` gives it its own
/// timeout).
pub fn routes() -> OpenApiRouter<AppState> {
    let (schemas, paths, upload_route) = routes!(upload);
    OpenApiRouter::new()
        .routes((
            schemas,
            paths,
            upload_route.layer(DefaultBodyLimit::disable()),
        ))
        .routes(routes!(upload_url))
        .routes(routes!(complete))
        .routes(routes!(get))
        .routes(routes!(download))
        .routes(routes!(list_for_call))
        .routes(routes!(transcript))
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotAudio | StoreError::Mismatch { .. } => {
                ApiError::UnsupportedMediaType(error.to_string())
            }
            StoreError::TooLarge { .. } => ApiError::PayloadTooLarge(error.to_string()),
            StoreError::Empty | StoreError::Idle(_) | StoreError::Body(_) => {
                ApiError::BadRequest(error.to_string())
            }
            StoreError::Storage(message) => {
                ApiError::internal(anyhow::anyhow!("storage: {message}"))
            }
            StoreError::Db(error) => ApiError::internal(error),
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        StoreError::from(error).into()
    }
}

fn limits(state: &AppState) -> Limits {
    let config = &state.config.recordings;
    Limits {
        max_bytes: config.max_bytes,
        part_size: config.part_size,
        concurrency: config.upload_concurrency,
        idle: config.upload_idle,
    }
}

/// Refuses (413) a new version of `size` bytes that would take the organisation past
/// `RECORDINGS_QUOTA_BYTES_PER_ORG`; otherwise the bytes still free (`None`: no quota).
/// Counted in PostgreSQL from the organisation's versions, so it holds across replicas; two
/// uploads admitted at the same moment can overshoot by at most their own sizes.
async fn within_quota(
    state: &AppState,
    organisation_id: OrgId,
    size: u64,
) -> Result<Option<u64>, ApiError> {
    let quota = state.config.recordings.quota_bytes_per_org;
    if quota == 0 {
        return Ok(None);
    }
    let client = state.db.client().await?;
    let used = recordings::bytes_used(&client, organisation_id).await?;
    let remaining = quota.saturating_sub(used);
    if size > remaining {
        metrics::counter!("limits_refused_total", "limit" => "recordings_quota").increment(1);
        return Err(ApiError::PayloadTooLarge(format!(
            "The organisation's recordings would exceed its storage quota of {quota} bytes \
             (RECORDINGS_QUOTA_BYTES_PER_ORG); {remaining} bytes are free."
        )));
    }
    Ok(Some(remaining))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Tie a new recording to this call of the organisation.
    pub call_id: Option<Uuid>,
    /// Add a version to this existing recording instead of creating one.
    pub recording_id: Option<Uuid>,
}

/// The target of a new version, checked against the organisation (404 otherwise). A new
/// recording is any member's to make; a new version of an existing one replaces what everyone
/// in the organisation hears by default, so it takes an admin
/// (docs/adr/0023-who-may-add-a-recording-version.md).
async fn target(
    state: &AppState,
    org: &OrgContext,
    call_id: Option<CallId>,
    recording_id: Option<Uuid>,
    source: &'static str,
) -> Result<Target, ApiError> {
    let client = state.db.client().await?;
    match (recording_id, call_id) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "send call_id or recording_id, not both".into(),
        )),
        (Some(recording_id), None) => {
            org.require(Role::Admin)?;
            recordings::get(&client, org.organisation_id, recording_id)
                .await?
                .ok_or(ApiError::NotFound)?;
            Ok(Target::Existing {
                organisation_id: org.organisation_id,
                recording_id,
            })
        }
        (None, call_id) => {
            if let Some(call_id) = call_id {
                calls::get(&client, org.organisation_id, call_id)
                    .await?
                    .ok_or(ApiError::NotFound)?;
            }
            Ok(Target::New {
                organisation_id: org.organisation_id,
                call_id,
                source,
                telnyx_recording_id: None,
                channels: None,
                leg: None,
            })
        }
    }
}

fn declared_format(headers: &HeaderMap) -> Result<AudioFormat, ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    AudioFormat::from_content_type(declared).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "Content-Type {declared:?} is not an audio type we accept \
             (audio/wav, audio/mpeg, audio/ogg, audio/flac, audio/webm)"
        ))
    })
}

/// Streams an audio body into storage as a new recording (or a new version of one): a
/// multipart upload of equal parts, the size limit enforced as bytes arrive, the format
/// checked on the bytes. A client that disconnects leaves nothing behind.
#[utoipa::path(post, path = "/api/recordings", operation_id = "uploadRecording", tag = "recordings",
    params(UploadQuery, ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    // Raw bytes: a media type without a schema (OpenAPI 3.1's form for binary bodies).
    request_body(description = "The audio bytes (WAV, MP3, Ogg, FLAC or WebM); the bytes must match the type",
        content((serde_json::Value = "audio/wav"), (serde_json::Value = "audio/mpeg"), (serde_json::Value = "audio/ogg"),
            (serde_json::Value = "audio/flac"), (serde_json::Value = "audio/webm"))),
    responses(
        (status = 201, description = "Stored", body = Recording),
        (status = 400, description = "Body ended early, stalled, or empty", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A new version of an existing recording needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call or recording in this organisation", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than RECORDINGS_MAX_BYTES or the organisation's RECORDINGS_QUOTA_BYTES_PER_ORG; nothing kept", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not audio (by Content-Type or by its bytes)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    org: OrgContext,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Recording>), ApiError> {
    let declared = declared_format(&headers)?;
    let mut limits = limits(&state);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > limits.max_bytes) {
        return Err(StoreError::TooLarge {
            limit: limits.max_bytes,
        }
        .into());
    }
    // The quota caps the stream too, for a body without Content-Length.
    if let Some(remaining) = within_quota(&state, org.organisation_id, length.unwrap_or(1)).await? {
        limits.max_bytes = limits.max_bytes.min(remaining);
    }
    let target = target(
        &state,
        &org,
        query.call_id.map(CallId::from),
        query.recording_id,
        "upload",
    )
    .await?;
    let sniffed = store::sniff(body.into_data_stream(), Some(declared), &limits).await?;
    let reserved = {
        // No pooled connection is held while the body streams (that can take an hour).
        let mut client = state.db.client().await?;
        recordings::reserve(&mut client, &target, sniffed.format, None, false)
            .await?
            .ok_or(ApiError::NotFound)?
    };
    let stored = store::upload(
        &state.storage,
        &state.db,
        &reserved.object_key,
        sniffed.format,
        sniffed.prefix,
        sniffed.rest,
        &limits,
    )
    .await;
    let client = state.db.client().await?;
    let stored = match stored {
        Ok(stored) => stored,
        Err(error) => {
            recordings::release(&client, reserved.recording_id, reserved.version).await?;
            return Err(error.into());
        }
    };
    recordings::mark_stored(
        &client,
        reserved.recording_id,
        reserved.version,
        stored.size as i64,
        &stored.sha256,
    )
    .await?;
    metrics::counter!("recordings_uploaded_total", "path" => "stream").increment(1);
    metrics::counter!("recording_bytes_uploaded_total").increment(stored.size);
    let recording = recordings::get(&client, org.organisation_id, reserved.recording_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(recording)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadUrlRequest {
    /// The audio type the PUT must send (bound into the signature).
    #[schema(example = "audio/wav")]
    pub content_type: String,
    /// Exact size of the file; `complete` checks it.
    pub size_bytes: i64,
    pub call_id: Option<Uuid>,
    /// Add a version to this recording instead of creating one.
    pub recording_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadUrl {
    pub recording_id: Uuid,
    pub version: i32,
    /// `PUT` the bytes here, with exactly `headers`.
    pub upload_url: String,
    pub method: &'static str,
    #[schema(value_type = Object)]
    pub headers: serde_json::Map<String, Value>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub expires_at: DateTime<Utc>,
}

/// A presigned PUT for a direct upload (short expiry, content type bound). Then call
/// `POST /api/recordings/{id}/complete`.
#[utoipa::path(post, path = "/api/recordings/upload-url", operation_id = "createRecordingUploadUrl", tag = "recordings",
    request_body = UploadUrlRequest,
    params(("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 201, description = "Upload URL", body = UploadUrl),
        (status = 403, description = "A new version of an existing recording needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call or recording in this organisation", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "size_bytes above RECORDINGS_MAX_BYTES or the organisation's RECORDINGS_QUOTA_BYTES_PER_ORG", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "content_type is not audio we accept", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "size_bytes is not positive", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn upload_url(
    State(state): State<AppState>,
    org: OrgContext,
    Json(body): Json<UploadUrlRequest>,
) -> Result<(StatusCode, Json<UploadUrl>), ApiError> {
    let format = AudioFormat::from_content_type(&body.content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "content_type {:?} is not an audio type we accept",
            body.content_type
        ))
    })?;
    if body.size_bytes <= 0 {
        return Err(ApiError::Unprocessable(
            "size_bytes must be positive".into(),
        ));
    }
    let config = &state.config.recordings;
    if body.size_bytes as u64 > config.max_bytes {
        return Err(StoreError::TooLarge {
            limit: config.max_bytes,
        }
        .into());
    }
    within_quota(&state, org.organisation_id, body.size_bytes as u64).await?;
    let target = target(
        &state,
        &org,
        body.call_id.map(CallId::from),
        body.recording_id,
        "direct",
    )
    .await?;
    let mut client = state.db.client().await?;
    let reserved = recordings::reserve(&mut client, &target, format, Some(body.size_bytes), true)
        .await?
        .ok_or(ApiError::NotFound)?;
    let staging = reserved
        .staging_key
        .clone()
        .expect("direct reservations stage");
    let ttl = config.presign_put_ttl;
    let (url, headers) =
        objects::presign_put(&state.storage, &staging, format.content_type(), ttl).await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadUrl {
            recording_id: reserved.recording_id,
            version: reserved.version,
            upload_url: url,
            method: "PUT",
            headers: headers
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
            expires_at: Utc::now() + ttl,
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The version `upload-url` returned.
    pub version: i32,
}

/// Confirms a direct upload: the object must exist with the announced size and be audio; it
/// is then copied to its immutable version key and hashed.
#[utoipa::path(post, path = "/api/recordings/{id}/complete", operation_id = "completeRecordingUpload", tag = "recordings",
    request_body = CompleteRequest,
    params(("id" = Uuid, Path, description = "Recording id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "Stored (or already stored)", body = Recording),
        (status = 404, description = "No such recording version in this organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nothing uploaded yet, or not the announced size", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The uploaded bytes are not audio; the upload is discarded", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn complete(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<Uuid>,
    Json(body): Json<CompleteRequest>,
) -> Result<Json<Recording>, ApiError> {
    let client = state.db.client().await?;
    let row = recordings::version(&client, org.organisation_id, id, body.version)
        .await?
        .ok_or(ApiError::NotFound)?;
    if row.status == "pending" {
        let staging = row.staging_key.clone().ok_or_else(|| {
            ApiError::Conflict("this version is being uploaded through the container".into())
        })?;
        if !crate::recordings::keys::belongs_to(&staging, org.organisation_id)
            || !crate::recordings::keys::belongs_to(&row.object_key, org.organisation_id)
        {
            return Err(ApiError::internal(anyhow::anyhow!(
                "recording key outside its organisation"
            )));
        }
        let expected = row.size_bytes.unwrap_or_default();
        match objects::head_size(&state.storage, &staging).await? {
            Some(size) if size as i64 != expected => {
                return Err(ApiError::Conflict(format!(
                    "the upload is {size} bytes, not the announced {expected}"
                )));
            }
            Some(_) => {
                let prefix = objects::read_prefix(&state.storage, &staging, SNIFF_LEN).await?;
                let declared = AudioFormat::from_content_type(&row.content_type);
                let sniffed = AudioFormat::sniff(&prefix);
                if sniffed.is_none() || sniffed != declared {
                    objects::delete(&state.storage, &staging).await?;
                    recordings::release(&client, id, body.version).await?;
                    return Err(StoreError::NotAudio.into());
                }
                // Only we write version keys, and only while the version is pending: a
                // client re-using its URL can only touch the staging key.
                objects::copy(&state.storage, &staging, &row.object_key).await?;
            }
            // An earlier `complete` copied it and was cut short before marking it stored.
            None if objects::head_size(&state.storage, &row.object_key)
                .await?
                .is_some() => {}
            None => return Err(ApiError::Conflict("nothing has been uploaded yet".into())),
        }
        let (size, sha256) = objects::hash_object(&state.storage, &row.object_key).await?;
        if size as i64 != expected {
            return Err(ApiError::Conflict(
                "the upload changed while it was being completed; upload it again".into(),
            ));
        }
        recordings::mark_stored(&client, id, body.version, size as i64, &sha256).await?;
        // Best effort: the cron deletes staging objects older than a day anyway.
        if let Err(error) = objects::delete(&state.storage, &staging).await {
            tracing::warn!(%error, "could not delete a staging object");
        }
        metrics::counter!("recordings_uploaded_total", "path" => "direct").increment(1);
    }
    recordings::get(&client, org.organisation_id, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A stored version; default the latest.
    pub version: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Download {
    pub version: i32,
    /// Presigned GET, valid until `expires_at` (at most 5 minutes).
    pub url: String,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingDetail {
    #[serde(flatten)]
    pub recording: Recording,
    /// Absent while no version is stored.
    pub download: Option<Download>,
}

async fn presigned(
    state: &AppState,
    org: &OrgContext,
    id: Uuid,
    version: Option<i32>,
) -> Result<(Recording, Option<Download>), ApiError> {
    let client = state.db.client().await?;
    let recording = recordings::get(&client, org.organisation_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let wanted = match version {
        Some(v) => Some(
            recording
                .versions
                .iter()
                .find(|x| x.version == v)
                .ok_or(ApiError::NotFound)?
                .version,
        ),
        None => recording.versions.last().map(|v| v.version),
    };
    let Some(wanted) = wanted else {
        return Ok((recording, None));
    };
    let row = recordings::version(&client, org.organisation_id, id, wanted)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !crate::recordings::keys::belongs_to(&row.object_key, org.organisation_id) {
        return Err(ApiError::internal(anyhow::anyhow!(
            "object key outside its organisation"
        )));
    }
    let ttl: Duration = state.config.recordings.presign_get_ttl;
    let url = objects::presign_get(&state.storage, &row.object_key, ttl).await?;
    state.ledger.record(vec![crate::usage::download_entry(
        org.organisation_id,
        org.user.id(),
        id,
        wanted,
    )]);
    Ok((
        recording,
        Some(Download {
            version: wanted,
            url,
            expires_at: Utc::now() + ttl,
        }),
    ))
}

/// Metadata, stored versions and a presigned GET of the latest (or `version`).
#[utoipa::path(get, path = "/api/recordings/{id}", operation_id = "getRecording", tag = "recordings",
    params(("id" = Uuid, Path, description = "Recording id"), VersionQuery,
        ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "The recording", body = RecordingDetail),
        (status = 404, description = "No such recording (or version) in this organisation", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<Uuid>,
    Query(query): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    let (recording, download) = presigned(&state, &org, id, query.version).await?;
    let mut response = Json(RecordingDetail {
        recording,
        download,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// 302 to a presigned GET of the latest version (or `version`).
#[utoipa::path(get, path = "/api/recordings/{id}/download", operation_id = "downloadRecording", tag = "recordings",
    params(("id" = Uuid, Path, description = "Recording id"), VersionQuery,
        ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in"),
        ("org_id" = Option<Uuid>, Query, description = "Organisation to act in, for links and media elements that cannot send X-Org-Id; must equal X-Org-Id when both are sent")),
    responses(
        (status = 302, description = "Location: presigned GET (at most 5 minutes)"),
        (status = 404, description = "No such recording, or nothing stored yet", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn download(
    State(state): State<AppState>,
    BrowserOrgContext(org): BrowserOrgContext,
    Path(id): Path<Uuid>,
    Query(query): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    let (_, download) = presigned(&state, &org, id, query.version).await?;
    let download = download.ok_or(ApiError::NotFound)?;
    let location = HeaderValue::from_str(&download.url).map_err(ApiError::internal)?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingList {
    pub recordings: Vec<CallRecording>,
}

/// The call's recordings that have a stored version.
#[utoipa::path(get, path = "/api/calls/{id}/recordings", operation_id = "listCallRecordings", tag = "recordings",
    params(("id" = Uuid, Path, description = "Call id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "Recordings, oldest first", body = RecordingList),
        (status = 404, description = "No such call in this organisation", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_for_call(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<CallId>,
) -> Result<Json<RecordingList>, ApiError> {
    let client = state.db.client().await?;
    let recordings = transcripts::recordings_of_call(&client, org.organisation_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(RecordingList { recordings }))
}

/// The call's transcripts: live turns and the post-call transcript side by side, with how
/// far they agree.
#[utoipa::path(get, path = "/api/calls/{id}/transcript", operation_id = "getCallTranscript", tag = "calls",
    params(("id" = Uuid, Path, description = "Call id"), ("X-Org-Id" = Option<Uuid>, Header, description = "Organisation to act in")),
    responses(
        (status = 200, description = "Live and post-call transcripts", body = CallTranscript),
        (status = 404, description = "No such call in this organisation", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn transcript(
    State(state): State<AppState>,
    org: OrgContext,
    Path(id): Path<CallId>,
) -> Result<Json<CallTranscript>, ApiError> {
    let client = state.db.client().await?;
    let transcript = transcripts::for_call(&client, org.organisation_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(transcript))
}
