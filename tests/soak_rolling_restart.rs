//! Soak (b): a rolling restart with live calls. The calls stream to replica A while their
//! subscribers listen on replica B; A gets SIGTERM mid-speech; B's re-attach sweep restarts
//! the streams and Telnyx reconnects them to B a few seconds later, with the calls' audio
//! running on in between. Invariants: no final turn lost (turns the AssemblyAI simulator
//! produced = rows stored = `transcript.final` events = events B's subscribers received) and
//! each track's gaps are the audio that never reached AssemblyAI, within one frame batch.
//!
//! `CALLBRIDGE_SOAK=long` (`make soak`): 10 calls, ≈360 final turns, ≈4.5 s away. Otherwise
//! a short form for `make test`: 2 calls, 1 s away.
#![cfg(feature = "sim")]

mod common;

use std::time::Duration;

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx_media::{self, PlayOptions};
use common::soak::{self, GapCheck, Heard, TRACKS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Scale {
    calls: usize,
    /// Spoken turns per track (1.2 s of speech, 0.6 s of silence each).
    turns: usize,
    /// From the re-attach sweep to Telnyx reconnecting the streams.
    away: Duration,
}

const TURN_MS: u64 = 1800;
const BATCH_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_turn_and_reports_the_time_away_as_the_gap() {
    let scale = if soak::is_long() {
        Scale {
            calls: 10,
            turns: 18,
            away: Duration::from_millis(4500),
        }
    } else {
        Scale {
            calls: 2,
            turns: 5,
            away: Duration::from_millis(1000),
        }
    };
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    let heard = Heard::attach(&aai);
    let aai_url = aai.streaming_url();
    let (mut a, b) = soak::two_replicas(&aai_url).await;

    let session = a.app.sign_in("Soak").await;
    let mut calls = Vec::new();
    for _ in 0..scale.calls {
        calls.push(soak::answered_call(&a.app, &session).await);
    }
    let done = CancellationToken::new();
    let subscribers: Vec<_> = calls
        .iter()
        .map(|call| soak::subscribe_finals(&b, &session, *call, done.clone()))
        .collect();
    let audio: Vec<(Vec<u8>, Vec<u8>)> = (0..scale.calls)
        .map(|i| soak::tagged_call_audio(i, scale.turns))
        .collect();

    // Live calls on A.
    let started = Instant::now();
    let on_a: Vec<_> = calls
        .iter()
        .zip(&audio)
        .map(|(call, (inbound, outbound))| {
            let mut options = PlayOptions::new(soak::stream_url(&a.app, *call), inbound.clone());
            options.outbound = Some(outbound.clone());
            options.realtime = true;
            options.send_stop = false;
            tokio::spawn(telnyx_media::play(options))
        })
        .collect();
    // SIGTERM mid-speech: 600 ms into a turn about halfway through the calls.
    let kill_at = (scale.turns as u64 * 45 / 100) * TURN_MS + 600;
    tokio::time::sleep_until(started + Duration::from_millis(kill_at)).await;
    a.app.stop().await;
    let mut call_clocks = Vec::new();
    for player in on_a {
        let played = player
            .await
            .unwrap()
            .expect("A streamed until its shutdown");
        call_clocks.push(played.started.expect("the call's audio began"));
    }

    // B restarts the streams; Telnyx reconnects them to B while the calls go on.
    let restarted = callbridge::media::reattach::sweep(&b.state).await.unwrap();
    assert_eq!(restarted, scale.calls, "every live call re-attached");
    tokio::time::sleep(scale.away).await;
    let on_b: Vec<_> = calls
        .iter()
        .zip(&audio)
        .zip(&call_clocks)
        .map(|((call, (inbound, outbound)), call_started)| {
            let url = soak::reattached_url(&a, &b, &soak::call_control_id(*call));
            // The call's audio went on while no stream carried it.
            let mut options = PlayOptions::new(url, inbound.clone());
            options.outbound = Some(outbound.clone());
            options.call_started = Some(*call_started);
            tokio::spawn(telnyx_media::play(options))
        })
        .collect();
    for player in on_b {
        player.await.unwrap().expect("B took the stream");
    }
    soak::wait_for_streams_to_end(&b, &calls, Duration::from_secs(30)).await;
    done.cancel();
    let mut received_on_b = 0;
    for subscriber in subscribers {
        received_on_b += subscriber.await.unwrap();
    }

    let produced = aai.finals_sent();
    let (stored, events) = soak::stored_finals(&b, &calls).await;
    let mut worst = [GapCheck::default(); 2];
    let mut wrong = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        for (t, track) in TRACKS.iter().enumerate() {
            let frames = soak::frames_in(&audio[i].0);
            let lost = heard.lost(soak::stream_tag(i, t), frames);
            let recorded = soak::recorded_gaps(&b, *call, track).await;
            let check = GapCheck::of(&lost, &recorded);
            if !check.within(BATCH_MS) || check.lost_ms == 0 {
                wrong.push(format!(
                    "call {i} {track}: lost {lost:?}, recorded {recorded:?}"
                ));
            }
            if check.error_ms >= worst[t].error_ms {
                worst[t] = check;
            }
        }
    }
    println!(
        "soak rolling_restart: calls={} turns produced={produced} stored={stored} events={events} received_on_b={received_on_b} lost={} | gap error max: inbound={} ms outbound={} ms (one batch = {BATCH_MS} ms; lost audio per track ≈{} ms)",
        scale.calls,
        produced.saturating_sub(stored as usize),
        worst[0].error_ms,
        worst[1].error_ms,
        worst[0].lost_ms,
    );
    // The figures are printed first, so a failing run shows them too.
    assert!(
        wrong.is_empty(),
        "gaps other than the lost audio within one batch (or no audio lost):\n{}",
        wrong.join("\n")
    );
    assert!(produced > 0);
    assert_eq!(stored as usize, produced, "every final turn stored");
    assert_eq!(events as usize, produced, "every final turn evented");
    assert_eq!(
        received_on_b, produced,
        "subscribers on B saw every final, from A and from B"
    );
    assert_eq!(b.get("/healthz").await.status(), 200);
}
