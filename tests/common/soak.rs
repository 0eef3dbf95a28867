//! What the media soak scenarios and gap tests share: the scale (`CALLBRIDGE_SOAK=long` runs
//! the full figures, anything else a short form for `make test`), answered calls with a
//! subscriber each, the truth about which audio reached AssemblyAI (frame tags seen by the
//! simulator), the gaps the service recorded, and how far the two are apart.
#![cfg(feature = "sim")]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbridge::calls::stream_token;
use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx_media::{self, FRAME_BYTES};
use uuid::Uuid;

use super::TestApp;
use super::authjs::Session;
use super::sse::SseReader;
use super::telnyx::TelnyxApp;

/// Replica A (with the Telnyx simulator) and replica B on A's database, both streaming to
/// the AssemblyAI simulator at `aai_url`: the two sides of a rolling restart.
pub async fn two_replicas(aai_url: &str) -> (TelnyxApp, TestApp) {
    // One user follows every call (an SSE stream each): more than STREAMS_PER_USER_MAX's
    // default allows at full scale.
    let a = TelnyxApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", aai_url),
        ("STREAMS_PER_USER_MAX", "1000"),
    ])
    .await;
    let (key, base) = (a.sim.public_key_base64(), a.sim.api_base());
    let b = TestApp::spawn_on(
        &a.app.database,
        &[
            ("TELNYX_API_KEY", "sim-api-key"),
            ("TELNYX_PUBLIC_KEY", key.as_str()),
            ("TELNYX_CONNECTION_ID", "sim-connection"),
            ("TELNYX_API_BASE", base.as_str()),
            ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
            ("ASSEMBLYAI_STREAMING_URL", aai_url),
            ("STREAMS_PER_USER_MAX", "1000"),
        ],
    )
    .await;
    (a, b)
}

/// Where the re-attach sweep told Telnyx to reconnect `call`'s stream, pointed at `b`.
pub fn reattached_url(a: &TelnyxApp, b: &TestApp, ccid: &str) -> String {
    let start = a
        .sim
        .commands_named("streaming_start")
        .into_iter()
        .find(|c| c.call_control_id.as_deref() == Some(ccid))
        .expect("a streaming_start for the call");
    let url = start.body["stream_url"].as_str().unwrap();
    let token = url.rsplit('/').next().unwrap();
    format!("ws://127.0.0.1:{}/media/telnyx/{token}", b.port)
}

/// The Telnyx call control id `answered_call` gives a call.
pub fn call_control_id(call_id: Uuid) -> String {
    format!("v3:soak-{}", call_id.simple())
}

/// Full scale (`make soak`) or the short form.
pub fn is_long() -> bool {
    std::env::var("CALLBRIDGE_SOAK").as_deref() == Ok("long")
}

/// Both Telnyx tracks, in the order the tag numbering uses.
pub const TRACKS: [&str; 2] = ["inbound", "outbound"];

/// The frame-tag stream of a call's track.
pub fn stream_tag(call: usize, track: usize) -> u8 {
    (call * 2 + track) as u8
}

/// `turns` spoken turns (speech then silence), tagged for `call`'s two tracks.
pub fn tagged_call_audio(call: usize, turns: usize) -> (Vec<u8>, Vec<u8>) {
    let pattern: Vec<(u64, bool)> = (0..turns)
        .flat_map(|_| [(1200, true), (600, false)])
        .collect();
    let audio = telnyx_media::speech_like(&pattern);
    let (mut inbound, mut outbound) = (audio.clone(), audio);
    telnyx_media::tag_frames(&mut inbound, stream_tag(call, 0), 0);
    telnyx_media::tag_frames(&mut outbound, stream_tag(call, 1), 0);
    (inbound, outbound)
}

pub fn frames_in(audio: &[u8]) -> u32 {
    audio.len().div_ceil(FRAME_BYTES) as u32
}

/// Every tagged frame any AssemblyAI session received.
#[derive(Clone, Default)]
pub struct Heard(Arc<Mutex<HashSet<(u8, u32)>>>);

impl Heard {
    pub fn attach(aai: &AssemblyAiSim) -> Self {
        let heard = Self::default();
        let seen = heard.0.clone();
        aai.set_probe(Arc::new(move |chunk| {
            let tags = telnyx_media::frame_tags(chunk);
            seen.lock().unwrap().extend(tags);
        }));
        heard
    }

    /// The audio of stream `tag` (frames 0..`frames`) that never reached AssemblyAI, as
    /// `(start_ms, end_ms)` intervals.
    pub fn lost(&self, tag: u8, frames: u32) -> Vec<(u64, u64)> {
        let seen = self.0.lock().unwrap();
        let mut lost: Vec<(u64, u64)> = Vec::new();
        for frame in 0..frames {
            if seen.contains(&(tag, frame)) {
                continue;
            }
            let (start, end) = (u64::from(frame) * 20, u64::from(frame + 1) * 20);
            match lost.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => lost.push((start, end)),
            }
        }
        lost
    }
}

/// The gaps recorded for a call's track for audio AssemblyAI never read (reasons
/// `assemblyai_unavailable` and `bridge_lost`), `(start_ms, end_ms)`.
pub async fn recorded_gaps(app: &TestApp, call_id: Uuid, track: &str) -> Vec<(u64, u64)> {
    app.db()
        .await
        .query(
            "select start_ms, duration_ms from transcript_gaps
             where call_id = $1 and track = $2 and reason in ('assemblyai_unavailable', 'bridge_lost')
             order by start_ms",
            &[&call_id, &track],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let (start, duration): (i64, i64) = (r.get(0), r.get(1));
            (start as u64, (start + duration) as u64)
        })
        .collect()
}

/// The spoken stretches of `tagged_call_audio(_, turns)` that no stored turn and no
/// recorded gap (of any reason) overlaps: speech lost without a trace.
pub async fn unaccounted_speech(
    app: &TestApp,
    call_id: Uuid,
    track: &str,
    turns: usize,
) -> Vec<(i64, i64)> {
    let mut spans = turn_spans(app, call_id, track).await;
    spans.extend(
        app.db()
            .await
            .query(
            "select start_ms, start_ms + duration_ms from transcript_gaps where call_id = $1 and track = $2",
            &[&call_id, &track],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))),
    );
    (0..turns as i64)
        .map(|k| (k * 1800, k * 1800 + 1200))
        .filter(|(start, end)| !spans.iter().any(|(s, e)| s < end && start < e))
        .collect()
}

/// Milliseconds recorded as `assemblyai_dropped_turn`: audio AssemblyAI read on a session
/// that dropped mid-turn and that could not be replayed.
pub async fn untranscribed_ms(app: &TestApp, calls: &[Uuid]) -> i64 {
    app.db()
        .await
        .query_one(
            "select coalesce(sum(duration_ms), 0)::bigint from transcript_gaps
             where call_id = any($1) and reason = 'assemblyai_dropped_turn'",
            &[&calls],
        )
        .await
        .unwrap()
        .get(0)
}

fn normalised(intervals: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = intervals.iter().copied().filter(|i| i.1 > i.0).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn measure(intervals: &[(u64, u64)]) -> u64 {
    intervals.iter().map(|(s, e)| e - s).sum()
}

/// Milliseconds covered by both interval sets.
fn common_ms(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (a, b) = (normalised(a), normalised(b));
    let mut common = 0;
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (start, end) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        common += end.saturating_sub(start);
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    common
}

/// How the gaps recorded for one track compare with the audio that never reached
/// AssemblyAI.
#[derive(Debug, Clone, Copy, Default)]
pub struct GapCheck {
    pub lost_ms: u64,
    pub recorded_ms: u64,
    pub lost_gaps: usize,
    pub recorded_gaps: usize,
    /// Lost audio no recorded gap covers (under-reporting).
    pub missed_ms: u64,
    /// Recorded as lost but read by AssemblyAI (over-reporting).
    pub extra_ms: u64,
    /// Both together: 0 when the recorded gaps are exactly the lost audio.
    pub error_ms: u64,
}

impl GapCheck {
    pub fn of(lost: &[(u64, u64)], recorded: &[(u64, u64)]) -> Self {
        let (lost_ms, recorded_ms) = (measure(&normalised(lost)), measure(&normalised(recorded)));
        let common = common_ms(lost, recorded);
        Self {
            lost_ms,
            recorded_ms,
            lost_gaps: normalised(lost).len(),
            recorded_gaps: recorded.len(),
            missed_ms: lost_ms - common,
            extra_ms: recorded_ms - common,
            error_ms: lost_ms + recorded_ms - 2 * common,
        }
    }

    fn gaps(&self) -> u64 {
        self.lost_gaps.max(self.recorded_gaps).max(1) as u64
    }

    /// Within one frame batch per gap, both ways.
    pub fn within(&self, batch_ms: u64) -> bool {
        self.error_ms <= batch_ms * self.gaps()
    }

    /// No lost audio goes unreported beyond one frame batch per gap.
    pub fn misses_within(&self, batch_ms: u64) -> bool {
        self.missed_ms <= batch_ms * self.gaps()
    }
}

/// An answered call with a Telnyx call control id, in `session`'s organisation.
pub async fn answered_call(app: &TestApp, session: &Session) -> Uuid {
    let me: serde_json::Value = app.get_as(session, "/api/me").await.json().await.unwrap();
    let org: Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let id = Uuid::now_v7();
    app.db()
        .await
        .execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status, answered_at, telnyx_call_control_id)
             values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'answered', now(), $3)",
            &[&id, &org, &call_control_id(id)],
        )
        .await
        .unwrap();
    id
}

/// The media stream URL Telnyx would be given for `call_id`, on `app`.
pub fn stream_url(app: &TestApp, call_id: Uuid) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = stream_token::mint(
        app.state.config.auth.secret.expose().as_bytes(),
        call_id,
        now + 3600,
    );
    format!("ws://127.0.0.1:{}/media/telnyx/{token}", app.port)
}

/// Subscribes to a call's events on `app` and counts the `transcript.final` events it is
/// sent, until `until` is cancelled (then a last second to drain).
pub fn subscribe_finals(
    app: &TestApp,
    session: &Session,
    call_id: Uuid,
    until: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let url = app.url(&format!("/api/calls/{call_id}/events"));
    let cookie = format!("authjs.session-token={}", session.token);
    tokio::spawn(async move {
        // No overall timeout: the stream lives as long as the scenario.
        let client = reqwest::Client::new();
        let response = client
            .get(url)
            .header("cookie", cookie)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut reader = SseReader::new(response);
        let mut finals = 0;
        let mut draining = false;
        loop {
            let wait = if draining {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(500)
            };
            match reader.next(wait).await {
                Some(event) if event.event.as_deref() == Some("transcript.final") => finals += 1,
                Some(_) => {}
                None if draining => return finals,
                None => draining = until.is_cancelled(),
            }
        }
    })
}

/// Counts rows of the calls' transcripts and final events.
pub async fn stored_finals(app: &TestApp, calls: &[Uuid]) -> (i64, i64) {
    let db = app.db().await;
    let turns: i64 = db
        .query_one(
            "select count(*) from transcript_turns where call_id = any($1)",
            &[&calls],
        )
        .await
        .unwrap()
        .get(0);
    let events: i64 = db
        .query_one(
            "select count(*) from call_events where call_id = any($1) and kind = 'transcript.final'",
            &[&calls],
        )
        .await
        .unwrap()
        .get(0);
    (turns, events)
}

/// Turns of one track that overlap by more than `slack_ms` on the track's clock, as
/// `(earlier, later)` spans: a turn stored twice (a final, and the same words stored on
/// their own) would. Replay after a drop resumes at a batch boundary, so a new session may
/// hear up to one batch of the last word it follows again.
pub async fn overlapping_turns(
    app: &TestApp,
    call_id: Uuid,
    track: &str,
    slack_ms: i64,
) -> Vec<((i64, i64), (i64, i64))> {
    turn_spans(app, call_id, track)
        .await
        .windows(2)
        .filter(|w| w[1].0 < w[0].1 - slack_ms)
        .map(|w| (w[0], w[1]))
        .collect()
}

/// The track's stored turns as `(start_ms, end_ms)` on the call's clock, in start order.
async fn turn_spans(app: &TestApp, call_id: Uuid, track: &str) -> Vec<(i64, i64)> {
    app.db()
        .await
        .query(
            "select start_ms, end_ms from transcript_turns
             where call_id = $1 and track = $2 and start_ms is not null and end_ms is not null
             order by start_ms",
            &[&call_id, &track],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Each stored turn's identity: the AssemblyAI session and its `turn_order` there.
pub async fn stored_turn_identities(app: &TestApp, calls: &[Uuid]) -> Vec<(String, i64)> {
    app.db()
        .await
        .query(
            "select session_id, turn_order from transcript_turns where call_id = any($1)",
            &[&calls],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until every call's media stream has ended (its bridge stored everything).
pub async fn wait_for_streams_to_end(app: &TestApp, calls: &[Uuid], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let open: i64 = app
            .db()
            .await
            .query_one(
                "select count(*) from unnest($1::uuid[]) c(id)
                 where not exists (select 1 from media_streams m where m.call_id = c.id and m.ended_at is not null)",
                &[&calls],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} media streams still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
