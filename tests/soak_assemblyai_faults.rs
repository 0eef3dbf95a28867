//! Soak (c): AssemblyAI drops sessions (no close frame), closes them with errors and refuses
//! reconnects, over and over, through live calls and across their hang-up: the calls hang
//! up while AssemblyAI refuses, so tracks hold their unsent tail at hang-up. Invariants: no
//! spoken turn lost without a trace (every stretch of speech has a stored turn or a
//! recorded gap), every stored turn evented, no final the bridge received left unstored
//! (stored finals ≤ finals the simulator sent; the difference is finals a connection reset
//! destroyed in flight, whose audio the replay buffer had kept; any other stored turn holds
//! the final words of a turn whose session ended without `Termination`), no audio that never reached AssemblyAI goes unreported beyond one frame batch
//! per gap, every stream ends within the hang-up bound, and the process stays healthy.
//! Over-reporting is printed, not asserted: when a session is reset, the pongs still in
//! flight are lost with it, and the bridge counts audio it cannot confirm as unread.
//!
//! `CALLBRIDGE_SOAK=long` (`make soak`): 20 calls of ≈54 s, hundreds of faults. Otherwise a
//! short form for `make test`: 3 calls of ≈7 s.
#![cfg(feature = "sim")]

mod common;

use std::time::Duration;

use callbridge::sim::assemblyai::{AssemblyAiSim, StreamFault};
use callbridge::sim::telnyx_media::{self, PlayOptions};
use common::TestApp;
use common::soak::{self, GapCheck, Heard, TRACKS};
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

const BATCH_MS: u64 = 100;
const TAIL_DELIVERY_SECS: u64 = 6;

/// Keeps a few faults queued for the sessions and handshakes to come.
async fn inject_faults(aai: AssemblyAiSim, stop: CancellationToken) -> usize {
    let mut injected = 0;
    while !stop.is_cancelled() {
        while aai.pending_faults() < 3 {
            let fault = {
                let mut rng = rand::rng();
                match rng.random_range(0..10) {
                    0..5 => StreamFault::DropAfterChunks(rng.random_range(3..30)),
                    5..7 => StreamFault::ErrorAfterChunks {
                        chunks: rng.random_range(3..30),
                        code: if rng.random_bool(0.5) { 3005 } else { 1013 },
                    },
                    _ => StreamFault::RefuseConnect,
                }
            };
            aai.inject(fault);
            injected += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    injected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_drops_and_refusals_lose_no_turn_and_gaps_are_the_unheard_audio() {
    let (calls, turns) = if soak::is_long() { (20, 30) } else { (3, 4) };
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let heard = Heard::attach(&aai);
    let url = aai.streaming_url();
    let tail = TAIL_DELIVERY_SECS.to_string();
    let app = TestApp::spawn_with(&[
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", url.as_str()),
        // Small enough that some outages overflow it: those are the gaps to check.
        ("MEDIA_REPLAY_BUFFER_SECS", "2"),
        ("MEDIA_TAIL_DELIVERY_SECS", tail.as_str()),
    ])
    .await;
    let session = app.sign_in("Soak").await;
    let mut ids = Vec::new();
    for _ in 0..calls {
        ids.push(soak::answered_call(&app, &session).await);
    }
    let audio: Vec<(Vec<u8>, Vec<u8>)> = (0..calls)
        .map(|i| soak::tagged_call_audio(i, turns))
        .collect();
    let call_ms = turns as u64 * 1800;

    let stop_faults = CancellationToken::new();
    let injector = tokio::spawn(inject_faults(aai.clone(), stop_faults.clone()));
    // Calls connect over a second, not all in the same millisecond.
    let players: Vec<_> = ids
        .iter()
        .zip(&audio)
        .enumerate()
        .map(|(i, (id, (inbound, outbound)))| {
            let mut options = PlayOptions::new(soak::stream_url(&app, *id), inbound.clone());
            options.outbound = Some(outbound.clone());
            options.realtime = true;
            let delay = Duration::from_millis(1000 * i as u64 / calls as u64);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                telnyx_media::play(options).await
            })
        })
        .collect();
    // Shortly before the hang-up, AssemblyAI refuses the next reconnects (about one per
    // track): tracks that are reconnecting then hang up holding their tail, and deliver it
    // once AssemblyAI accepts again, or record it as a gap past the bound.
    tokio::time::sleep(Duration::from_millis(call_ms - 500)).await;
    stop_faults.cancel();
    let injected = injector.await.unwrap();
    aai.clear_faults();
    let sessions_before_hang_up = aai.sessions().len();
    for _ in 0..(calls * 2) {
        aai.inject(StreamFault::RefuseConnect);
    }
    let mut hung_up = tokio::time::Instant::now();
    let mut refused = Vec::new();
    for player in players {
        let played = player.await.unwrap().expect("the call streamed to its end");
        hung_up = hung_up.min(played.started.unwrap() + Duration::from_millis(call_ms));
        refused.extend(played.refused);
    }
    soak::wait_for_streams_to_end(&app, &ids, Duration::from_secs(TAIL_DELIVERY_SECS + 10)).await;
    let ended_after = hung_up.elapsed();
    let sessions_after_hang_up = aai.sessions().len() - sessions_before_hang_up;

    let produced = aai.finals_sent();
    let (stored, events) = soak::stored_finals(&app, &ids).await;
    let mut worst = [GapCheck::default(); 2];
    let mut lost_total = [0u64; 2];
    let mut unaccounted = Vec::new();
    let mut overlapping = Vec::new();
    let mut unreported = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for (t, track) in TRACKS.iter().enumerate() {
            for span in soak::unaccounted_speech(&app, *id, track, turns).await {
                unaccounted.push((i, *track, span));
            }
            for pair in soak::overlapping_turns(&app, *id, track, BATCH_MS as i64).await {
                overlapping.push((i, *track, pair));
            }
            let lost = heard.lost(soak::stream_tag(i, t), soak::frames_in(&audio[i].0));
            let recorded = soak::recorded_gaps(&app, *id, track).await;
            let check = GapCheck::of(&lost, &recorded);
            if !check.misses_within(BATCH_MS) {
                unreported.push(format!(
                    "call {i} {track}: lost {lost:?}, recorded {recorded:?}"
                ));
            }
            lost_total[t] += check.lost_ms;
            worst[t].missed_ms = worst[t].missed_ms.max(check.missed_ms);
            worst[t].extra_ms = worst[t].extra_ms.max(check.extra_ms);
        }
    }
    // A stored turn is a final the simulator sent, or the final words of a turn a session
    // left open when it ended without `Termination` (stored on their own, ADR 0059).
    let sessions = aai.sessions();
    let (finals, leftovers): (Vec<_>, Vec<_>) = soak::stored_turn_identities(&app, &ids)
        .await
        .into_iter()
        .partition(|(id, order)| {
            sessions
                .iter()
                .any(|s| &s.id == id && s.final_orders.contains(&(*order as u64)))
        });
    let untranscribed = soak::untranscribed_ms(&app, &ids).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let reconnects = metrics
        .lines()
        .find(|l| l.starts_with("assemblyai_reconnects_total"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0")
        .to_owned();
    println!(
        "soak assemblyai_faults: calls={calls} (stream upgrades refused and retried: {} {refused:?}) faults injected={injected} (+{} refusals at hang-up) reconnects={reconnects} sessions opened after hang-up={sessions_after_hang_up} | spoken turns={} lost without a trace={} | finals sent by the simulator={produced} stored={stored} (of which final words left open by a drop={}) events={events} (finals destroyed in flight by a reset={}) | lost audio inbound={} ms outbound={} ms, gap error max per call: unreported inbound={} ms outbound={} ms, over-reported inbound={} ms outbound={} ms (one batch = {BATCH_MS} ms), read but untranscribed {untranscribed} ms | streams ended {:.1} s after hang-up (bound {TAIL_DELIVERY_SECS} s)",
        refused.len(),
        calls * 2,
        calls * 2 * turns,
        unaccounted.len(),
        leftovers.len(),
        produced.saturating_sub(stored as usize),
        lost_total[0],
        lost_total[1],
        worst[0].missed_ms,
        worst[1].missed_ms,
        worst[0].extra_ms,
        worst[1].extra_ms,
        ended_after.as_secs_f64(),
    );
    // The figures are printed first, so a failing run shows them too.
    assert!(
        unreported.is_empty(),
        "lost audio unreported beyond one batch per gap:\n{}",
        unreported.join("\n")
    );
    assert!(produced > 0);
    assert!(
        unaccounted.is_empty(),
        "speech with neither a turn nor a gap: {unaccounted:?}"
    );
    assert!(finals.len() <= produced, "nothing stored twice");
    assert!(
        overlapping.is_empty(),
        "no words stored in two turns: {overlapping:?}"
    );
    for (id, order) in &leftovers {
        let session = sessions.iter().find(|s| &s.id == id);
        assert!(
            session.is_some_and(|s| s.billed_session_seconds.is_none()),
            "turn {order} of {id} stored without a final: its session did not end cleanly"
        );
    }
    assert_eq!(events, stored, "every stored turn evented");
    let lost_metric = metrics
        .lines()
        .find(|l| l.starts_with("transcript_turns_lost_total"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0");
    assert_eq!(lost_metric, "0", "no final failed to store");
    assert!(
        ended_after < Duration::from_secs(TAIL_DELIVERY_SECS + 9),
        "held audio waits a bounded time after the hang-up"
    );
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "healthy, no restart"
    );
}
