//! The live translation loop: each final turn of one party is translated into the other
//! party's language, synthesised by ElevenLabs as µ-law 8 kHz, and streamed back into the call
//! as Telnyx `media` frames followed by a `mark` (docs/PROVIDERS.md §1.6, §3, §4). Utterances play
//! in order. The bridge turns Telnyx's mark echoes into *played*, and the listener talking
//! over an utterance into `clear` and *cut*.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::frames::Track;
use crate::db::Db;
use crate::events;
use crate::ids::{CallId, OrgId};
use crate::state::AppState;

/// What the bridge sends into the Telnyx stream on the speaker's behalf.
#[derive(Debug)]
pub enum Outbound {
    Media {
        seq: i32,
        listener: Track,
        bytes: Vec<u8>,
    },
    Mark {
        seq: i32,
        name: String,
    },
    /// Frames of the other party's own voice, to mix under what this party hears
    /// (`original_audio` ducked or full), in the order they were spoken: one message's worth
    /// ([`crate::media::mix::FRAMES_PER_MESSAGE`]). It shares the channel so that the
    /// bridge's loop waits on one receiver fewer: a second channel was polled, and its waker
    /// registered, on every turn of every leg's loop. Boxed, so the channel's slots stay
    /// small.
    Original(Box<[[u8; crate::media::mix::FRAME]; crate::media::mix::FRAMES_PER_MESSAGE]>),
}

/// A final turn waiting to be spoken to the other party.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub seq: i32,
    /// The Telnyx track the words came in on (on an interpreted call's leg: `inbound`).
    pub source_track: Track,
    /// Who said it, as stored: the track (one-leg call) or the party (`agent`, `remote`).
    pub source: &'static str,
    /// The speaker's language when the bridge knows it per turn (an interpreted call's
    /// party: theirs, or the one AssemblyAI detected); `None` on a one-leg call, whose
    /// languages come from [`Languages`].
    pub source_language: Option<String>,
    /// The index proposed for (or stored with) the turn: its display order.
    pub turn_index: i32,
    /// The turn's identity, when known (every turn stored since ADR 0017): what says two
    /// deliveries are the same turn, whatever index each carries.
    pub turn: Option<TurnId>,
    pub text: String,
    pub end_of_turn_at: DateTime<Utc>,
    pub end_of_turn: Instant,
}

/// A final turn's identity: its AssemblyAI session and its `turn_order` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnId {
    pub session_id: String,
    pub turn_order: i64,
}

/// Who speaks which language on this call.
#[derive(Debug, Clone)]
pub struct Languages {
    /// The call's tenant: the translation cache is per organisation.
    pub organisation_id: OrgId,
    /// The far end (Telnyx `inbound` track): the call's `source_language`.
    pub inbound: String,
    /// The other party (`outbound` track): the call's `target_language`.
    pub outbound: String,
    pub voice: Option<String>,
}

impl Languages {
    pub fn of(&self, track: Track) -> &str {
        match track {
            Track::Inbound => &self.inbound,
            Track::Outbound => &self.outbound,
        }
    }
}

/// Who hears what a speaker task plays, in which language and voice.
#[derive(Debug, Clone)]
pub enum Listeners {
    /// A one-leg call: both tracks of one stream; each hears the other's language.
    Tracks(Languages),
    /// One party of an interpreted call, on their own leg's stream: everything the other
    /// party says, in this party's language (fixed, or detected from their own turns) and
    /// voice.
    Party {
        /// The call's tenant: the translation cache is per organisation.
        organisation_id: OrgId,
        language: PartyLanguage,
        voice: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub enum PartyLanguage {
    Fixed(String),
    /// `auto`: the language AssemblyAI reported for the party's latest turn.
    Detected(watch::Receiver<Option<String>>),
}

/// How long a translation for an `auto` party waits for their language to be detected
/// (they have not said anything yet) before it is given up as failed.
const DETECTION_WAIT: Duration = Duration::from_secs(10);

impl PartyLanguage {
    async fn resolve(&self) -> Result<String, String> {
        match self {
            PartyLanguage::Fixed(language) => Ok(language.clone()),
            PartyLanguage::Detected(detected) => {
                let mut detected = detected.clone();
                match tokio::time::timeout(DETECTION_WAIT, detected.wait_for(Option::is_some)).await
                {
                    Ok(Ok(language)) => Ok(language.clone().unwrap_or_default()),
                    _ => Err(
                        "the listener's language was not detected yet (they have not spoken)"
                            .into(),
                    ),
                }
            }
        }
    }
}

impl Listeners {
    /// The track the utterance plays to, and the source and target languages.
    async fn route(&self, u: &Utterance) -> (Track, Option<String>, Result<String, String>) {
        match self {
            Listeners::Tracks(languages) => {
                let listener = listener_of(u.source_track);
                (
                    listener,
                    Some(languages.of(u.source_track).to_owned()),
                    Ok(languages.of(listener).to_owned()),
                )
            }
            Listeners::Party { language, .. } => (
                Track::Inbound,
                u.source_language.clone(),
                language.resolve().await,
            ),
        }
    }

    fn organisation_id(&self) -> OrgId {
        match self {
            Listeners::Tracks(languages) => languages.organisation_id,
            Listeners::Party {
                organisation_id, ..
            } => *organisation_id,
        }
    }

    fn voice(&self) -> Option<&str> {
        match self {
            Listeners::Tracks(languages) => languages.voice.as_deref(),
            Listeners::Party { voice, .. } => voice.as_deref(),
        }
    }
}

/// `pt-BR` and `pt` are the same language to a listener.
fn same_language(a: &str, b: &str) -> bool {
    let primary = |l: &str| l.split('-').next().unwrap_or_default().to_ascii_lowercase();
    primary(a) == primary(b)
}

pub fn listener_of(track: Track) -> Track {
    match track {
        Track::Inbound => Track::Outbound,
        Track::Outbound => Track::Inbound,
    }
}

/// The highest utterance `seq` the listener cut in on (−1: none): the speaker stops
/// streaming those.
pub type ClearedThrough = Arc<AtomicI32>;

pub fn nothing_cleared() -> ClearedThrough {
    Arc::new(AtomicI32::new(-1))
}

/// Telnyx media messages hold 20 ms or more; ElevenLabs chunks can be smaller.
const MIN_FRAME_BYTES: usize = 160;

pub fn spawn(
    state: AppState,
    call_id: CallId,
    listeners: Listeners,
    outbound: mpsc::Sender<Outbound>,
    cleared: ClearedThrough,
) -> (mpsc::Sender<Utterance>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Utterance>(32);
    let handle = tokio::spawn(async move {
        while let Some(utterance) = rx.recv().await {
            speak(&state, call_id, &listeners, &outbound, &cleared, utterance).await;
        }
    });
    (tx, handle)
}

async fn speak(
    state: &AppState,
    call_id: CallId,
    listeners: &Listeners,
    outbound: &mpsc::Sender<Outbound>,
    cleared: &ClearedThrough,
    u: Utterance,
) {
    let (listener, source, target) = listeners.route(&u).await;
    let db = &state.db;
    let target = match target {
        Ok(target) => target,
        Err(why) => {
            if let Err(error) = insert(db, call_id, &u, source.as_deref(), None).await {
                tracing::warn!(%error, "storing an utterance failed");
            }
            return finish(db, call_id, u.seq, "failed", Some(&why)).await;
        }
    };
    if source.as_deref().is_some_and(|s| same_language(s, &target)) {
        if let Err(error) = insert(db, call_id, &u, source.as_deref(), Some(&target)).await {
            tracing::warn!(%error, "storing an utterance failed");
        }
        return finish(
            db,
            call_id,
            u.seq,
            "never_played",
            Some("same language on both sides"),
        )
        .await;
    }
    // Storing the utterance and translating it are independent: do both at once, so the
    // row costs the listener no latency. Every later update waits for both.
    let (stored, translated) = tokio::join!(
        insert(db, call_id, &u, source.as_deref(), Some(&target)),
        state.translation.translate(
            listeners.organisation_id(),
            std::slice::from_ref(&u.text),
            source.as_deref(),
            &target
        )
    );
    if let Err(error) = stored {
        tracing::warn!(%error, "storing an utterance failed");
    }
    let translated = match translated {
        Ok(mut translated) => {
            let owner = crate::usage::Owner::Call {
                call_id,
                leg_id: None,
            };
            let key = format!("utterance:{call_id}:{}", u.seq);
            let metadata = json!({"utterance": u.seq, "target_language": target});
            state.ledger.record(crate::usage::translation_entries(
                owner,
                &key,
                &translated.usage,
                metadata,
            ));
            (
                translated.texts.pop().unwrap_or_default(),
                translated.engine,
            )
        }
        Err(error) => return finish(db, call_id, u.seq, "failed", Some(&error.to_string())).await,
    };
    let translated_at = Instant::now();
    let translated_wall = Utc::now();
    metrics::histogram!("translation_stage_seconds", "stage" => "translate")
        .record((translated_at - u.end_of_turn).as_secs_f64());
    let engine = format!("{:?}", translated.1).to_lowercase();
    let Some(tts) = &state.tts else {
        return finish(
            db,
            call_id,
            u.seq,
            "failed",
            Some("ElevenLabs is not configured (ELEVENLABS_API_KEY)"),
        )
        .await;
    };
    let mut audio = match tts
        .stream(&translated.0, listeners.voice(), Some(&target), "ulaw_8000")
        .await
    {
        Ok(audio) => {
            // ElevenLabs bills the characters of an accepted request, heard in full or not.
            let voice = listeners.voice().unwrap_or(&tts.default_voice).to_owned();
            let entry = crate::usage::Entry::for_call(
                call_id,
                crate::usage::unit::ELEVENLABS,
                crate::usage::unit::CHARACTERS,
                translated.0.chars().count() as f64,
                format!("elevenlabs:characters:utterance:{call_id}:{}", u.seq),
            )
            .metadata(
                json!({"utterance": u.seq, "voice_id": voice, "model_id": tts.default_model}),
            );
            state.ledger.record(vec![entry]);
            Box::pin(audio)
        }
        Err(error) => return finish(db, call_id, u.seq, "failed", Some(&error.to_string())).await,
    };
    let mut first_byte: Option<(Instant, DateTime<Utc>)> = None;
    let mut first_frame: Option<DateTime<Utc>> = None;
    let mut pending = Vec::new();
    let mut audio_bytes = 0usize;
    while let Some(chunk) = audio.next().await {
        if cleared.load(Ordering::SeqCst) >= u.seq {
            break; // the listener cut in: drop the rest
        }
        let Ok(chunk) = chunk else { break };
        if first_byte.is_none() {
            let now = Instant::now();
            metrics::histogram!("translation_stage_seconds", "stage" => "tts_first_byte")
                .record((now - translated_at).as_secs_f64());
            first_byte = Some((now, Utc::now()));
        }
        pending.extend_from_slice(&chunk);
        if pending.len() >= MIN_FRAME_BYTES {
            audio_bytes += pending.len();
            let bytes = std::mem::take(&mut pending);
            if outbound
                .send(Outbound::Media {
                    seq: u.seq,
                    listener,
                    bytes,
                })
                .await
                .is_err()
            {
                break;
            }
            if first_frame.is_none() {
                let now = Instant::now();
                metrics::histogram!("translation_stage_seconds", "stage" => "first_frame")
                    .record((now - first_byte.map(|f| f.0).unwrap_or(now)).as_secs_f64());
                metrics::histogram!("translation_end_of_turn_to_first_frame_seconds")
                    .record((now - u.end_of_turn).as_secs_f64());
                first_frame = Some(Utc::now());
            }
        }
    }
    if !pending.is_empty() && cleared.load(Ordering::SeqCst) < u.seq {
        pending.resize(pending.len().max(MIN_FRAME_BYTES), 0xFF);
        audio_bytes += pending.len();
        let _ = outbound
            .send(Outbound::Media {
                seq: u.seq,
                listener,
                bytes: pending,
            })
            .await;
    }
    let _ = outbound
        .send(Outbound::Mark {
            seq: u.seq,
            name: format!("utt-{}", u.seq),
        })
        .await;
    let audio_ms = (audio_bytes / 8) as i32;
    let client = match db.client().await {
        Ok(client) => client,
        Err(error) => return tracing::warn!(%error, "updating an utterance failed"),
    };
    // Only move forward: the bridge may already have marked it played or cut.
    let _ = client
        .execute(
            "update utterances set translated_text = $3, engine = $4, audio_ms = $5, translated_at = $6,
                    first_tts_byte_at = $7, first_frame_sent_at = $8,
                    status = case when status = 'queued' then 'playing' else status end
             where call_id = $1 and seq = $2",
            &[&call_id, &u.seq, &translated.0, &engine, &audio_ms, &translated_wall, &first_byte.map(|f| f.1), &first_frame],
        )
        .await;
    let _ = events::append(
        &client,
        call_id,
        "utterance.spoken",
        json!({"seq": u.seq, "source_track": u.source, "listener": listener_label(listeners, u.source), "source_language": source, "target_language": target, "original": u.text, "translated": translated.0, "engine": engine, "audio_ms": audio_ms}),
        Utc::now(),
    )
    .await;
}

/// Who hears it, as SSE subscribers see it: the other track or the other party.
fn listener_label(listeners: &Listeners, source: &str) -> &'static str {
    match (listeners, source) {
        (Listeners::Tracks(_), "inbound") => "outbound",
        (Listeners::Tracks(_), _) => "inbound",
        (Listeners::Party { .. }, "agent") => "remote",
        (Listeners::Party { .. }, _) => "agent",
    }
}

async fn insert(
    db: &Db,
    call_id: CallId,
    u: &Utterance,
    source: Option<&str>,
    target: Option<&str>,
) -> Result<(), crate::db::DbError> {
    let client = db.client().await?;
    client
        .execute(
            // The turn may already be stored under another index than proposed (renumbered,
            // ADR 0017): link to the one it has. A turn stored later re-links its utterance
            // itself (`turns::store_final`).
            "insert into utterances (call_id, seq, source_track, source_turn_index, original_text, source_language, target_language, end_of_turn_at,
                                     source_session_id, source_turn_order)
             values ($1, $2, $3,
                     coalesce((select turn_index from transcript_turns
                               where call_id = $1 and track = $3 and session_id = $9 and turn_order = $10), $4),
                     $5, $6, $7, $8, $9, $10)
             on conflict do nothing",
            &[&call_id, &u.seq, &u.source, &u.turn_index, &u.text, &source, &target, &u.end_of_turn_at,
              &u.turn.as_ref().map(|t| t.session_id.as_str()), &u.turn.as_ref().map(|t| t.turn_order)],
        )
        .await?;
    Ok(())
}

async fn finish(db: &Db, call_id: CallId, seq: i32, status: &str, error: Option<&str>) {
    if let Ok(client) = db.client().await {
        let _ = client
            .execute(
                "update utterances set status = $3, error = $4 where call_id = $1 and seq = $2",
                &[&call_id, &seq, &status, &error],
            )
            .await;
    }
}

/// The next utterance number of the call not yet stored (a re-attached leg continues).
pub async fn next_seq(db: &Db, call_id: CallId) -> Result<i32, crate::db::DbError> {
    let client = db.client().await?;
    Ok(client
        .query_one(
            "select coalesce(max(seq) + 1, 0) as next_seq from utterances where call_id = $1",
            &[&call_id],
        )
        .await?
        .get("next_seq"))
}

/// The listener heard the utterance to its end (its mark came back).
pub async fn played(
    db: &Db,
    call_id: CallId,
    seq: i32,
    listener: &str,
) -> Result<(), crate::db::DbError> {
    let client = db.client().await?;
    client
        .execute(
            "update utterances set status = 'played', mark_echoed_at = now()
             where call_id = $1 and seq = $2 and status in ('queued', 'playing')",
            &[&call_id, &seq],
        )
        .await?;
    events::append(
        &client,
        call_id,
        "utterance.played",
        json!({"seq": seq, "listener": listener}),
        Utc::now(),
    )
    .await?;
    Ok(())
}

/// The listener talked over it `at_ms` into the audio; the rest was cleared.
pub async fn cut(
    db: &Db,
    call_id: CallId,
    seq: i32,
    at_ms: i32,
    listener: &str,
) -> Result<(), crate::db::DbError> {
    let client = db.client().await?;
    client
        .execute(
            "update utterances set status = 'cut', cut_at_ms = $3 where call_id = $1 and seq = $2 and status in ('queued', 'playing')",
            &[&call_id, &seq, &at_ms],
        )
        .await?;
    events::append(
        &client,
        call_id,
        "utterance.cut",
        json!({"seq": seq, "cut_at_ms": at_ms, "listener": listener}),
        Utc::now(),
    )
    .await?;
    Ok(())
}

/// At the end of the stream, whatever never echoed was never (fully) heard. On an
/// interpreted call's leg, only what was playing to that leg's party (`to_party`): the other
/// leg may still be speaking.
pub async fn never_played(
    db: &Db,
    call_id: CallId,
    to_party: Option<&str>,
) -> Result<(), crate::db::DbError> {
    let client = db.client().await?;
    client
        .execute(
            "update utterances set status = 'never_played'
             where call_id = $1 and status in ('queued', 'playing')
               and ($2::text is null or source_track <> $2)",
            // What a party hears is everything not said by them.
            &[&call_id, &to_party],
        )
        .await?;
    Ok(())
}
