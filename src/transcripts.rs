//! A call's transcript view: both parties' conversation, the live turns from the realtime
//! bridge, the spoken translations, the latest post-call transcript and how far live and
//! post-call agree (`GET /api/calls/{id}/transcript`). Reads only; scoped by organisation.

use crate::db::GenericClient;
use crate::ids::{CallId, OrgId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::DbError;
use crate::media::utterances::{self, ConversationTurn, Utterance};
use crate::recordings::agreement::{self, Agreement};
use crate::recordings::{self, Recording};

#[derive(Debug, Serialize, ToSchema)]
pub struct PostCallTranscript {
    pub recording_id: Uuid,
    pub version: i32,
    /// `submitted`, `completed` or `error`.
    pub status: String,
    pub multichannel: bool,
    pub text: Option<String>,
    /// AssemblyAI words: `text`, `start`, `end` (ms), `confidence`, `speaker`, `channel`.
    #[schema(value_type = Vec<Object>)]
    pub words: Value,
    /// AssemblyAI utterances (per speaker or channel).
    #[schema(value_type = Vec<Object>)]
    pub utterances: Value,
    pub language_code: Option<String>,
    pub audio_duration_ms: Option<i64>,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub submitted_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LiveTurn {
    /// `inbound`, `outbound` or `browser`; `agent` or `remote` on an interpreted call.
    pub track: String,
    pub turn_index: i32,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub words: Value,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallTranscript {
    #[schema(value_type = Uuid)]
    pub call_id: CallId,
    /// Both parties' turns in time order, each with its translation, playout outcome and
    /// stage latencies: what the frontend shows as the conversation.
    pub conversation: Vec<ConversationTurn>,
    /// Final turns from the realtime bridge, in time order.
    pub live: Vec<LiveTurn>,
    /// Each live turn translated and spoken to the other party, in playout order, with
    /// whether it was heard (`status`) and its stage latencies.
    pub utterances: Vec<Utterance>,
    /// The latest post-call transcript, when one was made.
    pub post_call: Option<PostCallTranscript>,
    /// Word-level agreement of `live` and a completed `post_call` (docs/RECORDINGS.md).
    pub agreement: Option<Agreement>,
}

/// Which channel of a leg's dual-channel recording carries the party's own voice (Telnyx
/// records the leg's inbound audio on the first channel, what we played on the second).
pub const PARTY_CHANNEL: &str = "1";

/// Word-level agreement of live turns and a completed post-call transcript's words. For a
/// leg's recording (`leg` = `agent`/`remote`) only that party's live turns and the party's
/// channel count; otherwise every turn and every channel. `None` when no live turn counts.
fn agreement_with(live: &[LiveTurn], post_words: &Value, leg: Option<&str>) -> Option<Agreement> {
    let live_words: Vec<String> = live
        .iter()
        .filter(|turn| leg.is_none_or(|leg| turn.track == leg))
        .flat_map(|turn| agreement::normalise(&turn.text))
        .collect();
    if live_words.is_empty() {
        return None;
    }
    let mut words: Vec<(i64, &str)> = post_words
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|w| {
                    leg.is_none() || w.get("channel").and_then(Value::as_str) == Some(PARTY_CHANNEL)
                })
                .filter_map(|w| {
                    Some((
                        w.get("start").and_then(Value::as_i64).unwrap_or_default(),
                        w.get("text")?.as_str()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    // Channels interleave by time, as the live turns do.
    words.sort_by_key(|(start, _)| *start);
    let post_words: Vec<String> = words
        .iter()
        .flat_map(|(_, text)| agreement::normalise(text))
        .collect();
    Some(agreement::score(&live_words, &post_words))
}

/// A recording of a call with how far its latest post-call transcript agrees with the live
/// turns it carries (`GET /api/calls/{id}/recordings`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CallRecording {
    #[serde(flatten)]
    pub recording: Recording,
    /// `submitted`, `completed` or `error` for the latest post-call transcript of this
    /// recording; `null` when none was requested.
    pub post_call_status: Option<String>,
    /// Agreement of that transcript with the live turns: for a leg's recording, the party's
    /// channel against that party's turns only (docs/RECORDINGS.md).
    pub agreement: Option<Agreement>,
}

/// An organisation's call's recordings with a stored version, oldest first, each with its
/// post-call status and agreement; `None` when the organisation has no such call.
pub async fn recordings_of_call(
    client: &impl GenericClient,
    organisation_id: OrgId,
    id: CallId,
) -> Result<Option<Vec<CallRecording>>, DbError> {
    if crate::calls::get(client, organisation_id, id)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let live = live_turns(client, id).await?;
    let mut out = Vec::new();
    for recording in recordings::list_for_call(client, organisation_id, id).await? {
        let post = client
            .query_opt(
                "select status, coalesce(words, '[]') as words from post_call_transcripts
                 where recording_id = $1 order by version desc, submitted_at desc limit 1",
                &[&recording.id],
            )
            .await?;
        let (post_call_status, agreement) = match post {
            Some(row) => {
                let status: String = row.get("status");
                let words: Value = row.get("words");
                let agreement = (status == "completed")
                    .then(|| agreement_with(&live, &words, recording.leg.as_deref()))
                    .flatten();
                (Some(status), agreement)
            }
            None => (None, None),
        };
        out.push(CallRecording {
            recording,
            post_call_status,
            agreement,
        });
    }
    Ok(Some(out))
}

async fn live_turns(client: &impl GenericClient, id: CallId) -> Result<Vec<LiveTurn>, DbError> {
    Ok(client
        .query(
            "select track, turn_index, text, words, start_ms, end_ms from transcript_turns
             where call_id = $1 order by start_ms nulls last, track, turn_index",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| LiveTurn {
            track: row.get("track"),
            turn_index: row.get("turn_index"),
            text: row.get("text"),
            words: row.get("words"),
            start_ms: row.get("start_ms"),
            end_ms: row.get("end_ms"),
        })
        .collect())
}

/// The transcript view of an organisation's call; `None` when the organisation has no such
/// call.
pub async fn for_call(
    client: &impl GenericClient,
    organisation_id: OrgId,
    id: CallId,
) -> Result<Option<CallTranscript>, DbError> {
    if crate::calls::get(client, organisation_id, id)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let live = live_turns(client, id).await?;
    let post_call = client
        .query_opt(
            "select recording_id, version, status, multichannel, text, coalesce(words, '[]') as words,
                    coalesce(utterances, '[]') as utterances, language_code, audio_duration_ms, error,
                    submitted_at, completed_at
             from post_call_transcripts where call_id = $1 and organisation_id = $2
             order by submitted_at desc limit 1",
            &[&id, &organisation_id],
        )
        .await
        ?
        .map(|row| PostCallTranscript {
            recording_id: row.get("recording_id"),
            version: row.get("version"),
            status: row.get("status"),
            multichannel: row.get("multichannel"),
            text: row.get("text"),
            words: row.get("words"),
            utterances: row.get("utterances"),
            language_code: row.get("language_code"),
            audio_duration_ms: row.get("audio_duration_ms"),
            error: row.get("error"),
            submitted_at: row.get("submitted_at"),
            completed_at: row.get("completed_at"),
        });
    // On an interpreted call the latest post-call transcript is one leg's: it is compared
    // with that party's live turns only (ADR 0036).
    let leg: Option<String> = match &post_call {
        Some(post) => client
            .query_opt(
                "select leg from recordings where id = $1",
                &[&post.recording_id],
            )
            .await?
            .and_then(|row| row.get("leg")),
        None => None,
    };
    let agreement = post_call
        .as_ref()
        .filter(|p| p.status == "completed")
        .and_then(|post| agreement_with(&live, &post.words, leg.as_deref()));
    let utterances = utterances::for_call(client, id).await?;
    let conversation = utterances::conversation(client, id).await?;
    Ok(Some(CallTranscript {
        call_id: id,
        conversation,
        live,
        utterances,
        post_call,
        agreement,
    }))
}
