//! The read side of spoken translations: each utterance with how it played (for the
//! transcript API) and one call's stage-latency summary (for `GET /api/calls/{id}`). The
//! live loop in `playout` writes the rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::{DbError, GenericClient};
use crate::ids::CallId;

/// One final turn translated and spoken to the other party.
#[derive(Debug, Serialize, ToSchema)]
pub struct Utterance {
    /// Order of playout on the call, from 0.
    pub seq: i32,
    /// Whose final turn this translates: the track (`inbound` or `outbound`) on a one-leg
    /// call, the party (`agent` or `remote`) on an interpreted one; the listener is the
    /// other. With `source_turn_index` it names the live turn it came from.
    pub source_track: String,
    pub source_turn_index: i32,
    pub original_text: String,
    pub translated_text: Option<String>,
    pub source_language: Option<String>,
    pub target_language: Option<String>,
    /// `deepl`, `openai` or `cache`.
    pub engine: Option<String>,
    /// `queued` or `playing` while the call is live; then `played` (its mark echoed: heard
    /// in full), `cut` (the listener talked over it; see `cut_at_ms`), `never_played`
    /// (the stream ended first), or `failed` (translation or speech failed; see `error`).
    pub status: String,
    /// Length of the speech streamed into the call.
    pub audio_ms: Option<i32>,
    /// Roughly how far into the audio the listener cut in.
    pub cut_at_ms: Option<i32>,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub end_of_turn_at: DateTime<Utc>,
    /// End of turn → translation done.
    pub translate_ms: Option<f64>,
    /// Translation done → first byte of speech from ElevenLabs.
    pub tts_first_byte_ms: Option<f64>,
    /// First speech byte → first audio frame sent to Telnyx.
    pub first_frame_ms: Option<f64>,
    /// End of turn → first audio frame sent to Telnyx (what the listener waits for).
    pub end_of_turn_to_first_frame_ms: Option<f64>,
    /// First audio frame sent → Telnyx echoed the mark (carrier-side playout).
    pub mark_ms: Option<f64>,
}

/// Milliseconds between two timestamp columns, null when either is.
macro_rules! ms_between {
    ($from:literal, $to:literal) => {
        concat!(
            "(extract(epoch from ",
            $to,
            " - ",
            $from,
            ") * 1000)::float8"
        )
    };
}

const STAGES_SQL: &str = concat!(
    ms_between!("end_of_turn_at", "translated_at"),
    " as translate_ms, ",
    ms_between!("translated_at", "first_tts_byte_at"),
    " as tts_first_byte_ms, ",
    ms_between!("first_tts_byte_at", "first_frame_sent_at"),
    " as first_frame_ms, ",
    ms_between!("end_of_turn_at", "first_frame_sent_at"),
    " as end_of_turn_to_first_frame_ms, ",
    ms_between!("first_frame_sent_at", "mark_echoed_at"),
    " as mark_ms",
);

/// The stage names, in the order of `STAGES_SQL`; the same labels as the
/// `translation_stage_seconds` histogram at `/metrics`.
pub const STAGES: [&str; 5] = [
    "translate",
    "tts_first_byte",
    "first_frame",
    "end_of_turn_to_first_frame",
    "mark",
];

pub async fn for_call(
    client: &impl GenericClient,
    call_id: CallId,
) -> Result<Vec<Utterance>, DbError> {
    let sql = format!(
        "select seq, source_track, source_turn_index, original_text, translated_text, source_language,
                target_language, engine, status, audio_ms, cut_at_ms, error, end_of_turn_at, {STAGES_SQL}
         from utterances where call_id = $1 order by seq"
    );
    Ok(client
        .query(&sql, &[&call_id])
        .await?
        .iter()
        .map(|row| Utterance {
            seq: row.get("seq"),
            source_track: row.get("source_track"),
            source_turn_index: row.get("source_turn_index"),
            original_text: row.get("original_text"),
            translated_text: row.get("translated_text"),
            source_language: row.get("source_language"),
            target_language: row.get("target_language"),
            engine: row.get("engine"),
            status: row.get("status"),
            audio_ms: row.get("audio_ms"),
            cut_at_ms: row.get("cut_at_ms"),
            error: row.get("error"),
            end_of_turn_at: row.get("end_of_turn_at"),
            translate_ms: row.get("translate_ms"),
            tts_first_byte_ms: row.get("tts_first_byte_ms"),
            first_frame_ms: row.get("first_frame_ms"),
            end_of_turn_to_first_frame_ms: row.get("end_of_turn_to_first_frame_ms"),
            mark_ms: row.get("mark_ms"),
        })
        .collect())
}

/// One finished turn of the conversation, and what the other party heard for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationTurn {
    /// Who spoke: `agent` or `remote` on an interpreted call (`inbound` or `outbound` on a
    /// one-leg call).
    pub speaker: String,
    /// The speaker's turn number (with `speaker`, names the entry in `live`).
    pub turn_index: i32,
    /// When the turn ended (was transcribed in full): the conversation's order.
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub ended_at: DateTime<Utc>,
    /// The language spoken: detected per turn for an `auto` party, else the party's.
    pub language: Option<String>,
    /// What they said.
    pub text: String,
    /// The translation spoken to the other party (null when there was none).
    pub translation: Option<String>,
    /// `played`, `cut`, `never_played`, `failed`, or while live `queued`/`playing`; null
    /// when nothing was spoken for it (the other party's stream was not connected).
    pub playout: Option<String>,
    /// The spoken translation in full: engine, target language, audio length, where it was
    /// cut, error, and each stage's latency.
    pub interpretation: Option<Utterance>,
}

/// The call's turns of both parties in time order, each with its interpretation.
pub async fn conversation(
    client: &impl GenericClient,
    call_id: CallId,
) -> Result<Vec<ConversationTurn>, DbError> {
    let mut spoken: std::collections::HashMap<(String, i32), Utterance> = for_call(client, call_id)
        .await?
        .into_iter()
        .map(|u| ((u.source_track.clone(), u.source_turn_index), u))
        .collect();
    let rows = client
        .query(
            "select track, turn_index, created_at, language, text from transcript_turns
             where call_id = $1 and track <> 'browser'
             order by created_at, track, turn_index",
            &[&call_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let speaker: String = row.get("track");
            let turn_index: i32 = row.get("turn_index");
            let interpretation = spoken.remove(&(speaker.clone(), turn_index));
            let language: Option<String> = row.get("language");
            ConversationTurn {
                language: language.or_else(|| {
                    interpretation
                        .as_ref()
                        .and_then(|u| u.source_language.clone())
                }),
                translation: interpretation
                    .as_ref()
                    .and_then(|u| u.translated_text.clone()),
                playout: interpretation.as_ref().map(|u| u.status.clone()),
                speaker,
                turn_index,
                ended_at: row.get("created_at"),
                text: row.get("text"),
                interpretation,
            }
        })
        .collect())
}

/// How one stage went over a call's utterances.
#[derive(Debug, Serialize, ToSchema)]
pub struct StageLatency {
    /// `translate`, `tts_first_byte`, `first_frame`, `end_of_turn_to_first_frame` or `mark`
    /// (see the transcript's utterances for what each spans).
    pub stage: String,
    /// Utterances that reached the end of this stage.
    pub count: i64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// A call's spoken translations at a glance.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct TranslationSummary {
    pub utterances: i64,
    pub played: i64,
    pub cut: i64,
    pub never_played: i64,
    pub failed: i64,
    /// Queued or playing now.
    pub in_progress: i64,
    /// One entry per stage that has measurements, in pipeline order.
    pub stages: Vec<StageLatency>,
}

pub async fn summary(
    client: &impl GenericClient,
    call_id: CallId,
) -> Result<TranslationSummary, DbError> {
    let mut summary = TranslationSummary::default();
    for row in client
        .query(
            "select status, count(*) from utterances where call_id = $1 group by status",
            &[&call_id],
        )
        .await?
    {
        let (status, count): (String, i64) = (row.get("status"), row.get("count"));
        summary.utterances += count;
        match status.as_str() {
            "played" => summary.played += count,
            "cut" => summary.cut += count,
            "never_played" => summary.never_played += count,
            "failed" => summary.failed += count,
            _ => summary.in_progress += count,
        }
    }
    if summary.utterances == 0 {
        return Ok(summary);
    }
    let sql = format!(
        "with u as (select {STAGES_SQL} from utterances where call_id = $1),
              stage (position, ms) as (
                  select s.position, s.ms from u cross join lateral
                  (values (0, u.translate_ms), (1, u.tts_first_byte_ms), (2, u.first_frame_ms),
                          (3, u.end_of_turn_to_first_frame_ms), (4, u.mark_ms))
                  as s (position, ms) where s.ms is not null)
         select position, count(*), percentile_cont(0.5) within group (order by ms) as p50_ms,
                percentile_cont(0.95) within group (order by ms) as p95_ms, max(ms) as max_ms
         from stage group by position order by position"
    );
    for row in client.query(&sql, &[&call_id]).await? {
        let position: i32 = row.get("position");
        summary.stages.push(StageLatency {
            stage: STAGES
                .get(position as usize)
                .copied()
                .unwrap_or("unknown")
                .to_owned(),
            count: row.get("count"),
            p50_ms: row.get("p50_ms"),
            p95_ms: row.get("p95_ms"),
            max_ms: row.get("max_ms"),
        });
    }
    Ok(summary)
}
