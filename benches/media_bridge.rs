//! The media bridge under load: N simulated calls, both tracks, 20 ms frames in real time,
//! through the release binary to the AssemblyAI simulator. Every frame carries a unique id in
//! its first 8 bytes, so the simulator attributes every forwarded byte to its frame: frames
//! lost, added latency (frame that completes a batch → batch at AssemblyAI), CPU per frame
//! (from /proc) and memory per live call. Baseline in the same run: a bare tokio WebSocket
//! relay (parse, decode, batch, forward; nothing else) started from this binary.
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::{ChildGuard, ScratchDatabase, free_port, quantile, wait_for_port};

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callbridge::sim::assemblyai::AssemblyAiSim;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

const FRAME: usize = 160;

/// The bare relay runs from this binary: it gets the service's allocator, so the comparison
/// is of the bridge's work, not of two allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Send instants (ns since the run began) by frame id, and whether each id arrived.
struct Ledger {
    origin: Instant,
    sent_ns: Vec<AtomicU64>,
    seen: Vec<AtomicU64>,
    next_id: AtomicU64,
    added: std::sync::Mutex<Vec<u64>>,
    with_batching: std::sync::Mutex<Vec<u64>>,
}

impl Ledger {
    fn new(capacity: usize) -> Self {
        Self {
            origin: Instant::now(),
            sent_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            next_id: AtomicU64::new(1),
            added: Default::default(),
            with_batching: Default::default(),
        }
    }

    fn on_chunk(&self, chunk: &[u8]) {
        let now = self.origin.elapsed().as_nanos() as u64;
        let blocks = chunk.len() / FRAME;
        let mut batching = Vec::new();
        for (index, block) in chunk.chunks_exact(FRAME).enumerate() {
            let id = u64::from_le_bytes(block[..8].try_into().unwrap());
            let Some(sent) = self.sent_ns.get(id as usize) else {
                continue;
            };
            let sent = sent.load(Ordering::Relaxed);
            if sent == 0 {
                continue;
            }
            self.seen[id as usize].store(1, Ordering::Relaxed);
            batching.push(now.saturating_sub(sent));
            if index + 1 == blocks {
                self.added.lock().unwrap().push(now.saturating_sub(sent));
            }
        }
        self.with_batching.lock().unwrap().extend(batching);
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Plays one call: both tracks, `frames` 20 ms frames each, paced in real time.
async fn play_call(url: String, frames: usize, ledger: Arc<Ledger>) -> usize {
    let Ok((socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return 0;
    };
    let (mut tx, mut rx) = socket.split();
    tokio::spawn(async move { while rx.next().await.is_some() {} });
    let start = r#"{"event":"start","sequence_number":"1","stream_id":"bench","start":{"call_control_id":"v3:bench","media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}"#;
    if tx.send(Message::Text(start.into())).await.is_err() {
        return 0;
    }
    let began = tokio::time::Instant::now();
    let mut sent = 0;
    let mut payload = [0x55u8; FRAME];
    for chunk in 1..=frames {
        tokio::time::sleep_until(began + Duration::from_millis(chunk as u64 * 20)).await;
        for track in ["inbound", "outbound"] {
            let id = ledger.next_id.fetch_add(1, Ordering::Relaxed);
            payload[..8].copy_from_slice(&id.to_le_bytes());
            let frame = format!(
                r#"{{"event":"media","sequence_number":"{chunk}","stream_id":"bench","media":{{"track":"{track}","chunk":"{chunk}","timestamp":"{}","payload":"{}"}}}}"#,
                chunk * 20,
                STANDARD.encode(payload)
            );
            if let Some(slot) = ledger.sent_ns.get(id as usize) {
                slot.store(ledger.origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            if tx.send(Message::Text(frame.into())).await.is_err() {
                return sent;
            }
            sent += 1;
        }
    }
    let _ = tx
        .send(Message::Text(
            r#"{"event":"stop","stream_id":"bench"}"#.into(),
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sent
}

struct RunResult {
    calls: usize,
    frames_sent: usize,
    lost: usize,
    added_p50: Duration,
    added_p99: Duration,
    batching_p99: Duration,
    cpu_us_per_frame: f64,
    rss_per_call_kib: f64,
    /// The same, the first time this process had N calls live (grows its heaps once).
    first_rss_per_call_kib: f64,
}

async fn run_once(
    calls: usize,
    seconds: u64,
    pid: u32,
    urls: impl Fn(usize) -> String,
    sim: &AssemblyAiSim,
) -> RunResult {
    let frames = (seconds * 50) as usize;
    let ledger = Arc::new(Ledger::new(calls * frames * 2 + 16));
    let probe_ledger = ledger.clone();
    sim.set_probe(Arc::new(move |chunk| probe_ledger.on_chunk(chunk)));
    let rss_before = rss_kib(pid);
    let cpu_before = cpu_seconds(pid);
    let mut tasks = Vec::new();
    for i in 0..calls {
        // Stagger call starts over a second, as real calls would not start in lockstep.
        tokio::time::sleep(Duration::from_micros(1_000_000 / calls as u64)).await;
        tasks.push(tokio::spawn(play_call(urls(i), frames, ledger.clone())));
    }
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let rss_during = rss_kib(pid);
    let mut frames_sent = 0;
    for task in tasks {
        frames_sent += task.await.unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let seen = ledger
        .seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == 1)
        .count();
    let mut added = std::mem::take(&mut *ledger.added.lock().unwrap());
    let mut batching = std::mem::take(&mut *ledger.with_batching.lock().unwrap());
    RunResult {
        calls,
        frames_sent,
        lost: frames_sent.saturating_sub(seen),
        added_p50: quantile(&mut added, 0.5),
        added_p99: quantile(&mut added, 0.99),
        batching_p99: quantile(&mut batching, 0.99),
        cpu_us_per_frame: cpu * 1e6 / frames_sent.max(1) as f64,
        rss_per_call_kib: rss_during.saturating_sub(rss_before) as f64 / calls as f64,
        first_rss_per_call_kib: 0.0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--relay") {
        let port: u16 = args[position + 1].parse().unwrap();
        let upstream = args[position + 2].clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(relay(port, upstream));
        return;
    }
    if !args.iter().any(|arg| arg == "--bench") {
        return;
    }
    callbridge::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

/// The comparison: a bare relay doing only what any bridge must (parse, decode, batch, send).
async fn relay(port: u16, upstream: String) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (_, mut rx) = socket.split();
            let mut sinks = HashMap::new();
            let mut batches: HashMap<String, Vec<u8>> = HashMap::new();
            while let Some(Ok(Message::Text(text))) = rx.next().await {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if value["event"] != "media" {
                    continue;
                }
                let track = value["media"]["track"]
                    .as_str()
                    .unwrap_or("inbound")
                    .to_owned();
                let Ok(bytes) = STANDARD.decode(value["media"]["payload"].as_str().unwrap_or(""))
                else {
                    continue;
                };
                let batch = batches.entry(track.clone()).or_default();
                batch.extend_from_slice(&bytes);
                if batch.len() >= 800 {
                    let chunk = std::mem::take(batch);
                    if !sinks.contains_key(&track) {
                        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(upstream.as_str()).unwrap();
                        request
                            .headers_mut()
                            .insert("authorization", "bench-aai-key".parse().unwrap());
                        let Ok((socket, _)) = tokio_tungstenite::connect_async(request).await
                        else {
                            return;
                        };
                        let (sink, mut stream) = socket.split();
                        tokio::spawn(async move { while stream.next().await.is_some() {} });
                        sinks.insert(track.clone(), sink);
                    }
                    let _ = sinks
                        .get_mut(&track)
                        .unwrap()
                        .send(Message::Binary(chunk.into()))
                        .await;
                }
            }
        });
    }
}

async fn run() {
    let scratch = ScratchDatabase::create().await;
    let db_url = scratch.url.clone();

    let sim = AssemblyAiSim::start("bench-aai-key", 0).await.unwrap();
    let port = free_port();
    let secret = "bench-auth-secret-bench-auth-secret";
    // BENCH_SERVER_BIN / BENCH_SERVER_WRAPPER: run another build of the server, or the same
    // under a profiler (e.g. `heaptrack -o /tmp/bridge` with a `system-allocator` build).
    let server_bin = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callbridge").into());
    let wrapper: Vec<String> = std::env::var("BENCH_SERVER_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&server_bin);
            command
        }
        None => Command::new(&server_bin),
    };
    let server = ChildGuard(
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs([
                ("APP_ENV", "development"),
                // Load generators: the per-session and per-IP request limits would throttle them.
                ("RATE_LIMIT_SESSION_PER_MIN", "0"),
                ("RATE_LIMIT_ANONYMOUS_PER_MIN", "0"),
                ("BIND_ADDRESS", "127.0.0.1"),
                ("PORT", &port.to_string()),
                ("DATABASE_URL", db_url.as_str()),
                ("RUN_MIGRATIONS_ON_START", "true"),
                ("DATABASE_POOL_MAX_SIZE", "16"),
                ("R2_ENDPOINT", "http://127.0.0.1:9"),
                ("R2_CREATE_BUCKET", "false"),
                ("LOG_LEVEL", "error"),
                ("AUTH_SECRET", secret),
                ("ASSEMBLYAI_API_KEY", "bench-aai-key"),
                ("ASSEMBLYAI_STREAMING_URL", &sim.streaming_url()),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port).await;
    let relay_port = free_port();
    let upstream = format!(
        "{}?speech_model=universal-streaming-english&encoding=pcm_mulaw&sample_rate=8000",
        sim.streaming_url()
    );
    let relay = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args(["--relay", &relay_port.to_string(), &upstream])
            .spawn()
            .unwrap(),
    );
    wait_for_port(relay_port).await;

    let counts: Vec<usize> = std::env::var("BENCH_CALLS")
        .unwrap_or_else(|_| "100,250,500,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("BENCH_CALL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let db = callbridge::db::connect_direct(db_url.as_str())
        .await
        .unwrap();
    let org = uuid::Uuid::now_v7();
    db.execute(
        "insert into organisations (id, name) values ($1, 'bench')",
        &[&org],
    )
    .await
    .unwrap();
    let max_calls = counts.iter().copied().max().unwrap_or(0);
    let mut call_ids = Vec::new();
    for _ in 0..max_calls {
        let id = uuid::Uuid::now_v7();
        db.execute("insert into calls (id, organisation_id, direction, from_number, to_number, status) values ($1, $2, 'outbound', '+1', '+2', 'answered')", &[&id, &org]).await.unwrap();
        call_ids.push(id);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tokens: Vec<String> = call_ids
        .iter()
        .map(|id| callbridge::calls::stream_token::mint(secret.as_bytes(), *id, now + 3600))
        .collect();

    let mut rows = Vec::new();
    for &calls in &counts {
        // Each N twice through the bridge. Memory counts from the first (RSS growth while N
        // calls are live); the second reuses pages the allocator kept from the first, so its
        // growth is only a lower bound. Latency and losses count the worse of the two.
        let bridge_url = |i: usize| format!("ws://127.0.0.1:{port}/media/telnyx/{}", tokens[i]);
        let first = run_once(calls, seconds, server.0.id(), bridge_url, &sim).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut bridge = run_once(calls, seconds, server.0.id(), bridge_url, &sim).await;
        bridge.first_rss_per_call_kib = first.rss_per_call_kib;
        bridge.lost += first.lost;
        bridge.frames_sent += first.frames_sent;
        bridge.added_p50 = bridge.added_p50.max(first.added_p50);
        bridge.added_p99 = bridge.added_p99.max(first.added_p99);
        bridge.batching_p99 = bridge.batching_p99.max(first.batching_p99);
        let bare = run_once(
            calls,
            seconds,
            relay.0.id(),
            |_| format!("ws://127.0.0.1:{relay_port}/"),
            &sim,
        )
        .await;
        rows.push((bridge, bare));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    println!(
        "\nMedia bridge: simulated calls × 2 tracks, 20 ms frames in real time for {seconds} s; clients, AssemblyAI simulator, server and PostgreSQL share this 2-core machine\n"
    );
    println!(
        "| calls | frames sent, both runs (planned) | lost | added latency p50 | added p99 (goal < 5 ms) | bare relay added p99 | frame→AssemblyAI p99 incl. 100 ms batching | CPU/frame | bare relay CPU/frame | ratio (goal ≤ 1.5×) | RSS/call, first time at N (goal < 100 KiB) | RSS/call, same N again (reuses freed pages: a lower bound) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut largest_ok = 0;
    for (bridge, bare) in &rows {
        let ratio = bridge.cpu_us_per_frame / bare.cpu_us_per_frame.max(0.001);
        println!(
            "| {} | {} ({}) | {} | {:.2?} | {:.2?} | {:.2?} | {:.1?} | {:.1} µs | {:.1} µs | {:.2}x | {:.0} KiB | {:.0} KiB |",
            bridge.calls,
            bridge.frames_sent,
            bridge.calls as u64 * seconds * 100 * 2,
            bridge.lost,
            bridge.added_p50,
            bridge.added_p99,
            bare.added_p99,
            bridge.batching_p99,
            bridge.cpu_us_per_frame,
            bare.cpu_us_per_frame,
            ratio,
            bridge.first_rss_per_call_kib,
            bridge.rss_per_call_kib
        );
        if bridge.added_p99 < Duration::from_millis(5) && bridge.lost == 0 {
            largest_ok = largest_ok.max(bridge.calls);
        }
    }
    println!("\nLargest N holding p99 < 5 ms added latency with zero frames lost: {largest_ok}");
    println!(
        "(When `frames sent` falls short of planned, the load generator itself could not keep real time on the shared cores.)"
    );
    let _ = (relay, server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    scratch.drop_now().await;
}
