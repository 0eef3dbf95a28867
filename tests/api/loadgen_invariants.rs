//! The media benchmark's invariants are asserted, not printed: the ledger behind
//! `benches/media_bridge.rs` (src/sim/loadgen.rs) must fail a run in which one frame was
//! dropped or doubled, and pass the same run without the fault. Driven through the floor
//! relay into the AssemblyAI simulator, the path the benchmark measures as its floor.
#![cfg(feature = "sim")]

use std::sync::Arc;
use std::time::Duration;

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::loadgen::{self, Fault, Ledger, Plan};

async fn run(fault: Fault) -> loadgen::Report {
    let sim = AssemblyAiSim::start("loadgen-key", 0).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!(
        "{}?speech_model=universal-streaming-english&encoding=pcm_mulaw&sample_rate=8000",
        sim.streaming_url()
    );
    let relay = tokio::spawn(loadgen::floor_relay(
        listener,
        upstream,
        "loadgen-key".into(),
    ));
    // 3 calls × 2 tracks × 10 frames: two full 100 ms batches per track.
    let plan = Plan {
        calls: 3,
        frames: 10,
        fault,
    };
    let ledger = Arc::new(Ledger::new(plan));
    let probe = ledger.clone();
    sim.set_probe(Arc::new(move |chunk| probe.on_chunk(chunk)));
    let report = loadgen::play(
        plan,
        ledger,
        |_| format!("ws://127.0.0.1:{port}/"),
        Duration::from_millis(300),
    )
    .await;
    relay.abort();
    report
}

#[tokio::test]
async fn a_clean_run_passes_with_every_frame_once() {
    let report = run(Fault::None).await;
    assert_eq!(report.frames_planned, 60);
    assert_eq!(report.frames_sent, 60);
    assert_eq!((report.lost, report.doubled, report.foreign), (0, 0, 0));
    assert!(report.latency_p99_us > 0, "latency measured: {report:?}");
    report.check().expect("a clean run passes");
}

#[tokio::test]
async fn a_deliberately_dropped_frame_fails_the_run() {
    let plan = Plan {
        calls: 3,
        frames: 10,
        fault: Fault::None,
    };
    // The second call's third frame, outbound track.
    let report = run(Fault::DropFrame(plan.frame_id(1, 2, 1))).await;
    assert_eq!(report.frames_sent, 59);
    // The relay forwards 800-byte batches: without the dropped frame, the track's last
    // batch is one frame short and stays unsent, so more than one frame goes missing.
    assert!(report.lost >= 1, "{report:?}");
    let error = report.check().expect_err("a lost frame fails the run");
    assert!(error.contains("lost"), "{error}");
}

#[tokio::test]
async fn a_deliberately_doubled_frame_fails_the_run() {
    let plan = Plan {
        calls: 3,
        frames: 10,
        fault: Fault::None,
    };
    let report = run(Fault::DuplicateFrame(plan.frame_id(0, 4, 0))).await;
    assert_eq!(report.frames_sent, 61);
    assert_eq!(report.doubled, 1, "{report:?}");
    let error = report.check().expect_err("a doubled frame fails the run");
    assert!(error.contains("doubled"), "{error}");
}

/// Two phases through the same relay and simulator, as the media benchmark runs them: each
/// ends with a drain (every upstream session closed, nothing more arriving), so the second
/// sees nothing of the first, and the relay leaves no session open behind it.
#[tokio::test]
async fn consecutive_phases_drain_and_stay_apart() {
    let sim = AssemblyAiSim::start("loadgen-key", 0).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!(
        "{}?speech_model=universal-streaming-english&encoding=pcm_mulaw&sample_rate=8000",
        sim.streaming_url()
    );
    let relay = tokio::spawn(loadgen::floor_relay(
        listener,
        upstream,
        "loadgen-key".into(),
    ));
    for phase in 0..2 {
        let plan = Plan {
            calls: 4,
            frames: 10,
            fault: Fault::None,
        };
        let ledger = Arc::new(Ledger::new(plan));
        let probe = ledger.clone();
        sim.set_probe(Arc::new(move |chunk| probe.on_chunk(chunk)));
        let drain = loadgen::Drain {
            quiet: Duration::from_millis(200),
            limit: Duration::from_secs(20),
            open: Box::new({
                let sim = sim.clone();
                move || sim.open_sessions()
            }),
            // The relay opens a session per track when a stream starts.
            sessions_per_call: 2,
        };
        let report =
            loadgen::play_drained(plan, ledger, |_| format!("ws://127.0.0.1:{port}/"), drain).await;
        assert!(
            report.upstream_ready_ms < 10_000,
            "phase {phase}: the grid waited for sessions that never opened: {report:?}"
        );
        assert!(report.drained, "phase {phase}: {report:?}");
        assert_eq!(report.stale, 0, "phase {phase}: {report:?}");
        report.check().expect("every frame once, nothing stale");
        assert_eq!(sim.open_sessions(), 0, "the relay closed its sessions");
    }
    relay.abort();
}
