//! Recordings: rows, immutable versions and the queries the API, the jobs and the cron
//! share (docs/RECORDINGS.md). No HTTP here.
//!
//! A version is reserved (`pending`, with its key) before any byte is written, and becomes
//! `stored` (size, content type, SHA-256) only once its object is complete and checked. Only
//! stored versions are ever served. Every query is scoped by organisation except those the
//! jobs and the cron use, which say so in their name.

pub mod agreement;
pub mod format;
pub mod keys;
pub mod store;

use crate::db::GenericClient;
use crate::ids::{CallId, OrgId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::DbError;
use format::AudioFormat;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordingVersion {
    pub version: i32,
    pub content_type: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub stored_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recording {
    pub id: Uuid,
    #[schema(value_type = Uuid)]
    pub organisation_id: OrgId,
    #[schema(value_type = Option<Uuid>)]
    pub call_id: Option<CallId>,
    /// `upload`, `direct` or `telnyx`.
    pub source: String,
    /// `single` or `dual` when known (Telnyx imports).
    pub channels: Option<String>,
    /// Whose leg of an interpreted call this recording is (`agent` or `remote`; ADR 0036):
    /// that party's voice on channel 1, what they heard on channel 2. `null` for a one-leg
    /// call's recording and for uploads.
    pub leg: Option<String>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    /// Stored versions, oldest first; the last is the current one.
    pub versions: Vec<RecordingVersion>,
}

/// A version reserved for writing.
#[derive(Debug, Clone)]
pub struct Reserved {
    pub recording_id: Uuid,
    pub organisation_id: OrgId,
    pub call_id: Option<CallId>,
    pub version: i32,
    pub object_key: String,
    pub staging_key: Option<String>,
    /// Whether the recording row was created with this version.
    pub new_recording: bool,
}

/// A version as stored in the table, any status (jobs, complete, cron).
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub recording_id: Uuid,
    pub organisation_id: OrgId,
    pub call_id: Option<CallId>,
    pub version: i32,
    pub object_key: String,
    pub staging_key: Option<String>,
    pub status: String,
    pub content_type: String,
    pub size_bytes: Option<i64>,
    pub channels: Option<String>,
}

const VERSION_ROW_SQL: &str =
    "select v.recording_id, r.organisation_id, r.call_id, v.version, v.object_key,
        v.staging_key, v.status, v.content_type, v.size_bytes, r.channels
     from recording_versions v join recordings r on r.id = v.recording_id";

fn version_row(row: &Row) -> VersionRow {
    VersionRow {
        recording_id: row.get("recording_id"),
        organisation_id: row.get("organisation_id"),
        call_id: row.get("call_id"),
        version: row.get("version"),
        object_key: row.get("object_key"),
        staging_key: row.get("staging_key"),
        status: row.get("status"),
        content_type: row.get("content_type"),
        size_bytes: row.get("size_bytes"),
        channels: row.get("channels"),
    }
}

/// What a new version belongs to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new recording, optionally of a call (already checked to be the organisation's).
    New {
        organisation_id: OrgId,
        call_id: Option<CallId>,
        source: &'static str,
        telnyx_recording_id: Option<String>,
        channels: Option<String>,
        /// `agent` or `remote` for a leg of an interpreted call.
        leg: Option<String>,
    },
    /// Another version of an existing recording of this organisation.
    Existing {
        organisation_id: OrgId,
        recording_id: Uuid,
    },
}

/// Creates the recording when needed and reserves its next version number and key, in one
/// transaction holding the recording's row lock (concurrent uploads get distinct versions).
/// `None` when an `Existing` recording is not the organisation's.
pub async fn reserve(
    client: &mut crate::db::Client,
    target: &Target,
    format: AudioFormat,
    declared_size: Option<i64>,
    direct: bool,
) -> Result<Option<Reserved>, DbError> {
    let transaction = client.transaction().await?;
    let (recording_id, organisation_id, call_id, new_recording) = match target {
        Target::New {
            organisation_id,
            call_id,
            source,
            telnyx_recording_id,
            channels,
            leg,
        } => {
            let id = Uuid::now_v7();
            transaction
                .execute(
                    "insert into recordings (id, organisation_id, call_id, source, telnyx_recording_id, channels, leg)
                     values ($1, $2, $3, $4, $5, $6, $7)",
                    &[&id, organisation_id, call_id, source, telnyx_recording_id, channels, leg],
                )
                .await?;
            (id, *organisation_id, *call_id, true)
        }
        Target::Existing {
            organisation_id,
            recording_id,
        } => {
            let Some(row) = transaction
                .query_opt(
                    "select call_id from recordings where id = $1 and organisation_id = $2 for update",
                    &[recording_id, organisation_id],
                )
                .await?
            else {
                return Ok(None);
            };
            (*recording_id, *organisation_id, row.get("call_id"), false)
        }
    };
    let version: i32 = transaction
        .query_one(
            "select coalesce(max(version), 0) + 1 as next_version from recording_versions where recording_id = $1",
            &[&recording_id],
        )
        .await?
        .get("next_version");
    let object_key = keys::version_key_for(organisation_id, call_id, recording_id, version, format)
        .map_err(|e| DbError::Config(e.to_string()))?;
    let staging_key = direct
        .then(|| keys::staging_key_for(organisation_id, recording_id, version, format))
        .transpose()
        .map_err(|e| DbError::Config(e.to_string()))?;
    transaction
        .execute(
            "insert into recording_versions (recording_id, version, object_key, content_type, size_bytes, staging_key)
             values ($1, $2, $3, $4, $5, $6)",
            &[&recording_id, &version, &object_key, &format.content_type(), &declared_size, &staging_key],
        )
        .await?;
    transaction.commit().await?;
    Ok(Some(Reserved {
        recording_id,
        organisation_id,
        call_id,
        version,
        object_key,
        staging_key,
        new_recording,
    }))
}

/// Marks a reserved version stored.
pub async fn mark_stored(
    client: &impl GenericClient,
    recording_id: Uuid,
    version: i32,
    size: i64,
    sha256: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "update recording_versions set status = 'stored', size_bytes = $3, sha256 = $4,
                    staging_key = null, stored_at = now()
             where recording_id = $1 and version = $2",
            &[&recording_id, &version, &size, &sha256],
        )
        .await?;
    Ok(())
}

/// Forgets a version whose upload failed, and its recording if it has no other version.
pub async fn release(
    client: &impl GenericClient,
    recording_id: Uuid,
    version: i32,
) -> Result<(), DbError> {
    client
        .execute(
            "delete from recording_versions where recording_id = $1 and version = $2 and status = 'pending'",
            &[&recording_id, &version],
        )
        .await?;
    client
        .execute(
            "delete from recordings r where id = $1
               and not exists (select 1 from recording_versions v where v.recording_id = r.id)",
            &[&recording_id],
        )
        .await?;
    Ok(())
}

fn recording_from_row(row: &Row) -> Recording {
    let versions: serde_json::Value = row.get("versions");
    let versions = versions
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| {
                    Some(RecordingVersion {
                        version: v.get("version")?.as_i64()? as i32,
                        content_type: v.get("content_type")?.as_str()?.to_owned(),
                        size_bytes: v.get("size_bytes")?.as_i64()?,
                        sha256: v.get("sha256")?.as_str()?.to_owned(),
                        stored_at: v.get("stored_at")?.as_str()?.parse().ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Recording {
        id: row.get("id"),
        organisation_id: row.get("organisation_id"),
        call_id: row.get("call_id"),
        source: row.get("source"),
        channels: row.get("channels"),
        leg: row.get("leg"),
        created_at: row.get("created_at"),
        versions,
    }
}

const RECORDING_SQL: &str = "select r.id, r.organisation_id, r.call_id, r.source, r.channels, r.created_at,
        coalesce((select jsonb_agg(jsonb_build_object('version', v.version, 'content_type', v.content_type,
                    'size_bytes', v.size_bytes, 'sha256', v.sha256,
                    'stored_at', to_char(v.stored_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
                  order by v.version)
                  from recording_versions v where v.recording_id = r.id and v.status = 'stored'), '[]'::jsonb)
          as versions,
        r.leg
     from recordings r";

/// A recording of this organisation with its stored versions (`None` = 404).
pub async fn get(
    client: &impl GenericClient,
    organisation_id: OrgId,
    id: Uuid,
) -> Result<Option<Recording>, DbError> {
    let sql = format!("{RECORDING_SQL} where r.id = $1 and r.organisation_id = $2");
    Ok(client
        .query_opt(&sql, &[&id, &organisation_id])
        .await?
        .as_ref()
        .map(recording_from_row))
}

/// The recordings of a call of this organisation that have at least one stored version.
pub async fn list_for_call(
    client: &impl GenericClient,
    organisation_id: OrgId,
    call_id: CallId,
) -> Result<Vec<Recording>, DbError> {
    let sql = format!(
        "{RECORDING_SQL} where r.call_id = $1 and r.organisation_id = $2
           and exists (select 1 from recording_versions v where v.recording_id = r.id and v.status = 'stored')
         order by r.created_at, r.id"
    );
    Ok(client
        .query(&sql, &[&call_id, &organisation_id])
        .await?
        .iter()
        .map(recording_from_row)
        .collect())
}

/// One version of this organisation's recording, any status.
pub async fn version(
    client: &impl GenericClient,
    organisation_id: OrgId,
    recording_id: Uuid,
    version: i32,
) -> Result<Option<VersionRow>, DbError> {
    let sql = format!(
        "{VERSION_ROW_SQL} where v.recording_id = $1 and v.version = $2 and r.organisation_id = $3"
    );
    Ok(client
        .query_opt(&sql, &[&recording_id, &version, &organisation_id])
        .await?
        .as_ref()
        .map(version_row))
}

/// For jobs: a version by its recording, unscoped.
pub async fn version_unscoped(
    client: &impl GenericClient,
    recording_id: Uuid,
    version: i32,
) -> Result<Option<VersionRow>, DbError> {
    let sql = format!("{VERSION_ROW_SQL} where v.recording_id = $1 and v.version = $2");
    Ok(client
        .query_opt(&sql, &[&recording_id, &version])
        .await?
        .as_ref()
        .map(version_row))
}

/// For the Telnyx import: the recording already made for this Telnyx recording, if any, and
/// its stored version number.
pub async fn by_telnyx_id(
    client: &impl GenericClient,
    telnyx_recording_id: &str,
) -> Result<Option<(Uuid, Option<i32>)>, DbError> {
    Ok(client
        .query_opt(
            "select r.id, (select max(version) from recording_versions v
                           where v.recording_id = r.id and v.status = 'stored') as stored_version
             from recordings r where r.telnyx_recording_id = $1",
            &[&telnyx_recording_id],
        )
        .await?
        .map(|row| (row.get("id"), row.get("stored_version"))))
}

/// Bytes of recording versions (stored, and pending direct uploads at their announced size)
/// held by `organisation_id`: what its storage quota counts.
pub async fn bytes_used(
    client: &impl GenericClient,
    organisation_id: OrgId,
) -> Result<u64, crate::db::DbError> {
    let row = client
        .query_one(
            "select coalesce(sum(v.size_bytes), 0)::bigint as used from recording_versions v
             join recordings r on r.id = v.recording_id where r.organisation_id = $1",
            &[&organisation_id],
        )
        .await?;
    Ok(row.get::<_, i64>("used").max(0) as u64)
}
